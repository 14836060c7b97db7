from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from memuse_kit.building import artifacts, kconfig, preflight
from memuse_kit.building.build import BuildOptions, build
from memuse_kit.building.builddir import BuildDir
from memuse_kit.core.errors import KitError
from memuse_kit.patching import patcher, templates
from tests import deb_support
from tests.fakelinux import make_fake_buildable_tree


@pytest.fixture
def tree(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("MEMUSE_KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(preflight, "check_packages", lambda kernel: None)
    root = make_fake_buildable_tree(tmp_path / "linux")
    patcher.apply_plan(patcher.plan_patch(root))
    return root


def options(tree: Path, **kwargs) -> BuildOptions:
    kwargs.setdefault("config", "vm")
    return BuildOptions(tree=tree, use_ccache=False, jobs=2, **kwargs)


def metadata(tree: Path, config: str = "vm") -> dict:
    return json.loads(BuildDir.for_tree(tree, config).metadata.read_text())


def test_first_build_packages_and_records_everything(tree):
    result = build(options(tree))
    names = sorted(p.name for p in result.packages)
    assert names == [
        "linux-headers-7.2.0-memuse_7.2.0-1_amd64.deb",
        "linux-image-7.2.0-memuse_7.2.0-1_amd64.deb",
    ]
    bd = result.build_dir
    assert [p.name for p in bd.extra_artifacts.iterdir()] == ["linux-libc-dev_7.2.0-1_amd64.deb"]
    assert not list(bd.root.glob("*.changes")) and not list(bd.root.glob("*.buildinfo"))
    assert artifacts.verify_sums(bd) == {name: True for name in names}
    meta = metadata(tree)
    assert meta["status"] == "success"
    assert meta["kernel_release"] == "7.2.0-memuse" and meta["syscalls"] == {"memuse": 472}
    assert meta["schema"] == 2
    assert meta["probes"]["heap_strict"] is True  # why the tree got the code it got
    assert meta["probes"]["huge_pmd_lookup"] == "vm_normal_page_pmd"
    assert meta["config"]["name"] == "vm" and len(meta["config"]["sha256"]) == 64
    assert set(meta["durations"]) == {"preflight", "config", "kernel", "package"}
    assert meta["objects_compiled"] == 3  # kernel/Makefile's obj-y: fork.o, sys.o, memuse.o
    assert "  CC      kernel/memuse.o" in bd.log.read_text()


def test_the_packages_are_real_and_install_into_a_throwaway_root(tree, tmp_path):
    result = build(options(tree))
    bd, release = result.build_dir, result.release
    root = deb_support.throwaway_root(tmp_path / "root")
    calls = deb_support.hook_recorder(tmp_path / "hooks")
    deb_support.install(root, result.packages, calls)
    image = (bd.obj / "arch/x86/boot/bzImage").read_bytes()
    assert (root / f"boot/vmlinuz-{release}").read_bytes() == image
    assert (root / f"usr/src/linux-headers-{release}/.config").is_file()
    assert deb_support.installed(root) == {
        f"linux-headers-{release}": "ii",
        f"linux-image-{release}": "ii",
    }
    assert not calls.exists()  # the stand-in packages have no maintainer scripts


def test_configuration_is_sanitized(tree):
    """What the README promises scripts/config is told. (The stand-in appends each setting,
    so this checks the arguments; the VM tier checks the real build's obj/.config.)"""
    result = build(options(tree))
    config = (result.build_dir.obj / ".config").read_text()
    assert 'CONFIG_SYSTEM_TRUSTED_KEYS=""' in config
    assert 'CONFIG_SYSTEM_REVOCATION_KEYS=""' in config
    assert 'CONFIG_LOCALVERSION="-memuse"' in config
    assert "# CONFIG_DEBUG_INFO_BTF is not set" in config
    assert "CONFIG_DEBUG_INFO_NONE=y" in config and "# CONFIG_DEBUG_INFO is not set" in config
    assert "CONFIG_DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT=y" not in config


def test_debug_info_only_with_debug_info(tree):
    result = build(options(tree, debug_info=True, reconfigure=True))
    config = (result.build_dir.obj / ".config").read_text()
    assert "# CONFIG_DEBUG_INFO_NONE is not set" in config
    assert "CONFIG_DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT=y" in config
    assert "CONFIG_DEBUG_INFO_NONE=y" not in config


def test_nothing_changed_means_nothing_compiled_or_repackaged(tree, capsys):
    first = build(options(tree))
    image = artifacts.image_package(first.build_dir, first.release)
    stamp = image.stat().st_mtime_ns
    config_stamp = (first.build_dir.obj / ".config").stat().st_mtime_ns
    again = build(options(tree))
    assert again.compiled == 0
    assert image.stat().st_mtime_ns == stamp
    assert (first.build_dir.obj / ".config").stat().st_mtime_ns == config_stamp
    assert "packages are up to date" in capsys.readouterr().out


def test_template_edit_recompiles_only_the_syscall_s_object(tree, tmp_path, monkeypatch):
    build(options(tree))
    copy = tmp_path / "templates"
    shutil.copytree(templates.TEMPLATES_DIR, copy)
    monkeypatch.setattr(templates, "TEMPLATES_DIR", copy)
    body = copy / "syscalls/memuse/impl.c.j2"
    body.write_text(body.read_text().replace("return -EINVAL;", "return -EINVAL; /* v2 */"))
    patcher.apply_plan(patcher.plan_patch(tree))
    result = build(options(tree))
    log = result.build_dir.log.read_text()
    assert result.compiled == 1 and "  CC      kernel/memuse.o" in log
    assert "kernel/fork.o" not in log and "kernel/sys.o" not in log
    assert b"/* v2 */" in artifacts.image_package(result.build_dir, result.release).read_bytes()


def test_no_packages_compiles_and_links_but_runs_no_bindeb_pkg(tree, capsys):
    first = build(options(tree))
    image_deb = artifacts.image_package(first.build_dir, first.release)
    stamp = image_deb.stat().st_mtime_ns
    patcher.revert(tree)
    patcher.apply_plan(patcher.plan_patch(tree, ["memuse", "fdcount"]))
    result = build(options(tree, packages=False))
    bd = result.build_dir
    assert result.compiled > 0 and result.packages == []
    assert bd.image().stat().st_mtime_ns > stamp  # relinked
    assert image_deb.stat().st_mtime_ns == stamp  # the old packages untouched, not rebuilt
    assert "bindeb-pkg" not in bd.log.read_text()
    meta = metadata(tree)
    assert meta["status"] == "success" and meta["packaged"] is False and meta["artifacts"] == []
    assert "package" not in meta["durations"]
    assert "not packaged: --no-packages" in capsys.readouterr().out
    again = build(options(tree))  # a full build packages the kernel it did not package
    assert again.compiled == 0 and metadata(tree)["packaged"] is True
    assert artifacts.image_package(bd, again.release).stat().st_mtime_ns > stamp
    assert b"fdcount" in artifacts.image_package(bd, again.release).read_bytes()


def test_no_packages_dry_run_plans_no_packaging(tree, capsys):
    build(options(tree, packages=False, dry_run=True))
    out = capsys.readouterr().out
    assert "# package: skipped (--no-packages)" in out and "bindeb-pkg" not in out


def test_failed_build_keeps_metadata_and_names_the_log(tree, monkeypatch, capsys):
    monkeypatch.setenv("FAIL_BUILD", "1")
    with pytest.raises(KitError, match=r"compiling the kernel failed .*build\.log"):
        build(options(tree))
    meta = metadata(tree)
    assert meta["status"] == "failed"
    assert any("error: fake failure" in line for line in meta["error"])
    assert "error: fake failure" in capsys.readouterr().err


def test_an_edited_config_is_never_overwritten_silently(tree):
    first = build(options(tree))
    config = first.build_dir.obj / ".config"
    config.write_text(config.read_text() + "CONFIG_MINE=y\n")
    with pytest.raises(KitError, match="was edited since memuse-kit wrote it"):
        build(options(tree))
    assert "CONFIG_MINE=y" in config.read_text()
    build(options(tree, keep_config=True))
    assert "CONFIG_MINE=y" in config.read_text()
    build(options(tree, reconfigure=True))
    assert "CONFIG_MINE=y" not in config.read_text()
    assert "CONFIG_MINE=y" in (first.build_dir.obj / ".config.edited").read_text()


def test_dry_run_prints_the_commands_and_builds_nothing(tree, capsys):
    build(options(tree, dry_run=True))
    out = capsys.readouterr().out
    assert "make O=" in out and " allnoconfig" in out and "bindeb-pkg" in out
    assert "merge_config.sh -m -O" in out
    assert not BuildDir.for_tree(tree, "vm").obj.exists()


def test_building_as_root_is_refused(tree, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(KitError, match="refusing to build the kernel as root"):
        build(options(tree))


def test_an_unpatched_tree_is_refused(tree):
    patcher.revert(tree)
    with pytest.raises(KitError, match="is not patched yet"):
        build(options(tree))


def test_missing_packages_are_named_as_apt_packages(monkeypatch):
    from memuse_kit.trees.kernel_version import KernelVersion

    monkeypatch.setattr(
        preflight,
        "REQUIREMENTS",
        (preflight.Requirement("no-such-pkg", command="no-such-command-xyz"),),
    )
    with pytest.raises(KitError, match="sudo apt-get install no-such-pkg"):
        preflight.check_packages(KernelVersion(7, 2, 0))


def test_requirements_follow_the_kernel_version(monkeypatch):
    from memuse_kit.trees.kernel_version import KernelVersion

    reqs = (preflight.Requirement("new-pkg", command="no-such-command-xyz", since=(7, 0)),)
    assert preflight.missing_packages(KernelVersion(6, 1, 0), reqs) == []
    assert preflight.missing_packages(KernelVersion(7, 2, 0), reqs) == ["new-pkg"]


def test_tools_in_sbin_count_for_a_user_whose_path_lacks_it(monkeypatch, tmp_path):
    from memuse_kit.trees.kernel_version import KernelVersion

    sbin = tmp_path / "sbin"
    sbin.mkdir()
    tool = sbin / "depmod-xyz"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setattr(preflight, "SBIN_DIRS", (str(sbin),))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # Debian's default for a plain user
    reqs = (preflight.Requirement("kmod", command="depmod-xyz"),)
    assert preflight.missing_packages(KernelVersion(6, 1, 0), reqs) == []
    assert preflight.tool_path() == f"/usr/bin:/bin:{sbin}"


def test_make_runs_with_the_sbin_dirs_on_its_path(tree, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    build(options(tree, dry_run=True))
    packaging = [line for line in capsys.readouterr().out.splitlines() if "bindeb-pkg" in line]
    assert packaging and "PATH=/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin" in packaging[0]


@pytest.mark.parametrize(
    ("do_mounts", "block"),
    [
        ("static int __init mount_nodev_root(char *root_device_name)\n", "n"),  # 6.5+
        ("static int __init mount_nodev_root(void)\n", "y"),  # 5.11-6.4: the name cut short
        ("void __init mount_block_root(char *name, int flags)\n", "y"),  # 5.10
    ],
)
def test_the_vm_kernel_gets_a_block_layer_only_where_its_9p_root_needs_one(tree, do_mounts, block):
    (tree / "init").mkdir(exist_ok=True)
    (tree / "init/do_mounts.c").write_text(do_mounts)
    build(options(tree, packages=False))
    config = kconfig.parse_options((BuildDir.for_tree(tree, "vm").obj / ".config").read_text())
    assert config["CONFIG_BLOCK"] == block
