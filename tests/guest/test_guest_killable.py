"""A caller waiting for a contended mmap lock dies promptly when killed (the EINTR path).

memuse takes the target's mmap lock with mmap_read_lock_killable(): a fatal signal ends the
wait with -EINTR, which userspace never sees because the caller dies. So this is shown from
outside: the target fork()s over and over with a large populated mapping, and dup_mmap()
holds its mmap lock for write while it copies the page tables. A caller asking for memuse
is seen blocked in that wait (state D, sleeping in memuse), is sent SIGKILL, and must be
out of that wait while that same fork is still holding the lock. A wait that could not be killed
would last until the writer let go, so the fork would always report its end first. Then
the target is measured again, and the kernel log must be clean.
"""

from __future__ import annotations

import mmap
import os
import signal
import statistics
import struct
import time
from pathlib import Path
from typing import Iterator, List, NoReturn, Tuple

import pytest

from tests.guest_support import (
    MIB,
    REPORT,
    USER_KINDS,
    call,
    kill_and_reap,
    log_mark,
    readable,
    reports_since,
    run_forked,
    smaps_view,
    task_state,
    wait_for,
)

POPULATED = 1024 * MIB
KILLS = 7
# how many of the KILLS callers must die before the fork they wait for ends: an unkillable
# wait allows none; a killable one misses only when a kill lands in the last moments of a
# fork
DIED_WHILE_HELD = 3
FORK_STARTS = -1.0  # the record sent before each fork; after it, the fork's duration


def forking_target(populated: int, report_fd: int) -> NoReturn:
    """Fill a private mapping, then fork() children that exit at once, for ever.

    Before each fork FORK_STARTS goes to report_fd, after it the fork's duration (dup_mmap
    under the mmap write lock, most of it).
    """
    region = mmap.mmap(-1, populated, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    chunk = b"\1" * (16 * MIB)
    for offset in range(0, populated, len(chunk)):
        region[offset : offset + len(chunk)] = chunk
    while True:
        os.write(report_fd, struct.pack("d", FORK_STARTS))
        start = time.monotonic()
        child = os.fork()
        if child == 0:
            os._exit(0)
        held = time.monotonic() - start
        os.write(report_fd, struct.pack("d", held))
        os.waitpid(child, 0)


def blocked_caller(nr: int, target: int) -> NoReturn:
    """Ask for the target's call stack (a small walk) in a loop: mostly waiting for the lock."""
    while True:
        call(nr, target, 1)


@pytest.fixture
def forking() -> Iterator[Tuple[int, int]]:
    """The forking target's pid and the pipe its hold times arrive on."""
    read_end, write_end = os.pipe()
    target = run_forked(forking_target, POPULATED, write_end)
    os.close(write_end)
    try:
        wait_for(lambda: readable(read_end), 600, "the target's first fork")
        yield target, read_end
    finally:
        kill_and_reap(target)
        os.close(read_end)


class ForkLog:
    """The target's fork records, read as they come."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.records: List[float] = []
        self._partial = b""

    def read_new(self) -> List[float]:
        data = self._partial
        while readable(self.fd):
            chunk = os.read(self.fd, 8 * 1024)
            if not chunk:
                break
            data += chunk
        usable = len(data) - len(data) % 8
        self._partial = data[usable:]
        new = [value for (value,) in struct.iter_unpack("d", data[:usable])]
        self.records += new
        return new

    def fork_in_progress(self) -> bool:
        self.read_new()
        return bool(self.records) and self.records[-1] == FORK_STARTS

    def hold_times(self) -> List[float]:
        self.read_new()
        return [value for value in self.records if value != FORK_STARTS]


def waiting_in_memuse(pid: int) -> bool:
    """Whether the caller sleeps in memuse: in its mmap_read_lock_killable(), the one sleep.

    TASK_KILLABLE shows as D. wchan skips the rwsem functions (they are __sched), so it
    names memuse's own frame, but before 5.16 x86 computes wchan from frame pointers and
    shows 0 with the ORC unwinder: then /proc/PID/stack says where it sleeps. The walk
    itself never sleeps in D.
    """
    try:
        if task_state(pid) != "D":
            return False
        where = Path(f"/proc/{pid}/wchan").read_text()
        if where in ("", "0"):
            where = Path(f"/proc/{pid}/stack").read_text()
        return "memuse" in where
    except OSError:
        return False


def kill_while_waiting(nr: int, target: int, forks: ForkLog) -> Tuple[float, bool]:
    """Seconds from SIGKILL until a caller caught waiting for the target's lock stops
    waiting, and whether it stopped before the fork holding that lock ended.

    Leaving the wait is what killability means; tearing the dying caller's own memory down
    afterwards takes longer under KASAN and says nothing about memuse.
    """
    caller = run_forked(blocked_caller, nr, target)
    try:
        wait_for(
            lambda: waiting_in_memuse(caller) and forks.fork_in_progress(),
            300,
            "the caller to wait for the lock a fork holds",
        )
        forks_ended = len(forks.hold_times())
        killed = time.monotonic()
        os.kill(caller, signal.SIGKILL)
        wait_for(lambda: not waiting_in_memuse(caller), 300, "the killed caller to stop waiting")
        latency = time.monotonic() - killed
        return latency, len(forks.hold_times()) == forks_ended
    finally:
        kill_and_reap(caller)


def test_a_caller_waiting_for_a_contended_mmap_lock_dies_promptly(nr, forking):
    target, holds_fd = forking
    forks = ForkLog(holds_fd)
    mark = log_mark()
    kills = [kill_while_waiting(nr, target, forks) for _ in range(KILLS)]
    holds = forks.hold_times()
    died_while_held = sum(held for _, held in kills)
    REPORT.append(
        f"killable wait: {len(holds)} forks of a {POPULATED // MIB} MiB process held the mmap "
        f"lock a median {statistics.median(holds):.3f} s; callers killed while waiting "
        f"stopped waiting in {', '.join(f'{s:.3f}' for s, _ in kills)} s, "
        f"{died_while_held} of {KILLS} before the fork let go"
    )

    os.kill(target, signal.SIGSTOP)
    wait_for(lambda: task_state(target) == "T", 60, "the target to stop")
    view = smaps_view(target)
    assert [call(nr, target, kind) for kind in USER_KINDS] == [
        (view.expected(kind), 0) for kind in USER_KINDS
    ]
    assert view.expected(5) >= POPULATED
    assert died_while_held >= DIED_WHILE_HELD, kills
    # an unkillable wait would last the rest of the fork: about half a fork, in the median
    latencies = [latency for latency, _ in kills]
    assert statistics.median(latencies) < 0.25 * statistics.median(holds), (kills, holds)
    assert reports_since(mark) == []
