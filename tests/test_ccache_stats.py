"""A build's ccache hit rate comes from ccache's own counters: read here from a real ccache."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from memuse_kit.building import ccache_stats
from memuse_kit.building.build import ccache_mode
from memuse_kit.building.compiler import Compiler
from memuse_kit.core.runner import Runner

pytestmark = pytest.mark.skipif(not shutil.which("ccache"), reason="ccache is not installed")


def compile_once(source: Path, env: dict) -> None:
    obj = source.with_suffix(".o")
    subprocess.run(
        ["ccache", "gcc", "-c", str(source), "-o", str(obj)],
        env={**os.environ, **env}, check=True, capture_output=True,
    )  # fmt: skip


def test_one_miss_then_one_hit_are_this_builds_counts(tmp_path: Path):
    env = {"CCACHE_DIR": str(tmp_path / "cache")}
    source = tmp_path / "a.c"
    source.write_text("int answer(void) { return 42; }\n")
    compile_once(source, env)  # counts from before "this build" must not be counted
    before = ccache_stats.snapshot("ccache", env, Runner())
    assert before is not None
    source.write_text("int answer(void) { return 43; }\n")
    compile_once(source, env)
    compile_once(source, env)
    after = ccache_stats.snapshot("ccache", env, Runner())
    assert after is not None
    assert after.since(before) == {"hits": 1, "misses": 1, "hit_rate": 0.5}


def test_output_without_counters_is_no_count():
    assert ccache_stats.parse("cache directory  /x\nprimary config  /y\n") is None


def test_a_local_build_runs_ccache_in_depend_mode_unless_the_user_chose():
    """Depend mode: a miss does not run the preprocessor a second time (a first build with an
    empty cache cost a quarter more without it); distributed builds keep ccache's default."""
    local = Compiler("gcc", "12.2.0", "ccache")
    assert ccache_mode(local, {}) == {"CCACHE_DEPEND": "1"}
    assert ccache_mode(local, {"CCACHE_NODEPEND": "1"}) == {}
    assert ccache_mode(local, {"CCACHE_DEPEND": "0"}) == {}
    farmed = Compiler("gcc", "12.2.0", "ccache", launcher="/b/prefix distcc")
    assert ccache_mode(farmed, {}) == {}
