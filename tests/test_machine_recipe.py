"""The test machine without booting it: its recipe's hash, its QEMU command, its console."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from memuse_kit.core.errors import KitError
from memuse_kit.trying import machine, machine_image
from memuse_kit.trying.machine_image import MachineImage, Recipe


@pytest.fixture
def image(tmp_path, monkeypatch) -> MachineImage:
    monkeypatch.setenv("MEMUSE_KIT_CACHE", str(tmp_path / "cache"))
    info = {"users": {"sudo": "tester", "plain": "nosudo"}, "kernel_release": "6.1.0-1-amd64"}
    return MachineImage(tmp_path / "image", info)


def test_the_recipe_hash_follows_packages_settings_and_scripts(monkeypatch):
    recipe = Recipe()
    digest = recipe.digest()
    assert digest == Recipe().digest()
    more = dataclasses.replace(recipe, packages=(*recipe.packages, "strace"))
    assert more.digest() != recipe.digest()
    assert dataclasses.replace(recipe, grub_default="saved").digest() != recipe.digest()
    monkeypatch.setattr(machine_image, "CONFIGURE_SCRIPT", machine_image.CONFIGURE_SCRIPT + "#\n")
    assert Recipe().digest() != digest


def test_the_image_comes_only_from_debians_archive():
    sources = Recipe().sources()
    assert sources and all(line.split()[1].startswith("http://deb.debian.org/") for line in sources)


@pytest.mark.parametrize(
    "bus, device",
    [
        ("virtio", "virtio-blk-pci,drive=root"),
        ("nvme", "nvme,drive=root"),
        ("ahci", "ide-hd,drive=root,bus=ide.0"),
    ],
)
def test_qemu_boots_the_overlay_on_the_bus_with_ssh_on_localhost_only(image, bus, device):
    m = machine.Machine(image, disk_bus=bus)
    m.port = 2222
    try:
        cmd = m.qemu_command()
    finally:
        m.stop()
    assert any(arg.startswith(device) for arg in cmd) and "tcg" in cmd
    assert "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22" in cmd
    assert f"if=none,id=root,format=qcow2,file={m.workdir / 'overlay.qcow2'}" in cmd
    assert "-no-reboot" not in cmd  # GRUB's one-shot is only seen across real guest reboots
    assert not m.workdir.exists()


def test_an_unknown_disk_bus_is_refused(image):
    with pytest.raises(KitError, match="disk bus 'scsi'"):
        machine.Machine(image, disk_bus="scsi")


def test_console_tail_strips_terminal_escapes_and_a_cut_line(image, tmp_path: Path):
    log = tmp_path / "console.log"
    log.write_bytes(b"\x1b[2J\x1b[1;1Hfirst\r\n\r\n\x1b[0msecond line\r\n")
    m = machine.Machine(image, log=log)
    try:
        assert m.console_tail(5) == ["first", "second line"]
        assert m.console_tail(1) == ["second line"]
        log.write_bytes(b"x" * 10000 + b"\nlast\n")
        assert m.console_tail(1) == ["last"]
        assert m.console_tail(5) == ["last"]  # the cut line is left out
    finally:
        m.stop()


def test_a_timeout_names_the_console_lines(image, tmp_path: Path):
    log = tmp_path / "console.log"
    log.write_text("".join(f"line {n}\n" for n in range(100)))
    m = machine.Machine(image, log=log)
    try:
        error = m._timeout_error("ssh did not answer", 5)
    finally:
        m.stop()
    lines = str(error).splitlines()
    assert lines[0] == f"ssh did not answer within 5s (console log {log}); its last lines:"
    assert [line.strip() for line in lines[1:]] == [f"line {n}" for n in range(70, 100)]
