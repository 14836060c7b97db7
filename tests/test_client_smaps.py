from __future__ import annotations

import gzip
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memuse_client import smaps
from memuse_client.kinds import ALL_KINDS, Kind
from memuse_client.smaps import (
    classify,
    config_sources,
    kernel_release,
    parse_rollup,
    parse_smaps,
    read_config,
    smaps_measure,
    thread_size,
)
from tests.client_support import a_kernel_thread

SAMPLE = """\
55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 1234   /usr/bin/true
55d0c0c00000-55d0c0c21000 rw-p 00000000 00:00 0      [heap]
Size:                132 kB
Rss:                  24 kB
Pss:                  24 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
VmFlags: rd wr mr mw me ac
7f0000000000-7f0000400000 rw-p 00000000 00:00 0
Rss:                   0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:    4096 kB
7f0000400000-7f0000401000 rw-p 00000000 00:00 0      [anon:my name]
Rss:                   4 kB
7f0000500000-7f0000501000 r--p 00000000 08:01 99     /tmp/a file [x]
Rss:                   4 kB
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0      [stack]
Rss:                  16 kB
7ffc00100000-7ffc00104000 r--p 00000000 00:00 0      [vvar]
Rss:                   0 kB
7ffc00104000-7ffc00106000 r-xp 00000000 00:00 0      [vdso]
Rss:                   8 kB
7ffc00200000-7ffc00201000 r-xp 00000000 00:00 0      [uprobes]
Rss:                   4 kB
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0  [vsyscall]
Rss:                   4 kB
"""


def test_smaps_is_parsed_per_vma_in_bytes():
    vmas = parse_smaps(SAMPLE)
    assert (vmas[1].start, vmas[1].end) == (0x55D0C0C00000, 0x55D0C0C21000)
    assert [(v.name, v.rss, v.hugetlb) for v in vmas][:4] == [
        ("/usr/bin/true", 0, 0),
        ("[heap]", 24 * 1024, 0),
        ("", 0, 4096 * 1024),
        ("[anon:my name]", 4096, 0),
    ]
    assert vmas[2].resident == 4 * 1024 * 1024
    assert vmas[4].name == "/tmp/a file [x]"


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("[heap]", Kind.HEAP),
        ("[stack]", Kind.STACK),
        ("[vdso]", Kind.KERNEL_MAPPINGS),
        ("[vvar]", Kind.KERNEL_MAPPINGS),
        ("[vvar_vclock]", Kind.KERNEL_MAPPINGS),
        ("[uprobes]", Kind.KERNEL_MAPPINGS),
        ("[vsyscall]", None),
        ("[anon:heap]", None),
        ("[anon_shmem:x]", None),
        ("", None),
        ("/usr/lib/libc.so.6", None),
        ("/memfd:x (deleted)", None),
        ("anon_inode:[perf_event]", None),
    ],
)
def test_vmas_are_classified_by_their_smaps_name(name, kind):
    assert classify(name) is kind


def test_kinds_are_summed_from_a_sample(tmp_path):
    proc = tmp_path / "proc"
    (proc / "42").mkdir(parents=True)
    (proc / "42" / "smaps").write_text(SAMPLE)
    (proc / "42" / "smaps_rollup").write_text(
        "00400000-7fff00000000 ---p 00000000 00:00 0  [rollup]\n"
        "Rss:                 64 kB\nShared_Hugetlb:        2048 kB\nPrivate_Hugetlb:   4096 kB\n"
    )
    (proc / "42" / "stat").write_text("42 (a (b) c) T 1 42 42 0 -1 4194304\n")
    measured = smaps_measure(42, [Kind.STACK, Kind.HEAP, Kind.KERNEL_MAPPINGS, Kind.TOTAL], proc)
    assert measured == {
        Kind.STACK: 16 * 1024,
        Kind.HEAP: 24 * 1024,
        Kind.KERNEL_MAPPINGS: 12 * 1024,
        Kind.TOTAL: (64 + 2048 + 4096) * 1024,
    }


def test_rollup_counts_hugetlb():
    assert parse_rollup("Rss: 8 kB\nPss: 8 kB\nPrivate_Hugetlb: 2048 kB\n") == 2056 * 1024


def config(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


def test_thread_size_comes_from_the_first_config_found(tmp_path):
    plain = config(tmp_path, "config", "CONFIG_X86_64=y\n# CONFIG_KASAN is not set\n")
    kasan = config(tmp_path, "config.gz", "CONFIG_X86_64=y\nCONFIG_KASAN=y\n")
    absent = tmp_path / "absent"
    assert thread_size([absent, plain, kasan], machine="x86_64") == 16384
    assert thread_size([absent, kasan, plain], machine="x86_64") == 32768
    assert thread_size([absent], machine="x86_64") is None
    assert thread_size([plain], machine="aarch64") is None


def test_this_kernels_thread_size_is_what_its_config_says():
    """On this host: 32 KiB when the first x86_64 config found has KASAN, 16 KiB when it does
    not, None (honestly unknown) when there is none or the machine is not x86_64."""
    if platform.machine() in ("aarch64", "arm64"):
        pytest.skip("an arm64 host: its rule is checked on the configs of test_arm64_*")
    configs = [read_config(path) for path in config_sources(kernel_release())]
    found = next((text for text in configs if text and "CONFIG_X86_64=y" in text), None)
    if found is None or platform.machine() != "x86_64":
        expected = None
    else:
        expected = 32768 if "\nCONFIG_KASAN=y\n" in f"\n{found}" else 16384
    assert thread_size() == expected


def arm64_config(*lines: str) -> str:
    return "\n".join(
        ["CONFIG_ARM64=y", "CONFIG_64BIT=y", *lines, "# CONFIG_KASAN_HW_TAGS is not set"]
    )


VMAP = "CONFIG_VMAP_STACK=y"
K4, K16, K64 = "CONFIG_ARM64_4K_PAGES=y", "CONFIG_ARM64_16K_PAGES=y", "CONFIG_ARM64_64K_PAGES=y"
GENERIC = "CONFIG_KASAN=y\nCONFIG_KASAN_GENERIC=y"
SW_TAGS = "CONFIG_KASAN=y\nCONFIG_KASAN_SW_TAGS=y"
HW_TAGS = "CONFIG_KASAN=y\nCONFIG_KASAN_HW_TAGS=y"


@pytest.mark.parametrize(
    "lines, expected",
    [
        # arch/arm64/include/asm/memory.h: MIN_THREAD_SHIFT 14, +1 for generic/sw-tags KASAN
        ((K4, "CONFIG_PAGE_SHIFT=12", VMAP), 16384),
        ((K4, "CONFIG_PAGE_SHIFT=12", VMAP, GENERIC), 32768),
        ((K4, "CONFIG_ARM64_PAGE_SHIFT=12", VMAP, SW_TAGS), 32768),
        ((K4, "CONFIG_PAGE_SHIFT=12", VMAP, HW_TAGS), 16384),  # hardware tags: no doubling
        ((K4, "CONFIG_ARM64_PAGE_SHIFT=12", GENERIC), 32768),  # no VMAP_STACK: the same
        ((K16, "CONFIG_PAGE_SHIFT=14", VMAP), 16384),
        ((K16, "CONFIG_PAGE_SHIFT=14", VMAP, GENERIC), 32768),
        # a vmapped stack is whole pages: THREAD_SHIFT is PAGE_SHIFT when that is larger
        ((K64, "CONFIG_PAGE_SHIFT=16", VMAP), 65536),
        ((K64, "CONFIG_ARM64_PAGE_SHIFT=16", VMAP, GENERIC), 65536),
        ((K64, "CONFIG_ARM64_PAGE_SHIFT=16"), 16384),  # 5.10 and 6.1 without VMAP_STACK
        ((K64, "CONFIG_ARM64_PAGE_SHIFT=16", SW_TAGS), 32768),
        ((K64, VMAP), 65536),  # the page size choice alone
        ((K16, VMAP, GENERIC), 32768),
        ((VMAP,), None),  # no page size at all: unknown, not guessed
    ],
)
def test_arm64_thread_size_follows_memory_h(tmp_path, lines, expected):
    path = config(tmp_path, "config", arm64_config(*lines))
    assert thread_size([path], machine="aarch64") == expected
    assert thread_size([path], machine="arm64") == expected
    assert smaps.arm64_thread_size(path.read_text()) == expected


def test_arm64_thread_size_takes_the_first_arm64_config(tmp_path):
    x86 = config(tmp_path, "x86", "CONFIG_X86_64=y\nCONFIG_KASAN=y\n")
    big = config(tmp_path, "config.gz", arm64_config(K64, "CONFIG_PAGE_SHIFT=16", VMAP))
    small = config(tmp_path, "small", arm64_config(K4, "CONFIG_PAGE_SHIFT=12", VMAP))
    assert thread_size([tmp_path / "absent", x86, big, small], machine="aarch64") == 65536
    assert thread_size([x86, small, big], machine="aarch64") == 16384
    assert thread_size([big, small], machine="x86_64") is None  # another machine's configs
    assert thread_size([small], machine="riscv64") is None


def test_a_live_process_has_every_kind():
    measured = smaps_measure(os.getpid())
    assert list(measured) == ALL_KINDS
    assert measured[Kind.STACK] > 0 and measured[Kind.HEAP] > 0
    assert measured[Kind.KERNEL_MAPPINGS] > 0
    assert measured[Kind.TOTAL] > measured[Kind.STACK] + measured[Kind.HEAP]
    assert measured[Kind.KERNEL_STACK] == thread_size()


def test_a_zombie_has_nothing_left():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while smaps.task_state(child.pid) != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert set(smaps_measure(child.pid).values()) == {0}
    finally:
        child.wait()


def test_a_kernel_thread_has_a_kernel_stack_and_no_user_memory():
    pid = a_kernel_thread()
    if pid is None:
        pytest.skip("no kernel thread visible in /proc")
    measured = smaps_measure(pid)
    assert measured.pop(Kind.KERNEL_STACK) == thread_size()
    assert set(measured.values()) == {0}


def test_no_such_process():
    with pytest.raises(ProcessLookupError, match="no process with pid 2147483000"):
        smaps_measure(2147483000)
    with pytest.raises(ProcessLookupError):
        smaps.smaps_memuse(2147483000, "kernel_stack")


def test_another_users_process_is_permission_error():
    """A plain user (as CI runs) is refused pid 1, root's; root becomes nobody in a child to be
    refused this process, root's, as root itself may read every process."""
    if os.geteuid() != 0:
        if os.stat("/proc/1").st_uid == os.geteuid():
            pytest.skip("pid 1 belongs to this user here (a container started as it)")
        with pytest.raises(PermissionError) as refused:
            smaps_measure(1)
        assert str(refused.value) == "[Errno 13] not permitted to read the memory of pid 1"
        return
    target = os.getpid()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # no exec: the interpreter under /root may be out of nobody's reach
        answer = "no error"
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            smaps_measure(target)
        except PermissionError as err:
            answer = f"denied: {err.strerror}"
        except BaseException as err:
            answer = repr(err)
        finally:
            os.write(write_end, answer.encode())
            os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 4096).decode()
    os.close(read_end)
    os.waitpid(child, 0)
    assert answer == f"denied: not permitted to read the memory of pid {target}"
