from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from memuse_kit.core.errors import KitError
from memuse_kit.patching import patcher, patchfile, templates
from tests.fakelinux import SYS_C as SYS_C_TEXT
from tests.fakelinux import make_fake_tree, mtimes, snapshot

SYS_C = "kernel/sys.c"
MEMUSE_C = "kernel/memuse.c"
TBL64 = "arch/x86/entry/syscalls/syscall_64.tbl"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_fake_tree(tmp_path / "linux")


def patch(tree: Path) -> patcher.PatchPlan:
    plan = patcher.plan_patch(tree)
    patcher.apply_plan(plan)
    return plan


def test_number_is_one_past_the_highest_in_any_table(tree):
    assert patch(tree).numbers == {"memuse": 463}
    assert "463\tcommon\tmemuse\t\t\tsys_memuse\n" in (tree / TBL64).read_text()


def test_every_file_gets_its_edit(tree):
    patch(tree)
    assert "463\ti386\tmemuse" in (tree / "arch/x86/entry/syscalls/syscall_32.tbl").read_text()
    assert "463\tcommon\tmemuse" in (tree / "scripts/syscall.tbl").read_text()
    unistd = (tree / "include/uapi/asm-generic/unistd.h").read_text()
    assert "#define __NR_memuse 463\n__SYSCALL(__NR_memuse, sys_memuse)\n\n#undef" in unistd
    assert "#define __NR_syscalls 464\n" in unistd
    syscalls_h = (tree / "include/linux/syscalls.h").read_text()
    assert (
        "sys_mseal(unsigned long start, size_t len, unsigned long flags);\n"
        "asmlinkage long sys_memuse(pid_t pid, int mem_type);\n\n/*\n * Architecture" in syscalls_h
    )
    memuse_c = (tree / MEMUSE_C).read_text()
    assert memuse_c.startswith("// SPDX-License-Identifier: GPL-2.0\n#include <linux/compat.h>\n")
    includes = "#include <linux/syscalls.h>\n#include <linux/leafops.h>\n\n/*\n * memuse("
    assert includes in memuse_c
    assert memuse_c.endswith("#endif /* CONFIG_MMU */\n")
    assert "\nSYSCALL_DEFINE2(memuse, pid_t, pid, int, mem_type)\n{" in memuse_c
    makefile = (tree / "kernel/Makefile").read_text()
    assert "\t    sys.o\n\nobj-y += memuse.o\nobj-$(CONFIG_MULTIUSER) += groups.o\n" in makefile
    maintainers = (tree / "MAINTAINERS").read_text()
    section = "MEMUSE SYSTEM CALL\nM:\tmemuse-kit <memuse-kit@example.org>\nS:\tMaintained\n"
    assert f"F:\tmm/\n\n{section}F:\tkernel/memuse.c\n\nMEN A21" in maintainers
    assert (tree / SYS_C).read_text() == SYS_C_TEXT  # the body has a file of its own


def test_table_entry_lines_up_with_the_line_above(tree):
    patch(tree)
    lines = (tree / TBL64).read_text().splitlines()
    ours = lines.index("463\tcommon\tmemuse\t\t\tsys_memuse")
    assert lines[ours - 1].startswith("462 \tcommon  mseal")


def test_optional_files_are_left_out_when_the_tree_lacks_them(tmp_path):
    tree = make_fake_tree(tmp_path / "linux", version="5.11.0", last=441, generic=False)
    plan = patch(tree)
    assert plan.numbers == {"memuse": 442}
    assert "scripts/syscall.tbl" not in {f.path for f in plan.files}


def test_second_run_changes_nothing_and_touches_no_mtime(tree):
    patch(tree)
    before = mtimes(tree)
    plan = patch(tree)
    assert plan.changed == []
    assert mtimes(tree) == before


def test_revert_is_byte_exact_and_forgets_the_tree(tree):
    pristine = snapshot(tree)
    patch(tree)
    assert snapshot(tree) != pristine
    result = patcher.revert(tree)
    assert result.was_patched
    assert snapshot(tree) == pristine


def test_revert_of_an_unpatched_tree_does_nothing(tree):
    pristine = snapshot(tree)
    assert not patcher.revert(tree).was_patched
    assert snapshot(tree) == pristine


@pytest.fixture
def edited_templates(tmp_path: Path, monkeypatch):
    copy = tmp_path / "templates"
    shutil.copytree(templates.TEMPLATES_DIR, copy)
    monkeypatch.setattr(templates, "TEMPLATES_DIR", copy)
    return copy


def test_template_edit_rewrites_only_the_syscall_s_file(tree, edited_templates):
    patch(tree)
    before = mtimes(tree)
    body = edited_templates / "syscalls/memuse/impl.c.j2"
    body.write_text(body.read_text().replace("return -EINVAL;", "return -EINVAL; /* edited */"))
    plan = patch(tree)
    assert [f.path for f in plan.changed] == [MEMUSE_C]
    after = mtimes(tree)
    changed = {path for path in after if after[path] != before.get(path)}
    assert changed == {MEMUSE_C, ".memuse-kit/state.json"}
    assert "/* edited */" in (tree / MEMUSE_C).read_text()


def test_revert_after_a_template_edit_is_still_byte_exact(tree, edited_templates):
    pristine = snapshot(tree)
    patch(tree)
    body = edited_templates / "syscalls/memuse/impl.c.j2"
    body.write_text(body.read_text().replace("return -ESRCH;", "return -ESRCH; /* new */"))
    patcher.revert(tree)
    assert snapshot(tree) == pristine


def test_a_foreign_memuse_is_refused_and_nothing_is_written(tree):
    table = tree / TBL64
    other = "\n463\tcommon\tmemuse\t\t\tsys_other\n\n#\n# Due"
    table.write_text(table.read_text().replace("\n\n#\n# Due", other))
    before = snapshot(tree)
    with pytest.raises(KitError, match=r"syscall_64.tbl:\d+ already has a memuse syscall"):
        patcher.plan_patch(tree)
    assert snapshot(tree) == before


def test_missing_anchor_is_a_clear_error_and_the_tree_is_untouched(tree):
    header = tree / "include/linux/syscalls.h"
    header.write_text(header.read_text().replace("Architecture-specific", "Arch specific"))
    before = snapshot(tree)
    with pytest.raises(KitError, match=r"syscalls\.h: anchor"):
        patch(tree)
    assert snapshot(tree) == before


def test_a_missing_required_file_is_named(tree):
    (tree / "kernel/Makefile").unlink()
    with pytest.raises(KitError, match=r"lacks kernel/Makefile, which every syscall must edit"):
        patcher.plan_patch(tree)


def test_a_failed_write_leaves_no_half_patched_tree(tree, monkeypatch):
    from memuse_kit.core import atomic

    pristine = {k: v for k, v in snapshot(tree).items()}
    real = atomic.write_atomic
    calls = []

    def failing(path, data):
        calls.append(path)
        if path.name == "memuse.c":
            raise OSError("disk full")
        real(path, data)

    monkeypatch.setattr(atomic, "write_atomic", failing)
    with pytest.raises(OSError):
        patch(tree)
    now = snapshot(tree)
    assert {k: v for k, v in now.items() if not k.startswith(".memuse-kit")} == pristine
    assert len(calls) > 1


def test_revert_refuses_a_file_edited_after_patching(tree):
    patch(tree)
    memuse_c = tree / MEMUSE_C
    memuse_c.write_text(memuse_c.read_text() + "/* mine */\n")
    before = snapshot(tree)
    with pytest.raises(KitError, match="changed since memuse-kit patched it"):
        patcher.revert(tree)
    assert snapshot(tree) == before


def test_not_a_kernel_tree(tmp_path):
    with pytest.raises(KitError, match="no top-level Makefile"):
        patcher.plan_patch(tmp_path)


def _pristine_copy(tree: Path, dest: Path) -> Path:
    shutil.copytree(tree, dest)
    return dest


@pytest.mark.parametrize("tool", ["git", "patch"])
def test_patch_file_applies_to_the_pristine_tree(tree, tmp_path, tool):
    pristine = _pristine_copy(tree, tmp_path / "pristine")
    plan = patch(tree)
    out, changed = patchfile.write_patch(plan, tmp_path / "memuse.patch")
    assert changed
    cmd = ["git", "apply", str(out)] if tool == "git" else ["patch", "-p1", "-s", "-i", str(out)]
    subprocess.run(cmd, cwd=pristine, check=True)
    ours = {k: v for k, v in snapshot(tree).items() if not k.startswith(".memuse-kit")}
    assert snapshot(pristine) == ours


def test_patch_file_is_rewritten_only_when_it_changes(tree, tmp_path):
    plan = patch(tree)
    out, first = patchfile.write_patch(plan, tmp_path / "memuse.patch")
    mtime = out.stat().st_mtime_ns
    out2, second = patchfile.write_patch(patcher.plan_patch(tree), out)
    assert first and not second and out2.stat().st_mtime_ns == mtime


def test_patch_file_names_its_origin(tree):
    text = patchfile.render_patch(patcher.plan_patch(tree))
    assert patchfile.patch_origin(text) == patchfile.Origin("6.12.0", {"memuse": 463})
    assert "Signed-off-by: " in text


def test_the_code_follows_the_probes_not_the_version(tmp_path):
    """Two trees that call themselves 6.6.9 get the code their own sources call for."""
    old = patch(make_fake_tree(tmp_path / "old", version="6.6.9", last=453, mm="old"))
    new = patch(make_fake_tree(tmp_path / "new", version="6.6.9", last=453))
    old_c = (old.tree / MEMUSE_C).read_text()
    new_c = (new.tree / MEMUSE_C).read_text()
    assert "vma->vm_start <= mm->brk && vma->vm_end >= mm->start_brk" in old_c
    assert "vma_is_initial_heap(vma)" in new_c and "mm->start_brk" not in new_c
    assert "vma_is_initial_stack(vma)" in new_c and "vma_is_initial_stack" not in old_c
    assert "huge_ptep_get(pte)" in old_c and "huge_ptep_get(walk->mm, addr, pte)" in new_c
    assert "walk_page_range(mm, start" in old_c and "walk_page_range_vma(vma, start" in new_c
    assert "pmd_trans_unstable(pmd)" in old_c and "pmd_trans_unstable" not in new_c
    assert "ACTION_AGAIN" in new_c and "ACTION_AGAIN" not in old_c
    assert "follow_trans_huge_pmd(vma, addr, pmd, FOLL_DUMP)" in old_c
    assert "vm_normal_page_pmd(vma, addr, entry)" in new_c
    assert "is_device_private_entry(pte_to_swp_entry(pte))" in old_c
    assert "softleaf_has_pfn(softleaf_from_pte(pte))" in new_c
    assert "linux/swapops.h" in old_c and "linux/leafops.h" in new_c
    assert "-ESRCH)\n\t\treturn NULL" in new_c and "-ESRCH)\n\t\treturn NULL" not in old_c
    bodies = sorted((templates.TEMPLATES_DIR / "syscalls").glob("*/impl.c.j2"))
    assert len(bodies) >= 2  # memuse and fdcount
    for body in bodies:
        assert "at_least" not in body.read_text() and "kernel." not in body.read_text()
