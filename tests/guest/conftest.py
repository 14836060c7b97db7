"""tests/guest: the memuse kernel's own tests, run as root inside a booted memuse kernel.

Everywhere else (the ordinary host test run collects this directory too) every test here is
skipped. Inside, the syscall number comes from the client's discovery ($MEMUSE_NR, the
build's metadata, headers), the kernel log is watched for the whole session, and the
measured tables are printed at the end, so that a CI log shows them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from memuse_client import MemuseUnavailable
from memuse_client.syscall import syscall_number
from tests import guest_support

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    reason = guest_support.skip_reason()
    if reason is None:
        return
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_terminal_summary(terminalreporter):
    if guest_support.REPORT:
        terminalreporter.write_sep("=", "memuse measured in this kernel")
        for line in guest_support.REPORT:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def nr() -> int:
    """The memuse system call number of the running kernel."""
    try:
        return syscall_number().nr
    except MemuseUnavailable as error:
        pytest.fail(f"this kernel has memuse but its number is unknown: {error}")


@pytest.fixture
def reaped_pid() -> int:
    """A pid that named a process a moment ago: it exited and was reaped."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


@pytest.fixture(scope="session", autouse=True)
def debug_kernel() -> None:
    """The watchers the suite relies on are really in the booted kernel, and lockdep is on.

    Without them "no report in the kernel log" would prove nothing, so a kernel built
    without them, or one where lockdep already switched itself off (a report at boot), fails
    the session instead of passing it with a note. Only a run that names itself as one on
    the fast `vm` kernel ($MEMUSE_GUEST_WITHOUT_WATCHERS=1: the agreement tests, where the
    figures are what is checked) goes without them; its kernel log is still watched.
    """
    if os.environ.get(guest_support.WITHOUT_WATCHERS_ENV) == "1":
        return
    options = guest_support.running_config()
    missing = [name for name in guest_support.WATCHERS if options.get(name) != "y"]
    assert not missing, f"the booted kernel lacks {', '.join(missing)} (build --config vm-debug)"
    assert guest_support.lockdep_active() is True, (
        "lockdep is off or unreadable before the tests began, so they could not show the "
        f"locking is clean; the kernel's first report: {guest_support.first_report()}"
    )


@pytest.fixture(scope="session", autouse=True)
def clean_kernel_log(debug_kernel):
    """No test of the session may leave a kernel bug, warning, KASAN or lockdep report."""
    mark = guest_support.log_mark()
    yield
    reports = guest_support.reports_since(mark)
    assert not reports, "the kernel reported problems:\n" + "\n".join(reports[:40])
    if os.environ.get(guest_support.WITHOUT_WATCHERS_ENV) != "1":
        assert guest_support.lockdep_active(), "lockdep turned itself off during the tests"
