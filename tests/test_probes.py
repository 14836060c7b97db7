"""The probes: facts read from a tree's own sources, on fake trees and on the real ones."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from memuse_kit.core.errors import KitError
from memuse_kit.patching import patcher, patchfile, probes, shipped
from memuse_kit.patching.probes import TreeFacts
from tests.fakelinux import make_fake_tree, probed_files
from tests.kernel_trees import UPSTREAM_66_ENV, UPSTREAM_511_ENV, cached_tree

UPSTREAM_TREES = {"upstream-5.11": UPSTREAM_511_ENV, "upstream-6.6.9": UPSTREAM_66_ENV}


def probe_files(files):
    return probes.probe(lambda rel: files.get(rel, ""))


def test_a_new_style_tree_probes_as_7_2_does():
    facts = probe_files(probed_files("new"))
    assert facts.heap_helper and facts.heap_strict and facts.stack_helper
    assert facts.pte_map_may_fail and not facts.pmd_trans_unstable
    assert facts.huge_ptep_get_takes_mm and not facts.walk_page_vma_tests
    assert facts.huge_pmd_lookup == "vm_normal_page_pmd"
    assert facts.nonpresent_pte == facts.nonpresent_pmd == "softleaf_has_pfn"
    assert facts.mm_access_no_mm == "ERR_PTR(-ESRCH)"
    assert facts.swap_header == "linux/leafops.h"


def test_an_old_style_tree_probes_as_5_10_does():
    facts = probe_files(probed_files("old"))
    assert not facts.heap_helper and not facts.heap_strict and not facts.stack_helper
    assert not facts.pte_map_may_fail and facts.pmd_trans_unstable and facts.pmd_devmap
    assert not facts.huge_ptep_get_takes_mm and facts.walk_page_vma_tests
    assert facts.huge_pmd_lookup == "follow_trans_huge_pmd"
    assert facts.smaps_counts_protnone_thp  # FOLL_NUMA is not among smaps' flags
    assert facts.nonpresent_pte == "migration_or_device_private"
    assert facts.nonpresent_pmd == facts.nonpresent_hugetlb == "migration"
    assert facts.mm_access_no_mm == "NULL"
    assert facts.swap_header == "linux/swapops.h"


def test_the_6_6_9_heap_helper_keeps_the_inclusive_bounds():
    files = probed_files("new")
    files["include/linux/mm.h"] = files["include/linux/mm.h"].replace(
        "vm_start < vma->vm_mm->brk", "vm_start <= vma->vm_mm->brk"
    )
    assert probe_files(files).heap_helper and not probe_files(files).heap_strict


def test_follow_trans_huge_pmd_asking_gup_refuses_protnone():
    files = probed_files("old")
    files["mm/huge_memory.c"] = files["mm/huge_memory.c"].replace(
        "(flags & FOLL_NUMA)", "!gup_can_follow_protnone(flags)"
    )
    assert not probe_files(files).smaps_counts_protnone_thp


def test_a_tree_older_than_a_syscall_needs_is_refused_in_one_line(tmp_path):
    """memuse's spec requires what its body calls; 5.4 had mmap_sem and no mmap_lock.h."""
    tree = make_fake_tree(tmp_path / "linux", mm="old")
    (tree / "include/linux/mmap_lock.h").unlink()
    with pytest.raises(KitError, match=r"lacks mmap_read_lock_killable.*5\.10 and later") as e:
        patcher.plan_patch(tree)
    assert "\n" not in str(e.value) and "which memuse needs" in str(e.value)
    assert patcher.plan_patch(tree, ["fdcount"]).numbers == {"fdcount": 463}


def test_an_unknown_smaps_rule_is_an_error_not_a_guess():
    files = probed_files("new")
    files["fs/proc/task_mmu.c"] = files["fs/proc/task_mmu.c"].replace(
        "softleaf_has_pfn", "softleaf_is_something"
    )
    with pytest.raises(KitError, match="no known rule for non-present entries"):
        probe_files(files)


def test_header_lines_give_the_facts_back():
    facts = probe_files(probed_files("old"))
    assert TreeFacts.from_header_lines(facts.header_lines()) == facts
    assert TreeFacts.from_header_lines(facts.header_lines()[1:]) is None


def test_the_patch_header_records_the_probes_and_the_check_reads_them(tmp_path):
    tree = make_fake_tree(tmp_path / "linux", version="6.6.9", last=453, mm="old")
    text = patchfile.render_patch(patcher.plan_patch(tree))
    assert "  heap_strict=no\n" in text and "  huge_pmd_lookup=follow_trans_huge_pmd\n" in text
    assert patchfile.patch_probes(text).facts == probe_files(probed_files("old"))
    assert shipped.stale_files(text) == []
    flipped = text.replace("  heap_strict=no\n", "  heap_strict=yes\n")
    assert shipped.stale_files(flipped) == ["kernel/memuse.c"]


@pytest.mark.parametrize(("mm", "has"), [("old", True), ("new", False)])
def test_a_spec_s_own_probe_chooses_its_code_and_the_patch_records_it(tmp_path, mm, has):
    """fdcount's get_files_struct probe: 5.10 defines get_files_struct() in fs/file.c."""
    tree = make_fake_tree(tmp_path / "linux", mm=mm)
    plan = patcher.plan_patch(tree, ["fdcount"])
    text = patchfile.render_patch(plan)
    assert f"  fdcount.get_files_struct={'yes' if has else 'no'}\n" in text
    assert ("files = get_files_struct(task);" in text) is has
    assert ("task_lock(task);" in text) is not has
    assert "heap_strict" not in text  # fdcount's body reads no tree facts: none are recorded
    assert patchfile.patch_probes(text).declared == {"fdcount": {"get_files_struct": has}}
    assert shipped.stale_files(text) == []
    said, other = ("yes", "no") if has else ("no", "yes")
    flipped = text.replace(f"get_files_struct={said}", f"get_files_struct={other}")
    assert shipped.stale_files(flipped) == ["kernel/fdcount.c"]


def test_no_probed_file_is_one_memuse_kit_edits():
    from memuse_kit.patching.targets import TARGETS

    assert not set(probes.PROBED_FILES) & {t.path for t in TARGETS}


# What each real tree says (kernel-api-notes.md §E), probed from its own sources.
EXPECTED = {
    "debian:5.10": dict(
        heap_helper=False, heap_strict=False, pte_map_may_fail=False, pmd_trans_unstable=True,
        huge_ptep_get_takes_mm=False, walk_page_vma_tests=True,
        huge_pmd_lookup="follow_trans_huge_pmd", smaps_counts_protnone_thp=True,
        pmd_devmap=True, nonpresent_pte="migration_or_device_private",
        nonpresent_pmd="migration", mm_access_no_mm="NULL",
    ),
    "debian:6.1": dict(
        heap_helper=False, heap_strict=False, pte_map_may_fail=False, pmd_trans_unstable=True,
        huge_ptep_get_takes_mm=False, walk_page_vma_tests=True,
        huge_pmd_lookup="follow_trans_huge_pmd", smaps_counts_protnone_thp=False,
        pmd_devmap=True, nonpresent_pte="is_pfn_swap_entry", nonpresent_pmd="migration",
        mm_access_no_mm="ERR_PTR(-ESRCH)",
    ),
    "debian:6.12": dict(
        heap_helper=True, heap_strict=True, pte_map_may_fail=True, pmd_trans_unstable=False,
        huge_ptep_get_takes_mm=True, walk_page_vma_tests=False,
        huge_pmd_lookup="vm_normal_page_pmd", smaps_counts_protnone_thp=True,
        pmd_devmap=True, nonpresent_pte="is_pfn_swap_entry",
        nonpresent_pmd="is_pfn_swap_entry", mm_access_no_mm="ERR_PTR(-ESRCH)",
    ),
    "debian:7.2": dict(
        heap_helper=True, heap_strict=True, pte_map_may_fail=True, pmd_trans_unstable=False,
        huge_ptep_get_takes_mm=True, walk_page_vma_tests=False,
        huge_pmd_lookup="vm_normal_page_pmd", smaps_counts_protnone_thp=True,
        pmd_devmap=False, nonpresent_pte="softleaf_has_pfn", nonpresent_pmd="softleaf_has_pfn",
        mm_access_no_mm="ERR_PTR(-ESRCH)",
    ),
    # upstream imports, used when their environment variable names them (never committed)
    "upstream-5.11": dict(
        heap_helper=False, heap_strict=False, pte_map_may_fail=False, walk_page_vma_tests=True,
        huge_pmd_lookup="follow_trans_huge_pmd", smaps_counts_protnone_thp=True,
        nonpresent_hugetlb="migration_or_device_private", mm_access_no_mm="NULL",
    ),
    "upstream-6.6.9": dict(
        heap_helper=True, heap_strict=False, stack_helper=True, pte_map_may_fail=True,
        pmd_trans_unstable=False, huge_ptep_get_takes_mm=False, walk_page_vma_tests=False,
        huge_pmd_lookup="vm_normal_page_pmd", nonpresent_pte="is_pfn_swap_entry",
        nonpresent_pmd="migration", mm_access_no_mm="NULL",
    ),
}  # fmt: skip


def real_tree(name: str) -> Path:
    if ":" in name:
        return cached_tree(name)
    directory = os.environ.get(UPSTREAM_TREES[name])
    if not directory:
        pytest.skip(f"set {UPSTREAM_TREES[name]}=DIR")
    return Path(directory)


# fdcount's own probe: get_files_struct() went in 5.11 (upstream), Debian's 5.10 still has it
HAS_GET_FILES_STRUCT = {
    "debian:5.10": True,
    "debian:6.1": False,
    "debian:6.12": False,
    "debian:7.2": False,
    "upstream-5.11": False,
    "upstream-6.6.9": False,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HAS_GET_FILES_STRUCT))
def test_real_trees_answer_fdcount_s_probe(name):
    fdcount = patcher.spec.load_spec("fdcount")
    assert patcher.declared_probes(real_tree(name), fdcount) == {
        "get_files_struct": HAS_GET_FILES_STRUCT[name]
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_trees_probe_as_their_sources_read(name):
    facts = probes.probe_tree(real_tree(name)).as_dict()
    expected = EXPECTED[name]
    assert {key: facts[key] for key in expected} == expected, json.dumps(facts, indent=1)
