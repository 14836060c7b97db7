"""Which kernel tree a task works on: --tree, else --source, else the last fetched source."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from memuse_kit.core.errors import KitError


class NotFetched(KitError):
    """A dry run needs a tree that only a fetch (which a dry run never does) would give."""

    def __init__(self, spec: str) -> None:
        super().__init__(
            f"{spec} is not fetched yet and a dry run downloads nothing: "
            f"run invoke fetch --source {spec} first"
        )
        self.spec = spec


def check_not_empty(value: Optional[str], option: str) -> None:
    if value is not None and not value.strip():
        raise KitError(f"{option} is empty: give a value, or leave {option} out")


def resolve_tree(tree: Optional[str], source: Optional[str], dry_run: bool = False) -> Path:
    """The kernel tree to work on. With dry_run nothing is fetched or written: a tree that
    is not in the cache yet raises NotFetched (its .spec names what a real run would fetch)."""
    from memuse_kit.trees import fetch

    check_not_empty(tree, "--tree")
    check_not_empty(source, "--source")
    if tree and source:
        raise KitError("give --tree or --source, not both")
    if tree:
        root = Path(tree).expanduser().resolve()
        if not (root / "Makefile").is_file():
            raise KitError(f"{root} is not a kernel tree (no top-level Makefile)")
        return root
    if dry_run:
        return _cached_tree(source)
    if source:
        return fetch.fetch_source(source, explicit=True).tree
    remembered = fetch.last_fetched()
    if remembered is not None:
        return remembered
    return fetch.fetch_source(None, explicit=False).tree


def remember_tree(tree: Optional[str], dry_run: bool) -> None:
    """After a task succeeded on --tree DIR, DIR is the tree later tasks use, as with
    --source; a dry run remembers nothing."""
    from memuse_kit.trees import fetch

    if tree is not None and not dry_run:
        fetch.make_current(Path(tree).expanduser().resolve())


def _cached_tree(source: Optional[str]) -> Path:
    from memuse_kit.trees import fetch

    if not source:
        remembered = fetch.last_fetched()
        if remembered is not None:
            return remembered
    name, cached = fetch.planned_source(source)
    if cached is None:
        raise NotFetched(name)
    return cached.tree
