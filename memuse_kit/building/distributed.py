"""Compiling the kernel's objects on other machines, with engines that exist: distcc, icecream.

memuse-kit schedules nothing itself. It names the helpers to the engine (distcc's host list,
icecream's scheduler), sizes make's -j to their slots, keeps host programs (HOSTCC) on this
machine, and leaves ccache in front when it is installed: ccache runs the engine, through
CCACHE_PREFIX, only for the objects it does not have. CC and HOSTCC then read as in a local
build, so kbuild recompiles nothing when a tree switches between local and distributed.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from memuse_kit.building.compiler import Compiler
from memuse_kit.core.errors import KitError
from memuse_kit.core.runner import CommandTimeout, Runner

DISTCC_PORT = 3632
DISTCC_SLOTS = 4  # distcc's own limit for a TCP host named without /LIMIT
ICECC_SCHEDULER_PORT = 8765  # its text interface, which lists the helpers, is the next port
ICECC_CONF = Path("/etc/icecc/icecc.conf")
PROBE_TIMEOUT = 120.0  # an icecream helper may first have to receive the compiler
PROBE_SOURCE = "int memuse_kit_probe(void) { return 0; }\n"
TIMED_OUT = 124  # a probe's status when it had no answer in PROBE_TIMEOUT (timeout(1)'s)

# HOST[:PORT][/LIMIT][,lzo]: distcc's TCP host; HOST may be an IPv6 address in brackets
_DISTCC_HOST = re.compile(
    r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9._-]*)"
    r"(?::(?P<port>[0-9]+))?(?:/(?P<slots>[0-9]+))?(?P<options>(?:,lzo)*)$"
)
# a line of the icecream scheduler's "listcs": " node (ip:port) [platform] speed=... jobs=0/4 ..."
_ICECC_NODE = re.compile(
    r"^\s*(?P<name>\S+) \((?P<ip>[^ ]+):(?P<port>\d+)\) \[(?P<platform>[^\]]*)\].*"
    r"\bjobs=\d+/(?P<slots>\d+)"
)
# distcc tells when a job it could not send compiled here instead (its default fallback)
_DISTCC_FELL_BACK = re.compile(r"^distcc\[\d+\] .*(running locally instead|retrying locally)")

# CCACHE_PREFIX for ccache in front of an engine (without ccache, the first word of CC): kbuild
# compiles every kernel object with -D__KERNEL__ and no host program with it, so HOSTCC's
# "ccache gcc" stays on this machine.
# kbuild's compiler tests (cc-option, cc-disable-warning and the like, some forty each time
# make reads the Makefiles) carry -D__KERNEL__ too, but compile /dev/null or standard input:
# they stay here as well. icecream would send each to a helper, one at a time while make
# parses, and compile again here every one that fails, as most are meant to.
PREFIX_SCRIPT = """\
#!/bin/sh
# memuse-kit: ccache's prefix command. Kernel objects (-D__KERNEL__) go to the engine named
# first; host programs (HOSTCC) and kbuild's compiler tests (of /dev/null or standard
# input) are compiled on this machine.
engine=$1
shift
kernel=
for arg in "$@"; do
    case $arg in
        -D__KERNEL__) kernel=1 ;;
        /dev/null | -) exec "$@" ;;
    esac
done
if [ -n "$kernel" ]; then
    exec "$engine" "$@"
fi
exec "$@"
"""


@dataclass(frozen=True)
class Helper:
    name: str  # distcc: its host spec; icecream: its node name
    address: str  # host:port
    slots: int
    local: bool = False  # distcc's "localhost": this machine, no daemon involved

    def as_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "address": self.address, "slots": self.slots}


@dataclass(frozen=True)
class Farm:
    """The helpers one build distributes to, and the engine that does it."""

    engine: str  # "distcc" or "icecream"
    helpers: Tuple[Helper, ...]
    local_slots: int = 0  # icecream also compiles jobs here, as many as there are CPUs
    scheduler: Optional[str] = None

    @property
    def client(self) -> str:
        """The command that hands one compile to the engine."""
        return "distcc" if self.engine == "distcc" else "icecc"

    def jobs(self) -> int:
        """make's -j: every slot of the helpers (and icecream's local ones) busy at once."""
        return max(1, sum(helper.slots for helper in self.helpers) + self.local_slots)

    def environment(self) -> Dict[str, str]:
        if self.engine == "distcc":
            return {"DISTCC_HOSTS": " ".join(helper.name for helper in self.helpers)}
        return {}

    def record(self, jobs: int, fell_back: int = 0) -> Dict[str, Any]:
        """What the build record keeps: which engine and which helpers built it."""
        return {
            "engine": self.engine,
            "scheduler": self.scheduler,
            "hosts": [helper.as_dict() for helper in self.helpers],
            "jobs": jobs,
            "fell_back": fell_back,
        }


def parse_distcc_hosts(text: str) -> Farm:
    """--distcc HOSTS: distcc's own host list, HOST[:PORT][/SLOTS] separated by spaces."""
    specs = text.split()
    if not specs:
        raise KitError("--distcc is empty: name the helpers, e.g. --distcc 'box1/8 box2:3632/4'")
    helpers = tuple(_distcc_helper(spec) for spec in specs)
    return Farm("distcc", helpers)


def _distcc_helper(spec: str) -> Helper:
    if spec == "localhost" or spec.startswith("localhost/"):
        limit = spec.partition("/")[2] or "2"  # distcc's default for localhost
        if not limit.isdigit() or int(limit) < 1:
            raise KitError(f"--distcc {spec}: give localhost or localhost/N")
        return Helper(spec, "localhost", int(limit), local=True)
    match = _DISTCC_HOST.match(spec)
    if match is None:
        raise KitError(
            f"--distcc {spec}: give HOST, HOST:PORT or HOST:PORT/SLOTS (distcc's TCP hosts; "
            "ssh hosts, pump mode (,cpp) and zeroconf are not supported)"
        )
    port = int(match.group("port") or DISTCC_PORT)
    slots = int(match.group("slots") or DISTCC_SLOTS)
    if not 0 < port < 65536 or slots < 1:
        raise KitError(f"--distcc {spec}: the port must be 1-65535 and the slots at least 1")
    return Helper(spec, f"{match.group('host')}:{port}", slots)


def scheduler_address(environ: Optional[Dict[str, str]] = None) -> str:
    """The icecream scheduler: $ICECC_SCHEDULER (icecream's own variable), else the one
    /etc/icecc/icecc.conf names."""
    env = os.environ if environ is None else environ
    named = env.get("ICECC_SCHEDULER", "").strip()
    if not named and ICECC_CONF.is_file():
        found = re.search(r'^ICECC_SCHEDULER_HOST="?([^"\n]*)"?', ICECC_CONF.read_text(), re.M)
        named = found.group(1).strip() if found else ""
    if not named:
        raise KitError(
            "--icecream: memuse-kit asks the icecream scheduler for the helpers and their slots; "
            "name it with ICECC_SCHEDULER=host[:port] or ICECC_SCHEDULER_HOST in "
            f"{ICECC_CONF}"
        )
    return named if ":" in named else f"{named}:{ICECC_SCHEDULER_PORT}"


def icecream_farm(scheduler: str, local_slots: Optional[int] = None) -> Farm:
    """The helpers the scheduler lists that take jobs from other machines (a daemon that
    cannot, such as one without the right to chroot, lists port 0)."""
    listing = _ask_scheduler(scheduler, "listcs")
    helpers = []
    for line in listing:
        match = _ICECC_NODE.match(line)
        if match and match.group("port") != "0" and match.group("platform") == "x86_64":
            address = f"{match.group('ip')}:{match.group('port')}"
            helpers.append(Helper(match.group("name"), address, int(match.group("slots"))))
    if not helpers:
        raise KitError(
            f"icecream scheduler {scheduler} lists no helper that takes x86_64 jobs from other "
            "machines: start iceccd (as root, or with CAP_SYS_CHROOT) on the helpers"
        )
    here = (os.cpu_count() or 1) if local_slots is None else local_slots
    return Farm("icecream", tuple(helpers), local_slots=here, scheduler=scheduler)


def _ask_scheduler(scheduler: str, command: str, timeout: float = 10.0) -> List[str]:
    """One command on the scheduler's text interface (its port + 1), the reply's lines."""
    host, _, port = scheduler.rpartition(":")
    try:
        with socket.create_connection((host, int(port) + 1), timeout=timeout) as conn:
            reply = _read_until(conn, b"\n200 ")
            conn.sendall(f"{command}\r\n".encode())
            reply = _read_until(conn, b"200 done")
            with suppress(OSError):
                conn.sendall(b"quit\r\n")
    except (OSError, ValueError) as error:
        why = getattr(error, "strerror", None) or str(error)
        raise KitError(
            f"cannot ask the icecream scheduler {scheduler} for its helpers ({why}): is "
            "icecc-scheduler running there, and ICECC_SCHEDULER right?"
        ) from None
    return reply.decode(errors="replace").splitlines()


def _read_until(conn: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise OSError(0, "the scheduler closed the connection")
        data += chunk
    return data


def with_engine(
    cc: Compiler, farm: Optional[Farm], prefix_script: Optional[Path] = None
) -> Compiler:
    """The compiler as make is given it. With ccache the engine goes in CCACHE_PREFIX (see
    environment); without, in front of CC, behind the prefix script when one is given, which
    keeps kbuild's compiler tests here as it does behind ccache."""
    if farm is None:
        return cc
    launcher = farm.client if prefix_script is None else f"{prefix_script} {farm.client}"
    return replace(cc, launcher=launcher)


def environment(cc: Compiler, farm: Optional[Farm], prefix_script: Path) -> Dict[str, str]:
    if farm is None:
        return {}
    env = farm.environment()
    if cc.ccache:
        env["CCACHE_PREFIX"] = f"{prefix_script} {farm.client}"
    return env


def fell_back(line: str) -> bool:
    return bool(_DISTCC_FELL_BACK.match(line))


# --- preflight: the helpers really compile, with the compiler this tree needs ---------------


def compiler_word(cc: Compiler) -> str:
    """The compiler as the engine receives it: ccache hands on the path it found on PATH."""
    if cc.ccache:
        return shutil.which(cc.command) or cc.command
    return cc.command


def probe_problems(farm: Farm, cc: Compiler) -> List[str]:
    """One line per helper that cannot build this kernel's objects as this machine would."""
    client = shutil.which(farm.client)
    if client is None:
        package = "distcc" if farm.engine == "distcc" else "icecc"
        return [f"{farm.client} is not installed: sudo apt-get install {package}"]
    partner = cxx_partner(cc.command)
    if farm.engine == "icecream" and shutil.which(partner) is None:
        return [
            f"icecream sends helpers {cc.command} together with {partner} (icecc-create-env "
            f"packs both), and {partner} is not installed: sudo apt-get install {partner}"
        ]
    with tempfile.TemporaryDirectory(prefix="memuse-kit-probe.") as scratch:
        work = Path(scratch)
        (work / "probe.c").write_text(PROBE_SOURCE)
        local = _compile(work, [cc.command], "here.o", {})
        if local.returncode != 0:
            return [f"{cc.command} cannot compile a test file here: {_last_line(local)}"]
        want = elf_comment((work / "here.o").read_bytes())
        probe: Callable[[Helper], Optional[str]]
        if farm.engine == "distcc":
            probe = lambda helper: _probe_distcc(work, cc, helper, want)  # noqa: E731
        else:
            probe = lambda helper: _probe_icecream(work, cc, helper, want)  # noqa: E731
        remote = [helper for helper in farm.helpers if not helper.local]
        with ThreadPoolExecutor(max_workers=max(1, min(len(remote), 16))) as pool:
            found = list(pool.map(probe, remote))
    return [problem for problem in found if problem]


def cxx_partner(command: str) -> str:
    """The C++ compiler icecc-create-env packs with a gcc: gcc-11 -> g++-11."""
    head, _, tail = command.rpartition("gcc")
    return f"{head}g++{tail}"


def _compile(
    work: Path, command: List[str], output: str, env: Dict[str, str]
) -> subprocess.CompletedProcess:
    cmd = [*command, "-c", "probe.c", "-o", output]
    try:
        return Runner().run(
            cmd, cwd=work, env=env, check=False, mutates=False, timeout=PROBE_TIMEOUT
        )
    except CommandTimeout:
        return subprocess.CompletedProcess(
            cmd, TIMED_OUT, "", f"no answer in {PROBE_TIMEOUT:.0f} s"
        )


def _probe_distcc(work: Path, cc: Compiler, helper: Helper, want: str) -> Optional[str]:
    output = f"distcc-{_safe(helper.address)}.o"
    state = work / f".distcc-{_safe(helper.address)}"  # its own back-off state, not ~/.distcc's
    state.mkdir()
    env = {
        "DISTCC_HOSTS": helper.name,
        "DISTCC_FALLBACK": "0",  # compiled there or not at all
        "DISTCC_SKIP_LOCAL_RETRY": "1",
        "DISTCC_IO_TIMEOUT": "30",
        "DISTCC_DIR": str(state),
    }
    result = _compile(work, ["distcc", compiler_word(cc)], output, env)
    where = f"distcc helper {helper.address}"
    if result.returncode != 0:
        return f"{where} did not compile a test file with {compiler_word(cc)}: {_why(result)}"
    return _compare(where, (work / output).read_bytes(), cc, want)


def _probe_icecream(work: Path, cc: Compiler, helper: Helper, want: str) -> Optional[str]:
    output = f"icecc-{_safe(helper.name)}.o"
    log = work / f"icecc-{_safe(helper.name)}.log"
    env = {"ICECC_PREFERRED_HOST": helper.name, "ICECC_DEBUG": "debug", "ICECC_LOGFILE": str(log)}
    result = _compile(work, ["icecc", compiler_word(cc)], output, env)
    where = f"icecream helper {helper.name} ({helper.address})"
    if result.returncode == TIMED_OUT:
        return (
            f"{where} was given no test compile in {PROBE_TIMEOUT:.0f} s: icecream's scheduler "
            "gives no job to a helper whose CPUs are all busy or whose slots are full; try "
            "again when it is free, or build without --icecream"
        )
    if result.returncode != 0:
        return f"{where} did not compile a test file: {_why(result)}"
    text = log.read_text(errors="replace") if log.is_file() else ""
    if f"Have to use host {helper.address}" not in text:
        return (
            f"{where} did not get the test compile, icecream compiled it "
            f"{_icecream_elsewhere(text)}: is iceccd running here, and that helper free?"
        )
    return _compare(where, (work / output).read_bytes(), cc, want)


def _icecream_elsewhere(log: str) -> str:
    other = re.search(r"Have to use host (\S+)", log)
    return f"on {other.group(1)}" if other else "on this machine"


def _compare(where: str, obj: bytes, cc: Compiler, want: str) -> Optional[str]:
    got = elf_comment(obj)
    if got == want:
        return None
    return (
        f"{where} compiles with {got or 'an unknown compiler'!r}, this tree needs {cc.command} "
        f"as here, {want!r}: install the same compiler there or leave that helper out"
    )


def _why(result: subprocess.CompletedProcess) -> str:
    text = f"{result.stderr}\n{result.stdout}"
    if "Connection refused" in text:
        return "connection refused (is the daemon running and listening there?)"
    return _last_line(result)


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in f"{result.stdout}\n{result.stderr}".splitlines()]
    informative = [line for line in lines if line and "fallbacks are disabled" not in line]
    return (informative or [f"status {result.returncode}"])[-1]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def elf_comment(obj: bytes) -> str:
    """The .comment section of an ELF64 little-endian object: the compiler proper writes its
    identity there ("GCC: (Debian 12.2.0-14) 12.2.0"). __VERSION__ would not do: distcc and
    icecream preprocess here, so it names this machine's compiler wherever the object was
    compiled."""
    if obj[:4] != b"\x7fELF" or obj[4] != 2 or obj[5] != 1:
        return ""
    (shoff,) = struct.unpack_from("<Q", obj, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", obj, 0x3A)

    def section(index: int) -> Tuple[int, int, int]:
        base = shoff + index * shentsize
        (name,) = struct.unpack_from("<I", obj, base)
        offset, size = struct.unpack_from("<QQ", obj, base + 0x18)
        return name, offset, size

    _, names_at, _ = section(shstrndx)
    for index in range(shnum):
        name, offset, size = section(index)
        end = obj.index(b"\0", names_at + name)
        if obj[names_at + name : end] == b".comment":
            parts = obj[offset : offset + size].split(b"\0")
            return " ".join(part.decode(errors="replace") for part in parts if part)
    return ""
