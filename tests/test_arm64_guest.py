"""An arm64 guest for real: its Debian root filesystem built rootless, the 7.2 arm64 memuse
kernel (cross-built by `invoke build --arch arm64 --config vm`, a no-op on a warm cache)
booted on it under QEMU's TCG, commands run in it as root, and the proof of memuse there:
the report's experiment, the agreement, error and permission tests, fdcount, a short fuzz.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import List

import pytest

from memuse_kit.building.build import BuildOptions, build
from memuse_kit.building.builddir import BuildDir
from memuse_kit.building.pipeline import ensure_patched
from memuse_kit.core import arch
from memuse_kit.trying import foreign_vm, guest_binaries, rootfs
from memuse_kit.trying.module import build_module
from memuse_kit.trying.vm import VmOptions, VmResult
from tests.guest_support import CALLERS_SOURCE, WITHOUT_WATCHERS_ENV, is_report
from tests.kernel_trees import TESTED_SYSCALLS, cached_tree

pytestmark = [pytest.mark.slow, pytest.mark.vm]

REPO = Path(__file__).resolve().parent.parent
ARM64 = arch.ARM64
PROOF_KERNEL = "debian:7.2"


@pytest.fixture(scope="session")
def built_rootfs() -> rootfs.Rootfs:
    """The kit's cached arm64 root (built on first use: mmdebstrap, about 10 s here)."""
    return rootfs.ensure_rootfs(rootfs.recipe_for(ARM64), say=print)


@pytest.fixture(scope="session")
def kernel() -> BuildDir:
    """The 7.2 arm64 `vm` kernel, built as a user builds it (cached: nothing to do)."""
    tree = cached_tree(PROOF_KERNEL)
    ensure_patched(tree, syscalls=TESTED_SYSCALLS)
    options = BuildOptions(
        tree=tree, config="vm", arch=ARM64.name, packages=False, source={"spec": PROOF_KERNEL}
    )
    return build(options).build_dir


def boot(kernel: BuildDir, tree: rootfs.Rootfs, command: List[str], tmp_path: Path) -> VmResult:
    """The whole of `invoke vm --arch arm64` (tree: built already, reused)."""
    options = VmOptions(build=kernel, command=command, cwd=REPO, timeout=600)
    return foreign_vm.run_foreign_vm(options, ARM64, CALLERS_SOURCE, log_path=tmp_path / "vm.log")


def test_the_rootfs_is_reused_from_the_cache(built_rootfs, measured):
    megabytes = built_rootfs.info["bytes"] / 1e6
    seconds = sum(built_rootfs.info["durations"].values())
    measured.append(f"arm64 rootfs: built in {seconds:.1f} s, {megabytes:.0f} MB")
    again = rootfs.ensure_rootfs(rootfs.recipe_for(ARM64))
    assert again.home == built_rootfs.home and again.info["bytes"] == built_rootfs.info["bytes"]
    root = built_rootfs.root
    assert os.readlink(root / "bin") == "usr/bin" and (root / "usr/bin/python3").exists()
    assert not (root / "etc/ld.so.cache").exists()  # ld.so searches the multiarch dirs itself


def test_python_runs_as_aarch64_and_its_status_comes_back(kernel, built_rootfs, tmp_path, measured):
    started = time.monotonic()
    result = boot(
        kernel,
        built_rootfs,
        ["python3", "-c", "import platform; print(platform.machine())"],
        tmp_path,
    )
    seconds = time.monotonic() - started
    measured.append(f"arm64 TCG boot to python3's answer: {seconds:.1f} s")
    assert result.status == 0 and result.output == ["aarch64"]
    assert result.kernel_log and "reboot: Power down" in result.kernel_log[-1]


def test_a_failing_command_reports_its_status(kernel, built_rootfs, tmp_path):
    result = boot(kernel, built_rootfs, ["sh", "-c", "echo on arm64; exit 3"], tmp_path)
    assert result.status == 3 and result.output == ["on arm64"]


SCENARIO = """
import os
from memuse_client.scenarios import scenarios_binary, stopped_scenario
print("binary", scenarios_binary())
with stopped_scenario("do-nothing") as pid:
    state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    print("state", state, "uid", os.stat(f"/proc/{pid}").st_uid)
"""


def test_the_static_scenario_program_runs_in_the_guest(kernel, built_rootfs, tmp_path):
    result = boot(kernel, built_rootfs, ["python3", "-c", SCENARIO], tmp_path)
    expected = guest_binaries.guest_scenarios(ARM64)
    assert result.status == 0, result.output
    assert result.output == [f"binary {expected}", "state T uid 0"]


def test_nobody_reads_the_shared_root_and_the_repository(kernel, built_rootfs, tmp_path):
    """Every file is the host user's over 9p: others may read what its modes let them."""
    check = (
        "import os; os.setgroups([]); os.setgid(65534); os.setuid(65534); "
        "import pwd, memuse_client; print(pwd.getpwuid(os.getuid()).pw_name, "
        "open('/etc/passwd').readline().split(':')[0])"
    )
    result = boot(kernel, built_rootfs, ["python3", "-c", check], tmp_path)
    assert result.status == 0, result.output
    assert result.output == ["nobody root"]


def test_the_static_callers_program_runs_in_the_guest(kernel, built_rootfs, tmp_path):
    """callers shared-mm by both names the guest is given (whether memuse is 472 here or
    not, its JSON comes back: the program runs)."""
    command = '"$MEMUSE_CALLERS_BIN" shared-mm 472 && "$MEMUSE_GUEST_CALLERS" shared-mm 472'
    result = boot(kernel, built_rootfs, ["sh", "-c", command], tmp_path)
    assert result.status == 0, result.output
    answers = [json.loads(line) for line in result.output]
    assert len(answers) == 2 and all(answer["dumpable"] == 0 for answer in answers)
    assert answers[0]["forked child"]["smaps"] == 0


# tests/guest on arm64: every kind of test but the x86-only compat ones (they skip with
# their reason), and the fuzz at 5,000 calls (25,000 on the x86_64 KASAN guests)
GUEST_TESTS = [
    "tests/guest/test_guest_agreement.py",
    "tests/guest/test_guest_errors.py",
    "tests/guest/test_guest_permissions.py",
    "tests/guest/test_guest_fdcount.py",
    "tests/guest/test_guest_stress.py",
    "tests/guest/test_guest_compat.py",
]
FUZZ_CALLS = 5000


def test_memuse_is_proven_on_the_arm64_kernel(kernel, built_rootfs, tmp_path, measured):
    """One boot: the report's experiment with smaps equal, then tests/guest's agreement
    (kind 2 = arm64's THREAD_SIZE, 16 KiB), error, permission and fdcount tests and a short
    fuzz, the kernel log watched throughout (no KASAN or lockdep: the fast kernel)."""
    environment = [f"{WITHOUT_WATCHERS_ENV}=1", f"MEMUSE_STRESS_CALLS={FUZZ_CALLS}"]
    suite = ["env", *environment, "python3", "-m", "pytest", "-p", "no:cacheprovider"]
    suite += ["-q", "-rs", "--color=no", *GUEST_TESTS]
    script = (
        "memuse experiment --check && echo experiment status 0; "
        f"{' '.join(suite)}; echo suite status $?"
    )
    started = time.monotonic()
    result = boot(kernel, built_rootfs, ["sh", "-c", script], tmp_path)
    seconds = time.monotonic() - started
    print("\n".join(result.output))
    assert result.status == 0, "\n".join(result.output[-60:])
    assert "experiment status 0" in result.output, "\n".join(result.output[-80:])
    assert "suite status 0" in result.output, "\n".join(result.output[-80:])
    skips = [line for line in result.output if line.startswith("SKIPPED")]
    assert skips and all("test_guest_compat.py" in line for line in skips), skips
    stacks = [line for line in result.output if "kstack" in line]
    assert stacks and all("kstack 16384" in line for line in stacks), stacks
    reports = [line for line in result.kernel_log if is_report(line)]
    assert not reports, "\n".join(reports[:40])
    measured.append(f"arm64 proof on {PROOF_KERNEL} (vm config), one boot: {seconds:.0f} s")
    measured += result.output[: result.output.index("experiment status 0")]


def test_the_hello_module_is_cross_built_and_loads_in_the_arm64_guest(
    kernel, built_rootfs, tmp_path
):
    """`invoke module --arch arm64`: the report's Part 1 module, built against the arm64
    build with the cross compiler, loaded and unloaded in the guest (busybox's insmod)."""
    module = build_module("hello", cached_tree(PROOF_KERNEL), kernel)
    assert module.read_bytes()[18:20] == (183).to_bytes(2, "little")  # EM_AARCH64
    script = (
        f"busybox insmod {module} && busybox rmmod hello && "
        "busybox dmesg | grep -o -E 'Hello, world!|Goodbye, world.'"
    )
    result = boot(kernel, built_rootfs, ["sh", "-c", script], tmp_path)
    assert result.status == 0, result.output
    assert result.output == ["Hello, world!", "Goodbye, world."]
