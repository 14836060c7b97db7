"""The test machine: a Debian 12 disk built rootless from Debian's archive, booted in QEMU
through OVMF, GRUB and its initramfs, driven over ssh. Few boots: each takes a minute or so."""

from __future__ import annotations

import datetime
import os
import time

import pytest

from memuse_kit.core.errors import KitError
from memuse_kit.installing.install import grub_entry_id
from memuse_kit.trying import machine
from memuse_kit.trying.machine_image import Recipe

pytestmark = [
    pytest.mark.slow,
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() == 0, reason="mmdebstrap --mode=unshare; CI runs as a user"),
]

BOOT_TIMEOUT = 900


@pytest.fixture(scope="module")
def image() -> machine.MachineImage:
    return machine.ensure_image()


@pytest.fixture(scope="module")
def running(image, tmp_path_factory):
    """One machine on virtio-blk for the tests that only look around (it is rebooted last)."""
    log = tmp_path_factory.mktemp("machine") / "console-virtio.log"
    with machine.Machine(image, disk_bus="virtio", log=log) as booted:
        started = time.monotonic()
        booted.wait_ssh(timeout=BOOT_TIMEOUT)
        booted.boot_seconds = time.monotonic() - started  # type: ignore[attr-defined]
        yield booted


def _root_device(m: machine.Machine) -> str:
    return m.ssh(["findmnt", "-n", "-o", "SOURCE", "/"]).stdout.strip()


def test_image_is_cached_and_records_its_creation(image, measured):
    assert image.root.name == Recipe().digest()
    assert image.disk.is_file() and image.ssh_key.is_file()
    assert not image.disk.stat().st_mode & 0o222, "the cached disk is only ever a backing file"
    created = datetime.datetime.fromisoformat(image.info["created"])
    assert created <= datetime.datetime.now(datetime.timezone.utc)
    durations = image.info["durations"]
    assert durations["mmdebstrap"] > 0 and durations["first_boot"] > 0
    assert image.kernel_release.endswith("-amd64")
    started = time.monotonic()
    again = machine.ensure_image()
    assert again.root == image.root and again.info["created"] == image.info["created"]
    assert time.monotonic() - started < 10, "a cached image must be reused, not rebuilt"
    measured.append(
        f"machine image: mmdebstrap {durations['mmdebstrap']:.0f}s, assembling "
        f"{durations['assemble']:.0f}s, first boot {durations['first_boot']:.0f}s, "
        f"disk {image.disk.stat().st_size / 2**20:.0f} MiB"
    )


# before `running` exists, so that two guests never share the two cores
def test_nvme_boots_and_a_short_wait_names_the_console(image, tmp_path, measured):
    log = tmp_path / "console-nvme.log"
    with machine.Machine(image, disk_bus="nvme", log=log) as m:
        started = time.monotonic()
        while not m.console_tail(5) and time.monotonic() - started < 120:
            time.sleep(1)
        with pytest.raises(KitError) as timed_out:
            m.wait_ssh(timeout=1)
        message = str(timed_out.value)
        assert "ssh did not answer within 1s" in message and str(log) in message
        named = message.splitlines()[1:]
        console = "\n".join(m.console_tail(10**6))
        assert named and all(line.strip() in console for line in named)
        m.wait_ssh(timeout=BOOT_TIMEOUT)
        measured.append(f"machine boot to ssh, nvme: {time.monotonic() - started:.0f}s")
        assert _root_device(m) == "/dev/nvme0n1p2"
        assert m.ssh(["uname", "-r"]).stdout.strip() == image.kernel_release


def test_virtio_boots_the_stock_kernel_through_grub(running, image, measured):
    measured.append(f"machine boot to ssh, virtio: {running.boot_seconds:.0f}s")
    assert _root_device(running) == "/dev/vda2"
    assert running.ssh(["uname", "-r"]).stdout.strip() == image.kernel_release
    cmdline = running.ssh(["cat", "/proc/cmdline"]).stdout
    # BOOT_IMAGE is what GRUB's linux command adds: not a direct kernel boot
    assert f"BOOT_IMAGE=/boot/vmlinuz-{image.kernel_release}" in cmdline
    assert f"root=UUID={image.root_uuid}" in cmdline and "console=ttyS0" in cmdline


def test_the_sudo_user_can_sudo_and_the_plain_user_cannot(running, image):
    assert running.ssh(["sudo", "-n", "true"], user=image.sudo_user).returncode == 0
    refused = running.ssh(["sudo", "-n", "true"], user=image.plain_user, check=False)
    assert refused.returncode != 0 and "password is required" in refused.stderr
    with pytest.raises(KitError, match="failed in the machine"):
        running.ssh(["sudo", "-n", "true"], user=image.plain_user)


def test_copy_in_hands_files_over(running, tmp_path):
    (tmp_path / "pkgs").mkdir()
    (tmp_path / "pkgs" / "a.deb").write_bytes(b"not really a package\n")
    (tmp_path / "note.txt").write_text("hello machine\n")
    running.copy_in([tmp_path / "pkgs", tmp_path / "note.txt"], "/tmp/in")
    listing = running.ssh("cat /tmp/in/note.txt; cat /tmp/in/pkgs/a.deb").stdout
    assert listing == "hello machine\nnot really a package\n"


def test_grub_cfg_is_the_machines_own_with_the_advanced_submenu(running, image):
    grub_cfg = running.ssh(["cat", "/boot/grub/grub.cfg"]).stdout
    assert "submenu 'Advanced options for Debian GNU/Linux'" in grub_cfg
    entry = grub_entry_id(grub_cfg, image.kernel_release)
    assert f"'{entry.split('>')[-1]}'" in grub_cfg
    assert "first boot" not in grub_cfg  # the bootstrap configuration is gone


# last: it reboots the shared machine
def test_grub_reboot_is_one_shot_on_this_disk(running, image, measured):
    grub_cfg = running.ssh(["cat", "/boot/grub/grub.cfg"]).stdout
    entry = grub_entry_id(grub_cfg, image.kernel_release)
    running.ssh(["sudo", "grub-reboot", entry])
    assert f"next_entry={entry}" in running.ssh(["grub-editenv", "list"]).stdout
    before = running.boot_id()
    console_before = len(running.log.read_bytes())
    started = time.monotonic()
    after = running.reboot(timeout=BOOT_TIMEOUT)
    measured.append(f"machine reboot to ssh, virtio: {time.monotonic() - started:.0f}s")
    assert after != before
    env = running.ssh(["grub-editenv", "list"]).stdout.splitlines()
    assert not [line for line in env if line.startswith("next_entry=") and line != "next_entry="]
    # GRUB (on the serial console) booted the submenu's entry, not the default one
    console = running.log.read_bytes()[console_before:].decode(errors="replace")
    assert f"Booting `Debian GNU/Linux, with Linux {image.kernel_release}'" in console
    assert running.ssh(["uname", "-r"]).stdout.strip() == image.kernel_release
