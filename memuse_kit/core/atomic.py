"""File writes that are all-or-nothing and leave unchanged files (and their mtimes) alone."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Mapping, Optional

from memuse_kit.core.safety import TMP_PREFIX, is_regular_file


def write_atomic(path: Path, data: bytes) -> None:
    """Replace path with data in one rename, keeping the old file's permission bits.

    The temporary file is named TMP_PREFIX + name, so a killed run's leftover is recognised.
    """
    mode = os.lstat(path).st_mode & 0o7777 if is_regular_file(path) else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write only when the content differs, so make keeps its dependency timestamps."""
    if _same(path, data):
        return False
    write_atomic(path, data)
    return True


def write_all_or_nothing(contents: Mapping[Path, Optional[bytes]]) -> list[Path]:
    """Write several files (None: remove that file); if any step fails, put back the ones
    already done.

    Returns the paths whose content changed, in the order given.
    """
    changed = [path for path, data in contents.items() if not _same(path, data)]
    originals = {path: path.read_bytes() if is_regular_file(path) else None for path in changed}
    done: list[Path] = []
    try:
        for path in changed:
            _put(path, contents[path])
            done.append(path)
    except BaseException:
        for path in done:
            _put(path, originals[path])
        raise
    return changed


def _put(path: Path, data: Optional[bytes]) -> None:
    if data is None:
        path.unlink(missing_ok=True)
    else:
        write_atomic(path, data)


def _same(path: Path, data: Optional[bytes]) -> bool:
    """Whether path is a regular file holding data (None: whether there is nothing at path);
    reads at most len(data) + 1 bytes."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return data is None
    if data is None:
        return False
    if not stat.S_ISREG(info.st_mode) or info.st_size != len(data):
        return False
    with path.open("rb") as handle:
        return handle.read(len(data) + 1) == data
