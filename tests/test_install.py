"""install/uninstall run sudo, dpkg and grub on a user's machine: here the exact command
sequence is checked against a fake host (grub.cfg, /etc/default/grub, efivars)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import List

import pytest

from memuse_kit.building import artifacts, preflight
from memuse_kit.building.build import BuildOptions, build
from memuse_kit.core.errors import KitError
from memuse_kit.core.runner import Runner
from memuse_kit.installing import install
from memuse_kit.patching import patcher
from tests.fakelinux import make_fake_buildable_tree

UUID = "0f3c1a2b-1111-2222-3333-444455556666"
RELEASE = "7.2.0-memuse"
OLD_ID = f"gnulinux-5.11.0-37-generic-advanced-{UUID}"
NEW_ID = f"gnulinux-{RELEASE}-advanced-{UUID}"
# grub.cfg as update-grub writes it (entry lines are long there too)
GRUB_CFG = f"""\
menuentry 'Ubuntu' --class ubuntu $menuentry_id_option 'gnulinux-simple-{UUID}' {{
}}
submenu 'Advanced options for Ubuntu' $menuentry_id_option 'gnulinux-advanced-{UUID}' {{
	menuentry 'Ubuntu, with Linux 5.11' $menuentry_id_option '{OLD_ID}' {{
	}}
}}
"""
NEW_ENTRY = f"""\
	menuentry 'Ubuntu, with Linux {RELEASE}' $menuentry_id_option '{NEW_ID}' {{
	}}
"""
ENTRY = f"gnulinux-advanced-{UUID}>{NEW_ID}"


class FakeSystem(Runner):
    """Records commands instead of running them; dpkg -i runs the kernel hook's update-grub."""

    def __init__(self, host: install.Host) -> None:
        super().__init__(dry_run=False)
        self.host = host
        self.commands: List[List[str]] = []

    def run(self, cmd, **kwargs):
        self.commands.append(list(cmd))
        if cmd[:2] == ["sudo", "sh"]:  # writes into the host's directories: run it for real
            subprocess.run(cmd[1:], stdin=subprocess.DEVNULL, check=True, timeout=30)
        if "dpkg" in cmd and "-i" in cmd:
            text = self.host.grub_cfg.read_text()
            self.host.grub_cfg.write_text(text.replace("\t}\n}\n", "\t}\n" + NEW_ENTRY + "}\n"))


@pytest.fixture
def built(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MEMUSE_KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(preflight, "check_packages", lambda kernel: None)
    tree = make_fake_buildable_tree(tmp_path / "linux")
    patcher.apply_plan(patcher.plan_patch(tree))
    result = build(BuildOptions(tree=tree, config="vm-full", use_ccache=False))
    return tree, result.build_dir


@pytest.fixture
def host(tmp_path: Path) -> install.Host:
    root = tmp_path / "host"
    (root / "boot/grub").mkdir(parents=True)
    (root / "boot/grub/grub.cfg").write_text(GRUB_CFG)
    (root / "etc/default").mkdir(parents=True)
    (root / "etc/default/grub").write_text("GRUB_DEFAULT=0\n")
    (root / "efivars").mkdir()
    (root / "lib/modules").mkdir(parents=True)
    # a distribution kernel newer than the memuse one: GRUB's first entry stays that one
    (root / "boot/vmlinuz-9.1.0-1-generic").write_bytes(b"")
    return install.Host(
        grub_cfg=root / "boot/grub/grub.cfg",
        default_grub=root / "etc/default/grub",
        default_grub_dir=root / "etc/default/grub.d",
        grubenv=root / "boot/grub/grubenv",
        secure_boot_vars=root / "efivars",
        boot_dir=root / "boot",
        modules_dir=root / "lib/modules",
        systemd_boot_confs=(root / "boot/efi/loader/loader.conf",),
        running_release="5.11.0-37-generic",
        euid=1000,
        # the stand-in build's packages are not real .debs; read_package_size has its own test
        package_size=lambda deb: install.PackageSize(12 * install.MIB, 40 * install.MIB),
        can_sudo=lambda interactive: True,
    )


def debs(bd) -> List[str]:
    return [
        str(bd.artifacts / f"linux-{kind}-{RELEASE}_7.2.0-1_amd64.deb")
        for kind in ("headers", "image")
    ]


def test_install_runs_dpkg_then_boots_the_kernel_once(built, host):
    tree, bd = built
    system = FakeSystem(host)
    install.install(bd, tree, host, system)
    assert system.commands == [
        ["sudo", "dpkg", "-i", *debs(bd)],
        ["sudo", "grub-reboot", ENTRY],
    ]


def test_install_as_root_needs_no_sudo(built, host):
    tree, bd = built
    host.euid = 0
    system = FakeSystem(host)
    install.install(bd, tree, host, system)
    assert system.commands[0][:2] == ["dpkg", "-i"]


def test_default_sets_the_saved_entry(built, host):
    tree, bd = built
    host.default_grub.write_text("GRUB_DEFAULT=saved\n")
    system = FakeSystem(host)
    install.install(bd, tree, host, system, default=True)
    assert system.commands[-1] == ["sudo", "grub-set-default", ENTRY]


def test_default_without_saved_grub_default_is_refused_before_anything_runs(built, host):
    tree, bd = built
    system = FakeSystem(host)
    with pytest.raises(KitError, match="GRUB_DEFAULT=saved"):
        install.install(bd, tree, host, system, default=True)
    assert system.commands == []


def test_dry_run_prints_the_same_commands_and_changes_nothing(built, host, capsys):
    tree, bd = built
    install.install(bd, tree, host, Runner(dry_run=True))
    out = capsys.readouterr().out.splitlines()
    assert out == [f"sudo dpkg -i {' '.join(debs(bd))}", f"sudo grub-reboot '{ENTRY}'"]
    assert host.grub_cfg.read_text() == GRUB_CFG


def test_missing_grub_entry_after_dpkg_is_an_error(built, host):
    tree, bd = built
    system = FakeSystem(host)
    system.run = lambda cmd, **kw: system.commands.append(list(cmd))  # no update-grub
    with pytest.raises(KitError, match="update-grub did not add"):
        install.install(bd, tree, host, system)
    assert len(system.commands) == 1


def test_secure_boot_gets_a_warning(built, host, capsys):
    tree, bd = built
    (host.secure_boot_vars / "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c").write_bytes(
        b"\x06\x00\x00\x00\x01"
    )
    install.install(bd, tree, host, FakeSystem(host))
    assert "Secure Boot is on" in capsys.readouterr().err


def test_packages_not_from_this_tree_are_refused(built, host):
    tree, bd = built
    patcher.revert(tree)
    system = FakeSystem(host)
    with pytest.raises(KitError, match="not built from"):
        install.install(bd, tree, host, system)
    assert system.commands == []


def test_damaged_packages_are_refused(built, host):
    tree, bd = built
    Path(debs(bd)[1]).write_bytes(b"truncated")
    with pytest.raises(KitError, match="do not match their SHA256SUMS"):
        install.install(bd, tree, host, FakeSystem(host))


def test_missing_packages_are_refused(built, host):
    tree, bd = built
    for deb in debs(bd):
        Path(deb).unlink()
    with pytest.raises(KitError, match="run invoke build first"):
        install.install(bd, tree, host, FakeSystem(host))


def test_packages_older_than_a_no_packages_rebuild_are_refused(built, host):
    """The packages of the last full build are still there, same names and sums: only the
    record knows the kernel moved on without them."""
    tree, bd = built
    build(BuildOptions(tree=tree, config="vm-full", use_ccache=False, packages=False))
    assert all(Path(deb).is_file() for deb in debs(bd)) and all(artifacts.verify_sums(bd).values())
    system = FakeSystem(host)
    with pytest.raises(KitError, match="last built with --no-packages"):
        install.install(bd, tree, host, system)
    assert system.commands == []
    build(BuildOptions(tree=tree, config="vm-full", use_ccache=False))
    install.install(bd, tree, host, FakeSystem(host))


def test_uninstall_dry_run_prints_the_purge(host, capsys):
    install.uninstall(RELEASE, host, Runner(dry_run=True))
    assert capsys.readouterr().out.splitlines() == [
        f"sudo dpkg --purge linux-image-{RELEASE} linux-headers-{RELEASE}"
    ]


def test_uninstall_command_sequence(host, monkeypatch):
    monkeypatch.setattr(install, "_installed", lambda package: True)
    system = FakeSystem(host)
    install.uninstall(RELEASE, host, system)
    assert system.commands == [
        ["sudo", "dpkg", "--purge", f"linux-image-{RELEASE}", f"linux-headers-{RELEASE}"]
    ]


def test_uninstalling_the_running_kernel_is_refused(host):
    host.running_release = RELEASE
    with pytest.raises(KitError, match="is the running kernel"):
        install.uninstall(RELEASE, host, FakeSystem(host))


def test_packages_handed_in_without_a_tree_install(built, host):
    _, bd = built
    system = FakeSystem(host)
    install.install(bd, None, host, system)
    assert system.commands == [
        ["sudo", "dpkg", "-i", *debs(bd)],
        ["sudo", "grub-reboot", ENTRY],
    ]


def test_a_machine_without_grub_is_refused_before_anything_runs(built, host):
    tree, bd = built
    host.grub_cfg.unlink()
    system = FakeSystem(host)
    with pytest.raises(KitError, match="only handles machines GRUB boots"):
        install.install(bd, tree, host, system)
    assert system.commands == []


def test_systemd_boot_is_named_and_refused(built, host):
    tree, bd = built
    host.grub_cfg.unlink()
    loader = host.systemd_boot_confs[0]
    loader.parent.mkdir(parents=True)
    loader.write_text("timeout 3\n")
    system = FakeSystem(host)
    with pytest.raises(KitError, match="systemd-boot"):
        install.install(bd, tree, host, system)
    assert system.commands == []


@pytest.mark.parametrize("short", ["boot", "modules"])
def test_too_little_space_is_refused_before_dpkg(built, host, short, monkeypatch):
    tree, bd = built
    boot_dev, modules_dev = 1, 2  # separate filesystems, so each need is checked alone

    def free(path: Path):
        is_boot = path == host.boot_dir
        small = 10 * install.MIB if (short == "boot") == is_boot else 10 << 30
        return small, boot_dev if is_boot else modules_dev

    monkeypatch.setattr(host, "free_bytes", free)
    system = FakeSystem(host)
    with pytest.raises(KitError, match=r"only 10 MiB free for .*(boot|modules)"):
        install.install(bd, tree, host, system)
    assert system.commands == []


def test_space_on_one_filesystem_counts_kernel_initramfs_and_modules_together(built, host):
    tree, bd = built
    (host.boot_dir / "initrd.img-5.11.0-37-generic").write_bytes(b"x" * 4096)
    need = 2 * 40 * install.MIB + 4096 + install.SPACE_MARGIN_BYTES  # two packages
    host.free_bytes = lambda path: (need - 1, 7)  # type: ignore[method-assign]
    with pytest.raises(KitError, match="only"):
        install.install(bd, tree, host, FakeSystem(host))
    host.free_bytes = lambda path: (need, 7)  # type: ignore[method-assign]
    install.install(bd, tree, host, FakeSystem(host))


def test_an_esp_this_user_may_not_read_does_not_hide_the_missing_grub(host):
    host.grub_cfg.unlink()
    esp = host.systemd_boot_confs[0].parent.parent
    esp.mkdir(parents=True)
    esp.chmod(0o000)  # Debian mounts /boot/efi with umask=0077; root ignores the mode
    host.systemd_boot_confs = [esp / "loader" / "loader.conf"]
    try:
        with pytest.raises(KitError, match="only handles machines GRUB boots"):
            install.check_bootloader(host)
    finally:
        esp.chmod(0o755)


def test_no_sudo_is_refused_before_anything_runs(built, host):
    tree, bd = built
    host.can_sudo = lambda interactive: False
    system = FakeSystem(host)
    with pytest.raises(KitError, match="sudo refused this user"):
        install.install(bd, tree, host, system)
    assert system.commands == []


def test_package_sizes_are_read_from_a_real_deb(tmp_path):
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        "Package: linux-image-9.9.9-memuse\nVersion: 1\nArchitecture: all\n"
        "Maintainer: t <t@example.org>\nInstalled-Size: 300\nDescription: test\n"
    )
    (root / "boot").mkdir()
    (root / "boot/vmlinuz-9.9.9-memuse").write_bytes(b"k" * 5000)
    (root / "lib/modules/9.9.9-memuse").mkdir(parents=True)
    (root / "lib/modules/9.9.9-memuse/a.ko").write_bytes(b"m" * 7000)
    deb = tmp_path / "image.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(deb)], check=True,
                   capture_output=True)  # fmt: skip
    assert install.read_package_size(deb) == install.PackageSize(5000, 300 * 1024)
    with pytest.raises(KitError, match=r"not a readable \.deb"):
        install.read_package_size(root / "boot/vmlinuz-9.9.9-memuse")


def test_uninstall_clears_a_saved_default_that_names_the_kernel(host, monkeypatch):
    monkeypatch.setattr(install, "_installed", lambda package: True)
    host.grubenv.write_text(f"# GRUB Environment Block\nsaved_entry={ENTRY}\n")
    system = FakeSystem(host)
    install.uninstall(RELEASE, host, system)
    assert system.commands[-1] == [
        "sudo",
        "grub-editenv",
        str(host.grubenv),
        "unset",
        "saved_entry",
    ]


def test_uninstall_fails_when_grub_still_lists_the_kernel(host, monkeypatch):
    monkeypatch.setattr(install, "_installed", lambda package: True)
    host.grub_cfg.write_text(GRUB_CFG + NEW_ENTRY)
    with pytest.raises(KitError, match="still lists"):
        install.uninstall(RELEASE, host, FakeSystem(host))


RUNNING_ENTRY = f"gnulinux-advanced-{UUID}>{OLD_ID}"


@pytest.fixture
def newest(host):
    """The memuse kernel is the newest: update-grub gives it GRUB's first entry."""
    (host.boot_dir / "vmlinuz-9.1.0-1-generic").unlink()
    (host.boot_dir / "vmlinuz-5.11.0-37-generic").write_bytes(b"")
    return host


def test_a_newest_memuse_kernel_keeps_the_running_kernel_as_grubs_default(built, newest):
    tree, bd = built
    system = FakeSystem(newest)
    install.install(bd, tree, newest, system)
    drop_in = newest.default_grub_dir / install.DROP_IN_NAME
    assert [c[:2] for c in system.commands] == [
        ["sudo", "dpkg"], ["sudo", "sh"], ["sudo", "update-grub"],
        ["sudo", "grub-set-default"], ["sudo", "grub-reboot"],
    ]  # fmt: skip
    assert drop_in.read_text() == install.GRUB_DROP_IN_TEXT  # written by the real command
    assert install.grub_default(newest) == "saved"
    assert system.commands[3] == ["sudo", "grub-set-default", RUNNING_ENTRY]
    assert system.commands[4] == ["sudo", "grub-reboot", ENTRY]


def test_saved_default_with_nothing_saved_gets_the_running_kernel_saved(built, newest):
    tree, bd = built
    newest.default_grub.write_text("GRUB_DEFAULT=saved\n")
    system = FakeSystem(newest)
    install.install(bd, tree, newest, system)
    assert system.commands[1:] == [
        ["sudo", "grub-set-default", RUNNING_ENTRY], ["sudo", "grub-reboot", ENTRY],
    ]  # fmt: skip


def test_a_saved_choice_of_the_user_is_left_alone(built, newest):
    tree, bd = built
    newest.default_grub.write_text("GRUB_DEFAULT=saved\n")
    newest.grubenv.write_text(f"saved_entry={RUNNING_ENTRY}\n")
    system = FakeSystem(newest)
    install.install(bd, tree, newest, system)
    assert system.commands[1:] == [["sudo", "grub-reboot", ENTRY]]


def test_grub_default_is_read_as_update_grub_reads_it(host):
    assert install.grub_default(host) == "0"
    host.default_grub_dir.mkdir(parents=True)
    (host.default_grub_dir / install.DROP_IN_NAME).write_text(install.GRUB_DROP_IN_TEXT)
    assert install.grub_default(host) == "saved"


def test_a_running_kernel_missing_from_the_menu_is_refused_when_a_pin_is_needed(built, newest):
    tree, bd = built
    newest.running_release = "5.4.0-1-generic"
    system = FakeSystem(newest)
    with pytest.raises(KitError, match="would become GRUB's default"):
        install.install(bd, tree, newest, system)
    assert system.commands == []


def test_uninstall_of_the_last_memuse_kernel_removes_the_pin(newest, monkeypatch):
    monkeypatch.setattr(install, "_installed", lambda package: True)
    newest.default_grub_dir.mkdir(parents=True)
    drop_in = newest.default_grub_dir / install.DROP_IN_NAME
    drop_in.write_text(install.GRUB_DROP_IN_TEXT)
    system = FakeSystem(newest)
    install.uninstall(RELEASE, newest, system)
    assert system.commands[1:] == [
        ["sudo", "rm", "-f", str(drop_in)],
        ["sudo", "grub-editenv", str(newest.grubenv), "unset", "saved_entry"],
        ["sudo", "update-grub"],
    ]


def rewrite_record(bd, **fields) -> None:
    data = json.loads(bd.metadata.read_text())
    data.update(fields)
    bd.metadata.write_text(json.dumps(data))


def test_a_record_of_another_schema_is_one_line_and_nothing_runs(built, host):
    tree, bd = built
    rewrite_record(bd, schema=99)
    system = FakeSystem(host)
    with pytest.raises(KitError) as refused:
        install.install(bd, tree, host, system)
    assert "schema 99" in str(refused.value) and "\n" not in str(refused.value)
    assert system.commands == []


def test_a_record_from_before_the_schema_number_still_installs(built, host):
    """Written before records had a schema (schema 1): memuse's number alone, as syscall_nr."""
    tree, bd = built
    data = json.loads(bd.metadata.read_text())
    assert data.pop("schema") == 2
    data["syscall_nr"] = data.pop("syscalls")["memuse"]
    bd.metadata.write_text(json.dumps(data))
    system = FakeSystem(host)
    install.install(bd, tree, host, system)
    assert ["sudo", "dpkg", "-i", *debs(bd)] in system.commands


def test_a_pin_that_does_not_take_stops_before_arming_the_boot(built, newest, monkeypatch):
    tree, bd = built
    system = FakeSystem(newest)
    monkeypatch.setattr(install, "GRUB_DROP_IN_TEXT", "# GRUB_DEFAULT=saved is not set here\n")
    with pytest.raises(KitError, match="could not set GRUB_DEFAULT=saved"):
        install.install(bd, tree, newest, system)
    assert [c[1] for c in system.commands] == ["dpkg", "sh"]  # no grub-reboot


def test_the_fast_vm_kernel_is_refused_before_anything_runs(tmp_path: Path, host, monkeypatch):
    """`--config vm` has no ACPI: it boots under QEMU only, so install names the fix."""
    monkeypatch.setenv("MEMUSE_KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(preflight, "check_packages", lambda kernel: None)
    tree = make_fake_buildable_tree(tmp_path / "linux")
    patcher.apply_plan(patcher.plan_patch(tree))
    bd = build(BuildOptions(tree=tree, config="vm", use_ccache=False)).build_dir
    assert "CONFIG_ACPI=n" in (bd.obj / ".config").read_text()
    system = FakeSystem(host)
    with pytest.raises(KitError, match=r"has no CONFIG_ACPI or CONFIG_BLOCK: .* --config vm-full"):
        install.install(bd, tree, host, system)
    assert system.commands == []
