"""Reading the syscall tables of a tree and choosing a number that is free everywhere.

Tables are parsed by whitespace, never by tabs: some upstream lines mix both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, List, Mapping, Optional

from memuse_kit.core.errors import KitError

X86_64_TABLE = "arch/x86/entry/syscalls/syscall_64.tbl"
I386_TABLE = "arch/x86/entry/syscalls/syscall_32.tbl"
GENERIC_UNISTD = "include/uapi/asm-generic/unistd.h"
GENERIC_TABLE = "scripts/syscall.tbl"

# x86_64 numbers 512-547 belong to the legacy x32 ABI; new calls always go below them.
X32_FIRST = 512

_NR_SYSCALLS = re.compile(r"^#define __NR_syscalls\s+\(?(\d+)\)?\s*$", re.MULTILINE)


@dataclass(frozen=True)
class TableEntry:
    number: int
    abi: str
    name: str
    line_index: int
    line: str


def table_entries(text: str) -> Iterator[TableEntry]:
    for index, line in enumerate(text.splitlines()):
        fields = line.split()
        if len(fields) >= 3 and fields[0].isdigit():
            yield TableEntry(int(fields[0]), fields[1], fields[2], index, line)


def last_entry(text: str, below: Optional[int] = None) -> Optional[TableEntry]:
    """The entry with the highest number (below a limit), None for an empty table."""
    candidates = [e for e in table_entries(text) if below is None or e.number < below]
    return max(candidates, key=lambda e: e.number, default=None)


def generic_nr_syscalls(text: str) -> Optional[int]:
    match = _NR_SYSCALLS.search(text)
    return int(match.group(1)) if match else None


def highest_used_numbers(files: Mapping[str, str]) -> dict:
    """Highest number in use per table, for the files present in the tree."""
    used: dict = {}
    if X86_64_TABLE in files:
        entry = last_entry(files[X86_64_TABLE], below=X32_FIRST)
        used[X86_64_TABLE] = entry.number if entry else -1
    for path in (I386_TABLE, GENERIC_TABLE):
        if path in files:
            entry = last_entry(files[path])
            used[path] = entry.number if entry else -1
    if GENERIC_UNISTD in files:
        total = generic_nr_syscalls(files[GENERIC_UNISTD])
        if total is None:
            raise KitError(f"{GENERIC_UNISTD}: no '#define __NR_syscalls N' line")
        used[GENERIC_UNISTD] = total - 1
    return used


def choose_number(files: Mapping[str, str]) -> int:
    """1 + the highest number used in any table, so the number is free on every arch."""
    used = highest_used_numbers(files)
    if X86_64_TABLE not in used:
        raise KitError(f"tree has no {X86_64_TABLE}")
    return 1 + max(used.values())


def entries_named(text: str, name: str) -> List[TableEntry]:
    return [entry for entry in table_entries(text) if entry.name == name]
