"""The syscall spec loader: a syscall is a folder (syscall.toml + impl.c.j2), and every way a
spec can be wrong is one line naming the file, before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from memuse_kit.core.errors import KitError
from memuse_kit.patching import patcher, spec
from tests.fakelinux import make_fake_tree, snapshot

GOOD = """\
name = "thing"
description = "what a thing is"
returns = "long"
arguments = [{ type = "pid_t", name = "pid" }, { type = "unsigned int", name = "flags" }]
abis = ["x86_64", "i386", "generic"]
min_kernel = "5.10"
headers = ["linux/sched/task.h"]
"""
BODY = "\n{{ spec.define }}\n{\n\treturn -ENOSYS;\n}\n"


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch) -> Path:
    directory = tmp_path / "syscalls"
    directory.mkdir()
    monkeypatch.setenv(spec.USER_DIR_ENV, str(directory))
    return directory


def write_spec(user_dir: Path, text: str, name: str = "thing", body: str = BODY) -> Path:
    folder = user_dir / name
    folder.mkdir(exist_ok=True)
    (folder / spec.SPEC_FILE).write_text(text)
    if body:
        (folder / spec.IMPL_FILE).write_text(body)
    return folder


def test_the_shipped_specs_load():
    memuse, fdcount = spec.load_specs(["memuse", "fdcount"])
    assert memuse.signature == "long memuse(pid_t pid, int mem_type)"
    assert fdcount.define == "SYSCALL_DEFINE2(fdcount, pid_t, pid, unsigned int, flags)"
    assert memuse.abis == fdcount.abis == ("x86_64", "i386", "generic")
    assert [p.name for p in fdcount.probes] == ["get_files_struct"]
    assert memuse.requires[0] == (
        "include/linux/mmap_lock.h",
        ("mmap_read_lock_killable", "mmap_lock_is_contended"),
    )
    assert {"fdcount", "memuse"} <= set(spec.available())


def test_a_good_spec_of_your_own_loads(user_dir):
    write_spec(user_dir, GOOD)
    thing = spec.load_spec("thing")
    assert thing.prototype == "pid_t pid, unsigned int flags"
    assert thing.commit == "thing: what a thing is."
    assert thing.folder == user_dir / "thing" and thing.impl_template == "thing/impl.c.j2"
    assert "thing" in spec.available()


def _without(key: str) -> str:
    return "".join(line for line in GOOD.splitlines(True) if not line.startswith(f"{key} ="))


def _replaced(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


BAD = [
    ("missing-name", _without("name"), "missing field 'name'"),
    ("missing-abis", _without("abis"), "missing field 'abis'"),
    ("missing-min-kernel", _without("min_kernel"), "missing field 'min_kernel'"),
    ("unknown-field", GOOD + 'colour = "red"\n', "unknown field 'colour'"),
    ("unknown-abi", _replaced('"generic"]', '"arm64"]'), "unknown ABI 'arm64'"),
    ("abi-twice", _replaced('"generic"]', '"i386"]'), "lists an ABI twice"),
    ("no-abi", _replaced('["x86_64", "i386", "generic"]', "[]"), "abis is empty"),
    ("name-not-c", _replaced('name = "thing"', 'name = "2thing"'), "not a valid syscall name"),
    ("name-keyword", _replaced('name = "thing"', 'name = "while"'), "C keyword"),
    ("name-not-folder", _replaced('name = "thing"', 'name = "other"'), "differs from its folder"),
    ("argument-not-c", _replaced('name = "pid" }', 'name = "p-id" }'), "not a C identifier"),
    ("argument-keyword", _replaced('name = "flags" }', 'name = "int" }'), "a C keyword"),
    ("argument-twice", _replaced('name = "flags" }', 'name = "pid" }'), "two arguments"),
    ("bad-type", _replaced('"unsigned int"', '"float"'), "type 'float', which the kit"),
    ("struct-type", _replaced('"pid_t"', '"struct stat"'), "type 'struct stat'"),
    ("i386-long", _replaced('"unsigned int"', '"long"'), "zero-extended"),
    ("i386-u64", _replaced('"unsigned int"', '"u64"'), "two registers"),
    ("i386-long-pointer", _replaced('"pid_t"', '"long __user *"'), "4 bytes to an i386"),
    ("returns-int", _replaced('"long"', '"int"'), "a syscall returns long"),
    ("missing-arguments", _without("arguments"), "missing field 'arguments'"),
    ("arguments-not-list", _without("arguments") + "arguments = 3\n", "must be a list"),
    ("argument-no-name", _replaced('{ type = "pid_t", name = "pid" }', '{ type = "pid_t" }'),
     "argument 1 must be"),
    ("bad-header", _replaced('"linux/sched/task.h"', '"../etc/passwd"'), "not a path like"),
    ("bad-min-kernel", _replaced('"5.10"', '"five"'), "not a kernel series"),
    ("not-toml", "name = ", "is not valid TOML"),
    ("seven-arguments",
     _replaced("arguments = [", "arguments = [" + '{ type = "int", name = "a1" },' * 5),
     "7 arguments: a syscall takes at most 6"),
    ("commit-too-wide", GOOD + f'commit = "{"x" * 80}"\n', "checkpatch wants at most 75"),
    ("bad-probe", GOOD + '[probes.p]\nfile = "fs/file.c"\n', "probes.p must be"),
    ("bad-requires", GOOD + '[requires]\n"fs/file.c" = ["not c"]\n', "not a C identifier"),
    ("bad-maintainer", GOOD + 'maintainer = "me"\n', "not like 'Your Name <you@example.org>'"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "says"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_spec_is_one_line_naming_its_file(user_dir, text, says):
    write_spec(user_dir, text)
    with pytest.raises(KitError) as refused:
        spec.load_spec("thing")
    message = str(refused.value)
    assert says in message, message
    assert "\n" not in message
    assert str(user_dir / "thing" / spec.SPEC_FILE) in message


def test_a_spec_without_a_body_is_refused(user_dir):
    write_spec(user_dir, GOOD, body="")
    with pytest.raises(KitError, match=r"has no impl\.c\.j2"):
        spec.load_spec("thing")


def test_an_unknown_syscall_names_the_known_ones(user_dir):
    with pytest.raises(KitError, match=r"no syscall named 'nothing': the kit knows fdcount, mem"):
        spec.load_spec("nothing")


def test_a_syscall_defined_twice_is_refused(user_dir):
    write_spec(user_dir, GOOD.replace('"thing"', '"memuse"'), name="memuse")
    with pytest.raises(KitError, match="defined twice"):
        spec.load_spec("memuse")


@pytest.mark.parametrize("name", ["Memuse", "mem use", "../x", "x" * 30, "int"])
def test_a_name_that_cannot_be_a_syscall_is_refused_before_any_file_is_read(name):
    with pytest.raises(KitError, match="is not a syscall name"):
        spec.load_spec(name)


def test_a_body_with_a_template_error_is_one_line(user_dir, tmp_path):
    write_spec(user_dir, GOOD, body="{% if %}\n")
    tree = make_fake_tree(tmp_path / "linux")
    before = snapshot(tree)
    with pytest.raises(KitError) as refused:
        patcher.plan_patch(tree, ["thing"])
    assert "impl.c.j2:1:" in str(refused.value) and "\n" not in str(refused.value)
    assert snapshot(tree) == before


def test_a_body_that_reads_an_unknown_probe_is_one_line(user_dir, tmp_path):
    write_spec(user_dir, GOOD, body="{{ probes.nothing }}\n")
    tree = make_fake_tree(tmp_path / "linux")
    with pytest.raises(KitError, match=r"impl\.c\.j2: 'dict object' has no attribute 'nothing'"):
        patcher.plan_patch(tree, ["thing"])


@pytest.mark.parametrize(
    ("setup", "says"),
    [
        (lambda t: _add_table_entry(t, "thing"), r"syscall_64\.tbl:\d+ already has a thing sys"),
        (lambda t: (t / "kernel/thing.c").write_text("int x;\n"), r"kernel/thing\.c already exi"),
        (lambda t: _add_prototype(t, "thing"), r"syscalls\.h:\d+ already has a thing syscall"),
    ],
    ids=["table", "source-file", "prototype"],
)
def test_a_name_the_tree_already_has_is_refused_and_nothing_is_written(
    user_dir, tmp_path, setup, says
):
    write_spec(user_dir, GOOD)
    tree = make_fake_tree(tmp_path / "linux")
    setup(tree)
    before = snapshot(tree)
    with pytest.raises(KitError, match=says) as refused:
        patcher.plan_patch(tree, ["thing"])
    assert "\n" not in str(refused.value)
    assert snapshot(tree) == before


def _add_table_entry(tree: Path, name: str) -> None:
    table = tree / "arch/x86/entry/syscalls/syscall_32.tbl"
    table.write_text(table.read_text() + f"463\ti386\t{name}\t\t\tsys_{name}\n")
    table = tree / "arch/x86/entry/syscalls/syscall_64.tbl"
    entry = f"\n463\tcommon\t{name}\tx\n\n#\n# Due"
    table.write_text(table.read_text().replace("\n\n#\n# Due", entry))


def _add_prototype(tree: Path, name: str) -> None:
    header = tree / "include/linux/syscalls.h"
    header.write_text(
        header.read_text().replace(
            "\n\n/*\n * Architecture", f"\nasmlinkage long sys_{name}(void);\n\n/*\n * Architecture"
        )
    )
