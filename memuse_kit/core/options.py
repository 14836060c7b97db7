"""Task options given as text, validated into values with one line of error each.

Invoke casts typed options itself and shows a traceback for bad text, so numeric options are
declared as strings and parsed here.
"""

from __future__ import annotations

import math
import re
from typing import Optional, Union

from memuse_kit.core.errors import KitError

MAX_JOBS = 1024
MAX_TIMEOUT = 7 * 24 * 3600.0
_MEMORY = re.compile(r"^([1-9][0-9]*)([KMGT]?)$", re.IGNORECASE)
_UNIT = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}  # QEMU's -m
MIN_MEMORY = 128 << 20
MAX_MEMORY = 1 << 40


def parse_jobs(text: Optional[Union[str, int]]) -> Optional[int]:
    """--jobs: a whole number from 1 to MAX_JOBS; None (not given) means one per CPU."""
    if text is None:
        return None
    value = str(text).strip()
    if not value.isdigit() or not 1 <= int(value) <= MAX_JOBS:
        raise KitError(f"--jobs {text!r}: give a number of parallel jobs from 1 to {MAX_JOBS}")
    return int(value)


def parse_timeout(text: Union[str, float]) -> float:
    """--timeout: seconds, more than 0 and at most a week."""
    try:
        value = float(str(text).strip())
    except ValueError:
        value = math.nan
    if not (0 < value <= MAX_TIMEOUT):
        raise KitError(f"--timeout {text!r}: give a number of seconds above 0 (at most a week)")
    return value


def parse_memory(text: str) -> str:
    """--memory: QEMU's size, e.g. 3G or 2048M (a plain number is MiB), 128M to 1T."""
    match = _MEMORY.match(str(text).strip())
    size = int(match.group(1)) * _UNIT[match.group(2).upper()] if match else 0
    if not MIN_MEMORY <= size <= MAX_MEMORY:
        raise KitError(f"--memory {text!r}: give a size like 3G or 2048M, from 128M to 1T")
    return str(text).strip().upper()
