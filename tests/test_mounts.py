"""--localmodconfig refuses while a filesystem the machine boots with is not mounted.

Found in the test machine: its lsmod was taken in a boot whose EFI partition came up too
late, so vfat was not loaded, localmodconfig left it out, and the trimmed kernel failed to
mount /boot/efi.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from memuse_kit.building import mounts
from memuse_kit.building.build import Builder, build
from memuse_kit.building.builddir import BuildDir
from memuse_kit.core.errors import KitError
from tests.test_build import options, tree  # noqa: F401  (tree is a fixture)

# what Debian's installer writes, plus a nofail data disk, a noauto stick and a path with a space
FSTAB = """\
# /etc/fstab: static file system information.
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
UUID=6d656d75-7365-4b69-a74d-616368696e65 /               ext4    errors=remount-ro 0       1
# /boot/efi was on /dev/vda1 during installation
UUID=4D45-4D55  /boot/efi       vfat    umask=0077      0       1
UUID=0b1d  none            swap    sw              0       0
/dev/sr0        /media/cdrom0   udf,iso9660 user,noauto     0       0
LABEL=data      /srv/my\\040data xfs     defaults,nofail 0       2
"""
ALL_MOUNTED = """\
/dev/vda2 / ext4 rw,relatime,errors=remount-ro 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
/dev/vda1 /boot/efi vfat rw,relatime,fmask=0077,dmask=0077 0 0
/dev/vdb1 /srv/my\\040data xfs rw,relatime 0 0
"""


def without(mounts_text: str, mount_point: str) -> str:
    return "".join(
        line + "\n" for line in mounts_text.splitlines() if line.split()[1] != mount_point
    )


def write(tmp_path: Path, fstab: str, mounted: str) -> tuple[Path, Path]:
    (tmp_path / "fstab").write_text(fstab)
    (tmp_path / "mounts").write_text(mounted)
    return tmp_path / "fstab", tmp_path / "mounts"


def test_fstab_entries_are_read_as_mount_reads_them():
    entries = {e.mount_point: e for e in mounts.parse_fstab(FSTAB)}
    assert sorted(entries) == ["/", "/boot/efi", "/media/cdrom0", "/srv/my data", "none"]
    assert entries["/boot/efi"].fs_type == "vfat"
    assert [m for m, e in entries.items() if e.mounted_at_boot] == [
        "/",
        "/boot/efi",
        "/srv/my data",
    ]


def test_nothing_is_missing_when_every_boot_filesystem_is_mounted():
    assert mounts.unmounted_boot_filesystems(FSTAB, ALL_MOUNTED) == []


def test_an_unmounted_efi_partition_is_refused_in_one_line(tmp_path):
    fstab, mounted = write(tmp_path, FSTAB, without(ALL_MOUNTED, "/boot/efi"))
    with pytest.raises(KitError) as refused:
        mounts.check_boot_mounts(fstab, mounted)
    message = str(refused.value)
    assert "\n" not in message
    assert "/boot/efi (vfat)" in message and "sudo mount /boot/efi" in message
    assert "--lsmod FILE" in message


def test_an_unmounted_nofail_filesystem_is_only_a_warning(tmp_path, capsys):
    fstab, mounted = write(tmp_path, FSTAB, without(ALL_MOUNTED, "/srv/my\\040data"))
    mounts.check_boot_mounts(fstab, mounted)
    said = capsys.readouterr().err
    assert "/srv/my data (xfs)" in said and "nofail" in said


def test_a_machine_without_fstab_is_not_refused(tmp_path):
    mounts.check_boot_mounts(tmp_path / "absent", tmp_path / "absent-too")


def test_build_localmodconfig_refuses_before_configuring(tree, tmp_path, monkeypatch):  # noqa: F811
    fstab, mounted = write(tmp_path, FSTAB, without(ALL_MOUNTED, "/boot/efi"))
    monkeypatch.setattr(mounts, "FSTAB", fstab)
    monkeypatch.setattr(mounts, "MOUNTS", mounted)
    with pytest.raises(KitError, match="not now, so lsmod lacks"):
        build(options(tree, localmodconfig=True))
    bd = BuildDir.for_tree(tree, "vm-localmodconfig")
    assert not (bd.obj / ".config").exists() and not (bd.root / "lsmod.txt").exists()


def test_an_lsmod_file_is_taken_as_given(tree, tmp_path, monkeypatch):  # noqa: F811
    """--lsmod FILE may come from another machine: this one's mounts say nothing about it."""
    fstab, mounted = write(tmp_path, FSTAB, without(ALL_MOUNTED, "/boot/efi"))
    monkeypatch.setattr(mounts, "FSTAB", fstab)
    monkeypatch.setattr(mounts, "MOUNTS", mounted)
    lsmod = tmp_path / "lsmod.txt"
    lsmod.write_text("Module                  Size  Used by\nvfat 24576 1\n")
    Builder(options(tree, lsmod=str(lsmod))).preflight()
    with pytest.raises(KitError, match="/boot/efi"):
        Builder(options(tree, localmodconfig=True)).preflight()
