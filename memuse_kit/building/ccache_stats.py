"""How many of a build's compiles ccache answered: its counters before and after the build.

ccache keeps counters per cache directory (`ccache --print-stats`, ccache 4.4+); the hits
and misses of one build are the difference. Other builds sharing the cache at the same time
count too, which the kit's own builds (one at a time per tree) do not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

from memuse_kit.core.errors import KitError
from memuse_kit.core.runner import Runner

HIT_COUNTERS = ("direct_cache_hit", "preprocessed_cache_hit")
MISS_COUNTERS = ("cache_miss",)


@dataclass(frozen=True)
class Counts:
    hits: int
    misses: int

    def since(self, before: Counts) -> Dict[str, float]:
        """This build's hits, misses and hit rate (a fraction), for the record."""
        hits, misses = self.hits - before.hits, self.misses - before.misses
        rate = hits / (hits + misses) if hits + misses > 0 else 0.0
        return {"hits": hits, "misses": misses, "hit_rate": round(rate, 3)}


def parse(text: str) -> Optional[Counts]:
    """Counts from `ccache --print-stats` (a counter and its value per line, tab apart)."""
    values: Dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition("\t")
        if value.strip().isdigit():
            values[name.strip()] = int(value)
    if not any(name in values for name in HIT_COUNTERS + MISS_COUNTERS):
        return None
    hits = sum(values.get(name, 0) for name in HIT_COUNTERS)
    return Counts(hits, sum(values.get(name, 0) for name in MISS_COUNTERS))


def snapshot(ccache: str, env: Dict[str, str], runner: Runner) -> Optional[Counts]:
    """The counters now; None when this ccache cannot print them (older than 4.4)."""
    try:
        done = runner.run([ccache, "--print-stats"], env=env, check=False, mutates=False)
    except KitError:
        return None
    return parse(done.stdout) if done.returncode == 0 else None
