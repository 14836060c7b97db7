"""Which number a system call of the kit has on the running kernel, found by its name.

For memuse (and any other, by name: fdcount...), in order: an explicit override (--nr, then
$MEMUSE_NR, or $FDCOUNT_NR...); the build record `invoke build` wrote for the running kernel
release (its `syscalls` map); __NR_<name> in installed headers. A number from headers is only
trusted once /proc/kallsyms shows the running kernel has the syscall at all: numbers are
reused, and calling another kernel's number here would run some other system call.

An explicit number is confirmed the same way (the build metadata of the running release, or
headers plus kallsyms, must give that very number) and refused otherwise, unless forced
(--force, $MEMUSE_FORCE=1, force=True): system call 62 on x86_64, for one, is kill().
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Mapping, Optional, Tuple

from .build_record import FILE_NAME, MACHINES, BuildRecord, RecordError, read_record
from .errors import MemuseUnavailable

MEMUSE = "memuse"


def env_nr(name: str) -> str:
    """The variable that overrides a syscall's number: MEMUSE_NR, FDCOUNT_NR..."""
    return f"{name.upper()}_NR"


def env_force(name: str) -> str:
    return f"{name.upper()}_FORCE"


def force_risk(name: str) -> str:
    return (
        f"if it is not {name}, another system call runs with these arguments "
        "(62 is kill: the process would get a signal)"
    )


def how_to_get(name: str) -> str:
    if name == MEMUSE:
        return HOW_TO_GET_ONE
    return (
        f"build and install a kernel with {name} (`invoke patch --syscall {name}`, then "
        "`invoke build install`), or try one in a VM with `invoke vm`"
    )


ENV_NR = env_nr(MEMUSE)
ENV_FORCE = env_force(MEMUSE)
FORCE_RISK = (
    "if it is not memuse, another system call runs with (pid, kind) as its arguments "
    "(62 is kill: the process would get a signal)"
)
HOW_TO_GET_ONE = (
    "build and install a memuse kernel with `invoke build install`, or try one in a VM with "
    "`invoke vm`; the smaps backend (--backend smaps) works on any kernel"
)
KALLSYMS = Path("/proc/kallsyms")


# SYSCALL_DEFINE's wrapper symbol per machine (uname -m), besides a plain sys_NAME
SYSCALL_WRAPPERS = {"x86_64": "__x64_sys_", "aarch64": "__arm64_sys_", "arm64": "__arm64_sys_"}


def _machine(machine: Optional[str]) -> str:
    return platform.machine() if machine is None else machine


def _kallsyms_pattern(name: str, machine: Optional[str] = None) -> re.Pattern[bytes]:
    """sys_NAME, or the running machine's wrapper of it (__x64_sys_NAME, __arm64_sys_NAME)."""
    symbol = re.escape(name.encode())
    wrapper = SYSCALL_WRAPPERS.get(_machine(machine))
    alternatives = rb"sys_" + symbol
    if wrapper:
        alternatives = re.escape(wrapper.encode()) + symbol + rb"|" + alternatives
    return re.compile(rb"\s(?:" + alternatives + rb")(?:\s|$)", re.M)


def _header_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^#\s*define\s+__NR_{re.escape(name)}\s+(\d+)\b", re.MULTILINE)


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


def default_header_paths(release: str, machine: Optional[str] = None) -> List[Path]:
    """Where __NR_<name> may be defined for the running machine, the kernel's build first.

    arm64 takes its numbers from asm-generic's unistd.h; from 6.11 scripts/syscall.tbl
    generates them into asm/unistd_64.h, in the build tree and in Debian's multiarch headers.
    """
    if MACHINES.get(_machine(machine)) == "arm64":
        build = Path(f"/lib/modules/{release}/build")
        return [
            build / "arch/arm64/include/generated/uapi/asm/unistd_64.h",
            build / "include/uapi/asm-generic/unistd.h",
            Path("/usr/include/aarch64-linux-gnu/asm/unistd_64.h"),
            Path("/usr/include/asm-generic/unistd.h"),
        ]
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


def matching_builds(
    release: str, root: Path, name: str = MEMUSE, machine: Optional[str] = None
) -> List[Tuple[BuildRecord, Path]]:
    """Records of the builds of `release` for this machine's architecture that know the
    syscall's number, best first. (An x86_64 and an arm64 build of one tree have the same
    release: an arm64 guest that sees the host's cache must not read the x86_64 record.)

    A record that cannot be read (damaged, or another memuse-kit's schema) is no evidence.
    """
    machine = machine or platform.machine()
    found = []
    for path in sorted((root / "builds").glob(f"*/{FILE_NAME}")):
        try:
            record = read_record(path)
        except RecordError:
            continue
        ours = record.kernel_release == release and record.is_for_machine(machine)
        if ours and record.number_of(name) is not None:
            found.append((record, path))
    # successful builds first, then the most recently finished
    found.sort(key=lambda item: (item[0].succeeded, str(item[0].finished)), reverse=True)
    return found


def number_from_metadata(
    release: str, root: Path, name: str = MEMUSE, machine: Optional[str] = None
) -> Optional[Tuple[int, Path]]:
    builds = matching_builds(release, root, name, machine)
    if not builds:
        return None
    record, path = builds[0]
    nr = record.number_of(name)
    assert nr is not None  # matching_builds keeps only those
    return nr, path


def number_from_headers(paths: Iterable[Path], name: str = MEMUSE) -> Optional[Tuple[int, Path]]:
    pattern = _header_pattern(name)
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        match = pattern.search(text)
        if match:
            return int(match.group(1)), path
    return None


def kallsyms_has(name: str, path: Path = KALLSYMS, machine: Optional[str] = None) -> Optional[bool]:
    """Whether the running kernel defines the syscall; None when kallsyms cannot be read.

    `machine` (uname -m, the running one unless given) names the wrapper symbol looked for.
    """
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data:
        return None
    return _kallsyms_pattern(name, machine).search(data) is not None


def kallsyms_has_memuse(path: Path = KALLSYMS, machine: Optional[str] = None) -> Optional[bool]:
    return kallsyms_has(MEMUSE, path, machine)


def forced(env: Optional[Mapping[str, str]] = None, name: str = MEMUSE) -> bool:
    """$MEMUSE_FORCE (or $<NAME>_FORCE) set to anything but empty or 0."""
    env = os.environ if env is None else env
    return env.get(env_force(name), "").strip() not in ("", "0")


def confirm_override(
    nr: int,
    source: str,
    release: str,
    root: Path,
    header_paths: Iterable[Path],
    kallsyms: Path,
    name: str = MEMUSE,
    machine: Optional[str] = None,
) -> SyscallNumber:
    """The explicit number, if the running kernel is known to have the syscall as it."""
    from_metadata = number_from_metadata(release, root, name, machine)
    if from_metadata and from_metadata[0] == nr:
        return SyscallNumber(nr, source, verified=True)
    from_headers = number_from_headers(header_paths, name)
    present = kallsyms_has(name, kallsyms, machine)
    if from_headers and from_headers[0] == nr and present:
        return SyscallNumber(nr, source, verified=True)
    risk = FORCE_RISK if name == MEMUSE else force_risk(name)
    force_hint = f"--force (or {env_force(name)}=1) calls it anyway: {risk}"
    if present is False and not from_metadata:
        raise MemuseUnavailable(
            f"the running kernel ({release}) has no {name} system call ({kallsyms} shows "
            f"none), so system call {nr} (from {source}) is not called: {how_to_get(name)}; "
            f"{force_hint}"
        )
    if from_metadata:
        found = f"the build metadata {from_metadata[1]} says {name} is {from_metadata[0]}"
    elif from_headers and present:
        found = f"{from_headers[1]} says {name} is {from_headers[0]}"
    elif present is None and from_headers and from_headers[0] == nr:
        found = f"{kallsyms} cannot be read to check that the running kernel has {name}"
    else:
        found = f"no build metadata or header gives {name}'s number"
    raise MemuseUnavailable(
        f"refusing to call system call {nr} (from {source}): it cannot be confirmed to be "
        f"{name} on the running kernel ({release}; {found}); leave out {source} to use the "
        f"number found; {force_hint}"
    )


def discover(
    override: Optional[int] = None,
    env: Optional[Mapping[str, str]] = None,
    release: Optional[str] = None,
    header_paths: Optional[Iterable[Path]] = None,
    kallsyms: Path = KALLSYMS,
    force: bool = False,
    name: str = MEMUSE,
    machine: Optional[str] = None,
) -> SyscallNumber:
    """The number of syscall `name` on this kernel, or MemuseUnavailable saying what to do.

    An explicit number (override, then $MEMUSE_NR or $<NAME>_NR) is used only when
    confirmed, or forced. `machine` (uname -m, the running one unless given) chooses the
    default headers and the kallsyms symbol.
    """
    env = os.environ if env is None else env
    release = kernel_release() if release is None else release
    root = cache_root(env)
    paths = default_header_paths(release, machine) if header_paths is None else list(header_paths)
    variable = env_nr(name)
    explicit: Optional[Tuple[int, str]] = None
    if override is not None:
        explicit = (override, "--nr")
    elif env.get(variable, "").strip():
        explicit = (parse_override(env[variable], variable), variable)
    if explicit is not None:
        if force or forced(env, name):
            return SyscallNumber(explicit[0], explicit[1], verified=False)
        return confirm_override(
            explicit[0], explicit[1], release, root, paths, kallsyms, name, machine
        )

    from_metadata = number_from_metadata(release, root, name, machine)
    if from_metadata:
        nr, path = from_metadata
        return SyscallNumber(nr, f"build metadata {path}", verified=True)
    return _from_headers(name, release, root, paths, kallsyms, machine)


def _from_headers(
    name: str,
    release: str,
    root: Path,
    paths: Iterable[Path],
    kallsyms: Path,
    machine: Optional[str] = None,
) -> SyscallNumber:
    """__NR_<name> from headers, trusted only once kallsyms shows the kernel has name."""
    from_headers = number_from_headers(paths, name)
    present = kallsyms_has(name, kallsyms, machine)
    how = how_to_get(name)
    if present is False:
        said = f" ({from_headers[1]} says {from_headers[0]})" if from_headers else ""
        raise MemuseUnavailable(
            f"the running kernel ({release}) has no {name} system call{said}: {how}"
        )
    if from_headers is None:
        looked = f"no build metadata for it under {root / 'builds'}, no __NR_{name} in headers"
        if present:
            raise MemuseUnavailable(
                f"the running kernel ({release}) has {name} but its number is unknown "
                f"({looked}): if you know it, set {env_nr(name)}=N {env_force(name)}=1 or "
                "pass --nr N --force"
            )
        raise MemuseUnavailable(
            f"no {name} system call known for the running kernel ({release}; {looked}): {how}"
        )
    nr, path = from_headers
    if present is None:
        raise MemuseUnavailable(
            f"{path} says {name} is {nr} but {kallsyms} cannot be read to check the running "
            f"kernel ({release}) has it: set {env_nr(name)}={nr} {env_force(name)}=1 to use "
            "it anyway"
        )
    return SyscallNumber(nr, f"header {path}", verified=True)
