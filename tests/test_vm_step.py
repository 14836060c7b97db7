from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from memuse_kit.building.builddir import BuildDir
from memuse_kit.trying.vm import (
    DEFAULT_COMMAND,
    RESET_WITHOUT_ACPI,
    ConsoleReader,
    VmOptions,
    guest_script,
    vng_command,
)
from memuse_kit.trying.vm_step import guest_command


def test_quoted_arguments_after_the_double_dash_survive():
    argv = ["invoke", "vm", "--", "sh", "-c", "echo a; exit 3"]
    assert guest_command("sh -c echo a; exit 3", argv) == ["sh", "-c", "echo a; exit 3"]


def test_without_arguments_the_experiment_runs():
    assert guest_command("", ["invoke", "vm"]) == DEFAULT_COMMAND


def test_remainder_alone_is_split_like_a_shell():
    assert guest_command("memuse 1 --json", ["python"]) == ["memuse", "1", "--json"]


def test_console_reader_keeps_the_output_and_the_status(capsys):
    reader = ConsoleReader("abcd", sys.stdout, sys.stderr)
    lines = [
        "[    1.0] booting\r\n",
        "MEMUSE-KIT-BEGIN-abcd\n",
        "hello\r\n",
        "[    2.0] BUG: something\n",
        "[    2.1] harmless\n",
        "MEMUSE-KIT-END-abcd status=7\n",
        "[    3.0] reboot\n",
    ]
    for line in lines:
        reader.feed(line)
    assert reader.status == 7 and reader.output == ["hello"]
    captured = capsys.readouterr()
    assert captured.out == "hello\n"
    assert captured.err == "kernel: [    2.0] BUG: something\n"
    assert len(reader.kernel_log) == 4


def test_a_begin_marker_echoed_inside_the_command_line_is_not_the_start():
    reader = ConsoleReader("abcd", sys.stdout, sys.stderr)
    reader.feed("[ 0.1] Command line: ... echo MEMUSE-KIT-BEGIN-abcd; x\n")
    reader.feed("noise\n")
    assert not reader.inside and reader.output == []


def test_guest_script_wraps_the_command_between_markers():
    script = guest_script(["sh", "-c", "exit 3"], "n1", Path("/repo"))
    assert "echo MEMUSE-KIT-BEGIN-n1; sh -c 'exit 3'; echo MEMUSE-KIT-END-n1 status=$?" in script


def test_the_guest_boots_with_4_level_paging(tmp_path: Path):
    """A KASAN kernel can report a false wild access on 5-level paging (see GUEST_KERNEL_ARGS)."""
    options = VmOptions(build=BuildDir(tmp_path))
    cmd = vng_command(options, "true", use_kvm=False)
    assert cmd[cmd.index("--append") + 1] == "no5lvl"
    assert cmd[-2:] == ["--exec", "true"]


def test_a_guest_without_acpi_resets_after_the_end_marker_and_one_with_acpi_does_not(
    tmp_path: Path,
):
    """The fast vm kernel cannot power off (no ACPI): the script resets it, which ends QEMU."""
    script = guest_script(["true"], "n1", tmp_path)
    assert script.endswith(RESET_WITHOUT_ACPI)
    calls = tmp_path / "calls"
    for name in ("sync", "reboot"):
        fake = tmp_path / "bin" / name
        fake.parent.mkdir(exist_ok=True)
        fake.write_text(f'#!/bin/sh\necho {name} "$@" >> {calls}\n')
        fake.chmod(0o755)
    shell = RESET_WITHOUT_ACPI.replace("/sys/firmware/acpi", str(tmp_path / "acpi"))
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    subprocess.run(["sh", "-c", shell], env=env, check=True)
    assert calls.read_text() == "sync\nreboot -f\n"
    calls.unlink()
    (tmp_path / "acpi").mkdir()
    subprocess.run(["sh", "-c", shell], env=env, check=True)
    assert not calls.exists()


def test_a_kernel_without_virtiofs_gets_its_root_over_9p(tmp_path: Path):
    build = BuildDir(tmp_path)
    build.obj.mkdir()
    (build.obj / ".config").write_text("CONFIG_BLOCK=y\n# CONFIG_VIRTIO_FS is not set\n")
    options = VmOptions(build=build)
    assert "--force-9p" in vng_command(options, "true", use_kvm=False)
    (build.obj / ".config").write_text("CONFIG_BLOCK=y\nCONFIG_VIRTIO_FS=y\n")
    assert "--force-9p" not in vng_command(options, "true", use_kvm=False)


def test_a_kernel_without_a_block_layer_is_told_its_root_device(tmp_path: Path):
    build = BuildDir(tmp_path)
    build.obj.mkdir()
    (build.obj / ".config").write_text("# CONFIG_BLOCK is not set\nCONFIG_VIRTIO_FS=y\n")
    cmd = vng_command(VmOptions(build=build), "true", use_kvm=False)
    assert "root=/dev/root" in cmd and cmd[cmd.index("root=/dev/root") - 1] == "--append"
    (build.obj / ".config").write_text("CONFIG_BLOCK=y\nCONFIG_VIRTIO_FS=y\n")
    assert "root=/dev/root" not in vng_command(VmOptions(build=build), "true", use_kvm=False)
