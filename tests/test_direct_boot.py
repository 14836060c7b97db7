"""Booting a foreign kernel straight under QEMU, without QEMU: its command line from the arch
table, the guest's two scripts, the dry run, and each failure's one line (a fake QEMU)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from memuse_kit.building.builddir import BuildDir
from memuse_kit.core import arch
from memuse_kit.core.errors import KitError
from memuse_kit.trying import direct_boot
from memuse_kit.trying.direct_boot import (
    Share,
    guest_env,
    guest_path,
    host_shares,
    init_script,
    qemu_command,
)
from memuse_kit.trying.rootfs import GUEST_INIT, Rootfs
from memuse_kit.trying.vm import ConsoleReader, VmOptions

TREE = {"bin": "usr/bin", "etc": None, "home": None, "proc": None, "tmp": None, "usr": None}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MEMUSE_KIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def options(tmp_path: Path, **changes) -> VmOptions:
    values = {"build": BuildDir(tmp_path / "build"), "cwd": tmp_path / "repo", **changes}
    return VmOptions(**values)


def test_the_qemu_command_comes_from_the_arch_entry(tmp_path):
    image = tmp_path / "Image"
    shares = [Share("memuse-s0", Path("/work/repo"))]
    cmd = qemu_command(
        arch.ARM64, image, options(tmp_path), Path("/c/root"), Path("/t/boot"), shares
    )
    assert cmd[0] == "qemu-system-aarch64"
    assert cmd[1:5] == ["-machine", "virt", "-cpu", "cortex-a72"]
    joined = " ".join(cmd)
    assert "-accel tcg -smp 2 -m 3G" in joined and "-no-reboot" in cmd
    assert cmd[cmd.index("-kernel") + 1] == str(image)
    append = cmd[cmd.index("-append") + 1].split()
    assert {"console=ttyAMA0", "root=/dev/root", "rootfstype=9p", "ro", "panic=-1"} <= set(append)
    assert f"init={GUEST_INIT}" in append
    assert any(word.startswith("rootflags=trans=virtio,version=9p2000.L,msize=") for word in append)
    fsdevs = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-fsdev"]
    assert fsdevs == [
        "local,id=root,path=/c/root,security_model=none,readonly=on",
        "local,id=boot,path=/t/boot,security_model=none,readonly=on",
        "local,id=memuse-s0,path=/work/repo,security_model=none,readonly=on",
    ]
    devices = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-device"]
    assert devices[0] == "virtio-9p-device,fsdev=root,mount_tag=/dev/root"
    assert devices[1] == "virtio-9p-device,fsdev=boot,mount_tag=memuse-boot"


def test_a_comma_in_a_shared_path_is_doubled(tmp_path):
    cmd = qemu_command(arch.ARM64, tmp_path / "I", options(tmp_path), Path("/a,b"), Path("/t"), [])
    assert "local,id=root,path=/a,,b,security_model=none,readonly=on" in cmd


def test_memory_and_cpus_come_from_the_options(tmp_path):
    cmd = qemu_command(
        arch.ARM64, tmp_path / "I", options(tmp_path, memory="1G", cpus=1), Path("/r"),
        Path("/t"), [],
    )  # fmt: skip
    assert cmd[cmd.index("-m") + 1] == "1G" and cmd[cmd.index("-smp") + 1] == "1"


def test_shares_drop_nested_directories(tmp_path):
    shares = host_shares([Path("/work/repo"), Path("/home/u/.cache/k"), Path("/work/repo/sub")])
    assert shares == [Share("memuse-s0", Path("/home/u/.cache/k")),
                      Share("memuse-s1", Path("/work/repo"))]  # fmt: skip
    with pytest.raises(KitError, match="host's / cannot"):
        host_shares([Path("/")])


def test_the_init_script_builds_a_new_root_then_chroots(tmp_path):
    shares = [Share("memuse-s0", Path("/home/u/cache")), Share("memuse-s1", Path("/work/repo"))]
    script = init_script(TREE, shares)
    lines = script.splitlines()
    root = direct_boot.NEW_ROOT
    assert f"busybox ln -s usr/bin {root}/bin" in lines
    assert any(f"busybox mount -o bind /etc {root}/etc" in line for line in lines)
    assert any(f"busybox mount -o bind /usr {root}/usr" in line for line in lines)
    # /home holds a share: the tree's (empty) /home is not bound over it
    assert not any("bind /home" in line for line in lines)
    # proc and /tmp are fresh, not the tree's
    assert not any("bind /proc" in line or "bind /tmp" in line for line in lines)
    tmp_mount = next(i for i, line in enumerate(lines) if "-t tmpfs -o mode=1777 tmp" in line)
    share_mount = next(i for i, line in enumerate(lines) if "memuse-s1" in line)
    assert tmp_mount < share_mount
    assert (
        f"busybox mount -t 9p -o ro,{direct_boot.NINEP_OPTIONS} memuse-s1 {root}/work/repo"
        in (lines[share_mount])
    )
    assert lines[0] == "#!/bin/sh" and "set -e" in lines
    assert lines[-1] == f"exec busybox chroot {root} /bin/sh /run/memuse-kit/boot/run.sh"
    (tmp_path / "init.sh").write_text(script)
    subprocess.run(["sh", "-n", str(tmp_path / "init.sh")], check=True)


def run_script_on_host(tmp_path: Path, command, env=None) -> ConsoleReader:
    """run.sh executed by the host's sh, without its poweroff line; its output read back."""
    script = direct_boot.run_script(command, "cafe0123", tmp_path, env or {})
    assert script.endswith("sync\nbusybox poweroff -f\n")
    path = tmp_path / "run.sh"
    path.write_text(script.replace("busybox poweroff -f\n", ""))
    done = subprocess.run(["sh", str(path)], capture_output=True, text=True, check=False)
    with open(os.devnull, "w") as quiet:
        reader = ConsoleReader("cafe0123", quiet, sys.stderr)
        for line in done.stdout.splitlines(keepends=True):
            reader.feed(line)
    return reader


def test_the_run_script_reports_output_and_status_between_the_markers(tmp_path):
    reader = run_script_on_host(tmp_path, ["sh", "-c", "echo one; echo 'two  words'; exit 3"])
    assert reader.status == 3 and reader.output == ["one", "two  words"]


def test_the_run_script_exports_the_environment_quoted(tmp_path):
    env = direct_boot.guest_env({"MEMUSE_SCENARIOS_BIN": Path("/c/bin/it's")})
    reader = run_script_on_host(
        tmp_path, ["sh", "-c", 'echo "$MEMUSE_SCENARIOS_BIN|$PYTHONDONTWRITEBYTECODE|$PWD"'], env
    )
    assert reader.status == 0
    assert reader.output == [f"/c/bin/it's|1|{tmp_path}"]


def test_the_guest_environment_names_the_cache_and_the_guest_path(cache):
    env = direct_boot.guest_env({})
    assert env["MEMUSE_KIT_CACHE"] == str(cache) and env["HOME"] == "/root"
    assert env["PATH"].split(":")[-1] == "/bin" and sys.executable not in env["PATH"]
    assert env["PYTHONUNBUFFERED"] == "1"


def test_a_dry_run_prints_qemu_and_touches_nothing(tmp_path, cache, monkeypatch, capsys):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    rootfs = Rootfs(cache / "rootfs" / "x")
    result = direct_boot.run_direct(options(tmp_path, dry_run=True), arch.ARM64, rootfs)
    out = capsys.readouterr().out.strip().splitlines()
    assert result.status == 0 and len(out) == 1
    assert out[0].startswith("qemu-system-aarch64 -machine virt -cpu cortex-a72")
    assert str(tmp_path / "build/obj/arch/arm64/boot/Image") in out[0]
    assert not cache.exists() and not (tmp_path / "tmp").exists()
    assert not (tmp_path / "build").exists()


def guest_rootfs(tmp_path: Path) -> Rootfs:
    rootfs = Rootfs(tmp_path / "rootfs")
    init = rootfs.root / GUEST_INIT.lstrip("/")
    init.parent.mkdir(parents=True)
    init.write_text("#!/bin/sh\n")
    return rootfs


def image(tmp_path: Path) -> Path:
    path = tmp_path / "build/obj" / arch.ARM64.image_path
    path.parent.mkdir(parents=True)
    path.write_bytes(b"Image")
    return path


FAKE_QEMU = """#!/bin/sh
# reads this boot's run.sh from its share, as the guest would, and answers from it
boot=$(printf '%s\\n' "$@" | sed -n 's/^local,id=boot,path=\\([^,]*\\),.*/\\1/p')
nonce=$(sed -n 's/^echo MEMUSE-KIT-BEGIN-//p' "$boot/run.sh")
echo "[    0.000000] Booting Linux"
"""


def fake_qemu(tmp_path: Path, monkeypatch, body: str) -> None:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    qemu = bin_dir / "qemu-system-aarch64"
    qemu.write_text(FAKE_QEMU + body)
    qemu.chmod(qemu.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_the_status_and_output_come_back_from_the_console(tmp_path, cache, monkeypatch, capsys):
    body = (
        'echo "MEMUSE-KIT-BEGIN-$nonce"; echo aarch64\n'
        'echo "[    1.000000] reboot: Power down"\n'
        'echo "MEMUSE-KIT-END-$nonce status=3"\n'
    )
    fake_qemu(tmp_path, monkeypatch, body)
    image(tmp_path)
    log = tmp_path / "vm.log"
    result = direct_boot.run_direct(
        options(tmp_path), arch.ARM64, guest_rootfs(tmp_path), log_path=log
    )
    assert result.status == 3 and result.output == ["aarch64"]
    assert result.kernel_log[-1].endswith("reboot: Power down")
    assert capsys.readouterr().out == "aarch64\n"
    assert "qemu-system-aarch64" in log.read_text().splitlines()[0]


def test_the_boot_directory_is_removed_afterwards(tmp_path, cache, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    fake_qemu(tmp_path, monkeypatch, 'echo "MEMUSE-KIT-END-$nonce status=0"\n')
    image(tmp_path)
    direct_boot.run_direct(options(tmp_path), arch.ARM64, guest_rootfs(tmp_path),
                           log_path=tmp_path / "vm.log")  # fmt: skip
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_vm_without_a_status_names_its_console_log(tmp_path, cache, monkeypatch):
    fake_qemu(tmp_path, monkeypatch, 'echo "[    2.000000] Kernel panic - not syncing"\n')
    image(tmp_path)
    log = tmp_path / "vm.log"
    with pytest.raises(KitError, match=rf"without reporting .*Kernel panic.*console log: {log}"):
        direct_boot.run_direct(options(tmp_path), arch.ARM64, guest_rootfs(tmp_path), log_path=log)


def test_a_vm_over_its_time_is_stopped_and_named(tmp_path, cache, monkeypatch):
    fake_qemu(tmp_path, monkeypatch, "sleep 30\n")
    image(tmp_path)
    log = tmp_path / "vm.log"
    with pytest.raises(KitError, match=rf"did not finish within 1s; console log: {log}"):
        direct_boot.run_direct(
            options(tmp_path, timeout=1.0), arch.ARM64, guest_rootfs(tmp_path), log_path=log
        )


def test_no_image_is_one_line(tmp_path, cache):
    with pytest.raises(
        KitError, match=r"no built kernel at .*Image: run invoke build --arch arm64"
    ):
        direct_boot.run_direct(options(tmp_path), arch.ARM64, guest_rootfs(tmp_path))


def test_no_qemu_names_its_package(tmp_path, cache, monkeypatch):
    image(tmp_path)
    monkeypatch.setattr(direct_boot.shutil, "which", lambda _: None)
    with pytest.raises(KitError, match="sudo apt-get install qemu-system-arm"):
        direct_boot.run_direct(options(tmp_path), arch.ARM64, guest_rootfs(tmp_path))


def test_kvm_is_refused_for_a_foreign_guest(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(arch.Arch, "is_host", lambda self: False)
    with pytest.raises(KitError, match="--accel kvm cannot run an arm64 guest"):
        direct_boot.run_direct(options(tmp_path, accel="kvm"), arch.ARM64, guest_rootfs(tmp_path))


def test_a_share_inside_the_guests_own_system_directories_is_mounted_elsewhere():
    """A checkout in /var/lib/ci cannot be mounted at its path (the guest's /var is the
    root's, read-only): it goes under /run/memuse-kit/host, and the paths the guest is
    given (working directory, cache, programs) are translated; others keep their path."""
    shares = host_shares([Path("/var/lib/ci/repo"), Path("/home/u/.cache/k")])
    repo = next(share for share in shares if share.path == Path("/var/lib/ci/repo"))
    assert repo.guest == Path("/run/memuse-kit/host/var/lib/ci/repo")
    assert guest_path(Path("/var/lib/ci/repo/tests"), shares) == repo.guest / "tests"
    assert guest_path(Path("/home/u/.cache/k/bin/x"), shares) == Path("/home/u/.cache/k/bin/x")
    script = init_script({"var": None, "usr": None}, shares)
    assert "/run/memuse-kit/root/run/memuse-kit/host/var/lib/ci/repo" in script
    assert "mount -o bind /var /run/memuse-kit/root/var" in script  # the root's own /var
    env = guest_env({"MEMUSE_SCENARIOS_BIN": Path("/var/lib/ci/repo/s")}, shares)
    assert env["MEMUSE_SCENARIOS_BIN"] == "/run/memuse-kit/host/var/lib/ci/repo/s"
