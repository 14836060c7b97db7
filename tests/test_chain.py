"""One command line hands each stage's result to the next (issue 11): `invoke patch --tree A
build vm` builds and boots A, not the last fetched tree, and --tree is remembered like
--source. The fake kernel tree builds for real (make, packages); only QEMU is replaced."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import List

import pytest

from memuse_kit.building import preflight
from memuse_kit.building.builddir import BuildDir
from memuse_kit.patching import patcher
from memuse_kit.trees import fetch
from memuse_kit.trying import vm_step
from memuse_kit.trying.vm import VmOptions
from tests.fakelinux import make_fake_buildable_tree
from tests.safety_support import invoke_here


@pytest.fixture
def booted(tmp_path: Path, monkeypatch) -> List[VmOptions]:
    monkeypatch.setenv("MEMUSE_KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(preflight, "check_packages", lambda kernel: None)
    boots: List[VmOptions] = []

    def boot(options: VmOptions) -> SimpleNamespace:
        boots.append(options)
        return SimpleNamespace(status=0)

    monkeypatch.setattr(vm_step, "run_vm", boot)
    return boots


def invoke(*args: str) -> str:
    code, out, err = invoke_here(list(args))
    assert code == 0, err
    return out


def test_patch_tree_a_build_vm_builds_and_boots_a(tmp_path, booted):
    a = make_fake_buildable_tree(tmp_path / "a")
    b = make_fake_buildable_tree(tmp_path / "b")
    fetch.use_tree(b)  # the last fetched tree, which build and vm used to take
    out = tmp_path / "a.patch"

    invoke("patch", "--tree", str(a), "--out", str(out), "build", "--config", "vm", "vm")

    built = BuildDir.for_tree(a, "vm")
    assert [options.build for options in booted] == [built]
    assert built.image().is_file() and patcher.recorded_syscalls(a) != {}
    assert patcher.recorded_syscalls(b) == {}
    assert not BuildDir.for_tree(b, "vm").root.exists()
    assert fetch.last_fetched() == a.resolve()  # --tree remembered, like --source


def test_a_later_command_line_keeps_the_remembered_tree(tmp_path, booted):
    a = make_fake_buildable_tree(tmp_path / "a")
    b = make_fake_buildable_tree(tmp_path / "b")
    fetch.use_tree(b)
    invoke("patch", "--tree", str(a), "--out", str(tmp_path / "a.patch"))
    invoke("build", "--config", "vm")
    invoke("vm")
    assert [options.build for options in booted] == [BuildDir.for_tree(a, "vm")]
    assert patcher.recorded_syscalls(b) == {}


def test_a_task_given_its_own_config_does_not_take_the_handed_build(tmp_path, booted):
    a = make_fake_buildable_tree(tmp_path / "a")
    invoke(
        "patch",
        "--tree",
        str(a),
        "--out",
        str(tmp_path / "a.patch"),
        "build",
        "--config",
        "vm",
        "vm",
        "--config",
        "vm-debug",
    )
    assert [options.build for options in booted] == [BuildDir.for_tree(a, "vm-debug")]


def test_a_dry_run_with_tree_remembers_nothing(tmp_path, booted):
    a = make_fake_buildable_tree(tmp_path / "a")
    b = make_fake_buildable_tree(tmp_path / "b")
    fetch.use_tree(b)
    invoke("patch", "--tree", str(a), "--dry-run", "build", "--config", "vm", "--dry-run")
    assert fetch.last_fetched() == b.resolve()
    assert patcher.recorded_syscalls(a) == {}
