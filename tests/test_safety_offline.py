"""Issue 9: a fetch whose verified download is already in the cache works offline, even when
the unpacked tree is gone; without a verified download, offline stays one clear error."""

from __future__ import annotations

import shutil

import pytest

from memuse_kit.trees.download import Unreachable
from tests.fetch_support import Archive, coordinates
from tests.test_fetch import (  # the fixtures and publishers of the fetch tests
    cache,  # noqa: F401
    publish_debian,
    publish_kernel_org,
    run,
    server,  # noqa: F401
    signing_key,  # noqa: F401
)


def _forget_trees(root) -> None:
    shutil.rmtree(root / "trees")
    (root / "current.json").unlink()


def test_kernel_org_refetch_from_the_verified_download_offline(
    cache,  # noqa: F811
    server,  # noqa: F811
    tmp_path,
    capsys,
):
    _, coords = publish_kernel_org(server, tmp_path)
    first = run("kernel.org:9.9", coords)
    _forget_trees(cache)
    server.close()
    again = run("kernel.org:9.9", coords)
    assert again.tree == first.tree and again.kernel == "9.9.0" and not again.cached
    assert again.sha256 == first.sha256
    assert "using the verified linux-9.9.tar.xz" in capsys.readouterr().err


def test_kernel_org_offline_without_a_verified_download_is_unreachable(
    cache,  # noqa: F811
    server,  # noqa: F811
    tmp_path,
):
    _, coords = publish_kernel_org(server, tmp_path)
    server.close()
    with pytest.raises(Unreachable):
        run("kernel.org:9.9", coords)


def test_debian_refetch_from_the_verified_download_offline(
    cache,  # noqa: F811
    server,  # noqa: F811
    tmp_path,
    signing_key,  # noqa: F811
    capsys,
):
    lines = publish_debian(server, tmp_path, signing_key)
    coords = coordinates(Archive(debian_series={"9.9": lines}, keyring=signing_key.keyring))
    first = run("debian:9.9", coords)
    _forget_trees(cache)
    server.close()
    again = run("debian:9.9", coords)
    assert (again.tree, again.version, again.sha256) == (first.tree, first.version, first.sha256)
    assert "using the apt index kept before" in capsys.readouterr().err
