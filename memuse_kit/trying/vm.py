"""`invoke vm`: boot a built kernel under virtme-ng/QEMU with the host's filesystem, run one
command as root in it, stream its output and return its exit status. The host is untouched.

Under TCG virtme-ng's init often cannot find its script I/O ports and falls back to the serial
console, where it reports neither output nor status. So the command is wrapped to print
markers on the console around its output and its status; those markers are the contract.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, TextIO

from memuse_kit.building.builddir import BuildDir
from memuse_kit.building.kconfig import built_options
from memuse_kit.core.cache import cache_root
from memuse_kit.core.errors import KitError
from memuse_kit.core.output import problem, report, say
from memuse_kit.core.runner import CommandTimeout, Runner

DEFAULT_COMMAND = ["memuse", "experiment"]
_KERNEL_LINE = re.compile(r"^\[\s*\d+\.\d+\]")
_ALARMING = re.compile(r"BUG|WARNING|Oops|KASAN|lockdep|possible recursive locking|INFO: task")


@dataclass
class VmOptions:
    build: BuildDir
    command: List[str] = field(default_factory=lambda: list(DEFAULT_COMMAND))
    memory: str = "3G"
    cpus: int = 2
    accel: str = "auto"
    timeout: float = 900.0
    dry_run: bool = False
    cwd: Path = field(default_factory=Path.cwd)


@dataclass
class VmResult:
    status: int
    output: List[str]
    kernel_log: List[str]


def prebuilt_scenarios() -> Dict[str, str]:
    """Compile the client's scenario program on the host, so the guest need not (slow in TCG)."""
    try:
        from memuse_client.scenarios import ENV_BINARY, scenarios_binary

        return {ENV_BINARY: str(scenarios_binary())}
    except Exception:  # the guest compiles it itself then
        return {}


# virtme-ng powers the guest off at the end, which takes ACPI; the fast vm kernel has none.
# A reset ends QEMU as well (virtme-ng runs scripts with -no-reboot), and x86 resets through
# the keyboard controller without ACPI.
RESET_WITHOUT_ACPI = "[ -d /sys/firmware/acpi ] || { sync; reboot -f; }"


def guest_script(
    command: List[str], nonce: str, cwd: Path, extra: Optional[Dict[str, str]] = None
) -> str:
    """The shell line the guest runs: environment, markers around the command, its status."""
    bin_dir = str(Path(sys.executable).parent)
    exports = {
        **(extra or {}),
        "PATH": f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "MEMUSE_KIT_CACHE": str(cache_root()),
        "PYTHONUNBUFFERED": "1",
        "HOME": "/root",
    }
    env = " ".join(f"export {k}={shlex.quote(v)};" for k, v in exports.items())
    return (
        f"{env} cd {shlex.quote(str(cwd))} 2>/dev/null; "
        f"echo MEMUSE-KIT-BEGIN-{nonce}; {shlex.join(command)}; "
        f"echo MEMUSE-KIT-END-{nonce} status=$?; {RESET_WITHOUT_ACPI}"
    )


def vng_path() -> Optional[str]:
    """virtme-ng's vng: beside this Python (a venv not on PATH), else on PATH."""
    beside = Path(sys.executable).parent / "vng"
    return str(beside) if os.access(beside, os.X_OK) else shutil.which("vng")


def vng_env(vng: str) -> Dict[str, str]:
    """vng runs virtme-run by name: let it find the one installed beside it."""
    return {"PATH": f"{Path(vng).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def kvm_works(probe_timeout: float = 60.0, probe: bool = True) -> bool:
    """KVM can exist and still hang guests (it does on some hosts): boot once to find out.

    The answer is cached per host boot. Without probe (a dry run) only the cached answer
    counts, and nothing is booted or written.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    cache = cache_root() / "kvm-probe.json"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("boot_id") == boot_id:
            return bool(cached["works"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    if not probe:
        return False
    works = _probe_kvm(probe_timeout)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"boot_id": boot_id, "works": works}))
    return works


def _probe_kvm(timeout: float) -> bool:
    kernel = Path("/boot") / f"vmlinuz-{os.uname().release}"
    vng = vng_path()
    if not vng or not kernel.is_file():
        return False
    try:
        done = Runner().run(
            [vng, "--run", str(kernel), "--exec", "true"], timeout=timeout, check=False
        )
    except CommandTimeout:
        return False
    return done.returncode == 0


# QEMU's `-cpu max` (virtme-ng's choice under TCG) offers LA57, and identify_cpu() briefly
# clears boot_cpu_data's capabilities, LA57 included: a timer interrupt in that window makes
# a KASAN kernel size its shadow for 4-level paging and report the 5-level direct map as a
# wild access (seen on 7.2, about 1 boot in 17). 4-level paging closes the window.
GUEST_KERNEL_ARGS = ["no5lvl"]


def root_args(build: BuildDir) -> List[str]:
    """How the guest mounts the host's root, from the kernel's configuration.

    virtme-ng shares it over virtiofs when it finds virtiofsd: a kernel without virtiofs
    (the fast vm one) gets 9p instead. virtme-ng names no root device, and the kernel mounts
    a root so named through the block layer: a kernel without one needs root=/dev/root (the
    9p share's tag), which it then mounts as a filesystem that has no device.
    """
    options = built_options(build.obj)
    if not options:
        return []
    args = [] if options.get("CONFIG_VIRTIO_FS") == "y" else ["--force-9p"]
    if options.get("CONFIG_BLOCK") != "y":
        args += ["--append", "root=/dev/root"]
    return args


def vng_command(options: VmOptions, script: str, use_kvm: bool) -> List[str]:
    image = options.build.image()
    cmd = [vng_path() or "vng", "--run", str(image), "--user", "root", "--verbose"]
    cmd += ["--memory", options.memory, "--cpus", str(options.cpus), *root_args(options.build)]
    for arg in GUEST_KERNEL_ARGS:
        cmd += ["--append", arg]
    if not use_kvm:
        cmd += ["--disable-kvm"]
    return [*cmd, "--exec", script]


class ConsoleReader:
    """Sorts the console stream: boot noise to the log, the command's output to the user."""

    def __init__(self, nonce: str, out: TextIO, err: TextIO) -> None:
        self.begin = f"MEMUSE-KIT-BEGIN-{nonce}"
        self.end = re.compile(rf"MEMUSE-KIT-END-{nonce} status=(\d+)")
        self.out, self.err = out, err
        self.inside = False
        self.status: Optional[int] = None
        self.output: List[str] = []
        self.kernel_log: List[str] = []

    def feed(self, raw: str) -> None:
        line = raw.rstrip("\r\n").replace("\r", "")
        ended = self.end.search(line)
        if ended:
            self.status = int(ended.group(1))
            self.inside = False
            return
        if line.endswith(self.begin) and self.status is None:
            self.inside = True
            return
        if _KERNEL_LINE.match(line):
            self.kernel_log.append(line)
            if self.inside and _ALARMING.search(line):
                problem(f"kernel: {line}", self.err)
            return
        if self.inside:
            self.output.append(line)
            report(line, self.out)


def run_vm(options: VmOptions, log_path: Optional[Path] = None) -> VmResult:
    image = options.build.image()
    if not image.is_file() and not options.dry_run:
        raise KitError(f"no built kernel at {image}: run invoke build --config vm first")
    if not vng_path() and not options.dry_run:
        raise KitError("vng (virtme-ng) is not installed: pip install virtme-ng")
    use_kvm = options.accel == "kvm" or (
        options.accel == "auto" and kvm_works(probe=not options.dry_run)
    )
    nonce = secrets.token_hex(4)
    extra = {} if options.dry_run else prebuilt_scenarios()
    cmd = vng_command(options, guest_script(options.command, nonce, options.cwd, extra), use_kvm)
    if options.dry_run:
        Runner(dry_run=True).stream(cmd)
        return VmResult(0, [], [])
    log_path = log_path or options.build.root / "vm.log"
    say(f"booting {image} ({'KVM' if use_kvm else 'TCG'}) ...", sys.stderr)
    return watch_console(cmd, nonce, options.timeout, log_path, "vng", vng_env(cmd[0]))


def watch_console(
    cmd: List[str],
    nonce: str,
    timeout: float,
    log_path: Path,
    engine: str,
    env: Optional[Dict[str, str]] = None,
) -> VmResult:
    """Run the VM's command (vng, or QEMU itself), the console sorted by ConsoleReader and
    kept in log_path; the command's status from its markers, or one line saying why not."""
    reader = ConsoleReader(nonce, sys.stdout, sys.stderr)
    with log_path.open("w") as log:
        try:
            status = Runner().stream(cmd, env=env, sinks=[reader.feed], log=log, timeout=timeout)
        except CommandTimeout:
            raise KitError(
                f"the VM did not finish within {timeout:.0f}s; console log: {log_path}"
            ) from None
    if reader.status is None:
        last = reader.kernel_log[-1] if reader.kernel_log else "no kernel output"
        raise KitError(
            f"the VM exited ({engine} status {status}) without reporting the command's status "
            f"(last kernel line: {last[:160]}); console log: {log_path}"
        )
    return VmResult(reader.status, reader.output, reader.kernel_log)
