"""Which files the memuse syscall touches, where, and with which template: data plus locators.

Every locator reads the pristine text of one file and returns splices (offset ranges with
their rendered replacement). Nothing here writes files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from memuse_kit.core.errors import KitError
from memuse_kit.patching import syscall_tables as tables
from memuse_kit.patching.probes import TreeFacts
from memuse_kit.patching.templates import TAB, render
from memuse_kit.trees.kernel_version import KernelVersion


@dataclass(frozen=True)
class Splice:
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class RenderContext:
    nr: int
    kernel: KernelVersion
    facts: TreeFacts

    def render(self, template: str, **extra: object) -> str:
        return render(
            f"kernel/{template}", nr=self.nr, kernel=self.kernel, facts=self.facts, **extra
        )


Locator = Callable[[str, RenderContext], List[Splice]]


@dataclass(frozen=True)
class Target:
    path: str
    required: bool
    locate: Locator


def apply_splices(text: str, splices: List[Splice]) -> str:
    out, position = [], 0
    for splice in sorted(splices, key=lambda s: s.start):
        out.append(text[position : splice.start])
        out.append(splice.text)
        position = splice.end
    out.append(text[position:])
    return "".join(out)


def _line_end_offset(text: str, line_index: int) -> int:
    offset = 0
    for _ in range(line_index + 1):
        offset = text.index("\n", offset) + 1
    return offset


def _entry_point_column(line: str) -> int:
    """Display column of the 4th field of a table line, so our line lines up with it."""
    column, field, in_field = 0, 0, False
    for char in line:
        if char.isspace():
            in_field = False
        elif not in_field:
            in_field, field = True, field + 1
            if field == 4:
                return column
        column = (column // TAB + 1) * TAB if char == "\t" else column + 1
    return column


def after_last_entry(template: str, below: Optional[int] = None) -> Locator:
    def locate(text: str, ctx: RenderContext) -> List[Splice]:
        last = tables.last_entry(text, below)
        if last is None:
            raise KitError("no numbered entries to add after")
        offset = _line_end_offset(text, last.line_index)
        line = ctx.render(template, entry_column=_entry_point_column(last.line))
        return [Splice(offset, offset, line)]

    return locate


_UNDEF_NR_SYSCALLS = re.compile(r"^#undef __NR_syscalls\n", re.MULTILINE)
_DEFINE_NR_SYSCALLS = re.compile(r"^#define __NR_syscalls.*\n", re.MULTILINE)


def generic_unistd(text: str, ctx: RenderContext) -> List[Splice]:
    undef = _UNDEF_NR_SYSCALLS.search(text)
    define = _DEFINE_NR_SYSCALLS.search(text)
    if not undef or not define:
        raise KitError("anchor '#undef __NR_syscalls' / '#define __NR_syscalls' not found")
    return [
        Splice(undef.start(), undef.start(), ctx.render("unistd.h.j2")),
        Splice(define.start(), define.end(), ctx.render("unistd_nr_syscalls.h.j2")),
    ]


_ARCH_SPECIFIC = re.compile(r"\n\n/\*\n \* Architecture-specific system calls\n")


def syscalls_prototype(text: str, ctx: RenderContext) -> List[Splice]:
    anchor = _ARCH_SPECIFIC.search(text)
    if not anchor:
        raise KitError("anchor comment ' * Architecture-specific system calls' not found")
    offset = anchor.start() + 1
    return [Splice(offset, offset, ctx.render("syscalls.h.j2"))]


_LINUX_INCLUDE = re.compile(r"^#include <linux/[^>]+>\n", re.MULTILINE)
NEEDED_HEADERS = ("linux/hugetlb.h", "linux/pagewalk.h")


def needed_headers(facts: TreeFacts) -> Tuple[str, ...]:
    return (*NEEDED_HEADERS, facts.swap_header)


def sys_c(text: str, ctx: RenderContext) -> List[Splice]:
    includes = list(_LINUX_INCLUDE.finditer(text))
    if not includes:
        raise KitError("no '#include <linux/...>' lines to add the headers after")
    missing = [h for h in needed_headers(ctx.facts) if f"#include <{h}>" not in text]
    splices = [Splice(len(text), len(text), ctx.render("memuse.c.j2"))]
    if missing:
        offset = includes[-1].end()
        splices.append(Splice(offset, offset, ctx.render("includes.c.j2", headers=missing)))
    return splices


TARGETS: Tuple[Target, ...] = (
    Target(tables.X86_64_TABLE, True, after_last_entry("syscall_64.tbl.j2", tables.X32_FIRST)),
    Target(tables.I386_TABLE, False, after_last_entry("syscall_32.tbl.j2")),
    Target(tables.GENERIC_UNISTD, False, generic_unistd),
    Target(tables.GENERIC_TABLE, False, after_last_entry("syscall.tbl.j2")),
    Target("include/linux/syscalls.h", True, syscalls_prototype),
    Target("kernel/sys.c", True, sys_c),
)

TABLES = (tables.X86_64_TABLE, tables.I386_TABLE, tables.GENERIC_TABLE)

# How an existing memuse shows itself in each file (checked on pristine text).
_EXISTING_MEMUSE = {
    "include/linux/syscalls.h": re.compile(r"\bsys_memuse\b"),
    "kernel/sys.c": re.compile(r"SYSCALL_DEFINE\d\(\s*memuse\b"),
    tables.GENERIC_UNISTD: re.compile(r"\b__NR_memuse\b"),
}


def existing_memuse(path: str, text: str) -> Optional[int]:
    """1-based line number of a memuse already present in a pristine file, else None."""
    if path in TABLES:
        found = tables.entries_named(text, "memuse")
        return found[0].line_index + 1 if found else None
    pattern = _EXISTING_MEMUSE.get(path)
    match = pattern.search(text) if pattern else None
    return text.count("\n", 0, match.start()) + 1 if match else None
