"""What the VM tests measured, printed at the end of the run so that a CI log shows it; and,
loudly, when the VM tier was skipped because the tests ran as root."""

from __future__ import annotations

import os
from typing import List

import pytest

MEASURED = pytest.StashKey[List[str]]()


@pytest.fixture
def measured(request) -> List[str]:
    """Lines a test wants in the run's final summary."""
    return request.config.stash.setdefault(MEASURED, [])


def pytest_terminal_summary(terminalreporter, config):
    skipped = terminalreporter.stats.get("skipped", [])
    skipped_as_root = [report for report in skipped if "vm" in report.keywords]
    if skipped_as_root and os.geteuid() == 0:
        terminalreporter.write_sep(
            "!", f"THE VM TIER DID NOT RUN: {len(skipped_as_root)} tests skipped as root", red=True
        )
        terminalreporter.write_line(
            "No kernel was built or booted. Run the tests as a plain user (as CI does) for "
            "tests/test_vm.py, which also runs tests/guest inside the kernels.",
            red=True,
            bold=True,
        )
    lines = config.stash.get(MEASURED, [])
    if lines:
        terminalreporter.write_sep("=", "measured in the booted memuse kernels")
        for line in lines:
            terminalreporter.write_line(line)
