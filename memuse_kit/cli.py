"""Glue between Invoke tasks and the package: errors become one line and an exit status."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, TypeVar

from invoke.exceptions import Exit

from .errors import KitError

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(func: F) -> F:
    """Turn KitError and Ctrl-C into a single stderr line and a non-zero exit, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KitError as error:
            raise Exit(f"memuse-kit: error: {error}", code=1) from None
        except KeyboardInterrupt:
            raise Exit("memuse-kit: interrupted", code=130) from None

    return wrapper  # type: ignore[return-value]


def say(message: str) -> None:
    print(message, flush=True)


def warn(message: str) -> None:
    print(f"memuse-kit: warning: {message}", file=sys.stderr, flush=True)
