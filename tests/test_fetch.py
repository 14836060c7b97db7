"""invoke fetch end to end, offline: kernel.org-, Debian- and Ubuntu-like sources served here."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from invoke.exceptions import Exit

from memuse_kit.cli import one_line_errors
from memuse_kit.core.errors import KitError
from memuse_kit.trees import fetch, sources, workspace
from memuse_kit.trees.download import Unreachable
from memuse_kit.trees.sources import Distribution, GitSource
from tests.fakelinux import make_fake_tree
from tests.fetch_support import (
    Archive,
    ArchiveKey,
    FileServer,
    archive_key,
    clearsigned_sums,
    closed_port_url,
    coordinates,
    git_repository,
    kernel_tarball,
    publish_apt_archive,
    sha256,
    source_deb,
)

REPO = Path(__file__).resolve().parents[1]
HERE = Distribution("debian", "testy")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("MEMUSE_KIT_CACHE", str(root))
    return root


@pytest.fixture(scope="session")
def signing_key() -> Iterator[ArchiveKey]:
    """The Debian-like archives' key: apt checks their InRelease through signed-by."""
    yield from archive_key()


@pytest.fixture
def server():
    s = FileServer()
    yield s
    s.close()


def run(spec, coords, explicit=True, distro=HERE, out=None):
    return fetch.fetch_source(
        spec,
        explicit=explicit,
        coordinates=coords,
        distribution=distro,
        out=out if out is not None else io.StringIO(),
    )


def leftovers(cache: Path):
    """Anything an interrupted or failed fetch could leave that looks like a tree."""
    trees = cache / "trees"
    return sorted(p.name for p in trees.iterdir()) if trees.is_dir() else []


# kernel.org


def publish_kernel_org(server, tmp_path, tarball=None, listed=None, mode="ok"):
    tarball = tarball if tarball is not None else kernel_tarball(tmp_path, "linux-9.9", "9.9.0")
    server.add("/kernel/v9.x/linux-9.9.tar.xz", tarball, mode)
    sums = clearsigned_sums({"linux-9.9.tar.xz": listed if listed is not None else tarball})
    server.add("/kernel/v9.x/sha256sums.asc", sums)
    return tarball, coordinates(Archive(kernel_org_base=server.url("/kernel")))


def test_kernel_org_tarball_is_verified_unpacked_and_recorded(cache, server, tmp_path):
    tarball, coords = publish_kernel_org(server, tmp_path)
    progress = io.StringIO()
    result = run("kernel.org:9.9", coords, out=progress)
    assert progress.getvalue().splitlines()[-1].startswith("downloading linux-9.9.tar.xz: 100%")
    assert result.tree == cache / "trees" / "linux-9.9"
    assert (result.tree / "arch/x86/entry/syscalls/syscall_64.tbl").is_file()
    assert (result.spec, result.version, result.kernel) == ("kernel.org:9.9", "9.9", "9.9.0")
    assert result.sha256 == sha256(tarball)
    assert leftovers(cache) == ["linux-9.9", "linux-9.9.source.json"]
    assert fetch.last_fetched() == result.tree
    current = json.loads((cache / "current.json").read_text())
    assert (current["spec"], current["version"], current["tree"]) == (
        "kernel.org:9.9",
        "9.9",
        str(result.tree),
    )
    assert fetch.source_record(result.tree)["origin"] == server.url("/kernel/v9.x/linux-9.9.tar.xz")


def test_fetching_again_is_instant_and_offline(cache, server, tmp_path):
    _, coords = publish_kernel_org(server, tmp_path)
    first = run("kernel.org:9.9", coords)
    server.close()  # no network at all the second time
    again = run("kernel.org:9.9", coords)
    assert again.cached and again.tree == first.tree and again.version == "9.9"


def test_checksum_mismatch_is_never_unpacked(cache, server, tmp_path):
    _, coords = publish_kernel_org(server, tmp_path, listed=b"another tarball")
    with pytest.raises(KitError, match="failed its sha256 check"):
        run("kernel.org:9.9", coords)
    assert leftovers(cache) == []
    assert list((cache / "downloads").iterdir()) == []
    assert fetch.last_fetched() is None


def test_truncated_tarball_is_refused_and_not_unpacked(cache, server, tmp_path):
    _, coords = publish_kernel_org(server, tmp_path, mode="truncate")
    with pytest.raises(KitError, match="kept stopping early"):
        run("kernel.org:9.9", coords)
    assert leftovers(cache) == []
    assert not (cache / "downloads" / "linux-9.9.tar.xz").exists()


def test_failed_unpacking_leaves_no_tree(cache, server, tmp_path):
    # the checksum matches, so the bytes are what the server meant, but they do not unpack
    _, coords = publish_kernel_org(server, tmp_path, tarball=b"not a tarball")
    with pytest.raises(KitError, match="tar -xf"):
        run("kernel.org:9.9", coords)
    assert leftovers(cache) == []
    assert fetch.last_fetched() is None


def test_interrupted_unpacking_never_counts_as_fetched(cache, server, tmp_path):
    _, coords = publish_kernel_org(server, tmp_path)
    stale = cache / "trees" / ".linux-9.9.partial-killed"
    make_fake_tree(stale / "linux-9.9", version="9.9.0")
    assert fetch.find_cached("kernel.org:9.9") is None
    result = run("kernel.org:9.9", coords)
    assert not result.cached
    assert not stale.exists()  # cleaned up by the next fetch of that source


def test_pinned_sha256_needs_no_sums_file(cache, server, tmp_path):
    tarball = kernel_tarball(tmp_path, "linux-9.9", "9.9.0")
    server.add("/kernel/v9.x/linux-9.9.tar.xz", tarball)
    archive = Archive(
        kernel_org_base=server.url("/kernel"), sha256_pins={"linux-9.9.tar.xz": sha256(tarball)}
    )
    assert run("kernel.org:9.9", coordinates(archive)).kernel == "9.9.0"
    assert server.requests_for("/kernel/v9.x/sha256sums.asc") == []


def test_release_missing_from_the_sums_file(cache, server, tmp_path):
    _, coords = publish_kernel_org(server, tmp_path)
    with pytest.raises(KitError, match=r"sha256sums.asc lists no linux-9\.8\.tar\.xz"):
        run("kernel.org:9.8", coords)


# Debian: a private apt configuration against an archive served here


def publish_debian(server, tmp_path, key, versions=("9.9.1-1",), suites=("testy",)):
    """linux-source-9.9 in each suite (one version per suite), signed by key; apt lines."""
    lines = []
    for suite, version in zip(suites, versions):
        upstream = version.split("-")[0]
        tarball = kernel_tarball(tmp_path / suite, "linux-source-9.9", upstream)
        deb = source_deb(tmp_path / suite, "linux-source-9.9", version, tarball)
        packages = [("linux-source-9.9", version, deb)]
        lines.append(publish_apt_archive(server, f"/{suite}", suite, packages, key))
    return lines


def test_debian_source_package_through_a_private_apt_configuration(
    cache, server, tmp_path, signing_key
):
    lines = publish_debian(server, tmp_path, signing_key)
    coords = coordinates(Archive(debian_series={"9.9": lines}, keyring=signing_key.keyring))
    result = run("debian:9.9", coords)
    assert result.tree == cache / "trees" / "debian-9.9.1-1"
    assert (result.version, result.kernel) == ("9.9.1-1", "9.9.1")
    deb = cache / "downloads" / "linux-source-9.9_9.9.1-1_all.deb"
    assert result.sha256 == sha256(deb.read_bytes())
    assert result.origin == server.url("/testy/pool/main/linux-source-9.9_9.9.1-1_all.deb")
    private = cache / "apt" / "debian_9.9"
    assert (private / "sources.list").read_text() == (
        f"deb [signed-by={signing_key.keyring}] {lines[0]}\n"
    )
    assert list((private / "lists").glob("*_Packages*"))
    assert leftovers(cache) == ["debian-9.9.1-1", "debian-9.9.1-1.source.json"]


def test_debian_takes_the_newest_version_the_suites_offer(cache, server, tmp_path, signing_key):
    lines = publish_debian(
        server, tmp_path, signing_key, ("9.9.1-1", "9.9.4-1"), ("testy", "testy-security")
    )
    result = run(
        "debian:9.9",
        coordinates(Archive(debian_series={"9.9": lines}, keyring=signing_key.keyring)),
    )
    assert (result.version, result.kernel) == ("9.9.4-1", "9.9.4")


def test_debian_reuses_a_verified_download(cache, server, tmp_path, signing_key):
    lines = publish_debian(server, tmp_path, signing_key)
    deb = (tmp_path / "testy" / "linux-source-9.9_9.9.1-1_all.deb").read_bytes()
    (cache / "downloads").mkdir(parents=True)
    (cache / "downloads" / "linux-source-9.9_9.9.1-1_all.deb").write_bytes(deb)
    run(
        "debian:9.9",
        coordinates(Archive(debian_series={"9.9": lines}, keyring=signing_key.keyring)),
    )
    assert server.requests_for("/testy/pool/main/linux-source-9.9_9.9.1-1_all.deb") == []


@pytest.mark.parametrize("signed_by", ["another key", "no key"])
def test_debian_archive_not_signed_by_the_configured_key_is_refused(
    cache, server, tmp_path, signing_key, signed_by
):
    """apt really checks the signature: signed by another key, or not signed at all, the
    archive's index is refused and nothing is downloaded or unpacked."""
    if signed_by == "another key":
        with contextlib.closing(archive_key("someone else")) as keys:
            lines = publish_debian(server, tmp_path, next(keys))
    else:
        lines = publish_debian(server, tmp_path, None)
    coords = coordinates(Archive(debian_series={"9.9": lines}, keyring=signing_key.keyring))
    with pytest.raises(KitError, match=r"^apt-get update .* is not signed\.$") as error:
        run("debian:9.9", coords)
    assert "\n" not in str(error.value)
    assert server.requests_for("/testy/pool/main/linux-source-9.9_9.9.1-1_all.deb") == []
    assert leftovers(cache) == []


def test_debian_mirror_unreachable_is_one_line_naming_it(cache, tmp_path):
    url = closed_port_url("/debian")
    coords = coordinates(Archive(debian_series={"9.9": [f"{url} testy main"]}))
    with pytest.raises(Unreachable) as error:
        run("debian:9.9", coords)
    assert error.value.url.startswith(url) and "\n" not in str(error.value)


def test_debian_package_missing_from_the_index(cache, server, tmp_path, signing_key):
    lines = publish_debian(server, tmp_path, signing_key)
    coords = coordinates(Archive(debian_series={"9.8": lines}, keyring=signing_key.keyring))
    with pytest.raises(KitError, match=r"no package linux-source-9\.8 in"):
        run("debian:9.8", coords)


# Ubuntu: a shallow clone of a tag


def test_ubuntu_tag_is_cloned_without_git_state(cache, tmp_path):
    repo = git_repository(tmp_path)
    progress = io.StringIO()
    result = run(None, coordinates(Archive(git=repo)), explicit=False, out=progress)
    assert "git clone: receiving objects: 100%" in progress.getvalue()
    assert result.tree == cache / "trees" / "ubuntu-9.9.0-1.2_20.04.1"
    assert (result.spec, result.version, result.kernel) == ("ubuntu-test", repo.version, "9.9.0")
    assert result.commit == repo.commit
    assert not (result.tree / ".git").exists()  # setlocalversion would add "+" to the release
    assert not (result.tree / "after-the-tag").exists()
    assert fetch.last_fetched() == result.tree


def test_tag_holding_another_version_is_refused(cache, tmp_path):
    repo = git_repository(tmp_path)
    coords = coordinates(Archive(git=repo))
    coords.git["ubuntu-test"] = GitSource("ubuntu-test", repo.url, repo.tag, "9.9.0-7.8", "ubuntu")
    with pytest.raises(KitError, match=r"holds 9\.9\.0-1\.2~20\.04\.1, not 9\.9\.0-7\.8"):
        run("ubuntu-test", coords)
    assert leftovers(cache) == []


def test_missing_tag_is_named(cache, tmp_path):
    repo = git_repository(tmp_path)
    coords = coordinates(Archive(git=repo))
    coords.git["ubuntu-test"] = GitSource("ubuntu-test", repo.url, "no-such-tag", "1", "ubuntu")
    with pytest.raises(KitError, match="has no tag no-such-tag"):
        run("ubuntu-test", coords)


# the default source unreachable: fallback only when it was not asked for


def unreachable_default(server, tmp_path, key):
    repo = git_repository(tmp_path)
    repo.url = closed_port_url("/ubuntu/focal")
    lines = publish_debian(server, tmp_path, key)
    return coordinates(Archive(git=repo, debian_series={"9.9": lines}, keyring=key.keyring))


def test_unreachable_default_falls_back_with_one_warning(
    cache, server, tmp_path, capsys, signing_key
):
    coords = unreachable_default(server, tmp_path, signing_key)
    result = run(None, coords, explicit=False)
    assert (result.spec, result.version) == ("debian:9.9", "9.9.1-1")
    warning = capsys.readouterr().err.splitlines()
    assert warning == [
        f"memuse-kit: warning: {coords.git['ubuntu-test'].url} is unreachable "
        "(connection refused); using this system's kernel source debian:9.9 instead"
    ]
    assert json.loads((cache / "current.json").read_text())["spec"] == "debian:9.9"


def test_explicit_source_never_falls_back(cache, server, tmp_path, signing_key):
    coords = unreachable_default(server, tmp_path, signing_key)
    with pytest.raises(Unreachable):
        run("ubuntu-test", coords, explicit=True)
    assert server.log == [] and leftovers(cache) == []


def test_no_fallback_where_the_distribution_is_unknown(cache, server, tmp_path, signing_key):
    coords = unreachable_default(server, tmp_path, signing_key)
    with pytest.raises(Unreachable):
        run(None, coords, explicit=False, distro=Distribution("arch", ""))


def test_the_task_turns_unreachable_into_one_line_and_status_1(
    cache, server, tmp_path, monkeypatch, signing_key
):
    coords = unreachable_default(server, tmp_path, signing_key)
    monkeypatch.setattr(sources, "load_coordinates", lambda: coords)
    task = one_line_errors(fetch.fetch_command)  # what tasks.py's fetch runs
    with pytest.raises(Exit) as error:
        task(source="ubuntu-test", tree=None)
    url = coords.git["ubuntu-test"].url
    assert error.value.code == 1
    assert error.value.message.startswith(f"memuse-kit: error: cannot reach {url}")
    assert "\n" not in error.value.message


# --tree and the current tree


def test_tree_option_records_a_tree_you_have(cache, tmp_path, capsys):
    tree = make_fake_tree(tmp_path / "mine", version="9.9.3")
    fetch.fetch_command(None, tree)
    assert fetch.last_fetched() == tree.resolve()
    assert workspace.resolve_tree(None, None) == tree.resolve()
    assert fetch.source_record(tree)["spec"] == "tree"
    assert capsys.readouterr().out == f"Linux 9.9.3 (tree 9.9.3): {tree.resolve()}\n"


def test_tree_without_version_fields_is_refused(cache, tmp_path):
    (tmp_path / "not-linux").mkdir()
    (tmp_path / "not-linux" / "Makefile").write_text("all:\n")
    with pytest.raises(KitError, match="VERSION/PATCHLEVEL"):
        fetch.fetch_command(None, tmp_path / "not-linux")
    assert fetch.last_fetched() is None


def test_a_removed_tree_is_not_current(cache, tmp_path):
    tree = make_fake_tree(tmp_path / "mine", version="9.9.3")
    fetch.fetch_command(None, tree)
    (tree / "Makefile").unlink()
    assert fetch.last_fetched() is None


def test_invoke_fetch_errors_are_one_line_and_exit_1(cache, tmp_path):
    missing = tmp_path / "nowhere"
    for args in (["--tree", str(missing)], ["--source", "bogus:1"]):
        done = subprocess.run(
            [sys.executable, "-m", "invoke", "fetch", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**os.environ, "MEMUSE_KIT_CACHE": str(cache)},
        )
        assert done.returncode == 1, done.stderr
        assert len(done.stderr.splitlines()) == 1, done.stderr
        assert done.stderr.startswith("memuse-kit: error: ")
