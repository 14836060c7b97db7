"""The native programs tests/guest runs, for a guest of either machine.

An arm64 guest has no C compiler: the host cross-compiles scenarios.c and callers.c and
names them by $MEMUSE_SCENARIOS_BIN and $MEMUSE_CALLERS_BIN; a binary is taken only under the
name its source gives it (never a stale one) and only when built for the guest's machine.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from memuse_client import scenarios
from tests import guest_support
from tests.guest_support import CALLERS_ENV, CALLERS_SOURCE, callers_name, given_callers

CROSS = "aarch64-linux-gnu-gcc"
EM_AARCH64 = 183
needs_cross = pytest.mark.skipif(
    shutil.which(CROSS) is None, reason=f"no {CROSS} (apt install gcc-aarch64-linux-gnu)"
)


def executable(path: Path, data: bytes = b"#!/bin/sh\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o755)
    return path


def aarch64_elf(path: Path) -> Path:
    """An executable whose ELF header says AArch64."""
    header = b"\x7fELF\x02\x01\x01" + bytes(9) + (2).to_bytes(2, "little")
    return executable(path, header + EM_AARCH64.to_bytes(2, "little") + bytes(44))


def test_the_callers_binary_is_taken_only_under_its_sources_name(tmp_path):
    right = executable(tmp_path / "a" / callers_name())
    stale = executable(tmp_path / "b" / "memuse-callers-0000000000000000")
    assert given_callers({CALLERS_ENV: str(right)}) == right
    assert given_callers({CALLERS_ENV: str(stale)}) is None
    assert given_callers({CALLERS_ENV: str(tmp_path / "absent" / callers_name())}) is None
    assert given_callers({}) is None
    # the variable test_vm passed before MEMUSE_CALLERS_BIN still counts
    assert given_callers({"MEMUSE_GUEST_CALLERS": str(right)}) == right
    assert given_callers({CALLERS_ENV: str(stale), "MEMUSE_GUEST_CALLERS": str(right)}) == right


def test_a_callers_binary_of_another_machine_is_not_taken(tmp_path):
    arm = aarch64_elf(tmp_path / callers_name())
    assert given_callers({CALLERS_ENV: str(arm)}, machine="aarch64") == arm
    assert given_callers({CALLERS_ENV: str(arm)}, machine="x86_64") is None


def test_without_a_compiler_or_binary_the_guest_says_what_to_set(tmp_path, monkeypatch):
    monkeypatch.setattr(guest_support.shutil, "which", lambda name: None)
    with pytest.raises(AssertionError) as caught:
        guest_support.compile_callers(tmp_path)
    message = str(caught.value)
    assert CALLERS_ENV in message and callers_name() in message


def elf_says_aarch64(binary: Path) -> None:
    assert scenarios.elf_machine(binary) == EM_AARCH64
    if shutil.which("file"):
        described = subprocess.run(["file", str(binary)], capture_output=True, text=True)
        assert "ARM aarch64" in described.stdout, described.stdout


@needs_cross
def test_scenarios_c_cross_compiles_for_arm64_without_warnings(tmp_path):
    target = tmp_path / scenarios.binary_name()
    scenarios.compile_scenarios(target, [CROSS], ["-static", "-Werror"])
    elf_says_aarch64(target)
    assert scenarios.runs_here(target, "aarch64") and not scenarios.runs_here(target, "x86_64")


@needs_cross
def test_callers_c_cross_compiles_for_arm64_without_its_x86_caller(tmp_path):
    binary = tmp_path / callers_name()
    command = [CROSS, "-static", "-O2", "-Wall", "-Werror", "-o", str(binary)]
    done = subprocess.run([*command, str(CALLERS_SOURCE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    elf_says_aarch64(binary)
    assert given_callers({CALLERS_ENV: str(binary)}, machine="aarch64") == binary
