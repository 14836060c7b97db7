"""Architectures as data (memuse_kit/core/arch.py): x86_64 builds keep their names and make
arguments, an arm64 build is cross-compiled into a directory of its own, with the fast arm64
configuration, and what an architecture lacks is refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from memuse_client import discovery, smaps
from memuse_kit.building import kconfig
from memuse_kit.building.build import BuildOptions, build, cross_package_args
from memuse_kit.building.builddir import BuildDir, find_build
from memuse_kit.core import arch
from memuse_kit.core.errors import KitError
from memuse_kit.installing.install import check_boots_a_machine
from tests.fakelinux import patched_fake_tree

CROSS_TOOLS = ("aarch64-linux-gnu-gcc", "gcc")


@pytest.fixture
def tree(tmp_path: Path, monkeypatch) -> Path:
    """The fake tree, and stand-ins for the host's and the cross compiler on PATH."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for name in CROSS_TOOLS:
        tool = tools / name
        tool.write_text(f'#!/bin/sh\necho "{name} (Debian 12.2.0-14) 12.2.0"\n')
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{Path('/usr/bin')}:{Path('/bin')}")
    return patched_fake_tree(tmp_path, monkeypatch)


def arm64_options(tree: Path, **kwargs) -> BuildOptions:
    kwargs.setdefault("config", "vm")
    return BuildOptions(tree=tree, use_ccache=False, jobs=2, arch="arm64", **kwargs)


def test_names_and_aliases_reach_one_entry_and_an_unknown_one_is_one_line():
    assert arch.get(None) is arch.X86_64 and arch.get("amd64") is arch.X86_64
    assert arch.get("aarch64") is arch.ARM64
    with pytest.raises(KitError, match=r"^--arch riscv64: memuse-kit knows x86_64, arm64$"):
        arch.get("riscv64")


def test_a_configuration_tells_its_architecture():
    assert arch.of_config("CONFIG_ARM64=y\nCONFIG_64BIT=y\n") is arch.ARM64
    assert arch.of_config("CONFIG_X86_64=y\n") is arch.X86_64
    assert arch.of_config("# CONFIG_ARM64 is not set\n") is None


def test_an_arm64_build_is_cross_compiled_into_its_own_directory(tree, capsys):
    result = build(arm64_options(tree, packages=False))
    bd = result.build_dir
    assert bd.root.name.endswith("-vm-arm64") and bd.arch() is arch.ARM64
    assert bd.image() == bd.obj / "arch/arm64/boot/Image" and bd.image().is_file()
    log = bd.log.read_text()
    assert "Kernel: arch/arm64/boot/Image is ready" in log
    # the x86_64 build of the same tree and config is another directory, untouched
    assert not BuildDir.for_tree(tree, "vm").root.exists()
    assert find_build(tree, "vm", arch=arch.ARM64) == bd
    assert find_build(tree, None, arch=arch.ARM64) == bd
    with pytest.raises(KitError, match="has no successful build yet"):
        find_build(tree, None)


def test_the_arm64_plan_passes_arch_and_the_cross_compiler_to_every_make(tree, capsys):
    build(arm64_options(tree, dry_run=True))
    lines = capsys.readouterr().out.splitlines()
    makes = [line for line in lines if " make O=" in line]
    assert len(makes) == 4, lines  # allnoconfig, olddefconfig, the kernel, bindeb-pkg
    for line in makes:
        assert "ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- CC=aarch64-linux-gnu-gcc" in line
        assert "HOSTCC=gcc" in line
    assert any(line.endswith(" allnoconfig") for line in makes)


def test_arm64_has_the_fast_and_debug_vm_configurations_and_refuses_the_rest():
    fast = kconfig.profile_for("vm", arch.ARM64)
    assert fast.base == "allnoconfig" and fast.fragments == ("vm-arm64.config",)
    assert kconfig.profile_for("vm-debug", arch.ARM64).fragments[-1] == "debug.config"
    with pytest.raises(KitError, match=r"--config vm-full: not one of vm, vm-debug for arm64"):
        kconfig.profile_for("vm-full", arch.ARM64)
    assert kconfig.profile_for("vm-full") == kconfig.PROFILES["vm-full"]


def test_the_arm64_fragment_has_the_virt_machines_console_and_no_x86_option():
    """(That every option reaches the real .config is the slow arm64 build's check: the
    build warns of each one the tree does not give.)"""
    fragment = kconfig.fragment_paths(kconfig.profile_for("vm", arch.ARM64), [])[0]
    options = kconfig.parse_options(fragment.read_text())
    assert "CONFIG_SERIAL_AMBA_PL011_CONSOLE" in options and "CONFIG_VIRTIO_MMIO" in options
    assert not [name for name in options if name.startswith("CONFIG_X86")]


def test_an_arm64_build_is_not_installed_on_this_x86_64_machine(tree):
    bd = build(arm64_options(tree, packages=False)).build_dir
    with pytest.raises(KitError, match=r"is for arm64, this machine is x86_64: copy"):
        check_boots_a_machine(bd)


def test_distributed_builds_stay_x86_64(tree):
    with pytest.raises(KitError, match=r"--distcc and --icecream build x86_64 only, not arm64"):
        build(arm64_options(tree, distcc="localhost/2"))


def test_a_cross_build_packages_without_headers_where_mkdebian_has_the_profile(tmp_path):
    mkdebian = tmp_path / "scripts/package/mkdebian"
    mkdebian.parent.mkdir(parents=True)
    mkdebian.write_text("Build-Profiles: <!pkg.${sourcename}.nokernelheaders>\n")
    flags = ["DPKG_FLAGS=-Ppkg.linux-upstream.nokernelheaders"]
    assert cross_package_args(tmp_path, arch.ARM64) == flags
    assert cross_package_args(tmp_path, arch.X86_64) == []
    mkdebian.write_text("Build-Depends: bc, rsync, kmod, cpio, bison, flex\n")  # 6.1's
    assert cross_package_args(tmp_path, arch.ARM64) == []


@pytest.mark.parametrize("entry", list(arch.ARCHES.values()), ids=lambda a: a.name)
def test_the_clients_tables_agree_with_the_architecture_table(entry):
    """The client runs in guests without memuse_kit, so it keys its own facts by uname -m:
    every machine of every entry must find the entry's symbol prefix and THREAD_SIZE rule."""
    for machine in entry.machines:
        if machine in ("amd64",):  # dpkg's name, never uname -m's
            continue
        assert discovery.SYSCALL_WRAPPERS[machine] == entry.syscall_symbol_prefix
        assert smaps.THREAD_SIZE_RULES[machine] is entry.thread_size
    config = f"{entry.config_symbol}=y\nCONFIG_ARM64_4K_PAGES=y\nCONFIG_VMAP_STACK=y\n"
    assert entry.thread_size(config) == 16384
