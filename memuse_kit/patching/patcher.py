"""Plan, apply and revert the memuse edits on a kernel tree.

The pristine bytes of every edited file are kept under <tree>/.memuse-kit/, so a
re-run after a template change rewrites only what changed and --revert is byte-exact
even when the templates moved on since the tree was patched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from memuse_kit.core import atomic
from memuse_kit.core.digest import sha256_bytes
from memuse_kit.core.errors import KitError
from memuse_kit.core.safety import TMP_PREFIX, check_replaceable, describe_os_error, is_regular_file
from memuse_kit.patching import syscall_tables as tables
from memuse_kit.patching.probes import TreeFacts, probe_tree
from memuse_kit.patching.targets import (
    TARGETS,
    RenderContext,
    Target,
    apply_splices,
    existing_memuse,
)
from memuse_kit.trees.kernel_version import KernelVersion, read_tree_version

STATE_DIR = ".memuse-kit"
STATE_FILE = "state.json"
ORIGINALS = "original"
STATE_LIMIT = 1 << 20  # bytes of state.json read at most
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# what write_atomic named its temporary files before they carried TMP_PREFIX
_OLD_TMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")


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
    facts: TreeFacts

    @property
    def changed(self) -> List[FilePlan]:
        return [f for f in self.files if f.needs_write]


def _damaged(tree: Path, why: str) -> KitError:
    return KitError(
        f"{tree / STATE_DIR} is damaged ({why}): restore the tree's edited files (from the "
        f"source package or git), then delete {tree / STATE_DIR} after checking; "
        "memuse-kit will not guess"
    )


def _valid_record(data: object) -> Optional[str]:
    """Why a state.json document is unusable, or None when it is fine."""
    if not isinstance(data, dict):
        return "state.json is not a JSON object"
    files = data.get("files")
    if not isinstance(files, dict) or not files:
        return "state.json lists no files"
    known = {target.path for target in TARGETS}
    for rel, record in files.items():
        if rel not in known:
            return f"state.json names {rel!r}, not a file memuse-kit edits"
        if not isinstance(record, dict) or not all(
            isinstance(record.get(key), str) and _SHA256.match(record[key])
            for key in ("original_sha256", "patched_sha256")
        ):
            return f"state.json's record of {rel} lacks its sha256 sums"
    nr = data.get("nr")
    if not isinstance(nr, int) or isinstance(nr, bool) or nr < 0:
        return "state.json has no syscall number"
    if not isinstance(data.get("kernel"), str):
        return "state.json has no kernel version"
    return None


class TreeState:
    """What memuse-kit recorded about the files it patched in one tree."""

    def __init__(self, tree: Path) -> None:
        self.tree = tree
        self.root = tree / STATE_DIR
        self.data: dict = self._load()

    def _load(self) -> dict:
        if not os.path.lexists(self.root):
            return {}
        if self.root.is_symlink() or not self.root.is_dir():
            raise _damaged(self.tree, f"{STATE_DIR} is not a directory")
        path = self.root / STATE_FILE
        if not os.path.lexists(path):
            return {}
        if not is_regular_file(path):
            raise _damaged(self.tree, f"{STATE_FILE} is not a regular file")
        with path.open("rb") as handle:
            raw = handle.read(STATE_LIMIT + 1)
        try:
            data = json.loads(raw.decode("utf-8"))
        except ValueError:
            raise _damaged(self.tree, f"{STATE_FILE} is not valid JSON") from None
        why = _valid_record(data)
        if why is not None:
            raise _damaged(self.tree, why)
        return data  # type: ignore[no-any-return]

    def saved(self) -> Optional[bytes]:
        """The state file's bytes, to put back if a run must be undone (None: no state)."""
        path = self.root / STATE_FILE
        return path.read_bytes() if self.exists else None

    def restore(self, saved: Optional[bytes]) -> None:
        if saved is None:
            self.remove()
        else:
            atomic.write_atomic(self.root / STATE_FILE, saved)

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
        if record is None or sha256_bytes(current) == record["original_sha256"]:
            return current
        if sha256_bytes(current) != record["patched_sha256"]:
            raise KitError(
                f"{self.tree / rel} changed since memuse-kit patched it; "
                "restore it (or the whole tree) before patching or reverting"
            )
        backup = self.backup_path(rel)
        data = backup.read_bytes() if is_regular_file(backup) else b""
        if sha256_bytes(data) != record["original_sha256"]:
            raise KitError(
                f"the pristine copy {backup} is missing or damaged: restore {self.tree / rel} "
                f"from the source package or git, then delete {self.root} after checking"
            )
        return data

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
                    "original_sha256": sha256_bytes(f.original),
                    "patched_sha256": sha256_bytes(f.patched),
                }
                for f in plan.files
            },
        }
        self.data = record
        atomic.write_if_changed(self.root / STATE_FILE, _bytes(json.dumps(record, indent=2) + "\n"))

    def check_writable(self) -> None:
        if os.path.lexists(self.root):
            check_replaceable(self.root / STATE_FILE, "memuse-kit's state")
        else:
            check_replaceable(self.root, "memuse-kit's state")

    def remove(self) -> None:
        """Forget the tree in one rename; the renamed directory is a leftover if this dies."""
        if not os.path.lexists(self.root):
            return
        trash = self.tree / f"{TMP_PREFIX}state-{os.getpid()}"
        if os.path.lexists(trash):
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(self.root, trash)
        shutil.rmtree(trash, ignore_errors=True)
        self.data = {}


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise KitError(f"cannot read {describe_os_error(error)}") from None


def clean_leftovers(tree: Path) -> List[Path]:
    """Remove what a killed patch or revert left behind: temporary files, a forgotten state
    directory, pristine copies without a state file. Returns what was removed."""
    removed: List[Path] = []
    names = {Path(target.path).name for target in TARGETS} | {STATE_FILE}
    directories = {tree} | {(tree / target.path).parent for target in TARGETS}
    state = tree / STATE_DIR
    if state.is_dir() and not state.is_symlink():
        directories |= {Path(top) for top, _, _ in os.walk(state)}
    for directory in sorted(directories):
        if not directory.is_dir():
            continue
        for entry in sorted(directory.iterdir()):
            old = _OLD_TMP.match(entry.name)
            if entry.name.startswith(TMP_PREFIX) or (old and old.group("name") in names):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry)
    if _orphan_state(tree):
        shutil.rmtree(state)
        removed.append(state)
    return removed


def _orphan_state(tree: Path) -> bool:
    """A state directory without state.json: left by a run killed before it wrote any tree
    file, which is safe to remove only if every pristine copy equals the file in the tree."""
    state = tree / STATE_DIR
    if not state.is_dir() or state.is_symlink() or os.path.lexists(state / STATE_FILE):
        return False
    originals = state / ORIGINALS
    for copy in sorted(originals.rglob("*")) if originals.is_dir() else []:
        if copy.is_dir() and not copy.is_symlink():
            continue
        rel = copy.relative_to(originals)
        current = tree / rel
        if not (is_regular_file(copy) and is_regular_file(current)):
            raise _damaged(tree, f"it holds {rel} but no {STATE_FILE}")
        if copy.read_bytes() != current.read_bytes():
            raise _damaged(tree, f"it has no {STATE_FILE} and {rel} differs from its copy")
    return True


def _present_targets(tree: Path) -> List[Target]:
    present = []
    for target in TARGETS:
        path = tree / target.path
        if path.is_symlink() or (os.path.lexists(path) and not path.is_file()):
            raise KitError(
                f"{path} is not a regular file: memuse-kit edits regular files only; "
                "replace it with a copy of what it points to"
            )
        if path.is_file():
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


def render_edits(
    pristine: Dict[str, str], kernel: KernelVersion, nr: int, facts: TreeFacts
) -> Dict[str, str]:
    """The patched text of every target file present in pristine (path -> text)."""
    ctx = RenderContext(nr=nr, kernel=kernel, facts=facts)
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


@dataclass(frozen=True)
class LineStyle:
    """How a file ends its lines; the edits are made in LF and given the file's style back."""

    crlf: bool
    final_newline: bool

    @classmethod
    def of(cls, rel: str, text: str) -> LineStyle:
        crlf = text.count("\r\n")
        if crlf and crlf != text.count("\n"):
            raise KitError(
                f"{rel} mixes CRLF and LF line endings: give it one style (dos2unix) first"
            )
        return cls(bool(crlf), text == "" or text.endswith("\n"))

    def normalized(self, text: str) -> str:
        text = text.replace("\r\n", "\n") if self.crlf else text
        return text if self.final_newline else text + "\n"

    def restyled(self, text: str) -> str:
        if not self.final_newline and text.endswith("\n"):
            text = text[:-1]
        return text.replace("\n", "\r\n") if self.crlf else text


def plan_patch(tree: Path) -> PatchPlan:
    """Everything a patch run would write, computed without writing anything."""
    kernel = read_tree_version(tree)
    facts = probe_tree(tree)
    state = TreeState(tree)
    targets = _present_targets(tree)
    current = {t.path: _read(tree / t.path) for t in targets}
    pristine = {rel: state.pristine(rel, data) for rel, data in current.items()}
    _check_no_foreign_memuse(tree, pristine)
    styles = {rel: LineStyle.of(str(tree / rel), _text(data)) for rel, data in pristine.items()}
    pristine_text = {rel: styles[rel].normalized(_text(data)) for rel, data in pristine.items()}
    nr = tables.choose_number(pristine_text)
    try:
        rendered = render_edits(pristine_text, kernel, nr, facts)
    except KitError as error:
        raise KitError(f"{tree}/{error}") from None
    patched = {rel: styles[rel].restyled(text) for rel, text in rendered.items()}
    files = [
        FilePlan(t.path, pristine[t.path], current[t.path], _bytes(patched[t.path]))
        for t in targets
    ]
    return PatchPlan(tree, kernel, nr, files, facts)


def check_can_write(tree: Path, paths: List[Path]) -> None:
    """Every file about to be replaced, and the state directory, can be: else one line."""
    for path in paths:
        check_replaceable(path, f"in the kernel tree {tree}")
    TreeState(tree).check_writable()


def apply_plan(plan: PatchPlan) -> List[str]:
    """Write the planned files (state first, so a crash can always be reverted).

    Everything is checked before the first write; a failed write undoes the others and the
    state, so the tree is as it was or completely patched.
    """
    contents = {plan.tree / f.path: f.patched for f in plan.changed}
    state = TreeState(plan.tree)
    if contents or not state.exists:  # an unchanged, patched tree may well be read-only
        check_can_write(plan.tree, list(contents))
    saved = state.saved()
    state.save(plan)
    try:
        atomic.write_all_or_nothing(contents)
    except BaseException:
        state.restore(saved)
        raise
    return [f.path for f in plan.changed]


def undo_apply(plan: PatchPlan, saved: Optional[bytes]) -> None:
    """Put the tree back as it was before apply_plan(plan); saved is TreeState.saved()."""
    atomic.write_all_or_nothing({plan.tree / f.path: f.current for f in plan.changed})
    TreeState(plan.tree).restore(saved)


@dataclass(frozen=True)
class RevertResult:
    restored: List[str]
    was_patched: bool


def revert(tree: Path) -> RevertResult:
    """Put every file memuse-kit edited back byte for byte, then forget the tree.

    A killed run's leftovers are removed first; nothing is written until every file to
    restore has been read, checked against its record and found replaceable.
    """
    read_tree_version(tree)
    clean_leftovers(tree)
    state = TreeState(tree)
    if not state.exists:
        _check_no_foreign_memuse(
            tree, {t.path: _read(tree / t.path) for t in _present_targets(tree)}
        )
        return RevertResult([], False)
    contents: Dict[Path, bytes] = {}
    for rel in state.files():
        path = tree / rel
        if not is_regular_file(path):
            raise KitError(
                f"{path} is gone; cannot revert a tree that lost a file memuse-kit edited: "
                f"restore it from the source package or git, then delete {state.root}"
            )
        contents[path] = state.pristine(rel, _read(path))
    changed_paths = [path for path, data in contents.items() if _read(path) != data]
    check_can_write(tree, changed_paths)
    check_replaceable(state.root, "memuse-kit's state")
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
