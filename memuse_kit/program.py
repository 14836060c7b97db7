"""The `memuse-kit` command: Invoke's Program over the very tasks `invoke` finds in tasks.py.

Installed with pip or pipx, memuse-kit works from any directory: `memuse-kit --list`,
`memuse-kit build install`, `memuse-kit vm -- memuse $$`.
"""

from __future__ import annotations

from invoke import Program

from memuse_kit import __version__
from memuse_kit.tasks import namespace

program = Program(name="memuse-kit", binary="memuse-kit", version=__version__, namespace=namespace)


def main() -> None:
    program.run()
