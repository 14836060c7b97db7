"""What one `invoke patch build vm` hands from task to task.

Invoke runs the tasks of one command line with one shared configuration, so each stage
leaves there what the next needs: the tree it worked on and the build it made. A later task
given its own --tree, --source or --config uses those instead. Across command lines the
remembered tree (current.json, see trees.workspace) carries on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from invoke import Context

TREE = "memuse_kit_tree"
BUILD = "memuse_kit_build"


def hand_on(c: Context, tree: Optional[Path] = None, build: Optional[Path] = None) -> None:
    if tree is not None:
        c.config[TREE] = str(tree)
    if build is not None:
        c.config[BUILD] = str(build)


def handed_tree(c: Context, tree: Optional[str], source: Optional[str]) -> Optional[str]:
    """--tree as given, else the tree an earlier task of this command line worked on."""
    if tree is not None or source is not None:
        return tree
    return _value(c, TREE)


def handed_build(
    c: Context, tree: Optional[str], source: Optional[str], config: Optional[str]
) -> Optional[Path]:
    """The build an earlier task of this command line made, unless this task names its own."""
    if tree is not None or source is not None or config is not None:
        return None
    value = _value(c, BUILD)
    return Path(value) if value else None


def _value(c: Context, key: str) -> Optional[str]:
    value = c.config.get(key, None)
    return value if isinstance(value, str) else None
