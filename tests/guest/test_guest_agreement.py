"""memuse agrees with /proc/PID/smaps in every scenario, and measuring changes nothing.

Each target is a native scenario process stopped while it is measured: smaps is read, the
five kinds are asked twice, smaps is read again. Kinds 1, 3, 4 and 5 must equal smaps
(Rss + hugetlb of the [stack], [heap], kernel-named VMAs; smaps_rollup), kind 2 must be
THREAD_SIZE, and smaps must not have moved: nothing faulted in, no huge page split.

Some scenarios are the places where kernels' smaps differ (issue 10): a PROT_NONE THP, a
hwpoisoned page, a page at start_brk, a private PFNMAP. For those the case also checks that
smaps really did what the probes of the booted kernel's tree said it does (the build record's
`probes`), so agreement there means memuse followed this tree's rule, not a lucky default.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple

import pytest

from memuse_client import ScenarioUnavailable, StoppedScenario, stopped_scenario
from memuse_client.syscall import syscall_number
from tests.guest_support import (
    ALL_KINDS,
    GIB,
    MIB,
    PAGE,
    REPORT,
    USER_KINDS,
    SmapsView,
    call,
    errno_name,
    expected_thread_size,
    kind_of,
    running_probes,
    smaps_view,
)

THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")
THP_PMD_SIZE = Path("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
HUGETLB_2M = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")
HUGE_2M = 2 * MIB
KIND_TITLES = ("stack", "kstack", "heap", "kmaps", "total")
# smaps' rule for non-present ptes (the probe) and whether it counts a hwpoison entry;
# is_pfn_swap_entry() took hwpoison entries in only in some trees, so no expectation there
HWPOISON_COUNTED = {
    "softleaf_has_pfn": True,
    "migration_or_device_private": False,
    "migration": False,
}

# (what happened to the target, the scenario and its arguments, what else must hold)
Check = Callable[[StoppedScenario, SmapsView], None]


@dataclass(frozen=True)
class Case:
    title: str
    scenario: str
    args: Tuple[int, ...]
    check: Optional[Check] = None
    needs: Optional[str] = None  # a fixture that prepares the machine


def heap_written(pid: StoppedScenario, view: SmapsView) -> None:
    # README: glibc's 656-byte tcache block first, so the 20000 written bytes span 6 pages
    assert view.expected(3) == 24576 == 6 * PAGE


def heap_untouched(pid: StoppedScenario, view: SmapsView) -> None:
    # README: only the first page (tcache, chunk header) and the top chunk's size: 2 pages
    assert view.expected(3) == 8192 == 2 * PAGE


def deep_stack(pid: StoppedScenario, view: SmapsView) -> None:
    """The frames' span, plus the start-up stack (3 or 4 pages, see the README), a page
    straddled, and what the stop itself uses below the deepest frame: at most 8 pages."""
    span = pid.number("span")
    assert span > 20000 * 16
    assert span <= view.expected(1) <= span + 8 * PAGE


def heap_1g(pid: StoppedScenario, view: SmapsView) -> None:
    # the 1 GiB region at least; no upper bound: where the [heap] VMA merges with the
    # program's own anonymous data (5.10 merges adjacent anonymous VMAs) smaps counts that
    # too, and memuse equals smaps is what the test asserts before this
    assert view.expected(3) >= GIB
    assert view.vma_at(pid.number("addr")).name == "[heap]"


def anonymous_not_heap(pid: StoppedScenario, view: SmapsView) -> None:
    region = view.vma_at(pid.number("addr"))
    assert kind_of(region.name) is None
    # the kernel may merge the mapping with an adjacent anonymous VMA (5.10 does, with a
    # page of the loader's): the mapping's 16 MiB and at most a few pages more
    assert 16 * MIB <= region.fields["Rss"] <= 16 * MIB + 16 * PAGE
    assert view.expected(3) == 0  # this scenario never calls malloc: no [heap] at all


def transparent_huge(pid: StoppedScenario, view: SmapsView) -> None:
    region = view.vma_at(pid.number("addr"))
    huge = region.fields.get("AnonHugePages", 0)
    REPORT.append(f"  THP region: Rss {region.fields['Rss']}, AnonHugePages {huge}")
    # a freshly booted 3 GiB guest, and MADV_HUGEPAGE faults may compact (defrag=madvise):
    # every one of the four aligned 2 MiB pieces is a huge page
    assert region.fields["Rss"] == 8 * MIB
    assert huge == 8 * MIB, "not every 2 MiB of the region was backed by a huge page"


def threads_share_the_mm(pid: StoppedScenario, view: SmapsView) -> None:
    tids = pid.numbers("tids")
    assert len(tids) == 4 and pid.pid not in tids


def heap_dontneed(pid: StoppedScenario, view: SmapsView) -> None:
    assert view.expected(3) == (64 - 16) * PAGE


def zero_page(pid: StoppedScenario, view: SmapsView) -> None:
    heap = view.vma_at(pid.number("addr"))
    assert heap.name == "[heap]" and heap.end - heap.start >= 64 * PAGE
    assert view.expected(3) == 0  # 64 pages read: all the shared zero page


def hugetlb_pages(pid: StoppedScenario, view: SmapsView) -> None:
    region = view.vma_at(pid.number("addr"))
    assert region.fields.get("Private_Hugetlb", 0) == 2 * HUGE_2M
    assert view.rollup.get("Private_Hugetlb") == 2 * HUGE_2M


def sparse(pid: StoppedScenario, view: SmapsView) -> None:
    region = view.vma_at(pid.number("addr"))
    assert region.end - region.start == 64 * GIB
    assert region.fields["Rss"] == PAGE


@functools.lru_cache(maxsize=None)
def probe(name: str) -> object:
    """One fact the booted kernel's memuse was rendered with, from its build record."""
    return running_probes(syscall_number().nr)[name]


def protnone_thp(pid: StoppedScenario, view: SmapsView) -> None:
    """The huge pmds stay huge under PROT_NONE; smaps counts them unless its lookup refuses
    protnone pmds (6.1.y's follow_trans_huge_pmd()), and memuse must do as smaps does."""
    address = pid.number("addr")
    region = view.vma_at(address)
    perms, _ = view.flags_at(address)
    counted = probe("smaps_counts_protnone_thp")
    huge = region.fields.get("AnonHugePages", 0)
    REPORT.append(
        f"  PROT_NONE THP region ({perms}): Rss {region.fields['Rss']}, AnonHugePages {huge}; "
        f"this tree's smaps counts protnone THPs: {counted}"
    )
    assert perms == "---p"
    assert (region.start, region.end) == (address, address + 8 * MIB)
    assert region.fields["Rss"] == huge == (8 * MIB if counted else 0)


def hwpoisoned(pid: StoppedScenario, view: SmapsView) -> None:
    """Four touched pages, the second poisoned: its pte is a hwpoison entry now, which smaps
    counts as resident where its rule for non-present entries takes hwpoison in."""
    address = pid.number("addr")
    region = view.vma_at(address)
    rule = str(probe("nonpresent_pte"))
    counted = HWPOISON_COUNTED.get(rule)
    REPORT.append(
        f"  hwpoisoned page: the region's Rss {region.fields['Rss']} of {4 * PAGE}; this "
        f"tree's smaps rule for non-present ptes: {rule}; SIGBUS {pid.number('sigbus')}x"
    )
    assert (region.start, region.end) == (address, address + 4 * PAGE)
    assert region.fields["Rss"] in (3 * PAGE, 4 * PAGE)
    if counted is not None:
        assert region.fields["Rss"] == (4 if counted else 3) * PAGE
    corrupted = parse_meminfo().get("HardwareCorrupted", 0)
    assert corrupted >= PAGE, "no page is marked corrupted: the poisoning did not happen"


def page_at_start_brk(pid: StoppedScenario, view: SmapsView) -> None:
    """A one-page mapping at start_brk while brk == start_brk: [heap] under the <=/>= rule,
    not under the strict one; memuse's kind 3 must follow the tree's rule."""
    address = pid.number("addr")
    region = view.vma_at(address)
    strict = probe("heap_strict")
    REPORT.append(
        f"  page at start_brk: smaps names it {region.name or '(nothing)'!s}; this tree's "
        f"[heap] rule is {'strict' if strict else '<=, >='}"
    )
    assert address == pid.number("start_brk")
    assert (region.start, region.end, region.fields["Rss"]) == (address, address + PAGE, PAGE)
    assert region.name == ("" if strict else "[heap]")
    assert view.expected(3) == (0 if strict else PAGE)


def private_pfnmap(pid: StoppedScenario, view: SmapsView) -> None:
    """A private writable /dev/mem mapping (VM_PFNMAP) with one page copied on write:
    smaps counts that copy where its walk_page_vma() does not skip VM_PFNMAP areas."""
    address = pid.number("addr")
    region = view.vma_at(address)
    perms, flags = view.flags_at(address)
    skipped = probe("walk_page_vma_tests")
    REPORT.append(
        f"  /dev/mem private ({perms}, VmFlags {' '.join(flags)}): Rss {region.fields['Rss']}; "
        f"this tree's walk_page_vma() skips VM_PFNMAP: {skipped}"
    )
    assert perms == "rw-p" and "pf" in flags
    assert region.fields["Rss"] == (0 if skipped else PAGE)


def parse_meminfo() -> Dict[str, int]:
    """/proc/meminfo in bytes."""
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        words = rest.split()
        if words:
            fields[name] = int(words[0]) * (1024 if words[1:] == ["kB"] else 1)
    return fields


CASES = [
    Case("idle (do nothing)", "do-nothing", ()),
    Case("heap: 20000 B malloc'd, written", "heap-active", (20000,), heap_written),
    Case("heap: 20000 B malloc'd, untouched", "heap-passive", (20000,), heap_untouched),
    Case("stack: 20000 recursive calls", "stack", (20000,), deep_stack),
    Case("heap: 1 GiB via brk, written", "heap-1g", (1024,), heap_1g),
    Case("anonymous mmap 16 MiB (not heap)", "mmap-anon", (16,), anonymous_not_heap),
    Case("THP: 8 MiB MADV_HUGEPAGE", "thp", (8,), transparent_huge, needs="thp_enabled"),
    Case("4 threads", "threads", (4,), threads_share_the_mm),
    Case("heap: 64 pages, 16 MADV_DONTNEED", "heap-dontneed", (64, 16), heap_dontneed),
    Case("heap: 64 pages only read", "heap-read-only", (64,), zero_page),
    Case("hugetlb: 2 x 2 MiB", "hugetlb", (2,), hugetlb_pages, needs="hugetlb_pages"),
    Case("sparse: 64 GiB, 1 page touched", "sparse-64g", (64,), sparse),
    Case("THP 8 MiB, then PROT_NONE", "thp-protnone", (8,), protnone_thp, needs="thp_enabled"),
    Case("4 pages, 1 hwpoisoned", "hwpoison", (4, 1), hwpoisoned),
    Case("1 page at start_brk, no malloc", "brk-page", (), page_at_start_brk),
    Case("/dev/mem private, 1 page copied", "devmem-private", (4,), private_pfnmap),
]


@pytest.fixture(scope="module")
def thp_enabled() -> Iterator[str]:
    """THP at least for madvise'd regions, for the duration of the test."""
    if not THP_ENABLED.exists():
        pytest.skip("no transparent huge pages in this kernel")
    pmd = int(THP_PMD_SIZE.read_text()) if THP_PMD_SIZE.exists() else HUGE_2M
    if pmd != HUGE_2M:
        # x86_64, and arm64 with 4 KiB pages, have 2 MiB; arm64's 16/64 KiB pages 32/512 MiB
        pytest.skip(f"the THP scenarios align to 2 MiB, this kernel's huge pmd is {pmd} bytes")
    before = THP_ENABLED.read_text()
    if "[never]" in before:
        THP_ENABLED.write_text("madvise")
    try:
        yield THP_ENABLED.read_text().strip()
    finally:
        if "[never]" in before:
            THP_ENABLED.write_text("never")


@pytest.fixture(scope="module")
def hugetlb_pages() -> Iterator[int]:
    """At least two free 2 MiB hugetlb pages; the pool is put back afterwards."""
    if not HUGETLB_2M.exists():
        pytest.skip("no 2 MiB hugetlb pages in this kernel")
    pool = HUGETLB_2M / "nr_hugepages"
    before = int(pool.read_text())
    free = int((HUGETLB_2M / "free_hugepages").read_text())
    if free < 2:
        pool.write_text(str(before + 2 - free))
    try:
        if int((HUGETLB_2M / "free_hugepages").read_text()) < 2:
            pytest.skip("the kernel could not reserve 2 hugetlb pages")
        yield int(pool.read_text())
    finally:
        pool.write_text(str(before))


def measure_all(nr: int, pid: int) -> Dict[int, Tuple[int, int]]:
    return {kind: call(nr, pid, kind) for kind in ALL_KINDS}


def table_row(title: str, got: Dict[int, Tuple[int, int]], view: SmapsView) -> str:
    cells = []
    for kind, name in zip(ALL_KINDS, KIND_TITLES):
        value, code = got[kind]
        shown = str(value) if not code else errno_name(code)
        if kind != 2:
            shown += f" [{view.expected(kind)}]"
        cells.append(f"{name} {shown}")
    return f"  {title:<36} " + "  ".join(cells)


@pytest.fixture(scope="module", autouse=True)
def table_heading() -> None:
    REPORT.append("agreement, stopped targets: memuse [smaps] in bytes, per kind")


@pytest.mark.parametrize("case", CASES, ids=[case.scenario for case in CASES])
def test_memuse_equals_smaps_and_measuring_changes_nothing(nr, case, request):
    if case.needs:
        request.getfixturevalue(case.needs)
    try:
        with stopped_scenario(case.scenario, *case.args) as pid:
            before = smaps_view(pid)
            first = measure_all(nr, pid)
            second = measure_all(nr, pid)
            after = smaps_view(pid)
            threads = {tid: (measure_all(nr, tid), smaps_view(tid)) for tid in _tids(pid)}
    except ScenarioUnavailable as error:
        pytest.skip(str(error))
    REPORT.append(table_row(case.title, first, before))

    assert after.footprint() == before.footprint(), "smaps changed while memuse measured"
    assert second == first
    assert first[2] == (expected_thread_size(), 0)
    assert {kind: first[kind] for kind in USER_KINDS} == {
        kind: (before.expected(kind), 0) for kind in USER_KINDS
    }
    if case.check:
        case.check(pid, before)
    for tid, (by_thread, thread_view) in threads.items():
        # a thread id names the same mm: the same figures, and its own kernel stack
        assert by_thread == first, f"thread {tid}"
        assert thread_view.footprint() == before.footprint(), f"thread {tid}"


def _tids(pid: StoppedScenario) -> Tuple[int, ...]:
    return tuple(pid.numbers("tids")) if "tids" in pid.info else ()


def test_smaps_of_the_caller_itself_agrees_on_kernel_mappings(nr):
    # the caller's own [vdso]/[vvar] do not move while it runs, unlike its heap
    view = smaps_view(os.getpid())
    assert call(nr, os.getpid(), 4) == (view.expected(4), 0)
    assert view.expected(4) > 0
