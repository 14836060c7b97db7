"""Installing kernel packages into a throwaway root with `fakeroot dpkg --root`, as a user."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Dict, List, Sequence


def throwaway_root(root: Path) -> Path:
    """An empty root with just what dpkg needs to install into it."""
    for sub in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "etc", "boot", "lib/modules"):
        (root / sub).mkdir(parents=True)
    for name in ("status", "available"):
        (root / "var/lib/dpkg" / name).touch()
    return root


def hook_recorder(directory: Path) -> Path:
    """A run-parts that only records its arguments; returns the file it records into.

    Kernel packages' maintainer scripts run the hooks in the host's /etc/kernel (5.10's and
    7.2's alike ignore DPKG_ROOT); an install into a throwaway root must not run the host's
    initramfs or grub hooks, so this run-parts comes first on their PATH.
    """
    directory.mkdir(parents=True)
    calls = directory / "calls"
    stub = directory / "run-parts"
    stub.write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(calls))}\n')
    stub.chmod(0o755)
    return calls


def dpkg(root: Path) -> List[str]:
    return ["fakeroot", "dpkg", f"--root={root}", "--force-not-root", "--log=/dev/null"]


def install(root: Path, packages: Sequence[Path], hooks: Path) -> None:
    """dpkg -i the packages into root, maintainer scripts run outside it with run-parts
    stubbed (see hook_recorder)."""
    env: Dict[str, str] = dict(os.environ)
    env["PATH"] = f"{hooks.parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    command = [*dpkg(root), "--force-script-chrootless", "-i", *map(str, packages)]
    subprocess.run(command, check=True, env=env, capture_output=True)


def installed(root: Path) -> Dict[str, str]:
    """package -> its dpkg status abbreviation ("ii" when installed) in root."""
    listing = subprocess.run([*dpkg(root), "-l"], capture_output=True, text=True, check=True).stdout
    states = {}
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 3 and len(fields[0]) == 2 and fields[0][0] in "uirph":
            states[fields[1]] = fields[0]
    return states
