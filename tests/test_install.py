"""install/uninstall run sudo, dpkg and grub on a user's machine: here the exact command
sequence is checked against a fake host (grub.cfg, /etc/default/grub, efivars)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import pytest

from memuse_kit import install, patcher, preflight
from memuse_kit.build import BuildOptions, build
from memuse_kit.errors import KitError
from memuse_kit.runner import Runner
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
    result = build(BuildOptions(tree=tree, config="vm", use_ccache=False))
    return tree, result.build_dir


@pytest.fixture
def host(tmp_path: Path) -> install.Host:
    root = tmp_path / "host"
    (root / "boot/grub").mkdir(parents=True)
    (root / "boot/grub/grub.cfg").write_text(GRUB_CFG)
    (root / "etc/default").mkdir(parents=True)
    (root / "etc/default/grub").write_text("GRUB_DEFAULT=0\n")
    (root / "efivars").mkdir()
    return install.Host(
        grub_cfg=root / "boot/grub/grub.cfg",
        default_grub=root / "etc/default/grub",
        secure_boot_vars=root / "efivars",
        running_release="5.11.0-37-generic",
        euid=1000,
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
