"""The errors and edge cases of memuse(pid, mem_type), as root.

Observed order of the checks: the kind first (EINVAL, whatever the pid), then the pid
(ESRCH), then the permission (EACCES, see test_guest_permissions). A task without an mm
(kernel thread, zombie) gives 0 for the user-memory kinds; its kernel stack is THREAD_SIZE
while it has one (a kernel thread) and 0 once it is freed (a zombie).
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path
from typing import Iterator

import pytest

from tests.guest_support import (
    ALL_KINDS,
    USER_KINDS,
    call,
    expected_thread_size,
    in_child,
    kill_and_reap,
    read_smaps,
    smaps_view,
    task_state,
    wait_for,
)

INT_MAX = 2**31 - 1
INT_MIN = -(2**31)
INVALID_KINDS = (0, 6, 7, -1, 100, INT_MAX, INT_MIN)
CLONE_NEWPID = 0x20000000


@pytest.fixture
def zombie() -> Iterator[int]:
    """A child that exited and is not reaped yet."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        wait_for(lambda: task_state(pid) == "Z", 30, f"{pid} to become a zombie")
        yield pid
    finally:
        kill_and_reap(pid)


@pytest.mark.parametrize("kind", INVALID_KINDS)
def test_a_kind_outside_1_to_5_is_einval(nr, kind):
    for pid in (os.getpid(), 1, 2):
        assert call(nr, pid, kind) == (-1, errno.EINVAL), f"pid {pid}"


def test_einval_is_checked_before_the_pid(nr, reaped_pid):
    for kind in INVALID_KINDS:
        assert call(nr, reaped_pid, kind) == (-1, errno.EINVAL)
        assert call(nr, -1, kind) == (-1, errno.EINVAL)


def test_the_kind_is_a_c_int_so_only_its_low_32_bits_count(nr):
    # the kernel's `int mem_type` sees the low half of the register, as for every int argument
    me = os.getpid()
    assert call(nr, me, (1 << 32) | 4) == call(nr, me, 4)
    assert call(nr, me, (1 << 32) | 2) == (expected_thread_size(), 0)
    assert call(nr, me, 1 << 32) == (-1, errno.EINVAL)
    assert call(nr, me, (1 << 40) | 6) == (-1, errno.EINVAL)


def test_a_reaped_pid_is_esrch(nr, reaped_pid):
    for kind in ALL_KINDS:
        assert call(nr, reaped_pid, kind) == (-1, errno.ESRCH)


def test_pids_that_name_no_process_are_esrch(nr):
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    # 0 is not "the caller" here, unlike for some system calls: no task has pid 0 in the idr
    for pid in (0, -1, -2, INT_MIN, INT_MAX, pid_max):
        for kind in ALL_KINDS:
            assert call(nr, pid, kind) == (-1, errno.ESRCH), f"pid {pid} kind {kind}"


def test_a_kernel_thread_has_a_kernel_stack_and_no_user_memory(nr):
    assert Path("/proc/2/comm").read_text().strip() == "kthreadd"
    assert read_smaps(2) == []
    assert call(nr, 2, 2) == (expected_thread_size(), 0)
    for kind in USER_KINDS:
        assert call(nr, 2, kind) == (0, 0), f"kind {kind}"


def test_a_zombie_has_no_memory_and_its_kernel_stack_is_freed(nr, zombie):
    assert read_smaps(zombie) == []
    for kind in USER_KINDS:
        assert call(nr, zombie, kind) == (0, 0), f"kind {kind}"
    # the stack is released by the zombie's last context switch, a moment after it shows Z
    wait_for(lambda: call(nr, zombie, 2) == (0, 0), 5, "the zombie's kernel stack to go")


def test_a_zombie_once_reaped_is_esrch(nr, zombie):
    os.waitpid(zombie, 0)
    for kind in ALL_KINDS:
        assert call(nr, zombie, kind) == (-1, errno.ESRCH)


def test_the_caller_may_measure_itself(nr):
    me = os.getpid()
    assert call(nr, me, 2) == (expected_thread_size(), 0)
    assert call(nr, me, 4) == (smaps_view(me).expected(4), 0)
    total, code = call(nr, me, 5)
    assert code == 0 and total > 0


def test_pids_are_those_of_the_callers_pid_namespace(nr):
    """In a new pid namespace the caller is pid 1, and the outer pids do not exist."""
    outer = os.getpid()

    def in_a_new_namespace() -> dict:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWPID) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWPID)")
        # the first child forked after unshare is pid 1 of the new namespace
        return in_child(lambda: _seen_as_pid_1(nr, outer))

    seen = in_child(in_a_new_namespace)
    assert seen == {
        "getpid": 1,
        "kernel mappings of pid 1 (itself)": [seen["its smaps"], 0],
        "kernel stack of pid 1": [expected_thread_size(), 0],
        "pid 2 (kthreadd outside)": [-1, errno.ESRCH],
        "the outer pid of pytest": [-1, errno.ESRCH],
        "its smaps": seen["its smaps"],
    }
    assert seen["its smaps"] > 0


def _seen_as_pid_1(nr: int, outer: int) -> dict:
    return {
        "getpid": os.getpid(),
        "kernel mappings of pid 1 (itself)": call(nr, 1, 4),
        "kernel stack of pid 1": call(nr, 1, 2),
        "pid 2 (kthreadd outside)": call(nr, 2, 5),
        "the outer pid of pytest": call(nr, outer, 5),
        "its smaps": smaps_view("self").expected(4),
    }
