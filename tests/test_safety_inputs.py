"""Issue 9: bad input never harms. Every row runs a task (or the client) as a user would, with
one bad input, and asserts: the exit status, exactly one line on stderr and no traceback, and
that nothing under the test's directory (kernel tree, cache, output files) changed at all,
not even an mtime. A sacrificial process stands in for the client's target: it must live on.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

from tests.fakelinux import make_fake_buildable_tree
from tests.safety_support import fingerprint, invoke, memuse, run_all

MAKEFILE = "kernel/Makefile"
TBL64 = "arch/x86/entry/syscalls/syscall_64.tbl"


@dataclass
class World:
    root: Path
    tree: Path
    cache: Path
    out: Path
    victim: int = 0


@dataclass
class Row:
    name: str
    argv: Callable[[World], List[str]]
    expect: str
    setup: Optional[Callable[[World], None]] = None
    code: int = 1
    client: bool = False
    env: Dict[str, str] = field(default_factory=dict)
    root_only: bool = False


def _state(world: World, text: str) -> None:
    state = world.tree / ".memuse-kit"
    state.mkdir()
    (state / "state.json").write_text(text)


def _record(files: object) -> str:
    return json.dumps({"kernel": "7.2.0", "nr": 472, "files": files})


def _fifo(world: World) -> None:
    os.mkfifo(world.out / "fifo")


def _socket(world: World) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(world.out / "sock"))
    server.close()


def _device(world: World) -> None:
    os.mknod(world.out / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))


def _symlink_to_tree(world: World) -> None:
    (world.out / "link.patch").symlink_to(world.tree / "Makefile")


def _symlink_to_file(world: World) -> None:
    (world.out / "real.patch").write_text("mine\n")
    (world.out / "link.patch").symlink_to(world.out / "real.patch")


def _mixed_endings(world: World) -> None:
    table = world.tree / TBL64
    text = table.read_text()
    table.write_bytes(text.replace("\n", "\r\n", 3).encode())


def _symlinked_target(world: World) -> None:
    makefile = world.tree / MAKEFILE
    (world.out / "Makefile").write_bytes(makefile.read_bytes())
    makefile.unlink()
    makefile.symlink_to(world.out / "Makefile")


def _foreign_memuse(world: World) -> None:
    table = world.tree / TBL64
    table.write_text(
        table.read_text().replace("\n\n#\n# Due", "\n472\tcommon\tmemuse\tx\n\n#\n# Due")
    )


def _foreign_fdcount(world: World) -> None:
    table = world.tree / TBL64
    table.write_text(
        table.read_text().replace("\n\n#\n# Due", "\n472\tcommon\tfdcount\tx\n\n#\n# Due")
    )


def _new(world: World, *args: str) -> List[str]:
    """invoke syscall.new ... into a directory of the test's (never the repository)."""
    return ["syscall.new", *args, "--into", str(world.root / "mine")]


def _no_anchor(world: World) -> None:
    header = world.tree / "include/linux/syscalls.h"
    header.write_text(header.read_text().replace("Architecture-specific", "Arch specific"))


def _config_file(world: World) -> None:
    (world.out / "my.config").write_text("CONFIG_64BIT=y\n")


def T(world: World) -> str:
    return str(world.tree)


ROWS = [
    # fetch
    Row("fetch-empty-tree", lambda w: ["fetch", "--tree", ""], "--tree is empty"),
    Row("fetch-empty-source", lambda w: ["fetch", "--source", ""], "--source is empty"),
    Row("fetch-unknown-source", lambda w: ["fetch", "--source", "bogus:1"], "unknown source"),
    Row("fetch-bad-release", lambda w: ["fetch", "--source", "kernel.org:x.y"], "unknown source"),
    Row("fetch-missing-tree", lambda w: ["fetch", "--tree", "/nonexistent/x"], "kernel tree"),
    Row("fetch-not-a-tree", lambda w: ["fetch", "--tree", f"{T(w)}/include"], "kernel tree"),
    Row(
        "fetch-both",
        lambda w: ["fetch", "--tree", T(w), "--source", "debian:7.2"],
        "not both",
    ),
    Row("fetch-dry-empty-tree", lambda w: ["fetch", "--dry-run", "--tree", ""], "--tree is empty"),
    # patch: the tree option
    Row("patch-empty-tree", lambda w: ["patch", "--tree", ""], "--tree is empty"),
    Row("patch-missing-tree", lambda w: ["patch", "--tree", "/nonexistent/x"], "kernel tree"),
    Row("patch-tree-is-a-file", lambda w: ["patch", "--tree", f"{T(w)}/Makefile"], "kernel tree"),
    Row("patch-tree-and-source", lambda w: ["patch", "--tree", T(w), "--source", "x"], "not both"),
    Row("patch-revert-out", lambda w: ["patch", "--revert", "--out", "x"], "do not go together"),
    # patch: --out
    Row("out-empty", lambda w: ["patch", "--tree", T(w), "--out", ""], "--out is empty"),
    Row(
        "out-tree-makefile",
        lambda w: ["patch", "--tree", T(w), "--out", f"{T(w)}/Makefile"],
        "inside the kernel tree",
    ),
    Row(
        "out-new-file-in-tree",
        lambda w: ["patch", "--tree", T(w), "--out", f"{T(w)}/kernel/memuse.patch"],
        "inside the kernel tree",
    ),
    Row(
        "out-symlink-into-tree",
        lambda w: ["patch", "--tree", T(w), "--out", str(w.out / "link.patch")],
        "symbolic link",
        setup=_symlink_to_tree,
    ),
    Row(
        "out-symlink",
        lambda w: ["patch", "--tree", T(w), "--out", str(w.out / "link.patch")],
        "symbolic link",
        setup=_symlink_to_file,
    ),
    Row("out-dev-null", lambda w: ["patch", "--tree", T(w), "--out", "/dev/null"], "under /dev"),
    Row("out-dev-zero", lambda w: ["patch", "--tree", T(w), "--out", "/dev/zero"], "under /dev"),
    Row(
        "out-proc",
        lambda w: ["patch", "--tree", T(w), "--out", "/proc/self/fd/1"],
        "under /proc",
    ),
    Row("out-sys", lambda w: ["patch", "--tree", T(w), "--out", "/sys/kernel/x"], "under /sys"),
    Row(
        "out-fifo",
        lambda w: ["patch", "--tree", T(w), "--out", str(w.out / "fifo")],
        "a FIFO",
        setup=_fifo,
    ),
    Row(
        "out-socket",
        lambda w: ["patch", "--tree", T(w), "--out", str(w.out / "sock")],
        "a socket",
        setup=_socket,
    ),
    Row(
        "out-device-node",
        lambda w: ["patch", "--tree", T(w), "--out", str(w.out / "null")],
        "a device",
        setup=_device,
        root_only=True,
    ),
    Row("out-directory", lambda w: ["patch", "--tree", T(w), "--out", str(w.out)], "a directory"),
    Row(
        "out-missing-directory",
        lambda w: ["patch", "--tree", T(w), "--out", str(w.out / "no/such/x.patch")],
        "does not exist",
    ),
    # patch: damaged state and unusual trees
    Row(
        "state-bad-json",
        lambda w: ["patch", "--tree", T(w)],
        "not valid JSON",
        setup=lambda w: _state(w, "{not json"),
    ),
    Row(
        "state-wrong-types",
        lambda w: ["patch", "--tree", T(w)],
        "lists no files",
        setup=lambda w: _state(w, _record([MAKEFILE])),
    ),
    Row(
        "state-names-outside",
        lambda w: ["patch", "--revert", "--tree", T(w)],
        "not a file memuse-kit edits",
        setup=lambda w: _state(w, _record({"../../etc/passwd": {}})),
    ),
    Row(
        "state-dir-is-a-file",
        lambda w: ["patch", "--tree", T(w)],
        "is not a directory",
        setup=lambda w: (w.tree / ".memuse-kit").write_text("x"),
    ),
    Row(
        "state-damaged-revert-dry",
        lambda w: ["patch", "--revert", "--dry-run", "--tree", T(w)],
        "not valid JSON",
        setup=lambda w: _state(w, "[1,"),
    ),
    Row(
        "table-mixed-endings",
        lambda w: ["patch", "--tree", T(w)],
        "mixes CRLF and LF",
        setup=_mixed_endings,
    ),
    Row(
        "target-is-a-symlink",
        lambda w: ["patch", "--tree", T(w)],
        "not a regular file",
        setup=_symlinked_target,
    ),
    Row(
        "target-missing",
        lambda w: ["patch", "--tree", T(w)],
        "lacks kernel/Makefile",
        setup=lambda w: (w.tree / MAKEFILE).unlink(),
    ),
    Row(
        "foreign-memuse",
        lambda w: ["patch", "--tree", T(w)],
        "already has a memuse",
        setup=_foreign_memuse,
    ),
    Row("missing-anchor", lambda w: ["patch", "--tree", T(w)], "anchor", setup=_no_anchor),
    # patch: which syscalls
    Row(
        "syscall-unknown",
        lambda w: ["patch", "--tree", T(w), "--syscall", "nosuch"],
        "no syscall named 'nosuch'",
    ),
    Row(
        "syscall-bad-name",
        lambda w: ["patch", "--tree", T(w), "--syscall", "../x"],
        "is not a syscall name",
    ),
    Row(
        "syscall-revert-bad-name",
        lambda w: ["patch", "--revert", "--tree", T(w), "--syscall", "Bad Name"],
        "is not a syscall name",
    ),
    Row(
        "syscall-clash",
        lambda w: ["patch", "--tree", T(w), "--syscall", "fdcount"],
        "already has a fdcount syscall",
        setup=_foreign_fdcount,
    ),
    # syscall.new
    Row("new-bad-name", lambda w: _new(w, "9lives"), "is not a syscall name"),
    Row("new-bad-type", lambda w: _new(w, "x", "--arg", "float f"), "type 'float'"),
    Row("new-bad-arg", lambda w: _new(w, "x", "--arg", "int"), "is not a C parameter"),
    Row("new-bad-abi", lambda w: _new(w, "x", "--abi", "arm64"), "unknown ABI 'arm64'"),
    Row("new-i386-long", lambda w: _new(w, "x", "--arg", "long off"), "zero-extended"),
    Row("new-exists", lambda w: _new(w, "memuse"), "exists already"),
    # build --dry-run
    Row("build-jobs-text", lambda w: ["build", "--dry-run", "--jobs", "abc"], "--jobs"),
    Row("build-jobs-negative", lambda w: ["build", "--dry-run", "--jobs=-3"], "--jobs"),
    Row("build-jobs-zero", lambda w: ["build", "--dry-run", "--jobs", "0"], "--jobs"),
    Row("build-jobs-huge", lambda w: ["build", "--dry-run", "--jobs", "99999"], "--jobs"),
    Row("build-empty-config", lambda w: ["build", "--dry-run", "--config", ""], "--config is"),
    Row(
        "build-missing-config",
        lambda w: ["build", "--dry-run", "--tree", T(w), "--config", "/nonexistent.config"],
        "not a file",
    ),
    Row(
        "build-missing-fragment",
        lambda w: ["build", "--dry-run", "--tree", T(w), "--config", "vm", "--fragment", "/no"],
        "does not exist",
    ),
    Row(
        "build-unfetched-missing-fragment",
        lambda w: ["build", "--dry-run", "--config", "vm", "--fragment", "/no"],
        "does not exist",
    ),
    Row("build-empty-tree", lambda w: ["build", "--dry-run", "--tree", ""], "--tree is empty"),
    Row(
        "build-distcc-empty",
        lambda w: ["build", "--dry-run", "--tree", T(w), "--distcc", " "],
        "--distcc is empty",
    ),
    Row("build-distcc-ssh", lambda w: ["build", "--dry-run", "--distcc", "me@box"], "ssh hosts"),
    Row(
        "build-distcc-and-icecream",
        lambda w: ["build", "--dry-run", "--distcc", "box/2", "--icecream"],
        "not both",
    ),
    Row("build-bad-source", lambda w: ["build", "--dry-run", "--source", "x:1"], "unknown source"),
    Row(
        "build-damaged-state",
        lambda w: ["build", "--dry-run", "--tree", T(w), "--config", "vm"],
        "not valid JSON",
        setup=lambda w: _state(w, ""),
    ),
    # install --dry-run
    Row("install-empty-tree", lambda w: ["install", "--dry-run", "--tree", ""], "--tree is empty"),
    Row("install-unbuilt", lambda w: ["install", "--dry-run", "--tree", T(w)], "no successful"),
    Row("install-unfetched", lambda w: ["install", "--dry-run"], "not fetched yet"),
    # vm
    Row("vm-timeout-text", lambda w: ["vm", "--dry-run", "--timeout", "x"], "--timeout"),
    Row("vm-timeout-negative", lambda w: ["vm", "--dry-run", "--timeout=-5"], "--timeout"),
    Row("vm-timeout-nan", lambda w: ["vm", "--dry-run", "--timeout", "nan"], "--timeout"),
    Row("vm-memory-text", lambda w: ["vm", "--dry-run", "--memory", "lots"], "--memory"),
    Row("vm-memory-tiny", lambda w: ["vm", "--dry-run", "--memory", "1K"], "--memory"),
    Row("vm-accel", lambda w: ["vm", "--dry-run", "--accel", "warp"], "--accel"),
    Row("vm-empty-tree", lambda w: ["vm", "--dry-run", "--tree", ""], "--tree is empty"),
    Row("vm-unbuilt", lambda w: ["vm", "--dry-run", "--tree", T(w)], "no successful build"),
    Row("vm-unfetched", lambda w: ["vm", "--dry-run"], "not fetched yet"),
    # module
    Row("module-path-name", lambda w: ["module", "--dry-run", "--name", "../x"], "no module"),
    Row("module-unknown", lambda w: ["module", "--dry-run", "--name", "nope"], "no module"),
    Row("module-empty-tree", lambda w: ["module", "--dry-run", "--tree", ""], "--tree is empty"),
    Row("module-unfetched", lambda w: ["module", "--dry-run"], "not fetched yet"),
    # the client: the victim process must survive every row
    Row("client-nr-62", lambda w: ["--nr", "62", str(w.victim)], "is not called", client=True),
    Row(
        "client-env-nr-62",
        lambda w: [str(w.victim)],
        "is not called",
        client=True,
        env={"MEMUSE_NR": "62"},
    ),
    Row(
        "client-experiment-nr-62",
        lambda w: ["experiment", "--nr", "62"],
        "is not called",
        client=True,
    ),
    Row("client-nr-text", lambda w: ["--nr", "x", str(w.victim)], "--nr must", code=2, client=True),
    Row(
        "client-env-nr-text",
        lambda w: [str(w.victim)],
        "MEMUSE_NR must",
        client=True,
        env={"MEMUSE_NR": "-1"},
    ),
    Row("client-pid-zero", lambda w: ["0"], "not a process id", code=2, client=True),
    Row("client-pid-wraps", lambda w: [str(2**32 + 1)], "not a process id", code=2, client=True),
    Row(
        "client-watch-text",
        lambda w: ["--watch", "soon", str(w.victim)],
        "positive number",
        code=2,
        client=True,
    ),
    Row(
        "client-watch-inf",
        lambda w: ["--watch", "inf", str(w.victim)],
        "positive number",
        code=2,
        client=True,
    ),
    Row(
        "client-count",
        lambda w: ["--watch", "1", "--count", "x", str(w.victim)],
        "invalid int",
        code=2,
        client=True,
    ),
    Row(
        "client-kind", lambda w: ["--kind", "9", str(w.victim)], "unknown kind", code=2, client=True
    ),
]


@dataclass
class Outcome:
    done: subprocess.CompletedProcess
    before: Dict[str, object]
    after: Dict[str, object]


def _run_row(row: Row, world: World) -> subprocess.CompletedProcess:
    argv = row.argv(world)
    return memuse(argv, world.cache, row.env) if row.client else invoke(argv, world.cache, row.env)


@pytest.fixture(scope="module")
def victim():
    """The process the client rows name: every row must leave it alive."""
    process = subprocess.Popen(["sleep", "600"])
    yield process
    process.kill()
    process.wait()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, victim) -> Dict[str, Outcome]:
    """Every row in a world of its own, run side by side, fingerprinted before and after."""
    worlds: Dict[str, World] = {}
    before: Dict[str, Dict[str, object]] = {}
    for row in ROWS:
        if row.root_only and os.geteuid() != 0:
            continue
        root = tmp_path_factory.mktemp(row.name)
        out = root / "out"
        out.mkdir()
        world = World(root, make_fake_buildable_tree(root / "linux"), root / "cache", out)
        world.victim = victim.pid
        if row.setup is not None:
            row.setup(world)
        worlds[row.name] = world
        before[row.name] = fingerprint(root)  # type: ignore[assignment]
    by_name = {row.name: row for row in ROWS}
    done = run_all(
        {name: (lambda n=name: _run_row(by_name[n], worlds[n])) for name in worlds}  # type: ignore[misc]
    )
    return {
        name: Outcome(done[name], before[name], fingerprint(worlds[name].root))  # type: ignore[arg-type]
        for name in worlds
    }


def test_there_are_enough_rows_in_every_class():
    assert len(ROWS) >= 40
    tasks = {row.argv(World(Path("/t"), Path("/t"), Path("/c"), Path("/o")))[0] for row in ROWS}
    assert {"fetch", "patch", "build", "install", "vm", "module", "syscall.new"} <= tasks
    assert sum(row.client for row in ROWS) >= 8


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_bad_input_is_one_line_and_changes_nothing(outcomes: Dict[str, Outcome], row: Row, victim):
    if row.root_only and os.geteuid() != 0:
        pytest.skip("only root can create a device node")
    outcome = outcomes[row.name]
    done = outcome.done
    assert outcome.after == outcome.before, done.stdout + done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert done.returncode == row.code, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert row.expect in lines[0]
    assert lines[0].startswith("memuse" if row.client else "memuse-kit: error: ")
    assert victim.poll() is None, "a client row killed its target process"
