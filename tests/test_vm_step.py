from __future__ import annotations

import sys
from pathlib import Path

from memuse_kit.building.builddir import BuildDir
from memuse_kit.trying.vm import (
    DEFAULT_COMMAND,
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
