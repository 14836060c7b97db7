"""The compiler the tool picks (README: gcc-11 for kernels before 5.17, the default gcc after),
against stand-in compilers on PATH, so the answer does not depend on what this host has."""

from __future__ import annotations

from pathlib import Path

import pytest

from memuse_kit.building import compiler
from memuse_kit.core import arch
from memuse_kit.core.errors import KitError
from memuse_kit.trees.kernel_version import KernelVersion


def fake_compilers(directory: Path, *names: str) -> None:
    directory.mkdir(exist_ok=True)
    for name in names:
        tool = directory / name
        tool.write_text(f'#!/bin/sh\necho "{name} (Debian 12.2.0-14) 12.2.0"\n')
        tool.chmod(0o755)


@pytest.fixture
def path_with(tmp_path, monkeypatch):
    def install(*names: str) -> None:
        fake_compilers(tmp_path / "bin", *names)
        monkeypatch.setenv("PATH", str(tmp_path / "bin"))

    return install


@pytest.mark.parametrize(
    "version, expected",
    [("5.10.262", "gcc-11"), ("5.11.0", "gcc-11"), ("5.16.20", "gcc-11"), ("5.17.0", "gcc")],
)
def test_gcc_11_before_5_17_and_the_default_gcc_after(path_with, version, expected):
    path_with("gcc", "gcc-11", "gcc-12")
    picked = compiler.pick(KernelVersion(*map(int, version.split("."))), use_ccache=False)
    assert picked.command == expected
    assert picked.make_args() == (f"CC={expected}", f"HOSTCC={expected}")


def test_new_kernels_take_a_versioned_gcc_when_there_is_no_plain_one(path_with):
    path_with("gcc-13")
    assert compiler.pick(KernelVersion(7, 2, 13), use_ccache=False).command == "gcc-13"


def test_an_old_kernel_without_gcc_11_is_refused_with_the_package_to_install(path_with):
    path_with("gcc", "gcc-12")
    with pytest.raises(KitError, match=r"5\.11\.0 needs gcc-11 .*sudo apt-get install gcc-11"):
        compiler.pick(KernelVersion(5, 11, 0), use_ccache=False)


def test_an_arm64_build_cross_compiles_with_the_host_gcc_for_kbuilds_own_programs(path_with):
    path_with("gcc", "gcc-11", "aarch64-linux-gnu-gcc", "aarch64-linux-gnu-gcc-11")
    picked = compiler.pick(KernelVersion(7, 2, 13), use_ccache=False, arch=arch.ARM64)
    assert picked.make_args() == (
        "ARCH=arm64",
        "CROSS_COMPILE=aarch64-linux-gnu-",
        "CC=aarch64-linux-gnu-gcc",
        "HOSTCC=gcc",
    )
    old = compiler.pick(KernelVersion(5, 10, 262), use_ccache=False, arch=arch.ARM64)
    assert old.command == "aarch64-linux-gnu-gcc-11"


def test_an_x86_64_build_passes_no_arch_so_its_configuration_digest_stays(path_with):
    path_with("gcc")
    picked = compiler.pick(KernelVersion(7, 2, 13), use_ccache=False, arch=arch.X86_64)
    assert picked.make_args() == ("CC=gcc", "HOSTCC=gcc")


def test_a_missing_cross_compiler_names_debians_cross_package(path_with):
    path_with("gcc", "gcc-11")
    with pytest.raises(KitError, match=r"sudo apt-get install gcc-11-aarch64-linux-gnu$"):
        compiler.pick(KernelVersion(5, 10, 262), use_ccache=False, arch=arch.ARM64)
    with pytest.raises(
        KitError, match=r"for arm64 needs aarch64-linux-gnu-gcc or .*gcc-aarch64-linux-gnu$"
    ):
        compiler.pick(KernelVersion(7, 2, 13), use_ccache=False, arch=arch.ARM64)
