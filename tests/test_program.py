"""The `memuse-kit` command is Invoke's Program over the tasks `invoke` runs here (fast; the
installed wheel is tests/test_wheel_install.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from invoke import Collection

import tasks
from memuse_kit.program import program

REPO = Path(__file__).resolve().parent.parent


def test_invoke_and_memuse_kit_run_the_same_tasks():
    assert isinstance(tasks.ns, Collection)
    assert program.namespace is tasks.ns
    assert set(tasks.ns.tasks) == {
        "fetch",
        "patch",
        "patches",
        "build",
        "install",
        "uninstall",
        "vm",
        "machine",
        "module",
    }
    assert set(tasks.ns.collections["syscall"].tasks) == {"new", "list"}


def test_memuse_kit_lists_and_helps_from_another_directory(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MEMUSE_KIT_CACHE": str(tmp_path / "cache")}
    code = "import sys; from memuse_kit.program import main; sys.argv[0] = 'memuse-kit'; main()"

    def memuse_kit(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", code, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = memuse_kit("--list")
    assert listed.returncode == 0 and "  patch " in listed.stdout and "  vm " in listed.stdout
    helped = memuse_kit("--help", "patch")
    assert helped.returncode == 0 and "--revert" in helped.stdout
    refused = memuse_kit("patch", "--tree", "")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "--tree is empty" in refused.stderr


def test_the_build_path_loads_no_network_terminal_or_scenario_modules():
    """Issue 12's no-op bar: every `invoke build` pays for what the build path imports. HTTP,
    git and tqdm load when a download, a clone or a terminal bar starts; the client's
    scenarios and ctypes when a guest test runs. Each was 10 to 70 ms of a no-op build."""
    probe = (
        "import sys, invoke, memuse_kit.tasks, memuse_kit.building.pipeline\n"
        "import memuse_kit.trees.fetch  # every build reads the tree's source record\n"
        "heavy = ('requests', 'urllib3', 'git', 'tqdm', 'ctypes', 'memuse_client.scenarios',"
        " 'memuse_client.syscall')\n"
        "print(' '.join(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert done.stdout.strip() == ""


def test_the_client_package_still_offers_its_names():
    """memuse_client loads its modules on first use; every name of __all__ still resolves."""
    import memuse_client

    for name in memuse_client.__all__:
        assert getattr(memuse_client, name) is not None
    with pytest.raises(AttributeError):
        memuse_client.no_such_name  # noqa: B018


def test_garbage_left_at_exit_is_still_finalized(tmp_path):
    """cli freezes what is alive at exit so that Python's teardown skips it: garbage must be
    collected before (a cycle whose finalizer flushes a file would otherwise never run)."""
    said = tmp_path / "finalized"
    probe = (
        "import memuse_kit.cli\n"
        "class Node:\n"
        "    def __del__(self):\n"
        f"        open({str(said)!r}, 'w').write('yes')\n"
        "node = Node(); node.me = node; del node\n"
        "import gc; gc.disable()  # only the exit may collect it\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, cwd=REPO)
    assert said.read_text() == "yes"
