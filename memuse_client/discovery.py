"""Which number the memuse system call has on the running kernel.

In order: an explicit override (--nr, then $MEMUSE_NR); the metadata `invoke build` wrote for
the running kernel release; __NR_memuse in installed headers. A number from headers is only
trusted once /proc/kallsyms shows the running kernel has memuse at all: numbers are reused,
and calling another kernel's memuse number here would run some other system call.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Mapping, Optional, Tuple

from .errors import MemuseUnavailable

ENV_NR = "MEMUSE_NR"
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
    # False for overrides: the user asked for that number, nothing was checked
    verified: bool


def cache_root(env: Optional[Mapping[str, str]] = None) -> Path:
    """$MEMUSE_KIT_CACHE, else $XDG_CACHE_HOME/memuse-kit, else ~/.cache/memuse-kit.

    The same rule as memuse_kit.cache, kept here so the client does not import memuse_kit.
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


def matching_builds(release: str, root: Path) -> List[Tuple[dict, Path]]:
    """Metadata of the builds whose kernel_release is `release`, best candidate first."""
    found = []
    for path in sorted((root / "builds").glob("*/metadata.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or data.get("kernel_release") != release:
            continue
        if isinstance(data.get("syscall_nr"), int) and not isinstance(data["syscall_nr"], bool):
            found.append((data, path))
    # successful builds first, then the most recently finished
    found.sort(
        key=lambda item: (item[0].get("status") == "success", str(item[0].get("finished", ""))),
        reverse=True,
    )
    return found


def number_from_metadata(release: str, root: Path) -> Optional[Tuple[int, Path]]:
    builds = matching_builds(release, root)
    if not builds:
        return None
    data, path = builds[0]
    return int(data["syscall_nr"]), path


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


def discover(
    override: Optional[int] = None,
    env: Optional[Mapping[str, str]] = None,
    release: Optional[str] = None,
    header_paths: Optional[Iterable[Path]] = None,
    kallsyms: Path = KALLSYMS,
) -> SyscallNumber:
    """The memuse number to call on this kernel, or MemuseUnavailable saying what to do."""
    env = os.environ if env is None else env
    if override is not None:
        return SyscallNumber(override, "--nr", verified=False)
    if env.get(ENV_NR, "").strip():
        return SyscallNumber(parse_override(env[ENV_NR], ENV_NR), ENV_NR, verified=False)

    release = kernel_release() if release is None else release
    root = cache_root(env)
    from_metadata = number_from_metadata(release, root)
    if from_metadata:
        nr, path = from_metadata
        return SyscallNumber(nr, f"build metadata {path}", verified=True)

    paths = default_header_paths(release) if header_paths is None else list(header_paths)
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
                f"({looked}): set {ENV_NR} or pass --nr"
            )
        raise MemuseUnavailable(
            f"no memuse system call known for the running kernel ({release}; {looked}): "
            f"{HOW_TO_GET_ONE}"
        )
    nr, path = from_headers
    if present is None:
        raise MemuseUnavailable(
            f"{path} says memuse is {nr} but {kallsyms} cannot be read to check the running "
            f"kernel ({release}) has it: set {ENV_NR}={nr} to use it anyway"
        )
    return SyscallNumber(nr, f"header {path}", verified=True)
