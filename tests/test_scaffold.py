"""`invoke syscall new NAME`: a folder the kit loads and patches in, made whole or not at all.
(That its stub compiles in a real tree is in the slow tier, tests/test_matrix.py.)"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from memuse_kit.core.errors import KitError
from memuse_kit.patching import patcher, patchfile, scaffold, shipped, spec
from tests.fakelinux import make_fake_tree, snapshot
from tests.safety_support import invoke_here


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch) -> Path:
    directory = tmp_path / "mine"
    monkeypatch.setenv(spec.USER_DIR_ENV, str(directory))
    return directory


ARGS = ["pid_t pid", "char __user *buf", "unsigned int flags"]


def make(name: str = "kitdemo", **kwargs) -> Path:
    kwargs.setdefault("arguments", ARGS)
    kwargs.setdefault("description", "a demonstration of the kit")
    return scaffold.create(scaffold.request(name, **kwargs), scaffold.target_dir(None))


def test_the_scaffold_is_a_syscall_the_kit_loads_and_patches_in(user_dir, tmp_path):
    folder = make()
    assert folder == user_dir / "kitdemo"
    assert sorted(p.name for p in folder.iterdir()) == [
        "impl.c.j2",
        "syscall.toml",
        "test_kitdemo.py",
    ]
    loaded = spec.load_spec("kitdemo")
    assert loaded.signature == "long kitdemo(pid_t pid, char __user *buf, unsigned int flags)"
    assert loaded.abis == spec.ABIS and loaded.min_kernel == "5.10"
    tree = make_fake_tree(tmp_path / "linux")
    plan = patcher.plan_patch(tree, ["memuse", "kitdemo"])
    patcher.apply_plan(plan)
    assert plan.numbers == {"memuse": 463, "kitdemo": 464}
    source = (tree / "kernel/kitdemo.c").read_text()
    assert source.startswith("// SPDX-License-Identifier: GPL-2.0\n#include <linux/syscalls.h>\n")
    assert (
        "SYSCALL_DEFINE3(kitdemo, pid_t, pid, char __user *, buf, unsigned int, flags)\n"
        "{\n\treturn -ENOSYS;\n}\n"
    ) in source
    assert " * kitdemo(pid, buf, flags): a demonstration of the kit\n" in source
    assert "{#" not in source and "Jinja" not in source  # the template's comment stays out
    assert (
        "asmlinkage long sys_kitdemo(pid_t pid, char __user *buf, unsigned int flags);"
        in (tree / "include/linux/syscalls.h").read_text()
    )
    assert shipped.stale_files(patchfile.render_patch(plan)) == []


def test_the_guest_test_stub_is_python_that_skips_outside_such_a_kernel(user_dir):
    folder = make()
    text = (folder / "test_kitdemo.py").read_text()
    ast.parse(text)
    assert 'kallsyms_has("kitdemo") is not True' in text
    assert "call(0, 0, 0) == (-1, errno.ENOSYS)" in text
    assert 'discover(name="kitdemo")' in text


def test_a_syscall_without_arguments_and_with_options(user_dir, tmp_path):
    make("tick", arguments=[], abis=["x86_64"], headers=["linux/sched.h"], min_kernel="6.1")
    loaded = spec.load_spec("tick")
    assert loaded.define == "SYSCALL_DEFINE0(tick)" and loaded.prototype == "void"
    assert loaded.abis == ("x86_64",) and loaded.headers == ("linux/sched.h",)
    tree = make_fake_tree(tmp_path / "linux")
    patcher.apply_plan(patcher.plan_patch(tree, ["tick"]))
    assert "tick" not in (tree / "arch/x86/entry/syscalls/syscall_32.tbl").read_text()
    assert "#include <linux/sched.h>\n" in (tree / "kernel/tick.c").read_text()


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"arguments": ["float f"]}, "type 'float'"),
        ({"arguments": ["int"]}, "is not a C parameter"),
        ({"arguments": ["int a", "int a"]}, "two arguments are named 'a'"),
        ({"abis": ["arm64"]}, "unknown ABI 'arm64'"),
        ({"headers": ["/etc/passwd"]}, "not a path like"),
        ({"min_kernel": "new"}, "not a kernel series"),
        ({"description": "two\nlines"}, "one non-empty line"),
        ({"arguments": ["long offset"]}, "zero-extended"),
    ],
)
def test_a_bad_field_is_one_line_and_nothing_is_created(user_dir, kwargs, says):
    with pytest.raises(KitError) as refused:
        make(**kwargs)
    assert says in str(refused.value) and "\n" not in str(refused.value)
    assert not user_dir.exists() or list(user_dir.iterdir()) == []


def test_a_name_the_kit_has_is_refused(user_dir):
    with pytest.raises(KitError, match=r"a syscall named memuse exists already \(the kit\)"):
        make("memuse")
    make()
    with pytest.raises(KitError, match="a syscall named kitdemo exists already"):
        make()


def test_a_dry_run_checks_everything_and_writes_nothing(user_dir, capsys):
    scaffold.create(scaffold.request("kitdemo", ARGS), scaffold.target_dir(None), dry_run=True)
    assert "would create" in capsys.readouterr().out
    assert not user_dir.exists()
    with pytest.raises(KitError, match="unknown ABI"):
        scaffold.create(
            scaffold.request("kitdemo", abis=["arm64"]), scaffold.target_dir(None), dry_run=True
        )


def test_in_the_repository_the_scaffold_goes_beside_memuse(monkeypatch):
    monkeypatch.delenv(spec.USER_DIR_ENV, raising=False)
    assert scaffold.target_dir(None) == spec.packaged_dir()
    assert scaffold.target_dir("/x/y") == Path("/x/y")


def test_invoke_syscall_new_and_list(user_dir, tmp_path):
    code, out, err = invoke_here(
        ["syscall.new", "kitdemo", "--arg", "pid_t pid", "--description", "a demonstration"]
    )
    assert code == 0, err
    assert (user_dir / "kitdemo" / "syscall.toml").is_file()
    code, out, err = invoke_here(["syscall.list"])
    assert code == 0, err
    assert f"long kitdemo(pid_t pid): a demonstration ({user_dir / 'kitdemo'})" in out
    assert "long memuse(pid_t pid, int mem_type)" in out
    before = snapshot(user_dir)
    code, out, err = invoke_here(["syscall.new", "kitdemo"])
    assert code == 1 and err.count("\n") == 1 and "exists already" in err
    assert snapshot(user_dir) == before
    assert not [p for p in os.listdir(user_dir) if p.startswith(".")]  # no staging left
