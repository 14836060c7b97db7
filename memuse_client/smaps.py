"""The memuse kinds computed in userspace from /proc/PID/smaps and smaps_rollup.

This is the cross-check for the syscall and works on any kernel. Per kind:
  stack, heap        Rss (+ hugetlb) of the VMAs smaps names [stack], [heap]
  kernel_mappings    the same for kernel-named special VMAs: [vdso], [vvar], [vvar_vclock],
                     [uprobes]... but not [vsyscall], which is not one of the process's VMAs
  total              smaps_rollup Rss + Shared_Hugetlb + Private_Hugetlb
  kernel_stack       smaps knows nothing about it: THREAD_SIZE of the running kernel, read
                     from its config, while the task is alive (x86_64: 16 KiB, 32 KiB with
                     CONFIG_KASAN; arm64: 16 KiB, 32 KiB with generic or software-tag KASAN,
                     a page where VMAP_STACK's pages are larger), 0 once it is a zombie (its
                     stack is freed), None (unavailable) when the kernel config cannot be
                     found or the machine is neither x86_64 nor arm64
"""

from __future__ import annotations

import errno
import functools
import gzip
import platform
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Union

from .discovery import cache_root, kernel_release, matching_builds
from .kinds import ALL_KINDS, Kind, parse_kind

PROC = Path("/proc")
_VMA_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+)\s+\S+\s+\S+\s+\S+\s+\d+\s*(.*)$")
_FIELD = re.compile(r"^(\w+):\s+(\d+) kB$")
_NOT_SPECIAL = ("[heap]", "[stack]", "[vsyscall]")
THREAD_SIZE = 16384
THREAD_SIZE_KASAN = 32768


HUGETLB_FIELDS = ("Private_Hugetlb", "Shared_Hugetlb")


@dataclass(frozen=True)
class Vma:
    start: int
    end: int
    name: str
    fields: Dict[str, int] = field(default_factory=dict)  # bytes, from "Name: N kB"

    @property
    def rss(self) -> int:
        return self.fields.get("Rss", 0)

    @property
    def hugetlb(self) -> int:
        return sum(self.fields.get(key, 0) for key in HUGETLB_FIELDS)

    @property
    def resident(self) -> int:
        """Bytes the syscall counts: present pages plus hugetlb pages (not in smaps' Rss)."""
        return self.rss + self.hugetlb


def parse_fields(text: str) -> Dict[str, int]:
    """The "Name: N kB" lines of a text (smaps_rollup, one VMA of smaps), in bytes."""
    found = (_FIELD.match(line) for line in text.splitlines())
    return {m.group(1): int(m.group(2)) * 1024 for m in found if m}


def parse_smaps(text: str) -> List[Vma]:
    vmas: List[Vma] = []
    for line in text.splitlines():
        header = _VMA_HEADER.match(line)
        if header:
            start, end = int(header.group(1), 16), int(header.group(2), 16)
            vmas.append(Vma(start, end, header.group(3).strip()))
            continue
        found = _FIELD.match(line)
        if found and vmas:
            vmas[-1].fields[found.group(1)] = int(found.group(2)) * 1024
    return vmas


def parse_rollup(text: str) -> int:
    fields = parse_fields(text)
    return sum(fields.get(key, 0) for key in ("Rss", *HUGETLB_FIELDS))


def classify(name: str) -> Optional[Kind]:
    """The kind a VMA named `name` in smaps belongs to, None for files and plain anonymous."""
    if name == "[heap]":
        return Kind.HEAP
    if name == "[stack]":
        return Kind.STACK
    special = name.startswith("[") and name.endswith("]") and name not in _NOT_SPECIAL
    # [anon:NAME] and [anon_shmem:NAME] are names userspace gave with prctl
    if special and not name.startswith(("[anon:", "[anon_shmem:")):
        return Kind.KERNEL_MAPPINGS
    return None


@contextmanager
def _proc_errors(pid: int) -> Iterator[None]:
    """A missing process always as ProcessLookupError, a refusal as PermissionError."""
    try:
        yield
    except FileNotFoundError:
        raise ProcessLookupError(errno.ESRCH, f"no process with pid {pid}") from None
    except PermissionError:
        raise PermissionError(
            errno.EACCES, f"not permitted to read the memory of pid {pid}"
        ) from None


def read_proc(pid: int, name: str, proc: Path = PROC) -> str:
    with _proc_errors(pid):
        return (proc / str(pid) / name).read_text()


def check_access(pid: int, proc: Path = PROC) -> None:
    """Opening smaps makes the check the syscall makes: ptrace read access to the task."""
    with _proc_errors(pid), (proc / str(pid) / "smaps").open():
        pass


def task_state(pid: int, proc: Path = PROC) -> str:
    """One letter: R, S, D, T, t, Z, X, I..."""
    stat = read_proc(pid, "stat", proc)
    return stat[stat.rindex(")") + 2]


def rollup_total(pid: int, proc: Path = PROC) -> int:
    try:
        return parse_rollup(read_proc(pid, "smaps_rollup", proc))
    except ProcessLookupError:
        # a kernel thread or a zombie has no mm: smaps_rollup says ESRCH, the syscall 0
        task_state(pid, proc)
        return 0


def config_sources(release: str) -> List[Path]:
    sources = [Path("/proc/config.gz"), Path(f"/boot/config-{release}")]
    sources += [
        meta.parent / "obj" / ".config" for _, meta in matching_builds(release, cache_root())
    ]
    return sources


def read_config(path: Path) -> Optional[str]:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt") as handle:
                return handle.read()
        return path.read_text()
    except (OSError, EOFError):
        return None


def x86_64_thread_size(text: str) -> Optional[int]:
    """arch/x86/include/asm/page_64_types.h: order 2, one more with CONFIG_KASAN."""
    if "CONFIG_X86_64=y" not in text:
        return None
    kasan = re.search(r"^CONFIG_KASAN=y$", text, re.MULTILINE)
    return THREAD_SIZE_KASAN if kasan else THREAD_SIZE


def config_options(text: str) -> Dict[str, str]:
    """CONFIG_NAME=value lines of a kernel config (the unset ones are comments)."""
    return dict(re.findall(r"^(CONFIG_\w+)=(.*)$", text, re.MULTILINE))


# the page size choice of arm64 configs that state no CONFIG_PAGE_SHIFT number
ARM64_PAGE_CHOICES = {
    "CONFIG_ARM64_4K_PAGES": 12,
    "CONFIG_ARM64_16K_PAGES": 14,
    "CONFIG_ARM64_64K_PAGES": 16,
}


def arm64_page_shift(options: Dict[str, str]) -> Optional[int]:
    """PAGE_SHIFT: CONFIG_PAGE_SHIFT (newer trees: 6.12, 7.2), CONFIG_ARM64_PAGE_SHIFT
    (5.10, 6.1), or the CONFIG_ARM64_*K_PAGES choice both are derived from."""
    for name in ("CONFIG_PAGE_SHIFT", "CONFIG_ARM64_PAGE_SHIFT"):
        if options.get(name, "").isdigit():
            return int(options[name])
    chosen = [shift for name, shift in ARM64_PAGE_CHOICES.items() if options.get(name) == "y"]
    return chosen[0] if len(chosen) == 1 else None


def arm64_thread_size(text: str) -> Optional[int]:
    """arch/arm64/include/asm/memory.h: MIN_THREAD_SHIFT is 14, 15 with generic or software
    tag-based KASAN (5.10: CONFIG_KASAN, which then means one of those two); a vmapped stack
    is a whole number of pages, so with CONFIG_VMAP_STACK (which 7.2 always selects) and pages
    larger than that, THREAD_SHIFT is PAGE_SHIFT."""
    options = config_options(text)
    if options.get("CONFIG_ARM64") != "y":
        return None
    page_shift = arm64_page_shift(options)
    if page_shift is None:
        return None
    kasan = any(options.get(f"CONFIG_KASAN_{mode}") == "y" for mode in ("GENERIC", "SW_TAGS"))
    shift = 14 + int(kasan)
    if options.get("CONFIG_VMAP_STACK") == "y" and shift < page_shift:
        shift = page_shift
    return 1 << shift


# THREAD_SIZE per machine (uname -m) from the text of a config, None if it is another's
THREAD_SIZE_RULES: Dict[str, Callable[[str], Optional[int]]] = {
    "x86_64": x86_64_thread_size,
    "aarch64": arm64_thread_size,
    "arm64": arm64_thread_size,
}


def thread_size(
    sources: Optional[Iterable[Path]] = None, machine: Optional[str] = None
) -> Optional[int]:
    """THREAD_SIZE of the running kernel from the first config for `machine` (the running
    one unless given) found, None when unknown: no such config, or another machine."""
    rule = THREAD_SIZE_RULES.get(machine or platform.machine())
    if rule is None:
        return None
    paths = config_sources(kernel_release()) if sources is None else sources
    for path in paths:
        text = read_config(path)
        size = None if text is None else rule(text)
        if size is not None:
            return size
    return None


@functools.lru_cache(maxsize=4)
def _running_thread_size(release: str) -> Optional[int]:
    return thread_size()


def kernel_stack(pid: int, proc: Path = PROC) -> Optional[int]:
    check_access(pid, proc)
    if task_state(pid, proc) in ("Z", "X", "x"):
        return 0
    return _running_thread_size(kernel_release())


def smaps_measure(
    pid: int, kinds: Iterable[Kind] = ALL_KINDS, proc: Path = PROC
) -> Dict[Kind, Optional[int]]:
    """Bytes per kind for process `pid`; None where smaps cannot tell (kernel_stack).

    Raises ProcessLookupError, PermissionError like the syscall.
    """
    wanted = list(kinds)
    result: Dict[Kind, Optional[int]] = {}
    if any(kind in (Kind.STACK, Kind.HEAP, Kind.KERNEL_MAPPINGS) for kind in wanted):
        sums = {Kind.STACK: 0, Kind.HEAP: 0, Kind.KERNEL_MAPPINGS: 0}
        for vma in parse_smaps(read_proc(pid, "smaps", proc)):
            kind = classify(vma.name)
            if kind is not None:
                sums[kind] += vma.resident
        result.update((kind, sums[kind]) for kind in wanted if kind in sums)
    if Kind.KERNEL_STACK in wanted:
        result[Kind.KERNEL_STACK] = kernel_stack(pid, proc)
    if Kind.TOTAL in wanted:
        result[Kind.TOTAL] = rollup_total(pid, proc)
    return {kind: result[kind] for kind in wanted}


def smaps_memuse(pid: int, kind: Union[Kind, int, str]) -> Optional[int]:
    """What memuse(pid, kind) should return, computed from /proc; None if smaps cannot tell."""
    checked = parse_kind(kind)
    return smaps_measure(pid, [checked])[checked]
