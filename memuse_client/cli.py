"""`memuse PID...` and `memuse experiment`: every failure is one line on stderr, never a trace."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from typing import Any, Dict, List, NoReturn, Optional, Sequence

from .backends import BACKENDS, Backend, Measures, SmapsBackend, make_backend
from .discovery import ENV_FORCE, ENV_NR, FORCE_RISK, parse_override
from .errors import MemuseUnavailable, ScenarioError
from .experiment import experiment_json, experiment_table, run_experiment
from .kinds import ALL_KINDS, KIND_KEYS, Kind, parse_kind
from .smaps import read_proc
from .units import human

KINDS_HELP = f"""\
kinds (--kind takes the name or the number):
  1 stack            resident bytes of the [stack] VMA (the main thread's call stack)
  2 kernel_stack     THREAD_SIZE of the task while it has a kernel stack, else 0
  3 heap             resident bytes of the [heap] VMA (brk)
  4 kernel_mappings  resident bytes of kernel-named VMAs: [vdso], [vvar], [uprobes]...
  5 total            resident bytes of every VMA (smaps_rollup's Rss)
Resident means present pages as smaps counts Rss, plus hugetlb pages.

backends:
  syscall  the memuse system call; its number comes from --nr, ${ENV_NR}, the metadata
           `invoke build` wrote for the running kernel, or __NR_memuse in kernel headers
  smaps    the same figures computed in userspace from /proc/PID/smaps and smaps_rollup,
           on any kernel. smaps knows nothing of kernel stacks: kernel_stack is THREAD_SIZE
           from the running kernel's config (/proc/config.gz, /boot/config-RELEASE or the
           build's .config: 16384, 32768 with CONFIG_KASAN; on arm64 a page if pages are
           larger) while the task is alive, 0 for a zombie, and "unavailable" (null in JSON)
           when no config can be read.

`memuse experiment` runs the lab report's experiment (see memuse experiment --help)."""


PID_MAX = (1 << 31) - 1  # pid_t: a larger number would wrap to another process
MAX_WATCH = 86400.0  # seconds between measurements, at most


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _nr(text: str) -> int:
    try:
        return parse_override(text, "--nr")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _kind(text: str) -> Kind:
    try:
        return parse_kind(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_WATCH:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def _add_force(parser: OneLineParser) -> None:
    parser.add_argument(
        "--force",
        action="store_true",
        help=f"call --nr/${ENV_NR} even when it cannot be confirmed to be memuse "
        f"(also ${ENV_FORCE}=1): {FORCE_RISK}",
    )


def _warn_if_unconfirmed(backend: Backend) -> None:
    number = getattr(backend, "number", None)
    if number is not None and not number.verified:
        print(
            f"memuse: warning: system call {number.nr} ({number.source}) is not confirmed "
            "to be memuse; called anyway because of --force",
            file=sys.stderr,
        )


def measure_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="memuse",
        description="How much memory of each kind processes have resident, in bytes.",
        epilog=KINDS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("pids", nargs="*", metavar="PID", help="process (or thread) ids")
    parser.add_argument(
        "--kind",
        action="append",
        type=_kind,
        metavar="K",
        help=f"only this kind ({', '.join(KIND_KEYS)} or 1-5); repeatable",
    )
    parser.add_argument("--backend", choices=BACKENDS, help="syscall (default) or smaps")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="the syscall and smaps side by side (a running process may change in between)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='one JSON object {"PID": {"stack": bytes, ...}}; with --compare '
        '{"PID": {"syscall": {...}, "smaps": {...}}}; with --watch one object a line',
    )
    parser.add_argument(
        "--watch", type=_seconds, metavar="SECONDS", help="measure again every SECONDS"
    )
    parser.add_argument(
        "--count", type=int, metavar="N", help="with --watch: stop after N measurements"
    )
    parser.add_argument("--nr", type=_nr, help=f"syscall number to use (else ${ENV_NR}, ...)")
    _add_force(parser)
    return parser


def experiment_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="memuse experiment",
        description="The lab report's experiment: do nothing, heap active, heap passive and "
        "stack scenarios, each in a child process stopped while it is measured. With the "
        "syscall backend (the default) smaps' figure stands in brackets beside each.",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--backend", choices=BACKENDS, default="syscall", help="smaps works on any kernel"
    )
    parser.add_argument("--nr", type=_nr, help=f"syscall number to use (else ${ENV_NR}, ...)")
    _add_force(parser)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when the syscall and smaps disagree"
    )
    return parser


def _pids(parser: OneLineParser, texts: List[str]) -> List[int]:
    if not texts:
        parser.error("give at least one PID (or run `memuse experiment`)")
    pids = []
    for text in texts:
        if not text.isdigit() or not 0 < int(text) <= PID_MAX:
            parser.error(f"not a process id: {text!r}")
        pids.append(int(text))
    return pids


def _command_name(pid: int) -> str:
    try:
        return read_proc(pid, "comm").strip()
    except OSError:
        return "?"


def _keyed(measures: Measures) -> Dict[str, Optional[int]]:
    return {kind.key: value for kind, value in measures.items()}


def _show(
    pids: List[int], kinds: List[Kind], backends: List[Backend], as_json: bool, compact: bool
) -> None:
    # everything is measured before anything is printed: an error leaves one line only
    results = {pid: [backend.measure(pid, kinds) for backend in backends] for pid in pids}
    if as_json:
        document: Dict[str, Any] = {}
        for pid, measures in results.items():
            if len(backends) == 1:
                document[str(pid)] = _keyed(measures[0])
            else:
                document[str(pid)] = {
                    backend.name: _keyed(m) for backend, m in zip(backends, measures)
                }
        print(json.dumps(document, indent=None if compact else 2))
        return
    width = max(len(kind.key) for kind in kinds)
    for pid, measures in results.items():
        print(f"pid {pid} ({_command_name(pid)}): {' vs '.join(b.describe() for b in backends)}")
        for kind in kinds:
            if len(measures) == 1:
                value = measures[0][kind]
                exact = "" if value is None else f"{value:>14} bytes"
                print(f"  {kind.key:<{width}}  {human(value):>12}  {exact}".rstrip())
            else:
                by_syscall, by_smaps = (m[kind] for m in measures)
                differs = None not in (by_syscall, by_smaps) and by_syscall != by_smaps
                mark = "  differs" if differs else ""
                print(
                    f"  {kind.key:<{width}}  syscall {_bytes(by_syscall):>14}"
                    f"  smaps {_bytes(by_smaps):>14}{mark}"
                )


def _bytes(value: Optional[int]) -> str:
    return "unavailable" if value is None else str(value)


def run_measure(argv: Sequence[str]) -> int:
    parser = measure_parser()
    args = parser.parse_args(argv)
    pids = _pids(parser, args.pids)
    if args.compare and args.backend:
        parser.error("--compare uses both backends: leave out --backend")
    if args.count is not None and (args.watch is None or args.count < 1):
        parser.error("--count needs --watch and a positive number")
    kinds = list(dict.fromkeys(args.kind)) if args.kind else list(ALL_KINDS)
    if args.compare:
        backends = [make_backend("syscall", args.nr, args.force), SmapsBackend()]
    else:
        backends = [make_backend(args.backend or "syscall", args.nr, args.force)]
    _warn_if_unconfirmed(backends[0])
    if args.watch is None:
        _show(pids, kinds, backends, args.json, compact=False)
        return 0
    done = 0
    while True:
        if not args.json:
            print(f"--- {datetime.now().strftime('%H:%M:%S')}")
        _show(pids, kinds, backends, args.json, compact=True)
        sys.stdout.flush()
        done += 1
        if args.count is not None and done >= args.count:
            return 0
        time.sleep(args.watch)


def run_experiment_command(argv: Sequence[str]) -> int:
    args = experiment_parser().parse_args(argv)
    backend = make_backend(args.backend, args.nr, args.force)
    _warn_if_unconfirmed(backend)
    rows = run_experiment(backend)
    if args.json:
        print(json.dumps(experiment_json(rows, backend), indent=2))
    else:
        print(experiment_table(rows, backend))
    if args.check and any(row.differs() for row in rows):
        return 1
    return 0


def _message(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror + (f": {err.filename}" if err.filename else "")
    return str(err)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if "experiment" in args:
            args.remove("experiment")
            return run_experiment_command(args)
        return run_measure(args)
    except SystemExit as done:  # argparse: --help, bad usage
        return done.code if isinstance(done.code, int) else 1
    except KeyboardInterrupt:
        # Ctrl-C is how --watch is meant to end
        return 0 if any(arg.startswith("--watch") for arg in args) else 130
    except BrokenPipeError:
        # the reader went away (memuse ... | head): no complaint when stdout is flushed at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (MemuseUnavailable, ScenarioError, ValueError, OSError) as err:
        print(f"memuse: {_message(err)}", file=sys.stderr)
        return 1
