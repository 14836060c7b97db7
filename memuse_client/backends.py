"""Two ways to measure the kinds of a process: the memuse syscall, or /proc/PID/smaps."""

from __future__ import annotations

from typing import Dict, Iterable, Optional

from .discovery import SyscallNumber
from .kinds import ALL_KINDS, Kind
from .smaps import smaps_measure
from .syscall import raw_memuse, syscall_number

BACKENDS = ("syscall", "smaps")
Measures = Dict[Kind, Optional[int]]


class Backend:
    name = ""

    def describe(self) -> str:
        raise NotImplementedError

    def measure(self, pid: int, kinds: Iterable[Kind] = ALL_KINDS) -> Measures:
        """Bytes per kind; None where the backend cannot tell (smaps' kernel_stack)."""
        raise NotImplementedError


class SyscallBackend(Backend):
    name = "syscall"

    def __init__(self, number: SyscallNumber) -> None:
        self.number = number

    def describe(self) -> str:
        return f"memuse system call {self.number.nr} ({self.number.source})"

    def measure(self, pid: int, kinds: Iterable[Kind] = ALL_KINDS) -> Measures:
        nr, source = self.number.nr, self.number.source
        return {kind: raw_memuse(nr, pid, int(kind), source) for kind in kinds}


class SmapsBackend(Backend):
    name = "smaps"

    def describe(self) -> str:
        return "smaps backend: computed in userspace from /proc/PID/smaps, not by the syscall"

    def measure(self, pid: int, kinds: Iterable[Kind] = ALL_KINDS) -> Measures:
        return smaps_measure(pid, kinds)


def make_backend(name: str, nr: Optional[int] = None, force: bool = False) -> Backend:
    """The backend called `name`; for the syscall this finds its number (MemuseUnavailable).

    An explicit nr must be confirmed to be memuse unless force (see discovery.FORCE_RISK)."""
    if name == "smaps":
        return SmapsBackend()
    if name == "syscall":
        return SyscallBackend(syscall_number(nr, force))
    raise ValueError(f"unknown backend {name!r} (expected one of {', '.join(BACKENDS)})")
