from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Iterator

import pytest

from memuse_client import backends, cli
from memuse_client import syscall as syscall_module
from tests.client_support import ABSENT_NR, fake_syscall_from_smaps, run_cli

KEYS = ["stack", "kernel_stack", "heap", "kernel_mappings", "total"]
ME = str(os.getpid())


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMUSE_KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MEMUSE_NR", raising=False)
    syscall_module.clear_cache()
    yield
    syscall_module.clear_cache()


@pytest.fixture
def fake_syscall(monkeypatch):
    """A 'syscall' answering from smaps, so the syscall paths run on any kernel."""
    fake = fake_syscall_from_smaps()
    monkeypatch.setattr(backends, "raw_memuse", fake)
    monkeypatch.setenv("MEMUSE_NR", "472")
    monkeypatch.setenv("MEMUSE_FORCE", "1")  # 472 is not memuse on this kernel
    return fake


def run(capsys, *args: str):
    status = cli.main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_json_is_one_object_keyed_by_pid_with_every_kind(capsys):
    status, out, err = run(capsys, "--backend", "smaps", "--json", ME, "1")
    # pid 1 may be out of reach: then the whole command fails with one line
    if status:
        assert err.count("\n") == 1 and "pid 1" in err
        status, out, err = run(capsys, "--backend", "smaps", "--json", ME)
    document = json.loads(out)
    assert status == 0 and err == ""
    assert next(iter(document)) == ME
    for kinds in document.values():
        assert list(kinds) == KEYS
        assert all(isinstance(value, int) and value >= 0 for value in kinds.values())


def test_json_of_chosen_kinds_by_name_or_number(capsys):
    status, out, _ = run(capsys, "--backend", "smaps", "--json", "--kind", "heap", "--kind=5", ME)
    assert status == 0 and list(json.loads(out)[ME]) == ["heap", "total"]
    status, out, _ = run(
        capsys, "--backend", "smaps", "--json", "--kind", "3", "--kind", "total", ME
    )
    assert status == 0 and list(json.loads(out)[ME]) == ["heap", "total"]


def test_text_shows_every_kind_in_human_units_and_bytes(capsys):
    status, out, _ = run(capsys, "--backend", "smaps", ME)
    lines = out.splitlines()
    assert status == 0
    assert lines[0].startswith(f"pid {ME} (") and "smaps backend" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == KEYS
    for line in lines[1:]:
        fields = line.split()
        assert fields[-1] == "bytes" and fields[-2].isdigit()
        assert fields[2] in ("B", "KiB", "MiB", "GiB")


def test_the_syscall_is_the_default_backend(capsys, fake_syscall, monkeypatch):
    status, out, _ = run(capsys, "--json", "--kind", "heap", ME)
    assert status == 0
    assert fake_syscall.calls == [(472, os.getpid(), 3)]
    # the figure shown is the syscall's answer: one smaps could not give for a live heap
    monkeypatch.setattr(backends, "raw_memuse", lambda nr, pid, kind, source="": 7 * 4096 + 1)
    status, out, _ = run(capsys, "--json", "--kind", "heap", ME)
    assert status == 0 and json.loads(out) == {ME: {"heap": 7 * 4096 + 1}}
    status, out, _ = run(capsys, ME)
    assert "memuse system call 472 (MEMUSE_NR)" in out.splitlines()[0]


def test_nr_option_overrides_the_environment(capsys, fake_syscall):
    run(capsys, "--nr", "451", "--kind", "total", ME)
    assert fake_syscall.calls[-1][0] == 451


@pytest.fixture
def still() -> Iterator[str]:
    """A stopped process: its memory cannot change between the two backends' reads, where
    this test process's own could (a page faulted in under load made total differ once)."""
    child = subprocess.Popen(["sleep", "300"])
    os.kill(child.pid, signal.SIGSTOP)
    try:
        yield str(child.pid)
    finally:
        child.kill()
        child.wait()


def test_compare_shows_both_backends(capsys, fake_syscall, monkeypatch, still):
    status, out, _ = run(capsys, "--compare", still)
    assert status == 0
    assert "vs smaps backend" in out.splitlines()[0]
    rows = out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == KEYS
    assert all("syscall" in row and "smaps" in row for row in rows)
    assert "differs" not in out
    monkeypatch.setattr(backends, "raw_memuse", fake_syscall_from_smaps({3: 4096}))
    status, out, _ = run(capsys, "--compare", still)
    assert [row.split()[0] for row in out.splitlines() if row.endswith("differs")] == ["heap"]


def test_compare_json_nests_the_backends(capsys, fake_syscall):
    status, out, _ = run(capsys, "--compare", "--json", "--kind", "heap", ME)
    document = json.loads(out)
    assert status == 0 and list(document[ME]) == ["syscall", "smaps"]
    assert list(document[ME]["syscall"]) == ["heap"] == list(document[ME]["smaps"])


def test_compare_refuses_a_backend(capsys):
    status, _, err = run(capsys, "--compare", "--backend", "smaps", ME)
    assert status == 2 and "--compare uses both backends" in err


def test_watch_prints_one_json_object_a_line(capsys):
    status, out, _ = run(
        capsys, "--backend", "smaps", "--json", "--watch", "0.01", "--count", "3", ME
    )
    lines = out.splitlines()
    assert status == 0 and len(lines) == 3
    assert all(list(json.loads(line)[ME]) == KEYS for line in lines)


def test_watch_in_text_stamps_each_round(capsys):
    status, out, _ = run(capsys, "--backend", "smaps", "--watch", "0.01", "--count", "2", ME)
    assert status == 0 and sum(line.startswith("--- ") for line in out.splitlines()) == 2


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--backend", "smaps", "2147483000"], 1, "memuse: no process with pid 2147483000"),
        (["--backend", "smaps", "abc"], 2, "memuse: not a process id: 'abc'"),
        (["--backend", "smaps", "-5"], 2, "memuse: not a process id: '-5'"),
        (["--backend", "smaps", "--kind", "heaps", ME], 2, "unknown kind 'heaps'"),
        (["--backend", "smaps", "--kind", "9", ME], 2, "unknown kind '9'"),
        (["--backend", "nope", ME], 2, "invalid choice: 'nope'"),
        (["--backend", "smaps"], 2, "give at least one PID"),
        (["--backend", "smaps", "--watch", "0", ME], 2, "not a positive number of seconds"),
        (["--backend", "smaps", "--count", "2", ME], 2, "--count needs --watch"),
        (["--nr", "x", ME], 2, "--nr must be a system call number"),
        (["--nr", str(ABSENT_NR), ME], 1, f"system call {ABSENT_NR} (from --nr) is not called"),
    ],
)
def test_bad_input_is_one_line_and_a_nonzero_status(capsys, args, status, message):
    got, out, err = run(capsys, *args)
    assert (got, out) == (status, "")
    assert err.count("\n") == 1 and message in err


def test_a_bad_memuse_nr_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("MEMUSE_NR", "x")
    status, _, err = run(capsys, ME)
    assert status == 1 and err == "memuse: MEMUSE_NR must be a system call number, not 'x'\n"


def test_metadata_for_the_running_kernel_is_used(capsys, tmp_path):
    build = tmp_path / "cache" / "builds" / "linux-1234-vm"
    build.mkdir(parents=True)
    (build / "metadata.json").write_text(
        json.dumps({"kernel_release": os.uname().release, "syscall_nr": ABSENT_NR})
    )
    status, _, err = run(capsys, ME)
    # the metadata's number is trusted; this kernel lacks it: ENOSYS, the clear error
    assert status == 1 and err.count("\n") == 1
    assert f"system call {ABSENT_NR} (from build metadata {build / 'metadata.json'})" in err
    assert "invoke build install" in err


def test_help_documents_kinds_and_what_smaps_says_of_kernel_stacks(capsys):
    status, out, _ = run(capsys, "--help")
    assert status == 0
    for key in KEYS:
        assert key in out
    assert "CONFIG_KASAN" in out and "zombie" in out and "unavailable" in out


def test_a_real_run_never_shows_a_traceback():
    done = run_cli("2147483000", env={"MEMUSE_NR": str(ABSENT_NR)})
    assert done.returncode == 1 and done.stdout == ""
    assert "system call 4000 (from MEMUSE_NR) is not called" in done.stderr
    assert done.stderr.count("\n") == 1
    done = run_cli("--backend", "smaps", "--json", str(os.getpid()))
    assert done.returncode == 0 and list(json.loads(done.stdout)) == [str(os.getpid())]
