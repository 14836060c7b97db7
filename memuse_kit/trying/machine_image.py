"""The test machine's disk: Debian 12 from Debian's archive, built rootless, cached by recipe.

mmdebstrap (--mode=unshare) installs the packages. Its customize hooks, still inside its user
namespace (so file ownership is right without root), configure the system and make the root
filesystem with the guest's own `mkfs.ext4 -d` and the EFI GRUB with its own
`grub-mkstandalone`, so GRUB and the modules on the disk are one version. The host then
assembles a GPT disk from a FAT ESP (mtools) and that ext4 root, and converts it to qcow2.
The first boot that lets the machine write its own grub.cfg is in machine.py.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from memuse_kit.core.cache import cache_root
from memuse_kit.core.digest import sha256_bytes
from memuse_kit.core.errors import KitError
from memuse_kit.core.runner import Runner

# Bump when the build steps change in a way the recipe's fields do not show.
RECIPE_VERSION = 1
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DATA = Path(__file__).resolve().parents[1] / "data"
HOST_TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "newuidmap": "uidmap",
    "mformat": "mtools",
    "sfdisk": "fdisk",
    "qemu-img": "qemu-utils",
    "ssh-keygen": "openssh-client",
    "ssh": "openssh-client",
    "qemu-system-x86_64": "qemu-system-x86",
}
_SECTOR = 512
_MIB = 1 << 20
_ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
_LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

Progress = Callable[[str], None]


def debian_sources(mirror: str, security_mirror: str, suite: str) -> List[str]:
    """The apt sources mmdebstrap is given: the suite, its updates and its security fixes."""
    return [
        f"deb {mirror} {suite} main",
        f"deb {mirror} {suite}-updates main",
        f"deb {security_mirror} {suite}-security main",
    ]


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the image's content; its hash names the cache directory."""

    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    security_mirror: str = "http://deb.debian.org/debian-security"
    packages: Tuple[str, ...] = (
        "systemd", "systemd-sysv", "udev", "dbus", "linux-image-amd64", "initramfs-tools",
        "grub-efi-amd64", "sudo", "python3", "python3-venv", "openssh-server", "dpkg",
        "e2fsprogs", "kmod", "iproute2", "procps", "ca-certificates", "less",
    )  # fmt: skip
    hostname: str = "memuse-machine"
    sudo_user: str = "tester"
    plain_user: str = "nosudo"
    root_uuid: str = "6d656d75-7365-4b69-a74d-616368696e65"
    esp_serial: str = "4D454D55"  # the ESP's FAT volume id, fstab's UUID=4D45-4D55
    esp_mib: int = 64
    root_mib: int = 6144
    grub_default: str = "0"
    kernel_cmdline: str = "console=ttyS0,115200"
    configure_script: str = field(default="", repr=False)
    pack_script: str = field(default="", repr=False)
    version: int = RECIPE_VERSION

    def with_scripts(self) -> Recipe:
        """The recipe with its scripts filled in, so that editing them changes the hash."""
        fields = asdict(self)
        fields.update(configure_script=CONFIGURE_SCRIPT, pack_script=PACK_SCRIPT)
        fields["packages"] = tuple(fields["packages"])
        return Recipe(**fields)

    def digest(self) -> str:
        text = json.dumps(asdict(self.with_scripts()), sort_keys=True)
        return sha256_bytes(text.encode())[:16]

    @property
    def esp_uuid(self) -> str:
        return f"{self.esp_serial[:4]}-{self.esp_serial[4:]}"

    def sources(self) -> List[str]:
        return debian_sources(self.mirror, self.security_mirror, self.suite)

    def shell_settings(self) -> str:
        """The recipe's values as shell variables, put before the scripts."""
        values = {
            "HOSTNAME": self.hostname,
            "SUDO_USER": self.sudo_user,
            "PLAIN_USER": self.plain_user,
            "ROOT_UUID": self.root_uuid,
            "ESP_UUID": self.esp_uuid,
            "ROOT_MIB": str(self.root_mib),
            "GRUB_DEFAULT_ENTRY": self.grub_default,
            "KERNEL_CMDLINE": self.kernel_cmdline,
        }
        return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


# machine-configure.sh runs inside the chroot as (namespaced) root once every package is in,
# after the recipe's settings (ROOT_UUID, SUDO_USER, ...). machine-pack.sh runs in mmdebstrap's
# last hook, in its namespace but outside the chroot ($1), with $STAGE the host's staging
# directory: it records what was installed, cleans up, and makes the root filesystem with the
# guest's own mkfs.ext4 -d from a plain bind mount of the chroot (no /proc, /sys, /dev in it).
CONFIGURE_SCRIPT = (DATA / "machine-configure.sh").read_text()
PACK_SCRIPT = (DATA / "machine-pack.sh").read_text()


@dataclass
class MachineImage:
    """A finished image in the cache: its disk, the ssh key that opens it, what it holds."""

    root: Path
    info: Dict[str, Any]

    @property
    def disk(self) -> Path:
        return self.root / "disk.qcow2"

    @property
    def ssh_key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def sudo_user(self) -> str:
        return str(self.info["users"]["sudo"])

    @property
    def plain_user(self) -> str:
        return str(self.info["users"]["plain"])

    @property
    def kernel_release(self) -> str:
        """The stock kernel's release, e.g. 6.1.0-28-amd64."""
        return str(self.info["kernel_release"])

    @property
    def root_uuid(self) -> str:
        return str(self.info["root_uuid"])


def machine_dir() -> Path:
    return cache_root() / "machine"


def image_dir(recipe: Recipe) -> Path:
    return machine_dir() / recipe.digest()


def load_image(root: Path) -> Optional[MachineImage]:
    """The finished image in root, or None when there is none (or only a broken one)."""
    try:
        info = json.loads((root / "image.json").read_text())
    except (OSError, ValueError):
        return None
    image = MachineImage(root, info)
    if info.get("status") != "complete" or not image.disk.is_file():
        return None
    return image


def check_host() -> None:
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if not shutil.which(tool)})
    if not OVMF_CODE.is_file():
        missing.append("ovmf")
    if missing:
        raise KitError(f"the test machine needs: sudo apt-get install {' '.join(missing)}")
    problem = subordinate_ids_problem()
    if problem:
        raise KitError(problem)


def subordinate_ids_problem() -> Optional[str]:
    """What a rootless mmdebstrap (--mode=unshare) lacks for this user, if anything."""
    user = pwd.getpwuid(os.getuid()).pw_name
    if os.getuid() == 0 or _has_subordinate_ids(user):
        return None
    return (
        f"mmdebstrap --mode=unshare needs subordinate ids for {user}: sudo usermod "
        f"--add-subuids 100000-165535 --add-subgids 100000-165535 {user}"
    )


def _has_subordinate_ids(user: str) -> bool:
    uid = str(os.getuid())
    for path in (Path("/etc/subuid"), Path("/etc/subgid")):
        try:
            owners = {line.split(":")[0] for line in path.read_text().splitlines() if ":" in line}
        except OSError:
            return False
        if not owners & {user, uid}:
            return False
    return True


def build_disk(recipe: Recipe, out: Path, say: Progress) -> Dict[str, Any]:
    """mmdebstrap, then the disk: out/disk.qcow2 (not yet booted), out/id_ed25519.

    Returns the info to record (timings, kernel release, package versions).
    """
    check_host()
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner()
    runner.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "memuse-machine",
                "-f", str(out / "id_ed25519")])  # fmt: skip
    # a directory mmdebstrap's namespaced root (a subordinate uid) may write to;
    # the sticky bit keeps other users from replacing what it writes
    stage = Path(tempfile.mkdtemp(prefix="memuse-machine-"))
    try:
        stage.chmod(0o1777)
        started = time.monotonic()
        say(f"mmdebstrap: Debian {recipe.suite} with {len(recipe.packages)} packages ...")
        _mmdebstrap(recipe, out, stage)
        debootstrapped = time.monotonic()
        say("assembling the disk (GPT, FAT ESP, ext4 root) ...")
        _assemble(recipe, stage, out)
        assembled = time.monotonic()
        shutil.copyfile(stage / "packages.tsv", out / "packages.tsv")
        release = (stage / "kernel-release").read_text().split()[-1]
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {
        "kernel_release": release,
        "packages": _versions(out / "packages.tsv"),
        "mmdebstrap_version": _mmdebstrap_version(),
        "durations": {
            "mmdebstrap": round(debootstrapped - started, 1),
            "assemble": round(assembled - debootstrapped, 1),
        },
    }


def _mmdebstrap(recipe: Recipe, out: Path, stage: Path) -> None:
    settings = f"{recipe.shell_settings()}STAGE={shlex.quote(str(stage))}\n"
    configure = out / "configure.sh"
    configure.write_text(settings + CONFIGURE_SCRIPT)
    pack = settings + PACK_SCRIPT
    cmd = [
        "mmdebstrap", "--mode=unshare", "--variant=minbase", "--format=null",
        f"--include={','.join(recipe.packages)}",
        "--dpkgopt=force-unsafe-io", "--aptopt=Acquire::Retries \"3\"",
        "--skip=cleanup",  # the image is made in the last hook; nothing is packed after it
        f"--customize-hook=upload {out / 'id_ed25519.pub'} /tmp/authorized_keys",
        f"--customize-hook=upload {configure} /tmp/memuse-configure.sh",
        '--customize-hook=chroot "$1" sh /tmp/memuse-configure.sh',
        f"--customize-hook={pack}",
    ]  # fmt: skip
    if KEYRING.is_file():
        cmd.append(f"--keyring={KEYRING}")
    cmd += [recipe.suite, "/dev/null", *recipe.sources()]
    log = out / "mmdebstrap.log"
    with log.open("w") as handle:
        status = Runner().stream(cmd, log=handle, env={"LC_ALL": "C.UTF-8"})
    if status != 0 or not (stage / "root.ext4").is_file():
        raise KitError(f"mmdebstrap failed (status {status}): {_last_line(log)}; log: {log}")


def _assemble(recipe: Recipe, stage: Path, out: Path) -> None:
    runner = Runner()
    esp = stage / "esp.img"
    with esp.open("wb") as handle:
        handle.truncate(recipe.esp_mib * _MIB)
    mtools = ["-i", str(esp)]
    runner.run(["mformat", *mtools, "-F", "-N", recipe.esp_serial, "-v", "ESP", "::"])
    runner.run(["mmd", *mtools, "::/EFI", "::/EFI/BOOT"])
    runner.run(["mcopy", *mtools, str(stage / "BOOTX64.EFI"), "::/EFI/BOOT/BOOTX64.EFI"])
    esp_start = _MIB
    root_start = esp_start + recipe.esp_mib * _MIB
    raw = stage / "disk.raw"
    with raw.open("wb") as handle:
        handle.truncate(root_start + recipe.root_mib * _MIB + _MIB)  # + room for the backup GPT
    table = (
        "label: gpt\n"
        f"start={esp_start // _SECTOR}, size={recipe.esp_mib * _MIB // _SECTOR}, "
        f'type={_ESP_TYPE}, name="ESP"\n'
        f"start={root_start // _SECTOR}, size={recipe.root_mib * _MIB // _SECTOR}, "
        f'type={_LINUX_TYPE}, name="root"\n'
    )
    _sfdisk(raw, table)
    _copy_at(esp, raw, esp_start)
    _copy_at(stage / "root.ext4", raw, root_start)
    runner.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out / "disk.qcow2")]
    )


def _sfdisk(raw: Path, table: str) -> None:
    sfdisk = ["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(raw)]
    done = Runner().run(sfdisk, input=table, check=False)
    if done.returncode != 0:
        raise KitError(f"sfdisk could not partition {raw}: {done.stderr.strip()}")


def _copy_at(src: Path, dst: Path, offset: int) -> None:
    """Copy src into dst at offset, skipping src's holes (the ext4 image is mostly holes)."""
    with src.open("rb") as source, dst.open("r+b") as target:
        size = os.fstat(source.fileno()).st_size
        position = 0
        while position < size:
            try:
                start = os.lseek(source.fileno(), position, os.SEEK_DATA)
            except OSError:  # no data after position
                break
            end = os.lseek(source.fileno(), start, os.SEEK_HOLE)
            source.seek(start)
            target.seek(offset + start)
            remaining = end - start
            while remaining:
                chunk = source.read(min(remaining, 8 * _MIB))
                target.write(chunk)
                remaining -= len(chunk)
            position = end


def _versions(packages_tsv: Path) -> Dict[str, str]:
    wanted = ("linux-image-amd64", "grub-efi-amd64", "systemd", "openssh-server", "python3")
    versions = dict(
        line.split("\t", 1) for line in packages_tsv.read_text().splitlines() if "\t" in line
    )
    return {name: versions.get(name, "") for name in wanted}


def _mmdebstrap_version() -> str:
    done = Runner().run(["mmdebstrap", "--version"], check=False, mutates=False)
    return done.stdout.strip()


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("E:", "error", "mmdebstrap: error"))]
    return (errors or lines or ["no output"])[-1][:300]
