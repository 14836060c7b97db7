"""metadata.json of a build: written when it starts and again however it ends."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Dict, Iterator

from memuse_kit import __version__
from memuse_kit.building.builddir import BuildDir
from memuse_kit.core import atomic


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class BuildRecord:
    """With dry_run nothing is ever written: a dry run leaves no metadata behind."""

    def __init__(self, bd: BuildDir, dry_run: bool = False) -> None:
        self.bd = bd
        self.dry_run = dry_run
        self.data: Dict[str, Any] = {
            "memuse_kit": __version__,
            "status": "running",
            "started": now(),
            "durations": {},
        }

    def update(self, **fields: Any) -> None:
        self.data.update(fields)

    def write(self) -> None:
        if self.dry_run:
            return
        self.bd.root.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.data, indent=2, sort_keys=True) + "\n"
        atomic.write_atomic(self.bd.metadata, text.encode())

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.data["durations"][name] = round(time.monotonic() - start, 1)
            self.write()
