"""`invoke install` / `invoke uninstall`: the built image and headers onto this machine.

Only linux-image and linux-headers are installed (linux-libc-dev would replace the
distribution's userspace headers). The new kernel boots once (grub-reboot), so a kernel
that does not come up falls back to the old one on the next reboot; --default makes it stay.
Every check runs before the first command that changes the machine.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from memuse_kit.building import artifacts
from memuse_kit.building.builddir import BuildDir
from memuse_kit.building.kconfig import built_options
from memuse_kit.core.errors import KitError
from memuse_kit.core.output import report, warn
from memuse_kit.core.runner import Runner
from memuse_kit.patching import patcher

_SUBMENU_ID = re.compile(r"^submenu .*\$menuentry_id_option '(gnulinux-advanced-[^']+)'", re.M)
_ENTRY_ID = re.compile(r"\$menuentry_id_option '(gnulinux-[^']+-advanced-[^']+)'")
_LISTING = re.compile(r"^\S+\s+\S+\s+(\d+)\s+\S+\s+\S+\s+\./(\S+)$")
MIB = 1 << 20
# an initramfs of a memuse kernel when the machine has none to compare with
DEFAULT_INITRD_BYTES = 64 * MIB
SPACE_MARGIN_BYTES = 16 * MIB
# Debian's update-grub reads /etc/default/grub.d/*.cfg after /etc/default/grub
DROP_IN_NAME = "memuse-kit.cfg"
GRUB_DROP_IN_TEXT = """\
# memuse-kit: a memuse kernel newer than this machine's own is installed, and GRUB's first
# entry boots the newest kernel. So GRUB boots the entry saved with grub-set-default (the
# kernel `invoke install` ran from) and the memuse kernel only when chosen.
# `invoke uninstall` removes this file.
GRUB_DEFAULT=saved
"""
_GRUB_DEFAULT = re.compile(r"""^\s*GRUB_DEFAULT=["']?([^"'\n]*)""", re.M)
SYSTEMD_BOOT_CONFS = (
    Path("/boot/efi/loader/loader.conf"),
    Path("/efi/loader/loader.conf"),
    Path("/boot/loader/loader.conf"),
)


@dataclass(frozen=True)
class PackageSize:
    boot_bytes: int  # what the package puts under /boot
    installed_bytes: int  # everything it installs (dpkg's Installed-Size)


def read_package_size(deb: Path) -> PackageSize:
    """Sizes from the package itself (dpkg-deb), before anything is unpacked."""
    listing = _dpkg_deb(["-c", str(deb)])
    boot = sum(
        int(match.group(1))
        for match in map(_LISTING.match, listing.splitlines())
        if match and match.group(2).startswith("boot/")
    )
    installed = _dpkg_deb(["-f", str(deb), "Installed-Size"]).strip()
    return PackageSize(boot, int(installed or 0) * 1024)


def _dpkg_deb(args: List[str]) -> str:
    if not shutil.which("dpkg-deb"):
        raise KitError("dpkg-deb is missing: install needs a Debian or Ubuntu machine")
    done = Runner().run(["dpkg-deb", *args], check=False, mutates=False)
    if done.returncode != 0:
        raise KitError(f"{args[-1]} is not a readable .deb package: {done.stderr.strip()}")
    return done.stdout


def sudo_works(interactive: bool) -> bool:
    """Whether sudo lets this user run commands (asking for a password only on a terminal)."""
    if not shutil.which("sudo"):
        return False
    if interactive:
        return Runner().run(["sudo", "-v"], check=False, interactive=True).returncode == 0
    quiet = Runner().run(["sudo", "-n", "true"], check=False, mutates=False)
    return quiet.returncode == 0


@dataclass
class Host:
    """The parts of the machine install reads; tests point them at a fake root."""

    grub_cfg: Path = Path("/boot/grub/grub.cfg")
    default_grub: Path = Path("/etc/default/grub")
    default_grub_dir: Path = Path("/etc/default/grub.d")
    grubenv: Path = Path("/boot/grub/grubenv")
    secure_boot_vars: Path = Path("/sys/firmware/efi/efivars")
    boot_dir: Path = Path("/boot")
    modules_dir: Path = Path("/lib/modules")
    systemd_boot_confs: Sequence[Path] = SYSTEMD_BOOT_CONFS
    running_release: str = field(default_factory=lambda: os.uname().release)
    euid: int = field(default_factory=os.geteuid)
    package_size: Callable[[Path], PackageSize] = read_package_size
    can_sudo: Callable[[bool], bool] = sudo_works

    def sudo(self) -> List[str]:
        return [] if self.euid == 0 else ["sudo"]

    def secure_boot(self) -> bool:
        for var in self.secure_boot_vars.glob("SecureBoot-*"):
            try:
                return var.read_bytes()[-1:] == b"\x01"
            except OSError:
                return False
        return False

    def free_bytes(self, path: Path) -> Tuple[int, int]:
        """(free bytes, device) of the filesystem holding path."""
        while not path.exists():
            path = path.parent
        return shutil.disk_usage(path).free, path.stat().st_dev


def grub_entry_id(grub_cfg: str, release: str) -> str:
    """The grub-reboot id of the release's entry in the 'Advanced options' submenu.

    It is derived from the submenu's id, so it is known before update-grub adds the entry.
    """
    submenu = _SUBMENU_ID.search(grub_cfg)
    if not submenu:
        raise KitError("grub.cfg has no 'Advanced options' submenu to find the new kernel in")
    device = submenu.group(1)[len("gnulinux-advanced-") :]
    return f"{submenu.group(1)}>gnulinux-{release}-advanced-{device}"


def _entry_present(grub_cfg: str, entry: str) -> bool:
    return entry.split(">")[-1] in _ENTRY_ID.findall(grub_cfg)


def grub_default(host: Host) -> str:
    """GRUB_DEFAULT as update-grub sees it: /etc/default/grub, then grub.d/*.cfg in order."""
    value = "0"
    for path in [host.default_grub, *sorted(host.default_grub_dir.glob("*.cfg"))]:
        for match in _GRUB_DEFAULT.finditer(_read(path)):
            value = match.group(1).strip()
    return value


def sorts_first(release: str, boot: Path) -> bool:
    """Whether update-grub will make release its first entry: the newest by `sort -V`."""
    kernels = {p.name[len("vmlinuz-") :] for p in boot.glob("vmlinuz-*")} | {release}
    listing = "\n".join(kernels) + "\n"
    ordered = Runner().run(["sort", "-V"], input=listing, mutates=False).stdout.split()
    return bool(ordered) and ordered[-1] == release


@dataclass
class InstallPlan:
    release: str
    packages: List[Path]
    entry: str = ""
    # the running kernel's entry, when GRUB's default must be pinned to it (see keep_default)
    keep: str = ""


def check_build(bd: BuildDir, tree: Optional[Path]) -> InstallPlan:
    """Refuse packages that are missing, damaged, or not built from this tree as it is now.

    Without a tree (packages handed in from another machine) the build's own record and
    SHA256SUMS are all there is to check.
    """
    record = bd.read_record()
    release = (record.kernel_release if record else None) or ""
    packages = artifacts.kept_packages(bd)
    if record is not None and record.succeeded and not record.packaged:
        raise KitError(
            f"the kernel in {bd.root} was last built with --no-packages, so it has no current "
            "packages: run invoke build (without --no-packages) first"
        )
    if record is None or not record.succeeded or not packages:
        raise KitError(f"no packages built in {bd.root}: run invoke build first")
    if not all(artifacts.verify_sums(bd).values()):
        raise KitError(f"the packages in {bd.artifacts} do not match their SHA256SUMS: rebuild")
    wanted = {f"linux-image-{release}_", f"linux-headers-{release}_"}
    if {p.name.split("_")[0] + "_" for p in packages} != wanted:
        raise KitError(f"{bd.artifacts} does not hold the image and headers of {release}")
    if tree is not None and (
        record.tree != str(tree) or record.syscalls != patcher.recorded_syscalls(tree)
    ):
        raise KitError(f"the packages in {bd.artifacts} were not built from {tree} as patched now")
    check_boots_a_machine(bd)
    return InstallPlan(release, packages)


# What a kernel needs to come up on a PC from its disk: without them it boots under QEMU only
MACHINE_OPTIONS = ("CONFIG_ACPI", "CONFIG_BLOCK")


def check_boots_a_machine(bd: BuildDir) -> None:
    """Refuse the fast vm kernel (no ACPI) before it is installed on a machine it cannot boot.

    Packages handed in without their build directory are not checked: nothing to read.
    """
    options = built_options(bd.obj)
    if not options:
        return
    if not bd.arch().is_host():
        raise KitError(
            f"the kernel in {bd.root} is for {bd.arch().name}, this machine is "
            f"{platform.machine()}: copy the build directory to an {bd.arch().name} machine and "
            "run invoke install --build-dir there, or boot it here with invoke vm"
        )
    missing = [name for name in MACHINE_OPTIONS if options.get(name) != "y"]
    if missing:
        raise KitError(
            f"the kernel in {bd.root} has no {' or '.join(missing)}: it boots under QEMU "
            "(invoke vm), not on a machine; build it with --config vm-full or the running "
            "kernel's configuration to install it"
        )


def check_bootloader(host: Host) -> str:
    """grub.cfg's text; a machine GRUB does not boot is refused."""
    if host.grub_cfg.exists():
        try:
            return host.grub_cfg.read_text()
        except OSError as error:
            raise KitError(f"cannot read {host.grub_cfg}: {error.strerror}") from None
    loader = next((conf for conf in host.systemd_boot_confs if _is_file(conf)), None)
    if loader is not None:
        raise KitError(
            f"this machine boots with systemd-boot ({loader}), which install does not handle: "
            "install the packages with sudo dpkg -i and add a loader entry yourself"
        )
    raise KitError(f"{host.grub_cfg} not found: install only handles machines GRUB boots")


def _is_file(path: Path) -> bool:
    """Whether path is a file; False where this user may not look (an ESP is often 0700)."""
    try:
        return path.is_file()
    except OSError:
        return False


def check_space(plan: InstallPlan, host: Host) -> None:
    """Refuse before dpkg when /boot (kernel + initramfs) or the modules' filesystem is short."""
    sizes = [host.package_size(deb) for deb in plan.packages]
    boot_need = sum(s.boot_bytes for s in sizes) + _initrd_estimate(host.boot_dir)
    rest_need = sum(s.installed_bytes - s.boot_bytes for s in sizes)
    boot_free, boot_dev = host.free_bytes(host.boot_dir)
    rest_free, rest_dev = host.free_bytes(host.modules_dir)
    if boot_dev == rest_dev:
        boot_need, rest_need = boot_need + rest_need, 0
    checks = ((host.boot_dir, boot_free, boot_need), (host.modules_dir, rest_free, rest_need))
    for where, free, need in checks:
        if need and free < need + SPACE_MARGIN_BYTES:
            raise KitError(
                f"only {free // MIB} MiB free for {where}, {plan.release} needs about "
                f"{(need + SPACE_MARGIN_BYTES) // MIB} MiB: remove an old kernel "
                "(sudo apt autoremove --purge) and try again"
            )


def _initrd_estimate(boot: Path) -> int:
    sizes = []
    for initrd in boot.glob("initrd.img-*"):
        try:
            sizes.append(initrd.stat().st_size)
        except OSError:
            continue
    return max(sizes, default=DEFAULT_INITRD_BYTES)


def check_sudo(host: Host, dry_run: bool) -> None:
    if host.euid == 0 or dry_run:
        return
    if not host.can_sudo(sys.stdin.isatty()):
        raise KitError(
            "install runs dpkg and grub-reboot with sudo, and sudo refused this user: "
            "ask an administrator, or run it as a user in the sudo group"
        )


def plan_install(
    bd: BuildDir, tree: Optional[Path], host: Host, default: bool, dry_run: bool
) -> InstallPlan:
    """Every check, in order, before anything changes; the plan to carry out."""
    plan = check_build(bd, tree)
    grub_cfg = check_bootloader(host)
    plan.entry = grub_entry_id(grub_cfg, plan.release)
    if default and "GRUB_DEFAULT=saved" not in _read(host.default_grub):
        raise KitError(
            f"--default needs GRUB_DEFAULT=saved in {host.default_grub} "
            "(then sudo update-grub); without --default the kernel boots once"
        )
    if not default:
        plan.keep = check_keep_default(plan, host, grub_cfg)
    check_space(plan, host)
    check_sudo(host, dry_run)
    return plan


def check_keep_default(plan: InstallPlan, host: Host, grub_cfg: str) -> str:
    """The entry to keep as GRUB's default after the one-shot boot, or "" when none is needed.

    With GRUB_DEFAULT=0 (Debian's) or saved with nothing saved, GRUB boots its first entry,
    which update-grub gives to the newest kernel: a memuse kernel newer than the machine's
    own would become the default, and the one-shot promise would be void.
    """
    setting = grub_default(host)
    at_risk = setting in ("0", "") or (setting == "saved" and not _saved_entry(host.grubenv))
    if not at_risk or not sorts_first(plan.release, host.boot_dir):
        return ""
    keep = grub_entry_id(grub_cfg, host.running_release)
    if not _entry_present(grub_cfg, keep):
        raise KitError(
            f"{plan.release} would become GRUB's default, and the running kernel "
            f"{host.running_release} is not in {host.grub_cfg} to keep as default instead: "
            "boot a kernel from GRUB's menu first, or use --default knowingly"
        )
    return keep


def install(
    bd: BuildDir, tree: Optional[Path], host: Host, runner: Runner, default: bool = False
) -> None:
    plan = plan_install(bd, tree, host, default, runner.dry_run)
    if host.secure_boot():
        warn(
            "Secure Boot is on: this unsigned kernel will not boot until it is signed with an "
            "enrolled key or validation is off (sudo mokutil --disable-validation)"
        )
    sudo = host.sudo()
    runner.run([*sudo, "dpkg", "-i", *map(str, plan.packages)])
    if not runner.dry_run and not _entry_present(_read(host.grub_cfg), plan.entry):
        raise KitError(
            f"update-grub did not add {plan.release} to {host.grub_cfg}; run sudo update-grub"
        )
    if plan.keep:
        keep_default(plan, host, runner)
    runner.run([*sudo, "grub-set-default" if default else "grub-reboot", plan.entry])
    if not runner.dry_run:
        when = "from now on" if default else "on the next reboot only"
        report(f"installed {plan.release}; it boots {when} (sudo reboot)")


def keep_default(plan: InstallPlan, host: Host, runner: Runner) -> None:
    """Make GRUB boot the running kernel by default, not the newest one (the memuse kernel)."""
    sudo = host.sudo()
    if grub_default(host) != "saved":
        drop_in = host.default_grub_dir / DROP_IN_NAME
        write = (
            f"mkdir -p {shlex.quote(str(drop_in.parent))} && "
            f"printf %s {shlex.quote(GRUB_DROP_IN_TEXT)} > {shlex.quote(str(drop_in))}"
        )
        runner.run([*sudo, "sh", "-c", write])
        if not runner.dry_run and grub_default(host) != "saved":
            raise KitError(
                f"could not set GRUB_DEFAULT=saved in {drop_in}; nothing is armed: "
                f"{plan.release} is installed, and GRUB's first entry boots it from now on"
            )
        runner.run([*sudo, "update-grub"])
    runner.run([*sudo, "grub-set-default", plan.keep])
    if not runner.dry_run:
        report(f"GRUB's default stays {host.running_release} ({plan.release} is newer)")


def uninstall(release: str, host: Host, runner: Runner) -> None:
    if release == host.running_release:
        raise KitError(f"{release} is the running kernel: reboot into another one first")
    packages = [f"linux-image-{release}", f"linux-headers-{release}"]
    installed = [p for p in packages if _installed(p)] if not runner.dry_run else packages
    if not installed:
        report(f"{release} is not installed")
        return
    check_sudo(host, runner.dry_run)
    sudo = host.sudo()
    runner.run([*sudo, "dpkg", "--purge", *installed])
    drop_in = host.default_grub_dir / DROP_IN_NAME
    last_memuse = not [k for k in host.boot_dir.glob("vmlinuz-*memuse*") if release not in k.name]
    if drop_in.is_file() and last_memuse:
        # install pinned GRUB's default for it: back to the machine's own setting
        runner.run([*sudo, "rm", "-f", str(drop_in)])
        runner.run([*sudo, "grub-editenv", str(host.grubenv), "unset", "saved_entry"])
        runner.run([*sudo, "update-grub"])
    elif f"gnulinux-{release}-" in _saved_entry(host.grubenv):
        # --default chose it; GRUB would fall back to the first entry anyway, say so plainly
        runner.run([*sudo, "grub-editenv", str(host.grubenv), "unset", "saved_entry"])
    if not runner.dry_run:
        if f"gnulinux-{release}-" in _read(host.grub_cfg):
            raise KitError(f"{host.grub_cfg} still lists {release}: run sudo update-grub")
        report(f"removed {', '.join(installed)}")


def _saved_entry(grubenv: Path) -> str:
    found = re.search(r"^saved_entry=(.*)$", _read(grubenv), re.M)
    return found.group(1) if found else ""


def release_of(bd: BuildDir) -> Optional[str]:
    record = bd.read_record()
    return (record.kernel_release if record else None) or bd.kernel_release()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _installed(package: str) -> bool:
    if not shutil.which("dpkg-query"):
        return False
    out = Runner().run(["dpkg-query", "-W", "-f=${Status}", package], check=False, mutates=False)
    return out.stdout.strip() == "install ok installed"
