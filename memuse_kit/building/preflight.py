"""Checks before the expensive part of a build: each failure names what to do."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from memuse_kit.building import distributed
from memuse_kit.building.compiler import Compiler
from memuse_kit.building.kconfig import parse_options
from memuse_kit.core.errors import KitError
from memuse_kit.core.output import problem
from memuse_kit.core.runner import Runner
from memuse_kit.trees.kernel_version import KernelVersion


@dataclass(frozen=True)
class Requirement:
    package: str  # the Debian/Ubuntu package
    command: Optional[str] = None  # a program the package provides, if any
    header: Optional[str] = None  # or a header it installs
    since: Tuple[int, int] = (0, 0)  # kernels from this version need it


REQUIREMENTS: Tuple[Requirement, ...] = (
    Requirement("make", command="make"),
    Requirement("bc", command="bc"),
    Requirement("bison", command="bison"),
    Requirement("flex", command="flex"),
    Requirement("perl", command="perl"),
    Requirement("rsync", command="rsync"),
    Requirement("kmod", command="depmod"),
    Requirement("cpio", command="cpio"),
    Requirement("python3", command="python3"),
    Requirement("dpkg-dev", command="dpkg-buildpackage"),
    Requirement("fakeroot", command="fakeroot"),
    Requirement("libelf-dev", header="libelf.h"),
    Requirement("libssl-dev", header="openssl/ssl.h"),
    Requirement("debhelper", command="dh", since=(6, 12)),  # mkdebian of 6.12 asks for it
    Requirement("libdw-dev", header="elfutils/libdw.h", since=(7, 0)),  # 7.2 asks, 6.12 not
)

HEADER_DIRS = (Path("/usr/include"), Path("/usr/include/x86_64-linux-gnu"))
# depmod lives here, and a plain user's PATH on Debian has none of them
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")

# GiB a build needs in the cache; a distribution config with all its modules is big.
DISK_GIB = {"running": 30, "default": 8}


def tool_path() -> str:
    """PATH for finding and running the build's tools: the user's, then the sbin dirs."""
    parts = [part for part in os.environ.get("PATH", os.defpath).split(os.pathsep) if part]
    return os.pathsep.join(parts + [d for d in SBIN_DIRS if d not in parts])


def missing_packages(
    kernel: KernelVersion, requirements: Optional[Sequence[Requirement]] = None
) -> List[str]:
    missing = []
    for req in REQUIREMENTS if requirements is None else requirements:
        if kernel.tuple[:2] < req.since:
            continue
        if req.command and shutil.which(req.command, path=tool_path()):
            continue
        if req.header and any((d / req.header).is_file() for d in HEADER_DIRS):
            continue
        missing.append(req.package)
    return missing


def check_packages(kernel: KernelVersion) -> None:
    missing = missing_packages(kernel)
    if missing:
        raise KitError(
            f"missing build dependencies for Linux {kernel}: "
            f"sudo apt-get install {' '.join(missing)}"
        )


def check_not_root() -> None:
    if os.geteuid() == 0:
        raise KitError(
            "refusing to build the kernel as root: run invoke as your own user "
            "(install asks for sudo itself)"
        )


def free_gib(path: Path) -> float:
    probe = path
    while not probe.exists():
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    return usage.free / 2**30


def check_disk(path: Path, config: str) -> None:
    need = DISK_GIB.get(config, DISK_GIB["default"])
    free = free_gib(path)
    if free < need:
        raise KitError(
            f"only {free:.1f} GiB free under {path}; a {config} build needs about {need} GiB"
        )


def pahole_version() -> Optional[Tuple[int, int]]:
    if not shutil.which("pahole"):
        return None
    out = Runner().run(["pahole", "--version"], check=False, mutates=False)
    text = out.stdout.strip().lstrip("v")
    try:
        major, minor = text.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def btf_suits(kernel: KernelVersion, pahole: Optional[Tuple[int, int]]) -> Tuple[bool, str]:
    """Whether BTF can be generated: pahole 1.16+, and before 1.24 for kernels older than 5.19
    (newer pahole emits BTF kinds those kernels reject at module load)."""
    if pahole is None:
        return False, "pahole (package dwarves) is not installed"
    if pahole < (1, 16):
        return False, f"pahole {pahole[0]}.{pahole[1]} is older than 1.16"
    if not kernel.at_least(5, 19) and pahole >= (1, 24):
        return False, f"pahole {pahole[0]}.{pahole[1]} is too new for Linux {kernel}"
    return True, f"pahole {pahole[0]}.{pahole[1]}"


# Options whose objects a helper cannot compile as this machine would: GCC plugins are
# shared objects built here and loaded by the compiler (-fplugin=<obj>/scripts/gcc-plugins/...)
UNDISTRIBUTABLE = {
    "CONFIG_GCC_PLUGINS": "GCC plugins are built here and loaded by the compiler, which a "
    "helper cannot do",
}


def report(problems: Sequence[str], what: str) -> None:
    """Each problem on its own line; more than one end in a line that counts them."""
    if not problems:
        return
    if len(problems) == 1:
        raise KitError(problems[0])
    for line in problems:
        problem(f"memuse-kit: preflight: {line}")
    raise KitError(f"{len(problems)} problems with {what} (above); nothing was built")


def check_helpers(farm: distributed.Farm, cc: Compiler) -> None:
    """Each helper compiles a test file with its fallback off; the compiler's identity in
    the object must be this machine's, the one the tree needs (compiler.pick)."""
    report(distributed.probe_problems(farm, cc), f"the {farm.engine} helpers")


def undistributable(config_text: str) -> List[str]:
    options = parse_options(config_text)
    return [
        f"{name}=y in the configuration: {why}; build it here (without --distcc or "
        f"--icecream) or turn {name} off in a fragment"
        for name, why in UNDISTRIBUTABLE.items()
        if options.get(name) == "y"
    ]


def check_distributable(config: Path) -> None:
    report(undistributable(config.read_text()), "distributing this configuration")
