"""Which C compiler builds a given kernel: the tool picks it, not the user."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Tuple

from memuse_kit.core.arch import DEFAULT, Arch
from memuse_kit.core.errors import KitError
from memuse_kit.core.runner import Runner
from memuse_kit.trees.kernel_version import KernelVersion


@dataclass(frozen=True)
class CompilerRule:
    """Kernels below `before` build with the first of `candidates` that is installed."""

    before: Optional[Tuple[int, int]]
    candidates: Tuple[str, ...]
    apt_package: str
    why: str


# Upstream kernels before 5.17 trip over gcc 12 (objtool is built with -Werror and gcc 12
# adds -Werror=use-after-free); gcc 11 builds every kernel from 5.10 to 7.x.
RULES: Tuple[CompilerRule, ...] = (
    CompilerRule((5, 17), ("gcc-11",), "gcc-11", "kernels before 5.17 do not build with gcc 12"),
    CompilerRule(None, ("gcc", "gcc-14", "gcc-13", "gcc-12", "gcc-11"), "gcc", "default"),
)


@dataclass(frozen=True)
class Compiler:
    command: str
    version: str
    ccache: Optional[str]
    # distcc or icecc in front of CC; with ccache it goes in CCACHE_PREFIX instead, so that
    # CC and HOSTCC read as in a local build (building/distributed.py)
    launcher: Optional[str] = None
    # a cross build: the native compiler for the host programs, and ARCH=/CROSS_COMPILE=
    host_command: Optional[str] = None
    arch_args: Tuple[str, ...] = ()

    def make_args(self) -> Sequence[str]:
        cached = f"{self.ccache} {self.command}" if self.ccache else self.command
        cc = f"{self.launcher} {self.command}" if self.launcher and not self.ccache else cached
        native = self.host_command or self.command
        host = f"{self.ccache} {native}" if self.ccache else native
        return (*self.arch_args, f"CC={cc}", f"HOSTCC={host}")


def rule_for(kernel: KernelVersion) -> CompilerRule:
    for rule in RULES:
        if rule.before is None or kernel.tuple[:2] < rule.before:
            return rule
    raise AssertionError("the last rule matches every kernel")


def version_of(command: str) -> str:
    out = Runner().run([command, "--version"], check=False, mutates=False)
    first = out.stdout.splitlines()[0] if out.stdout else ""
    match = re.search(r"(\d+\.\d+(?:\.\d+)?)\s*$", first) or re.search(r"(\d+\.\d+\.\d+)", first)
    return match.group(1) if match else first.strip()


def apt_package(rule: CompilerRule, arch: Arch) -> str:
    """gcc-11 -> gcc-11-aarch64-linux-gnu, gcc -> gcc-aarch64-linux-gnu for a cross build."""
    if arch.cross_triplet is None:
        return rule.apt_package
    return f"{rule.apt_package}-{arch.cross_triplet}"


def pick(kernel: KernelVersion, use_ccache: bool = True, arch: Arch = DEFAULT) -> Compiler:
    """The compiler of the tree's rule for the architecture; a cross build also takes the
    host's own gcc for the programs kbuild runs while it builds."""
    rule = rule_for(kernel)
    ccache = "ccache" if use_ccache and shutil.which("ccache") else None
    for candidate in map(arch.compiler_command, rule.candidates):
        if shutil.which(candidate):
            found = Compiler(candidate, version_of(candidate), ccache)
            return found if arch.cross_triplet is None else _cross(found, kernel, arch)
    candidates = " or ".join(map(arch.compiler_command, rule.candidates))
    target = f" for {arch.name}" if arch.cross_triplet else ""
    raise KitError(
        f"Linux {kernel}{target} needs {candidates} ({rule.why}): "
        f"sudo apt-get install {apt_package(rule, arch)}"
    )


def _cross(target: Compiler, kernel: KernelVersion, arch: Arch) -> Compiler:
    native = pick(kernel, use_ccache=False)
    return replace(target, host_command=native.command, arch_args=arch.make_args())
