"""The test machine: a Debian 12 disk that boots through OVMF, GRUB and an initramfs in QEMU.

`ensure_image()` builds the disk once per recipe (machine_image.py) and lets the machine's
own update-grub write its grub.cfg in a first boot. `Machine` boots a copy-on-write overlay
of it (the cached disk never changes) with the serial console in a log file, and drives it
over ssh through a port forwarded on 127.0.0.1. Guest reboots stay inside the same QEMU
process, so GRUB's one-shot entry (grub-reboot) is exercised for real. Every wait has a
timeout, and a timeout's error carries the console's last lines.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Callable, List, Optional, Sequence, Union

from memuse_kit.core.clock import now
from memuse_kit.core.errors import KitError
from memuse_kit.core.output import report, say
from memuse_kit.core.runner import CommandTimeout, Runner
from memuse_kit.installing.install import grub_entry_id
from memuse_kit.trying import machine_image
from memuse_kit.trying.machine_image import OVMF_CODE, OVMF_VARS, MachineImage, Recipe

DISK_BUSES = ("virtio", "nvme", "ahci")
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\r")
Command = Union[str, Sequence[str]]


def ensure_image(rebuild: bool = False, progress: machine_image.Progress = say) -> MachineImage:
    """The cached image for the current recipe: built (and first-booted) when missing."""
    recipe = Recipe()
    root = machine_image.image_dir(recipe)
    root.parent.mkdir(parents=True, exist_ok=True)
    with _locked(root.parent / f"{root.name}.lock"):
        image = machine_image.load_image(root)
        if image and not rebuild:
            return image
        staging = root.with_name(root.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        started = time.monotonic()
        info = machine_image.build_disk(recipe, staging, progress)
        info.update(recipe=root.name, root_uuid=recipe.root_uuid,
                    users={"sudo": recipe.sudo_user, "plain": recipe.plain_user})  # fmt: skip
        image = MachineImage(staging, info)
        progress("first boot: the machine's own update-grub writes its grub.cfg ...")
        booted = time.monotonic()
        _first_boot(image)
        finished = time.monotonic()
        info["durations"].update(
            first_boot=round(finished - booted, 1), total=round(finished - started, 1)
        )
        info.update(
            status="complete",
            created=now(),
            disk_bytes=image.disk.stat().st_size,
        )
        (staging / "image.json").write_text(_json(info))
        image.disk.with_name(image.disk.name + ".vars.fd").unlink(missing_ok=True)
        image.disk.chmod(0o444)  # overlays only from now on
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)
        _prune(root)
        progress(f"machine image ready in {info['durations']['total']:.0f}s: {root / 'disk.qcow2'}")
        return MachineImage(root, info)


def _first_boot(image: MachineImage) -> None:
    with Machine(image, disk=image.disk, log=image.root / "first-boot.log") as machine:
        machine.wait_ssh(timeout=900)
        machine.ssh(["sudo", "update-grub"], timeout=600)
        grub_cfg = machine.ssh(["cat", "/boot/grub/grub.cfg"]).stdout
        entry = grub_entry_id(grub_cfg, image.kernel_release).split(">")[-1]
        if f"'{entry}'" not in grub_cfg:
            raise KitError(f"update-grub in the machine did not list {image.kernel_release}")
        machine.poweroff(timeout=300)


def _prune(keep: Path) -> None:
    """Images of older recipes: each is a few hundred MB."""
    for old in keep.parent.iterdir():
        if old != keep and old.is_dir() and len(old.name) == len(keep.name) and "." not in old.name:
            shutil.rmtree(old, ignore_errors=True)


class Machine:
    """One QEMU process booting the image; use it as a context manager.

    By default it boots a fresh overlay that is deleted afterwards. With overlay=PATH the
    overlay (and the firmware's variables beside it) is kept and reused by the next Machine
    given the same path, so a state survives several sessions. disk=PATH boots that qcow2
    itself (the image's first boot).
    """

    def __init__(
        self,
        image: MachineImage,
        *,
        disk_bus: str = "virtio",
        memory: str = "3G",
        cpus: int = 2,
        log: Optional[Path] = None,
        overlay: Optional[Path] = None,
        disk: Optional[Path] = None,
    ) -> None:
        if disk_bus not in DISK_BUSES:
            raise KitError(f"disk bus {disk_bus!r} is not one of {', '.join(DISK_BUSES)}")
        self.image = image
        self.disk_bus = disk_bus
        self.memory = memory
        self.cpus = cpus
        machine_image.machine_dir().mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="run-", dir=machine_image.machine_dir()))
        self.disk = disk or overlay or self.workdir / "overlay.qcow2"
        self.log = log or machine_image.machine_dir() / f"console-{disk_bus}.log"
        if log is None:
            self.log.unlink(missing_ok=True)
        self.port = 0
        self.process: Optional[subprocess.Popen] = None
        self._qemu_log: Optional[IO[str]] = None

    def __enter__(self) -> Machine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def vars_file(self) -> Path:
        return self.disk.with_name(self.disk.name + ".vars.fd")

    def start(self) -> None:
        if not self.disk.exists():
            Runner().run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                          "-b", str(self.image.disk), str(self.disk)])  # fmt: skip
        if not self.vars_file.exists():
            shutil.copyfile(OVMF_VARS, self.vars_file)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self._qemu_log = (self.workdir / "qemu.log").open("w")
        self.process = Runner().start(self.qemu_command(), stdout=self._qemu_log)

    def qemu_command(self) -> List[str]:
        drive = f"if=none,id=root,format=qcow2,file={self.disk}"
        devices = {
            "virtio": ["-device", "virtio-blk-pci,drive=root,bootindex=1"],
            "nvme": ["-device", "nvme,drive=root,serial=memuse-root,bootindex=1"],
            "ahci": ["-device", "ide-hd,drive=root,bus=ide.0,bootindex=1"],
        }[self.disk_bus]
        return [
            "qemu-system-x86_64", "-name", "memuse-machine", "-machine", "q35", "-accel", "tcg",
            # RDRAND seeds the kernel's random pool at once: without it a kernel with no
            # virtio-rng driver waits minutes under TCG for entropy, and sshd with it
            "-cpu", "qemu64,+rdrand",
            "-m", self.memory, "-smp", str(self.cpus), "-nodefaults", "-display", "none",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={self.vars_file}",
            "-drive", drive, *devices,
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{self.port}-:22",
            "-device", "virtio-net-pci,netdev=net0",
            "-chardev", f"file,id=console,path={self.log},append=on",
            "-serial", "chardev:console",
        ]  # fmt: skip

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._qemu_log:
            self._qemu_log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)  # the overlay too, unless given

    # -- ssh --------------------------------------------------------------------------------

    def ssh_command(self, user: Optional[str] = None, connect_timeout: int = 10) -> List[str]:
        return [
            "ssh", "-i", str(self.image.ssh_key), "-p", str(self.port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
            "-o", f"ConnectTimeout={connect_timeout}",
            "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=6",
            f"{user or self.image.sudo_user}@127.0.0.1",
        ]  # fmt: skip

    def ssh(
        self,
        command: Command,
        *,
        user: Optional[str] = None,
        timeout: float = 300,
        check: bool = True,
        input: Optional[str] = None,
    ) -> subprocess.CompletedProcess:
        """Run a command in the machine (a list is quoted, a string is a shell line)."""
        line = command if isinstance(command, str) else shlex.join(list(command))
        try:
            done = Runner().run(
                [*self.ssh_command(user), line], input=input, timeout=timeout, check=False
            )
        except CommandTimeout:
            raise self._timeout_error(f"`{line}` did not finish", timeout) from None
        if check and done.returncode != 0:
            detail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or [""]
            raise KitError(
                f"`{line}` failed in the machine (status {done.returncode}): {detail[0]}"
            )
        return done

    def copy_in(
        self, paths: Sequence[Path], remote_dir: str, *, user: Optional[str] = None,
        timeout: float = 600,
    ) -> None:  # fmt: skip
        """Copy files or directories into remote_dir (created if needed), by tar over ssh."""
        remote = shlex.quote(remote_dir)
        tar = ["tar", "-c", "-f", "-"]
        for path in paths:
            tar += ["-C", str(Path(path).resolve().parent), Path(path).resolve().name]
        unpack = [*self.ssh_command(user), f"mkdir -p {remote} && tar -x -f - -C {remote}"]
        with Runner().start(tar, stdout=subprocess.PIPE, stderr=None) as packer:
            try:
                done = Runner().run(unpack, stdin=packer.stdout, timeout=timeout, check=False)
            except CommandTimeout:
                packer.kill()
                raise self._timeout_error(
                    "copying into the machine did not finish", timeout
                ) from None
        if done.returncode != 0 or packer.returncode != 0:
            raise KitError(f"copying into the machine failed: {done.stderr.strip()[-300:]}")

    # -- waiting ----------------------------------------------------------------------------

    def wait_ssh(self, timeout: float = 600, user: Optional[str] = None) -> None:
        """Wait until ssh answers (QEMU's forward accepts long before the guest does)."""
        self._wait_for(lambda: self._try(["true"], user) is not None, "ssh did not answer", timeout)

    def boot_id(self) -> str:
        return self.ssh(["cat", "/proc/sys/kernel/random/boot_id"], timeout=120).stdout.strip()

    def reboot(self, timeout: float = 900) -> str:
        """Reboot the guest and wait until ssh answers from the new boot; returns its boot id."""
        before = self.boot_id()
        with contextlib.suppress(KitError):  # the connection may go down with the machine
            self.ssh(["sudo", "systemctl", "reboot"], timeout=60, check=False)
        new_id: List[str] = []

        def rebooted() -> bool:
            answer = self._try(["cat", "/proc/sys/kernel/random/boot_id"])
            if answer and answer.strip() != before:
                new_id.append(answer.strip())
                return True
            return False

        self._wait_for(rebooted, "the machine did not come back from a reboot", timeout)
        return new_id[0]

    def poweroff(self, timeout: float = 300) -> None:
        with contextlib.suppress(KitError):
            self.ssh(["sudo", "systemctl", "poweroff"], timeout=60, check=False)
        self._wait_for(lambda: not self.running(), "the machine did not power off", timeout, True)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def console_tail(self, n: int = 30) -> List[str]:
        """The console's last n non-empty lines, without terminal escape sequences."""
        try:
            data = self.log.read_bytes()
        except OSError:
            return []
        chunk = data[-256 * n - 4096 :]
        lines = [
            _ESCAPES.sub("", line).rstrip() for line in chunk.decode("utf-8", "replace").split("\n")
        ]
        if len(chunk) < len(data):
            lines = lines[1:]  # cut in the middle
        return [line for line in lines if line.strip()][-n:]

    def _try(self, command: Sequence[str], user: Optional[str] = None) -> Optional[str]:
        """stdout of a command, or None when ssh is not answering (yet)."""
        try:
            done = Runner().run(
                [*self.ssh_command(user, connect_timeout=5), shlex.join(command)],
                timeout=30, check=False,
            )  # fmt: skip
        except CommandTimeout:
            return None
        return done.stdout if done.returncode == 0 else None

    def _wait_for(
        self, condition: Callable[[], bool], what: str, timeout: float, exits: bool = False
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not exits and self.process is not None and self.process.poll() is not None:
                raise self._timeout_error(
                    f"{what}: QEMU exited with status {self.process.returncode} "
                    f"({self._qemu_output()})",
                    None,
                )
            if condition():
                return
            if time.monotonic() >= deadline:
                raise self._timeout_error(what, timeout)
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))

    def _timeout_error(self, what: str, timeout: Optional[float]) -> KitError:
        within = f" within {timeout:.0f}s" if timeout is not None else ""
        tail = "\n".join(f"    {line}" for line in self.console_tail(30))
        return KitError(f"{what}{within} (console log {self.log}); its last lines:\n{tail}")

    def _qemu_output(self) -> str:
        try:
            text = (self.workdir / "qemu.log").read_text(errors="replace").strip()
        except OSError:
            return "no output"
        return text.splitlines()[-1] if text else "no output"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _locked:
    """An exclusive flock held for the with block: one builder per image at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: Optional[IO[str]] = None

    def __enter__(self) -> None:
        self.handle = self.path.open("a")
        fcntl.flock(self.handle, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self.handle:
            self.handle.close()


def _json(info: dict) -> str:
    return json.dumps(info, indent=2, sort_keys=True) + "\n"


def describe() -> str:
    """One line about the cached image of the current recipe."""
    root = machine_image.image_dir(Recipe())
    image = machine_image.load_image(root)
    if not image:
        return f"no machine image for the current recipe yet ({root}): invoke machine --create"
    durations = image.info.get("durations", {})
    return (
        f"{image.disk} ({image.info.get('disk_bytes', 0) / 2**20:.0f} MiB), created "
        f"{image.info.get('created')} in {durations.get('total', 0):.0f}s, stock kernel "
        f"{image.kernel_release}, ssh key {image.ssh_key}"
    )


def machine_command(create: bool = False, rebuild: bool = False) -> None:
    """`invoke machine`: show the cached image, or create it."""
    if create or rebuild:
        ensure_image(rebuild=rebuild)
    report(describe())


__all__ = ["DISK_BUSES", "Machine", "MachineImage", "ensure_image", "machine_command"]
