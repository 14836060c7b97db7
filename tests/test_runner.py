"""The one command runner: streaming, timeouts, and what a timeout leaves behind."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from memuse_kit.core.errors import KitError
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


def test_run_feeds_text_or_an_open_file(tmp_path):
    assert Runner().run(["sort", "-V"], input="1.10\n1.9\n").stdout.split() == ["1.9", "1.10"]
    source = tmp_path / "in.txt"
    source.write_text("from a file\n")
    with source.open() as handle:
        assert Runner().run(["cat"], stdin=handle).stdout == "from a file\n"


def test_run_reads_nothing_unless_fed():
    assert Runner().run(["cat"], timeout=10).stdout == ""  # stdin is /dev/null, not ours


def test_run_over_its_timeout_raises():
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="sleep ran over 1s"):
        Runner().run(["sleep", "30"], timeout=1)
    assert time.monotonic() - started < 10


def test_start_returns_a_running_process_and_refuses_dry_runs(tmp_path):
    with Runner().start(["sh", "-c", "echo started"], stdout=subprocess.PIPE) as process:
        assert process.communicate()[0] == b"started\n"
    with pytest.raises(KitError, match="cannot start in a dry run"):
        Runner(dry_run=True).start(["true"])


def test_no_module_runs_commands_past_the_runner():
    """Every external command goes through core/runner.py, so dry runs and -v see it."""
    package = Path(__file__).resolve().parent.parent / "memuse_kit"
    bypass = re.compile(r"\b(subprocess\.(run|Popen|call|check_call|check_output)|os\.system)\(")
    found = [
        f"{path.relative_to(package)}:{number}"
        for path in package.rglob("*.py")
        if path.name != "runner.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if bypass.search(line)
    ]
    assert found == []
