"""fdcount(pid, flags), the kit's example syscall, against /proc/PID/fd, as root in the guest.

The source of truth is /proc/PID/fd, read by a reader that does not use fdcount: the number of
entries it lists for a stopped process must be fdcount's answer, for processes with known
numbers of descriptors (a table that had to grow past its first 64 slots included, and a
sparse one with a descriptor far above the others). Where the kernel's /proc reports the
count as the directory's size (6.2 and later), that must agree too.

Errors: flags other than 0 are EINVAL, checked first; a pid that names no task is ESRCH. The
permission is the one /proc/PID/fd's entries ask for (ptrace read access with the caller's fs
credentials): for an unprivileged caller, fdcount succeeds exactly where listing /proc/PID/fd
does, and both refuse with EACCES.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
import subprocess
import threading
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

import pytest

from memuse_client import MemuseUnavailable
from memuse_client.discovery import kallsyms_has
from memuse_client.syscall import syscall_number
from tests.guest_support import (
    REPORT,
    as_user,
    call,
    drop_privileges,
    kill_and_reap,
    nobody,
    task_state,
    wait_for,
)

INT_MAX = 2**31 - 1
INT_MIN = -(2**31)
UINT_MAX = 2**32 - 1
PR_SET_DUMPABLE = 4
FIRST_TABLE = 64  # the descriptors a new process's table holds before it must grow
_libc = ctypes.CDLL(None, use_errno=True)


@pytest.fixture(scope="module")
def fdcount_nr() -> int:
    """fdcount's number in the running kernel, found by its name like memuse's."""
    if kallsyms_has("fdcount") is not True:
        pytest.skip("the running kernel has no fdcount (build it with --syscall fdcount)")
    try:
        return syscall_number(name="fdcount").nr
    except MemuseUnavailable as error:
        pytest.fail(f"this kernel has fdcount but its number is unknown: {error}")


def fdcount(nr: int, pid: int, flags: int = 0) -> Tuple[int, int]:
    """(count, 0), or (-1, errno)."""
    return call(nr, pid, flags)


def listed(pid: object) -> Tuple[int, int]:
    """What /proc/PID/fd lists, as fdcount answers: (entries, 0), or (-1, errno)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd")), 0
    except OSError as error:
        return -1, error.errno or 0


# --- stopped processes with known descriptors -------------------------------------------------


def _stopped(setup: Callable[[], None]) -> int:
    """A forked child that ran setup() (as root, or not) and stopped itself; its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            setup()
            os.kill(os.getpid(), signal.SIGSTOP)
        finally:
            os._exit(0)
    wait_for(lambda: task_state(pid) == "T", 60, f"{pid} to stop")
    return pid


@pytest.fixture
def stopped() -> Iterator[Callable[[Callable[[], None]], int]]:
    children: List[int] = []

    def start(setup: Callable[[], None]) -> int:
        children.append(_stopped(setup))
        return children[-1]

    yield start
    for pid in children:
        kill_and_reap(pid)


def only_standard_fds() -> None:
    """Close everything pytest left open but stdin, stdout and stderr."""
    os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def opened(count: int) -> Callable[[], None]:
    def setup() -> None:
        only_standard_fds()
        for _ in range(count):
            os.open(os.devnull, os.O_RDONLY)

    return setup


def proc_size(pid: int) -> int:
    """/proc/PID/fd's size: its count where the kernel reports one (6.2+), else 0."""
    return os.stat(f"/proc/{pid}/fd").st_size


@pytest.mark.parametrize("extra", [0, 1, FIRST_TABLE - 4, FIRST_TABLE - 3, 500])
def test_the_count_of_a_stopped_process_is_what_proc_lists(fdcount_nr, stopped, extra):
    """3 + extra descriptors; 61 fill the first table exactly, 62 make it grow (a new table,
    the old one freed after RCU: what fdcount's rcu_read_lock() is for)."""
    pid = stopped(opened(extra))
    count, code = fdcount(fdcount_nr, pid)
    assert (count, code) == listed(pid)
    assert count == 3 + extra
    assert proc_size(pid) in (0, count)
    REPORT.append(f"fdcount of a process with {3 + extra} descriptors: {count} (/proc: same)")


def test_a_sparse_table_counts_descriptors_not_the_highest_number(fdcount_nr, stopped):
    def setup() -> None:
        only_standard_fds()
        fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(10)]
        for fd in fds[1::2]:
            os.close(fd)
        os.dup2(0, 700)

    pid = stopped(setup)
    assert fdcount(fdcount_nr, pid) == listed(pid) == (3 + 5 + 1, 0)
    assert sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))[-1] == 700


def test_threads_share_their_process_s_descriptors(fdcount_nr, stopped):
    def setup() -> None:
        only_standard_fds()
        os.open(os.devnull, os.O_RDONLY)
        threading.Thread(target=threading.Event().wait, daemon=True).start()

    pid = stopped(setup)
    threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    assert len(threads) == 2
    for tid in threads:
        assert fdcount(fdcount_nr, tid) == listed(f"{pid}/task/{tid}") == (4, 0)


def test_the_caller_counts_itself(fdcount_nr):
    """Reading /proc/self/fd opens the directory: it lists one descriptor more than the
    caller has, which is what an independent reader costs."""
    me = os.getpid()
    count, code = fdcount(fdcount_nr, me)
    entries, _ = listed("self")
    assert code == 0 and count == entries - 1
    read, write = os.pipe()
    try:
        assert fdcount(fdcount_nr, me) == (count + 2, 0)
    finally:
        os.close(read)
        os.close(write)


def test_a_zombie_and_a_kernel_thread_count_what_proc_lists(fdcount_nr):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        wait_for(lambda: task_state(pid) == "Z", 30, f"{pid} to become a zombie")
        assert fdcount(fdcount_nr, pid) == listed(pid) == (0, 0)  # its files are gone
    finally:
        kill_and_reap(pid)
    assert Path("/proc/2/comm").read_text().strip() == "kthreadd"
    assert fdcount(fdcount_nr, 2) == listed(2)


# --- errors -----------------------------------------------------------------------------------

BAD_FLAGS = (1, 2, 0x80000000, UINT_MAX)


def test_flags_other_than_0_are_einval_before_the_pid_is_looked_at(fdcount_nr, reaped_pid):
    for pid in (os.getpid(), 1, reaped_pid, -1, 0):
        for flags in BAD_FLAGS:
            assert fdcount(fdcount_nr, pid, flags) == (-1, errno.EINVAL), (pid, flags)


def test_flags_are_a_c_unsigned_int_so_only_their_low_32_bits_count(fdcount_nr):
    assert fdcount(fdcount_nr, 1, 1 << 32) == fdcount(fdcount_nr, 1, 0)
    assert fdcount(fdcount_nr, 1, (1 << 32) | 1) == (-1, errno.EINVAL)


def test_pids_that_name_no_task_are_esrch(fdcount_nr, reaped_pid):
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    for pid in (reaped_pid, 0, -1, -2, INT_MIN, INT_MAX, pid_max):
        assert fdcount(fdcount_nr, pid) == (-1, errno.ESRCH), pid


# --- permission parity with /proc for an unprivileged caller ----------------------------------


def _as_nobody(keep_dumpable: bool) -> Callable[[], None]:
    """Drop root for nobody without exec: that makes a process not dumpable, unless it says
    it wants to be (PR_SET_DUMPABLE), and /proc hands a non-dumpable process's fd to root."""

    def setup() -> None:
        uid, gid = nobody()
        drop_privileges(uid, gid)
        if keep_dumpable:
            _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
        os.open(os.devnull, os.O_RDONLY)

    return setup


@pytest.fixture
def exec_as_nobody() -> Iterator[int]:
    """`sleep` exec'd as nobody (dumpable again after the exec), stopped once it sleeps."""
    uid, gid = nobody()
    child = subprocess.Popen(
        ["sleep", "1000"],
        stdin=subprocess.DEVNULL,
        preexec_fn=lambda: drop_privileges(uid, gid),
    )
    comm = Path(f"/proc/{child.pid}/comm")
    wait_for(lambda: comm.read_text().strip() == "sleep", 60, "sleep to start")
    os.kill(child.pid, signal.SIGSTOP)
    wait_for(lambda: task_state(child.pid) == "T", 30, "sleep to stop")
    yield child.pid
    kill_and_reap(child.pid)


def test_an_unprivileged_caller_may_count_exactly_what_proc_lists_to_it(
    fdcount_nr, stopped, exec_as_nobody
):
    targets = {
        "pid 1 (root)": 1,
        "a stopped process of root": stopped(opened(2)),
        "nobody's, made dumpable": stopped(_as_nobody(keep_dumpable=True)),
        "nobody's, not dumpable": stopped(_as_nobody(keep_dumpable=False)),
        "sleep exec'd as nobody": exec_as_nobody,
    }
    allowed = {"nobody's, made dumpable", "sleep exec'd as nobody"}

    def seen() -> Dict[str, Dict[str, List[int]]]:
        return {
            name: {"fdcount": list(fdcount(fdcount_nr, pid)), "proc": list(listed(pid))}
            for name, pid in targets.items()
        }

    uid, gid = nobody()
    answers = as_user(uid, gid, seen)
    for name, answer in answers.items():
        assert answer["fdcount"] == answer["proc"], name
        if name in allowed:
            assert answer["fdcount"][1] == 0 and answer["fdcount"][0] >= 3, name
        else:
            assert answer["fdcount"] == [-1, errno.EACCES], name
    REPORT.append(
        "fdcount as nobody: "
        + ", ".join(f"{name} {'allowed' if name in allowed else 'EACCES'}" for name in answers)
    )
