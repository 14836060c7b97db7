"""Byte counts for people."""

from __future__ import annotations

from typing import Optional

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human(count: Optional[int]) -> str:
    """1536 -> '1.5 KiB'; None -> 'unavailable'."""
    if count is None:
        return "unavailable"
    value, unit = float(count), 0
    while abs(value) >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{count} B" if unit == 0 else f"{value:.1f} {_UNITS[unit]}"
