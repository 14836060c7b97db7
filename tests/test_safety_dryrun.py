"""Issue 9: dry runs have no side effects at all. The cache directory and the kernel tree are
fingerprinted (content, mode, size and mtime of every entry, directories included) before
the --dry-run of every task and compared after: no download, no extraction, no metadata,
no current.json, no tree change. Also in three states: nothing fetched, a fetched but
unpatched tree, and a tree with a (fabricated) successful build."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List

import pytest

from memuse_kit.building.builddir import BuildDir
from memuse_kit.trees import fetch
from tests.fakelinux import make_fake_buildable_tree
from tests.safety_support import REPO, fingerprint, invoke, invoke_here, run_all, tool_env

DRY_RUNS: List[List[str]] = [
    ["fetch", "--dry-run"],
    ["fetch", "--dry-run", "--source", "debian:7.2"],
    ["patch", "--dry-run"],
    ["patch", "--revert", "--dry-run"],
    ["build", "--dry-run"],
    ["build", "--dry-run", "--config", "vm"],
    ["build", "--dry-run", "--source", "debian:6.12", "--config", "vm-debug"],
    ["install", "--dry-run"],
    ["uninstall", "--dry-run"],
    ["uninstall", "--dry-run", "--release", "7.2.0-memuse"],
    ["vm", "--dry-run"],
    ["vm", "--dry-run", "--config", "vm", "--", "true"],
    ["module", "--dry-run"],
    ["module", "--dry-run", "--config", "vm"],
]
STATES = ["nothing-fetched", "fetched-unpatched", "built"]


def _fabricate_build(tree: Path) -> None:
    bd = BuildDir.for_tree(tree, "vm")
    bd.image().parent.mkdir(parents=True)
    bd.image().write_bytes(b"bzImage")
    (bd.obj / "Module.symvers").write_text("")
    (bd.obj / "include/config").mkdir(parents=True)
    (bd.obj / "include/config/kernel.release").write_text("7.2.0-memuse\n")
    meta = {"status": "success", "kernel_release": "7.2.0-memuse", "syscall_nr": 472}
    bd.metadata.write_text(json.dumps({**meta, "finished": "2026-11-28T00:00:00+00:00"}))


@pytest.fixture(params=STATES)
def world(request, tmp_path: Path, monkeypatch):
    cache = tmp_path / "cache"
    for name, value in tool_env(cache).items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(REPO)
    tree = make_fake_buildable_tree(tmp_path / "linux")
    if request.param != "nothing-fetched":
        fetch.use_tree(tree)  # what `invoke fetch --tree` records
    if request.param == "built":
        _fabricate_build(tree)
    return request.param, tmp_path, cache


@pytest.mark.parametrize("argv", DRY_RUNS, ids=[" ".join(a) for a in DRY_RUNS])
def test_a_dry_run_changes_nothing(world, argv: List[str], monkeypatch):
    state, root, cache = world
    monkeypatch.setattr(sys, "argv", ["invoke", *argv])
    before = fingerprint(root)
    code, out, err = invoke_here(argv)
    assert fingerprint(root) == before, out + err
    assert cache.exists() == (state != "nothing-fetched")
    assert "Traceback" not in out + err
    if code != 0:
        assert len(err.splitlines()) == 1, err
        assert err.startswith("memuse-kit: error: ")


def test_dry_runs_as_a_user_runs_them_change_nothing(tmp_path: Path):
    tree = make_fake_buildable_tree(tmp_path / "linux")
    cache = tmp_path / "cache"
    before = fingerprint(tmp_path)
    runs = {
        "patch": ["patch", "--dry-run", "--tree", str(tree)],
        "revert": ["patch", "--revert", "--dry-run", "--tree", str(tree)],
        "install": ["install", "--dry-run"],
        "vm": ["vm", "--dry-run", "--tree", str(tree), "--config", "vm"],
        "module": ["module", "--dry-run", "--tree", str(tree), "--config", "vm"],
    }
    done = run_all({name: (lambda a=argv: invoke(a, cache)) for name, argv in runs.items()})
    assert fingerprint(tmp_path) == before
    for name, result in done.items():
        assert "Traceback" not in result.stderr, name
        assert result.returncode == (1 if name == "install" else 0), (name, result.stderr)


def test_build_dry_run_on_an_unfetched_tree_prints_the_whole_plan(tmp_path: Path):
    done = invoke(["build", "--dry-run", "--source", "debian:7.2", "--config", "vm"], tmp_path)
    assert done.returncode == 0, done.stderr
    steps = [line.split(":")[0] for line in done.stdout.splitlines() if line.startswith("# ")]
    assert steps == ["# fetch", "# patch", "# configure", "# compile", "# package"]
    assert "debian:7.2" in done.stdout


def test_build_dry_run_on_an_unpatched_tree_prints_the_whole_plan(tmp_path: Path):
    tree = make_fake_buildable_tree(tmp_path / "linux")
    done = invoke(["build", "--dry-run", "--tree", str(tree), "--config", "vm"], tmp_path / "c")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "# patch: would patch" in out and "(memuse = syscall 472)" in out
    assert "memuse = syscall 472" in out
    for step in ("# configure", "# compile", "# package"):
        assert step in out
    assert " allnoconfig" in out and "bindeb-pkg" in out
    assert "not patched yet" not in out + done.stderr
