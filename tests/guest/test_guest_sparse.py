"""A 64 GiB MAP_NORESERVE mapping with one touched page: measured exactly, and quickly.

The page-table walker skips empty tables at every level, so the cost follows what is
populated, not the size of the mapping: the median call costs at most MAX_RATIO times the
median call on an idle process, timed in the same run, so TCG's and KASAN's slowness cancel
out (the README's aim; a walk of the 16M ptes would be thousands of times slower).
"""

from __future__ import annotations

import statistics
import time
from typing import List, Tuple

from memuse_client import stopped_scenario
from tests.guest_support import GIB, PAGE, REPORT, call, smaps_view

REPEAT = 21
MAX_RATIO = 10.0


def timed_calls(nr: int, pid: int, kind: int) -> Tuple[List[float], int]:
    """Seconds of each of REPEAT calls, and the value they all returned."""
    seconds, values = [], set()
    for _ in range(REPEAT):
        start = time.perf_counter()
        value, code = call(nr, pid, kind)
        seconds.append(time.perf_counter() - start)
        assert code == 0
        values.add(value)
    assert len(values) == 1, f"a stopped process measured differently: {values}"
    return seconds, values.pop()


def test_a_sparse_64_gib_mapping_is_measured_quickly_and_exactly(nr):
    with stopped_scenario("sparse-64g", 64) as pid:
        before = smaps_view(pid)
        seconds, total = timed_calls(nr, pid, 5)
        after = smaps_view(pid)
    with stopped_scenario("do-nothing") as idle:
        idle_seconds, _ = timed_calls(nr, idle, 5)
    median, idle_median = statistics.median(seconds), statistics.median(idle_seconds)
    REPORT.append(
        f"sparse 64 GiB, memuse(pid, 5) over {REPEAT} calls: median {median * 1e3:.3f} ms, "
        f"max {max(seconds) * 1e3:.3f} ms (idle process: median {idle_median * 1e3:.3f} ms, "
        f"ratio {median / idle_median:.2f})"
    )

    region = before.vma_at(pid.number("addr"))
    assert (region.end - region.start, region.fields["Rss"]) == (64 * GIB, PAGE)
    assert total == before.expected(5)
    assert after.footprint() == before.footprint()
    assert median / idle_median <= MAX_RATIO
