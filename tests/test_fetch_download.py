"""Downloads against a local HTTP server: verify, resume, retry, refuse."""

from __future__ import annotations

import io

import pytest

from memuse_kit.core.errors import KitError
from memuse_kit.trees.download import (
    ATTEMPTS,
    TransferProgress,
    Unreachable,
    fetch_file,
    parse_sha256sums,
)
from tests.fetch_support import FileServer, clearsigned_sums, closed_port_url, sha256

DATA = bytes(range(256)) * 4096 * 3  # 3 MiB: several chunks
HALF = len(DATA) // 2


@pytest.fixture
def server():
    s = FileServer()
    yield s
    s.close()


def fetch(url, dest, digest=None, **kwargs):
    return fetch_file(url, dest, digest or sha256(DATA), out=io.StringIO(), **kwargs)


def test_good_download_appears_only_when_verified(server, tmp_path):
    url = server.add("/f.bin", DATA)
    dest = tmp_path / "f.bin"
    assert fetch(url, dest) is True
    assert dest.read_bytes() == DATA
    assert not (tmp_path / "f.bin.part").exists()


def test_verified_file_is_reused_without_any_request(server, tmp_path):
    url = server.add("/f.bin", DATA)
    dest = tmp_path / "f.bin"
    dest.write_bytes(DATA)
    assert fetch(url, dest) is False
    assert server.log == []


def test_another_file_under_that_name_is_replaced(server, tmp_path):
    url = server.add("/f.bin", DATA)
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"an older upload")
    assert fetch(url, dest) is True
    assert dest.read_bytes() == DATA


def test_checksum_mismatch_deletes_the_download(server, tmp_path):
    url = server.add("/f.bin", DATA)
    dest = tmp_path / "f.bin"
    with pytest.raises(KitError) as error:
        fetch(url, dest, sha256(b"something else"))
    message = str(error.value)
    assert url in message and "sha256" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_truncated_download_is_retried_then_refused(server, tmp_path):
    url = server.add("/f.bin", DATA, mode="truncate")
    dest = tmp_path / "f.bin"
    with pytest.raises(KitError) as error:
        fetch(url, dest)
    message = str(error.value)
    assert url in message and "stopping early" in message and "\n" not in message
    assert not dest.exists()
    assert len(server.requests_for("/f.bin")) == ATTEMPTS
    # what arrived stays only as .part, which nothing trusts before its sha256 matches
    assert (tmp_path / "f.bin.part").stat().st_size < len(DATA)


def test_truncated_download_resumes_in_the_same_run(server, tmp_path):
    url = server.add("/f.bin", DATA, mode="truncate-once")
    dest = tmp_path / "f.bin"
    assert fetch(url, dest) is True
    assert dest.read_bytes() == DATA
    first, second = server.requests_for("/f.bin")
    assert first.range is None and first.sent == HALF
    # the client keeps what it had read when the connection broke, at most HALF
    kept = int(second.range[len("bytes=") : -1])
    assert 0 < kept <= HALF
    assert second.status == 206 and second.sent == len(DATA) - kept


def test_a_shorter_file_than_the_index_says_is_refused(server, tmp_path):
    url = server.add("/f.bin", DATA[:HALF])
    dest = tmp_path / "f.bin"
    with pytest.raises(KitError, match="stopping early"):
        fetch(url, dest, size=len(DATA))
    assert not dest.exists()


def test_partial_file_is_resumed_with_a_range_request(server, tmp_path):
    url = server.add("/f.bin", DATA)
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(DATA[:300_000])
    assert fetch(url, dest) is True
    assert dest.read_bytes() == DATA
    [request] = server.requests_for("/f.bin")
    assert request.range == "bytes=300000-" and request.status == 206
    assert request.sent == len(DATA) - 300_000


def test_server_ignoring_range_gets_a_clean_restart(server, tmp_path):
    url = server.add("/f.bin", DATA, mode="no-range")
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(DATA[:300_000])
    assert fetch(url, dest) is True
    assert dest.read_bytes() == DATA  # not the kept part plus the whole file again
    [request] = server.requests_for("/f.bin")
    assert request.range == "bytes=300000-" and request.status == 200


def test_complete_part_left_by_an_interrupted_run_is_verified(server, tmp_path):
    url = server.add("/f.bin", DATA)
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(DATA)
    assert fetch(url, dest) is True
    assert dest.read_bytes() == DATA
    assert [r.status for r in server.requests_for("/f.bin")] == [416]


def test_resumed_part_of_another_file_is_downloaded_again_from_scratch(server, tmp_path):
    url = server.add("/f.bin", DATA)
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"x" * 300_000)
    assert fetch(url, dest) is True
    assert dest.read_bytes() == DATA
    resumed, fresh = server.requests_for("/f.bin")
    assert resumed.range == "bytes=300000-" and fresh.range is None


def test_unreachable_host_is_one_line_naming_the_url(tmp_path):
    url = closed_port_url("/linux.tar.xz")
    with pytest.raises(Unreachable) as error:
        fetch(url, tmp_path / "linux.tar.xz")
    message = str(error.value)
    assert error.value.url == url
    assert message.startswith(f"cannot reach {url} (connection refused)")
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_http_error_names_url_and_status(server, tmp_path):
    url = server.url("/missing.tar.xz")
    with pytest.raises(KitError) as error:
        fetch(url, tmp_path / "missing.tar.xz")
    assert str(error.value) == f"{url} answered HTTP 404 Not Found"
    assert not (tmp_path / "missing.tar.xz").exists()


def test_plain_progress_reports_every_tenth():
    out = io.StringIO()
    progress = TransferProgress("downloading x", 10_000_000, out=out)
    for _ in range(100):
        progress.update(100_000)
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0] == "downloading x: 10% (1.0 MB of 10.0 MB)"
    assert lines[-1] == "downloading x: 100% (10.0 MB of 10.0 MB)"


def test_plain_progress_of_a_resumed_download_starts_where_it_was():
    out = io.StringIO()
    progress = TransferProgress("x", 1000, initial=550, unit="objects", out=out)
    progress.update(50)
    assert out.getvalue() == "x: 60% (600 objects of 1000 objects)\n"


def test_sha256sums_are_read_from_a_clearsigned_file():
    sums = clearsigned_sums({"linux-9.9.tar.xz": b"a", "linux-9.9.tar.gz": b"b"}).decode()
    assert parse_sha256sums(sums) == {
        "linux-9.9.tar.xz": sha256(b"a"),
        "linux-9.9.tar.gz": sha256(b"b"),
    }


def test_progress_reaches_100_percent_whatever_the_total():
    """A total of 36 made the last tenth 36 // 3.6 == 9.0 in floating point: no 100% line."""
    for total in (36, 7, 1000, 49):
        out = io.StringIO()
        progress = TransferProgress("x", total, unit="objects", out=out)
        for _ in range(total):
            progress.update(1)
        assert out.getvalue().splitlines()[-1].startswith("x: 100% "), (total, out.getvalue())
