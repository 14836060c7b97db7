"""Native scenario processes, stopped while they are measured.

    with stopped_scenario("heap-active") as pid:
        memuse(pid, Kind.HEAP)

The child (scenarios.c, compiled on first use) sets its memory up and stops itself with
SIGSTOP; the parent waits for that with WUNTRACED, hands out the pid, and kills the child when
the block ends. The pid handed out is a StoppedScenario: an int with what the child reported.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Dict, Iterator, List, Optional, Sequence, Union

from .discovery import cache_root
from .errors import ScenarioError, ScenarioUnavailable

SOURCE = Path(__file__).with_name("scenarios.c")
SCENARIOS = (
    "do-nothing",
    "heap-active",
    "heap-passive",
    "stack",
    "heap-1g",
    "mmap-anon",
    "thp",
    "threads",
    "heap-dontneed",
    "heap-read-only",
    "sparse-64g",
    "hugetlb",
    "thp-protnone",
    "hwpoison",
    "brk-page",
    "devmem-private",
    "memfd-many",
)
UNAVAILABLE_STATUS = 77
# a binary compiled elsewhere (the host, for a VM guest whose filesystem is read-only)
ENV_BINARY = "MEMUSE_SCENARIOS_BIN"
# -O0 keeps one real frame per call of the `stack` recursion; the -fno-* say so explicitly
CFLAGS = ["-O0", "-fno-inline", "-fno-optimize-sibling-calls", "-pthread", "-Wall"]


def compilers() -> List[List[str]]:
    found = []
    if os.environ.get("CC"):
        found.append(shlex.split(os.environ["CC"]))
    found += [[path] for path in (shutil.which("cc"), shutil.which("gcc")) if path]
    return found


def binary_dirs() -> List[Path]:
    """Where the binary may live: the cache, else a private directory under the temp dir.

    Inside the test VM the host filesystem is read-only except /tmp: a binary the host
    already built is used from the cache, otherwise one is built under /tmp.
    """
    return [cache_root() / "bin", Path(tempfile.gettempdir()) / f"memuse-kit-{os.getuid()}"]


def binary_name() -> str:
    """Named after what it is built from, so a changed source or flag is never stale."""
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:16]
    return f"memuse-scenarios-{digest}"


def _private_enough(directory: Path) -> bool:
    """Only a directory no other user can write to may hold a binary we execute."""
    info = directory.stat()
    owner_ok = info.st_uid in (os.getuid(), 0)
    return owner_ok and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _usable_dir(directory: Path) -> bool:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return _private_enough(directory) and os.access(directory, os.W_OK | os.X_OK)
    except OSError:
        return False


# e_machine of the ELF programs a machine (uname -m) runs
ELF_MACHINES = {"x86_64": 62, "aarch64": 183, "arm64": 183}


def elf_machine(path: Path) -> Optional[int]:
    """e_machine of an ELF file (62 x86-64, 183 AArch64); None for anything else."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(20)
    except OSError:
        return None
    if len(header) < 20 or header[:4] != b"\x7fELF" or header[5] not in (1, 2):
        return None
    return int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")


def runs_here(path: Path, machine: Optional[str] = None) -> bool:
    """False for an ELF program of another machine than `machine` (the running one unless
    given): the host's x86_64 build, say, that an arm64 guest sees in the shared cache."""
    wanted = ELF_MACHINES.get(machine or platform.machine())
    found = elf_machine(path)
    return wanted is None or found is None or found == wanted


def scenarios_binary(dirs: Optional[List[Path]] = None) -> Path:
    """The compiled scenarios program, built now if no directory has it yet.

    Only a binary named binary_name() (built from this source) for this machine is used.
    """
    name = binary_name()
    given = os.environ.get(ENV_BINARY)
    if given and Path(given).name == name and os.access(given, os.X_OK) and runs_here(Path(given)):
        return Path(given)  # named explicitly, e.g. by `invoke vm` for the guest
    dirs = binary_dirs() if dirs is None else dirs
    for directory in dirs:
        candidate = directory / name
        if os.access(candidate, os.X_OK) and _private_enough(directory) and runs_here(candidate):
            return candidate
    for directory in dirs:
        # never over another machine's build of the same name (a cache both machines share)
        if _usable_dir(directory) and runs_here(directory / name):
            return _compile(directory / name)
    raise ScenarioError(f"no writable directory for the scenarios program among {dirs}")


def _compile(target: Path) -> Path:
    commands = compilers()
    if not commands:
        raise ScenarioError(
            "no C compiler (cc or gcc) to build the scenarios: install gcc, or set "
            f"{ENV_BINARY} to a {target.name} built for {platform.machine()}"
        )
    return compile_scenarios(target, commands[0])


def compile_scenarios(target: Path, compiler: Sequence[str], extra: Sequence[str] = ()) -> Path:
    """scenarios.c built into target with `compiler` (aarch64-linux-gnu-gcc for an arm64
    guest, with extra ["-static"]): CFLAGS, then extra. Name target binary_name()."""
    # a unique name then a rename: concurrent test processes may compile at the same time
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(handle)
    try:
        command = [*compiler, *CFLAGS, *extra, "-o", temporary, str(SOURCE)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ScenarioError(
                f"compiling {SOURCE.name} failed ({shlex.join(command)}): "
                + " ".join(done.stderr.split())[:400]
            )
        os.chmod(temporary, 0o755)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


class StoppedScenario(int):
    """The pid of a stopped scenario process (use it as an int), with what the child said."""

    name: str
    info: Dict[str, str]
    # set by resume(): the child is reaped and its pid no longer ours
    exit_status: Optional[int]

    def __new__(cls, pid: int, name: str, info: Dict[str, str]) -> StoppedScenario:
        self = super().__new__(cls, pid)
        self.name = name
        self.info = info
        self.exit_status = None
        return self

    @property
    def pid(self) -> int:
        return int(self)

    def number(self, key: str) -> int:
        """One value the child reported, e.g. number("span") of `stack`, number("addr")."""
        return int(self.info[key], 0)

    def numbers(self, key: str) -> List[int]:
        """A comma-separated value, e.g. numbers("tids") of `threads`."""
        return [int(item, 0) for item in self.info[key].split(",") if item]

    def resume(self, timeout: float = 30.0) -> int:
        """SIGCONT the child and wait for it to exit; returns its exit status (0 expected)."""
        os.kill(self.pid, signal.SIGCONT)
        status = _wait(self.pid, timeout, stopped=False)
        self.exit_status = _exit_code(status)
        return self.exit_status


def _wait(pid: int, timeout: float, stopped: bool) -> int:
    """waitpid until the child stops (or ends): WNOHANG polling so that it can time out."""
    flags = os.WNOHANG | (os.WUNTRACED if stopped else 0)
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        waited, status = os.waitpid(pid, flags)
        if waited:
            return status
        if time.monotonic() > deadline:
            raise ScenarioError(f"scenario process {pid} did not stop within {timeout:g}s")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _read_available(stream: Optional[IO[bytes]]) -> str:
    if stream is None:
        return ""
    fd = stream.fileno()
    os.set_blocking(fd, False)
    chunks = []
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(chunks).decode(errors="replace")


def parse_info(text: str, name: str) -> Dict[str, str]:
    for line in text.splitlines():
        fields = line.split()
        if fields[:2] == ["memuse-scenario", name]:
            return dict(field.split("=", 1) for field in fields[2:] if "=" in field)
    raise ScenarioError(f"scenario {name} stopped without reporting: {text.strip()!r}")


@contextmanager
def stopped_scenario(
    name: str, *args: Union[int, str], timeout: float = 120.0
) -> Iterator[StoppedScenario]:
    """Run scenario `name` in a child and yield its pid while it is stopped, set up.

    Raises ValueError for an unknown name, ScenarioUnavailable when the machine cannot run
    it (exit status 77: no hugetlb pages, no address space...), ScenarioError otherwise.
    """
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r} (expected one of {', '.join(SCENARIOS)})")
    command = [str(scenarios_binary()), name, *(str(arg) for arg in args)]
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    scenario: Optional[StoppedScenario] = None
    exit_status: Optional[int] = None
    try:
        status = _wait(process.pid, timeout, stopped=True)
        if not os.WIFSTOPPED(status):
            exit_status = _exit_code(status)
            said = " ".join(_read_available(process.stderr).split())
            how = (
                f"killed by signal {-exit_status}"
                if exit_status < 0
                else f"exited with status {exit_status}"
            )
            error = ScenarioUnavailable if exit_status == UNAVAILABLE_STATUS else ScenarioError
            raise error(f"scenario {name} {how} before stopping: {said}".rstrip(": "))
        scenario = StoppedScenario(
            process.pid, name, parse_info(_read_available(process.stdout), name)
        )
        yield scenario
    finally:
        if scenario is not None:
            exit_status = scenario.exit_status
        # never kill a pid already reaped: it may belong to another process by now
        if exit_status is None:
            try:
                os.kill(process.pid, signal.SIGKILL)
                os.waitpid(process.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            exit_status = -signal.SIGKILL
        # reaped here with os.waitpid: tell Popen so it neither waits nor warns
        process.returncode = exit_status
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
