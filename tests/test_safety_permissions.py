"""Issue 9: a plain user against read-only, unreadable and immutable files gets one line and
an untouched tree, never a traceback or a half-patched tree.

The tool runs as a plain user: the current one, or (when the tests run as root, which
bypasses every permission) memuse-ci through runuser. Immutable files need root to set up
(chattr +i); where that is impossible the test says so and skips.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

from tests.fakelinux import make_fake_tree
from tests.safety_support import REPO, fingerprint, tool_env

TARGET = "kernel/Makefile"  # a file every syscall edits


def _plain_user() -> Optional[str]:
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    for name in ("memuse-ci", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        if shutil.which("runuser"):
            return name
    return None


USER = _plain_user()
pytestmark = pytest.mark.skipif(USER is None, reason="no plain user to run the tool as")


class Place:
    """A directory the plain user owns, with a fake kernel tree and a cache in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tree = make_fake_tree(root / "linux")
        self.cache = root / "cache"
        self.out = root / "out"
        self.out.mkdir()
        self.undo: List[Callable[[], None]] = []
        if os.geteuid() == 0:
            entry = pwd.getpwnam(USER or "")
            for top, dirs, files in os.walk(root):
                for name in [".", *dirs, *files]:
                    os.chown(Path(top) / name, entry.pw_uid, entry.pw_gid)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        """`invoke ARGS` as the plain user."""
        env = tool_env(self.cache, {"HOME": str(self.root)})
        command = [sys.executable, "-m", "invoke", *args]
        if os.geteuid() == 0:
            keep = [f"{k}={v}" for k, v in env.items() if k != "HOME"]
            command = [
                "runuser",
                "-u",
                USER or "",
                "--",
                "env",
                f"HOME={self.root}",
                *keep,
                *command,
            ]
        return subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
        )

    def chmod(self, path: Path, mode: int) -> None:
        old = path.stat().st_mode & 0o7777
        path.chmod(mode)
        self.undo.append(lambda: path.chmod(old))


@pytest.fixture
def place() -> Iterator[Place]:
    root = Path(tempfile.mkdtemp(prefix="memuse-kit-perm-"))
    root.chmod(0o755)  # the plain user must reach it
    made = Place(root)
    try:
        yield made
    finally:
        for undo in reversed(made.undo):
            undo()
        subprocess.run(["chattr", "-R", "-i", str(root)], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def _refused(place: Place, done: subprocess.CompletedProcess, before: dict, words: str) -> None:
    assert fingerprint(place.tree) == before, done.stdout + done.stderr
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("memuse-kit: error: "), done.stderr
    assert words in lines[0]


def test_an_unwritable_kernel_directory(place: Place):
    place.chmod(place.tree / "kernel", 0o555)
    before = fingerprint(place.tree)
    done = place.run("patch", "--tree", str(place.tree), "--out", str(place.out / "x.patch"))
    _refused(place, done, before, "cannot write in")
    assert not (place.out / "x.patch").exists()


def test_a_read_only_file(place: Place):
    place.chmod(place.tree / TARGET, 0o444)
    before = fingerprint(place.tree)
    done = place.run("patch", "--tree", str(place.tree), "--out", str(place.out / "x.patch"))
    _refused(place, done, before, "is read-only")


def test_an_unreadable_file(place: Place):
    place.chmod(place.tree / TARGET, 0o000)
    if os.access(place.tree / TARGET, os.R_OK) and os.geteuid() != 0:
        pytest.skip("this user reads files whatever their mode")
    before = fingerprint(place.tree)
    done = place.run("patch", "--tree", str(place.tree), "--out", str(place.out / "x.patch"))
    _refused(place, done, before, "permission denied")


def test_an_unwritable_tree_top(place: Place):
    place.chmod(place.tree, 0o555)  # .memuse-kit cannot be made
    before = fingerprint(place.tree)
    done = place.run("patch", "--tree", str(place.tree), "--out", str(place.out / "x.patch"))
    _refused(place, done, before, "cannot write in")


def test_an_unwritable_out_leaves_the_tree_unpatched(place: Place):
    place.chmod(place.out, 0o555)
    before = fingerprint(place.tree)
    done = place.run("patch", "--tree", str(place.tree), "--out", str(place.out / "x.patch"))
    _refused(place, done, before, "cannot write in")


def test_a_revert_that_cannot_write_leaves_the_tree_patched(place: Place):
    done = place.run("patch", "--tree", str(place.tree), "--out", str(place.out / "x.patch"))
    assert done.returncode == 0, done.stderr
    place.chmod(place.tree / "kernel", 0o555)
    before = fingerprint(place.tree)
    done = place.run("patch", "--revert", "--tree", str(place.tree))
    _refused(place, done, before, "cannot write in")


def _chattr(path: Path, flag: str) -> Optional[str]:
    """None when the flag was set, else why it could not be."""
    if not shutil.which("chattr"):
        return "chattr is not installed (e2fsprogs)"
    done = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        return f"chattr {flag} is not permitted here: {done.stderr.strip()}"
    return None


@pytest.mark.parametrize("flag", ["+i", "+a"])
def test_an_immutable_or_append_only_file(place: Place, flag: str):
    why = _chattr(place.tree / TARGET, flag)
    if why is not None:
        pytest.skip(f"{why} (needs root: CAP_LINUX_IMMUTABLE)")
    before = fingerprint(place.tree)
    done = place.run("patch", "--tree", str(place.tree), "--out", str(place.out / "x.patch"))
    _refused(place, done, before, "immutable or append-only")


def test_an_immutable_directory(place: Place):
    why = _chattr(place.tree / "kernel", "+i")
    if why is not None:
        pytest.skip(f"{why} (needs root: CAP_LINUX_IMMUTABLE)")
    before = fingerprint(place.tree)
    done = place.run("patch", "--tree", str(place.tree), "--out", str(place.out / "x.patch"))
    _refused(place, done, before, str(place.tree / "kernel"))
