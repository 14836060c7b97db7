"""`invoke install` / `invoke uninstall`: the built image and headers onto this machine.

Only linux-image and linux-headers are installed (linux-libc-dev would replace the
distribution's userspace headers). The new kernel boots once (grub-reboot), so a kernel
that does not come up falls back to the old one on the next reboot; --default makes it stay.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from . import artifacts, patcher
from .builddir import BuildDir
from .cli import say, warn
from .errors import KitError
from .runner import Runner

_SUBMENU_ID = re.compile(r"^submenu .*\$menuentry_id_option '(gnulinux-advanced-[^']+)'", re.M)
_ENTRY_ID = re.compile(r"\$menuentry_id_option '(gnulinux-[^']+-advanced-[^']+)'")


@dataclass
class Host:
    """The parts of the machine install reads; tests point them at a fake root."""

    grub_cfg: Path = Path("/boot/grub/grub.cfg")
    default_grub: Path = Path("/etc/default/grub")
    secure_boot_vars: Path = Path("/sys/firmware/efi/efivars")
    running_release: str = field(default_factory=lambda: os.uname().release)
    euid: int = field(default_factory=os.geteuid)

    def sudo(self) -> List[str]:
        return [] if self.euid == 0 else ["sudo"]

    def secure_boot(self) -> bool:
        for var in self.secure_boot_vars.glob("SecureBoot-*"):
            try:
                return var.read_bytes()[-1:] == b"\x01"
            except OSError:
                return False
        return False


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


@dataclass
class InstallPlan:
    release: str
    packages: List[Path]
    entry: str


def check_build(bd: BuildDir, tree: Path) -> InstallPlan:
    """Refuse packages that are missing, damaged, or not built from this tree as it is now."""
    meta = bd.read_metadata()
    release = meta.get("kernel_release") or ""
    packages = artifacts.kept_packages(bd)
    if meta.get("status") != "success" or not packages:
        raise KitError(f"no packages built for {tree} in {bd.root}: run invoke build first")
    if not all(artifacts.verify_sums(bd).values()):
        raise KitError(f"the packages in {bd.artifacts} do not match their SHA256SUMS: rebuild")
    wanted = {f"linux-image-{release}_", f"linux-headers-{release}_"}
    if {p.name.split("_")[0] + "_" for p in packages} != wanted:
        raise KitError(f"{bd.artifacts} does not hold the image and headers of {release}")
    if meta.get("tree") != str(tree) or meta.get("syscall_nr") != patcher.recorded_number(tree):
        raise KitError(f"the packages in {bd.artifacts} were not built from {tree} as patched now")
    return InstallPlan(release, packages, "")


def install(bd: BuildDir, tree: Path, host: Host, runner: Runner, default: bool = False) -> None:
    plan = check_build(bd, tree)
    grub_cfg = host.grub_cfg.read_text() if host.grub_cfg.is_file() else ""
    if not grub_cfg:
        raise KitError(f"{host.grub_cfg} not found: install only knows GRUB-booted machines")
    plan.entry = grub_entry_id(grub_cfg, plan.release)
    if default and "GRUB_DEFAULT=saved" not in _read(host.default_grub):
        raise KitError(
            f"--default needs GRUB_DEFAULT=saved in {host.default_grub} "
            "(then sudo update-grub); without --default the kernel boots once"
        )
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
    runner.run([*sudo, "grub-set-default" if default else "grub-reboot", plan.entry])
    if not runner.dry_run:
        when = "from now on" if default else "on the next reboot only"
        say(f"installed {plan.release}; it boots {when} (sudo reboot)")


def uninstall(release: str, host: Host, runner: Runner) -> None:
    if release == host.running_release:
        raise KitError(f"{release} is the running kernel: reboot into another one first")
    packages = [f"linux-image-{release}", f"linux-headers-{release}"]
    installed = [p for p in packages if _installed(p)] if not runner.dry_run else packages
    if not installed:
        say(f"{release} is not installed")
        return
    runner.run([*host.sudo(), "dpkg", "--purge", *installed])
    if not runner.dry_run:
        say(f"removed {', '.join(installed)}")


def release_of(bd: BuildDir) -> Optional[str]:
    return bd.read_metadata().get("kernel_release") or bd.kernel_release()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _installed(package: str) -> bool:
    if not shutil.which("dpkg-query"):
        return False
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() == "install ok installed"
