"""One reporter: -q keeps warnings, errors and results; -v adds every command run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

import tasks
from memuse_kit.core import output
from memuse_kit.core.errors import KitError
from memuse_kit.core.runner import Runner
from tests.fakelinux import make_fake_tree

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def normal_again() -> Iterator[None]:
    yield
    output.set_verbosity()


def everything_said(capsys) -> tuple[str, str]:
    output.say("progress")
    output.progress("50%")
    output.report("result")
    output.detail("$ command")
    output.warn("careful")
    output.problem("compiler error")
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_normal_shows_progress_and_results_but_not_commands(capsys):
    out, err = everything_said(capsys)
    assert out.split() == ["progress", "50%", "result"]
    assert "careful" in err and "compiler error" in err and "$ command" not in err


def test_quiet_keeps_results_warnings_and_errors(capsys):
    output.set_verbosity(quiet=True)
    out, err = everything_said(capsys)
    assert out.split() == ["result"]
    assert "careful" in err and "compiler error" in err


def test_verbose_adds_each_command_on_stderr(capsys):
    output.set_verbosity(verbose=True)
    out, err = everything_said(capsys)
    assert out.split() == ["progress", "50%", "result"]
    assert "$ command" in err


def test_both_at_once_is_refused():
    with pytest.raises(KitError, match="do not go together"):
        output.set_verbosity(verbose=True, quiet=True)


def test_the_runner_shows_what_it_runs_only_when_verbose(capsys):
    Runner().run(["true"])
    assert capsys.readouterr().err == ""
    output.set_verbosity(verbose=True)
    Runner().run(["echo", "a b"], mutates=False)
    assert "$ echo 'a b'" in capsys.readouterr().err


def test_every_task_has_verbose_and_quiet():
    for name, task in tasks.ns.tasks.items():
        helps = {arg.name: arg.help for arg in task.get_arguments()}
        assert helps.get("verbose") and helps.get("quiet"), name


def invoke(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEMUSE_KIT_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_quiet_patch_says_only_its_results_and_a_verbose_one_its_commands(tmp_path):
    tree = make_fake_tree(tmp_path / "linux")
    out = tmp_path / "memuse.patch"
    normal = invoke("patch", "--tree", str(tree), "--out", str(out), "--dry-run", cache=tmp_path)
    quiet = invoke(
        "patch", "-q", "--tree", str(tree), "--out", str(out), "--dry-run", cache=tmp_path
    )
    assert normal.returncode == quiet.returncode == 0, normal.stderr + quiet.stderr
    assert quiet.stdout and quiet.stdout == normal.stdout  # a dry run's plan is its result
    built = invoke("build", "-q", "--tree", str(tree), "--dry-run", cache=tmp_path)
    assert "building Linux" not in built.stdout and "# compile" in built.stdout


def test_verbose_and_quiet_together_is_one_line_and_status_1(tmp_path):
    both = invoke("fetch", "-v", "-q", "--tree", str(tmp_path), cache=tmp_path)
    assert both.returncode == 1
    assert both.stderr.strip() == "memuse-kit: error: --verbose and --quiet do not go together"
