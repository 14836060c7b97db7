"""The guest's programs, compiled statically on the host for the guest's architecture."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from memuse_client.scenarios import CFLAGS, binary_name
from memuse_kit.core import arch
from memuse_kit.core.errors import KitError
from memuse_kit.trying import guest_binaries
from tests import guest_support

EM_AARCH64 = 183
PT_INTERP = 3
needs_cross_gcc = pytest.mark.skipif(
    not shutil.which("aarch64-linux-gnu-gcc")
    or not Path("/usr/aarch64-linux-gnu/lib/libc.a").is_file(),
    reason="no aarch64-linux-gnu-gcc with libc6-dev-arm64-cross",
)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MEMUSE_KIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def elf_facts(path: Path):
    """(e_machine, whether it has a PT_INTERP: dynamically linked) of a 64-bit LE ELF."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1
    machine = struct.unpack_from("<H", data, 18)[0]
    (phoff,) = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    return machine, PT_INTERP in types


def test_the_callers_are_named_as_tests_guest_names_them():
    assert guest_binaries.callers_name(guest_support.CALLERS_SOURCE) == guest_support.callers_name()


def test_the_compile_is_static_with_the_clients_flags(tmp_path):
    cmd = guest_binaries.compile_command(arch.ARM64, Path("s.c"), CFLAGS, tmp_path / "out")
    assert cmd == ["aarch64-linux-gnu-gcc", "-static", *CFLAGS, "-o", str(tmp_path / "out"), "s.c"]


def test_the_programs_live_apart_from_the_hosts(cache):
    programs = cache / "guest-bin" / "arm64"
    assert guest_binaries.guest_bin_dir(arch.ARM64) == programs / "static"
    assert guest_binaries.guest_bin_dir(arch.ARM64, static=False) == programs / "dynamic"


def test_a_dry_run_prints_the_compile_and_touches_nothing(cache, capsys):
    path = guest_binaries.guest_scenarios(arch.ARM64, dry_run=True)
    assert path == cache / "guest-bin/arm64/dynamic" / binary_name()
    out = capsys.readouterr().out
    assert out.startswith("aarch64-linux-gnu-gcc -O0") and not cache.exists()


@needs_cross_gcc
def test_the_scenarios_are_an_arm64_program_on_the_guests_libc_reused_once_built(cache):
    """Dynamic: a static glibc program starts with a heap (its TLS comes from brk)."""
    path = guest_binaries.guest_scenarios(arch.ARM64)
    assert path.name == binary_name() and elf_facts(path) == (EM_AARCH64, True)
    built = path.stat().st_mtime_ns
    assert guest_binaries.guest_scenarios(arch.ARM64) == path
    assert path.stat().st_mtime_ns == built
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


@needs_cross_gcc
def test_a_compile_error_is_one_line(cache, tmp_path):
    source = tmp_path / "bad.c"
    source.write_text("int main(void) { return nope; }\n")
    with pytest.raises(KitError) as error:
        guest_binaries.guest_program(arch.ARM64, source, ["-Wall"], "bad")
    assert "\n" not in str(error.value) and "nope" in str(error.value)
    assert list((cache / "guest-bin/arm64/static").iterdir()) == []


def test_the_environment_names_both_callers_variables(cache, monkeypatch, tmp_path):
    source = tmp_path / "callers.c"
    source.write_text("int main(void) { return 0; }\n")
    made = []

    def fake(arch_, source_, flags, name, dry_run=False, static=True):
        made.append(name)
        return cache / name

    monkeypatch.setattr(guest_binaries, "guest_program", fake)
    env = guest_binaries.guest_binaries_env(arch.ARM64, source)
    assert set(env) == {"MEMUSE_SCENARIOS_BIN", "MEMUSE_CALLERS_BIN", "MEMUSE_GUEST_CALLERS"}
    assert env["MEMUSE_CALLERS_BIN"].name == guest_binaries.callers_name(source)
    assert guest_binaries.guest_binaries_env(arch.ARM64).keys() == {"MEMUSE_SCENARIOS_BIN"}


@needs_cross_gcc
def test_the_callers_are_a_static_arm64_program(cache):
    path = guest_binaries.static_callers(arch.ARM64, guest_support.CALLERS_SOURCE)
    assert path.name == guest_support.callers_name()
    assert elf_facts(path) == (EM_AARCH64, False)


def test_callers_without_their_source_is_one_line(cache, tmp_path):
    with pytest.raises(KitError, match=r"no .*callers.c: give the checkout's"):
        guest_binaries.static_callers(arch.ARM64, tmp_path / "callers.c")
