"""Distributed builds with real engines and real daemons, on this machine only (127.0.0.1).

Real kernel sources: a real copy of the parts of Debian's 5.10 tree a build of kernel/ reads
(in $MEMUSE_KIT_TEST_SCRATCH or pytest's tmp; gcc-11, as memuse-kit picks for 5.10),
`make O=... defconfig prepare` once, then one subdirectory compiled locally for reference
and again through distcc or icecream, with the make arguments and environment memuse-kit's
build gives make (building/distributed.py). The whole kernel is never built: the build's
own wiring (-j, CCACHE_PREFIX, the record) is in tests/test_distributed.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import pytest

from memuse_kit.building import compiler, distributed, preflight
from memuse_kit.building.compiler import Compiler
from memuse_kit.core.errors import KitError
from memuse_kit.trees.kernel_version import read_tree_version
from tests.dist_support import (
    Distccd,
    IcecreamFarm,
    compiler_named,
    listening_addresses,
    partial_copy,
    user_namespaces_work,
)
from tests.kernel_trees import cached_tree

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() == 0, reason="kernel builds refuse root; CI runs as a user"),
    pytest.mark.skipif(
        not (shutil.which("distccd") and shutil.which("iceccd") and shutil.which("ccache")),
        reason="needs distcc, icecc and ccache (scripts/setup installs them)",
    ),
]

SOURCE = "debian:5.10"
SUBDIR = "kernel/irq"  # 17 objects with defconfig: a few seconds on two cores


@dataclass
class KernelParts:
    tree: Path
    obj: Path
    cc: Compiler  # with ccache, as memuse-kit builds when it is installed
    env: Dict[str, str]  # the reference build's own ccache
    reference: Dict[str, bytes]  # SUBDIR's objects compiled here, by name

    def clean(self) -> None:
        for path in (self.obj / SUBDIR).glob("*.o"):
            path.unlink()

    def objects(self) -> Dict[str, Path]:
        return {path.name: path for path in sorted((self.obj / SUBDIR).glob("*.o"))}

    def sources(self) -> List[str]:
        """The C files kbuild compiled for SUBDIR (from the local reference build)."""
        return sorted(name[: -len(".o")] + ".c" for name in self.reference)

    def make(self, cc: Compiler, env: Dict[str, str], jobs: int = 2) -> subprocess.Popen:
        """make SUBDIR/ as the build runs make: O=, -j, CC/HOSTCC and the environment."""
        return subprocess.Popen(
            ["make", f"O={self.obj}", f"-j{jobs}", *cc.make_args(), f"{SUBDIR}/"],
            cwd=self.tree,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def build(self, cc: Compiler, env: Dict[str, str]) -> subprocess.CompletedProcess:
        process = self.make(cc, env)
        out, _ = process.communicate()
        return subprocess.CompletedProcess(process.args, process.returncode, out, "")

    def differing(self) -> List[str]:
        """Objects not byte-identical to the local build's (a missing one counts)."""
        built = self.objects()
        return [name for name in self.reference if name not in built] + [
            name for name, path in built.items() if path.read_bytes() != self.reference[name]
        ]


SCRATCH_ENV = "MEMUSE_KIT_TEST_SCRATCH"  # where the copy goes (default: pytest's tmp)


@pytest.fixture(scope="module")
def kernel(tmp_path_factory) -> Iterator[KernelParts]:
    """defconfig and prepare with the CC and HOSTCC the distributed builds use, so that
    they find the host programs (objtool among them) built and recompile only SUBDIR."""
    given = os.environ.get(SCRATCH_ENV)
    scratch = Path(given) / "distributed-5.10" if given else tmp_path_factory.mktemp("dist")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        tree = partial_copy(cached_tree(SOURCE), scratch / "tree")
        obj = scratch / "obj"
        cc = compiler.pick(read_tree_version(tree), use_ccache=True)
        env = {**os.environ, "CCACHE_DIR": str(scratch / "ccache")}
        make = ["make", f"O={obj}", *cc.make_args()]
        for target in (["defconfig"], ["-j2", "prepare"], ["-j2", f"{SUBDIR}/"]):
            done = subprocess.run([*make, *target], cwd=tree, env=env, capture_output=True)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        reference = {path.name: path.read_bytes() for path in (obj / SUBDIR).glob("*.o")}
        assert len(reference) >= 10
        yield KernelParts(tree, obj, cc, {"CCACHE_DIR": env["CCACHE_DIR"]}, reference)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def with_ccache(kernel: KernelParts, farm: distributed.Farm, work: Path) -> tuple:
    """The compiler and environment memuse-kit gives make for farm; ccache in front with
    a cache of its own (cold, so every object goes to the engine); distcc's state in work."""
    cc = distributed.with_engine(kernel.cc, farm)
    prefix = work / "ccache-prefix"
    prefix.write_text(distributed.PREFIX_SCRIPT)
    prefix.chmod(0o755)
    env = distributed.environment(cc, farm, prefix)
    (work / "distcc").mkdir()
    env.update(CCACHE_DIR=str(work / "ccache"), DISTCC_DIR=str(work / "distcc"))
    return cc, env


def test_distcc_compiles_every_object_on_the_helper_as_this_machine_would(kernel, tmp_path):
    with Distccd(tmp_path) as helper:
        farm = distributed.parse_distcc_hosts(helper.host)
        cc, env = with_ccache(kernel, farm, tmp_path)
        preflight.check_helpers(farm, cc)  # the probe compiled on the helper, same compiler
        probes = len(helper.jobs())
        kernel.clean()
        result = kernel.build(cc, {**env, "DISTCC_FALLBACK": "0"})
        assert result.returncode == 0, result.stdout[-3000:]
        assert sorted(helper.jobs()[probes:]) == kernel.sources()
        assert kernel.differing() == []

        # ccache in front: the same objects again come from the cache, the helper is not asked
        kernel.clean()
        again = kernel.build(cc, {**env, "DISTCC_FALLBACK": "0"})
        assert again.returncode == 0 and len(helper.jobs()) == probes + len(kernel.sources())
        assert kernel.differing() == []

        # host programs stay here: modpost's objects are compiled with HOSTCC
        for host_object in (kernel.obj / "scripts/mod").glob("*.o"):
            host_object.unlink()
        hosted = subprocess.run(
            ["make", f"O={kernel.obj}", "-j2", *cc.make_args(), "prepare"],
            cwd=kernel.tree,
            env={**os.environ, **env, "DISTCC_FALLBACK": "0"},
            capture_output=True,
            text=True,
        )
        assert hosted.returncode == 0, hosted.stdout[-2000:]
        assert "HOSTCC  scripts/mod/modpost.o" in hosted.stdout
        assert not [job for job in helper.jobs() if job.startswith(("modpost", "file2alias"))]


@pytest.mark.skipif(not user_namespaces_work(), reason="needs user namespaces (unshare)")
def test_icecream_compiles_every_object_on_the_helper_and_this_machine_takes_over_when_it_dies(
    kernel, tmp_path, monkeypatch
):
    """One farm for both halves: the compiler environment is packed and sent once."""
    with IcecreamFarm(tmp_path) as ice:
        for name, value in ice.client_environment().items():
            monkeypatch.setenv(name, value)
        # nothing of the farm can be reached from another machine
        for port in (ice.scheduler_port, ice.scheduler_port + 1, ice.helper_port):
            assert listening_addresses(port) == {"127.0.0.1"}
        farm = distributed.icecream_farm(distributed.scheduler_address(), local_slots=2)
        assert [(h.name, h.slots) for h in farm.helpers] == [(ice.HELPER, 2)]
        assert farm.jobs() == 4
        cc, env = with_ccache(kernel, farm, tmp_path)
        preflight.check_helpers(farm, cc)  # icecream sent our compiler along
        probes = len(ice.jobs_on(ice.HELPER))
        kernel.clean()
        result = kernel.build(cc, env)
        assert result.returncode == 0, result.stdout[-3000:]
        assert sorted(ice.jobs_on(ice.HELPER)[probes:]) == kernel.sources(), ice.logs_tail()
        # icecream cannot be told not to fall back; its log says whether it did
        assert ice.compiled_here() == []
        # and kbuild's compiler tests of /dev/null never reached icecc (the prefix script)
        assert "preparing /dev/null" not in ice.client_log()
        assert ice.client_log().count("Have to use host 127.0.0.1") >= len(kernel.sources())
        assert kernel.differing() == []

        # the helper dies after its third object of a new build (a cold ccache again):
        # icecream always falls back, so what it had not finished, and what came after,
        # is compiled here
        dying = tmp_path / "dying"
        dying.mkdir()
        cc, env = with_ccache(kernel, farm, dying)
        before = len(ice.jobs_on(ice.HELPER))
        kernel.clean()
        process = kernel.make(cc, env)
        kill_after(lambda: len(ice.jobs_on(ice.HELPER)) - before, ice.kill_helper, process, 3)
        out, _ = process.communicate()
        given, here = ice.jobs_on(ice.HELPER)[before:], ice.compiled_here()
    assert process.returncode == 0, out[-3000:]
    assert 3 <= len(given) < len(kernel.sources())
    assert here and set(here) | set(given) == set(kernel.sources()), (given, here)
    assert kernel.differing() == []


def kill_after(
    jobs: Callable[[], int], kill: Callable[[], None], process: subprocess.Popen, count: int
) -> None:
    """kill() the helper once jobs() says it has `count` objects of the running build."""
    deadline = time.monotonic() + 120
    while jobs() < count and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the build ended before the helper could be killed"
    kill()


def test_a_helper_that_dies_mid_build_leaves_the_objects_to_this_machine(kernel, tmp_path):
    """distcc's default, and memuse-kit's: each job the helper did not do is compiled here."""
    with Distccd(tmp_path) as helper:
        farm = distributed.parse_distcc_hosts(helper.host)
        cc, env = with_ccache(kernel, farm, tmp_path)
        kernel.clean()
        process = kernel.make(cc, env)
        kill_after(lambda: len(helper.jobs()), helper.kill, process, 3)
        out, _ = process.communicate()
    assert process.returncode == 0, out[-3000:]
    assert 3 <= len(helper.jobs()) < len(kernel.sources())
    fell_back = [line for line in out.splitlines() if distributed.fell_back(line)]
    assert fell_back, out[-3000:]  # what the build counts and records (fell_back)
    assert kernel.differing() == []


def test_a_helper_that_dies_without_fallback_fails_the_build_and_breaks_no_object(kernel, tmp_path):
    with Distccd(tmp_path) as helper:
        farm = distributed.parse_distcc_hosts(helper.host)
        cc, env = with_ccache(kernel, farm, tmp_path)
        kernel.clean()
        process = kernel.make(cc, {**env, "DISTCC_FALLBACK": "0"})
        kill_after(lambda: len(helper.jobs()), helper.kill, process, 3)
        out, _ = process.communicate()
    assert process.returncode != 0
    assert "failed to distribute and fallbacks are disabled" in out
    built = kernel.objects()
    assert 3 <= len(built) < len(kernel.reference)
    assert [
        name for name, path in built.items() if path.read_bytes() != kernel.reference[name]
    ] == []
    # the next build (here, without the helper) finishes the job: nothing half-made is kept
    finish = kernel.build(kernel.cc, kernel.env)
    assert finish.returncode == 0 and kernel.differing() == []


def test_a_helper_whose_gcc_11_is_another_gcc_is_caught_by_preflight(tmp_path):
    fake = compiler_named(tmp_path / "bin", "gcc-11", "gcc-12")
    gcc11 = Compiler("gcc-11", compiler.version_of("gcc-11"), None)
    with Distccd(tmp_path, path_first=fake) as wrong, Distccd(tmp_path) as right:
        farm = distributed.parse_distcc_hosts(f"{wrong.host} {right.host}")
        with pytest.raises(KitError) as error:
            preflight.check_helpers(farm, gcc11)
    message = str(error.value)
    assert message.startswith(f"distcc helper 127.0.0.1:{wrong.port} compiles with 'GCC: (")
    assert "12." in message.split("this tree needs")[0]
    assert "this tree needs gcc-11 as here, 'GCC: (" in message and "11." in message
    assert "\n" not in message  # one helper wrong, one line
