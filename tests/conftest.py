"""What the VM tests measured, printed at the end of the run so that a CI log shows it."""

from __future__ import annotations

from typing import List

import pytest

MEASURED = pytest.StashKey[List[str]]()


@pytest.fixture
def measured(request) -> List[str]:
    """Lines a test wants in the run's final summary."""
    return request.config.stash.setdefault(MEASURED, [])


def pytest_terminal_summary(terminalreporter, config):
    lines = config.stash.get(MEASURED, [])
    if lines:
        terminalreporter.write_sep("=", "measured in the booted memuse kernels")
        for line in lines:
            terminalreporter.write_line(line)
