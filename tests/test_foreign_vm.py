"""`invoke vm --arch arm64`'s steps together, as a dry run: the plan is printed, in order,
after the host was checked, and nothing is made."""

from __future__ import annotations

from pathlib import Path

import pytest

from memuse_kit.building.builddir import BuildDir
from memuse_kit.core import arch
from memuse_kit.core.errors import KitError
from memuse_kit.trying import foreign_vm, guest_preflight
from memuse_kit.trying.vm import VmOptions
from tests.guest_support import CALLERS_SOURCE


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MEMUSE_KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(guest_preflight, "check_guest_host", lambda _: None)
    return tmp_path / "cache"


def test_a_dry_run_prints_build_compile_and_boot_in_order(tmp_path, cache, capsys, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    options = VmOptions(build=BuildDir(tmp_path / "build"), cwd=tmp_path, dry_run=True)
    result = foreign_vm.run_foreign_vm(options, arch.ARM64, CALLERS_SOURCE)
    lines = capsys.readouterr().out.splitlines()
    assert result.status == 0
    assert [line.split()[0] for line in lines] == [
        "mmdebstrap", "tar", "aarch64-linux-gnu-gcc", "aarch64-linux-gnu-gcc",
        "qemu-system-aarch64",
    ]  # fmt: skip
    assert "memuse experiment" not in lines[-1]  # the command goes in run.sh, not on QEMU's line
    assert not cache.exists() and not (tmp_path / "tmp").exists()


def test_the_host_is_checked_first(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMUSE_KIT_CACHE", str(tmp_path / "cache"))

    def missing(_):
        raise KitError("arm64 guests need: sudo apt-get install mmdebstrap")

    monkeypatch.setattr(guest_preflight, "check_guest_host", missing)
    options = VmOptions(build=BuildDir(tmp_path / "build"), cwd=tmp_path)
    with pytest.raises(KitError, match="need: sudo apt-get install mmdebstrap"):
        foreign_vm.run_foreign_vm(options, arch.ARM64)
    assert not (tmp_path / "cache").exists()
