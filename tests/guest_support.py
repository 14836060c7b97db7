"""Helpers for tests/guest, which run as root inside a booted memuse kernel.

The syscall is called through ctypes here rather than memuse_client.raw_memuse so that the
tests see the kernel's answer untouched: the value, or -1 and the errno (EINTR included).
smaps is parsed by the client's parser, which keeps every field (AnonHugePages, the hugetlb
fields), so that a test can show the target did not change while it was measured.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import gzip
import hashlib
import json
import os
import platform
import pwd
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from memuse_client.build_record import BuildRecord
from memuse_client.discovery import cache_root, kallsyms_has_memuse, kernel_release, matching_builds
from memuse_client.scenarios import runs_here
from memuse_client.smaps import Vma, classify, parse_fields, parse_smaps, thread_size

PAGE = os.sysconf("SC_PAGESIZE")
MIB = 1024 * 1024
GIB = 1024 * MIB
USER_KINDS = (1, 3, 4, 5)
ALL_KINDS = (1, 2, 3, 4, 5)
KERNEL_STACK = 2
DOCUMENTED_ERRNOS = frozenset({errno.EINVAL, errno.ESRCH, errno.EACCES, errno.EINTR})
# lines the terminal summary prints after the run: the tables and numbers a CI log should show
REPORT: List[str] = []


def skip_reason() -> Optional[str]:
    """Why tests/guest cannot run here, or None inside a memuse kernel as root."""
    if kallsyms_has_memuse() is not True:
        return "the running kernel has no memuse system call (tests/guest runs in its VM)"
    if os.geteuid() != 0:
        return "tests/guest needs root (nr_hugepages, other users' processes, setresuid)"
    return None


_libc = ctypes.CDLL(None, use_errno=True)
# the C library with the prototypes the guest tests' own mappings need
libc = _libc
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
for _name in ("mprotect", "madvise"):
    getattr(libc, _name).argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def call(nr: int, pid: int, kind: int) -> Tuple[int, int]:
    """memuse(pid, kind) as system call nr: (bytes, 0), or (-1, errno) when it failed.

    The arguments go in as C longs, so a kind beyond 32 bits reaches the kernel whole and
    the kernel's int parameter sees its low 32 bits, as for any int syscall argument.
    """
    ctypes.set_errno(0)
    result = _syscall(ctypes.c_long(nr), ctypes.c_long(pid), ctypes.c_long(kind))
    return (int(result), 0) if result >= 0 else (-1, ctypes.get_errno())


def errno_name(code: int) -> str:
    return errno.errorcode.get(code, str(code)) if code else "ok"


@functools.lru_cache(maxsize=1)
def expected_thread_size() -> int:
    """THREAD_SIZE of the running kernel (from /proc/config.gz: 16 KiB, 32 KiB with KASAN).

    Cached: ask once as root, before a child drops privileges (the client also looks in
    root's build cache, which nobody may not read).
    """
    size = thread_size()
    if size is None:
        raise AssertionError("THREAD_SIZE unknown: the vm config enables IKCONFIG_PROC")
    return size


# --- /proc/PID/smaps ------------------------------------------------------------------------


def read_smaps(pid: Union[int, str]) -> List[Vma]:
    return parse_smaps(Path(f"/proc/{pid}/smaps").read_text())


def read_rollup(pid: Union[int, str]) -> Dict[str, int]:
    """smaps_rollup's fields in bytes; {} for a task without an mm (ESRCH since 6.13)."""
    try:
        return parse_fields(Path(f"/proc/{pid}/smaps_rollup").read_text())
    except ProcessLookupError:
        return {}


def kind_of(name: str) -> Optional[int]:
    """The memuse kind of a VMA smaps names `name`, None for files and unnamed memory."""
    kind = classify(name)
    return None if kind is None else int(kind)


@dataclass(frozen=True)
class SmapsView:
    """One reading of a process's smaps and smaps_rollup."""

    vmas: Tuple[Vma, ...]
    rollup: Dict[str, int]
    text: str = ""  # smaps as read: its header lines and VmFlags, which Vma does not keep

    def expected(self, kind: int) -> int:
        """What memuse(pid, kind) must return for kinds 1, 3, 4 and 5."""
        if kind == 5:
            keys = ("Rss", "Private_Hugetlb", "Shared_Hugetlb")
            return sum(self.rollup.get(key, 0) for key in keys)
        return sum(vma.resident for vma in self.vmas if kind_of(vma.name) == kind)

    def footprint(self) -> List[Tuple[Any, ...]]:
        """What memuse must not change: every VMA's resident, THP and hugetlb figures.

        Pss and the shared/private split are left out: they move when other processes
        map or unmap the same file pages, which says nothing about this process.
        """
        keys = ("Rss", "Anonymous", "AnonHugePages", "Private_Hugetlb", "Shared_Hugetlb")
        rows = [
            (vma.start, vma.end, vma.name, *(vma.fields.get(key, 0) for key in keys))
            for vma in self.vmas
        ]
        rows.append(("rollup", *(self.rollup.get(key, 0) for key in keys)))
        return rows

    def vma_at(self, address: int) -> Vma:
        for vma in self.vmas:
            if vma.start <= address < vma.end:
                return vma
        raise AssertionError(f"no VMA holds {address:#x}")

    def flags_at(self, address: int) -> Tuple[str, Tuple[str, ...]]:
        """The permissions ("rw-p") and VmFlags ("rd", "pf", ...) of the VMA holding address."""
        return vma_flags(self.text, address)


def smaps_view(pid: Union[int, str]) -> SmapsView:
    """smaps and smaps_rollup of a pid, or of "self"."""
    text = Path(f"/proc/{pid}/smaps").read_text()
    return SmapsView(tuple(parse_smaps(text)), read_rollup(pid), text)


def vma_flags(smaps: str, address: int) -> Tuple[str, Tuple[str, ...]]:
    """The permissions and VmFlags of the VMA holding address, from the text of smaps."""
    perms, flags = "", None
    for line in smaps.splitlines():
        fields = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+$", fields[0] if fields else ""):
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            perms = fields[1] if start <= address < end else ""
        elif perms and fields and fields[0] == "VmFlags:":
            flags = tuple(fields[1:])
            break
    if flags is None:
        raise AssertionError(f"no VMA with VmFlags holds {address:#x}")
    return perms, flags


# --- what the running kernel was built from ------------------------------------------------


def running_builds(nr: int) -> List[BuildRecord]:
    """The build records of the running kernel's release that name memuse as nr.

    The guest sees the host's cache (the vm task exports MEMUSE_KIT_CACHE), so the record of
    the booted build is there, with the probes its code was chosen by and its tree.
    """
    records = [record for record, _ in matching_builds(kernel_release(), cache_root())]
    found = [record for record in records if record.number_of("memuse") == nr]
    if not found:
        raise AssertionError(f"no build record of {kernel_release()} with memuse as {nr}")
    return found


def memuse_probes(probes: Dict[str, Any]) -> Dict[str, Any]:
    """memuse's probe results; another syscall's are named "<syscall>.<probe>", and an older
    build of the same release may have been made without that syscall."""
    return {name: value for name, value in probes.items() if "." not in name}


def running_probes(nr: int) -> Dict[str, Any]:
    """The probe results the running kernel's memuse was rendered with (metadata.json)."""
    seen = {
        json.dumps(memuse_probes(record.probes), sort_keys=True) for record in running_builds(nr)
    }
    if len(seen) != 1:
        raise AssertionError(f"the builds of {kernel_release()} disagree on their probes")
    probes = json.loads(seen.pop())
    if not probes:
        raise AssertionError(f"the build record of {kernel_release()} has no probes")
    return dict(probes)


# --- callers written in C (tests/guest/callers.c) -----------------------------------------

CALLERS_SOURCE = Path(__file__).resolve().parent / "guest" / "callers.c"
# the binary the host compiled for the guest (gcc is slow under TCG and KASAN; an arm64 guest
# has none), as $MEMUSE_SCENARIOS_BIN gives scenarios.c's; the older name is still read
CALLERS_ENV = "MEMUSE_CALLERS_BIN"
CALLERS_ENVS = (CALLERS_ENV, "MEMUSE_GUEST_CALLERS")


def callers_name() -> str:
    """Named after its source, so a binary built from an older callers.c is never used."""
    return f"memuse-callers-{hashlib.sha256(CALLERS_SOURCE.read_bytes()).hexdigest()[:16]}"


def compile_callers(directory: Path) -> Path:
    """tests/guest/callers.c compiled into directory."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise AssertionError(
            f"no C compiler for tests/guest/callers.c, and no prebuilt one: set {CALLERS_ENV} "
            f"to a {callers_name()} built for {platform.machine()} from this callers.c"
        )
    binary = directory / callers_name()
    command = [compiler, "-O2", "-Wall", "-Werror", "-o", str(binary), str(CALLERS_SOURCE)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stderr}"
    return binary


def given_callers(
    env: Optional[Mapping[str, str]] = None, machine: Optional[str] = None
) -> Optional[Path]:
    """The prebuilt callers $MEMUSE_CALLERS_BIN (or $MEMUSE_GUEST_CALLERS) names, if usable:
    named callers_name() (built from this callers.c), executable, for this machine."""
    env = os.environ if env is None else env
    for variable in CALLERS_ENVS:
        given = env.get(variable)
        if not given or Path(given).name != callers_name() or not os.access(given, os.X_OK):
            continue
        if runs_here(Path(given), machine):
            return Path(given)
    return None


@functools.lru_cache(maxsize=1)
def callers_binary() -> Path:
    """callers.c compiled, in a private temp directory that others may enter (nobody runs it
    too): the host's build named by $MEMUSE_CALLERS_BIN copied there, else compiled here."""
    directory = Path(tempfile.mkdtemp(prefix="memuse-callers-"))
    directory.chmod(0o755)
    given = given_callers()
    if given is None:
        return compile_callers(directory)
    binary = directory / callers_name()
    shutil.copyfile(given, binary)
    binary.chmod(0o755)
    return binary


# --- processes ------------------------------------------------------------------------------


def task_state(pid: int) -> str:
    """The state letter of /proc/PID/stat: R, S, D, T, Z, I..."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.005)


def kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def nobody() -> Tuple[int, int]:
    """uid and gid of the unprivileged user the permission tests run as."""
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def drop_privileges(uid: int, gid: int, ruid: Optional[int] = None) -> None:
    """Become uid/gid (real uid `ruid` if given) with no supplementary groups."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    real = uid if ruid is None else ruid
    os.setresuid(real, uid, uid)


@dataclass(frozen=True)
class Child:
    """A forked child computing one answer, sent back as JSON through a pipe."""

    pid: int
    answer_fd: int


def spawn(function: Callable[[], Any]) -> Child:
    """Start function() in a forked child; collect() its result.

    The child never returns into pytest: it always leaves through os._exit.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        status = 0
        try:
            message = {"result": function()}
        except BaseException:
            message = {"error": traceback.format_exc()}
            status = 1
        try:
            os.write(write_end, json.dumps(message).encode())
        finally:
            os._exit(status)
    os.close(write_end)
    return Child(pid, read_end)


def collect(child: Child, timeout: float = 600.0) -> Any:
    """The result of a spawn()ed function (its exception re-raised as an AssertionError)."""
    try:
        data = _read_all(child.answer_fd, timeout)
    finally:
        os.close(child.answer_fd)
        kill_and_reap(child.pid)
    if not data:
        raise AssertionError("the child process died without an answer")
    message = json.loads(data)
    if "error" in message:
        raise AssertionError(f"in the child process:\n{message['error']}")
    return message["result"]


def in_child(function: Callable[[], Any], timeout: float = 600.0) -> Any:
    """function() run in a forked child; its JSON-able result."""
    return collect(spawn(function), timeout)


def readable(fd: int, timeout: float = 0.0) -> bool:
    """Whether fd has data (or EOF) to read within timeout seconds."""
    return bool(select.select([fd], [], [], timeout)[0])


def run_forked(function: Callable[..., Any], *args: Any) -> int:
    """function(*args) in a forked child that never returns into pytest; its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            function(*args)
        finally:
            os._exit(1)
    return pid


def _read_all(fd: int, timeout: float) -> bytes:
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no answer from the child process within {timeout:g}s")
        if not readable(fd, left):
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def spawn_as_user(uid: int, gid: int, function: Callable[[], Any]) -> Child:
    """spawn() function in a child that dropped root for uid/gid."""
    expected_thread_size()  # cached now, while root can read the kernel config

    def dropped() -> Any:
        drop_privileges(uid, gid)
        return function()

    return spawn(dropped)


def as_user(uid: int, gid: int, function: Callable[[], Any]) -> Any:
    """function() run in a child that dropped root for uid/gid; its result."""
    return collect(spawn_as_user(uid, gid, function))


# --- the kernel log -------------------------------------------------------------------------

# what a kernel problem prints; boot banners that merely mention lockdep are not reports
_REPORT = re.compile(
    r"\bBUG\b|WARNING:|\bOops\b|KASAN|UBSAN|general protection fault|Call Trace|"
    r"possible (circular|recursive) locking|inconsistent lock state|suspicious RCU usage|"
    r"lock held when returning|INFO: task .* blocked|detected stalls?|soft lockup|"
    r"lockdep is turned off|turning off the locking correctness validator"
)
_BANNER = re.compile(r"RCU lockdep checking is enabled|^\.\.\. MAX_LOCKDEP|Lock dependency")


def is_report(message: str) -> bool:
    return bool(_REPORT.search(message)) and not _BANNER.search(message)


def kernel_log() -> List[Tuple[int, str]]:
    """Every record /dev/kmsg still holds: (sequence number, message)."""
    records: List[Tuple[int, str]] = []
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    try:
        while True:
            try:
                raw = os.read(fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:  # records overwritten while reading: carry on
                continue
            header, _, message = raw.decode(errors="replace").partition(";")
            fields = header.split(",")
            records.append((int(fields[1]), message.split("\n", 1)[0]))
    finally:
        os.close(fd)
    return records


def log_mark() -> int:
    """The sequence number of the newest kernel log record."""
    records = kernel_log()
    return records[-1][0] if records else -1


def reports_since(mark: int) -> List[str]:
    """Kernel log lines after `mark` that report a bug, warning, KASAN or lockdep splat."""
    return [message for seq, message in kernel_log() if seq > mark and is_report(message)]


def first_report() -> Optional[str]:
    """The first problem the kernel log holds, boot included."""
    return next((message for _, message in kernel_log() if is_report(message)), None)


# the debug options whose reports the kernel-log checks look for
WATCHERS = ("CONFIG_KASAN", "CONFIG_PROVE_LOCKING", "CONFIG_DEBUG_VM", "CONFIG_DEBUG_ATOMIC_SLEEP")
# set by a run of tests/guest on a kernel built without them on purpose (see conftest.py)
WITHOUT_WATCHERS_ENV = "MEMUSE_GUEST_WITHOUT_WATCHERS"


def running_config() -> Dict[str, str]:
    """The booted kernel's options from /proc/config.gz (the vm config has IKCONFIG_PROC)."""
    with gzip.open("/proc/config.gz", "rt") as handle:
        return dict(re.findall(r"^(CONFIG_\w+)=(.*)$", handle.read(), re.MULTILINE))


def lockdep_active() -> Optional[bool]:
    """Whether lockdep is still on (it turns itself off after its first report)."""
    try:
        text = Path("/proc/lockdep_stats").read_text()
    except OSError:
        return None
    found = re.search(r"debug_locks:\s+(\d+)", text)
    return bool(int(found.group(1))) if found else None
