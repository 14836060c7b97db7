"""Which C compiler builds a given kernel: the tool picks it, not the user."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

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

    def make_args(self) -> Sequence[str]:
        host = f"{self.ccache} {self.command}" if self.ccache else self.command
        cc = f"{self.launcher} {self.command}" if self.launcher and not self.ccache else host
        return (f"CC={cc}", f"HOSTCC={host}")


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


def pick(kernel: KernelVersion, use_ccache: bool = True) -> Compiler:
    rule = rule_for(kernel)
    for candidate in rule.candidates:
        if shutil.which(candidate):
            ccache = shutil.which("ccache") if use_ccache else None
            return Compiler(candidate, version_of(candidate), "ccache" if ccache else None)
    raise KitError(
        f"Linux {kernel} needs {' or '.join(rule.candidates)} ({rule.why}): "
        f"sudo apt-get install {rule.apt_package}"
    )
