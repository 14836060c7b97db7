"""`invoke build install`, then reboot, as a user does it, on a machine that boots through
OVMF, GRUB and initramfs-tools from its own disk (memuse_kit.trying.machine): the packages the host
built are handed in, the project's own `invoke install` runs as the sudo user, and the
machine really reboots, into the memuse kernel once, back to its stock kernel, and so on.

One machine, one disk overlay, booted about nine times in order; each step depends on the
one before, so they are one test with a line of progress per step in the CI log.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Iterator, List, Set, Tuple

import pytest

from memuse_kit.building.build import BuildOptions, build
from memuse_kit.building.builddir import BuildDir
from memuse_kit.building.pipeline import ensure_patched
from memuse_kit.installing import install
from memuse_kit.trying import machine
from memuse_kit.trying.vm import prebuilt_scenarios
from tests import machine_support as kit
from tests.guest_support import is_report
from tests.kernel_trees import TESTED_SYSCALLS, cached_tree

pytestmark = [
    pytest.mark.slow,
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() == 0, reason="kernel builds refuse root; CI runs as a user"),
]

BOOT_TIMEOUT = 900.0
COMMAND_TIMEOUT = 900.0


@pytest.fixture(scope="module")
def memuse_build() -> BuildDir:
    """The 7.2 `vm-full` kernel (defconfig, no debug checks), booted from the disk. The quick
    start's `vm` kernel cannot be: it has no ACPI, EFI or block devices.

    Not the VM tier's `vm-debug` kernel: under TCG its KASAN and lockdep made one boot
    through the machine's initramfs and systemd take more than the 15-minute boot timeout.

    MEMUSE_KIT_TEST_BUILD_DIR=DIR installs the packages of a build you already have instead
    (while working on install itself, without a rebuild after every template edit).
    """
    given = os.environ.get("MEMUSE_KIT_TEST_BUILD_DIR")
    if given:
        return BuildDir(Path(given))
    tree = cached_tree("debian:7.2")
    ensure_patched(tree, syscalls=TESTED_SYSCALLS)  # as the VM tier patches the same tree
    return build(BuildOptions(tree=tree, config="vm-full", source={"spec": "debian:7.2"})).build_dir


@pytest.fixture(scope="module")
def booted(memuse_build: BuildDir, tmp_path_factory) -> Iterator[Tuple[machine.Machine, BuildDir]]:
    image = machine.ensure_image()
    scratch = tmp_path_factory.mktemp("machine")
    # the overlay outlives one QEMU process: the fallback step boots the same disk on NVMe
    overlay = scratch / "disk.qcow2"
    with machine.Machine(image, overlay=overlay, log=scratch / "console.log") as m:
        m.wait_ssh(timeout=BOOT_TIMEOUT)
        scenarios = Path(prebuilt_scenarios()[kit.ENV_SCENARIOS])
        bundle = kit.bundle(memuse_build, scenarios, scratch / "bundle.tar")
        m.copy_in([bundle], kit.GUEST_HOME)
        ok(m, ["sh", "-c", kit.setup_script()])
        yield m, memuse_build


def run(m: machine.Machine, cmd: List[str], user: str = "") -> subprocess.CompletedProcess:
    return m.ssh(cmd, user=user or None, timeout=COMMAND_TIMEOUT, check=False)


def ok(m: machine.Machine, cmd: List[str], user: str = "") -> str:
    done = run(m, cmd, user)
    assert done.returncode == 0, f"{shlex.join(cmd)}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return str(done.stdout)


def refused(m: machine.Machine, cmd: List[str], why: str, user: str = "") -> None:
    """The command fails with exit 1 and one line naming why, and the machine is unchanged."""
    before = state(m)
    done = run(m, cmd, user)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1, done.stdout + done.stderr
    assert len(lines) == 1 and re.search(why, lines[0]), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert state(m) == before


def state(m: machine.Machine) -> str:
    """What install could change: installed memuse packages, GRUB's menu and environment."""
    return ok(
        m,
        ["sh", "-c", "dpkg-query -W 'linux-*memuse*' 2>/dev/null; "
         "md5sum /boot/grub/grub.cfg /boot/grub/grubenv; ls /boot"],
    )  # fmt: skip


def installed_memuse_packages(m: machine.Machine) -> List[str]:
    listing = ok(m, ["sh", "-c", "dpkg-query -W -f '${Status} ${Package}\\n' 'linux-*memuse*' "
                     "2>/dev/null || true"])  # fmt: skip
    return [line.split()[-1] for line in listing.splitlines() if "install ok installed" in line]


def say(text: str) -> None:
    print(f"machine: {text}", flush=True)


def release_of(bd: BuildDir) -> str:
    record = bd.read_record()
    assert record is not None and record.kernel_release
    return record.kernel_release


def kernel(m: machine.Machine) -> str:
    return ok(m, ["uname", "-r"]).strip()


def reboot(m: machine.Machine) -> str:
    m.reboot(timeout=BOOT_TIMEOUT)
    running = kernel(m)
    say(f"rebooted into {running}")
    return running


def install_args(bd: BuildDir, *extra: str) -> List[str]:
    return kit.invoke("install", "--build-dir", f"{kit.GUEST_CACHE}/builds/{bd.root.name}", *extra)


def stock_entry(m: machine.Machine) -> str:
    """The grub-reboot id of the stock kernel (what a user picks in GRUB's menu)."""
    grub_cfg = ok(m, ["cat", "/boot/grub/grub.cfg"])
    return install.grub_entry_id(grub_cfg, m.image.kernel_release)


def assert_booted_from_disk_through_grub(m: machine.Machine, release: str) -> None:
    cmdline = ok(m, ["cat", "/proc/cmdline"])
    assert f"BOOT_IMAGE=/boot/vmlinuz-{release}" in cmdline  # GRUB's linux command set it
    assert "root=UUID=" in cmdline
    assert ok(m, ["findmnt", "-no", "SOURCE", "/"]).strip().startswith("/dev/vda")
    log = ok(m, ["sudo", "dmesg", "--notime"])
    assert "Freeing initrd memory" in log  # the initramfs update-initramfs built in the machine
    assert ok(m, ["ls", f"/boot/initrd.img-{release}"])


def kernel_stacks(table: str) -> Set[int]:
    """The kernel stack column of the experiment's table, whose cells are "memuse [smaps]"."""
    rows = [re.findall(r"(\d+) \[(\d+)\]", line) for line in table.splitlines()]
    cells = [row[1] for row in rows if len(row) == 5]
    assert len(cells) == 4 and all(ours == smaps for ours, smaps in cells), table
    return {int(ours) for ours, _ in cells}


def assert_kernel_log_clean(m: machine.Machine) -> None:
    problems = [line for line in ok(m, ["sudo", "dmesg"]).splitlines() if is_report(line)]
    assert problems == []


PANIC_REBOOT = "Rebooting automatically due to panic= boot argument"


def why_it_came_back(console: str) -> str:
    """How the memuse kernel that cannot boot ended, from its console. Its initramfs cannot
    find the root and, given panic=, reboots (initramfs-tools' line). Once (7.2, TCG) an int3
    oops from the text patching of sched_clock's static key, in a timer interrupt, panicked
    the kernel first and the machine reset at once, without that line: it still did not hang,
    and GRUB's one-shot was used up."""
    if PANIC_REBOOT in console:
        return "rebooted by itself (panic=, its root not found)"
    panics = [line for line in console.splitlines() if "Kernel panic - not syncing" in line]
    assert panics, "the memuse kernel came back without panic='s reboot or a kernel panic"
    return f"panicked before its root and reset: {panics[0].split('] ')[-1]}"


def test_install_reboot_fall_back_default_uninstall(booted, measured):
    m, bd = booted
    release = release_of(bd)
    config = (bd.obj / ".config").read_text()
    assert "CONFIG_CMDLINE_BOOL=y" in config and 'CONFIG_CMDLINE="panic=10"' in config
    stock = kernel(m)
    say(f"stock kernel {stock}; installing {release}")

    # 7: refusals, each one line, nothing changed
    ok(m, ["chmod", "o+rx", kit.GUEST_HOME])  # the user without sudo runs the same checkout
    refused(m, install_args(bd), "sudo refused", user=m.image.plain_user)
    refused(m, install_args(bd, "--default"), "GRUB_DEFAULT=saved")
    ok(m, ["sudo", "mv", "/boot/grub/grub.cfg", "/boot/grub/grub.cfg.away"])
    refused(m, install_args(bd), "only handles machines GRUB boots")
    ok(m, ["sudo", "mv", "/boot/grub/grub.cfg.away", "/boot/grub/grub.cfg"])
    small_boot = (
        "set -e; used=$(sudo du -sm /boot | cut -f1); sudo mkdir -p /run/small-boot; "
        "sudo mount -t tmpfs -o size=$((used + 16))M tmpfs /run/small-boot; "
        "sudo cp -a /boot/. /run/small-boot/; sudo mount --bind /run/small-boot /boot"
    )
    ok(m, ["sh", "-c", small_boot])
    refused(m, install_args(bd), r"only \d+ MiB free for /boot")
    ok(m, ["sh", "-c", "sudo umount /boot && sudo umount /run/small-boot"])
    damaged = f"{kit.GUEST_CACHE}/damaged"
    ok(m, ["sh", "-c", f"cp -r {kit.GUEST_CACHE}/builds/{bd.root.name} {damaged} && "
           f"truncate -s 1000 {damaged}/artifacts/linux-image-*.deb"])  # fmt: skip
    refused(m, kit.invoke("install", "--build-dir", damaged), "do not match their SHA256SUMS")
    say("refused: no sudo, --default without GRUB_DEFAULT=saved, no GRUB, full /boot, damaged")

    # 1-2: install arms a one-shot boot; the memuse kernel comes up through GRUB
    ok(m, install_args(bd))
    assert sorted(installed_memuse_packages(m)) == [
        f"linux-headers-{release}",
        f"linux-image-{release}",
    ]
    armed = ok(m, ["grub-editenv", "/boot/grub/grubenv", "list"])
    assert re.search(rf"^next_entry=.*gnulinux-{re.escape(release)}-advanced", armed, re.M)
    assert reboot(m) == release
    assert_booted_from_disk_through_grub(m, release)
    table = ok(m, kit.memuse("experiment", "--check"))
    measured += [f"memuse experiment in the test machine ({release}, booted through GRUB):"]
    measured += table.splitlines()
    assert "heap active" in table.lower()
    assert kernel_stacks(table) == {16384}  # THREAD_SIZE on x86_64 without KASAN
    assert_kernel_log_clean(m)

    # 3: one-shot: the next boot is the stock kernel again
    assert reboot(m) == stock

    # 4: --default (after the user sets GRUB_DEFAULT=saved, as the refusal said) stays
    ok(m, ["sh", "-c", "sudo sed -i 's/^GRUB_DEFAULT=.*/GRUB_DEFAULT=saved/' /etc/default/grub"
           " && sudo update-grub 2>/dev/null"])  # fmt: skip
    ok(m, install_args(bd, "--default"))
    assert reboot(m) == release
    assert reboot(m) == release

    # 5: uninstall: refused on the running kernel; from the stock kernel it removes everything
    refused(m, kit.invoke("uninstall", "--release", release), "is the running kernel")
    ok(m, ["sudo", "grub-reboot", stock_entry(m)])  # what picking it in GRUB's menu does
    assert reboot(m) == stock
    ok(m, kit.invoke("uninstall", "--release", release))
    assert installed_memuse_packages(m) == []
    assert release not in ok(m, ["cat", "/boot/grub/grub.cfg"])
    assert reboot(m) == stock

    # 6: a memuse kernel that cannot come up: its root disk on NVMe, a driver it lacks
    ok(m, ["sh", "-c", "sudo sed -i 's/^GRUB_CMDLINE_LINUX=\"/&rootdelay=20 /' /etc/default/grub"
           " && sudo update-grub 2>/dev/null"])  # fmt: skip
    ok(m, install_args(bd))
    m.poweroff(timeout=BOOT_TIMEOUT)
    log = m.log.with_name("console-nvme.log")
    with machine.Machine(m.image, disk_bus="nvme", overlay=m.disk, log=log) as on_nvme:
        on_nvme.wait_ssh(timeout=BOOT_TIMEOUT)
        assert kernel(on_nvme) == stock
        console = "\n".join(on_nvme.console_tail(2000))
    assert f"Linux version {release}" in console
    say(f"the unbootable memuse kernel {why_it_came_back(console)}")
    say("GRUB took the stock kernel")
