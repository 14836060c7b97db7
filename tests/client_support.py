"""Helpers shared by the memuse_client tests (tests/test_client*.py)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

REPO = Path(__file__).resolve().parent.parent
# numbers no x86_64 kernel gives a system call
ABSENT_NR = 4000


@pytest.fixture(scope="module")
def scenario_cache(tmp_path_factory) -> Iterator[Path]:
    """A cache root of the module's own, so the scenarios program is built there."""
    root = tmp_path_factory.mktemp("client-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEMUSE_KIT_CACHE", str(root))
        patch.delenv("MEMUSE_NR", raising=False)
        yield root


def run_cli(*args: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """`memuse ARGS` in a fresh interpreter, as a user would run it."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO), full_env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "memuse_client", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        check=False,
    )


def fake_syscall_from_smaps(offsets: Optional[Dict[int, int]] = None):
    """A stand-in for raw_memuse that answers from smaps (+ an offset per kind number)."""
    from memuse_client.kinds import Kind
    from memuse_client.smaps import smaps_measure

    calls: List[tuple] = []

    def fake(nr: int, pid: int, mem_type: int, source: str = "") -> int:
        calls.append((nr, pid, mem_type))
        value = smaps_measure(pid, [Kind(mem_type)])[Kind(mem_type)]
        return (value or 0) + (offsets or {}).get(mem_type, 0)

    fake.calls = calls  # type: ignore[attr-defined]
    return fake


def failing_syscall(code: int, times: int = 1_000_000):
    """A libc syscall() stand-in that fails `times` times with errno `code`, then returns 7."""
    state = {"left": times}

    def call(*args: object) -> int:
        if state["left"] > 0:
            state["left"] -= 1
            ctypes.set_errno(code)
            return -1
        return 7

    call.state = state  # type: ignore[attr-defined]
    return call


def a_kernel_thread() -> Optional[int]:
    """Some kernel thread visible in /proc (PF_KTHREAD in the flags of stat), if any."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        flags = int(stat[stat.rindex(")") + 2 :].split()[6])
        if flags & 0x00200000:
            return int(entry.name)
    return None
