"""Where kernel trees, downloads, ccache and build output live: outside the repository."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$MEMUSE_KIT_CACHE, else $XDG_CACHE_HOME/memuse-kit, else ~/.cache/memuse-kit."""
    explicit = os.environ.get("MEMUSE_KIT_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "memuse-kit"


def downloads_dir() -> Path:
    return cache_root() / "downloads"


def trees_dir() -> Path:
    return cache_root() / "trees"


def builds_dir() -> Path:
    return cache_root() / "builds"


def ccache_dir() -> Path:
    return cache_root() / "ccache"
