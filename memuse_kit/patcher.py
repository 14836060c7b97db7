"""Plan, apply and revert the memuse edits on a kernel tree.

The pristine bytes of every edited file are kept under <tree>/.memuse-kit/, so a
re-run after a template change rewrites only what changed and --revert is byte-exact
even when the templates moved on since the tree was patched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from . import atomic
from . import syscall_tables as tables
from .errors import KitError
from .kernel_version import KernelVersion, read_tree_version
from .targets import TARGETS, RenderContext, Target, apply_splices, existing_memuse

STATE_DIR = ".memuse-kit"
STATE_FILE = "state.json"
ORIGINALS = "original"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class FilePlan:
    path: str
    original: bytes
    current: bytes
    patched: bytes

    @property
    def needs_write(self) -> bool:
        return self.current != self.patched


@dataclass(frozen=True)
class PatchPlan:
    tree: Path
    kernel: KernelVersion
    nr: int
    files: List[FilePlan]

    @property
    def changed(self) -> List[FilePlan]:
        return [f for f in self.files if f.needs_write]


class TreeState:
    """What memuse-kit recorded about the files it patched in one tree."""

    def __init__(self, tree: Path) -> None:
        self.tree = tree
        self.root = tree / STATE_DIR
        path = self.root / STATE_FILE
        self.data: dict = json.loads(path.read_text()) if path.is_file() else {}

    @property
    def exists(self) -> bool:
        return bool(self.data)

    def files(self) -> Dict[str, dict]:
        return self.data.get("files", {})

    def backup_path(self, rel: str) -> Path:
        return self.root / ORIGINALS / rel

    def pristine(self, rel: str, current: bytes) -> bytes:
        """The file as it was before memuse-kit, given its current bytes."""
        record = self.files().get(rel)
        if record is None or _sha256(current) == record["original_sha256"]:
            return current
        if _sha256(current) != record["patched_sha256"]:
            raise KitError(
                f"{self.tree / rel} changed since memuse-kit patched it; "
                "restore it (or the whole tree) before patching or reverting"
            )
        backup = self.backup_path(rel)
        if not backup.is_file() or _sha256(backup.read_bytes()) != record["original_sha256"]:
            raise KitError(f"the pristine copy {backup} is missing or damaged")
        return backup.read_bytes()

    def save(self, plan: PatchPlan) -> None:
        for file in plan.files:
            backup = self.backup_path(file.path)
            backup.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_if_changed(backup, file.original)
        record = {
            "kernel": str(plan.kernel),
            "nr": plan.nr,
            "files": {
                f.path: {
                    "original_sha256": _sha256(f.original),
                    "patched_sha256": _sha256(f.patched),
                }
                for f in plan.files
            },
        }
        self.data = record
        atomic.write_if_changed(self.root / STATE_FILE, _bytes(json.dumps(record, indent=2) + "\n"))

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _present_targets(tree: Path) -> List[Target]:
    present = []
    for target in TARGETS:
        if (tree / target.path).is_file():
            present.append(target)
        elif target.required:
            raise KitError(f"{tree} lacks {target.path}, which memuse must edit")
    return present


def _check_no_foreign_memuse(tree: Path, pristine: Dict[str, bytes]) -> None:
    for rel, data in pristine.items():
        line = existing_memuse(rel, _text(data))
        if line is not None:
            raise KitError(
                f"{tree / rel}:{line} already has a memuse syscall that memuse-kit did not add; "
                "remove it (e.g. patch -R -p1) first"
            )


def render_edits(pristine: Dict[str, str], kernel: KernelVersion, nr: int) -> Dict[str, str]:
    """The patched text of every target file present in pristine (path -> text)."""
    ctx = RenderContext(nr=nr, kernel=kernel)
    patched = {}
    for target in TARGETS:
        if target.path not in pristine:
            continue
        text = pristine[target.path]
        try:
            patched[target.path] = apply_splices(text, target.locate(text, ctx))
        except KitError as error:
            raise KitError(f"{target.path}: {error}") from None
    return patched


def plan_patch(tree: Path) -> PatchPlan:
    """Everything a patch run would write, computed without writing anything."""
    kernel = read_tree_version(tree)
    state = TreeState(tree)
    targets = _present_targets(tree)
    current = {t.path: (tree / t.path).read_bytes() for t in targets}
    pristine = {rel: state.pristine(rel, data) for rel, data in current.items()}
    _check_no_foreign_memuse(tree, pristine)
    pristine_text = {rel: _text(data) for rel, data in pristine.items()}
    nr = tables.choose_number(pristine_text)
    try:
        patched = render_edits(pristine_text, kernel, nr)
    except KitError as error:
        raise KitError(f"{tree}/{error}") from None
    files = [
        FilePlan(t.path, pristine[t.path], current[t.path], _bytes(patched[t.path]))
        for t in targets
    ]
    return PatchPlan(tree, kernel, nr, files)


def apply_plan(plan: PatchPlan) -> List[str]:
    """Write the planned files (state first, so a crash can always be reverted)."""
    TreeState(plan.tree).save(plan)
    contents = {plan.tree / f.path: f.patched for f in plan.changed}
    atomic.write_all_or_nothing(contents)
    return [f.path for f in plan.changed]


@dataclass(frozen=True)
class RevertResult:
    restored: List[str]
    was_patched: bool


def revert(tree: Path) -> RevertResult:
    """Put every file memuse-kit edited back byte for byte, then forget the tree."""
    read_tree_version(tree)
    state = TreeState(tree)
    if not state.exists:
        _check_no_foreign_memuse(
            tree, {t.path: (tree / t.path).read_bytes() for t in _present_targets(tree)}
        )
        return RevertResult([], False)
    contents: Dict[Path, bytes] = {}
    for rel in state.files():
        path = tree / rel
        if not path.is_file():
            raise KitError(
                f"{path} is gone; cannot revert a tree that lost a file memuse-kit edited"
            )
        contents[path] = state.pristine(rel, path.read_bytes())
    changed = atomic.write_all_or_nothing(contents)
    state.remove()
    return RevertResult([str(p.relative_to(tree)) for p in changed], True)


def recorded_number(tree: Path) -> Optional[int]:
    """The syscall number the tree was patched with, or None if it is not patched."""
    state = TreeState(tree)
    return state.data.get("nr") if state.exists else None


def patched_at(tree: Path) -> Optional[float]:
    """When the memuse edits of the tree last changed (the state file's mtime), or None."""
    state = tree / STATE_DIR / STATE_FILE
    return state.stat().st_mtime if state.is_file() else None
