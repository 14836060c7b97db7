"""metadata.json of a build: written when it starts and again however it ends."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

from memuse_client.build_record import BuildRecord
from memuse_kit import __version__
from memuse_kit.building.builddir import BuildDir
from memuse_kit.core import atomic
from memuse_kit.core.clock import now


class RecordWriter:
    """Keeps one build's record and writes it; with dry_run nothing is ever written."""

    def __init__(self, bd: BuildDir, dry_run: bool = False) -> None:
        self.bd = bd
        self.dry_run = dry_run
        self.record = BuildRecord(memuse_kit=__version__, started=now())

    def update(self, **fields: Any) -> None:
        for name, value in fields.items():
            if not hasattr(self.record, name):
                raise AttributeError(f"the build record has no field {name}")
            setattr(self.record, name, value)

    def write(self) -> None:
        if self.dry_run:
            return
        self.bd.root.mkdir(parents=True, exist_ok=True)
        atomic.write_atomic(self.bd.metadata, self.record.to_json().encode())

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.record.durations[name] = round(time.monotonic() - start, 1)
            self.write()
