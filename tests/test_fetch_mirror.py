"""The shipped Debian coordinates against the real archive: index and exact URL only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from memuse_kit.core.runner import Runner
from memuse_kit.trees import sources
from memuse_kit.trees.debsource import Apt
from memuse_kit.trees.sources import Distribution

COORDS = sources.load_coordinates()
KEYRING = re.search(r"signed-by=(\S+)", COORDS.debian.options)


@pytest.mark.slow
@pytest.mark.skipif(
    KEYRING is None or not Path(KEYRING.group(1)).is_file(),
    reason="needs debian-archive-keyring",
)
@pytest.mark.parametrize("series", sorted(COORDS.debian.series))
def test_debian_archive_offers_each_series(series, tmp_path):
    plan = sources.apt_plan(COORDS, series, Distribution("debian", "bookworm"))
    apt = Apt(
        Runner(),
        tmp_path / "apt",
        plan.lines,
        options=COORDS.debian.options,
        architecture=COORDS.debian.architecture,
    )
    apt.update()
    package = apt.locate(plan.package)
    assert re.fullmatch(rf"{re.escape(series)}\.\d+-\d+", package.version)
    assert package.url.startswith("http://deb.debian.org/debian")
    assert package.url.endswith(f"/linux-source-{series}_{package.version}_all.deb")
    assert re.fullmatch(r"[0-9a-f]{64}", package.sha256)
    assert package.size > 100_000_000
