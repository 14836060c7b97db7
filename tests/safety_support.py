"""Helpers of the safety tests (tests/test_safety_*.py): run the tools as a user would, and
fingerprint a directory so that "nothing changed" can be asserted exactly."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple, TypeVar

REPO = Path(__file__).resolve().parent.parent
# a port nothing listens on: any download attempt fails at once instead of fetching gigabytes
DEAD_PROXY = "http://127.0.0.1:9"

T = TypeVar("T")
Entry = Tuple[int, int, int, str]  # mode, size, mtime_ns, sha256 / link target / ""


def fingerprint(root: Path) -> Dict[str, Entry]:
    """Every entry under root (root included): type and mode, size, mtime, content digest.

    Directories count too, so a temporary file created and removed again shows up in its
    directory's mtime. Nothing is followed or opened except regular files.
    """
    found: Dict[str, Entry] = {}
    if not os.path.lexists(root):
        return found
    for top, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            path = Path(top) / name if name != "." else Path(top)
            info = os.lstat(path)
            detail = ""
            if stat.S_ISREG(info.st_mode) and os.access(path, os.R_OK):
                detail = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(info.st_mode):
                detail = os.readlink(path)
            rel = str(path.relative_to(root))
            found[rel] = (info.st_mode, info.st_size, info.st_mtime_ns, detail)
    return found


def tool_env(cache: Path, extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("MEMUSE_NR", None)
    env.pop("MEMUSE_FORCE", None)
    env.pop("MEMUSE_KIT_DEBUG", None)
    env.update(
        {
            "MEMUSE_KIT_CACHE": str(cache),
            "PYTHONPATH": str(REPO),
            "http_proxy": DEAD_PROXY,
            "https_proxy": DEAD_PROXY,
            "HTTP_PROXY": DEAD_PROXY,
            "HTTPS_PROXY": DEAD_PROXY,
            "no_proxy": "",
            "GIT_TERMINAL_PROMPT": "0",
        }
    )
    env.update(extra or {})
    return env


WORKERS = (os.cpu_count() or 1) + 1


def run_all(jobs: Mapping[str, Callable[[], T]]) -> Dict[str, T]:
    """Run independent jobs (each a subprocess, mostly) side by side: the suite stays fast."""
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def invoke(
    args: Sequence[str], cache: Path, env: Optional[Mapping[str, str]] = None, timeout: int = 60
) -> subprocess.CompletedProcess:
    """`invoke ARGS` from the repository, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=tool_env(cache, env),
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def invoke_here(args: Sequence[str]) -> Tuple[int, str, str]:
    """`invoke ARGS` in this process (the environment as it is): (status, stdout, stderr).

    The same Program and tasks as the command line, without an interpreter start-up."""
    import contextlib
    import io

    from invoke import Collection, Program

    import tasks

    program = Program(namespace=Collection.from_module(tasks), name="invoke", version="test")
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            program.run(["invoke", *args])
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def memuse(
    args: Sequence[str], cache: Path, env: Optional[Mapping[str, str]] = None
) -> subprocess.CompletedProcess:
    """The client, `memuse ARGS`, in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "memuse_client", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=tool_env(cache, env),
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
