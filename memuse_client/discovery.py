"""Which number the memuse system call has on the running kernel.

In order: an explicit override (--nr, then $MEMUSE_NR); the metadata `invoke build` wrote for
the running kernel release; __NR_memuse in installed headers. A number from headers is only
trusted once /proc/kallsyms shows the running kernel has memuse at all: numbers are reused,
and calling another kernel's memuse number here would run some other system call.

An explicit number is confirmed the same way (the build metadata of the running release, or
headers plus kallsyms, must give that very number) and refused otherwise, unless forced
(--force, $MEMUSE_FORCE=1, force=True): system call 62 on x86_64, for one, is kill().
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Mapping, Optional, Tuple

from .build_record import FILE_NAME, BuildRecord, RecordError, read_record
from .errors import MemuseUnavailable

ENV_NR = "MEMUSE_NR"
ENV_FORCE = "MEMUSE_FORCE"
FORCE_RISK = (
    "if it is not memuse, another system call runs with (pid, kind) as its arguments "
    "(62 is kill: the process would get a signal)"
)
HOW_TO_GET_ONE = (
    "build and install a memuse kernel with `invoke build install`, or try one in a VM with "
    "`invoke vm`; the smaps backend (--backend smaps) works on any kernel"
)
KALLSYMS = Path("/proc/kallsyms")
_KALLSYMS_MEMUSE = re.compile(rb"\s(?:__x64_sys_memuse|sys_memuse)(?:\s|$)", re.MULTILINE)
_HEADER_NR = re.compile(r"^#\s*define\s+__NR_memuse\s+(\d+)\b", re.MULTILINE)


@dataclass(frozen=True)
class SyscallNumber:
    nr: int
    source: str
    # False only for a forced override: the user asked for that number, nothing was checked
    verified: bool


def cache_root(env: Optional[Mapping[str, str]] = None) -> Path:
    """$MEMUSE_KIT_CACHE, else $XDG_CACHE_HOME/memuse-kit, else ~/.cache/memuse-kit.

    The same rule as memuse_kit.core.cache, kept here so the client does not import memuse_kit.
    """
    env = os.environ if env is None else env
    explicit = env.get("MEMUSE_KIT_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = env.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "memuse-kit"


def kernel_release() -> str:
    return os.uname().release


def default_header_paths(release: str) -> List[Path]:
    return [
        Path(f"/lib/modules/{release}/build/arch/x86/include/generated/uapi/asm/unistd_64.h"),
        Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
        Path("/usr/include/asm/unistd_64.h"),
    ]


def parse_override(text: str, what: str) -> int:
    try:
        nr = int(text.strip(), 0)
    except ValueError:
        raise ValueError(f"{what} must be a system call number, not {text!r}") from None
    if nr < 0:
        raise ValueError(f"{what} must be a system call number, not {text!r}")
    return nr


def matching_builds(release: str, root: Path) -> List[Tuple[BuildRecord, Path]]:
    """Records of the builds of `release` that know memuse's number, best candidate first.

    A record that cannot be read (damaged, or another memuse-kit's schema) is no evidence.
    """
    found = []
    for path in sorted((root / "builds").glob(f"*/{FILE_NAME}")):
        try:
            record = read_record(path)
        except RecordError:
            continue
        if record.kernel_release == release and record.number is not None:
            found.append((record, path))
    # successful builds first, then the most recently finished
    found.sort(key=lambda item: (item[0].succeeded, str(item[0].finished)), reverse=True)
    return found


def number_from_metadata(release: str, root: Path) -> Optional[Tuple[int, Path]]:
    builds = matching_builds(release, root)
    if not builds:
        return None
    record, path = builds[0]
    assert record.number is not None  # matching_builds keeps only those
    return record.number, path


def number_from_headers(paths: Iterable[Path]) -> Optional[Tuple[int, Path]]:
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        match = _HEADER_NR.search(text)
        if match:
            return int(match.group(1)), path
    return None


def kallsyms_has_memuse(path: Path = KALLSYMS) -> Optional[bool]:
    """Whether the running kernel defines memuse; None when kallsyms cannot be read."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data:
        return None
    return _KALLSYMS_MEMUSE.search(data) is not None


def forced(env: Optional[Mapping[str, str]] = None) -> bool:
    """$MEMUSE_FORCE set to anything but empty or 0."""
    env = os.environ if env is None else env
    return env.get(ENV_FORCE, "").strip() not in ("", "0")


def confirm_override(
    nr: int,
    source: str,
    release: str,
    root: Path,
    header_paths: Iterable[Path],
    kallsyms: Path,
) -> SyscallNumber:
    """The explicit number, if the running kernel is known to have memuse as that number."""
    from_metadata = number_from_metadata(release, root)
    if from_metadata and from_metadata[0] == nr:
        return SyscallNumber(nr, source, verified=True)
    from_headers = number_from_headers(header_paths)
    present = kallsyms_has_memuse(kallsyms)
    if from_headers and from_headers[0] == nr and present:
        return SyscallNumber(nr, source, verified=True)
    force_hint = f"--force (or {ENV_FORCE}=1) calls it anyway: {FORCE_RISK}"
    if present is False and not from_metadata:
        raise MemuseUnavailable(
            f"the running kernel ({release}) has no memuse system call ({kallsyms} shows "
            f"none), so system call {nr} (from {source}) is not called: {HOW_TO_GET_ONE}; "
            f"{force_hint}"
        )
    if from_metadata:
        found = f"the build metadata {from_metadata[1]} says memuse is {from_metadata[0]}"
    elif from_headers and present:
        found = f"{from_headers[1]} says memuse is {from_headers[0]}"
    elif present is None and from_headers and from_headers[0] == nr:
        found = f"{kallsyms} cannot be read to check that the running kernel has memuse"
    else:
        found = "no build metadata or header gives memuse's number"
    raise MemuseUnavailable(
        f"refusing to call system call {nr} (from {source}): it cannot be confirmed to be "
        f"memuse on the running kernel ({release}; {found}); leave out {source} to use the "
        f"number found; {force_hint}"
    )


def discover(
    override: Optional[int] = None,
    env: Optional[Mapping[str, str]] = None,
    release: Optional[str] = None,
    header_paths: Optional[Iterable[Path]] = None,
    kallsyms: Path = KALLSYMS,
    force: bool = False,
) -> SyscallNumber:
    """The memuse number to call on this kernel, or MemuseUnavailable saying what to do.

    An explicit number (override, then $MEMUSE_NR) is used only when confirmed, or forced.
    """
    env = os.environ if env is None else env
    release = kernel_release() if release is None else release
    root = cache_root(env)
    paths = default_header_paths(release) if header_paths is None else list(header_paths)
    explicit: Optional[Tuple[int, str]] = None
    if override is not None:
        explicit = (override, "--nr")
    elif env.get(ENV_NR, "").strip():
        explicit = (parse_override(env[ENV_NR], ENV_NR), ENV_NR)
    if explicit is not None:
        if force or forced(env):
            return SyscallNumber(explicit[0], explicit[1], verified=False)
        return confirm_override(explicit[0], explicit[1], release, root, paths, kallsyms)

    from_metadata = number_from_metadata(release, root)
    if from_metadata:
        nr, path = from_metadata
        return SyscallNumber(nr, f"build metadata {path}", verified=True)

    from_headers = number_from_headers(paths)
    present = kallsyms_has_memuse(kallsyms)
    if present is False:
        said = f" ({from_headers[1]} says {from_headers[0]})" if from_headers else ""
        raise MemuseUnavailable(
            f"the running kernel ({release}) has no memuse system call{said}: {HOW_TO_GET_ONE}"
        )
    if from_headers is None:
        looked = f"no build metadata for it under {root / 'builds'}, no __NR_memuse in headers"
        if present:
            raise MemuseUnavailable(
                f"the running kernel ({release}) has memuse but its number is unknown "
                f"({looked}): if you know it, set {ENV_NR}=N {ENV_FORCE}=1 or pass --nr N --force"
            )
        raise MemuseUnavailable(
            f"no memuse system call known for the running kernel ({release}; {looked}): "
            f"{HOW_TO_GET_ONE}"
        )
    nr, path = from_headers
    if present is None:
        raise MemuseUnavailable(
            f"{path} says memuse is {nr} but {kallsyms} cannot be read to check the running "
            f"kernel ({release}) has it: set {ENV_NR}={nr} {ENV_FORCE}=1 to use it anyway"
        )
    return SyscallNumber(nr, f"header {path}", verified=True)
