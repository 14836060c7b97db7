"""Loopback helpers for the distributed-build tests: a distccd, and an icecream scheduler with
two daemons, all on 127.0.0.1, started by a test and stopped at its end.

icecream's daemon runs remote jobs in a chroot of the compiler it was sent, which needs root
or CAP_SYS_CHROOT. The helper daemon therefore runs as root of a user namespace of the
test's user (unshare --map-auto, the subordinate ids useradd gives every user), and switches
to the icecc user of that namespace for the jobs, as a system iceccd does. The daemon the
client talks to is a plain one with --no-remote, as on a developer's machine. On one machine
every daemon is 127.0.0.1, which icecream takes for "this machine" and compiles itself unless
ICECC_TEST_REMOTEBUILD is set: icecream's own test switch, set in the clients' environment.

The helper stands in for another machine, so this machine's load must not be its load. An
iceccd reports its CPUs' idle time (read from /proc/stat) to the scheduler, which gives no
job to a daemon without any: with both cores busy with other work, the test's first job, the
preflight probe, waited in the scheduler's queue for all of its 120 s and the test failed.
In its own mount namespace the helper reads a still copy of /proc/stat, which iceccd takes
for idle CPUs (no tick counted between two reads).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Set

SOCKET_WAIT = 30.0
_DISTCCD_JOB = re.compile(r"COMPILE_OK .* (\S+)$")
_ICECC_NEW = re.compile(r"NEW (\d+) client=\S+ versions=\[[^\]]*\] (\S+) ")
_ICECC_BEGIN = re.compile(r"BEGIN: (\d+) client=\S+ server=([^(\s]+)")
_ICECC_CLIENT = re.compile(r"^ICECC\[(\d+)\] \S+ \S+: (.*)$")
_ICECC_PREPARING = re.compile(r"^preparing (\S+) to be compiled")


def free_port(pair: bool = False) -> int:
    """A TCP port free on 127.0.0.1 (with pair, the next one free too)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if not pair or _is_free(port + 1):
            return port
    raise RuntimeError("no free port pair on 127.0.0.1")


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def listening_addresses(port: int) -> Set[str]:
    """The addresses TCP sockets listen on at port, on this machine (/proc/net/tcp, tcp6)."""
    found: Set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(_address(address))
    return found


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


# iceccd 1.4 cannot listen on lo alone: with -i lo it binds lo a second time ("we should
# always listen on the loopback interface") and gives up on "Address already in use", and
# without -i it listens on every interface. Preloaded into the test's helper daemon, this
# turns its bind to any address into a bind to 127.0.0.1, and keeps itself out of the
# compilers the daemon runs (in a chroot where the library does not exist).
LOOPBACK_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>

__attribute__((constructor)) static void forget_preload(void) { unsetenv("LD_PRELOAD"); }

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    int (*real)(int, const struct sockaddr *, socklen_t) = dlsym(RTLD_NEXT, "bind");
    struct sockaddr_in loopback;

    if (addr && addr->sa_family == AF_INET && len >= sizeof(loopback) &&
        ((const struct sockaddr_in *)addr)->sin_addr.s_addr == htonl(INADDR_ANY)) {
        loopback = *(const struct sockaddr_in *)addr;
        loopback.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return real(fd, (const struct sockaddr *)&loopback, sizeof(loopback));
    }
    return real(fd, addr, len);
}
"""


def loopback_shim(directory: Path) -> Path:
    source, library = directory / "loopback-bind.c", directory / "loopback-bind.so"
    source.write_text(LOOPBACK_SHIM)
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"],
        check=True,
        capture_output=True,
    )
    return library


def wait_for_port(port: int, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + SOCKET_WAIT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} in {SOCKET_WAIT:.0f} s")


def stop(process: Optional[subprocess.Popen], sig: int = signal.SIGTERM) -> None:
    """Signal the process group the test started (the daemon and its workers), and reap it."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class Distccd:
    """distccd on 127.0.0.1 only, logging every job; path_first puts compilers of the test's
    own in front of the daemon's PATH (a helper whose gcc-11 is another gcc)."""

    def __init__(self, work: Path, slots: int = 2, path_first: Optional[Path] = None) -> None:
        self.work = work
        self.slots = slots
        self.path_first = path_first
        self.port = free_port()
        self.log = work / f"distccd-{self.port}.log"
        self.process: Optional[subprocess.Popen] = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}/{self.slots}"

    def __enter__(self) -> Distccd:
        path = os.environ.get("PATH", os.defpath)
        if self.path_first is not None:
            path = f"{self.path_first}{os.pathsep}{path}"
        cmd = [
            "distccd", "--daemon", "--no-detach", "--listen", "127.0.0.1",
            "--port", str(self.port), "--allow", "127.0.0.1", "--jobs", str(self.slots),
            "--log-file", str(self.log), "--log-level", "info",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            cmd,
            env={**os.environ, "PATH": path},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for_port(self.port, self.process, "distccd")
            if listening_addresses(self.port) != {"127.0.0.1"}:
                raise RuntimeError(f"distccd listens on {listening_addresses(self.port)}")
        except BaseException:
            stop(self.process)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.process)

    def kill(self) -> None:
        """The helper dies: SIGKILL for the daemon and the jobs it is running."""
        stop(self.process, signal.SIGKILL)

    def jobs(self) -> List[str]:
        """The source files the daemon compiled, in order, by file name."""
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        return [
            Path(match.group(1)).name
            for match in map(_DISTCCD_JOB.search, text.splitlines())
            if match
        ]


def user_namespaces_work() -> bool:
    result = subprocess.run(
        ["unshare", "--map-auto", "--map-root-user", "--mount", "true"],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def job_user() -> str:
    """The user a root iceccd runs jobs as: icecc (the package makes it), else nobody."""
    for name in ("icecc", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("neither an icecc nor a nobody user exists")


class IcecreamFarm:
    """icecc-scheduler and two iceccd: "local" (this machine's, --no-remote: it listens on a
    unix socket only) and "helper1" (takes remote jobs), on a network name of their own.

    Everything listens on 127.0.0.1 only: the scheduler with -i lo, the helper through
    LOOPBACK_SHIM, the local daemon on a unix socket. ICECC_TESTS=1, icecream's own test
    switch, keeps the scheduler's and daemons' broadcasts on lo (without it they announce
    themselves on every other interface's broadcast address)."""

    HELPER = "helper1"

    def __init__(self, work: Path) -> None:
        self.work = work
        self.scheduler_port = free_port(pair=True)  # the next port is its text interface
        self.helper_port = free_port()
        self.netname = f"memuse-kit-test-{os.getpid()}-{self.scheduler_port}"
        # the helper's jobs run as the namespace's icecc user, which must reach its files:
        # not under pytest's tmp_path, whose base only the test's user may enter
        self.helper_dir = Path(tempfile.mkdtemp(prefix="memuse-kit-icecc-helper."))
        self.helper_dir.chmod(0o755)
        self.processes: List[subprocess.Popen] = []

    @property
    def scheduler(self) -> str:
        return f"127.0.0.1:{self.scheduler_port}"

    def client_environment(self) -> Dict[str, str]:
        """What icecc needs to use this farm: its daemon's socket, the test switch that lets
        it send jobs to 127.0.0.1, helper1 preferred, and its log to read."""
        return {
            "ICECC_TEST_SOCKET": str(self.work / "local.socket"),
            "ICECC_SCHEDULER": self.scheduler,
            "ICECC_TEST_REMOTEBUILD": "1",
            "ICECC_TESTS": "1",
            "ICECC_PREFERRED_HOST": self.HELPER,
            "ICECC_ENV_COMPRESSION": "none",
            "ICECC_DEBUG": "debug",
            "ICECC_LOGFILE": str(self.work / "icecc.log"),
        }

    def _start(self, cmd: List[str], env: Optional[Dict[str, str]] = None) -> None:
        with (self.work / f"{len(self.processes)}-{Path(cmd[0]).name}.out").open("w") as out:
            self.processes.append(
                subprocess.Popen(
                    cmd,
                    cwd=self.work,
                    env={**os.environ, "ICECC_TESTS": "1", **(env or {})},
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def __enter__(self) -> IcecreamFarm:
        try:
            self._start_all()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start_all(self) -> None:
        common = ["-n", self.netname, "-s", self.scheduler]
        self._start(
            ["icecc-scheduler", "-i", "lo", "-p", str(self.scheduler_port), "-n", self.netname,
             "-l", str(self.work / "scheduler.log"), "-vvv"]
        )  # fmt: skip
        wait_for_port(self.scheduler_port + 1, self.processes[0], "icecc-scheduler")
        self._start(
            ["iceccd", "--no-remote", *common, "-N", "local", "-m", "2",
             "-b", str(self.work / "local-envs"), "-l", str(self.work / "local.log"), "-vvv"],
            {"ICECC_TEST_SOCKET": str(self.work / "local.socket")},
        )  # fmt: skip
        user, helper, shim = job_user(), self.helper_dir, loopback_shim(self.work)
        setup = (
            f"mkdir {helper}/envs {helper}/run && touch {helper}/helper.log && "
            f"chown {user}: {helper}/envs {helper}/run {helper}/helper.log && "
            f"cp /proc/stat {helper}/stat && mount --bind {helper}/stat /proc/stat && "
            f'LD_PRELOAD={shim} exec "$@"'  # iceccd's alone (the shim forgets it at once)
        )
        self._start(
            ["unshare", "--map-auto", "--map-root-user", "--mount", "sh", "-c", setup, "sh",
             "iceccd", "-p", str(self.helper_port), *common, "-N", self.HELPER,
             "-m", "2", "-b", f"{helper}/envs", "-l", f"{helper}/helper.log", "-vvv",
             "-u", user],
            {"ICECC_TEST_SOCKET": f"{helper}/run/iceccd.socket"},
        )  # fmt: skip
        self._wait_for_daemons()
        for port in (self.scheduler_port, self.scheduler_port + 1, self.helper_port):
            if listening_addresses(port) != {"127.0.0.1"}:
                raise RuntimeError(f"port {port} listens on {listening_addresses(port)}")

    def _wait_for_daemons(self) -> None:
        deadline = time.monotonic() + SOCKET_WAIT
        listing = ""
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args!r} exited: {self.logs_tail()}")
            listing = self.ask("listcs")
            if f"{self.HELPER} (127.0.0.1:{self.helper_port})" in listing and "local (" in listing:
                return
            time.sleep(0.5)
        raise RuntimeError(f"the daemons did not log in to the scheduler: {listing!r}")

    def ask(self, command: str) -> str:
        """One command on the scheduler's text interface."""
        with socket.create_connection(("127.0.0.1", self.scheduler_port + 1), timeout=5) as conn:
            data = b""
            while b"\n200 " not in data:
                data += conn.recv(4096)
            conn.sendall(f"{command}\r\n".encode())
            data = b""
            while b"200 done" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
        return data.decode(errors="replace")

    def __exit__(self, *exc: object) -> None:
        for process in reversed(self.processes):
            stop(process)
        if self.helper_dir.exists():  # files of the namespace's icecc user
            subprocess.run(
                ["unshare", "--map-auto", "--map-root-user", "rm", "-rf", str(self.helper_dir)],
                check=False,
            )

    def kill_helper(self) -> None:
        """helper1 dies: SIGKILL for its daemon and the jobs it is running."""
        stop(self.processes[2], signal.SIGKILL)

    def jobs_on(self, server: str) -> List[str]:
        """Source files the scheduler gave to server, by file name. kbuild's compiler tests
        (cc-option and the like, of /dev/null) are not among them: the prefix script keeps
        them here; were they sent, they would be named "null"."""
        text = (self.work / "scheduler.log").read_text(errors="replace")
        files = {m.group(1): Path(m.group(2)).name for m in _ICECC_NEW.finditer(text)}
        return [
            files.get(m.group(1), "?") for m in _ICECC_BEGIN.finditer(text) if m.group(2) == server
        ]

    def compiled_here(self) -> List[str]:
        """Source files icecc compiled on this machine, by file name, from its log ("?" for a
        compile whose source the log does not name)."""
        source: Dict[str, str] = {}
        local: Set[str] = set()
        for line in self.client_log().splitlines():
            match = _ICECC_CLIENT.match(line)
            if not match:
                continue
            pid, message = match.groups()
            preparing = _ICECC_PREPARING.match(message)
            if preparing:
                source[pid] = preparing.group(1)
            elif message.startswith(("<building_local>", "building myself")):
                local.add(pid)
        return sorted(Path(source.get(pid, "?")).name for pid in local)

    def client_log(self) -> str:
        path = self.work / "icecc.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def logs_tail(self) -> str:
        tails = []
        logs = [self.work / "scheduler.log", self.work / "local.log"]
        for path in [*logs, self.helper_dir / "helper.log", *sorted(self.work.glob("*.out"))]:
            if path.is_file():
                tails.append(f"{path.name}: {path.read_text(errors='replace')[-400:]}")
        return " | ".join(tails)


def compiler_named(directory: Path, name: str, real: str) -> Path:
    """directory/name (and its x86_64-linux-gnu- twin, which distcc asks for) running real."""
    directory.mkdir(parents=True, exist_ok=True)
    for alias in (name, f"x86_64-linux-gnu-{name}"):
        link = directory / alias
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(shutil.which(real) or real)
    return directory


# What `make defconfig prepare` and one directory of kernel/ read: the headers, x86, the
# build scripts (selinux's genheaders reads its classmap), objtool's sources, kernel/
# itself, and every Kconfig and Makefile
KERNEL_PARTS = (
    "include", "arch/x86", "scripts", "kernel", "security/selinux/include", "tools/objtool",
    "tools/lib", "tools/include", "tools/arch/x86", "tools/build", "tools/scripts",
)  # fmt: skip


def partial_copy(tree: Path, dest: Path) -> Path:
    """A real copy (no hard links: nothing done to it can reach the cached tree) of the
    parts of tree a build of kernel/ reads, without memuse-kit's patch state."""
    rules = ["--exclude=/.memuse-kit/"]
    rules += [f"--include=/{part}/***" for part in KERNEL_PARTS]
    rules += ["--include=*/", "--include=Kconfig*", "--include=Makefile*", "--include=Kbuild*"]
    rules += ["--include=/*", "--exclude=*"]
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["rsync", "-a", "--prune-empty-dirs", *rules, f"{tree}/", f"{dest}/"], check=True
    )
    return dest
