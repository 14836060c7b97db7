"""The one command runner: streaming, timeouts, and what a timeout leaves behind."""

from __future__ import annotations

import time

import pytest

from memuse_kit.core.runner import CommandTimeout, Runner


def test_stream_hands_every_line_to_the_sinks_and_returns_the_status():
    lines = []
    status = Runner().stream(["sh", "-c", "echo one; echo two; exit 3"], sinks=[lines.append])
    assert lines == ["one\n", "two\n"] and status == 3


def test_a_timeout_stops_what_the_command_started_too():
    """vng's QEMU outlived vng and kept the output open: the wait never ended."""
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="ran over 1s"):
        Runner().stream(["sh", "-c", "sleep 60 & echo started; sleep 60"], timeout=1)
    assert time.monotonic() - started < 20


def test_dry_run_prints_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "ran"
    assert Runner(dry_run=True).stream(["touch", str(marker)]) == 0
    assert not marker.exists()
    assert capsys.readouterr().out.strip() == f"touch {marker}"
