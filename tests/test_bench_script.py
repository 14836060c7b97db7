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
    fastest = bench.fastest_call_seconds({"call": call}, 5)
    assert fastest["call"] == pytest.approx(2e-6, rel=0.05)


def test_a_slow_spell_of_the_host_does_not_bend_the_ratio(monkeypatch):
    """TCG shares the host's CPUs: for a while every call costs three times as much. Timed
    one side after the other, the spell fell on one side (CI: 9.4x where the same kernel
    measures 14x); interleaved rounds and the fastest batch keep the ratio."""
    bench = load_bench()
    now = [0.0]

    def host_speed() -> float:
        return 3.0 if now[0] < 2.0 else 1.0

    def cheap() -> None:
        now[0] += 1e-6 * host_speed()

    def dear() -> None:
        now[0] += 10e-6 * host_speed()

    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    fastest = bench.fastest_call_seconds({"cheap": cheap, "dear": dear}, 30)
    assert fastest["dear"] / fastest["cheap"] == pytest.approx(10, rel=0.01)
