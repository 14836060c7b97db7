from __future__ import annotations

import json
import os

import pytest

from memuse_client import backends, cli
from memuse_client import syscall as syscall_module
from memuse_client.smaps import thread_size
from tests import client_support
from tests.client_support import ABSENT_NR, fake_syscall_from_smaps

scenario_cache = client_support.scenario_cache
pytestmark = pytest.mark.usefixtures("scenario_cache")
KEYS = ["stack", "kernel_stack", "heap", "kernel_mappings", "total"]
SCENARIOS = ["do-nothing", "heap-active", "heap-passive", "stack"]
PAGE = os.sysconf("SC_PAGESIZE")


@pytest.fixture(autouse=True)
def fresh_discovery():
    syscall_module.clear_cache()
    yield
    syscall_module.clear_cache()


def experiment(capsys, *args: str):
    status = cli.main(["experiment", *args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def smaps_json(capsys) -> dict:
    status, out, err = experiment(capsys, "--backend", "smaps", "--json")
    assert status == 0 and err == ""
    return json.loads(out)


def test_json_shape(smaps_json):
    assert smaps_json["backend"] == "smaps" and smaps_json["syscall"] is None
    assert smaps_json["kernel_release"] == os.uname().release
    assert smaps_json["page_size"] == PAGE
    assert [row["name"] for row in smaps_json["scenarios"]] == SCENARIOS
    for row in smaps_json["scenarios"]:
        assert row["syscall"] is None and row["differs"] == []
        assert list(row["smaps"]) == KEYS


def test_numbers_reproduce_the_report(smaps_json):
    rows = {row["name"]: row["smaps"] for row in smaps_json["scenarios"]}
    info = {row["name"]: row["info"] for row in smaps_json["scenarios"]}
    idle, active, passive, stack = (rows[name] for name in SCENARIOS)
    assert active["heap"] - idle["heap"] >= 20000
    assert passive["heap"] < active["heap"]
    assert passive["heap"] - idle["heap"] <= 3 * PAGE
    # at the bottom of 20000 real frames: at least a return address and frame pointer each
    assert int(info["stack"]["span"]) >= 20000 * 16
    assert stack["stack"] >= int(info["stack"]["span"])
    assert stack["stack"] - idle["stack"] >= 20000 * 16
    for row in rows.values():
        assert row["kernel_stack"] == thread_size()  # smaps' stand-in: the config's THREAD_SIZE
        assert row["kernel_mappings"] > 0
        assert row["total"] > row["stack"] + row["heap"] + row["kernel_mappings"]


def test_text_table(capsys):
    status, out, _ = experiment(capsys, "--backend", "smaps")
    lines = out.splitlines()
    assert status == 0
    assert lines[0].startswith(f"memuse experiment on {os.uname().release}: smaps backend")
    assert lines[1].split("  ")[0].strip() == "scenario"
    for label in ("call stack", "kernel stack", "heap", "kernel mappings", "total"):
        assert label in lines[1]
    assert [line.split(":")[0].split("  ")[0] for line in lines[2:6]] == [
        "do nothing",
        "heap active",
        "heap passive",
        "stack",
    ]
    assert all(line.split()[-1].isdigit() for line in lines[2:6])


def test_with_the_syscall_smaps_stands_beside_each_figure(capsys, monkeypatch):
    monkeypatch.setattr(backends, "raw_memuse", fake_syscall_from_smaps())
    monkeypatch.setenv("MEMUSE_NR", "472")
    monkeypatch.setenv("MEMUSE_FORCE", "1")  # 472 is not memuse on this kernel
    status, out, _ = experiment(capsys, "--json")
    document = json.loads(out)
    assert status == 0
    assert document["backend"] == "syscall"
    assert document["syscall"] == {"nr": 472, "source": "MEMUSE_NR"}
    for row in document["scenarios"]:
        assert list(row["syscall"]) == KEYS and row["differs"] == []
    status, out, _ = experiment(capsys, "--check")
    assert status == 0
    row = out.splitlines()[2]
    assert "[" in row and "*" not in row


def test_disagreements_are_marked_and_fail_the_check(capsys, monkeypatch):
    monkeypatch.setattr(backends, "raw_memuse", fake_syscall_from_smaps({5: PAGE}))
    monkeypatch.setenv("MEMUSE_NR", "472")
    monkeypatch.setenv("MEMUSE_FORCE", "1")  # 472 is not memuse on this kernel
    status, out, _ = experiment(capsys, "--check")
    assert status == 1
    assert out.splitlines()[-1] == "* the syscall and smaps disagree"
    assert all(line.endswith("] *") for line in out.splitlines()[2:6])
    status, out, _ = experiment(capsys, "--json")
    assert status == 0
    assert [row["differs"] for row in json.loads(out)["scenarios"]] == [["total"]] * 4


def test_without_memuse_the_experiment_says_what_to_do(capsys, monkeypatch):
    monkeypatch.setenv("MEMUSE_NR", str(ABSENT_NR))
    status, out, err = experiment(capsys)
    assert status == 1 and out == ""
    assert err.count("\n") == 1 and "--backend smaps" in err and "invoke vm" in err
