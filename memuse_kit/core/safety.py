"""Checks made before anything is written, and errors from the OS turned into advice.

Every output path is checked with lstat (never opened) before the first byte moves; every
temporary file the tool creates carries TMP_PREFIX, so a later run can find the leftovers of
one that was killed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import Dict, Iterable, Optional

from memuse_kit.core.errors import KitError

TMP_PREFIX = ".memuse-kit-tmp."
SYSTEM_ROOTS = (Path("/dev"), Path("/proc"), Path("/sys"))

# FS_IOC_GETFLAGS and the inode flags that make a file impossible to replace
_FS_IOC_GETFLAGS = 0x80086601
_FS_IMMUTABLE_FL = 0x00000010
_FS_APPEND_FL = 0x00000020

_ADVICE: Dict[int, str] = {
    errno.EACCES: "permission denied: check its owner and mode (ls -l), or run as its owner",
    errno.EPERM: "operation not permitted: it may be immutable (lsattr; chattr -i) "
    "or belong to another user",
    errno.EROFS: "read-only file system: work on a copy on a writable file system",
    errno.ENOSPC: "no space left on the device: free some space and run the command again",
    errno.EDQUOT: "disk quota exceeded: free some space and run the command again",
    errno.ENOENT: "no such file or directory: check the path",
    errno.ENOTDIR: "a part of the path is not a directory: check the path",
    errno.EISDIR: "is a directory: give a file",
    errno.ELOOP: "too many levels of symbolic links: give the real path",
    errno.ENAMETOOLONG: "file name too long: choose a shorter path",
    errno.EIO: "input/output error: check the disk (dmesg)",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) and run the command again",
    errno.ENFILE: "too many open files on the system: run the command again later",
    errno.EXDEV: "cannot move across file systems: keep the paths on one file system",
    errno.ETXTBSY: "the file is busy (a running program): stop it first",
    errno.ENXIO: "no such device or address: give a regular file",
    errno.EBUSY: "the file or device is busy: run the command again later",
    errno.EPIPE: "the output was closed early (a pipe ended): nothing else was affected",
}


def describe_os_error(error: OSError) -> str:
    """One line for an OSError: what failed, on which path, and what to do."""
    advice = _ADVICE.get(error.errno or 0)
    if advice is None:
        advice = error.strerror or str(error) or type(error).__name__
    where = str(error.filename) if error.filename is not None else ""
    if error.filename2 is not None:
        where += f" -> {error.filename2}"
    return f"{where}: {advice}" if where else advice


def one_line(text: str) -> str:
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def inode_flags(path: Path) -> int:
    """The chattr flags of a regular file or directory (0 when they cannot be read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return 0
    try:
        import array

        buffer = array.array("l", [0])
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, buffer, True)
        return int(buffer[0])
    except OSError:
        return 0
    finally:
        os.close(fd)


def check_replaceable(path: Path, what: str) -> None:
    """A file the tool replaces by rename: its directory writable, it not immutable."""
    directory = path.parent
    flags = inode_flags(path) if path.exists() else 0
    flags |= inode_flags(directory) & _FS_IMMUTABLE_FL
    if flags & (_FS_IMMUTABLE_FL | _FS_APPEND_FL):
        raise KitError(
            f"{path} (or its directory) is immutable or append-only: clear it with "
            "sudo chattr -i -a, or work on a copy; nothing was changed"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise KitError(
            f"cannot write in {directory} ({what}): make it writable (chmod u+w) or work on "
            "a copy you own; nothing was changed"
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise KitError(
            f"{path} is read-only: make it writable (chmod u+w) or work on a copy you own; "
            "nothing was changed"
        )


def check_output_path(
    text: str, option: str = "--out", trees: Iterable[Path] = (), may_create_dir: bool = False
) -> Path:
    """The absolute path of an output file the user named, after refusing every unsafe kind.

    Accepted: a regular file, or a new file, in an existing directory, outside the kernel
    trees and outside /dev, /proc and /sys. Nothing is opened: lstat only.
    """
    if not str(text).strip():
        raise KitError(f"{option} is empty: give the path of the file to write")
    given = Path(os.path.abspath(Path(text).expanduser()))
    if given.name in ("", ".", ".."):
        raise KitError(f"{option} {text}: give a file name, not a directory")
    parent = _real(given.parent)
    path = parent / given.name
    for root in SYSTEM_ROOTS:
        if _inside(given, root) or _inside(path, root):
            raise KitError(f"{option} {text} is under {root}: write the file somewhere else")
    for tree in trees:
        real_tree = _real(tree)
        if _inside(path, real_tree) or _inside(given, tree):
            raise KitError(
                f"{option} {text} is inside the kernel tree {tree}: write it outside the tree"
            )
    if not parent.is_dir():
        if may_create_dir and not parent.exists():
            return path
        raise KitError(f"{option} {text}: the directory {given.parent} does not exist")
    try:
        info: Optional[os.stat_result] = os.lstat(path)
    except FileNotFoundError:
        info = None
    except OSError as error:
        raise KitError(f"{option} {text}: {describe_os_error(error)}") from None
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise KitError(
            f"{option} {text} is {_kind(info.st_mode)}: give a regular file or a new one"
        )
    check_replaceable(path, option)
    return path


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
