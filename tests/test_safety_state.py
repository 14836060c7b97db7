"""Issue 9 in-process: unusual but legal table files, damaged state, --out failures that roll
the tree back, bounded reads, OSErrors turned into one line, and dry runs that never fetch."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from invoke.exceptions import Exit

from memuse_kit.cli import one_line_errors
from memuse_kit.core.errors import KitError
from memuse_kit.core.safety import check_output_path, describe_os_error
from memuse_kit.patching import patch_step, patcher, patchfile
from memuse_kit.trees import fetch, sources, workspace
from tests.fakelinux import make_fake_tree, snapshot
from tests.safety_support import fingerprint

TBL64 = "arch/x86/entry/syscalls/syscall_64.tbl"
GENERIC = "scripts/syscall.tbl"
SYS_C = "kernel/sys.c"
MAKEFILE = "kernel/Makefile"
TARGETS = [
    TBL64,
    "arch/x86/entry/syscalls/syscall_32.tbl",
    "include/uapi/asm-generic/unistd.h",
    GENERIC,
    "include/linux/syscalls.h",
    MAKEFILE,
    "MAINTAINERS",
]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_fake_tree(tmp_path / "linux")


def _patch(tree: Path, out: Path) -> None:
    patch_step.patch_tree(tree, str(out))


# unusual but legal files: CRLF endings, no final newline


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
@pytest.mark.parametrize("final_newline", [True, False], ids=["newline", "no-final-newline"])
def test_every_file_keeps_its_line_endings_and_revert_is_exact(
    tree: Path, tmp_path: Path, crlf: bool, final_newline: bool
):
    for rel in TARGETS:
        text = (tree / rel).read_text()
        if not final_newline:
            text = text.rstrip("\n")
        (tree / rel).write_bytes((text.replace("\n", "\r\n") if crlf else text).encode())
    pristine = snapshot(tree)
    _patch(tree, tmp_path / "x.patch")
    for rel in TARGETS:
        data = (tree / rel).read_bytes()
        assert data != pristine[rel]
        assert data.endswith(b"\n") == final_newline, rel
        if crlf:
            assert data.count(b"\n") == data.count(b"\r\n"), rel
        else:
            assert b"\r" not in data, rel
    assert b"463\tcommon\tmemuse" in (tree / GENERIC).read_bytes()
    assert (tree / GENERIC).read_bytes().rstrip(b"\r\n").endswith(b"sys_memuse")
    patch_step.revert_tree(tree)
    assert snapshot(tree) == pristine


def test_a_patched_no_newline_table_is_still_recognised_as_ours(tree: Path, tmp_path: Path):
    table = tree / GENERIC
    table.write_text(table.read_text().rstrip("\n"))
    pristine = snapshot(tree)
    _patch(tree, tmp_path / "x.patch")
    before = fingerprint(tree)
    _patch(tree, tmp_path / "x.patch")  # a second run changes nothing
    assert fingerprint(tree) == before
    patch_step.revert_tree(tree)
    assert snapshot(tree) == pristine


def test_mixed_line_endings_are_refused_in_one_line(tree: Path, tmp_path: Path):
    table = tree / TBL64
    table.write_bytes(table.read_bytes().replace(b"\n", b"\r\n", 1))
    before = fingerprint(tree)
    with pytest.raises(KitError, match="mixes CRLF and LF line endings") as caught:
        _patch(tree, tmp_path / "x.patch")
    assert "\n" not in str(caught.value)
    assert fingerprint(tree) == before


# damaged state


def _state(tree: Path, data: object) -> None:
    (tree / ".memuse-kit").mkdir(exist_ok=True)
    text = data if isinstance(data, str) else json.dumps(data)
    (tree / ".memuse-kit" / "state.json").write_text(text)


GOOD = {"original_sha256": "0" * 64, "patched_sha256": "1" * 64}


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ("", "not valid JSON"),
        ("\xff\xfe", "not valid JSON"),
        ("[]", "not a JSON object"),
        ({"files": {}}, "lists no files"),
        ({"files": {SYS_C: "x"}, "nr": 1, "kernel": "7"}, "lacks its sha256 sums"),
        ({"files": {SYS_C: GOOD}, "nr": "472", "kernel": "7"}, "no syscall number"),
        ({"files": {SYS_C: GOOD}, "nr": True, "kernel": "7"}, "no syscall number"),
        ({"files": {SYS_C: GOOD}, "nr": 472}, "no kernel version"),
        ({"files": {"/etc/passwd": GOOD}, "nr": 472, "kernel": "7"}, "not a file memuse-kit"),
        ({"files": {MAKEFILE: GOOD}, "nr": 472, "kernel": "7", "version": 3}, "has version 3"),
        ({"files": {MAKEFILE: GOOD}, "kernel": "7", "version": 2}, "no syscall number"),
        (
            {"files": {MAKEFILE: GOOD}, "syscalls": {"no such": 1}, "kernel": "7", "version": 2},
            "no syscall number",
        ),
        (  # only the files memuse-kit creates may have no original
            {
                "files": {MAKEFILE: {"original_sha256": None, "patched_sha256": "1" * 64}},
                "syscalls": {"memuse": 472},
                "kernel": "7",
                "version": 2,
            },
            "lacks its sha256 sums",
        ),
    ],
)
def test_damaged_state_is_one_line_on_how_to_recover(tree: Path, data: object, why: str):
    _state(tree, data)
    before = fingerprint(tree)
    for action in (patcher.plan_patch, patcher.revert, patcher.recorded_syscalls):
        with pytest.raises(KitError) as caught:
            action(tree)
        message = str(caught.value)
        assert why in message and "delete" in message and "\n" not in message
    assert fingerprint(tree) == before


def test_a_state_file_that_is_a_directory(tree: Path):
    (tree / ".memuse-kit" / "state.json").mkdir(parents=True)
    with pytest.raises(KitError, match=r"state\.json is not a regular file"):
        patcher.plan_patch(tree)


def test_a_missing_pristine_copy_says_how_to_recover(tree: Path, tmp_path: Path):
    _patch(tree, tmp_path / "x.patch")
    (tree / ".memuse-kit" / "original" / MAKEFILE).unlink()
    before = fingerprint(tree)
    with pytest.raises(KitError, match=r"missing or damaged: restore .*kernel/Makefile"):
        patcher.revert(tree)
    assert fingerprint(tree) == before


# --out: checked before, and a failure after patching rolls the tree back


def test_a_failing_patch_file_write_rolls_the_tree_back(tree: Path, tmp_path: Path, monkeypatch):
    pristine = snapshot(tree)

    def disk_full(path: Path, text: str) -> bool:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(patchfile, "write_text", disk_full)
    task = one_line_errors(patch_step.patch_tree)
    with pytest.raises(Exit) as caught:
        task(tree, str(tmp_path / "x.patch"))
    assert snapshot(tree) == pristine  # no .memuse-kit either
    assert caught.value.code == 1
    assert caught.value.message == (
        f"memuse-kit: error: {tmp_path / 'x.patch'}: no space left on the device: "
        "free some space and run the command again"
    )


def test_a_rerun_whose_patch_write_fails_keeps_the_earlier_patch(
    tree: Path, tmp_path: Path, monkeypatch
):
    _patch(tree, tmp_path / "x.patch")
    patched = snapshot(tree)
    monkeypatch.setattr(patchfile, "write_text", lambda path, text: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        _patch(tree, tmp_path / "y.patch")
    assert snapshot(tree) == patched


def test_a_huge_existing_out_is_never_read_whole(tree: Path, tmp_path: Path):
    big = tmp_path / "big.patch"
    with big.open("wb") as handle:
        handle.truncate(1 << 40)  # sparse: a terabyte that would take hours to read
    _patch(tree, big)
    assert big.stat().st_size < 1 << 20
    assert big.read_text().startswith("From ")


def test_a_symlinked_directory_is_followed_but_a_symlinked_file_is_not(tree: Path, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "via").symlink_to(tmp_path / "real")
    assert check_output_path(str(tmp_path / "via" / "x.patch")) == tmp_path / "real" / "x.patch"
    (tmp_path / "via-tree").symlink_to(tree / "kernel")
    with pytest.raises(KitError, match="inside the kernel tree"):
        check_output_path(str(tmp_path / "via-tree" / "x.patch"), trees=[tree])


# the task boundary


def test_os_errors_are_advice_in_one_line():
    error = PermissionError(errno.EACCES, "Permission denied", "/x/y")
    assert describe_os_error(error) == (
        "/x/y: permission denied: check its owner and mode (ls -l), or run as its owner"
    )
    rename = OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b")
    assert describe_os_error(rename).startswith("/a -> /b: cannot move across file systems")
    assert describe_os_error(OSError(errno.EROFS, "x")).startswith("read-only file system")


def test_a_bug_is_one_line_unless_debugging(monkeypatch):
    def buggy() -> None:
        raise KeyError("boom")

    task = one_line_errors(buggy)
    monkeypatch.delenv("MEMUSE_KIT_DEBUG", raising=False)
    with pytest.raises(Exit) as caught:
        task()
    assert caught.value.code == 1 and "\n" not in caught.value.message
    assert caught.value.message.startswith("memuse-kit: internal error (KeyError: 'boom')")
    assert "MEMUSE_KIT_DEBUG=1" in caught.value.message
    monkeypatch.setenv("MEMUSE_KIT_DEBUG", "1")
    with pytest.raises(KeyError):
        task()


def test_multi_line_messages_become_one_line():
    def chatty() -> None:
        raise KitError("first\nsecond\n")

    with pytest.raises(Exit) as caught:
        one_line_errors(chatty)()
    assert caught.value.message == "memuse-kit: error: first; second"


# which tree: never empty, never a fetch in a dry run


def test_an_empty_tree_is_an_error_not_the_default(monkeypatch):
    monkeypatch.setattr(fetch, "fetch_source", pytest.fail)
    for tree, source in (("", None), (" ", None), (None, "")):
        with pytest.raises(KitError, match="is empty"):
            workspace.resolve_tree(tree, source)


def test_a_dry_run_never_fetches(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("MEMUSE_KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fetch, "fetch_source", pytest.fail)
    for source in (None, "debian:7.2", "kernel.org:6.6"):
        with pytest.raises(workspace.NotFetched, match="not fetched yet") as caught:
            workspace.resolve_tree(None, source, dry_run=True)
        assert caught.value.spec == (source or sources.load_coordinates().default)
    assert not (tmp_path / "cache").exists()


def test_a_dry_run_uses_the_current_tree(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("MEMUSE_KIT_CACHE", str(tmp_path / "cache"))
    tree = make_fake_tree(tmp_path / "mine")
    fetch.use_tree(tree)
    monkeypatch.setattr(fetch, "fetch_source", pytest.fail)
    assert workspace.resolve_tree(None, None, dry_run=True) == tree.resolve()
    assert os.path.isdir(tree)
