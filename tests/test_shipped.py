from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from memuse_kit.patching import patcher, patchfile, shipped, spec, templates
from tests.fakelinux import make_fake_tree

EXPECTED = {
    f"{source}-{kernel}-{names}.patch"
    for source, kernel in (
        ("upstream", "5.11.0"),
        ("debian", "5.10.262"),
        ("debian", "6.1.192"),
        ("debian", "6.12.118"),
        ("debian", "7.2.13"),
    )
    for names in ("memuse", "memuse+fdcount")
}
_NAME = re.compile(r"^(upstream|debian|ubuntu|linux)-(\d+\.\d+\.\d+)-([a-z0-9_+]+)\.patch$")


def shipped_patches():
    return sorted(patchfile.PATCHES_DIR.glob("*.patch"))


def test_a_patch_ships_for_every_supported_kernel_and_syscall_set():
    assert {p.name for p in shipped_patches()} == EXPECTED


@pytest.mark.parametrize("path", shipped_patches(), ids=lambda p: p.name)
def test_a_shipped_patch_is_named_by_its_source_kernel_and_syscalls(path):
    """upstream-5.11.0-memuse.patch and an Ubuntu 5.11.0 patch can never be the same file."""
    _, kernel, names = _NAME.match(path.name).groups()  # type: ignore[union-attr]
    origin = patchfile.patch_origin(path.read_text())
    assert origin is not None and origin.kernel == kernel
    assert "+".join(origin.numbers) == names
    numbers = list(origin.numbers.values())
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # consecutive


@pytest.mark.parametrize("path", shipped_patches(), ids=lambda p: p.name)
def test_shipped_patch_matches_the_templates(path):
    assert shipped.stale_files(path.read_text()) == []


def test_the_same_kernel_from_two_sources_gets_two_names(tmp_path):
    tree = make_fake_tree(tmp_path / "linux", version="5.11.0", last=441, generic=False)
    plan = patcher.plan_patch(tree)
    assert patchfile.default_path(plan, "upstream").name == "upstream-5.11.0-memuse.patch"
    assert patchfile.default_path(plan, "ubuntu").name == "ubuntu-5.11.0-memuse.patch"


@pytest.fixture
def fake_patch(tmp_path: Path) -> str:
    tree = make_fake_tree(tmp_path / "linux", version="7.2.0", last=471)
    return patchfile.render_patch(patcher.plan_patch(tree))


def test_a_fresh_patch_is_not_stale(fake_patch):
    assert shipped.stale_files(fake_patch) == []


@pytest.fixture
def edited_templates(tmp_path, monkeypatch) -> Path:
    copy = tmp_path / "templates"
    shutil.copytree(templates.TEMPLATES_DIR, copy)
    monkeypatch.setattr(templates, "TEMPLATES_DIR", copy)
    return copy


def test_a_template_edit_makes_the_patch_stale(fake_patch, edited_templates):
    body = edited_templates / "syscalls/memuse/impl.c.j2"
    body.write_text(body.read_text().replace("cond_resched();", "might_sleep();"))
    assert shipped.stale_files(fake_patch) == ["kernel/memuse.c"]


def test_a_spec_edit_makes_the_patch_stale(fake_patch, edited_templates):
    toml = edited_templates / "syscalls/memuse/syscall.toml"
    toml.write_text(toml.read_text().replace('"linux/compat.h",\n', ""))
    assert shipped.stale_files(fake_patch) == ["kernel/memuse.c"]


def test_an_edited_shipped_patch_is_stale(fake_patch):
    edited = fake_patch.replace("+472\tcommon\tmemuse", "+473\tcommon\tmemuse", 1)
    assert shipped.stale_files(edited) == ["arch/x86/entry/syscalls/syscall_64.tbl"]


def test_a_patch_without_a_syscall_s_file_is_stale(fake_patch):
    start = fake_patch.index("diff --git a/kernel/memuse.c")
    end = fake_patch.index("diff --git", start + 1)
    assert shipped.stale_files(fake_patch[:start] + fake_patch[end:]) == ["kernel/memuse.c"]


def test_a_changed_commit_message_is_stale(fake_patch):
    assert shipped.stale_files(fake_patch.replace("memory are resident", "memory is")) == [
        "(commit message)"
    ]


def test_a_patch_of_an_unknown_syscall_says_so(fake_patch):
    renamed = fake_patch.replace("  memuse=472\n", "  nosuch=472\n")
    [problem] = shipped.stale_files(renamed)
    assert problem.startswith("(no syscall named 'nosuch'")


def test_check_all_names_the_stale_file(fake_patch, tmp_path):
    (tmp_path / "debian-7.2.0-memuse.patch").write_text(fake_patch.replace("+472\t", "+470\t"))
    (tmp_path / "debian-7.2.1-memuse.patch").write_text(fake_patch)
    problems = shipped.check_all(tmp_path)
    assert len(problems) == 1 and problems[0].startswith("debian-7.2.0-memuse.patch is stale")


def test_every_shipped_set_is_made_of_known_syscalls():
    for names in shipped.SHIPPED_SETS:
        assert [s.name for s in spec.load_specs(names)] == list(names)
