"""Issue 9: the client never calls a system call it has not confirmed is memuse. An explicit
number (--nr, $MEMUSE_NR, nr=) is checked like a discovered one; --force / $MEMUSE_FORCE=1 /
force=True call it anyway and say what that risks."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from memuse_client import backends, cli, memuse
from memuse_client import syscall as syscall_module
from memuse_client.discovery import SyscallNumber, discover
from memuse_client.errors import MemuseUnavailable
from tests.client_support import fake_syscall_from_smaps

RELEASE = "7.2.0-memuse"
WITH = "ffffffff81001230 T __x64_sys_memuse\n"
WITHOUT = "ffffffff81001230 T __x64_sys_mseal\n"


@pytest.fixture
def env(tmp_path: Path) -> dict:
    return {"MEMUSE_KIT_CACHE": str(tmp_path / "cache")}


def _build(env: dict, nr: int, release: str = RELEASE) -> Path:
    path = Path(env["MEMUSE_KIT_CACHE"]) / "builds" / f"b{nr}" / "metadata.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"kernel_release": release, "syscall_nr": nr, "status": "success"}))
    return path


def _find(env: dict, tmp_path: Path, symbols: str = WITH, header_nr=None, **kwargs):
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text(symbols)
    headers = []
    if header_nr is not None:
        header = tmp_path / "unistd_64.h"
        header.write_text(f"#define __NR_memuse {header_nr}\n")
        headers.append(header)
    return discover(env=env, release=RELEASE, header_paths=headers, kallsyms=kallsyms, **kwargs)


def test_metadata_of_the_running_release_confirms_the_number(env, tmp_path):
    _build(env, 472)
    assert _find(env, tmp_path, WITHOUT, override=472) == SyscallNumber(472, "--nr", True)
    with pytest.raises(MemuseUnavailable, match=r"build metadata .* says memuse is 472"):
        _find(env, tmp_path, WITHOUT, override=471)


def test_metadata_of_another_release_confirms_nothing(env, tmp_path):
    _build(env, 472, release="6.1.0-memuse")
    with pytest.raises(MemuseUnavailable, match=r"system call 472 \(from --nr\) is not called"):
        _find(env, tmp_path, WITHOUT, override=472)


def test_headers_confirm_only_with_kallsyms(env, tmp_path):
    assert _find(env, tmp_path, WITH, header_nr=451, override=451).verified
    with pytest.raises(MemuseUnavailable, match="says memuse is 451"):
        _find(env, tmp_path, WITH, header_nr=451, override=452)
    with pytest.raises(MemuseUnavailable, match="is not called"):
        _find(env, tmp_path, WITHOUT, header_nr=451, override=451)
    with pytest.raises(MemuseUnavailable, match="cannot be read"):
        _find(env, tmp_path, "", header_nr=451, override=451)


def test_kill_is_never_called_for_memuse(env, tmp_path):
    env["MEMUSE_NR"] = "62"
    with pytest.raises(MemuseUnavailable) as caught:
        _find(env, tmp_path, WITH)
    message = str(caught.value)
    assert "refusing to call system call 62 (from MEMUSE_NR)" in message
    assert "--force" in message and "62 is kill" in message and "\n" not in message


def test_force_calls_an_unconfirmed_number(env, tmp_path):
    assert _find(env, tmp_path, WITHOUT, override=62, force=True) == SyscallNumber(
        62, "--nr", False
    )
    env["MEMUSE_NR"], env["MEMUSE_FORCE"] = "62", "1"
    assert not _find(env, tmp_path, WITHOUT).verified
    env["MEMUSE_FORCE"] = "0"
    with pytest.raises(MemuseUnavailable):
        _find(env, tmp_path, WITHOUT)


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMUSE_KIT_CACHE", str(tmp_path / "cache"))
    for name in ("MEMUSE_NR", "MEMUSE_FORCE"):
        monkeypatch.delenv(name, raising=False)
    syscall_module.clear_cache()
    yield
    syscall_module.clear_cache()


def test_the_api_refuses_before_any_system_call(isolated, monkeypatch):
    monkeypatch.setattr(syscall_module, "_syscall_function", pytest.fail)
    with pytest.raises(MemuseUnavailable, match="62"):
        memuse(os.getpid(), "heap", nr=62)
    with pytest.raises(ValueError, match="not a process id"):
        memuse(2**32 + os.getpid(), "heap", nr=62, force=True)


def test_the_cli_refuses_then_forces_with_a_warning(isolated, monkeypatch, capsys):
    target = subprocess.Popen(["sleep", "60"])
    try:
        fake = fake_syscall_from_smaps()
        monkeypatch.setattr(backends, "raw_memuse", fake)
        assert cli.main(["--nr", "62", "--kind", "heap", str(target.pid)]) == 1
        _, err = capsys.readouterr()
        assert err.count("\n") == 1 and "is not called" in err
        assert fake.calls == []
        assert cli.main(["--nr", "62", "--force", "--kind", "heap", str(target.pid)]) == 0
        _, err = capsys.readouterr()
        assert "not confirmed to be memuse; called anyway because of --force" in err
        assert fake.calls == [(62, target.pid, 3)]
        assert target.poll() is None
    finally:
        target.kill()
        target.wait()


def test_help_says_what_force_risks(capsys):
    assert cli.main(["--help"]) == 0
    assert "--force" in capsys.readouterr().out
    assert cli.main(["experiment", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--force" in out and "kill" in out
