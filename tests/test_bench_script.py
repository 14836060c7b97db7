"""scripts/bench-memuse runs in a memuse VM; on a kernel without memuse it says so in one line."""

from __future__ import annotations

import importlib.machinery
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from memuse_client.discovery import kallsyms_has_memuse

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench-memuse"


def load_bench() -> ModuleType:
    """The script as a module (it has no .py suffix), its main() not run."""
    loader = importlib.machinery.SourceFileLoader("bench_memuse", str(SCRIPT))
    module = ModuleType(loader.name)
    module.__file__ = str(SCRIPT)
    loader.exec_module(module)
    return module


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


def test_a_clock_that_ticks_in_milliseconds_still_times_a_microsecond_call(monkeypatch):
    """The fast vm kernel's clock is jiffies: single calls would time as 0 (a division by
    zero in the sparse ratio before batches)."""
    bench = load_bench()
    now = [0.0]

    def coarse_clock() -> float:
        return int(now[0] * 1000) / 1000  # 1 ms ticks

    def call() -> None:
        now[0] += 2e-6  # a 2-microsecond syscall

    monkeypatch.setattr(bench.time, "perf_counter", coarse_clock)
    assert bench.median_seconds(call, 5) == pytest.approx(2e-6, rel=0.05)
