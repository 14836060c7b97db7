"""memuse_client against the real syscall: the API's exceptions and the CLI's output.

On the host the client is tested against the smaps backend and a kernel without memuse;
here the syscall answers, so the same calls must agree with smaps and map each errno to its
exception (CLI: one line on stderr, a non-zero exit).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import List

import pytest

from memuse_client import Kind, memuse, smaps_memuse, stopped_scenario
from memuse_client.syscall import raw_memuse, syscall_number
from tests.guest_support import PAGE, as_user, expected_thread_size, nobody

SMAPS_KINDS = (Kind.STACK, Kind.HEAP, Kind.KERNEL_MAPPINGS, Kind.TOTAL)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memuse_client", *args], capture_output=True, text=True
    )


def test_the_api_agrees_with_smaps_for_a_stopped_process():
    with stopped_scenario("heap-active", 20000) as pid:
        for kind in SMAPS_KINDS:
            assert memuse(pid, kind) == smaps_memuse(pid, kind), kind.key
        assert memuse(pid, "kernel_stack") == expected_thread_size()
        assert memuse(pid, 3) == memuse(pid, Kind.HEAP) > 0


def test_the_api_raises_the_errno_as_its_exception(reaped_pid):
    with pytest.raises(ProcessLookupError):
        memuse(reaped_pid, Kind.TOTAL)
    with pytest.raises(ValueError, match="unknown kind 6"):
        memuse(1, 6)  # refused by the client before any syscall
    # the kernel's own EINVAL, through the raw call that does not check the kind
    with pytest.raises(ValueError, match=r"the kernel rejected memory type 6 \(EINVAL\)"):
        raw_memuse(syscall_number().nr, 1, 6)
    uid, gid = nobody()
    with stopped_scenario("do-nothing") as root_pid:

        def refused() -> str:
            try:
                memuse(root_pid.pid, Kind.HEAP)
            except PermissionError as error:
                return type(error).__name__
            return "allowed"

        assert as_user(uid, gid, refused) == "PermissionError"


def test_the_cli_json_is_the_syscall_and_equals_smaps():
    with stopped_scenario("heap-dontneed", 64, 16) as pid:
        by_syscall = cli("--json", str(pid))
        by_smaps = cli("--json", "--backend", "smaps", str(pid))
    assert by_syscall.returncode == 0, by_syscall.stderr
    assert by_smaps.returncode == 0, by_smaps.stderr
    syscall_figures = json.loads(by_syscall.stdout)
    smaps_figures = json.loads(by_smaps.stdout)
    assert list(syscall_figures) == [str(pid)]
    assert syscall_figures == smaps_figures
    assert syscall_figures[str(pid)]["heap"] == 48 * PAGE  # 4 KiB on x86_64, any on arm64
    assert list(syscall_figures[str(pid)]) == [kind.key for kind in Kind]


def test_the_cli_compare_shows_both_sides():
    with stopped_scenario("stack", 20000) as pid:
        done = cli("--compare", "--json", str(pid))
    assert done.returncode == 0, done.stderr
    both = json.loads(done.stdout)[str(pid)]
    assert both["syscall"] == both["smaps"]
    assert both["syscall"]["stack"] > 20000 * 16


@pytest.mark.parametrize(
    "args, says",
    [
        (["{reaped}"], "no process"),
        (["--kind", "7", "1"], "kind"),
    ],
)
def test_the_cli_fails_in_one_line(args: List[str], says: str, reaped_pid):
    done = cli(*(arg.format(reaped=reaped_pid) for arg in args))
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0].lower(), done.stderr
    assert "Traceback" not in done.stderr
