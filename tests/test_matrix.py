"""Issue matrix: real kernel sources, patched with every syscall of the kit (memuse, its
example fdcount, and a freshly scaffolded stub), checkpatched, each syscall's object compiled,
one syscall reverted alone, then all of them byte-exact."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Sequence

import pytest

from memuse_client import smaps
from memuse_kit.building import compiler
from memuse_kit.core import arch
from memuse_kit.core.cache import cache_root
from memuse_kit.patching import patcher, patchfile, scaffold, shipped, spec
from memuse_kit.patching.targets import source_path
from memuse_kit.trees.kernel_version import read_tree_version
from tests.kernel_trees import (
    MATRIX_SOURCES,
    TESTED_SYSCALLS,
    UPSTREAM_66_ENV,
    UPSTREAM_511_ENV,
    cached_tree,
    differences,
    link_copy,
)

pytestmark = pytest.mark.slow

# kernel-api-notes.md §B, and Debian 5.10 (upstream 5.10 ends at 440 process_madvise)
KNOWN_NUMBERS = {"5.10": 441, "5.11": 442, "6.1": 451, "6.6": 454, "6.12": 463, "7.2": 472}
PAGE_4K = 4096  # x86_64's page size
STUB = "kitstub"  # scaffolded by the test, as `invoke syscall.new` would


@pytest.fixture
def stub(tmp_path: Path, monkeypatch) -> str:
    """A syscall scaffolded from its fields into a directory of the test's own."""
    monkeypatch.setenv(spec.USER_DIR_ENV, str(tmp_path / "syscalls"))
    wanted = scaffold.request(STUB, ["pid_t pid", "char __user *buf", "unsigned int flags"])
    scaffold.create(wanted, scaffold.target_dir(None))
    return STUB


def compile_check(
    tree: Path, obj: Path, names: Sequence[str], target: arch.Arch = arch.X86_64
) -> Dict[str, bytes]:
    """make defconfig && make kernel/<name>.o for each syscall, with the compiler the tool
    picks for the architecture; nm's output of each object."""
    kernel = read_tree_version(tree)
    cc = compiler.pick(kernel, use_ccache=bool(shutil.which("ccache")), arch=target)
    make = ["make", f"O={obj}", f"-j{os.cpu_count() or 1}", *cc.make_args()]
    subprocess.run([*make, "defconfig"], cwd=tree, check=True, capture_output=True)
    objects = [source_path(name).replace(".c", ".o") for name in names]
    built = subprocess.run([*make, *objects], cwd=tree, capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert "warning:" not in built.stderr, built.stderr[-3000:]
    return {
        name: subprocess.run(["nm", str(obj / o)], check=True, capture_output=True).stdout
        for name, o in zip(names, objects)
    }


def checkpatch(tree: Path, text: str, tmp_path: Path) -> List[str]:
    """The ERROR and WARNING lines scripts/checkpatch.pl gives a patch (after git apply and
    patch -p1 have checked that it applies)."""
    patch_file = tmp_path / "kit.patch"
    patch_file.write_text(text)
    for cmd in (["git", "apply", "--check"], ["patch", "-p1", "--dry-run", "-s", "-i"]):
        subprocess.run([*cmd, str(patch_file)], cwd=tree, check=True)
    done = subprocess.run(
        ["perl", "scripts/checkpatch.pl", "-q", str(patch_file)],
        cwd=tree, capture_output=True, text=True,
    )  # fmt: skip
    found = [line for line in done.stdout.splitlines() if line.startswith(("ERROR", "WARNING"))]
    assert (done.returncode == 0) == (found == []), done.stdout
    return found


def check_tree(cached: Path, name: str, tmp_path: Path, stub: str) -> None:
    copy = link_copy(cached, name)
    names = [*TESTED_SYSCALLS, stub]
    try:
        plan = patcher.plan_patch(copy, names)
        first = KNOWN_NUMBERS[plan.kernel.short]
        assert plan.numbers == {n: first + i for i, n in enumerate(names)}
        shipped_set = patchfile.render_patch(patcher.plan_fresh(copy, TESTED_SYSCALLS))
        assert checkpatch(copy, shipped_set, tmp_path) == []
        # the stub's one warning is its placeholder's: until its body is written it answers
        # as a syscall that is not there would
        assert checkpatch(copy, patchfile.render_patch(plan), tmp_path) == [
            "WARNING: ENOSYS means 'invalid syscall nr' and nothing else"
        ]
        patcher.apply_plan(plan)
        assert patcher.plan_patch(copy).changed == []
        symbols = compile_check(copy, tmp_path / "obj", names)
        for syscall in names:
            assert f" T __x64_sys_{syscall}\n".encode() in symbols[syscall], syscall
        # fdcount and the stub out, memuse left exactly as if it had been added alone
        remaining = patcher.revert(copy, names[1:]).remaining
        assert remaining == {"memuse": first}
        alone = patcher.plan_fresh(cached, ["memuse"])
        for file in alone.files:
            on_disk = (copy / file.path).read_bytes() if (copy / file.path).exists() else None
            assert on_disk == file.patched, file.path
        assert not (copy / source_path("fdcount")).exists()
        patcher.revert(copy)
        assert list(differences(cached, copy)) == []
    finally:
        shutil.rmtree(copy, ignore_errors=True)


@pytest.mark.parametrize("source", MATRIX_SOURCES)
def test_debian_source_patches_compiles_and_reverts(source, tmp_path, stub):
    check_tree(cached_tree(source), source.replace(":", "-"), tmp_path, stub)


# arm64 takes its numbers from asm-generic/unistd.h (and scripts/syscall.tbl from 6.11)
ARM64_SOURCES = ("debian:6.1", "debian:7.2")


@pytest.mark.parametrize("source", ARM64_SOURCES)
def test_arm64_cross_compiles_the_syscalls_into_arm64_wrappers(source):
    """arm64's defconfig, cross-compiled: each syscall's object defines __arm64_sys_<name>.
    The objects stay in the cache between runs, so a run after the first compiles what
    the patch changed and what depends on it."""
    name = source.replace(":", "-") + "-arm64"
    copy = link_copy(cached_tree(source), name)
    try:
        patcher.apply_plan(patcher.plan_patch(copy, TESTED_SYSCALLS))
        obj = cache_root() / "test-scratch" / f"{name}-obj"
        symbols = compile_check(copy, obj, TESTED_SYSCALLS, arch.ARM64)
        for syscall in TESTED_SYSCALLS:
            assert f" T __arm64_sys_{syscall}\n".encode() in symbols[syscall], syscall
            assert b"__x64_sys_" not in symbols[syscall]
    finally:
        shutil.rmtree(copy, ignore_errors=True)


@pytest.mark.skipif(not os.environ.get(UPSTREAM_511_ENV), reason=f"set {UPSTREAM_511_ENV}=DIR")
def test_upstream_5_11_patches_compiles_and_reverts(tmp_path, stub):
    check_tree(Path(os.environ[UPSTREAM_511_ENV]), "upstream-5.11", tmp_path, stub)


@pytest.mark.skipif(not os.environ.get(UPSTREAM_66_ENV), reason=f"set {UPSTREAM_66_ENV}=DIR")
def test_upstream_6_6_patches_compiles_and_reverts(tmp_path, stub):
    check_tree(Path(os.environ[UPSTREAM_66_ENV]), "upstream-6.6", tmp_path, stub)


@pytest.mark.parametrize("source", MATRIX_SOURCES)
def test_shipped_patches_are_what_the_tree_gives_and_apply_to_it(source, tmp_path):
    cached = cached_tree(source)
    copy = link_copy(cached, source.replace(":", "-") + "-shipped")
    try:
        for plan in shipped.shipped_plans(copy):
            shipped_file = patchfile.default_path(plan, shipped.source_label(source))
            # a skip here would stop checking silently at Debian's next point release
            assert shipped_file.is_file(), (
                f"Debian moved on to {plan.kernel}: no {shipped_file.name} ships. Follow the "
                "new release: run invoke patches (it regenerates patches/ from the new trees), "
                "then update the versions the README and tests name (KNOWN_NUMBERS, the "
                "README's patch list)"
            )
            assert patchfile.render_patch(plan) == shipped_file.read_text()
            subprocess.run(["git", "apply", "--check", str(shipped_file)], cwd=copy, check=True)
    finally:
        shutil.rmtree(copy, ignore_errors=True)


THREAD_SIZE_HEADER = "arch/x86/include/asm/page_64_types.h"


@pytest.mark.parametrize("source", MATRIX_SOURCES)
def test_x86_64_thread_size_is_16_kib_and_32_with_kasan(source):
    """The README's (and the client's) kernel stack sizes, read from each kernel's own header:
    THREAD_SIZE = 4 KiB pages << (2 + KASAN_STACK_ORDER), the order 1 with CONFIG_KASAN."""
    text = (cached_tree(source) / THREAD_SIZE_HEADER).read_text()
    kasan = re.search(
        r"#ifdef CONFIG_KASAN\n#define KASAN_STACK_ORDER (\d+)\n#else\n"
        r"#define KASAN_STACK_ORDER (\d+)\n#endif",
        text,
    )
    order = re.search(r"#define THREAD_SIZE_ORDER\s+\((\d+) \+ KASAN_STACK_ORDER\)", text)
    assert kasan and order, f"{THREAD_SIZE_HEADER} no longer reads as expected"
    assert re.search(r"#define THREAD_SIZE\s+\(PAGE_SIZE << THREAD_SIZE_ORDER\)", text)
    with_kasan, without = int(kasan.group(1)), int(kasan.group(2))
    base = int(order.group(1))
    assert PAGE_4K << (base + without) == smaps.THREAD_SIZE == 16384
    assert PAGE_4K << (base + with_kasan) == smaps.THREAD_SIZE_KASAN == 32768
