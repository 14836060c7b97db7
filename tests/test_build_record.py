"""The build record (metadata.json): one schema, read by one function, refusals in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memuse_client.build_record import SCHEMA, BuildRecord, RecordError, read_record


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(data))
    return path


def test_a_record_reads_back_as_written(tmp_path):
    record = BuildRecord(
        status="success", kernel_release="7.2.13-memuse", syscalls={"memuse": 472, "fdcount": 473}
    )
    record.config["sha256"] = "ab" * 32
    path = tmp_path / "metadata.json"
    path.write_text(record.to_json())
    assert json.loads(path.read_text())["schema"] == SCHEMA
    assert read_record(path) == record


def test_a_record_without_a_schema_number_is_read_as_schema_1(tmp_path):
    old = {"status": "success", "kernel_release": "6.1.0-memuse", "syscall_nr": 451}
    path = write(tmp_path, old)
    record = read_record(path)
    assert record.succeeded and record.schema == SCHEMA == 2
    assert record.syscalls == {"memuse": 451} and record.number_of("memuse") == 451


def test_a_schema_1_record_migrates_to_syscalls_by_name(tmp_path):
    """Schema 1 knew one syscall, memuse, by one number: that is what it says in schema 2."""
    old = {"schema": 1, "status": "success", "kernel_release": "5.10.262-memuse", "syscall_nr": 441}
    record = read_record(write(tmp_path, old))
    assert record.syscalls == {"memuse": 441} and record.number_of("fdcount") is None
    assert json.loads(record.to_json())["schema"] == 2
    assert "syscall_nr" not in json.loads(record.to_json())
    without = read_record(write(tmp_path, {"schema": 1, "status": "failed"}))
    assert without.syscalls == {} and without.number_of("memuse") is None


def test_fields_this_version_does_not_know_are_ignored(tmp_path):
    record = read_record(write(tmp_path, {"schema": SCHEMA, "status": "failed", "later": 1}))
    assert record.status == "failed" and not record.succeeded


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"schema": 3}, "schema 3, this memuse-kit reads schemas 1 and 2"),
        ({"schema": "1"}, "schema '1'"),
        ({"schema": True}, "schema True"),
        ([1, 2], "not a JSON object"),
        ({"config": "vm"}, "config is not a dict"),
        ({"artifacts": {"a": 1}}, "artifacts is not a list"),
        ({"schema": 2, "syscalls": [472]}, "syscalls is not a dict"),
        ({"schema": 2, "syscalls": None}, "syscalls is not a dict"),
    ],
)
def test_a_record_that_cannot_be_used_is_one_line(tmp_path, data, says):
    with pytest.raises(RecordError) as refused:
        read_record(write(tmp_path, data))
    assert says in str(refused.value) and "\n" not in str(refused.value)


def test_missing_and_damaged_files_are_one_line(tmp_path):
    with pytest.raises(RecordError, match="does not exist"):
        read_record(tmp_path / "absent.json")
    damaged = tmp_path / "metadata.json"
    damaged.write_text("{not json")
    with pytest.raises(RecordError, match="damaged"):
        read_record(damaged)


def test_a_boolean_is_not_a_syscall_number():
    assert BuildRecord(syscalls={"memuse": True}).number_of("memuse") is None
    assert BuildRecord(syscalls={"memuse": 0}).number_of("memuse") == 0
