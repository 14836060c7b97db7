from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import pytest

from memuse_client import Kind, ScenarioError, ScenarioUnavailable, stopped_scenario
from memuse_client import scenarios as scenarios_module
from memuse_client.smaps import Vma, parse_smaps, smaps_measure, task_state
from tests import client_support

scenario_cache = client_support.scenario_cache
pytestmark = pytest.mark.usefixtures("scenario_cache")
PAGE = os.sysconf("SC_PAGESIZE")
MIB = 1024 * 1024


def measure(pid: int) -> dict:
    return smaps_measure(pid)


def smaps_header(pid: int, address: int) -> str:
    """The smaps header line ("start-end perms offset dev inode name") of a VMA."""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        bounds = line.split(" ", 1)[0].split("-")
        if len(bounds) == 2 and int(bounds[0], 16) <= address < int(bounds[1], 16):
            return line
    raise AssertionError(f"no VMA of {pid} holds {address:#x}")


def vma_at(pid: int, address: int) -> Vma:
    """The smaps entry of the VMA holding `address`."""
    for vma in parse_smaps(Path(f"/proc/{pid}/smaps").read_text()):
        if vma.start <= address < vma.end:
            return vma
    raise AssertionError(f"no VMA of {pid} holds {address:#x}")


def test_the_program_is_built_in_the_cache_and_lists_every_scenario(scenario_cache):
    binary = scenarios_module.scenarios_binary()
    assert binary.parent == scenario_cache / "bin"
    assert binary.name == scenarios_module.binary_name()
    listed = subprocess.run([str(binary), "--list"], capture_output=True, text=True, check=True)
    assert tuple(listed.stdout.split()) == scenarios_module.SCENARIOS


def test_a_scenario_is_stopped_while_measured_and_killed_after():
    with stopped_scenario("do-nothing") as pid:
        assert isinstance(pid, int) and pid.pid == int(pid)
        assert task_state(pid) == "T"
        assert pid.name == "do-nothing" and pid.info == {}
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_continued_scenario_exits_zero():
    with stopped_scenario("heap-active") as pid:
        assert pid.resume() == 0
        assert pid.exit_status == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_the_child_is_killed_when_the_block_fails():
    with pytest.raises(RuntimeError, match="inside"), stopped_scenario("do-nothing") as pid:
        raise RuntimeError("inside")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_unknown_scenarios_and_bad_arguments():
    with pytest.raises(ValueError, match="unknown scenario 'nope'"), stopped_scenario("nope"):
        pass
    failed = pytest.raises(ScenarioError, match=r"exited with status 2.*not a number: x")
    with failed, stopped_scenario("heap-active", "x"):
        pass


def test_heap_active_writes_what_it_allocates():
    with stopped_scenario("do-nothing") as pid:
        idle = measure(pid)
    with stopped_scenario("heap-active") as pid:
        active = measure(pid)
        assert pid.number("bytes") == 20000
    with stopped_scenario("heap-passive") as pid:
        passive = measure(pid)
    assert active[Kind.HEAP] - idle[Kind.HEAP] >= 20000
    assert passive[Kind.HEAP] < active[Kind.HEAP]
    # malloc only writes its chunk headers: a page or two, not 20000 bytes
    assert passive[Kind.HEAP] - idle[Kind.HEAP] <= 3 * PAGE


def test_stack_is_measured_at_the_bottom_of_the_recursion():
    with stopped_scenario("stack", 5000) as pid:
        span = pid.number("span")
        assert pid.number("calls") == 5000
        stack = measure(pid)[Kind.STACK]
    # at least a return address and a frame pointer per call
    assert span >= 5000 * 16
    assert stack >= span


def test_threads_park_with_their_tids_reported():
    with stopped_scenario("threads", 3) as pid:
        tids = pid.numbers("tids")
        assert len(set(tids)) == 3 and pid not in tids
        for tid in tids:
            assert Path(f"/proc/{pid}/task/{tid}").is_dir()
            assert task_state(tid) == "T"


def test_mmap_anon_is_resident_but_not_heap():
    with stopped_scenario("mmap-anon", 8) as pid:
        mapped = measure(pid)
        assert vma_at(pid, pid.number("addr")).rss >= 8 * MIB
    assert mapped[Kind.TOTAL] >= 8 * MIB
    assert mapped[Kind.HEAP] == 0


def test_heap_dontneed_drops_part_of_the_heap():
    with stopped_scenario("heap-dontneed", 40, 10) as pid:
        assert measure(pid)[Kind.HEAP] == 30 * PAGE


def test_heap_read_only_maps_the_zero_page_only():
    with stopped_scenario("heap-read-only", 40) as pid:
        assert pid.number("pages") == 40
        assert measure(pid)[Kind.HEAP] == 0


def test_sparse_64g_has_one_resident_page():
    try:
        with stopped_scenario("sparse-64g") as pid:
            assert pid.number("bytes") == 64 << 30
            assert vma_at(pid, pid.number("touched")).rss == PAGE
    except ScenarioUnavailable as err:
        pytest.skip(str(err))


def test_thp_region_is_aligned_and_resident():
    with stopped_scenario("thp") as pid:
        start = pid.number("addr")
        assert start % (2 * MIB) == 0 and pid.number("bytes") == 8 * MIB
        vma = vma_at(pid, start)
    # trimmed to exactly the aligned region, a VMA of its own
    assert (vma.start, vma.end) == (start, start + 8 * MIB)
    assert vma.rss == 8 * MIB


def test_thp_protnone_leaves_the_aligned_region_inaccessible():
    try:
        with stopped_scenario("thp-protnone", 4) as pid:
            start = pid.number("addr")
            header = smaps_header(pid, start)
    except ScenarioUnavailable as err:
        pytest.skip(str(err))
    assert header.split()[:2] == [f"{start:x}-{start + 4 * MIB:x}", "---p"]


def test_brk_page_is_one_page_of_its_own_at_start_brk():
    with stopped_scenario("brk-page") as pid:
        start = pid.number("addr")
        vma = vma_at(pid, start)
    assert start == pid.number("start_brk") and start % PAGE == 0
    assert (vma.start, vma.end, vma.rss) == (start, start + PAGE, PAGE)


def test_memfd_many_maps_one_file_again_and_again_all_present():
    with stopped_scenario("memfd-many", 1, 3) as pid:
        vmas = parse_smaps(Path(f"/proc/{pid}/smaps").read_text())
    mapped = [vma for vma in vmas if vma.name.startswith("/memfd:memuse-scenario")]
    assert pid.number("count") == len(mapped) == 3
    assert [vma.rss for vma in mapped] == [MIB] * 3


@pytest.mark.skipif(os.geteuid() == 0, reason="as root it would really poison a page here")
@pytest.mark.parametrize("name", ["hwpoison", "devmem-private"])
def test_root_only_scenarios_say_why_they_cannot_run(name):
    with pytest.raises(ScenarioUnavailable, match="needs root"), stopped_scenario(name):
        pass


def test_hugetlb_stops_or_says_it_cannot():
    try:
        with stopped_scenario("hugetlb", 1) as pid:
            assert pid.number("bytes") == 2 * MIB
    except ScenarioUnavailable as err:
        assert "nr_hugepages" in str(err)


def test_a_read_only_cache_falls_back_to_a_private_temp_dir(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MEMUSE_KIT_CACHE", str(blocker / "cache"))
    monkeypatch.setattr(scenarios_module.tempfile, "gettempdir", lambda: str(tmp_path))
    binary = scenarios_module.scenarios_binary()
    assert binary.parent == tmp_path / f"memuse-kit-{os.getuid()}"
    assert oct(binary.parent.stat().st_mode & 0o777) == "0o700"


def test_a_binary_already_built_is_used_from_a_read_only_place(tmp_path):
    built = scenarios_module.scenarios_binary()
    shelf = tmp_path / "shelf"
    shelf.mkdir(mode=0o755)
    (shelf / built.name).write_bytes(built.read_bytes())
    (shelf / built.name).chmod(0o755)
    assert scenarios_module.scenarios_binary([shelf, tmp_path / "x"]) == shelf / built.name


def test_a_directory_others_can_write_is_not_trusted(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    target = tmp_path / "mine"
    binary = scenarios_module.scenarios_binary([shared, target])
    assert binary.parent == target


def test_without_a_compiler_the_error_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(scenarios_module, "compilers", lambda: [])
    with pytest.raises(ScenarioError, match="no C compiler"):
        scenarios_module.scenarios_binary([tmp_path / "empty"])


@pytest.mark.slow
def test_heap_1g_is_all_resident():
    try:
        with stopped_scenario("heap-1g") as pid:
            heap = measure(pid)[Kind.HEAP]
    except ScenarioUnavailable as err:
        pytest.skip(str(err))
    assert heap >= 1 << 30


# --- which binary runs: $MEMUSE_SCENARIOS_BIN, and never another machine's -----------------


def fake_elf(path: Path, e_machine: int) -> Path:
    """An executable whose ELF header says e_machine (183: AArch64), nothing runnable."""
    header = b"\x7fELF\x02\x01\x01" + bytes(9) + (2).to_bytes(2, "little")
    path.write_bytes(header + e_machine.to_bytes(2, "little") + bytes(44))
    path.chmod(0o755)
    return path


def test_the_elf_machine_is_read_from_the_header(tmp_path):
    assert scenarios_module.elf_machine(fake_elf(tmp_path / "a", 183)) == 183
    assert scenarios_module.runs_here(tmp_path / "a", "aarch64")
    assert scenarios_module.runs_here(tmp_path / "a", "arm64")
    assert not scenarios_module.runs_here(tmp_path / "a", "x86_64")
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    assert scenarios_module.elf_machine(script) is None and scenarios_module.runs_here(script)
    assert scenarios_module.runs_here(tmp_path / "a", "riscv64")  # no rule: not refused
    native = scenarios_module.scenarios_binary()
    assert scenarios_module.runs_here(native)


def test_the_binary_the_environment_names_is_used_only_with_the_expected_name(
    tmp_path, monkeypatch
):
    built = scenarios_module.scenarios_binary()
    given = tmp_path / "given" / built.name
    given.parent.mkdir()
    given.write_bytes(built.read_bytes())
    given.chmod(0o755)
    monkeypatch.setenv(scenarios_module.ENV_BINARY, str(given))
    assert scenarios_module.scenarios_binary() == given
    stale = tmp_path / "memuse-scenarios-0000000000000000"
    stale.write_bytes(built.read_bytes())
    stale.chmod(0o755)
    monkeypatch.setenv(scenarios_module.ENV_BINARY, str(stale))
    assert scenarios_module.scenarios_binary() == built  # a stale build is never used


def test_another_machines_binary_is_not_used_even_when_named_right(tmp_path, monkeypatch):
    """The arm64 guest sees the host's cache: its x86_64 build has the very same name."""
    machine = platform.machine()
    if machine not in scenarios_module.ELF_MACHINES:
        pytest.skip(f"no ELF machine known for {machine}")
    foreign = 183 if scenarios_module.ELF_MACHINES[machine] != 183 else 62
    name = scenarios_module.binary_name()
    shelf = tmp_path / "shelf"
    shelf.mkdir(mode=0o755)
    fake_elf(shelf / name, foreign)
    monkeypatch.setenv(scenarios_module.ENV_BINARY, str(shelf / name))
    mine = tmp_path / "mine"
    binary = scenarios_module.scenarios_binary([shelf, mine])
    assert binary == mine / name  # built here, the foreign one neither run nor replaced
    assert scenarios_module.elf_machine(shelf / name) == foreign


def test_without_a_compiler_the_error_names_the_prebuilt_binarys_variable(tmp_path, monkeypatch):
    monkeypatch.setattr(scenarios_module, "compilers", lambda: [])
    with pytest.raises(ScenarioError) as caught:
        scenarios_module.scenarios_binary([tmp_path / "empty"])
    message = str(caught.value)
    assert "MEMUSE_SCENARIOS_BIN" in message and scenarios_module.binary_name() in message
