"""Before trimming to the modules loaded now: is every filesystem the machine boots with mounted?

make localmodconfig keeps the modules lsmod lists. A filesystem in /etc/fstab that is not
mounted at that moment (an EFI partition whose device came up late, say) has its modules
(vfat, fat, the nls tables) missing from lsmod, so the trimmed kernel cannot mount it, and
systemd stops in emergency mode on a mount that is not `nofail`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Set

from memuse_kit.core.errors import KitError
from memuse_kit.core.output import warn

FSTAB = Path("/etc/fstab")
MOUNTS = Path("/proc/self/mounts")
NOT_MOUNTED_AT_BOOT = {"swap", "none"}


@dataclass(frozen=True)
class FstabEntry:
    device: str
    mount_point: str
    fs_type: str
    options: Set[str]

    @property
    def mounted_at_boot(self) -> bool:
        return "noauto" not in self.options and self.fs_type not in NOT_MOUNTED_AT_BOOT

    def describe(self) -> str:
        return f"{self.mount_point} ({self.fs_type})"


def _unescape(field: str) -> str:
    # fstab and /proc/mounts write a space in a path as \040
    return field.replace("\\040", " ").replace("\\011", "\t")


def parse_fstab(text: str) -> List[FstabEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[0].startswith("#"):
            continue
        options = set(fields[3].split(",")) if len(fields) > 3 else set()
        entries.append(FstabEntry(fields[0], _unescape(fields[1]), fields[2], options))
    return entries


def mount_points(mounts_text: str) -> Set[str]:
    return {
        _unescape(line.split()[1]) for line in mounts_text.splitlines() if len(line.split()) > 1
    }


def unmounted_boot_filesystems(fstab_text: str, mounts_text: str) -> List[FstabEntry]:
    """fstab's entries mounted at boot that are not mounted now."""
    mounted = mount_points(mounts_text)
    return [
        entry
        for entry in parse_fstab(fstab_text)
        if entry.mounted_at_boot and entry.mount_point not in mounted
    ]


def check_boot_mounts(fstab: Optional[Path] = None, mounts: Optional[Path] = None) -> None:
    """Refuse to trim to lsmod while a boot filesystem is unmounted (warn for `nofail` ones)."""
    fstab, mounts = fstab or FSTAB, mounts or MOUNTS
    if not fstab.is_file():
        return
    missing = unmounted_boot_filesystems(fstab.read_text(), mounts.read_text())
    for entry in (e for e in missing if "nofail" in e.options):
        warn(
            f"{entry.describe()} is in {fstab} but not mounted now: the trimmed kernel may lack "
            "its modules (it is nofail, so the machine still boots)"
        )
    required = [e for e in missing if "nofail" not in e.options]
    if required:
        names = ", ".join(e.describe() for e in required)
        first = required[0].mount_point
        raise KitError(
            f"--localmodconfig: {fstab} mounts {names} at boot, but not now, so lsmod lacks "
            f"the modules and the trimmed kernel could not mount it: mount it first "
            f"(sudo mount {first}) or pass --lsmod FILE"
        )
