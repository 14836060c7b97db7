"""An arm64 guest for real: its Debian root filesystem built rootless, an arm64 memuse kernel
booted on it under QEMU's TCG, commands run in it as root.

The kernel is a finished arm64 build: $MEMUSE_KIT_ARM64_BUILD (a build directory, its Image
in obj/arch/arm64/boot), else the newest in the kit's cache; without one the boots skip.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

from memuse_kit.building.builddir import BuildDir
from memuse_kit.core import arch
from memuse_kit.core.cache import builds_dir
from memuse_kit.trying import foreign_vm, guest_binaries, rootfs
from memuse_kit.trying.vm import VmOptions, VmResult
from tests.guest_support import CALLERS_SOURCE

pytestmark = [pytest.mark.slow, pytest.mark.vm]

REPO = Path(__file__).resolve().parent.parent
ARM64 = arch.ARM64
# the user's own builds, read before the session switches to a cache of its own
BUILDS = builds_dir()


def arm64_build() -> Optional[BuildDir]:
    given = os.environ.get("MEMUSE_KIT_ARM64_BUILD")
    if given:
        return BuildDir(Path(given))
    images = sorted(BUILDS.glob(f"*/obj/{ARM64.image_path}"), key=lambda p: p.stat().st_mtime)
    return BuildDir(images[-1].parents[4]) if images else None


@pytest.fixture(scope="session")
def guest_cache(tmp_path_factory) -> Iterator[Path]:
    """A cache of this session's own for the root filesystem and the programs."""
    cache = tmp_path_factory.mktemp("arm64-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEMUSE_KIT_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def built_rootfs(guest_cache) -> rootfs.Rootfs:
    started = time.monotonic()
    tree = rootfs.ensure_rootfs(rootfs.recipe_for(ARM64), say=print)
    tree.info["test_seconds"] = time.monotonic() - started
    return tree


@pytest.fixture(scope="session")
def kernel() -> BuildDir:
    build = arm64_build()
    if build is None or not (build.obj / ARM64.image_path).is_file():
        pytest.skip("no arm64 kernel Image: set MEMUSE_KIT_ARM64_BUILD to a build directory")
    return build


def boot(kernel: BuildDir, tree: rootfs.Rootfs, command: List[str], tmp_path: Path) -> VmResult:
    """The whole of `invoke vm --arch arm64` (tree: built already, reused)."""
    options = VmOptions(build=kernel, command=command, cwd=REPO, timeout=600)
    return foreign_vm.run_foreign_vm(options, ARM64, CALLERS_SOURCE, log_path=tmp_path / "vm.log")


def test_the_rootfs_is_reused_from_the_cache(built_rootfs, measured):
    megabytes = built_rootfs.info["bytes"] / 1e6
    seconds = built_rootfs.info["test_seconds"]
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
