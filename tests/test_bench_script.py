"""scripts/bench-memuse runs in a memuse VM; on a kernel without memuse it says so in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from memuse_client.discovery import kallsyms_has_memuse

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench-memuse"


@pytest.mark.skipif(kallsyms_has_memuse() is True, reason="this kernel has memuse")
def test_without_memuse_the_benchmark_fails_in_one_line():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench-memuse: ")
    assert "no memuse system call" in lines[0]


@pytest.mark.parametrize("option", ["--min-rollup-ratio", "--max-sparse-ratio", "--repeat"])
def test_a_ratio_or_repeat_that_is_not_positive_is_refused_in_one_line(option):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), option, "0"], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "bench-memuse: --repeat and the ratios must be positive"
