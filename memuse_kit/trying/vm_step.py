"""Task glue for `invoke vm` and `module`: find the build, then act."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import List, Optional, Union

from memuse_kit.building.builddir import BuildDir, find_build
from memuse_kit.core import arch as arches
from memuse_kit.core.errors import KitError
from memuse_kit.core.options import parse_memory, parse_timeout
from memuse_kit.trees.workspace import check_not_empty, resolve_tree
from memuse_kit.trying.module import build_module, module_source
from memuse_kit.trying.vm import DEFAULT_COMMAND, VmOptions, VmResult, run_vm

# the test program tests/guest runs, handed to a foreign guest (which has no compiler) when
# the command runs in the repository
CALLERS_SOURCE = Path("tests/guest/callers.c")


def guest_command(remainder: str, argv: List[str]) -> List[str]:
    """The words after `--`. Invoke hands them over joined by spaces, which loses the quoting
    of an argument like `sh -c 'a; b'`, so they are taken from argv when it has them."""
    if "--" in argv:
        words = argv[argv.index("--") + 1 :]
        if " ".join(words) == remainder:
            return words or list(DEFAULT_COMMAND)
    return shlex.split(remainder) if remainder.strip() else list(DEFAULT_COMMAND)


def vm_command(
    tree: Optional[str],
    source: Optional[str],
    config: Optional[str],
    remainder: str,
    memory: str,
    accel: str,
    timeout: Union[str, float],
    dry_run: bool,
    handed: Optional[Path] = None,
    arch: Optional[str] = None,
) -> int:
    target = arches.get(arch)
    if accel not in ("auto", "kvm", "tcg"):
        raise KitError(f"--accel {accel}: use auto, kvm or tcg")
    seconds = parse_timeout(timeout)
    size = parse_memory(memory)
    check_not_empty(config, "--config")
    root = resolve_tree(tree, source, dry_run=dry_run)
    command = guest_command(remainder, sys.argv)
    options = VmOptions(
        build=_build_for(find_build(root, config, handed, target), target, arch is not None),
        command=command,
        memory=size,
        accel=accel,
        timeout=seconds,
        dry_run=dry_run,
    )
    return boot_build(options, target if arch is not None else None).status


def boot_build(options: VmOptions, target: Optional[arches.Arch] = None) -> VmResult:
    """virtme-ng for a kernel of this machine's architecture; QEMU straight from the image on
    a Debian root of the kernel's own architecture for another (foreign_vm). The target is
    --arch's, else the build's."""
    target = target or options.build.arch()
    if target.is_host():
        return run_vm(options)
    from memuse_kit.trying.foreign_vm import run_foreign_vm

    callers = options.cwd / CALLERS_SOURCE
    return run_foreign_vm(options, target, callers if callers.is_file() else None)


def module_command(
    name: str,
    tree: Optional[str],
    config: Optional[str],
    dry_run: bool,
    handed: Optional[Path] = None,
    arch: Optional[str] = None,
) -> None:
    check_not_empty(name, "--name")
    module_source(name)
    check_not_empty(config, "--config")
    target = arches.get(arch)
    root = resolve_tree(tree, None, dry_run=dry_run)
    bd = _build_for(find_build(root, config, handed, target), target, arch is not None)
    build_module(name, root, bd, dry_run=dry_run)


def _build_for(bd: BuildDir, target: arches.Arch, asked: bool) -> BuildDir:
    """The build found, checked against --arch when it was given (a build handed on by
    `invoke build` is for the architecture that build had)."""
    if asked and bd.obj.is_dir() and bd.arch() is not target:
        raise KitError(f"{bd.root} is a build for {bd.arch().name}, not {target.name}")
    return bd
