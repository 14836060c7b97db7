"""Plan, apply and revert a set of syscalls on a kernel tree.

A tree holds a set of the kit's syscalls, each with its number: adding one keeps the numbers
of those already there, reverting one leaves the others as they are. The pristine bytes of
every edited file are kept under <tree>/.memuse-kit/, so a re-run after a template change
rewrites only what changed, and --revert is byte-exact even when the templates moved on since
the tree was patched. The state is written before any file of the tree, and names both the
old and the new content of every file in flight, so a run killed at any instant leaves a tree
that the next run can finish or revert.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

from memuse_kit.core import atomic
from memuse_kit.core.digest import sha256_bytes, sha256_content
from memuse_kit.core.errors import KitError
from memuse_kit.core.safety import TMP_PREFIX, check_replaceable, describe_os_error, is_regular_file
from memuse_kit.patching import plan_memo, probes, spec, templates
from memuse_kit.patching import syscall_tables as tables
from memuse_kit.patching.probes import TreeFacts
from memuse_kit.patching.spec import SyscallSpec
from memuse_kit.patching.targets import (
    LEGACY_BODY,
    TARGETS,
    Placed,
    RenderContext,
    apply_splices,
    existing_syscall,
    source_path,
)
from memuse_kit.patching.templates import variables_used
from memuse_kit.trees.kernel_version import KernelVersion, read_tree_version

STATE_DIR = ".memuse-kit"
STATE_FILE = "state.json"
STATE_VERSION = 2
ORIGINALS = "original"
STATE_LIMIT = 1 << 20  # bytes of state.json read at most
# state.json before syscalls had names held one number, memuse's
LEGACY_SYSCALL = "memuse"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SOURCE = re.compile(r"^kernel/[a-z_][a-z0-9_]*\.c$")
# what write_atomic named its temporary files before they carried TMP_PREFIX
_OLD_TMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")

Content = Optional[bytes]  # a file's bytes, None when it does not exist


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class FilePlan:
    path: str
    original: Content  # before memuse-kit (None: a file it creates)
    current: Content
    patched: Content  # what the plan wants (None: the file goes)

    @property
    def needs_write(self) -> bool:
        return self.current != self.patched

    @property
    def edited(self) -> bool:
        """Whether the patched tree differs from the pristine one in this file."""
        return self.original != self.patched


@dataclass(frozen=True)
class PatchPlan:
    tree: Path
    kernel: KernelVersion
    syscalls: Tuple[Placed, ...]  # in the order of their numbers
    files: List[FilePlan]
    facts: Optional[TreeFacts]
    memo: Optional[plan_memo.PlanMemo] = None  # what remember() keeps for the next check

    @property
    def changed(self) -> List[FilePlan]:
        return [f for f in self.files if f.needs_write]

    @property
    def numbers(self) -> Dict[str, int]:
        return {placed.name: placed.nr for placed in self.syscalls}

    def probe_results(self) -> Dict[str, object]:
        """probe_results() of the planned tree, from what the plan probed already."""
        results: Dict[str, object] = dict(self.facts.as_dict()) if self.facts else {}
        for placed in self.syscalls:
            for probe, value in placed.probes.items():
                results[f"{placed.name}.{probe}"] = value
        return results


def describe_numbers(numbers: Mapping[str, int]) -> str:
    """memuse = syscall 472, fdcount = syscall 473"""
    return ", ".join(f"{name} = syscall {nr}" for name, nr in numbers.items())


# --- the state kept in the tree -------------------------------------------------------------


def _damaged(tree: Path, why: str) -> KitError:
    return KitError(
        f"{tree / STATE_DIR} is damaged ({why}): restore the tree's edited files (from the "
        f"source package or git), then delete {tree / STATE_DIR} after checking; "
        "memuse-kit will not guess"
    )


def known_path(rel: str) -> bool:
    """A file memuse-kit may have edited or created."""
    fixed = {target.path for target in TARGETS} | {LEGACY_BODY}
    return rel in fixed or _SOURCE.match(rel) is not None


def _migrated(data: object) -> object:
    """A state.json of the first version (no "version": memuse alone, its number as "nr")
    in today's shape."""
    if not isinstance(data, dict) or "version" in data:
        return data
    migrated = {key: value for key, value in data.items() if key != "nr"}
    migrated["version"] = STATE_VERSION
    if "nr" in data:
        migrated["syscalls"] = {LEGACY_SYSCALL: data["nr"]}
    return migrated


def _valid_number(nr: object) -> bool:
    return isinstance(nr, int) and not isinstance(nr, bool) and nr >= 0


def _validsha256_content(value: object, may_be_absent: bool) -> bool:
    if value is None:
        return may_be_absent
    return isinstance(value, str) and _SHA256.match(value) is not None


def _valid_file_record(rel: str, record: object) -> bool:
    """Both sums (None: the file does not exist, for the files memuse-kit creates only)."""
    if not isinstance(record, dict):
        return False
    created = _SOURCE.match(rel) is not None and rel != LEGACY_BODY
    return (
        "original_sha256" in record
        and "patched_sha256" in record
        and _validsha256_content(record["original_sha256"], created)
        and _validsha256_content(record["patched_sha256"], created)
        and _validsha256_content(record.get("previous_sha256"), True)
    )


def _valid_record(data: object) -> Optional[str]:
    """Why a state.json document is unusable, or None when it is fine."""
    if not isinstance(data, dict):
        return "state.json is not a JSON object"
    if data.get("version") != STATE_VERSION:
        return f"state.json has version {data.get('version')!r}, not {STATE_VERSION}"
    files = data.get("files")
    if not isinstance(files, dict) or not files:
        return "state.json lists no files"
    for rel, record in files.items():
        if not known_path(rel):
            return f"state.json names {rel!r}, not a file memuse-kit edits"
        if not _valid_file_record(rel, record):
            return f"state.json's record of {rel} lacks its sha256 sums"
    syscalls = data.get("syscalls")
    if not isinstance(syscalls, dict) or not syscalls:
        return "state.json has no syscall number"
    for name, nr in syscalls.items():
        if spec.identifier_problem(name) or not _valid_number(nr):
            return "state.json has no syscall number"
    if not isinstance(data.get("kernel"), str):
        return "state.json has no kernel version"
    return None


def _refuse_newer(tree: Path, data: object) -> None:
    """A state a later memuse-kit wrote is not damage: say which version can read it."""
    version = data.get("version", 0) if isinstance(data, dict) else 0
    if _valid_number(version) and version > STATE_VERSION:
        raise KitError(
            f"{tree} was patched by a newer memuse-kit (tree state version {version}, this one "
            f"reads up to {STATE_VERSION}): use that memuse-kit, or revert the tree with it first"
        )


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
            data = _migrated(json.loads(raw.decode("utf-8")))
        except ValueError:
            raise _damaged(self.tree, f"{STATE_FILE} is not valid JSON") from None
        _refuse_newer(self.tree, data)
        why = _valid_record(data)
        if why is not None:
            raise _damaged(self.tree, why)
        return data  # type: ignore[return-value]

    def saved(self) -> Optional[bytes]:
        """The state file's bytes, to put back if a run must be undone (None: no state)."""
        path = self.root / STATE_FILE
        return path.read_bytes() if os.path.lexists(path) else None

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

    def syscalls(self) -> Dict[str, int]:
        """The syscalls the tree holds, {name: number}, in the order of their numbers."""
        found = self.data.get("syscalls", {})
        return dict(sorted(found.items(), key=lambda item: item[1]))

    def backup_path(self, rel: str) -> Path:
        return self.root / ORIGINALS / rel

    def pristine(self, rel: str, current: Content) -> Content:
        """The file as it was before memuse-kit (None: it did not exist), given its bytes now."""
        record = self.files().get(rel)
        found = sha256_content(current)
        if record is None or found == record["original_sha256"]:
            return current
        if found not in (record["patched_sha256"], record.get("previous_sha256")):
            if current is None:
                raise KitError(
                    f"{self.tree / rel} is gone; cannot revert a tree that lost a file "
                    f"memuse-kit edited: restore it from the source package or git, then "
                    f"delete {self.root}"
                )
            raise KitError(
                f"{self.tree / rel} changed since memuse-kit patched it; "
                "restore it (or the whole tree) before patching or reverting"
            )
        if record["original_sha256"] is None:
            return None
        backup = self.backup_path(rel)
        data = backup.read_bytes() if is_regular_file(backup) else b""
        if sha256_bytes(data) != record["original_sha256"]:
            raise KitError(
                f"the pristine copy {backup} is missing or damaged: restore {self.tree / rel} "
                f"from the source package or git, then delete {self.root} after checking"
            )
        return data

    def save(self, plan: PatchPlan, in_flight: bool) -> None:
        """Record the plan; in_flight also names what each file to be written holds now."""
        kept = [f for f in plan.files if f.edited or (in_flight and f.needs_write)]
        for file in kept:
            if file.original is not None:
                backup = self.backup_path(file.path)
                backup.parent.mkdir(parents=True, exist_ok=True)
                atomic.write_if_changed(backup, file.original)
        files = {}
        for file in kept:
            record = {
                "original_sha256": sha256_content(file.original),
                "patched_sha256": sha256_content(file.patched),
            }
            if in_flight and file.needs_write:
                record["previous_sha256"] = sha256_content(file.current)
            files[file.path] = record
        document = {
            "version": STATE_VERSION,
            "kernel": str(plan.kernel),
            "syscalls": plan.numbers,
            "files": files,
        }
        self.data = document
        atomic.write_if_changed(
            self.root / STATE_FILE, _bytes(json.dumps(document, indent=2) + "\n")
        )

    def drop_unused_backups(self) -> None:
        """Pristine copies of files the state no longer records (a syscall reverted alone)."""
        originals = self.root / ORIGINALS
        if not originals.is_dir():
            return
        for copy in sorted(originals.rglob("*"), reverse=True):
            rel = str(copy.relative_to(originals))
            if copy.is_file() and rel not in self.files():
                copy.unlink()
            elif copy.is_dir() and not any(copy.iterdir()):
                copy.rmdir()

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


# --- reading the tree -----------------------------------------------------------------------


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise KitError(f"cannot read {describe_os_error(error)}") from None


def _read_optional(tree: Path, rel: str) -> Content:
    path = tree / rel
    if path.is_symlink() or (os.path.lexists(path) and not path.is_file()):
        raise KitError(
            f"{path} is not a regular file: memuse-kit edits regular files only; "
            "replace it with a copy of what it points to"
        )
    return _read(path) if path.is_file() else None


def clean_leftovers(tree: Path) -> List[Path]:
    """Remove what a killed patch or revert left behind: temporary files, a forgotten state
    directory, pristine copies without a state file. Returns what was removed."""
    removed: List[Path] = []
    names = {Path(target.path).name for target in TARGETS} | {STATE_FILE, Path(LEGACY_BODY).name}
    directories = {tree, tree / "kernel"} | {(tree / target.path).parent for target in TARGETS}
    state = tree / STATE_DIR
    if state.is_dir() and not state.is_symlink():
        directories |= {Path(top) for top, _, _ in os.walk(state)}
    for directory in sorted(directories):
        for entry in sorted(_leftovers_in(directory, names)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    if _orphan_state(tree):
        shutil.rmtree(state)
        removed.append(state)
    return removed


def _leftovers_in(directory: Path, names: Set[str]) -> List[Path]:
    """The temporary files of the kit's writes in directory (by name only: include/linux
    has 1,500 entries, and every build looks)."""
    try:
        entries = [entry.name for entry in os.scandir(directory)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [directory / name for name in entries if _is_leftover(name, names)]


def _is_leftover(name: str, names: Set[str]) -> bool:
    old = _OLD_TMP.match(name)
    return name.startswith(TMP_PREFIX) or bool(old and old.group("name") in names)


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


def _present_targets(tree: Path) -> List[str]:
    """The paths of the fixed targets the tree has; a missing required one is refused."""
    present = []
    for target in TARGETS:
        path = tree / target.path
        if path.is_symlink() or (os.path.lexists(path) and not path.is_file()):
            raise KitError(
                f"{path} is not a regular file: memuse-kit edits regular files only; "
                "replace it with a copy of what it points to"
            )
        if path.is_file():
            present.append(target.path)
        elif target.required:
            raise KitError(f"{tree} lacks {target.path}, which every syscall must edit")
    return present


def _check_no_clash(tree: Path, pristine: Mapping[str, Content], names: Sequence[str]) -> None:
    """None of names is a syscall the tree has of its own (memuse-kit did not add it)."""
    for name in names:
        if pristine.get(source_path(name)) is not None:
            raise KitError(
                f"{tree / source_path(name)} already exists: a syscall named {name} would "
                "need that file; choose another name"
            )
        for rel, data in pristine.items():
            line = None if data is None else existing_syscall(rel, _text(data), name)
            if line is not None:
                raise KitError(
                    f"{tree / rel}:{line} already has a {name} syscall that memuse-kit did not "
                    "add; remove it (e.g. patch -R -p1) first, or choose another name"
                )


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


# --- planning -------------------------------------------------------------------------------


def uses_tree_facts(syscall: SyscallSpec) -> bool:
    """Whether the syscall's body reads facts.* (only then is the tree's mm code probed)."""
    return "facts" in variables_used(syscall.root, syscall.impl_template)


def check_requirements(tree: Path, specs: Sequence[SyscallSpec]) -> None:
    read = probes.tree_reader(tree)
    for syscall in specs:
        missing = probes.missing_requirements(read, syscall.requires)
        if missing:
            raise KitError(
                f"{tree} lacks {', '.join(missing)}(), which {syscall.name} needs: "
                f"{syscall.name} supports Linux {syscall.min_kernel} and later; use a newer "
                "kernel tree"
            )


def declared_probes(tree: Path, syscall: SyscallSpec) -> Dict[str, bool]:
    read = probes.tree_reader(tree)
    return {p.name: probes.declared_probe(read, p.file, p.kind, p.value) for p in syscall.probes}


def assign_numbers(
    pristine_text: Mapping[str, str], kept: Mapping[str, int], added: Sequence[str]
) -> Dict[str, int]:
    """The numbers of kept syscalls stay; added ones get the next free numbers, in turn."""
    numbers = dict(kept)
    following = max([tables.choose_number(pristine_text), *(nr + 1 for nr in kept.values())])
    for offset, name in enumerate(added):
        numbers[name] = following + offset
    return numbers


def render_edits(
    pristine: Mapping[str, Optional[str]],
    kernel: KernelVersion,
    syscalls: Sequence[Placed],
    facts: Optional[TreeFacts],
) -> Dict[str, Optional[str]]:
    """The patched text of every file in pristine, and each syscall's kernel/<name>.c.

    None stands for a file that does not exist (before) or must not (after).
    """
    ctx = RenderContext(kernel=kernel, syscalls=tuple(syscalls), facts=facts)
    patched: Dict[str, Optional[str]] = {}
    for target in TARGETS:
        text = pristine.get(target.path)
        if text is None:
            continue
        try:
            patched[target.path] = apply_splices(text, target.locate(text, ctx))
        except KitError as error:
            raise KitError(f"{target.path}: {error}") from None
    for placed in syscalls:
        patched[source_path(placed.name)] = ctx.source(placed)
    for rel, text in pristine.items():
        patched.setdefault(rel, text)  # a file no syscall of the set edits goes back as it was
    return patched


def probe_results(tree: Path, names: Sequence[str]) -> Dict[str, object]:
    """What decided the code of these syscalls in tree: the tree's facts their bodies read,
    and each one's own probes as "name.probe" (for the build record)."""
    specs = spec.load_specs(names)
    results: Dict[str, object] = {}
    if any(uses_tree_facts(s) for s in specs):
        results.update(probes.probe_tree(tree).as_dict())
    for syscall in specs:
        for probe, value in declared_probes(tree, syscall).items():
            results[f"{syscall.name}.{probe}"] = value
    return results


def plan_patch(tree: Path, add: Sequence[str] = ()) -> PatchPlan:
    """The tree with the syscalls `add` joined to those it has, computed without writing.

    With nothing to add, the syscalls it has (re-rendered), or the default for a tree that
    has none.
    """
    recorded = TreeState(tree).syscalls()
    if not add and not recorded:
        add = spec.DEFAULT_SYSCALLS
    wanted = [*recorded, *(name for name in dict.fromkeys(add) if name not in recorded)]
    return _plan(tree, wanted)


def plan_without(tree: Path, drop: Sequence[str]) -> PatchPlan:
    """The tree with the syscalls `drop` taken out and the others left as they are."""
    recorded = TreeState(tree).syscalls()
    return _plan(tree, [name for name in recorded if name not in drop])


def plan_fresh(tree: Path, names: Sequence[str]) -> PatchPlan:
    """What the pristine tree would get with the syscalls names (numbered in that order),
    whatever the tree holds now: the shipped patches. Not for apply_plan."""
    return _plan(tree, names, fresh=True)


@dataclass(frozen=True)
class _Pristine:
    """The files a plan reads: as they are now, as they were before memuse-kit, and that
    pristine text with LF endings (the edits are made in LF, then given each file's style)."""

    current: Dict[str, Content]
    original: Dict[str, Content]
    text: Dict[str, Optional[str]]
    styles: Dict[str, LineStyle]

    @classmethod
    def read(cls, tree: Path, state: TreeState, paths: Sequence[str]) -> _Pristine:
        current = {rel: _read_optional(tree, rel) for rel in paths}
        original = {rel: state.pristine(rel, data) for rel, data in current.items()}
        styles = {
            rel: LineStyle.of(str(tree / rel), _text(data))
            for rel, data in original.items()
            if data is not None
        }
        text = {
            rel: None if data is None else styles[rel].normalized(_text(data))
            for rel, data in original.items()
        }
        return cls(current, original, text, styles)

    def present(self) -> Dict[str, str]:
        return {rel: text for rel, text in self.text.items() if text is not None}


def _plan(tree: Path, wanted: Sequence[str], fresh: bool = False) -> PatchPlan:
    kernel = read_tree_version(tree)
    specs = spec.load_specs(wanted)
    state = TreeState(tree)
    recorded = {} if fresh else state.syscalls()
    paths = _present_targets(tree) + [source_path(s.name) for s in specs]
    paths += [rel for rel in state.files() if rel not in paths]
    files = _Pristine.read(tree, state, paths)
    added = [name for name in wanted if name not in recorded]
    _check_no_clash(tree, files.original, added)
    check_requirements(tree, specs)
    kept = {name: nr for name, nr in recorded.items() if name in wanted}
    numbers = assign_numbers(files.present(), kept, added)
    placed = sorted(
        (Placed(s, numbers[s.name], declared_probes(tree, s)) for s in specs),
        key=lambda p: p.nr,
    )
    # shipped patches (fresh) are rendered for a pristine tree that is not there: no memo
    code = None if fresh else _code_digest(specs)
    memo = None if code is None else plan_memo.read(tree)
    reads_facts = plan_memo.facts_readers(memo, code, wanted) or {
        s.name: uses_tree_facts(s) for s in specs
    }
    facts = probes.probe_tree(tree) if any(reads_facts.values()) else None
    key = None if code is None else _render_key(code, kernel, placed, facts, files.original)
    if memo is not None and memo.key == key and memo.holds(files.current):
        unchanged = [
            FilePlan(rel, files.original[rel], files.current[rel], files.current[rel])
            for rel in sorted(files.current)
        ]
        return PatchPlan(tree, kernel, tuple(placed), unchanged, facts, memo)
    try:
        rendered = render_edits(files.text, kernel, placed, facts)
    except KitError as error:
        raise KitError(f"{tree}/{error}") from None
    plans = [
        FilePlan(
            rel, files.original[rel], files.current[rel], _restyle(files.styles.get(rel), text)
        )
        for rel, text in sorted(rendered.items())
    ]
    made = None
    if code is not None and key is not None:
        wants = {f.path: sha256_content(f.patched) for f in plans}
        made = plan_memo.PlanMemo(code, reads_facts, key, wants)
    return PatchPlan(tree, kernel, tuple(placed), plans, facts, made)


def _code_digest(specs: Sequence[SyscallSpec]) -> str:
    return plan_memo.code_digest(templates.TEMPLATES_DIR, [s.root for s in specs])


def _render_key(
    code: str,
    kernel: KernelVersion,
    placed: Sequence[Placed],
    facts: Optional[TreeFacts],
    originals: Mapping[str, Content],
) -> str:
    """What one render of these syscalls depends on besides the code: see plan_memo."""
    return plan_memo.inputs_key(
        code,
        {
            "kernel": str(kernel),
            "placed": [(p.name, p.nr, p.probes) for p in placed],
            "facts": facts.as_dict() if facts else None,
        },
        originals,
    )


def _restyle(style: Optional[LineStyle], text: Optional[str]) -> Content:
    if text is None:
        return None
    return _bytes(style.restyled(text) if style else text)


# --- writing --------------------------------------------------------------------------------


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
    state.save(plan, in_flight=True)
    try:
        atomic.write_all_or_nothing(contents)
    except BaseException:
        state.restore(saved)
        raise
    state.save(plan, in_flight=False)
    state.drop_unused_backups()
    return [f.path for f in plan.changed]


def undo_apply(plan: PatchPlan, saved: Optional[bytes]) -> None:
    """Put the tree back as it was before apply_plan(plan); saved is TreeState.saved()."""
    atomic.write_all_or_nothing({plan.tree / f.path: f.current for f in plan.changed})
    TreeState(plan.tree).restore(saved)


@dataclass(frozen=True)
class RevertResult:
    restored: List[str]
    was_patched: bool
    remaining: Dict[str, int]  # the syscalls the tree still has


def revert(tree: Path, names: Sequence[str] = ()) -> RevertResult:
    """Take the syscalls `names` out of the tree (none given: all of them, and forget the tree).

    A killed run's leftovers are removed first; nothing is written until every file to
    restore has been read, checked against its record and found replaceable.
    """
    read_tree_version(tree)
    clean_leftovers(tree)
    state = TreeState(tree)
    recorded = state.syscalls()
    if not state.exists:
        pristine = {rel: _read_optional(tree, rel) for rel in _present_targets(tree)}
        _check_no_clash(tree, pristine, names or spec.DEFAULT_SYSCALLS)
        return RevertResult([], False, {})
    if names and set(recorded) - set(names):
        plan = plan_without(tree, names)
        changed = apply_plan(plan)
        return RevertResult(changed, True, plan.numbers)
    return _revert_all(tree, state)


def _revert_all(tree: Path, state: TreeState) -> RevertResult:
    contents: Dict[Path, Content] = {}
    for rel in state.files():
        contents[tree / rel] = state.pristine(rel, _read_optional(tree, rel))
    changed_paths = [path for path, data in contents.items() if _current(path) != data]
    check_can_write(tree, changed_paths)
    check_replaceable(state.root, "memuse-kit's state")
    changed = atomic.write_all_or_nothing(contents)
    state.remove()
    return RevertResult([str(p.relative_to(tree)) for p in changed], True, {})


def files_to_restore(tree: Path) -> List[str]:
    """What a revert of every syscall would write (nothing is written)."""
    state = TreeState(tree)
    restore = []
    for rel in state.files():
        current = _read_optional(tree, rel)
        if state.pristine(rel, current) != current:
            restore.append(rel)
    return restore


def _current(path: Path) -> Content:
    return path.read_bytes() if is_regular_file(path) else None


def remember(plan: PatchPlan) -> None:
    """Once the tree holds plan (applied, or already so): its memo, so that the next check
    of an unchanged tree skips rendering. Never for a dry run."""
    if plan.memo is not None:
        plan_memo.write(plan.tree, plan.memo)


def recorded_syscalls(tree: Path) -> Dict[str, int]:
    """The syscalls the tree was patched with, {name: number}; {} when it is not patched."""
    return TreeState(tree).syscalls()


def patched_at(tree: Path) -> Optional[float]:
    """When the kit's edits of the tree last changed (the state file's mtime), or None."""
    state = tree / STATE_DIR / STATE_FILE
    return state.stat().st_mtime if state.is_file() else None
