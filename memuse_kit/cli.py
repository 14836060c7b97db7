"""Glue between Invoke tasks and the package: errors become one line and an exit status."""

from __future__ import annotations

import atexit
import functools
import gc
import inspect
import logging
import os
from typing import Any, Callable, TypeVar

from invoke.exceptions import Exit

from memuse_kit.core import output
from memuse_kit.core.errors import KitError
from memuse_kit.core.safety import describe_os_error, one_line

F = TypeVar("F", bound=Callable[..., Any])
VERBOSITY_HELP = {
    "verbose": "also show every command memuse-kit runs",
    "quiet": "only warnings, errors and results: no progress",
}
DEBUG_ENV = "MEMUSE_KIT_DEBUG"


def _freeze_for_exit() -> None:
    """Collect the garbage (its finalizers run as usual), then freeze what is left: it lives
    until the process ends, and Python's teardown no longer walks it again for every module
    it clears. That walk cost each command 60-90 ms here, a tenth of a no-op build's overhead
    over make."""
    gc.collect()
    gc.freeze()


atexit.register(_freeze_for_exit)


def debugging() -> bool:
    """--debug (invoke's own flag) or MEMUSE_KIT_DEBUG=1: genuine bugs show their traceback."""
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        return True
    return logging.getLogger("invoke").isEnabledFor(logging.DEBUG)


def one_line_errors(func: F) -> F:
    """Turn every error into a single stderr line and a non-zero exit, never a traceback.

    KitError says what to do; an OSError (permissions, disk space, a missing file) is
    mapped to advice; anything else is a bug, shown in full only when debugging.
    The task also gets -v/--verbose and -q/--quiet, which set the reporter's verbosity.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, verbose: bool = False, quiet: bool = False, **kwargs: Any) -> Any:
        try:
            output.set_verbosity(verbose, quiet)
            return func(*args, **kwargs)
        except Exit:
            raise
        except KitError as error:
            raise Exit(f"memuse-kit: error: {one_line(str(error))}", code=1) from None
        except KeyboardInterrupt:
            raise Exit("memuse-kit: interrupted", code=130) from None
        except OSError as error:
            if debugging():
                raise
            raise Exit(f"memuse-kit: error: {one_line(describe_os_error(error))}", code=1) from None
        except Exception as error:
            if debugging():
                raise
            what = one_line(str(error)) or "no message"
            raise Exit(
                f"memuse-kit: internal error ({type(error).__name__}: {what}); run again with "
                f"{DEBUG_ENV}=1 or invoke --debug for the traceback, and report it",
                code=1,
            ) from None

    wrapper.__signature__ = _with_verbosity(inspect.signature(func))  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def _with_verbosity(signature: inspect.Signature) -> inspect.Signature:
    """The task's own parameters, then verbose and quiet, so Invoke offers -v and -q."""
    params = list(signature.parameters.values())
    varkw = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool)
        for name in VERBOSITY_HELP
        if name not in signature.parameters
    ]
    head = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
    return signature.replace(parameters=[*head, *extra, *varkw])
