"""Issue matrix: real Debian kernel sources, patched, compiled, checked, reverted."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from memuse_client import smaps
from memuse_kit.building import compiler
from memuse_kit.patching import patcher, patchfile
from tests.kernel_trees import (
    MATRIX_SOURCES,
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


def compile_check(tree: Path, obj: Path) -> bytes:
    """make defconfig && make kernel/sys.o with the compiler the tool picks; returns nm output."""
    cc = compiler.pick(patcher.plan_patch(tree).kernel, use_ccache=bool(shutil.which("ccache")))
    make = ["make", f"O={obj}", f"-j{os.cpu_count() or 1}", *cc.make_args()]
    subprocess.run([*make, "defconfig"], cwd=tree, check=True, capture_output=True)
    built = subprocess.run([*make, "kernel/sys.o"], cwd=tree, capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return subprocess.run(["nm", str(obj / "kernel/sys.o")], check=True, capture_output=True).stdout


def check_tree(cached: Path, name: str, tmp_path: Path) -> None:
    copy = link_copy(cached, name)
    try:
        plan = patcher.plan_patch(copy)
        assert plan.nr == KNOWN_NUMBERS[plan.kernel.short]
        patch_text = patchfile.render_patch(plan)
        patch_file = tmp_path / "memuse.patch"
        patch_file.write_text(patch_text)
        for cmd in (["git", "apply", "--check"], ["patch", "-p1", "--dry-run", "-s", "-i"]):
            subprocess.run([*cmd, str(patch_file)], cwd=copy, check=True)
        checkpatch = subprocess.run(
            ["perl", "scripts/checkpatch.pl", "-q", str(patch_file)],
            cwd=copy, capture_output=True, text=True,
        )  # fmt: skip
        assert checkpatch.returncode == 0, checkpatch.stdout
        patcher.apply_plan(plan)
        assert patcher.plan_patch(copy).changed == []
        symbols = compile_check(copy, tmp_path / "obj")
        assert b" T __x64_sys_memuse" in symbols
        patcher.revert(copy)
        assert list(differences(cached, copy)) == []
    finally:
        shutil.rmtree(copy, ignore_errors=True)


@pytest.mark.parametrize("source", MATRIX_SOURCES)
def test_debian_source_patches_compiles_and_reverts(source, tmp_path):
    check_tree(cached_tree(source), source.replace(":", "-"), tmp_path)


@pytest.mark.skipif(not os.environ.get(UPSTREAM_511_ENV), reason=f"set {UPSTREAM_511_ENV}=DIR")
def test_upstream_5_11_patches_compiles_and_reverts(tmp_path):
    check_tree(Path(os.environ[UPSTREAM_511_ENV]), "upstream-5.11", tmp_path)


@pytest.mark.skipif(not os.environ.get(UPSTREAM_66_ENV), reason=f"set {UPSTREAM_66_ENV}=DIR")
def test_upstream_6_6_patches_compiles_and_reverts(tmp_path):
    check_tree(Path(os.environ[UPSTREAM_66_ENV]), "upstream-6.6", tmp_path)


@pytest.mark.parametrize("source", MATRIX_SOURCES)
def test_shipped_patch_applies_to_its_pristine_tree(source, tmp_path):
    cached = cached_tree(source)
    copy = link_copy(cached, source.replace(":", "-") + "-shipped")
    try:
        version = patcher.plan_patch(copy).kernel
        shipped = patchfile.PATCHES_DIR / f"memuse-{version}.patch"
        # a skip here would stop checking silently at Debian's next point release
        assert shipped.is_file(), (
            f"Debian moved on to {version}: no {shipped.name} ships. Follow the new release: "
            "run invoke patches (it regenerates patches/ from the new trees), then update the "
            "versions the README and tests name (KNOWN_NUMBERS, the README's patch list)"
        )
        regenerated = patchfile.render_patch(patcher.plan_patch(copy))
        assert regenerated == shipped.read_text()
        subprocess.run(["git", "apply", "--check", str(shipped)], cwd=copy, check=True)
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
