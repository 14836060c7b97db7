"""Which files a set of syscalls touches, where, and with which template: data plus locators.

Every locator reads the pristine text of one file and returns splices (offset ranges with
their rendered replacement) for all the syscalls at once, in the order of their numbers.
Each syscall's body is a file of its own, kernel/<name>.c, so the edits of two syscalls never
share a line. Nothing here writes files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from memuse_kit.core.errors import KitError
from memuse_kit.patching import syscall_tables as tables
from memuse_kit.patching.probes import TreeFacts
from memuse_kit.patching.spec import SyscallSpec
from memuse_kit.patching.templates import TAB, render, render_from
from memuse_kit.trees.kernel_version import KernelVersion

SYSCALLS_H = "include/linux/syscalls.h"
KERNEL_MAKEFILE = "kernel/Makefile"
MAINTAINERS = "MAINTAINERS"
# where memuse's body went before each syscall had a file of its own (trees patched then)
LEGACY_BODY = "kernel/sys.c"
ALWAYS_INCLUDED = "linux/syscalls.h"  # SYSCALL_DEFINEn


def source_path(name: str) -> str:
    """The file that holds a syscall's body."""
    return f"kernel/{name}.c"


@dataclass(frozen=True)
class Splice:
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Placed:
    """A syscall as it goes into one tree: its spec, its number, its probes' answers there."""

    spec: SyscallSpec
    nr: int
    probes: Dict[str, bool]

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class RenderContext:
    kernel: KernelVersion
    syscalls: Tuple[Placed, ...]  # in the order of their numbers
    facts: Optional[TreeFacts]  # None when no body reads facts.*

    def render(self, template: str, placed: Optional[Placed] = None, **extra: object) -> str:
        return render(f"kernel/{template}", **self._values(placed), **extra)

    def _values(self, placed: Optional[Placed]) -> Dict[str, object]:
        values: Dict[str, object] = {"kernel": self.kernel, "facts": self.facts}
        if placed is not None:
            values.update(name=placed.name, nr=placed.nr, spec=placed.spec, probes=placed.probes)
        return values

    def in_abi(self, abi: str) -> List[Placed]:
        return [placed for placed in self.syscalls if placed.spec.goes_in(abi)]

    def source(self, placed: Placed) -> str:
        """The whole of kernel/<name>.c: the license line, the headers, the body."""
        spec = placed.spec
        body = render_from(spec.root, spec.impl_template, **self._values(placed))
        headers = sorted({ALWAYS_INCLUDED, *spec.headers})
        return self.render("source.c.j2", placed, headers=headers, body=body)


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


def after_last_entry(template: str, abi: str, below: Optional[int] = None) -> Locator:
    """One table line per syscall of the ABI, after the table's last numbered entry."""

    def locate(text: str, ctx: RenderContext) -> List[Splice]:
        placed = ctx.in_abi(abi)
        if not placed:
            return []
        last = tables.last_entry(text, below)
        if last is None:
            raise KitError("no numbered entries to add after")
        offset = _line_end_offset(text, last.line_index)
        column = _entry_point_column(last.line)
        lines = "".join(ctx.render(template, p, entry_column=column) for p in placed)
        return [Splice(offset, offset, lines)]

    return locate


_UNDEF_NR_SYSCALLS = re.compile(r"^#undef __NR_syscalls\n", re.MULTILINE)
_DEFINE_NR_SYSCALLS = re.compile(r"^#define __NR_syscalls\s+\(?(\d+)\)?[ \t]*\n", re.MULTILINE)


def generic_unistd(text: str, ctx: RenderContext) -> List[Splice]:
    placed = ctx.in_abi("generic")
    if not placed:
        return []
    undef = _UNDEF_NR_SYSCALLS.search(text)
    define = _DEFINE_NR_SYSCALLS.search(text)
    if not undef or not define:
        raise KitError("anchor '#undef __NR_syscalls' / '#define __NR_syscalls' not found")
    entries = "".join(ctx.render("unistd.h.j2", p) for p in placed)
    total = max(int(define.group(1)), 1 + max(p.nr for p in placed))
    return [
        Splice(undef.start(), undef.start(), entries),
        Splice(define.start(), define.end(), ctx.render("unistd_nr_syscalls.h.j2", total=total)),
    ]


_ARCH_SPECIFIC = re.compile(r"\n\n/\*\n \* Architecture-specific system calls\n")


def syscalls_prototype(text: str, ctx: RenderContext) -> List[Splice]:
    """The prototypes, at the end of the generic block of include/linux/syscalls.h."""
    if not ctx.syscalls:
        return []
    anchor = _ARCH_SPECIFIC.search(text)
    if not anchor:
        raise KitError("anchor comment ' * Architecture-specific system calls' not found")
    offset = anchor.start() + 1
    lines = "".join(ctx.render("syscalls.h.j2", p) for p in ctx.syscalls)
    return [Splice(offset, offset, lines)]


_FIRST_CONFIG_OBJ = re.compile(r"^obj-\$\(CONFIG_\w+\)", re.MULTILINE)


def kernel_makefile(text: str, ctx: RenderContext) -> List[Splice]:
    """obj-y += <name>.o, after the unconditional objects, before the first obj-$(CONFIG_...)."""
    if not ctx.syscalls:
        return []
    anchor = _FIRST_CONFIG_OBJ.search(text)
    if not anchor:
        raise KitError("no 'obj-$(CONFIG_...)' line to add 'obj-y += NAME.o' before")
    lines = "".join(ctx.render("makefile.j2", p) for p in ctx.syscalls)
    return [Splice(anchor.start(), anchor.start(), lines)]


# a section title: a line that starts with text and is no entry, followed by an entry
# (`M:\t...`); one search of the whole file, as a loop over its 30,000 lines cost a no-op build
# a tenth of its overhead
_SECTION_TITLE = re.compile(r"^(?![A-Z]:\t)(\S[^\n]*)\n(?=[A-Z]:\t)", re.MULTILINE)


def _section_titles(text: str) -> List[Tuple[int, str]]:
    """(offset, title) of each MAINTAINERS section."""
    return [(match.start(), match.group(1)) for match in _SECTION_TITLE.finditer(text)]


def _insertion_offset(titles: List[Tuple[int, str]], ours: str, end: int) -> int:
    """Where a section titled ours goes: before the title that leaves the fewest titles on
    the wrong side of it. MAINTAINERS is sorted but for a few sections out of place (LPC32XX
    among the ARM ones), which "before the first greater title" would follow."""
    keys = [title.upper() for _, title in titles]
    greater_before, less_after = 0, sum(1 for key in keys if key < ours)
    best_cost, best = len(keys) + 1, len(keys)
    for index, key in enumerate([*keys, None]):
        if greater_before + less_after < best_cost:
            best_cost, best = greater_before + less_after, index
        if key is not None:
            greater_before += key > ours
            less_after -= key < ours
    return titles[best][0] if best < len(titles) else end


def maintainers(text: str, ctx: RenderContext) -> List[Splice]:
    """A section per syscall, in the file's alphabetical order: a new file needs one
    (checkpatch asks for it), and the section says whom its reports go to."""
    titles = _section_titles(text)
    splices = []
    for placed in ctx.syscalls:
        entry = ctx.render("maintainers.j2", placed)
        offset = _insertion_offset(titles, entry.split("\n", 1)[0].upper(), len(text))
        splices.append(Splice(offset, offset, entry))
    # two sections before the same title go in alphabetical order too (the sort is stable)
    return sorted(splices, key=lambda splice: (splice.start, splice.text))


TARGETS: Tuple[Target, ...] = (
    Target(MAINTAINERS, True, maintainers),
    Target(
        tables.X86_64_TABLE, True, after_last_entry("syscall_64.tbl.j2", "x86_64", tables.X32_FIRST)
    ),
    Target(tables.I386_TABLE, False, after_last_entry("syscall_32.tbl.j2", "i386")),
    Target(tables.GENERIC_UNISTD, False, generic_unistd),
    Target(SYSCALLS_H, True, syscalls_prototype),
    Target(KERNEL_MAKEFILE, True, kernel_makefile),
    Target(tables.GENERIC_TABLE, False, after_last_entry("syscall.tbl.j2", "generic")),
)

TABLES = (tables.X86_64_TABLE, tables.I386_TABLE, tables.GENERIC_TABLE)


def _clash_patterns(name: str) -> Dict[str, re.Pattern[str]]:
    escaped = re.escape(name)
    return {
        SYSCALLS_H: re.compile(rf"\bsys_{escaped}\s*\("),
        tables.GENERIC_UNISTD: re.compile(rf"\b__NR_{escaped}\b"),
        LEGACY_BODY: re.compile(rf"SYSCALL_DEFINE\d\(\s*{escaped}\b"),
    }


def existing_syscall(path: str, text: str, name: str) -> Optional[int]:
    """1-based line number where a pristine file already has a syscall called name, or None."""
    if path in TABLES:
        found = tables.entries_named(text, name)
        return found[0].line_index + 1 if found else None
    pattern = _clash_patterns(name).get(path)
    match = pattern.search(text) if pattern else None
    return text.count("\n", 0, match.start()) + 1 if match else None
