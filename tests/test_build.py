from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from memuse_client.build_record import BuildRecord
from memuse_kit.building import artifacts, compiler, kconfig, preflight
from memuse_kit.building.build import BuildOptions, build, where_the_time_went
from memuse_kit.building.builddir import BuildDir
from memuse_kit.core.errors import KitError
from memuse_kit.patching import patcher, templates
from tests import deb_support
from tests.fakelinux import patched_fake_tree, snapshot


@pytest.fixture
def tree(tmp_path: Path, monkeypatch) -> Path:
    return patched_fake_tree(tmp_path, monkeypatch)


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
    assert set(meta["durations"]) == {"preflight", "config", "kernel", "compile", "link", "package"}
    assert meta["durations"]["compile"] + meta["durations"]["link"] <= meta["durations"]["kernel"]
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


def test_package_sums_come_from_sha256sums_only_when_it_is_newer(tree):
    """A no-op build records the packages' sums from SHA256SUMS instead of reading 20 MB of
    packages again; a package written after SHA256SUMS is read."""
    result = build(options(tree))
    bd, image = result.build_dir, artifacts.image_package(result.build_dir, result.release)
    real = artifacts.package_sums(bd, result.packages)
    assert metadata(tree)["artifacts"] == [{"file": n, "sha256": d} for n, d in real.items()]
    sums = bd.artifacts / artifacts.SUMS
    sums.write_text(sums.read_text().replace(real[image.name], "0" * 64))
    assert artifacts.package_sums(bd, [image]) == {image.name: "0" * 64}
    os.utime(image, ns=(sums.stat().st_mtime_ns + 10**9,) * 2)
    assert artifacts.package_sums(bd, [image]) == {image.name: real[image.name]}


@pytest.fixture
def generations(monkeypatch) -> list:
    """Every configuration generate() makes (the defconfig, merge and olddefconfig runs)."""
    calls: list = []
    real = kconfig.generate

    def counting(request, runner):
        calls.append(request)
        return real(request, runner)

    monkeypatch.setattr(kconfig, "generate", counting)
    return calls


def test_a_no_op_build_does_not_configure_again(tree, generations):
    build(options(tree))
    assert len(generations) == 1
    config = BuildDir.for_tree(tree, "vm").obj / ".config"
    stamp = config.stat().st_mtime_ns
    again = build(options(tree))
    assert len(generations) == 1 and again.compiled == 0
    assert config.stat().st_mtime_ns == stamp
    assert metadata(tree)["config"]["inputs_sha256"]


@pytest.mark.parametrize(
    "change",
    [
        "fragment",
        "kconfig",
        "defconfig",
        "9p root",
        "compiler",
        "debug_info",
        "reconfigure",
        "user edit",
    ],
)
def test_what_the_configuration_is_made_of_makes_it_configure_again(
    tree, generations, tmp_path, monkeypatch, change
):
    fragment = tmp_path / "extra.config"
    fragment.write_text("CONFIG_EXTRA=y\n")
    given: dict = {"fragments": (str(fragment),)}
    if change == "defconfig":  # vm starts from allnoconfig, vm-full from the defconfig
        given["config"] = "vm-full"
    build(options(tree, **given))
    build(options(tree, **given))
    assert len(generations) == 1
    if change == "fragment":
        fragment.write_text("CONFIG_EXTRA=n\n")
    elif change == "kconfig":
        kconfig_file = tree / "arch/x86/Kconfig"
        os.utime(kconfig_file, ns=(0, kconfig_file.stat().st_mtime_ns + 10**9))
    elif change == "defconfig":
        (tree / "arch/x86/configs").mkdir(parents=True)
        (tree / "arch/x86/configs/x86_64_defconfig").write_text("CONFIG_64BIT=y\n")
    elif change == "9p root":  # a 5.10 tree mounts its root through the block layer
        (tree / "init").mkdir(exist_ok=True)
        (tree / "init/do_mounts.c").write_text("void __init mount_block_root(char *name)\n")
    elif change == "compiler":
        monkeypatch.setattr(compiler, "version_of", lambda command: "99.0.0")
    elif change == "debug_info":
        given["debug_info"] = True
    elif change == "reconfigure":
        given["reconfigure"] = True
    else:
        config = BuildDir.for_tree(tree, "vm").obj / ".config"
        config.write_text(config.read_text() + "CONFIG_MINE=y\n")
        with pytest.raises(KitError, match="was edited since memuse-kit wrote it"):
            build(options(tree, **given))
        assert len(generations) == 2
        return
    build(options(tree, **given))
    assert len(generations) == 2


def test_the_packages_stay_current_beside_copies_of_modules(tree, capsys):
    """invoke vm puts copies of the modules in obj/.virtme_mods: not the build's modules."""
    first = build(options(tree))
    copy = first.build_dir.obj / ".virtme_mods/lib/modules/0.0.0/kernel/copy.ko"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"module")
    capsys.readouterr()
    build(options(tree))
    assert "packages are up to date" in capsys.readouterr().out


def test_a_rebuilt_module_is_packaged_again(tree, capsys):
    first = build(options(tree))
    module = first.build_dir.obj / "drivers/x/x.ko"
    module.parent.mkdir(parents=True)
    module.write_bytes(b"module")
    (first.build_dir.obj / "modules.order").write_text("drivers/x/x.o\n")
    capsys.readouterr()
    build(options(tree))
    assert "packages are up to date" not in capsys.readouterr().out


def test_the_build_writes_nothing_into_the_tree(tree):
    """merge_config.sh makes its temporary files in its working directory."""
    before = snapshot(tree)
    for directory in [tree, *(p for p in tree.rglob("*") if p.is_dir())]:
        directory.chmod(0o555)
    try:
        build(options(tree))
    finally:
        for directory in [tree, *(p for p in tree.rglob("*") if p.is_dir())]:
            directory.chmod(0o755)
    assert snapshot(tree) == before


def edit_memuse_template(tree: Path, tmp_path: Path, monkeypatch) -> None:
    """A one-line edit to memuse's body in a copy of the templates, patched into the tree."""
    copy = tmp_path / "templates"
    shutil.copytree(templates.TEMPLATES_DIR, copy)
    monkeypatch.setattr(templates, "TEMPLATES_DIR", copy)
    body = copy / "syscalls/memuse/impl.c.j2"
    body.write_text(body.read_text().replace("return -EINVAL;", "return -EINVAL; /* v2 */"))
    patcher.apply_plan(patcher.plan_patch(tree))


def test_template_edit_recompiles_only_the_syscall_s_object(tree, tmp_path, monkeypatch):
    build(options(tree))
    edit_memuse_template(tree, tmp_path, monkeypatch)
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


def test_the_edit_loop_configures_nothing_and_packages_nothing(
    tree, tmp_path, monkeypatch, generations
):
    """invoke patch build --no-packages vm after a template edit: one object and the link;
    the configuration's inputs did not change, so it is not generated again."""
    build(options(tree, packages=False))
    assert len(generations) == 1
    edit_memuse_template(tree, tmp_path, monkeypatch)
    result = build(options(tree, packages=False))
    assert len(generations) == 1
    assert result.compiled == 1 and result.packages == []
    assert b"/* v2 */" in result.build_dir.image().read_bytes()
    assert "bindeb-pkg" not in result.build_dir.log.read_text()
    assert metadata(tree)["packaged"] is False


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


def test_progress_lines_give_the_rate_and_the_time_left():
    import io

    from memuse_kit.building.progress import BuildProgress

    now = [100.0]
    out = io.StringIO()
    progress = BuildProgress("build", 400, out=out, interval=30, clock=lambda: now[0])
    for step in range(100):
        now[0] = 100.0 + (step + 1) * 0.5  # two objects a second
        progress.feed(f"  CC      kernel/o{step}.o\n")
    lines = out.getvalue().splitlines()
    assert lines[0] == "build: 15% (60 objects, 2.0/s, about 2m50s left), 0m30s"
    assert progress.eta() == pytest.approx(150.0)
    for _ in range(400):  # the estimate was short: no time left is claimed
        progress.feed("  CC      kernel/more.o\n")
    assert progress.eta() is None
    progress.close(True)
    assert out.getvalue().splitlines()[-1] == "build: done (500 objects compiled, 10.0/s), 0m50s"


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


def test_progress_splits_compiling_from_linking_at_the_first_vmlinux_step():
    import io

    from memuse_kit.building.progress import BuildProgress

    now = [0.0]
    progress = BuildProgress("build", 10, out=io.StringIO(), clock=lambda: now[0])
    for line, at in [
        ("  CC      kernel/sys.o", 50.0),
        ("  AR      kernel/built-in.a", 60.0),
        ("  AR      vmlinux.a", 300.0),  # 6.1+; 5.10 begins with "  LD      vmlinux.o"
        ("  LD      vmlinux.o", 301.0),
        ("Kernel: arch/x86/boot/bzImage is ready  (#1)", 320.0),
    ]:
        now[0] = at
        progress.feed(line + "\n")
    now[0] = 321.0
    progress.close(True)
    now[0] = 999.0  # read later: the split is of make's run, not of when it is asked
    assert progress.split() == (300.0, 21.0)


def test_a_build_that_links_nothing_spent_its_time_compiling():
    import io

    from memuse_kit.building.progress import BuildProgress

    now = [0.0]
    progress = BuildProgress("build", 10, out=io.StringIO(), clock=lambda: now[0])
    now[0] = 7.0
    progress.close(True)
    assert progress.split() == (7.0, 0.0)


def test_the_build_ends_with_where_the_time_went(tree, capsys):
    build(options(tree))
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("time: "))
    assert re.fullmatch(r"time: configure \d+ s, compile \d+ s, link \d+ s, package \d+ s", line)


def test_the_time_line_gives_ccaches_share_when_it_compiled_anything():
    record = BuildRecord(
        durations={"config": 8.0, "compile": 330.4, "link": 12.0, "package": 41.0},
        ccache={"hits": 850, "misses": 47, "hit_rate": 0.948},
    )
    assert where_the_time_went(record) == (
        "time: configure 8 s, compile 5m30s, link 12 s, package 41 s; "
        "ccache answered 850 of 897 compiles (95%)"
    )
