from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from memuse_kit.patching import patcher, patchfile, shipped, templates
from tests.fakelinux import make_fake_tree

EXPECTED_SERIES = {"5.10", "5.11", "6.1", "6.12", "7.2"}


def shipped_patches():
    return sorted(patchfile.PATCHES_DIR.glob("memuse-*.patch"))


def test_a_patch_ships_for_every_supported_kernel():
    series = {".".join(p.name[len("memuse-") :].split(".")[:2]) for p in shipped_patches()}
    assert series >= EXPECTED_SERIES


@pytest.mark.parametrize("path", shipped_patches(), ids=lambda p: p.name)
def test_shipped_patch_matches_the_templates(path):
    assert shipped.stale_files(path.read_text()) == []


@pytest.fixture
def fake_patch(tmp_path: Path) -> str:
    tree = make_fake_tree(tmp_path / "linux", version="7.2.0", last=471)
    return patchfile.render_patch(patcher.plan_patch(tree))


def test_a_fresh_patch_is_not_stale(fake_patch):
    assert shipped.stale_files(fake_patch) == []


def test_a_template_edit_makes_the_patch_stale(fake_patch, tmp_path, monkeypatch):
    copy = tmp_path / "templates"
    shutil.copytree(templates.TEMPLATES_DIR, copy)
    monkeypatch.setattr(templates, "TEMPLATES_DIR", copy)
    body = copy / "kernel/memuse.c.j2"
    body.write_text(body.read_text().replace("cond_resched();", "might_sleep();"))
    assert shipped.stale_files(fake_patch) == ["kernel/sys.c"]


def test_an_edited_shipped_patch_is_stale(fake_patch):
    edited = fake_patch.replace("+472\tcommon\tmemuse", "+473\tcommon\tmemuse", 1)
    assert shipped.stale_files(edited) == ["arch/x86/entry/syscalls/syscall_64.tbl"]


def test_a_changed_commit_message_is_stale(fake_patch):
    assert shipped.stale_files(fake_patch.replace("memory are resident", "memory is")) == [
        "(commit message)"
    ]


def test_check_all_names_the_stale_file(fake_patch, tmp_path):
    (tmp_path / "memuse-7.2.0.patch").write_text(fake_patch.replace("+472\t", "+470\t"))
    (tmp_path / "memuse-7.2.1.patch").write_text(fake_patch)
    problems = shipped.check_all(tmp_path)
    assert len(problems) == 1 and problems[0].startswith("memuse-7.2.0.patch is stale")
