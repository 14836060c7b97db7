"""The lab report's experiment: four scenarios, each measured while stopped.

Each scenario runs in its own child process, stopped at the point of interest (for `stack`,
at the bottom of 20000 recursive calls). The syscall's figures (when the syscall backend is
used) stand beside those computed from smaps, which are always taken.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from .backends import Backend, Measures, SmapsBackend, SyscallBackend
from .discovery import kernel_release
from .kinds import ALL_KINDS, Kind
from .scenarios import stopped_scenario

# (scenario, the report's row title)
REPORT_ROWS = [
    ("do-nothing", "do nothing"),
    ("heap-active", "heap active: 20000 B malloc'd, written"),
    ("heap-passive", "heap passive: 20000 B malloc'd, unused"),
    ("stack", "stack: 20000 recursive calls"),
]


@dataclass
class Row:
    scenario: str
    title: str
    info: Dict[str, str]
    smaps: Measures
    syscall: Optional[Measures] = None

    def differs(self) -> List[Kind]:
        """Kinds where the syscall and smaps disagree (a None on either side is no verdict)."""
        if self.syscall is None:
            return []
        return [
            kind
            for kind in ALL_KINDS
            if self.syscall[kind] is not None
            and self.smaps[kind] is not None
            and self.syscall[kind] != self.smaps[kind]
        ]


def run_experiment(backend: Backend) -> List[Row]:
    """Measure every scenario with smaps and, for a SyscallBackend, with the syscall too."""
    smaps = SmapsBackend()
    rows = []
    for scenario, title in REPORT_ROWS:
        with stopped_scenario(scenario) as pid:
            by_syscall = backend.measure(pid) if isinstance(backend, SyscallBackend) else None
            rows.append(Row(scenario, title, dict(pid.info), smaps.measure(pid), by_syscall))
    return rows


def _keyed(measures: Optional[Measures]) -> Optional[Dict[str, Optional[int]]]:
    return None if measures is None else {kind.key: measures[kind] for kind in ALL_KINDS}


def experiment_json(rows: List[Row], backend: Backend) -> Dict[str, Any]:
    syscall = None
    if isinstance(backend, SyscallBackend):
        syscall = {"nr": backend.number.nr, "source": backend.number.source}
    return {
        "kernel_release": kernel_release(),
        "backend": backend.name,
        "syscall": syscall,
        "page_size": os.sysconf("SC_PAGESIZE"),
        "scenarios": [
            {
                "name": row.scenario,
                "title": row.title,
                "info": row.info,
                "syscall": _keyed(row.syscall),
                "smaps": _keyed(row.smaps),
                "differs": [kind.key for kind in row.differs()],
            }
            for row in rows
        ],
    }


def _figure(value: Optional[int]) -> str:
    return "n/a" if value is None else str(value)


def _cell(row: Row, kind: Kind) -> str:
    if row.syscall is None:
        return _figure(row.smaps[kind])
    mark = " *" if kind in row.differs() else ""
    return f"{_figure(row.syscall[kind])} [{_figure(row.smaps[kind])}]{mark}"


def experiment_table(rows: List[Row], backend: Backend) -> str:
    """The report's table, in bytes; with the syscall, smaps' figure in brackets."""
    if isinstance(backend, SyscallBackend):
        intro = f"{backend.describe()}; [smaps figure] beside each, bytes"
    else:
        intro = f"{backend.describe()}; bytes"
    header = ["scenario", *(kind.label for kind in ALL_KINDS)]
    body = [[row.title, *(_cell(row, kind) for kind in ALL_KINDS)] for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [f"memuse experiment on {kernel_release()}: {intro}"]
    for line in [header, *body]:
        first = line[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(line[1:], widths[1:]))
        lines.append("  ".join([first, *rest]).rstrip())
    if any(row.differs() for row in rows):
        lines.append("* the syscall and smaps disagree")
    if any(row.smaps[Kind.KERNEL_STACK] is None for row in rows):
        lines.append("n/a: smaps cannot tell (no kernel config to read THREAD_SIZE from)")
    return "\n".join(lines)
