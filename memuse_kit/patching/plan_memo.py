"""What the last full plan of a tree wanted, by digest, so that checking an unchanged tree
needs no Jinja at all.

A plan renders every edit from its inputs: the kit's code and templates, the syscalls'
folders, the tree's pristine files, the numbers, the probes' answers and the tree's facts.
Rendering (with importing and compiling the templates) was a fifth of a no-op build's time
over make. The memo keeps one digest of all those inputs and the digest of every file the
plan wanted; when the inputs digest again to the same key and the tree's files hold exactly
those digests, the tree is as the plan would make it. Anything else renders in full.

The memo lives in the cache (never in the tree) and is written only by runs that patch for
real, never by dry runs; a memo that cannot be read or written is no memo.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional

import memuse_kit
from memuse_kit.core import atomic
from memuse_kit.core.cache import cache_root
from memuse_kit.core.digest import sha256_content

MEMO_VERSION = 1


@dataclass(frozen=True)
class PlanMemo:
    code: str  # the kit's code, its templates and the syscalls' template roots
    reads_facts: Dict[str, bool]  # per syscall: whether its body reads the tree's facts
    key: str  # every input of the render, the code included
    files: Dict[str, Optional[str]]  # path -> sha256 of what the plan wants (None: no file)

    def holds(self, current: Mapping[str, Optional[bytes]]) -> bool:
        """Whether the tree's files (path -> bytes) are exactly what the plan wanted."""
        return set(current) == set(self.files) and all(
            sha256_content(data) == self.files[path] for path, data in current.items()
        )


def code_digest(templates: Path, folders: Iterable[Path]) -> str:
    """One digest of every file of the kit's package, of its templates (tests move them) and
    of each folder given (the loader roots of the syscalls' bodies, which may include files
    beside their own), with the Python and Jinja versions that render them."""
    digest = hashlib.sha256(f"{MEMO_VERSION}\0{sys.version}\0{_jinja_version()}\0".encode())
    package = Path(memuse_kit.__file__).resolve().parent
    for root in _outermost([package, templates.resolve(), *(f.resolve() for f in folders)]):
        for path in sorted(p for p in root.rglob("*") if _is_source(p)):
            digest.update(f"{path}\0{path.stat().st_size}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _outermost(roots: Iterable[Path]) -> List[Path]:
    """The roots not inside another (the packaged templates are inside the package), so
    that no file is read twice."""
    unique = sorted(set(roots))
    return [r for r in unique if not any(o in r.parents for o in unique)]


def inputs_key(
    code: str, parts: Mapping[str, object], originals: Mapping[str, Optional[bytes]]
) -> str:
    """The key of one render: the code, the plan's own values (JSON-able) and the digest of
    each file's pristine bytes."""
    pristine = {path: sha256_content(data) for path, data in sorted(originals.items())}
    text = json.dumps([code, parts, pristine], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def memo_path(tree: Path) -> Path:
    name = hashlib.sha256(str(tree.resolve()).encode()).hexdigest()[:32]
    return cache_root() / "plans" / f"{name}.json"


def read(tree: Path) -> Optional[PlanMemo]:
    try:
        data = json.loads(memo_path(tree).read_text())
        if data.pop("version", None) != MEMO_VERSION:
            return None
        return PlanMemo(**data)
    except (OSError, ValueError, TypeError):
        return None


def write(tree: Path, memo: PlanMemo) -> None:
    """Keep memo for tree; unchanged bytes are not written again."""
    text = json.dumps({"version": MEMO_VERSION, **asdict(memo)}, indent=1, sort_keys=True)
    path = memo_path(tree)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_if_changed(path, text.encode())
    except OSError:
        pass  # only the next check's speed depends on it


def facts_readers(
    memo: Optional[PlanMemo], code: Optional[str], names: Iterable[str]
) -> Optional[Dict[str, bool]]:
    """Which of these syscalls read the tree's facts, as the memo of the same code knows;
    None when it cannot tell (then their templates are parsed)."""
    if memo is None or memo.code != code:
        return None
    known = {name: memo.reads_facts.get(name) for name in names}
    if None in known.values():
        return None
    return {name: bool(value) for name, value in known.items()}


def _is_source(path: Path) -> bool:
    return path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"


def _jinja_version() -> str:
    try:
        return metadata.version("jinja2")
    except metadata.PackageNotFoundError:
        return "?"
