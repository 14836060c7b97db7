"""--distcc and --icecream without helpers: host lists, -j, command lines, preflight lines.

The real engines and daemons are in tests/test_distributed_daemons.py (slow tier).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from typing import Iterator, List

import pytest

from memuse_kit.building import distributed, preflight
from memuse_kit.building.build import BuildOptions, build
from memuse_kit.building.builddir import BuildDir
from memuse_kit.building.compiler import Compiler
from memuse_kit.building.pipeline import check_engine_options
from memuse_kit.core.errors import KitError
from tests.fakelinux import patched_fake_tree

GCC = Compiler("gcc-11", "11.3.0", "ccache")


def test_distcc_hosts_give_the_slots_and_make_s_jobs():
    farm = distributed.parse_distcc_hosts("box1/8 10.0.0.2:3633/4,lzo [::1]:4000 localhost/2")
    assert [h.address for h in farm.helpers] == [
        "box1:3632",
        "10.0.0.2:3633",
        "[::1]:4000",
        "localhost",
    ]
    assert [h.slots for h in farm.helpers] == [8, 4, 4, 2]  # distcc's 4 when none is given
    assert farm.jobs() == 18
    assert farm.environment() == {
        "DISTCC_HOSTS": "box1/8 10.0.0.2:3633/4,lzo [::1]:4000 localhost/2"
    }


@pytest.mark.parametrize(
    "hosts, message",
    [
        ("", "--distcc is empty"),
        ("   ", "--distcc is empty"),
        ("user@box/4", "ssh hosts"),
        ("box/4,cpp", "pump mode"),
        ("+zeroconf", "zeroconf"),
        ("box:0/4", "port must be 1-65535"),
        ("box:3632/0", "slots at least 1"),
        ("localhost/x", "localhost/N"),
    ],
)
def test_a_bad_distcc_host_list_is_one_line(hosts, message):
    with pytest.raises(KitError, match=message) as error:
        distributed.parse_distcc_hosts(hosts)
    assert "\n" not in str(error.value)


def test_distcc_and_icecream_together_are_refused_before_anything_is_fetched():
    with pytest.raises(KitError, match="give --distcc or --icecream, not both"):
        check_engine_options("box/4", True)
    with pytest.raises(KitError, match="ssh hosts"):
        check_engine_options("me@box", False)


def test_with_ccache_cc_and_hostcc_read_as_in_a_local_build():
    """So that kbuild recompiles nothing when a tree switches to distcc and back."""
    farm = distributed.parse_distcc_hosts("box/4")
    cc = distributed.with_engine(GCC, farm)
    assert cc.make_args() == GCC.make_args() == ("CC=ccache gcc-11", "HOSTCC=ccache gcc-11")
    env = distributed.environment(cc, farm, Path("/b/ccache-prefix"))
    assert env == {"DISTCC_HOSTS": "box/4", "CCACHE_PREFIX": "/b/ccache-prefix distcc"}


def test_without_ccache_the_engine_goes_in_front_of_cc_and_hostcc_stays_local():
    farm = distributed.parse_distcc_hosts("box/4")
    cc = distributed.with_engine(Compiler("gcc", "12.2.0", None), farm, Path("/b/p"))
    assert cc.make_args() == ("CC=/b/p distcc gcc", "HOSTCC=gcc")  # behind the prefix script
    assert distributed.environment(cc, farm, Path("/b/p")) == {"DISTCC_HOSTS": "box/4"}
    bare = distributed.with_engine(Compiler("gcc", "12.2.0", None), farm)
    assert bare.make_args() == ("CC=distcc gcc", "HOSTCC=gcc")


@pytest.fixture
def prefix_script(tmp_path) -> Iterator[tuple]:
    """memuse-kit's CCACHE_PREFIX with an engine that notes what it was given, then compiles."""
    script = tmp_path / "ccache-prefix"
    script.write_text(distributed.PREFIX_SCRIPT)
    script.chmod(0o755)
    calls = tmp_path / "engine-calls"
    engine = tmp_path / "engine"
    engine.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec "$@"\n')
    engine.chmod(0o755)
    yield script, engine, calls


@pytest.mark.skipif(not shutil.which("ccache"), reason="needs ccache")
def test_ccache_hands_kernel_objects_to_the_engine_and_keeps_host_programs(prefix_script, tmp_path):
    script, engine, calls = prefix_script
    (tmp_path / "x.c").write_text("int x(void) { return 1; }\n")
    env = {
        **os.environ,
        "CCACHE_DIR": str(tmp_path / "ccache"),
        "CCACHE_PREFIX": f"{script} {engine}",
    }
    kernel = ["ccache", "gcc", "-D__KERNEL__", "-c", "x.c", "-o", "kernel.o"]
    host = ["ccache", "gcc", "-O2", "-c", "x.c", "-o", "host.o"]
    for cmd in (kernel, host):
        subprocess.run(cmd, cwd=tmp_path, env=env, check=True)
    lines = calls.read_text().splitlines()
    assert len(lines) == 1 and "-D__KERNEL__" in lines[0] and "kernel.o" in lines[0]
    assert (tmp_path / "kernel.o").is_file() and (tmp_path / "host.o").is_file()
    subprocess.run([*kernel[:-1], "again.o"], cwd=tmp_path, env=env, check=True)
    assert len(calls.read_text().splitlines()) == 1  # ccache had it: the engine is not asked


@pytest.mark.skipif(not shutil.which("ccache"), reason="needs ccache")
def test_kbuild_s_compiler_tests_stay_here(prefix_script, tmp_path):
    """cc-option and the like compile /dev/null (as-instr: standard input) with the kernel's
    flags, -D__KERNEL__ among them: a few dozen each time make reads the Makefiles, run one
    by one. Sent to icecream they cost a round trip each, and a failing one, as most are
    meant to be, is compiled again here."""
    script, engine, calls = prefix_script
    env = {
        **os.environ,
        "CCACHE_DIR": str(tmp_path / "ccache"),
        "CCACHE_PREFIX": f"{script} {engine}",
    }
    flags = ["ccache", "gcc", "-Werror", "-D__KERNEL__"]
    cc_option = [*flags, "-fno-PIE", "-x", "c", "-c", "/dev/null", "-o", "cc-option.o"]
    subprocess.run(cc_option, cwd=tmp_path, env=env, check=True)
    failing = [*flags, "-fno-such-option", "-x", "c", "-c", "/dev/null", "-o", "failing.o"]
    assert subprocess.run(failing, cwd=tmp_path, env=env, capture_output=True).returncode != 0
    as_instr = [*flags, "-x", "assembler", "-c", "-", "-o", "as-instr.o"]
    subprocess.run(as_instr, cwd=tmp_path, env=env, input=b"nop\n", check=True)
    assert (tmp_path / "cc-option.o").is_file() and (tmp_path / "as-instr.o").is_file()
    assert not calls.exists(), calls.read_text()


@pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc")
def test_without_ccache_the_script_in_front_of_cc_keeps_compiler_tests_here(
    prefix_script, tmp_path
):
    script, engine, calls = prefix_script
    (tmp_path / "x.c").write_text("int x(void) { return 1; }\n")
    cc = [str(script), str(engine), "gcc", "-D__KERNEL__"]  # CC='PREFIX ENGINE gcc'
    subprocess.run([*cc, "-c", "x.c", "-o", "x.o"], cwd=tmp_path, check=True)
    subprocess.run([*cc, "-x", "c", "-c", "/dev/null", "-o", "t.o"], cwd=tmp_path, check=True)
    lines = calls.read_text().splitlines()
    assert lines == ["gcc -D__KERNEL__ -c x.c -o x.o"]
    assert (tmp_path / "x.o").is_file() and (tmp_path / "t.o").is_file()


@pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc")
def test_the_compiler_proper_s_identity_is_read_from_the_object(tmp_path):
    (tmp_path / "x.c").write_text("int x(void) { return 1; }\n")
    subprocess.run(["gcc", "-c", "x.c", "-o", "x.o"], cwd=tmp_path, check=True)
    version = subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True)
    comment = distributed.elf_comment((tmp_path / "x.o").read_bytes())
    assert comment.startswith("GCC: (") and comment.endswith(version.stdout.strip())
    assert distributed.elf_comment(b"not an object") == ""


@pytest.mark.skipif(not shutil.which("distcc"), reason="needs distcc (scripts/setup installs it)")
def test_a_helper_nobody_listens_on_is_named_in_one_line():
    port = _free_port()
    farm = distributed.parse_distcc_hosts(f"127.0.0.1:{port}/2")
    with pytest.raises(KitError) as error:
        preflight.check_helpers(farm, Compiler("gcc", "12", None))
    assert str(error.value) == (
        f"distcc helper 127.0.0.1:{port} did not compile a test file with gcc: connection "
        "refused (is the daemon running and listening there?)"
    )


@pytest.mark.skipif(
    not (shutil.which("icecc") and shutil.which("gcc") and shutil.which("g++")),
    reason="needs icecc, gcc and g++ (scripts/setup installs them)",
)
def test_an_icecream_helper_given_no_job_in_time_is_named_with_the_likely_reason(monkeypatch):
    """The scheduler queues a job for a helper whose CPUs are all busy: the probe times out."""
    real = distributed._compile

    def icecc_waits(work, command, output, env):
        if command[0] == "icecc":
            return real(work, ["sh", "-c", "exit 124", "--"], output, env)  # a timeout's status
        return real(work, command, output, env)

    monkeypatch.setattr(distributed, "_compile", icecc_waits)
    farm = distributed.Farm("icecream", (distributed.Helper("big", "192.0.2.20:10245", 8),))
    with pytest.raises(KitError) as error:
        preflight.check_helpers(farm, Compiler("gcc", "12", None))
    assert str(error.value) == (
        "icecream helper big (192.0.2.20:10245) was given no test compile in 120 s: icecream's "
        "scheduler gives no job to a helper whose CPUs are all busy or whose slots are full; "
        "try again when it is free, or build without --icecream"
    )


@pytest.mark.skipif(not shutil.which("distcc"), reason="needs distcc (scripts/setup installs it)")
def test_several_problems_are_one_line_each(capsys):
    ports = [_free_port(), _free_port()]
    farm = distributed.parse_distcc_hosts(" ".join(f"127.0.0.1:{p}/2" for p in ports))
    with pytest.raises(KitError, match=r"^2 problems with the distcc helpers \(above\)"):
        preflight.check_helpers(farm, Compiler("gcc", "12", None))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    for line, port in zip(lines, ports):
        assert line.startswith(f"memuse-kit: preflight: distcc helper 127.0.0.1:{port} did not")


def test_a_missing_engine_is_named_as_its_apt_package(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda name, **kw: None if name == "distcc" else real_which(name, **kw)
    )
    with pytest.raises(KitError, match=r"^distcc is not installed: sudo apt-get install distcc$"):
        preflight.check_helpers(distributed.parse_distcc_hosts("box/4"), GCC)


def test_icecream_needs_the_c_plus_plus_compiler_of_the_same_version(monkeypatch):
    assert distributed.cxx_partner("gcc-11") == "g++-11"
    assert distributed.cxx_partner("x86_64-linux-gnu-gcc") == "x86_64-linux-gnu-g++"
    real_which = shutil.which
    present = {"icecc": "/usr/bin/icecc"}
    monkeypatch.setattr(
        shutil,
        "which",
        lambda name, **kw: present.get(name) or (None if "g++" in name else real_which(name, **kw)),
    )
    farm = distributed.Farm("icecream", (distributed.Helper("h", "192.0.2.1:10245", 4),))
    with pytest.raises(
        KitError, match=r"and g\+\+-11 is not installed: sudo apt-get install g\+\+-11$"
    ):
        preflight.check_helpers(farm, GCC)


def test_gcc_plugins_cannot_be_distributed():
    config = "CONFIG_64BIT=y\nCONFIG_GCC_PLUGINS=y\n"
    (problem,) = preflight.undistributable(config)
    assert problem.startswith("CONFIG_GCC_PLUGINS=y in the configuration: GCC plugins")
    assert preflight.undistributable("# CONFIG_GCC_PLUGINS is not set\n") == []


# --- icecream's scheduler, spoken to over its text port -------------------------------------

LISTCS = [
    " builder (192.0.2.10:0) [x86_64] speed=0.00 jobs=0/2 load=0",
    " big (192.0.2.20:10245) [x86_64] speed=12.50 jobs=1/16 load=120",
    "   job 12 sent to big",
    " arm (192.0.2.30:10245) [aarch64] speed=3.00 jobs=0/8 load=0",
    " small (192.0.2.40:10245) [x86_64] speed=3.00 jobs=0/4 load=0",
]


@pytest.fixture
def scheduler() -> Iterator[List[str]]:
    """A stand-in for icecc-scheduler's text interface (its port + 1) answering listcs."""
    listing = list(LISTCS)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"200-ICECC 1.4.0: 1s uptime\n200 Use 'help' for help\n")
            if conn.recv(100).strip() == b"listcs":
                conn.sendall(("\n".join(listing) + "\n200 done\n").encode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield [f"127.0.0.1:{server.getsockname()[1] - 1}", listing]  # type: ignore[list-item]
    server.close()


def test_icecream_helpers_and_slots_come_from_the_scheduler(scheduler):
    address, _ = scheduler
    farm = distributed.icecream_farm(address, local_slots=2)
    assert [(h.name, h.address, h.slots) for h in farm.helpers] == [
        ("big", "192.0.2.20:10245", 16),
        ("small", "192.0.2.40:10245", 4),
    ]  # builder takes no remote jobs (port 0), arm compiles for another platform
    assert farm.jobs() == 22 and farm.record(22)["scheduler"] == address


def test_a_scheduler_without_helpers_for_x86_64_is_one_line(scheduler):
    address, listing = scheduler
    listing[:] = [LISTCS[0], LISTCS[3]]
    with pytest.raises(KitError, match="lists no helper that takes x86_64 jobs"):
        distributed.icecream_farm(address)


def test_an_unreachable_scheduler_is_one_line():
    with pytest.raises(KitError, match=r"cannot ask the icecream scheduler 127.0.0.1:\d+"):
        distributed.icecream_farm(f"127.0.0.1:{_free_port() - 1}")


def test_the_scheduler_is_icecream_s_own_setting(tmp_path, monkeypatch):
    assert distributed.scheduler_address({"ICECC_SCHEDULER": "ice"}) == "ice:8765"
    assert distributed.scheduler_address({"ICECC_SCHEDULER": "ice:9000"}) == "ice:9000"
    conf = tmp_path / "icecc.conf"
    conf.write_text('ICECC_SCHEDULER_HOST="farm.example"\n')
    monkeypatch.setattr(distributed, "ICECC_CONF", conf)
    assert distributed.scheduler_address({}) == "farm.example:8765"
    conf.write_text('ICECC_SCHEDULER_HOST=""\n')
    with pytest.raises(KitError, match="name it with ICECC_SCHEDULER=host"):
        distributed.scheduler_address({})


# --- the build: -j, the environment, the record --------------------------------------------


@pytest.fixture
def tree(tmp_path: Path, monkeypatch) -> Path:
    return patched_fake_tree(tmp_path, monkeypatch)


@pytest.fixture
def probed(monkeypatch) -> List[distributed.Farm]:
    """The helpers' test compiles, recorded instead of run."""
    farms: List[distributed.Farm] = []
    monkeypatch.setattr(preflight, "check_helpers", lambda farm, cc: farms.append(farm))
    return farms


def test_a_distcc_build_runs_make_with_the_helpers_slots_and_records_them(tree, probed):
    result = build(BuildOptions(tree=tree, config="vm", distcc="127.0.0.1:3632/3 box/5"))
    assert [farm.engine for farm in probed] == ["distcc"]
    log = result.build_dir.log.read_text()
    make = next(line for line in log.splitlines() if line.startswith("$ ") and " -j" in line)
    assert " -j8 " in make and "DISTCC_HOSTS='127.0.0.1:3632/3 box/5'" in make
    meta = json.loads(result.build_dir.metadata.read_text())
    assert meta["distributed"] == {
        "engine": "distcc",
        "scheduler": None,
        "hosts": [
            {"name": "127.0.0.1:3632/3", "address": "127.0.0.1:3632", "slots": 3},
            {"name": "box/5", "address": "box:3632", "slots": 5},
        ],
        "jobs": 8,
        "fell_back": 0,
    }


def test_jobs_given_win_over_the_slots(tree, probed):
    result = build(BuildOptions(tree=tree, config="vm", distcc="box/5", jobs=3))
    assert json.loads(result.build_dir.metadata.read_text())["distributed"]["jobs"] == 3
    assert " -j3 " in result.build_dir.log.read_text()


@pytest.mark.skipif(not shutil.which("ccache"), reason="needs ccache")
def test_with_ccache_the_prefix_is_written_once_and_named_in_ccache_prefix(tree, probed):
    first = build(BuildOptions(tree=tree, config="vm", distcc="box/2"))
    script = first.build_dir.root / "ccache-prefix"
    assert script.read_text() == distributed.PREFIX_SCRIPT and os.access(script, os.X_OK)
    stamp = script.stat().st_mtime_ns
    build(BuildOptions(tree=tree, config="vm", distcc="box/2"))
    assert script.stat().st_mtime_ns == stamp
    assert f"CCACHE_PREFIX='{script} distcc'" in first.build_dir.log.read_text()


def test_without_ccache_cc_reaches_the_engine_through_the_prefix_script(tree, probed):
    result = build(BuildOptions(tree=tree, config="vm", distcc="box/2", use_ccache=False))
    script = result.build_dir.root / "ccache-prefix"
    assert script.read_text() == distributed.PREFIX_SCRIPT and os.access(script, os.X_OK)
    log = result.build_dir.log.read_text()
    make = next(line for line in log.splitlines() if line.startswith("$ ") and " -j" in line)
    assert f"'CC={script} distcc gcc' HOSTCC=gcc" in make and "CCACHE_PREFIX" not in make


def test_a_local_build_records_no_engine(tree):
    result = build(BuildOptions(tree=tree, config="vm", use_ccache=False))
    assert json.loads(result.build_dir.metadata.read_text())["distributed"] is None


def test_a_configuration_with_gcc_plugins_is_refused_before_compiling(tree, probed, tmp_path):
    fragment = tmp_path / "plugins.config"
    fragment.write_text("CONFIG_GCC_PLUGINS=y\n")
    options = BuildOptions(tree=tree, config="vm", fragments=(str(fragment),), distcc="box/2")
    with pytest.raises(KitError, match=r"^CONFIG_GCC_PLUGINS=y in the configuration"):
        build(options)
    assert not (BuildDir.for_tree(tree, "vm").obj / "kernel/sys.o").exists()
    meta = json.loads(BuildDir.for_tree(tree, "vm").metadata.read_text())
    assert meta["status"] == "failed" and meta["distributed"]["engine"] == "distcc"


def test_a_dry_run_probes_nothing_and_prints_the_engine(tree, probed, capsys):
    build(BuildOptions(tree=tree, config="vm", distcc="box/6", dry_run=True))
    out = capsys.readouterr().out
    assert probed == []
    assert "# preflight: a real build first test-compiles on each distcc helper" in out
    assert "distributed by distcc to 1 helper (make -j6)" in out
    assert "DISTCC_HOSTS=box/6" in out and "-j6" in out


def test_distcc_s_fallbacks_are_counted(tree, probed, capsys, monkeypatch):
    line = "distcc[42] (dcc_build_somewhere) Warning: failed to distribute, running locally instead"
    assert distributed.fell_back(line)
    assert not distributed.fell_back("  CC      kernel/sys.o")
    monkeypatch.setattr(distributed, "fell_back", lambda text: "kernel/sys.o" in text)
    result = build(BuildOptions(tree=tree, config="vm", distcc="box/2"))
    meta = json.loads(result.build_dir.metadata.read_text())
    assert meta["distributed"]["fell_back"] == 1
    assert (
        "1 objects were compiled on this machine after a helper failed" in capsys.readouterr().err
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
