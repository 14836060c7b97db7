from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memuse_client import Kind, MemuseUnavailable, memuse, parse_kind, raw_memuse
from memuse_client import syscall as syscall_module
from tests.client_support import ABSENT_NR, failing_syscall

# harmless x86_64 system calls that take (pid) and fail the way memuse does
SYS_BRK = 12
SYS_SCHED_GETSCHEDULER = 145


@pytest.fixture(autouse=True)
def fresh_discovery(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMUSE_KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MEMUSE_NR", raising=False)
    syscall_module.clear_cache()
    yield
    syscall_module.clear_cache()


def test_kinds_are_numbered_like_the_kernel():
    assert [(kind.key, int(kind)) for kind in Kind] == [
        ("stack", 1),
        ("kernel_stack", 2),
        ("heap", 3),
        ("kernel_mappings", 4),
        ("total", 5),
    ]


@pytest.mark.parametrize(
    "given", [Kind.HEAP, 3, "3", "heap", "HEAP", " heap "], ids=lambda value: repr(value)
)
def test_kinds_parse_from_numbers_and_names(given):
    assert parse_kind(given) is Kind.HEAP


def test_kernel_stack_parses_with_a_dash_too():
    assert parse_kind("kernel-stack") is Kind.KERNEL_STACK


@pytest.mark.parametrize("given", [0, 6, "6", "heaps", "", True, -1])
def test_unknown_kinds_are_value_errors(given):
    with pytest.raises(ValueError, match="unknown kind"):
        parse_kind(given)


def test_a_bad_kind_fails_before_any_system_call(monkeypatch):
    monkeypatch.setattr(syscall_module, "_syscall_function", pytest.fail)
    with pytest.raises(ValueError, match="unknown kind"):
        memuse(os.getpid(), 9, nr=ABSENT_NR)


def test_enosys_is_the_clear_error(monkeypatch):
    monkeypatch.setenv("MEMUSE_NR", str(ABSENT_NR))
    monkeypatch.setenv("MEMUSE_FORCE", "1")  # unconfirmed numbers are refused otherwise
    with pytest.raises(MemuseUnavailable) as caught:
        memuse(os.getpid(), Kind.TOTAL)
    message = str(caught.value)
    assert f"system call {ABSENT_NR} (from MEMUSE_NR) is not implemented" in message
    assert "invoke build install" in message and "invoke vm" in message


def test_enosys_through_an_explicit_number():
    with pytest.raises(MemuseUnavailable, match=f"{ABSENT_NR} \\(from --nr\\) is not impl"):
        memuse(os.getpid(), "heap", nr=ABSENT_NR, force=True)


def test_no_memuse_kernel_and_no_override_is_the_clear_error():
    # the test host runs a stock kernel: nothing says where memuse is
    if syscall_module.kernel_release().endswith("-memuse"):
        pytest.skip("running a memuse kernel")
    with pytest.raises(MemuseUnavailable, match="invoke build install"):
        memuse(os.getpid(), Kind.HEAP)


def test_discovery_is_remembered_but_follows_the_environment(monkeypatch):
    monkeypatch.setenv("MEMUSE_FORCE", "1")
    monkeypatch.setenv("MEMUSE_NR", "4001")
    assert syscall_module.syscall_number().nr == 4001
    monkeypatch.setenv("MEMUSE_NR", "4002")
    assert syscall_module.syscall_number().nr == 4002


def test_results_are_longs_not_ints():
    # totals above 2 GiB must not wrap: the call's result type is a C long
    assert syscall_module._syscall_function().restype is ctypes.c_long
    # and a real address comes back whole: brk(0) answers the end of [heap]
    # (above 2**32 for a PIE python, below it for Debian's non-PIE one)
    brk = raw_memuse(SYS_BRK, 0, 0)
    heap_ends = [
        int(line.split("-")[1].split()[0], 16)
        for line in Path("/proc/self/maps").read_text().splitlines()
        if line.endswith("[heap]")
    ]
    assert (brk + 4095) // 4096 * 4096 in heap_ends


def test_esrch_is_process_lookup_error():
    with pytest.raises(ProcessLookupError, match="no process with pid 2147483000"):
        raw_memuse(SYS_SCHED_GETSCHEDULER, 2147483000, 1)


def test_einval_is_value_error():
    with pytest.raises(ValueError, match="rejected memory type 1"):
        raw_memuse(SYS_SCHED_GETSCHEDULER, -1, 1)


def test_a_successful_call_returns_the_value():
    # sched_getscheduler(pid) stands in: its value is this process's policy
    assert raw_memuse(SYS_SCHED_GETSCHEDULER, os.getpid(), 1) == os.sched_getscheduler(0)


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM])
def test_eacces_is_permission_error(monkeypatch, code):
    monkeypatch.setattr(syscall_module, "_syscall_function", lambda: failing_syscall(code))
    with pytest.raises(PermissionError, match="not permitted to read the memory of pid 1"):
        raw_memuse(ABSENT_NR, 1, 1)


def test_eintr_is_retried(monkeypatch):
    fake = failing_syscall(errno.EINTR, times=2)
    monkeypatch.setattr(syscall_module, "_syscall_function", lambda: fake)
    assert raw_memuse(ABSENT_NR, 1, 1) == 7
    assert fake.state["left"] == 0


def test_other_errors_stay_oserrors(monkeypatch):
    monkeypatch.setattr(syscall_module, "_syscall_function", lambda: failing_syscall(errno.EFAULT))
    with pytest.raises(OSError) as caught:
        raw_memuse(ABSENT_NR, 1, 3)
    assert caught.value.errno == errno.EFAULT and "memuse(1, 3)" in str(caught.value)


def test_the_client_does_not_import_the_kit():
    code = "import sys, memuse_client.cli; assert 'memuse_kit' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)
