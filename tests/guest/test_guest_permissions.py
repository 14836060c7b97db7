"""Permission parity: an unprivileged caller may measure exactly what /proc/PID/smaps shows it.

The caller is a forked child that dropped root for nobody. For each target it calls memuse
for every kind and opens /proc/PID/smaps; memuse succeeds for every kind (the kernel stack
included) exactly when the open does, and both refuse with EACCES. The check is mm_access():
ptrace read access with the caller's fs credentials (PTRACE_MODE_READ_FSCREDS): same uid and
gid as the target and the target dumpable, or CAP_SYS_PTRACE; a process may always read
an mm it is using itself (same mm); where the tree's mm_access() says so, CAP_PERFMON also
grants it; a task without an mm has nothing to refuse.

Kind 2, the kernel stack, reads no memory map, yet the README promises it grants exactly
what smaps grants. Every case here checks all five kinds, kind 2 included, and two cases
exist for it: a process sharing the target's mm without being its thread (clone(CLONE_VM)),
and a CAP_PERFMON caller. A ptrace_may_access() check alone would refuse both.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import pytest

from memuse_client import stopped_scenario
from memuse_kit.patching.probes import c_function
from tests.guest_support import (
    ALL_KINDS,
    REPORT,
    USER_KINDS,
    as_user,
    call,
    callers_binary,
    drop_privileges,
    expected_thread_size,
    in_child,
    kill_and_reap,
    nobody,
    running_builds,
    smaps_view,
    task_state,
    wait_for,
)

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
CAP_PERFMON = 38
LINUX_CAPABILITY_VERSION_3 = 0x20080522
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


def test_a_process_sharing_the_mm_may_measure_it_though_not_dumpable(nr):
    """mm_access()'s first rule: the caller's own mm. callers.c, run as nobody and made not
    dumpable, starts a sibling with clone(CLONE_VM) and no CLONE_THREAD (another thread group,
    so ptrace_may_access() alone refuses it) and forks a child (its own mm, the same uid,
    not dumpable either). smaps and every kind of memuse allow the first, refuse the second.
    """
    binary = callers_binary()
    uid, gid = nobody()
    expected_thread_size()  # cached while root
    done = subprocess.run(
        [str(binary), "shared-mm", str(nr)],
        preexec_fn=functools.partial(drop_privileges, uid, gid),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    sibling, forked = seen["sibling sharing the mm"], seen["forked child"]
    assert seen["dumpable"] == 0
    assert allowed(sibling), sibling
    assert sibling["memuse"]["2"] == [expected_thread_size(), 0]
    assert refused(forked), forked


def test_cap_perfmon_grants_every_kind_exactly_where_it_grants_smaps(nr, root_scenario):
    """nobody holding CAP_PERFMON and no other capability, against a root process: newer
    mm_access() lets it read (perfmon_capable()), older ones refuse. Whichever this tree's
    mm_access() does, smaps and all five kinds must decide the same, and as the tree says."""
    grants = mm_access_grants_perfmon(nr)
    seen = in_child(lambda: perfmon_only_probe(nr, root_scenario))
    REPORT.append(
        f"permissions: nobody with CAP_PERFMON only is {'allowed' if grants else 'refused'} "
        "a root process by this tree's mm_access(); smaps and every kind of memuse agree"
    )
    assert seen["capabilities"] == 1 << CAP_PERFMON
    assert (allowed if grants else refused)(seen["probe"]), seen["probe"]


def mm_access_grants_perfmon(nr: int) -> bool:
    """Whether the running kernel's tree lets perfmon_capable() read another's mm."""
    trees = {record.tree for record in running_builds(nr)}
    assert len(trees) == 1 and all(trees), f"the builds name trees {trees}"
    fork_c = (Path(trees.pop()) / "kernel/fork.c").read_text()
    body = c_function(fork_c, "may_access_mm") or c_function(fork_c, "mm_access") or ""
    assert "ptrace_may_access(" in body, "kernel/fork.c's mm_access() was not found"
    return "perfmon_capable(" in body


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def perfmon_only_probe(nr: int, target: int) -> Dict[str, object]:
    """In a forked child: become nobody keeping CAP_PERFMON alone, then probe the target."""
    uid, gid = nobody()
    _libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)
    drop_privileges(uid, gid)  # the effective set is emptied, the permitted one kept
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    word, bit = divmod(CAP_PERFMON, 32)
    data[word].effective = data[word].permitted = 1 << bit
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
    return {"capabilities": effective_capabilities(), "probe": probe(nr, target)}


def effective_capabilities() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise AssertionError("no CapEff in /proc/self/status")
