"""Issue 12's no-op check: a tree that the last real run brought to its plan is found
unchanged without rendering (patching.plan_memo). Whatever could change a render (the
templates, the kit's code, a syscall's folder, the tree's files, its facts) renders in full,
and a dry run keeps no memo."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import List

import pytest

import memuse_kit
from memuse_kit.building.pipeline import ensure_patched
from memuse_kit.core.errors import KitError
from memuse_kit.patching import patcher, plan_memo, templates
from tests.fakelinux import MM_H, make_fake_tree

SYSCALLS = ("memuse", "fdcount")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("MEMUSE_KIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def tree(tmp_path: Path, cache: Path) -> Path:
    root = make_fake_tree(tmp_path / "linux", mm="old")
    ensure_patched(root, syscalls=SYSCALLS)
    return root


@pytest.fixture
def renders(monkeypatch) -> List[str]:
    """The trees patcher renders edits for."""
    calls: List[str] = []
    real = patcher.render_edits

    def counting(pristine, kernel, syscalls, facts):
        calls.append(",".join(p.name for p in syscalls))
        return real(pristine, kernel, syscalls, facts)

    monkeypatch.setattr(patcher, "render_edits", counting)
    return calls


def _without_memo(tree: Path) -> patcher.PatchPlan:
    plan_memo.memo_path(tree).unlink()
    return patcher.plan_patch(tree)


def test_an_unchanged_tree_is_checked_without_rendering(tree, renders):
    plan = patcher.plan_patch(tree)
    assert renders == [] and not plan.changed
    rendered = _without_memo(tree)
    assert renders == ["memuse,fdcount"]
    assert plan.files == rendered.files
    assert plan.numbers == rendered.numbers == {"memuse": 463, "fdcount": 464}
    assert plan.probe_results() == rendered.probe_results()


def test_the_memo_is_written_by_real_runs_only(tmp_path, cache):
    root = make_fake_tree(tmp_path / "linux", mm="old")
    ensure_patched(root, dry_run=True, syscalls=SYSCALLS)
    assert not plan_memo.memo_path(root).exists() and not (cache / "plans").exists()
    ensure_patched(root, syscalls=SYSCALLS)
    assert plan_memo.read(root) is not None


def test_a_template_edit_renders_again(tree, renders, tmp_path, monkeypatch):
    copy = tmp_path / "templates"
    shutil.copytree(templates.TEMPLATES_DIR, copy)
    monkeypatch.setattr(templates, "TEMPLATES_DIR", copy)
    body = copy / "syscalls/memuse/impl.c.j2"
    body.write_text(body.read_text() + "/* v2 */\n")
    plan = patcher.plan_patch(tree)
    assert renders == ["memuse,fdcount"]
    assert [f.path for f in plan.changed] == ["kernel/memuse.c"]
    assert b"/* v2 */" in (plan.changed[0].patched or b"")


def test_a_hand_edited_file_of_the_patch_is_still_refused(tree, renders):
    """The memo skips the render, not the checks before it."""
    path = tree / "kernel/memuse.c"
    path.write_bytes(path.read_bytes() + b"/* mine */\n")
    with pytest.raises(KitError, match="changed since memuse-kit patched it"):
        patcher.plan_patch(tree)


def test_a_tree_that_holds_other_bytes_than_the_memo_renders_again(tree, renders):
    """Same inputs, but the tree is not what the memo says the plan wanted (a run stopped
    between writing files, or a memo of another tree at this path)."""
    memo = plan_memo.read(tree)
    assert memo is not None
    plan_memo.write(tree, replace(memo, files={**memo.files, "kernel/memuse.c": "0" * 64}))
    plan = patcher.plan_patch(tree)
    assert renders == ["memuse,fdcount"] and not plan.changed
    ensure_patched(tree)
    assert plan_memo.read(tree) == memo


def test_a_changed_fact_of_the_tree_renders_again(tree, renders):
    (tree / "include/linux/mm.h").write_text(MM_H["new"])
    plan = patcher.plan_patch(tree)
    assert renders == ["memuse,fdcount"]
    assert plan.facts is not None and plan.memo is not None
    assert plan.memo.key != plan_memo.read(tree).key  # type: ignore[union-attr]


def test_a_damaged_memo_is_no_memo(tree, renders):
    plan_memo.memo_path(tree).write_text("{not json")
    assert not patcher.plan_patch(tree).changed
    assert renders == ["memuse,fdcount"]
    ensure_patched(tree)
    assert plan_memo.read(tree) is not None


def test_the_code_digest_follows_the_kit_the_templates_and_the_folders(tmp_path, monkeypatch):
    package, folder = tmp_path / "package", tmp_path / "mine"
    for where in (package, folder, tmp_path / "templates"):
        where.mkdir()
        (where / "a.txt").write_text("one")
    monkeypatch.setattr(memuse_kit, "__file__", str(package / "__init__.py"))

    def digest() -> str:
        return plan_memo.code_digest(tmp_path / "templates", [folder])

    seen = {digest()}
    for changed in (package / "a.txt", tmp_path / "templates/a.txt", folder / "a.txt"):
        changed.write_text(changed.read_text() + " more")
        seen.add(digest())
    (package / "__pycache__").mkdir()
    (package / "__pycache__/a.cpython-311.pyc").write_bytes(b"compiled")
    seen.add(digest())
    assert len(seen) == 4  # each source edit changes it, a byte-compiled file does not
    # templates inside the package (as shipped) are read once, with the package
    (package / "templates").mkdir()
    (package / "templates/t.j2").write_text("t")
    inside = plan_memo.code_digest(package / "templates", [package / "templates"])
    assert inside == plan_memo.code_digest(package, [])


def test_a_file_beside_a_user_syscall_s_folder_that_its_body_includes_renders_again(
    tmp_path, cache, renders, monkeypatch
):
    """A user's syscall body is loaded from the folder above its own, so it may include a
    file there: that file is an input of the render too."""
    from memuse_kit.patching import scaffold, spec

    mine = tmp_path / "mine"
    monkeypatch.setenv(spec.USER_DIR_ENV, str(mine))
    scaffold.create(scaffold.request("memz", ["int x"]), scaffold.target_dir(None))
    (mine / "common.j2").write_text("/* common v1 */\n")
    body = mine / "memz/impl.c.j2"
    body.write_text('{% include "common.j2" %}' + body.read_text())
    root = make_fake_tree(tmp_path / "linux", mm="old")
    ensure_patched(root, syscalls=("memz",))
    assert not patcher.plan_patch(root).changed and renders == ["memz"]
    (mine / "common.j2").write_text("/* common v2 */\n")
    plan = patcher.plan_patch(root)
    assert renders == ["memz", "memz"]
    assert [f.path for f in plan.changed] == ["kernel/memz.c"]
    assert b"common v2" in (plan.changed[0].patched or b"")
