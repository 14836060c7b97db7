"""memuse agrees with /proc/PID/smaps in every scenario, and measuring changes nothing.

Each target is a native scenario process stopped while it is measured: smaps is read, the
five kinds are asked twice, smaps is read again. Kinds 1, 3, 4 and 5 must equal smaps
(Rss + hugetlb of the [stack], [heap], kernel-named VMAs; smaps_rollup), kind 2 must be
THREAD_SIZE, and smaps must not have moved: nothing faulted in, no huge page split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple

import pytest

from memuse_client import ScenarioUnavailable, StoppedScenario, stopped_scenario
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
    smaps_view,
)

THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")
HUGETLB_2M = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")
HUGE_2M = 2 * MIB
KIND_TITLES = ("stack", "kstack", "heap", "kmaps", "total")

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
]


@pytest.fixture(scope="module")
def thp_enabled() -> Iterator[str]:
    """THP at least for madvise'd regions, for the duration of the test."""
    if not THP_ENABLED.exists():
        pytest.skip("no transparent huge pages in this kernel")
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
