"""The syscall kit on a fake tree: several syscalls in one go, each in a file of its own,
numbers kept when syscalls come and go, one reverted alone, and trees patched by the first
version (memuse appended to kernel/sys.c) carried over."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Dict

import pytest

from memuse_kit.core import atomic
from memuse_kit.core.digest import sha256_bytes
from memuse_kit.patching import patch_step, patcher, patchfile
from tests.fakelinux import SYS_C as PRISTINE_SYS_C
from tests.fakelinux import make_fake_tree, mtimes, snapshot

TBL64 = "arch/x86/entry/syscalls/syscall_64.tbl"
TBL32 = "arch/x86/entry/syscalls/syscall_32.tbl"
UNISTD = "include/uapi/asm-generic/unistd.h"
SYS_C = "kernel/sys.c"
STATE = ".memuse-kit/state.json"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_fake_tree(tmp_path / "linux", mm="old")


def patch(tree: Path, *names: str) -> patcher.PatchPlan:
    plan = patcher.plan_patch(tree, names)
    patcher.apply_plan(plan)
    return plan


def without_state(files: Dict[str, bytes]) -> Dict[str, bytes]:
    return {rel: data for rel, data in files.items() if not rel.startswith(".memuse-kit")}


def test_two_syscalls_in_one_go_get_consecutive_numbers_and_files_of_their_own(tree):
    plan = patch(tree, "memuse", "fdcount")
    assert plan.numbers == {"memuse": 463, "fdcount": 464}  # in the order given
    table = (tree / TBL64).read_text()
    assert "463\tcommon\tmemuse\t\t\tsys_memuse\n464\tcommon\tfdcount\t\t\tsys_fdcount\n" in table
    assert "464\ti386\tfdcount" in (tree / TBL32).read_text()
    unistd = (tree / UNISTD).read_text()
    assert "#define __NR_fdcount 464\n__SYSCALL(__NR_fdcount, sys_fdcount)\n" in unistd
    assert "#define __NR_syscalls 465\n" in unistd
    syscalls_h = (tree / "include/linux/syscalls.h").read_text()
    assert "asmlinkage long sys_fdcount(pid_t pid, unsigned int flags);\n" in syscalls_h
    makefile = (tree / "kernel/Makefile").read_text()
    assert "obj-y += memuse.o\nobj-y += fdcount.o\nobj-$(CONFIG_MULTIUSER)" in makefile
    maintainers = (tree / "MAINTAINERS").read_text()
    assert maintainers.index("FCOE SUBSYSTEM") < maintainers.index("FDCOUNT SYSTEM CALL")
    assert maintainers.index("FDCOUNT SYSTEM CALL") < maintainers.index("FEI SUBSYSTEM")
    assert "F:\tkernel/fdcount.c\n" in maintainers
    fdcount_c = (tree / "kernel/fdcount.c").read_text()
    assert "SYSCALL_DEFINE2(fdcount, pid_t, pid, unsigned int, flags)" in fdcount_c
    assert "memuse" not in fdcount_c and "fdcount" not in (tree / "kernel/memuse.c").read_text()
    assert (tree / SYS_C).read_text() == PRISTINE_SYS_C
    state = json.loads((tree / STATE).read_text())
    assert state["version"] == 2 and state["syscalls"] == {"memuse": 463, "fdcount": 464}


def test_the_patch_file_is_named_and_written_for_the_set(tree, tmp_path):
    plan = patch(tree, "memuse", "fdcount")
    assert patchfile.default_path(plan, "debian").name == "debian-6.12.0-memuse+fdcount.patch"
    text = patchfile.render_patch(plan)
    assert "Subject: [PATCH] kernel: add the memuse and fdcount system calls\n" in text
    assert "with these syscall numbers:\n  memuse=463\n  fdcount=464\n" in text
    assert " create mode 100644 kernel/fdcount.c\n create mode 100644 kernel/memuse.c\n" in text
    assert "new file mode 100644\n--- /dev/null\n+++ b/kernel/fdcount.c\n" in text


@pytest.mark.parametrize("tool", ["git", "patch"])
def test_the_patch_of_two_creates_their_files_in_a_pristine_tree(tree, tmp_path, tool):
    pristine = tmp_path / "pristine"
    shutil.copytree(tree, pristine)
    plan = patch(tree, "memuse", "fdcount")
    out, _ = patchfile.write_patch(plan, tmp_path / "two.patch")
    cmd = ["git", "apply", str(out)] if tool == "git" else ["patch", "-p1", "-s", "-i", str(out)]
    subprocess.run(cmd, cwd=pristine, check=True)
    assert snapshot(pristine) == without_state(snapshot(tree))


def test_a_syscall_added_later_keeps_the_numbers_there_are(tree):
    patch(tree)  # memuse, the default
    before = mtimes(tree)
    plan = patch(tree, "fdcount")
    assert plan.numbers == {"memuse": 463, "fdcount": 464}
    assert (tree / "kernel/memuse.c").stat().st_mtime_ns == before["kernel/memuse.c"]
    assert patch(tree).numbers == plan.numbers  # no --syscall: the ones it has
    assert patch(tree, "memuse").changed == []  # already there: nothing to do


def test_the_default_is_memuse_only_for_a_tree_that_has_none(tree):
    patch(tree, "fdcount")
    assert patch(tree).numbers == {"fdcount": 463}


def test_adding_one_later_gives_the_tree_adding_both_at_once_gives(tree, tmp_path):
    other = make_fake_tree(tmp_path / "other", mm="old")
    patch(tree, "memuse")
    patch(tree, "fdcount")
    patch(other, "memuse", "fdcount")
    assert without_state(snapshot(tree)) == without_state(snapshot(other))


def test_reverting_one_leaves_the_other_as_if_it_were_alone(tree, tmp_path):
    alone = make_fake_tree(tmp_path / "alone", mm="old")
    patch(alone, "memuse")
    patch(tree, "memuse", "fdcount")
    result = patcher.revert(tree, ["fdcount"])
    assert result.was_patched and result.remaining == {"memuse": 463}
    assert not (tree / "kernel/fdcount.c").exists()
    assert without_state(snapshot(tree)) == without_state(snapshot(alone))
    assert patcher.recorded_syscalls(tree) == {"memuse": 463}
    assert not (tree / ".memuse-kit/original/kernel/fdcount.c").exists()
    assert patch(tree).changed == []  # memuse is complete and current


def test_reverting_the_first_leaves_the_second_its_number(tree):
    patch(tree, "memuse", "fdcount")
    patcher.revert(tree, ["memuse"])
    assert patcher.recorded_syscalls(tree) == {"fdcount": 464}
    assert not (tree / "kernel/memuse.c").exists()
    table = (tree / TBL64).read_text()
    assert "memuse" not in table and "464\tcommon\tfdcount" in table
    assert "#define __NR_syscalls 465\n" in (tree / UNISTD).read_text()
    assert "MEMUSE" not in (tree / "MAINTAINERS").read_text()
    # and a syscall added now comes after the highest number in use, not in the gap
    assert patch(tree, "memuse").numbers == {"fdcount": 464, "memuse": 465}


def test_reverting_one_then_the_other_is_byte_exact(tree):
    pristine = snapshot(tree)
    patch(tree, "memuse", "fdcount")
    patcher.revert(tree, ["fdcount"])
    patcher.revert(tree, ["memuse"])
    assert snapshot(tree) == pristine


def test_reverting_every_one_by_name_is_a_whole_revert(tree):
    pristine = snapshot(tree)
    patch(tree, "memuse", "fdcount")
    assert patcher.revert(tree, ["fdcount", "memuse"]).remaining == {}
    assert snapshot(tree) == pristine


def test_revert_of_a_syscall_the_tree_lacks_changes_nothing(tree, capsys):
    patch(tree, "memuse")
    before = snapshot(tree), mtimes(tree)
    patch_step.revert_tree(tree, syscalls=["fdcount"])
    assert "has no fdcount from memuse-kit: nothing to revert" in capsys.readouterr().out
    assert (snapshot(tree), mtimes(tree)) == before


def test_a_dry_run_revert_of_one_names_its_files_and_writes_nothing(tree, capsys):
    patch(tree, "memuse", "fdcount")
    before = snapshot(tree), mtimes(tree)
    patch_step.revert_tree(tree, dry_run=True, syscalls=["fdcount"])
    out = capsys.readouterr().out
    assert "would restore: kernel/fdcount.c" in out and "kernel/memuse.c" not in out
    assert (snapshot(tree), mtimes(tree)) == before


# crash safety: a run killed between writing the state and writing the files


def _killed_after_the_state(monkeypatch) -> None:
    """apply_plan as if killed after its first tree file: no rollback, no final state."""

    def first_file_then_die(contents):
        path, data = next(iter(contents.items()))
        atomic.write_atomic(path, data) if data is not None else path.unlink()
        raise SystemExit("killed")

    monkeypatch.setattr(atomic, "write_all_or_nothing", first_file_then_die)
    monkeypatch.setattr(patcher.TreeState, "restore", lambda self, saved: None)


def test_a_run_killed_mid_way_after_a_template_change_can_be_finished_or_reverted(
    tree, tmp_path, monkeypatch
):
    from memuse_kit.patching import templates

    pristine = snapshot(tree)
    patch(tree, "memuse", "fdcount")
    copy = tmp_path / "templates"
    shutil.copytree(templates.TEMPLATES_DIR, copy)
    monkeypatch.setattr(templates, "TEMPLATES_DIR", copy)
    for name in ("memuse", "fdcount"):
        body = copy / f"syscalls/{name}/impl.c.j2"
        body.write_text(body.read_text() + "/* v2 */\n")
    with monkeypatch.context() as killed:
        _killed_after_the_state(killed)
        with pytest.raises(SystemExit):
            patch(tree)
    # one file has its new content, the other its old one: both are known
    assert patch(tree).numbers == {"memuse": 463, "fdcount": 464}
    assert "/* v2 */" in (tree / "kernel/fdcount.c").read_text()
    assert "previous_sha256" not in (tree / STATE).read_text()
    patcher.revert(tree)
    assert snapshot(tree) == pristine


def test_a_revert_of_one_killed_mid_way_can_be_finished_or_reverted(tree, monkeypatch):
    pristine = snapshot(tree)
    patch(tree, "memuse", "fdcount")
    with monkeypatch.context() as killed:
        _killed_after_the_state(killed)
        with pytest.raises(SystemExit):
            patcher.revert(tree, ["fdcount"])
    patcher.revert(tree)
    assert snapshot(tree) == pristine


# trees patched by the first version: memuse appended to kernel/sys.c, one number in state


def _patched_by_the_first_version(tree: Path) -> Dict[str, bytes]:
    """The tree as memuse-kit 0.1 left it (its state.json format, its edits), returning the
    pristine files."""
    pristine = snapshot(tree)
    edits = {
        SYS_C: PRISTINE_SYS_C + "\nSYSCALL_DEFINE2(memuse, pid_t, pid, int, mem_type)\n{}\n",
        TBL64: (tree / TBL64)
        .read_text()
        .replace("\n\n#\n# Due", "\n463\tcommon\tmemuse\t\t\tsys_memuse\n\n#\n# Due"),
    }
    files = {}
    for rel, text in edits.items():
        original = (tree / rel).read_bytes()
        backup = tree / ".memuse-kit/original" / rel
        backup.parent.mkdir(parents=True, exist_ok=True)
        backup.write_bytes(original)
        (tree / rel).write_text(text)
        files[rel] = {
            "original_sha256": sha256_bytes(original),
            "patched_sha256": sha256_bytes(text.encode()),
        }
    state = {"kernel": "6.12.0", "nr": 463, "files": files}
    (tree / STATE).write_text(json.dumps(state, indent=2) + "\n")
    return pristine


def test_a_tree_patched_by_the_first_version_moves_memuse_into_its_own_file(tree):
    pristine = _patched_by_the_first_version(tree)
    assert patcher.recorded_syscalls(tree) == {"memuse": 463}
    plan = patch(tree, "fdcount")
    assert plan.numbers == {"memuse": 463, "fdcount": 464}
    assert (tree / SYS_C).read_bytes() == pristine[SYS_C]  # given back as it was
    assert "SYSCALL_DEFINE2(memuse" in (tree / "kernel/memuse.c").read_text()
    state = json.loads((tree / STATE).read_text())
    assert SYS_C not in state["files"] and state["version"] == 2
    assert not (tree / ".memuse-kit/original" / SYS_C).exists()
    patcher.revert(tree)
    assert snapshot(tree) == pristine


def test_a_tree_patched_by_the_first_version_reverts_byte_exact(tree):
    pristine = _patched_by_the_first_version(tree)
    patcher.revert(tree)
    assert snapshot(tree) == pristine


def test_maintainers_sections_stay_in_alphabetical_order(tree, tmp_path, monkeypatch):
    """Two syscalls whose sections go before the same title are ordered by name, not number."""
    from memuse_kit.patching import scaffold, spec

    monkeypatch.setenv(spec.USER_DIR_ENV, str(tmp_path / "mine"))
    for name in ("memz", "memy"):
        scaffold.create(scaffold.request(name, ["int x"]), scaffold.target_dir(None))
    patch(tree, "memz", "memy")
    text = (tree / "MAINTAINERS").read_text()
    order = [
        text.index(title)
        for title in ("MEMORY MANAGEMENT", "MEMY SYSTEM CALL", "MEMZ SYSTEM CALL", "MEN A21")
    ]
    assert order == sorted(order)


def test_section_titles_are_the_lines_an_entry_follows():
    """A MAINTAINERS title starts with text, is no entry itself, and an entry follows it:
    not the indented entries of the file's description, not an underlined heading, not a
    title followed by a blank line. In either line ending."""
    from memuse_kit.patching.targets import _section_titles

    text = (
        "List of maintainers\n===\n\n\tM: *Mail* patches\n\n"
        "A SECTION\nM:\tOne <one@example.org>\nS:\tMaintained\n\n"
        "NO ENTRY FOLLOWS\n\n"
        "B SECTION (b, bb)\nL:\tlist@example.org\n"
    )
    titles = [("A SECTION", text.index("A SECTION")), ("B SECTION (b, bb)", text.index("B SEC"))]
    assert _section_titles(text) == [(offset, title) for title, offset in titles]
    crlf = text.replace("\n", "\r\n")
    assert [title for _, title in _section_titles(crlf)] == ["A SECTION\r", "B SECTION (b, bb)\r"]


def test_the_plan_s_probe_results_are_the_patched_tree_s(tree):
    """The build records the probes the plan made instead of probing the tree again."""
    patch(tree, "memuse", "fdcount")
    plan = patcher.plan_patch(tree)
    assert not plan.changed
    results = plan.probe_results()
    assert results == patcher.probe_results(tree, list(plan.numbers))
    assert "fdcount.get_files_struct" in results and "mm_access_no_mm" in results
