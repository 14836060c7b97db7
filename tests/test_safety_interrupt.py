"""Issue 9: a patch or revert killed at any instant is recoverable, and the recovery leaves
the tree byte-identical to pristine with no stray files.

Each run forks a child that patches (or reverts) a fake tree and SIGKILLs it after a random
delay spread over the time a whole run takes; the parent then recovers with the ordinary
commands and compares every entry of the tree with the pristine one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict

import pytest

from memuse_kit.core.safety import TMP_PREFIX
from memuse_kit.patching import patch_step, patcher
from tests.fakelinux import make_fake_tree

RUNS = 120
SYS_C = "kernel/sys.c"


def entries(root: Path) -> Dict[str, str]:
    """Every file, directory and link under root with its content: what byte-identical means."""
    found: Dict[str, str] = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(top) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def quietly(action: Callable[[], object]) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        action()


@pytest.fixture
def no_fsync(monkeypatch):
    # a killed process loses nothing that reached the page cache: fsync only guards against
    # power loss, and skipping it makes a run short enough to kill 100 times in seconds
    monkeypatch.setattr(os, "fsync", lambda fd: None)


@pytest.fixture
def fast_dir(tmp_path: Path):
    """A directory on tmpfs where there is one (renames there cost microseconds, not ms)."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK | os.X_OK)):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="memuse-kit-test-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _killed_at(delay: float, action: Callable[[], object]) -> bool:
    """Run action in a child, SIGKILL it after delay; True when it was killed mid-way."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 0
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            action()
        except BaseException:
            status = 1
        os._exit(status)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status):
        assert os.WEXITSTATUS(status) == 0, "the run failed by itself before it was killed"
        return False
    return True


def _duration(action: Callable[[], object]) -> float:
    start = time.monotonic()
    quietly(action)
    return time.monotonic() - start


def test_killed_runs_are_recoverable_to_pristine(tmp_path: Path, fast_dir: Path, no_fsync):
    """Runs of three kinds are killed: a patch adding two syscalls, a revert of one of them
    (which rewrites the shared files and removes a file), and a whole revert."""
    tree = make_fake_tree(fast_dir / "linux")
    out = tmp_path / "memuse.patch"
    pristine = entries(tree)

    def patch() -> None:
        patch_step.patch_tree(tree, str(out), syscalls=["memuse", "fdcount"])

    def revert_one() -> None:
        patch_step.revert_tree(tree, syscalls=["fdcount"])

    def revert() -> None:
        patch_step.revert_tree(tree)

    actions = {"patch": patch, "revert-one": revert_one, "revert": revert}
    span = {"patch": _duration(patch), "revert-one": _duration(revert_one)}
    span["revert"] = _duration(revert)
    assert entries(tree) == pristine
    rng = random.Random(9)
    killed = 0
    for run in range(RUNS):
        action = ("patch", "revert-one", "patch", "revert")[run % 4]
        if action != "patch":
            quietly(patch)
        delay = rng.uniform(0, span[action] * 1.2)
        killed += _killed_at(delay, actions[action])
        # recovery: the ordinary commands, each of which first removes a killed run's leftovers
        if run % 8 < 4:
            quietly(patch)
            assert not [p for p in entries(tree) if Path(p).name.startswith(TMP_PREFIX)]
        quietly(revert)
        assert entries(tree) == pristine, f"run {run} ({action} killed after {delay:.4f}s)"
    assert killed >= RUNS // 2, "too few runs were killed mid-way to prove anything"


def test_leftovers_of_a_killed_run_are_removed_first(tmp_path: Path, capsys):
    tree = make_fake_tree(tmp_path / "linux")
    pristine = entries(tree)
    quietly(lambda: patch_step.patch_tree(tree, str(tmp_path / "x.patch")))
    stray = [
        tree / "kernel" / f"{TMP_PREFIX}sys.c.abcd1234",
        tree / ".memuse-kit" / f"{TMP_PREFIX}state.json.x",
        tree / "kernel" / ".sys.c.k3j4h5g6.tmp",  # the name an older version used
        tree / f"{TMP_PREFIX}state-123" / "original" / SYS_C,
    ]
    for path in stray:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half\n")
    patch_step.revert_tree(tree)
    assert "removed 4 leftover(s) of an interrupted run" in capsys.readouterr().out
    assert entries(tree) == pristine


def test_pristine_copies_without_a_state_file_are_a_leftover(tmp_path: Path):
    tree = make_fake_tree(tmp_path / "linux")
    pristine = entries(tree)
    copy = tree / ".memuse-kit" / "original" / SYS_C
    copy.parent.mkdir(parents=True)
    copy.write_bytes((tree / SYS_C).read_bytes())
    assert patcher.clean_leftovers(tree) == [tree / ".memuse-kit"]
    assert entries(tree) == pristine


def test_copies_that_differ_without_a_state_file_are_never_guessed_at(tmp_path: Path):
    tree = make_fake_tree(tmp_path / "linux")
    copy = tree / ".memuse-kit" / "original" / SYS_C
    copy.parent.mkdir(parents=True)
    copy.write_text("something else\n")
    before = entries(tree)
    with pytest.raises(patcher.KitError, match=r"damaged .*differs from its copy"):
        patcher.revert(tree)
    assert entries(tree) == before
