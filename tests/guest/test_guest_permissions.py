"""Permission parity: an unprivileged caller may measure exactly what /proc/PID/smaps shows it.

The caller is a forked child that dropped root for nobody. For each target it calls memuse
for every kind and opens /proc/PID/smaps; memuse succeeds for every kind (the kernel stack
included) exactly when the open does, and both refuse with EACCES. The check is mm_access():
ptrace read access with the caller's fs credentials (PTRACE_MODE_READ_FSCREDS): same uid and
gid as the target and the target dumpable, or CAP_SYS_PTRACE; a process may always read
itself (same mm); a task without an mm has nothing to refuse.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import pytest

from memuse_client import stopped_scenario
from tests.guest_support import (
    ALL_KINDS,
    USER_KINDS,
    as_user,
    call,
    drop_privileges,
    expected_thread_size,
    in_child,
    kill_and_reap,
    nobody,
    smaps_view,
    task_state,
    wait_for,
)

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
# an owner for the fs-credentials test that no other process has
OTHER_UID = 4242
_libc = ctypes.CDLL(None, use_errno=True)

Probe = Dict[str, object]


def probe(nr: int, pid: int) -> Probe:
    """What the calling process may see of `pid`: memuse per kind, and opening smaps."""
    try:
        with open(f"/proc/{pid}/smaps"):
            smaps_errno = 0
    except OSError as error:
        smaps_errno = error.errno
    return {
        "memuse": {str(kind): list(call(nr, pid, kind)) for kind in ALL_KINDS},
        "smaps": smaps_errno,
    }


def refused(seen: Probe) -> bool:
    return seen == {
        "memuse": {str(kind): [-1, errno.EACCES] for kind in ALL_KINDS},
        "smaps": errno.EACCES,
    }


def allowed(seen: Probe) -> bool:
    """Every kind succeeded and smaps opened."""
    memuse = seen["memuse"]
    assert isinstance(memuse, dict)
    return seen["smaps"] == 0 and all(code == 0 for _, code in memuse.values())


def agrees(nr: int, pid: int, seen: Probe) -> bool:
    """Allowed, and the user kinds equal smaps as read by the same caller (pid is stopped)."""
    view = smaps_view(pid)
    wanted = {str(kind): [view.expected(kind), 0] for kind in USER_KINDS}
    wanted["2"] = [expected_thread_size(), 0]
    return seen["smaps"] == 0 and seen["memuse"] == wanted


def dumpable() -> int:
    return int(_libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))


def sleeper(argv: List[str], as_uid: Optional[int] = None) -> subprocess.Popen[bytes]:
    """`sleep` started with exec (as uid and gid `as_uid`), stopped once it sleeps."""
    become = None if as_uid is None else functools.partial(drop_privileges, as_uid, as_uid)
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=become)
    comm = Path(f"/proc/{child.pid}/comm")
    wait_for(
        lambda: comm.read_text().strip() == "sleep" and task_state(child.pid) == "S",
        60,
        "sleep to start",
    )
    os.kill(child.pid, signal.SIGSTOP)
    wait_for(lambda: task_state(child.pid) == "T", 30, "sleep to stop")
    return child


def as_nobody(function: Callable[[], object]) -> object:
    uid, gid = nobody()
    return as_user(uid, gid, function)


@pytest.fixture(scope="module")
def sleep_binary() -> str:
    found = shutil.which("sleep")
    if not found:
        pytest.skip("no sleep binary")
    return found


@pytest.fixture
def root_scenario() -> Iterator[int]:
    with stopped_scenario("do-nothing") as pid:
        yield pid.pid


def test_nobody_is_refused_root_processes_as_by_proc(nr, root_scenario):
    seen = as_nobody(lambda: {str(pid): probe(nr, pid) for pid in (1, root_scenario)})
    assert isinstance(seen, dict)
    for pid, what in seen.items():
        assert refused(what), f"pid {pid}: {what}"


def test_the_kind_is_checked_before_the_permission(nr):
    assert as_nobody(lambda: [call(nr, 1, kind) for kind in (0, 6, -1)]) == [[-1, errno.EINVAL]] * 3


def test_nobody_may_measure_itself_though_it_is_not_dumpable(nr):
    def own() -> Dict[str, object]:
        me = os.getpid()
        seen = probe(nr, me)
        # of a running process only the kernel mappings and kernel stack hold still
        return {
            "dumpable": dumpable(),
            "allowed": allowed(seen),
            "kernel mappings": seen["memuse"]["4"],  # type: ignore[index]
            "smaps": smaps_view(me).expected(4),
            "kernel stack": seen["memuse"]["2"],  # type: ignore[index]
        }

    # setresuid away from root cleared the dumpable flag; a process may always read itself
    seen = as_nobody(own)
    assert isinstance(seen, dict)
    assert seen == {
        "dumpable": 0,
        "allowed": True,
        "kernel mappings": [seen["smaps"], 0],
        "smaps": seen["smaps"],
        "kernel stack": [expected_thread_size(), 0],
    }


def test_nobody_may_measure_a_child_it_started_with_exec(nr, sleep_binary):
    def exec_child() -> Dict[str, object]:
        child = sleeper([sleep_binary, "600"])
        try:
            return {"equal": agrees(nr, child.pid, probe(nr, child.pid))}
        finally:
            kill_and_reap(child.pid)

    # exec made the child dumpable again: same uid, dumpable, so smaps and memuse allow it
    assert as_nobody(exec_child) == {"equal": True}


def test_a_child_forked_after_dropping_root_is_refused_until_made_dumpable(nr):
    def forked_child() -> Dict[str, object]:
        commands, acks = os.pipe(), os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report its dumpable flag, set it when told, wait
            os.write(acks[1], bytes([dumpable()]))
            os.read(commands[0], 1)
            _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
            os.write(acks[1], bytes([dumpable()]))
            while True:
                signal.pause()
        try:
            before_flag = os.read(acks[0], 1)[0]
            before = probe(nr, pid)
            os.write(commands[1], b"x")
            after_flag = os.read(acks[0], 1)[0]
            after = probe(nr, pid)
        finally:
            kill_and_reap(pid)
        return {
            "dumpable before": before_flag,
            "refused before": refused(before),
            "dumpable after": after_flag,
            "allowed after": allowed(after),
        }

    assert as_nobody(forked_child) == {
        "dumpable before": 0,
        "refused before": True,
        "dumpable after": 1,
        "allowed after": True,
    }


def test_root_may_measure_a_process_that_is_not_dumpable(nr):
    uid, gid = nobody()
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        drop_privileges(uid, gid)
        os.write(ready_write, bytes([dumpable()]))
        while True:
            signal.pause()
    try:
        assert os.read(ready_read, 1)[0] == 0
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: task_state(pid) == "T", 30, "the child to stop")
        assert agrees(nr, pid, probe(nr, pid))
    finally:
        kill_and_reap(pid)


def test_a_kernel_thread_and_a_zombie_have_no_map_to_refuse(nr):
    """No mm, nothing /proc refuses (smaps opens, empty): memuse refuses no kind either.

    Kind 2 makes the same mm_access() check as the others, so parity holds for it too:
    kthreadd's live kernel stack is THREAD_SIZE, the zombie's (freed) is 0.
    """
    zombie = os.fork()
    if zombie == 0:
        os._exit(0)
    try:
        wait_for(lambda: task_state(zombie) == "Z", 30, "a zombie")
        # its stack goes with its last context switch, a moment after it shows Z
        wait_for(lambda: call(nr, zombie, 2) == (0, 0), 5, "the zombie's kernel stack to go")
        seen = as_nobody(lambda: [probe(nr, 2), probe(nr, zombie)])
    finally:
        kill_and_reap(zombie)
    user_kinds = {str(kind): [0, 0] for kind in USER_KINDS}
    assert seen == [
        {"memuse": {**user_kinds, "2": [expected_thread_size(), 0]}, "smaps": 0},
        {"memuse": {**user_kinds, "2": [0, 0]}, "smaps": 0},
    ]


def test_the_check_uses_the_fs_credentials(nr, sleep_binary):
    """Real uid the target's, fs uid not: refused, like smaps; setfsuid to it: allowed."""
    uid, _ = nobody()
    expected_thread_size()  # cached before the child drops root
    child = sleeper([sleep_binary, "600"], as_uid=OTHER_UID)
    try:
        seen = in_child(lambda: _with_fsuid(nr, child.pid, uid))
    finally:
        kill_and_reap(child.pid)
    assert seen == {"as fsuid nobody": True, "as fsuid owner": True}


def _with_fsuid(nr: int, target: int, fs_uid: int) -> Dict[str, bool]:
    """From root: real uid OTHER_UID, effective and fs uid `fs_uid`; then fs uid OTHER_UID."""
    drop_privileges(fs_uid, OTHER_UID, ruid=OTHER_UID)
    first = refused(probe(nr, target))
    _libc.setfsuid(OTHER_UID)  # permitted: it is the real uid
    return {"as fsuid nobody": first, "as fsuid owner": allowed(probe(nr, target))}
