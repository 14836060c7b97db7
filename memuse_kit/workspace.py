"""Which kernel tree a task works on: --tree, else --source, else the last fetched source."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .errors import KitError


def resolve_tree(tree: Optional[str], source: Optional[str]) -> Path:
    from . import fetch

    if tree and source:
        raise KitError("give --tree or --source, not both")
    if tree:
        root = Path(tree).expanduser().resolve()
        if not (root / "Makefile").is_file():
            raise KitError(f"{root} is not a kernel tree (no top-level Makefile)")
        return root
    if source:
        return fetch.fetch_source(source, explicit=True).tree
    remembered = fetch.last_fetched()
    if remembered is not None:
        return remembered
    return fetch.fetch_source(None, explicit=False).tree
