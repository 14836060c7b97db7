"""A 32-bit caller: memuse through the i386 entry, as an i386 program would call it.

A 64-bit process can make a compat system call with `int $0x80` (tests/guest/callers.c), so
no 32-bit libraries are needed. The i386 number is the one the patch wrote into the tree's
`arch/x86/entry/syscalls/syscall_32.tbl`, read from the tree the running kernel was built
from (its build record names it). A 32-bit long holds at most 2 GiB - 1: a larger result
must come back as -EOVERFLOW, as stat does, never truncated; everything else as the 64-bit
call gives it.

x86_64 only: int $0x80 and the i386 table are x86's; elsewhere every test here is skipped.
"""

from __future__ import annotations

import errno
import platform
import subprocess
from pathlib import Path
from typing import Dict, Iterator

import pytest

from memuse_client import StoppedScenario, stopped_scenario
from memuse_kit.patching.syscall_tables import I386_TABLE, entries_named
from tests.guest_support import (
    ALL_KINDS,
    MIB,
    REPORT,
    call,
    callers_binary,
    expected_thread_size,
    running_builds,
    smaps_view,
)

LONG_32_MAX = 2**31 - 1
MACHINE = platform.machine()
pytestmark = pytest.mark.skipif(
    MACHINE != "x86_64",
    reason=f"x86_64 only: a 32-bit caller enters through int $0x80 and the i386 table, "
    f"which {MACHINE} does not have (arm64's would need AArch32 code and CONFIG_COMPAT)",
)


@pytest.fixture(scope="module")
def i386_nr(nr: int) -> int:
    """memuse's number in the i386 table of the running kernel's tree."""
    numbers = set()
    for record in running_builds(nr):
        table = (Path(record.tree) / I386_TABLE).read_text()
        numbers |= {entry.number for entry in entries_named(table, "memuse")}
    assert len(numbers) == 1, f"memuse in {I386_TABLE}: {sorted(numbers)}"
    assert " __ia32_sys_memuse\n" in Path("/proc/kallsyms").read_text()
    return numbers.pop()


@pytest.fixture(scope="module")
def beyond_32_bits() -> Iterator[StoppedScenario]:
    """A stopped process with 2.5 GiB resident: one 16 MiB memfd mapped 160 times, each
    mapping fully present (about 20 s under TCG and KASAN, the page tables' cost)."""
    with stopped_scenario("memfd-many", 16, 160) as pid:
        yield pid


def i386_memuse(i386_nr: int, pid: int, *kinds: int) -> Dict[int, int]:
    """memuse(pid, kind) through int $0x80: what the 32-bit caller's long holds, per kind."""
    done = subprocess.run(
        [str(callers_binary()), "i386", str(i386_nr), str(pid), *map(str, kinds)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    pairs = (line.split() for line in done.stdout.splitlines())
    return {int(kind): int(result) for kind, result in pairs}


def test_a_32_bit_caller_gets_eoverflow_for_more_than_its_long_holds(nr, i386_nr, beyond_32_bits):
    pid = beyond_32_bits
    view = smaps_view(pid)
    wide = {kind: call(nr, pid, kind) for kind in ALL_KINDS}
    narrow = i386_memuse(i386_nr, pid, *ALL_KINDS)
    REPORT.append(
        f"32-bit caller (int $0x80, i386 nr {i386_nr}): a process with {view.expected(5)} "
        f"bytes resident: total {narrow[5]} (-EOVERFLOW is {-errno.EOVERFLOW}); the 64-bit "
        f"call: {wide[5][0]}"
    )

    mappings = [vma for vma in view.vmas if vma.name.startswith("/memfd:memuse-scenario")]
    assert len(mappings) == pid.number("count") == 160
    assert all(vma.fields["Rss"] == 16 * MIB for vma in mappings)
    assert view.expected(5) > 160 * 16 * MIB > LONG_32_MAX
    assert wide[5] == (view.expected(5), 0)  # the 64-bit caller gets it whole, as smaps
    assert narrow[5] == -errno.EOVERFLOW
    # what fits is answered as to the 64-bit caller
    for kind in (1, 3, 4):
        assert narrow[kind] == wide[kind][0] == view.expected(kind), kind
    assert narrow[2] == wide[2][0] == expected_thread_size()


def test_a_32_bit_caller_gets_what_fits_and_the_same_errors(nr, i386_nr):
    with stopped_scenario("heap-active", 20000) as pid:
        view = smaps_view(pid)
        narrow = i386_memuse(i386_nr, pid, *ALL_KINDS, 0, 6)
        wide = {kind: call(nr, pid, kind) for kind in ALL_KINDS}
    assert {kind: narrow[kind] for kind in ALL_KINDS} == {
        kind: value for kind, (value, _) in wide.items()
    }
    assert narrow[5] == view.expected(5) and narrow[3] == view.expected(3) > 0
    assert (narrow[0], narrow[6]) == (-errno.EINVAL, -errno.EINVAL)


def test_a_32_bit_caller_gets_esrch_for_no_process(i386_nr, reaped_pid):
    assert i386_memuse(i386_nr, reaped_pid, *ALL_KINDS) == {
        kind: -errno.ESRCH for kind in ALL_KINDS
    }
