"""`invoke vm --arch arm64`'s steps in order: check the host, then the cached root
filesystem and the static guest programs (built when missing), then the boot."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from memuse_kit.core.arch import Arch
from memuse_kit.core.output import say
from memuse_kit.trying import direct_boot, guest_binaries, guest_preflight, rootfs
from memuse_kit.trying.vm import VmOptions, VmResult


def run_foreign_vm(
    options: VmOptions,
    arch: Arch,
    callers_source: Optional[Path] = None,
    image: Optional[Path] = None,
    log_path: Optional[Path] = None,
) -> VmResult:
    """Boot arch's kernel (options.build's, or image) and run options.command in it.

    callers_source: tests/guest/callers.c, to hand the guest its static build as well.
    A dry run checks the host and prints what it would build and boot, touching nothing.
    """
    guest_preflight.check_guest_host(arch)
    tree = rootfs.ensure_rootfs(
        rootfs.recipe_for(arch), dry_run=options.dry_run, say=lambda line: say(line, sys.stderr)
    )
    binaries = guest_binaries.guest_binaries_env(arch, callers_source, dry_run=options.dry_run)
    return direct_boot.run_direct(options, arch, tree, binaries, image=image, log_path=log_path)
