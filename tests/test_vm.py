"""Real kernels, really booted: the vm config of an old and a new Debian kernel is built once
(incrementally afterwards), its packages checked, and tests/guest run inside it under QEMU."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

from memuse_kit import artifacts
from memuse_kit.build import BuildOptions, build
from memuse_kit.builddir import BuildDir
from memuse_kit.module import build_module
from memuse_kit.pipeline import ensure_patched
from memuse_kit.vm import VmOptions, VmResult, run_vm
from tests.kernel_trees import cached_tree

pytestmark = [
    pytest.mark.slow,
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() == 0, reason="kernel builds refuse root; CI runs as a user"),
]

REPO = Path(__file__).resolve().parent.parent
# the new kernel first: its build is the one CI checks the packages of
KERNELS = ("debian:7.2", "debian:5.10")


@pytest.fixture(scope="session", params=KERNELS)
def vm_kernel(request) -> Tuple[str, Path, BuildDir]:
    tree = cached_tree(request.param)
    ensure_patched(tree)
    result = build(BuildOptions(tree=tree, config="vm", source={"spec": request.param}))
    return request.param, tree, result.build_dir


def boot(bd: BuildDir, command: List[str], timeout: float = 1500) -> VmResult:
    result = run_vm(VmOptions(build=bd, command=command, timeout=timeout, cwd=REPO))
    print("\n".join(result.output))
    return result


def test_packages_hold_the_kernel_and_its_memuse_symbol(vm_kernel):
    _, _, bd = vm_kernel
    release = bd.kernel_release()
    assert release and release.endswith("-memuse")
    names = [p.name for p in artifacts.kept_packages(bd)]
    assert sorted(n.split("_")[0] for n in names) == [
        f"linux-headers-{release}",
        f"linux-image-{release}",
    ]
    assert all(artifacts.verify_sums(bd).values())
    image = artifacts.image_package(bd, release)
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(image)], capture_output=True, text=True, check=True
    )
    assert f"./boot/vmlinuz-{release}" in listing.stdout
    system_map = (bd.obj / "System.map").read_text()
    assert " T __x64_sys_memuse\n" in system_map
    meta = bd.read_metadata()
    assert meta["status"] == "success" and meta["kernel_release"] == release
    assert meta["syscall_nr"] in (441, 472)


def test_packages_install_into_a_throwaway_root(vm_kernel, tmp_path):
    spec, _, bd = vm_kernel
    if spec != "debian:7.2":
        pytest.skip("5.10's maintainer scripts ignore DPKG_ROOT and would run the host's hooks")
    root = tmp_path / "root"
    for sub in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "etc", "boot", "lib/modules"):
        (root / sub).mkdir(parents=True)
    for name in ("status", "available"):
        (root / "var/lib/dpkg" / name).touch()
    packages = [str(p) for p in artifacts.kept_packages(bd)]
    dpkg = ["fakeroot", "dpkg", f"--root={root}", "--force-not-root", "--log=/dev/null"]
    subprocess.run([*dpkg, "--force-script-chrootless", "-i", *packages], check=True)
    release = bd.kernel_release()
    assert (root / f"boot/vmlinuz-{release}").is_file()
    assert (root / f"lib/modules/{release}").is_dir()
    status = subprocess.run([*dpkg, "-l"], capture_output=True, text=True, check=True).stdout
    assert f"ii  linux-image-{release}" in status


def test_guest_suite_passes_in_the_vm(vm_kernel, measured):
    spec, _, bd = vm_kernel
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/guest", "-q", "-rA"]
    command += ["--color=no"]
    result = boot(bd, command)
    measured += [f"tests/guest on {spec}:", *guest_report(result.output)]
    assert result.status == 0, "\n".join(result.output[-60:])
    assert any(" passed" in line for line in result.output)
    assert not any(line.startswith(("FAILED", "ERROR", "SKIPPED")) for line in result.output)


def guest_report(output: List[str]) -> List[str]:
    """The tables tests/guest prints in its summary: between its heading and the next one."""
    start = next((i for i, line in enumerate(output) if "memuse measured" in line), None)
    if start is None:
        return []
    end = next((i for i in range(start + 1, len(output)) if output[i].startswith("====")), None)
    return output[start + 1 : end]


def test_experiment_and_hello_module_in_the_vm(vm_kernel, measured):
    spec, tree, bd = vm_kernel
    module = build_module("hello", tree, bd)
    script = (
        "memuse experiment --check && "
        f"insmod {shlex.quote(str(module))} && rmmod hello && "
        # without timestamps, so the lines count as the command's output, not console noise
        "dmesg --notime | grep -E 'Hello, world!|Goodbye, world\\.'"
    )
    result = boot(bd, ["sh", "-c", script])
    assert result.status == 0, "\n".join(result.output[-40:])
    measured += [f"memuse experiment on {spec}:", *result.output]
    text = "\n".join(result.output)
    assert "heap active" in text.lower()
    assert "Hello, world!" in result.output and "Goodbye, world." in result.output


def test_invoke_vm_returns_the_command_status(vm_kernel):
    spec, tree, _ = vm_kernel
    if spec != "debian:7.2":
        pytest.skip("one kernel is enough for the CLI plumbing")
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "vm", "--tree", str(tree), "--config", "vm",
         "--", "sh", "-c", "echo from-the-guest; exit 3"],
        cwd=REPO, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr[-2000:]
    assert "from-the-guest" in done.stdout
