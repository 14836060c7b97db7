"""Userspace side of memuse: call the memuse(pid, mem_type) system call, cross-check it
against /proc/PID/smaps, and run the lab report's experiment on native scenarios.

    from memuse_client import Kind, memuse, smaps_memuse, stopped_scenario

    with stopped_scenario("heap-dontneed", 64, 16) as pid:   # pid: an int, stopped
        assert memuse(pid, Kind.HEAP) == smaps_memuse(pid, Kind.HEAP) == 48 * 4096
        pid.info                                             # what the child reported

memuse() raises MemuseUnavailable on a kernel without the syscall; raw_memuse(nr, pid, n)
calls a given number with any n, for testing the kernel's own checks (EINVAL...).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .errors import MemuseUnavailable, ScenarioError, ScenarioUnavailable
    from .kinds import Kind, parse_kind
    from .scenarios import StoppedScenario, stopped_scenario
    from .smaps import smaps_memuse
    from .syscall import memuse, raw_memuse

# each name loads its module on first use: memuse-kit's build imports one small module of
# this package, and a no-op `invoke build` should not pay for ctypes and the scenarios
_HOME = {
    "Kind": "kinds",
    "MemuseUnavailable": "errors",
    "ScenarioError": "errors",
    "ScenarioUnavailable": "errors",
    "StoppedScenario": "scenarios",
    "memuse": "syscall",
    "parse_kind": "kinds",
    "raw_memuse": "syscall",
    "smaps_memuse": "smaps",
    "stopped_scenario": "scenarios",
}

__all__ = [
    "Kind",
    "MemuseUnavailable",
    "ScenarioError",
    "ScenarioUnavailable",
    "StoppedScenario",
    "memuse",
    "parse_kind",
    "raw_memuse",
    "smaps_memuse",
    "stopped_scenario",
]


def __getattr__(name: str) -> object:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOME[name]}"), name)
