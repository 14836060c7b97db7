"""The time stamps memuse-kit records: UTC, ISO 8601, to the second."""

from __future__ import annotations

from datetime import datetime, timezone


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
