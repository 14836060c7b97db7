"""What the host needs to build a foreign guest's root filesystem and programs and boot it:
checked before anything is downloaded or built, and named in one line with its apt-get."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import List

from memuse_kit.core.arch import Arch
from memuse_kit.core.errors import KitError
from memuse_kit.trying.machine_image import subordinate_ids_problem


def static_libc(arch: Arch) -> Path:
    """The C library a static link needs: Debian's cross libc, or the host's own."""
    if arch.cross_triplet is None:
        return Path("/usr/lib") / f"{os.uname().machine}-linux-gnu" / "libc.a"
    return Path("/usr") / arch.cross_triplet / "lib" / "libc.a"


def static_libc_package(arch: Arch) -> str:
    return f"libc6-dev-{arch.debian_arch}-cross" if arch.cross_triplet else "libc6-dev"


def missing_packages(arch: Arch) -> List[str]:
    """The Debian packages the host lacks for arch's guest, in a stable order."""
    tools = {
        "mmdebstrap": "mmdebstrap",
        "tar": "tar",
        arch.compiler_command("gcc"): arch.compiler_apt[0],
        arch.qemu_system: arch.qemu_apt,
    }
    if os.getuid() != 0:
        tools["newuidmap"] = "uidmap"
    missing = [package for tool, package in tools.items() if not shutil.which(tool)]
    if not static_libc(arch).is_file():
        missing.append(static_libc_package(arch))
    return sorted(set(missing))


def rootfs_problems() -> List[str]:
    """What stops a rootless mmdebstrap here, each a line that says what to do."""
    tools = {"mmdebstrap": "mmdebstrap", "tar": "tar"}
    if os.getuid() != 0:
        tools["newuidmap"] = "uidmap"
    missing = sorted({package for tool, package in tools.items() if not shutil.which(tool)})
    problems = []
    if missing:
        packages = " ".join(missing)
        problems.append(f"the guest's root filesystem needs: sudo apt-get install {packages}")
    ids = subordinate_ids_problem()
    return [*problems, *([ids] if ids else [])]


def check_guest_host(arch: Arch) -> None:
    """Raise one line naming every missing package of arch's guest, with the command."""
    missing = missing_packages(arch)
    if missing:
        raise KitError(f"{arch.name} guests need: sudo apt-get install {' '.join(missing)}")
    problems = rootfs_problems()
    if problems:
        raise KitError(problems[0])
