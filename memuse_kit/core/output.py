"""What the tool tells its user, at the verbosity the user chose with -q or -v.

- quiet (-q): warnings, errors and results (what was made or changed, a dry run's plan, a
  guest's output), nothing about progress;
- normal: also progress (say, progress);
- verbose (-v): also every external command as it runs (detail).
Warnings and errors go to stderr, the rest to stdout unless a caller keeps stdout for data.
"""

from __future__ import annotations

import sys
from enum import IntEnum
from typing import Optional, TextIO

from memuse_kit.core.errors import KitError


class Verbosity(IntEnum):
    QUIET = 0
    NORMAL = 1
    VERBOSE = 2


_level = Verbosity.NORMAL


def set_verbosity(verbose: bool = False, quiet: bool = False) -> None:
    global _level
    if verbose and quiet:
        raise KitError("--verbose and --quiet do not go together")
    _level = Verbosity.VERBOSE if verbose else Verbosity.QUIET if quiet else Verbosity.NORMAL


def verbosity() -> Verbosity:
    return _level


def report(message: str, stream: Optional[TextIO] = None) -> None:
    """What the command is for (its result, a dry run's plan, a guest's output): even with -q."""
    print(message, file=stream or sys.stdout, flush=True)


def say(message: str, stream: Optional[TextIO] = None) -> None:
    """Progress and results a user follows; silent with -q."""
    if _level >= Verbosity.NORMAL:
        print(message, file=stream or sys.stdout, flush=True)


def progress(message: str, stream: Optional[TextIO] = None) -> None:
    """A long step's progress line (percent, rate, ETA); silent with -q."""
    say(message, stream)


def detail(message: str) -> None:
    """What only -v shows: each external command, on stderr so stdout stays the product."""
    if _level >= Verbosity.VERBOSE:
        print(message, file=sys.stderr, flush=True)


def problem(message: str, stream: Optional[TextIO] = None) -> None:
    """What went wrong, shown at every verbosity (a compiler error, a kernel report)."""
    print(message, file=stream or sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"memuse-kit: warning: {message}", file=sys.stderr, flush=True)
