"""Boot a kernel of a foreign architecture under QEMU (TCG) straight from its Image, with no
virtme-ng, and run one command as root in it; output and status are reported as `invoke vm`
reports them (vm.py's console markers, ConsoleReader and VmResult).

The guest's root is a cached Debian tree (rootfs.py) shared read-only over 9p. Its init
(rootfs.GUEST_INIT) mounts this boot's own share, a host temporary directory with two
scripts: init.sh makes a new root on a tmpfs (the tree's directories bound in read-only,
fresh proc, sys, dev, /tmp, /run and /root) with the host's directories (the repository, the
kit's cache, the guest programs) mounted read-only at their own paths, then chroots into it
to run run.sh: the environment, the markers around the command and its status, poweroff.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import memuse_client
from memuse_kit.core.arch import Arch
from memuse_kit.core.cache import cache_root
from memuse_kit.core.errors import KitError
from memuse_kit.core.output import say
from memuse_kit.core.runner import Runner
from memuse_kit.trying.rootfs import BOOT_MOUNT, BOOT_TAG, GUEST_INIT, NINEP_OPTIONS, Rootfs
from memuse_kit.trying.vm import VmOptions, VmResult, watch_console

GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# virtio over MMIO: the virt machine's own transport (the fast arm64 kernel has no PCI)
NINEP_DEVICE = "virtio-9p-device"
ROOT_TAG = "/dev/root"  # root=/dev/root: the kernel mounts the share so tagged
NEW_ROOT = "/run/memuse-kit/root"
# mounted fresh in the new root: (directory, mount arguments)
KERNEL_MOUNTS = (
    ("proc", "-t proc proc"),
    ("sys", "-t sysfs sysfs"),
    ("dev", "-t devtmpfs devtmpfs"),
    ("dev/pts", "-t devpts devpts"),
    ("dev/shm", "-t tmpfs -o mode=1777 shm"),
    ("tmp", "-t tmpfs -o mode=1777 tmp"),
    ("run", "-t tmpfs -o mode=0755 run"),
    ("root", "-t tmpfs -o mode=0700 root"),
)
FRESH = frozenset(path.split("/")[0] for path, _ in KERNEL_MOUNTS)
# the tree's own system directories: a host directory cannot be mounted over these
SYSTEM = frozenset({"usr", "etc", "var", "bin", "sbin", "lib", "lib64", "proc", "sys", "dev"})


# where a host directory under one of the guest's own system directories is mounted instead
ELSEWHERE = Path("/run/memuse-kit/host")


@dataclass(frozen=True)
class Share:
    """A host directory shared read-only, at the same path in the guest, unless that path is
    inside one of the guest's own system directories (a checkout in /var/lib/ci, say): then
    under ELSEWHERE, and the paths the guest is given are translated (guest_path)."""

    tag: str
    path: Path

    @property
    def guest(self) -> Path:
        if self.path.parts[1] in SYSTEM:
            return ELSEWHERE / self.path.relative_to("/")
        return self.path


def host_shares(paths: Sequence[Path]) -> List[Share]:
    """One share per directory; one inside another is seen through the outer one."""
    absolute = sorted({Path(os.path.abspath(path)) for path in paths})
    kept: List[Path] = []
    for path in absolute:
        if path == Path("/"):
            raise KitError("the host's / cannot be shared into the guest: give a directory")
        if not any(outer in path.parents for outer in kept):
            kept.append(path)
    return [Share(f"memuse-s{index}", path) for index, path in enumerate(kept)]


def guest_path(path: Path, shares: Sequence[Share]) -> Path:
    """Where a host path is seen in the guest: through the share that holds it."""
    absolute = Path(os.path.abspath(path))
    for share in shares:
        if absolute == share.path or share.path in absolute.parents:
            return share.guest / absolute.relative_to(share.path)
    return absolute


def top_level(root: Path) -> Dict[str, Optional[str]]:
    """The tree's top-level directories (None) and symbolic links (their target)."""
    entries: Dict[str, Optional[str]] = {}
    for entry in sorted(root.iterdir()):
        if entry.is_symlink():
            entries[entry.name] = os.readlink(entry)
        elif entry.is_dir():
            entries[entry.name] = None
    return entries


def kernel_command_line(arch: Arch) -> str:
    return " ".join([
        f"console={arch.console}", f"root={ROOT_TAG}", "rootfstype=9p",
        f"rootflags={NINEP_OPTIONS}", "ro", "panic=-1", f"init={GUEST_INIT}",
    ])  # fmt: skip


def _fsdev_path(path: Path) -> str:
    """QEMU's option syntax doubles a comma inside a value."""
    return str(path).replace(",", ",,")


def share_args(tag: str, fsdev_id: str, path: Path) -> List[str]:
    return [
        "-fsdev",
        f"local,id={fsdev_id},path={_fsdev_path(path)},security_model=none,readonly=on",
        "-device",
        f"{NINEP_DEVICE},fsdev={fsdev_id},mount_tag={tag}",
    ]


def qemu_command(
    arch: Arch,
    image: Path,
    options: VmOptions,
    rootfs_root: Path,
    boot_dir: Path,
    shares: Sequence[Share],
) -> List[str]:
    cmd = [
        arch.qemu_system, *arch.qemu_machine, "-accel", "tcg",
        "-smp", str(options.cpus), "-m", options.memory,
        "-nodefaults", "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", str(image), "-append", kernel_command_line(arch),
    ]  # fmt: skip
    cmd += share_args(ROOT_TAG, "root", rootfs_root)
    cmd += share_args(BOOT_TAG, "boot", boot_dir)
    for share in shares:
        cmd += share_args(share.tag, share.tag, share.path)
    return cmd


def mount_line(args: str, where: str) -> str:
    return f"busybox mkdir -p {where}; busybox mount {args} {where}"


def init_script(tree: Mapping[str, Optional[str]], shares: Sequence[Share]) -> str:
    """PID 1's second step (after rootfs.GUEST_INIT): the new root, then run.sh in it."""
    root = NEW_ROOT
    tops = {share.guest.parts[1] for share in shares}
    lines = [
        "#!/bin/sh",
        "# memuse-kit: the guest's root on a tmpfs, the host's directories at their paths",
        "set -e",
        f"export PATH={GUEST_PATH}",
        mount_line("-t tmpfs -o mode=0755 newroot", root),
    ]
    for name, target in tree.items():
        quoted = shlex.quote(name)
        if target is not None:
            lines.append(f"busybox ln -s {shlex.quote(target)} {root}/{quoted}")
        elif name not in FRESH and name not in tops:
            lines.append(mount_line(f"-o bind /{quoted}", f"{root}/{quoted}"))
    for path, args in KERNEL_MOUNTS:
        lines.append(mount_line(args, f"{root}/{path}"))
    for share in shares:
        where = shlex.quote(f"{root}{share.guest}")
        lines.append(mount_line(f"-t 9p -o ro,{NINEP_OPTIONS} {share.tag}", where))
    lines += [
        mount_line(f"-o bind {BOOT_MOUNT}", f"{root}{BOOT_MOUNT}"),
        f"exec busybox chroot {root} /bin/sh {BOOT_MOUNT}/run.sh",
    ]
    return "\n".join(lines) + "\n"


def client_home() -> Optional[Path]:
    """The directory memuse_client is imported from here, shared so that the guest runs the
    same client; None when it lives in a system directory the guest has its own of."""
    home = Path(memuse_client.__file__).resolve().parent.parent
    return None if home.parts[1] in SYSTEM else home


# `memuse` in the guest: the client from the shared directory, run by the guest's Python
MEMUSE_SHIM = '#!/bin/sh\nexec python3 -m memuse_client "$@"\n'


def guest_env(binaries: Mapping[str, Path], shares: Sequence[Share] = ()) -> Dict[str, str]:
    """The command's environment, every host path as the guest sees it."""
    home = client_home()

    def seen(path: Path) -> str:
        return str(guest_path(path, shares))

    return {
        **{name: seen(path) for name, path in binaries.items()},
        **({"PYTHONPATH": seen(home)} if home else {}),
        "PATH": f"{BOOT_MOUNT}/bin:{GUEST_PATH}",
        "HOME": "/root",
        "MEMUSE_KIT_CACHE": seen(cache_root()),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def run_script(command: Sequence[str], nonce: str, cwd: Path, env: Mapping[str, str]) -> str:
    """The guest's command between the markers, its status, then power off (PSCI)."""
    exports = [f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items())]
    return "\n".join([
        "#!/bin/sh",
        *exports,
        f"cd {shlex.quote(str(cwd))} || echo 'memuse-kit: no {cwd} in the guest' >&2",
        f"echo MEMUSE-KIT-BEGIN-{nonce}",
        shlex.join(list(command)),
        f"echo MEMUSE-KIT-END-{nonce} status=$?",
        "sync",
        "busybox poweroff -f",
    ]) + "\n"  # fmt: skip


def boot_shares(cwd: Path, binaries: Mapping[str, Path]) -> List[Share]:
    """The repository, the kit's cache (build records) and the programs' directories."""
    home = client_home()
    programs = [path.parent for path in binaries.values()]
    return host_shares([cwd, cache_root(), *programs, *([home] if home else [])])


def run_direct(
    options: VmOptions,
    arch: Arch,
    rootfs: Rootfs,
    binaries: Optional[Mapping[str, Path]] = None,
    image: Optional[Path] = None,
    log_path: Optional[Path] = None,
) -> VmResult:
    """Boot arch's image (default: the build's) on rootfs and run options.command as root.

    binaries: environment variables naming host programs for the guest (guest_binaries);
    their directories are shared. A dry run prints QEMU's command and touches nothing.
    """
    image = image or options.build.obj / arch.image_path
    binaries = dict(binaries or {})
    if options.accel == "kvm" and not arch.is_host():
        raise KitError(f"--accel kvm cannot run an {arch.name} guest here: use tcg")
    shares = boot_shares(options.cwd, binaries)
    nonce = secrets.token_hex(4)
    if options.dry_run:
        boot_dir = Path(tempfile.gettempdir()) / "memuse-kit-boot-DRYRUN"
        Runner(dry_run=True).stream(
            qemu_command(arch, image, options, rootfs.root, boot_dir, shares)
        )
        return VmResult(0, [], [])
    if not image.is_file():
        raise KitError(f"no built kernel at {image}: run invoke build --arch {arch.name} first")
    if not shutil.which(arch.qemu_system):
        raise KitError(f"{arch.qemu_system} is not installed: sudo apt-get install {arch.qemu_apt}")
    if not (rootfs.root / GUEST_INIT.lstrip("/")).is_file():
        raise KitError(f"no guest root filesystem at {rootfs.root}: build it first")
    log_path = log_path or options.build.root / "vm.log"
    boot_dir = Path(tempfile.mkdtemp(prefix="memuse-kit-boot-"))
    try:
        boot_dir.chmod(0o755)
        (boot_dir / "init.sh").write_text(init_script(top_level(rootfs.root), shares))
        cwd = guest_path(options.cwd, shares)
        script = run_script(options.command, nonce, cwd, guest_env(binaries, shares))
        (boot_dir / "run.sh").write_text(script)
        (boot_dir / "bin").mkdir(mode=0o755)
        (boot_dir / "bin" / "memuse").write_text(MEMUSE_SHIM)
        (boot_dir / "bin" / "memuse").chmod(0o755)
        cmd = qemu_command(arch, image, options, rootfs.root, boot_dir, shares)
        return _boot(cmd, nonce, options.timeout, log_path, image)
    finally:
        shutil.rmtree(boot_dir, ignore_errors=True)


def _boot(cmd: List[str], nonce: str, timeout: float, log_path: Path, image: Path) -> VmResult:
    say(f"booting {image} (TCG) ...", sys.stderr)
    return watch_console(cmd, nonce, timeout, log_path, "QEMU")
