"""Real kernel trees for slow tests: fetched once into the cache, used through hard-link copies.

Patching writes files by rename, so a hard-link copy can be patched and reverted without
ever changing the cached tree that builds use.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator, Tuple

from memuse_kit.core.cache import cache_root
from memuse_kit.patching.patcher import TreeState

MATRIX_SOURCES = ("debian:5.10", "debian:6.1", "debian:6.12", "debian:7.2")
# the kernels the slow tiers build and boot have both of the kit's syscalls: memuse and its
# example, fdcount, so that tests/guest checks both
TESTED_SYSCALLS = ("memuse", "fdcount")
UPSTREAM_511_ENV = "MEMUSE_KIT_TREE_5_11"
# a 6.6.y source import unpacked outside the repo (Debian ships no 6.6); never committed
UPSTREAM_66_ENV = "MEMUSE_KIT_TREE_6_6"


def cached_tree(spec: str) -> Path:
    from memuse_kit.trees.fetch import fetch_source

    return fetch_source(spec, explicit=True).tree


def link_copy(tree: Path, name: str) -> Path:
    """A hard-link copy of tree on the cache's filesystem."""
    scratch = cache_root() / "test-scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    dest = scratch / name
    if dest.exists():
        shutil.rmtree(dest)
    subprocess.run(["cp", "-al", str(tree), str(dest)], check=True)
    state = dest / ".memuse-kit"
    if state.exists():  # the cached tree is patched for a build: start the copy pristine
        from memuse_kit.patching.patcher import revert

        revert(dest)
    return dest


def pristine_bytes(cached: Path, rel: str) -> bytes:
    current = (cached / rel).read_bytes()
    return TreeState(cached).pristine(rel, current)


def differences(cached: Path, copy: Path) -> Iterator[Tuple[str, str]]:
    """(path, why) for every file of copy that is not byte-identical to the pristine tree."""
    seen = set()
    for directory, _, files in os.walk(copy):
        for name in files:
            path = Path(directory) / name
            rel = str(path.relative_to(copy))
            seen.add(rel)
            original = cached / rel
            if rel.startswith(".memuse-kit"):
                yield rel, "state left behind"
            elif path.is_symlink():
                # e.g. 7.2's arch/arm64/tools/syscall_64.tbl -> scripts/syscall.tbl, checked there
                if not original.is_symlink() or os.readlink(path) != os.readlink(original):
                    yield rel, "symlink differs"
            elif not original.exists():
                yield rel, "not in the pristine tree"
            elif (
                path.stat().st_ino != original.stat().st_ino
                and path.read_bytes() != pristine_bytes(cached, rel)
            ):
                yield rel, "content differs"
    for directory, _, files in os.walk(cached):
        for name in files:
            rel = str((Path(directory) / name).relative_to(cached))
            if rel not in seen and not rel.startswith(".memuse-kit"):
                yield rel, "missing"
