"""sha256, the one digest memuse-kit checks downloads, packages, configs and patched files by."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

BLOCK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_content(data: Optional[bytes]) -> Optional[str]:
    """A file's digest from its bytes, None for a file that does not exist."""
    return None if data is None else sha256_bytes(data)


def sha256_file(path: Path) -> str:
    """Read in blocks: kernel tarballs and packages are hundreds of megabytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
