"""Facts read from a kernel tree's own sources, which decide the code a syscall gets there.

Stable and distribution kernels backport changes, so a version number says little about
what a tree does. Each probe is a pure function of the text of one or two files of the tree;
none of those files is one memuse-kit edits, so a patched tree probes the same.

TreeFacts are what the mm code of a tree does (how its smaps counts, which page-table helpers
it has): a syscall body reads them as facts.*. A syscall spec can also declare yes/no probes
of its own (whether a file defines a function, or holds some text), read as probes.*, and the
functions it requires (declared_probes, missing_requirements).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from memuse_kit.core.errors import KitError

MM_H = "include/linux/mm.h"
MMAP_LOCK_H = "include/linux/mmap_lock.h"
PGTABLE_H = "include/linux/pgtable.h"
HUGETLB_H = "include/linux/hugetlb.h"
GENERIC_HUGETLB_H = "include/asm-generic/hugetlb.h"
TASK_MMU_C = "fs/proc/task_mmu.c"
PAGEWALK_C = "mm/pagewalk.c"
FORK_C = "kernel/fork.c"
HUGE_MEMORY_C = "mm/huge_memory.c"
PROBED_FILES = (
    MM_H,
    MMAP_LOCK_H,
    PGTABLE_H,
    HUGETLB_H,
    GENERIC_HUGETLB_H,
    TASK_MMU_C,
    PAGEWALK_C,
    FORK_C,
    HUGE_MEMORY_C,
)
# How smaps decides that a non-present entry still names a resident page.
NONPRESENT_RULES = (
    "softleaf_has_pfn",
    "is_pfn_swap_entry",
    "migration_or_device_private",
    "migration",
)
HUGE_PMD_LOOKUPS = ("vm_normal_page_pmd", "follow_trans_huge_pmd")
FactValue = Union[bool, str]
Reader = Callable[[str], str]


@dataclass(frozen=True)
class TreeFacts:
    heap_helper: bool  # vma_is_initial_heap() exists: call it
    heap_strict: bool  # [heap] is vm_start < brk && vm_end > start_brk (else <=, >=)
    stack_helper: bool  # vma_is_initial_stack() exists: call it
    pte_map_may_fail: bool  # pte_offset_map_lock() may return NULL
    pmd_trans_unstable: bool  # pmd_trans_unstable() exists (and smaps calls it)
    huge_ptep_get_takes_mm: bool  # huge_ptep_get(mm, addr, ptep) rather than (ptep)
    walk_page_vma_tests: bool  # walk_page_vma() runs walk_page_test: smaps skips VM_PFNMAP
    huge_pmd_lookup: str  # what smaps_pmd_entry() asks for the page of a present huge pmd
    smaps_counts_protnone_thp: bool  # what that lookup does with PROT_NONE / NUMA-hinting
    pmd_devmap: bool  # pmd_devmap() exists (DAX pmds smaps counts via follow_trans_huge_pmd)
    nonpresent_pte: str  # the rule of smaps_pte_entry() for non-present ptes
    nonpresent_pmd: str  # ... of smaps_pmd_entry() for non-present huge pmds
    nonpresent_hugetlb: str  # ... of smaps_hugetlb_range() for non-present hugetlb ptes
    mm_access_no_mm: str  # what mm_access() returns for a task without an mm
    smaps_rollup_drops_lock: bool  # show_smaps_rollup() lets writers in when contended

    def as_dict(self) -> Dict[str, FactValue]:
        return asdict(self)

    def header_lines(self) -> List[str]:
        return [f"{name}={_format(value)}" for name, value in self.as_dict().items()]

    @classmethod
    def from_header_lines(cls, lines: List[str]) -> Optional[TreeFacts]:
        """The facts a patch header records (header_lines), or None when some are missing."""
        found: Dict[str, str] = {}
        for line in lines:
            name, sep, value = line.strip().partition("=")
            if sep:
                found[name] = value
        values: Dict[str, FactValue] = {}
        for field in fields(cls):
            if field.name not in found:
                return None
            text = found[field.name]
            values[field.name] = text == "yes" if text in ("yes", "no") else text
        return cls(**values)  # type: ignore[arg-type]

    @property
    def swap_header(self) -> str:
        """The header that declares the non-present entry helpers the rules use."""
        uses_softleaf = "softleaf_has_pfn" in (
            self.nonpresent_pte,
            self.nonpresent_pmd,
            self.nonpresent_hugetlb,
        )
        return "linux/leafops.h" if uses_softleaf else "linux/swapops.h"


def _format(value: FactValue) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return value


def c_function(text: str, name: str) -> Optional[str]:
    """The first definition of a C function in text (signature to closing brace at column 0)."""
    match = re.search(rf"^[a-z][^\n;]*\b{re.escape(name)}\([^;{{]*\)\s*\{{", text, re.M)
    if not match:
        return None
    end = text.find("\n}", match.end())
    return text[match.start() : end + 2 if end >= 0 else len(text)]


def _has_function(text: str, name: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\s*\(", text) is not None


def has_initial_heap_helper(mm_h: str) -> bool:
    return c_function(mm_h, "vma_is_initial_heap") is not None


def has_initial_stack_helper(mm_h: str) -> bool:
    return c_function(mm_h, "vma_is_initial_stack") is not None


def heap_is_strict(mm_h: str, task_mmu_c: str) -> bool:
    """The [heap] bounds: from vma_is_initial_heap(), else from smaps' own inline test."""
    body = c_function(mm_h, "vma_is_initial_heap") or task_mmu_c
    test = re.search(r"vm_start\s*(<=?)\s*[\w>.-]*brk\b", body)
    if not test:
        raise KitError(f"no [heap] test found in {MM_H} or {TASK_MMU_C}: is this a Linux tree?")
    return test.group(1) == "<"


def pte_map_may_fail(mm_h: str) -> bool:
    """Before 6.5 pte_offset_map_lock() is a macro that cannot fail; since then it is a
    function (or wraps __pte_offset_map_lock()) that returns NULL when the pmd changed."""
    return re.search(r"\bpte_t\s*\*\s*(__)?pte_offset_map_lock\(", mm_h) is not None


def has_pmd_trans_unstable(pgtable_h: str) -> bool:
    return c_function(pgtable_h, "pmd_trans_unstable") is not None


def huge_ptep_get_takes_mm(hugetlb_h: str, generic_hugetlb_h: str) -> bool:
    signature = re.compile(r"\bhuge_ptep_get\(\s*struct mm_struct\s*\*")
    return bool(signature.search(hugetlb_h) or signature.search(generic_hugetlb_h))


def walk_page_vma_tests(pagewalk_c: str) -> bool:
    body = c_function(pagewalk_c, "walk_page_vma")
    if body is None:
        raise KitError(f"{PAGEWALK_C} has no walk_page_vma(): is this a Linux tree?")
    return "walk_page_test(" in body


def _smaps_function(task_mmu_c: str, name: str) -> str:
    body = c_function(task_mmu_c, name)
    if body is None:
        raise KitError(f"{TASK_MMU_C} has no {name}(): memuse-kit cannot mirror its smaps")
    return body


def huge_pmd_lookup(task_mmu_c: str) -> str:
    body = _smaps_function(task_mmu_c, "smaps_pmd_entry")
    for lookup in HUGE_PMD_LOOKUPS:
        if f"{lookup}(" in body:
            return lookup
    raise KitError(f"{TASK_MMU_C}: smaps_pmd_entry() uses neither of {', '.join(HUGE_PMD_LOOKUPS)}")


def smaps_counts_protnone_thp(task_mmu_c: str, huge_memory_c: str) -> bool:
    """follow_trans_huge_pmd() refuses protnone pmds to smaps once it asks
    gup_can_follow_protnone() (smaps passes no FOLL_FORCE); vm_normal_page_pmd() never does."""
    if huge_pmd_lookup(task_mmu_c) != "follow_trans_huge_pmd":
        return True
    body = c_function(huge_memory_c, "follow_trans_huge_pmd") or ""
    return "gup_can_follow_protnone(" not in body


def has_pmd_devmap(pgtable_h: str) -> bool:
    return _has_function(pgtable_h, "pmd_devmap")


def _nonpresent_rule(body: str, rules: Tuple[str, ...], where: str) -> str:
    rule = ""
    if "softleaf_has_pfn(" in body:
        rule = "softleaf_has_pfn"
    elif "is_pfn_swap_entry(" in body:
        rule = "is_pfn_swap_entry"
    elif "is_migration_entry(" in body:
        both = "is_device_private_entry(" in body
        rule = "migration_or_device_private" if both else "migration"
    if rule not in rules:
        raise KitError(f"{TASK_MMU_C}: no known rule for non-present entries in {where}()")
    return rule


def nonpresent_pte(task_mmu_c: str) -> str:
    body = _smaps_function(task_mmu_c, "smaps_pte_entry")
    return _nonpresent_rule(body, NONPRESENT_RULES, "smaps_pte_entry")


def nonpresent_pmd(task_mmu_c: str) -> str:
    body = _smaps_function(task_mmu_c, "smaps_pmd_entry")
    return _nonpresent_rule(body, NONPRESENT_RULES, "smaps_pmd_entry")


def nonpresent_hugetlb(task_mmu_c: str) -> str:
    body = _smaps_function(task_mmu_c, "smaps_hugetlb_range")
    return _nonpresent_rule(body, NONPRESENT_RULES, "smaps_hugetlb_range")


def mm_access_no_mm(fork_c: str) -> str:
    """NULL, or ERR_PTR(-ESRCH) (upstream 6.13, backported to some stable series)."""
    body = c_function(fork_c, "mm_access")
    if body is None:
        raise KitError(f"{FORK_C} has no mm_access(): is this a Linux tree?")
    return "ERR_PTR(-ESRCH)" if "ERR_PTR(-ESRCH)" in body else "NULL"


def smaps_rollup_drops_lock(task_mmu_c: str) -> bool:
    body = _smaps_function(task_mmu_c, "show_smaps_rollup")
    return "mmap_lock_is_contended(" in body


def missing_requirements(read: Reader, requires: Sequence[Tuple[str, Sequence[str]]]) -> List[str]:
    """The functions (or macros) of a spec's requires that the tree's files lack."""
    return [
        name for path, names in requires for name in names if not _has_function(read(path), name)
    ]


def declared_probe(read: Reader, file: str, kind: str, value: str) -> bool:
    """A spec's yes/no probe: file defines the C function `value`, or holds the text `value`."""
    text = read(file)
    if kind == "defines":
        return c_function(text, value) is not None
    return value in text


def probe(read: Reader) -> TreeFacts:
    """Every fact, from a reader that gives a tree file's text ('' when the file is absent)."""
    mm_h, task_mmu_c = read(MM_H), read(TASK_MMU_C)
    return TreeFacts(
        heap_helper=has_initial_heap_helper(mm_h),
        heap_strict=heap_is_strict(mm_h, task_mmu_c),
        stack_helper=has_initial_stack_helper(mm_h),
        pte_map_may_fail=pte_map_may_fail(mm_h),
        pmd_trans_unstable=has_pmd_trans_unstable(read(PGTABLE_H)),
        huge_ptep_get_takes_mm=huge_ptep_get_takes_mm(read(HUGETLB_H), read(GENERIC_HUGETLB_H)),
        walk_page_vma_tests=walk_page_vma_tests(read(PAGEWALK_C)),
        huge_pmd_lookup=huge_pmd_lookup(task_mmu_c),
        smaps_counts_protnone_thp=smaps_counts_protnone_thp(task_mmu_c, read(HUGE_MEMORY_C)),
        pmd_devmap=has_pmd_devmap(read(PGTABLE_H)),
        nonpresent_pte=nonpresent_pte(task_mmu_c),
        nonpresent_pmd=nonpresent_pmd(task_mmu_c),
        nonpresent_hugetlb=nonpresent_hugetlb(task_mmu_c),
        mm_access_no_mm=mm_access_no_mm(read(FORK_C)),
        smaps_rollup_drops_lock=smaps_rollup_drops_lock(task_mmu_c),
    )


def tree_reader(tree: Path) -> Reader:
    """A Reader of tree's files: a file's text, '' when the tree has no such file."""

    def read(rel: str) -> str:
        path = tree / rel
        try:
            return path.read_text(encoding="utf-8", errors="surrogateescape")
        except (FileNotFoundError, NotADirectoryError):
            return ""
        except OSError as error:
            raise KitError(f"cannot read {path}: {error.strerror}") from None

    return read


def probe_tree(tree: Path) -> TreeFacts:
    return probe(tree_reader(tree))
