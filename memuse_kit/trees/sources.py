"""Kernel source coordinates (data/sources.toml), the --source SPEC syntax and the fallback."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from memuse_kit.core.errors import KitError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

DATA_FILE = Path(__file__).resolve().parents[1] / "data" / "sources.toml"
OS_RELEASE = Path("/etc/os-release")

_RELEASE = re.compile(r"^\d+\.\d+(\.\d+)?$")
_SERIES = re.compile(r"^\d+\.\d+$")


@dataclass(frozen=True)
class GitSource:
    name: str
    url: str
    tag: str
    version: str
    tree_prefix: str


@dataclass(frozen=True)
class KernelOrg:
    base: str
    tarball: str
    sums: str
    sha256: Dict[str, str]

    def directory_url(self, release: str) -> str:
        return self.base.format(major=release.split(".")[0]).rstrip("/")

    def tarball_name(self, release: str) -> str:
        return self.tarball.format(version=release)


@dataclass(frozen=True)
class Debian:
    options: str
    package: str
    architecture: str
    series: Dict[str, List[str]]
    retries: int = 3


@dataclass(frozen=True)
class UbuntuRelease:
    packages: Dict[str, str]
    fallback: Optional[str]


@dataclass(frozen=True)
class Coordinates:
    default: str
    git: Dict[str, GitSource]
    kernel_org: KernelOrg
    debian: Debian
    ubuntu: Dict[str, UbuntuRelease]


@dataclass(frozen=True)
class Spec:
    kind: str  # "git", "kernel.org" or "debian"
    name: str  # as the user writes it: "ubuntu-hwe-5.11", "debian:7.2", "kernel.org:5.11"
    arg: str  # the git source's name, the release X.Y[.Z] or the series X.Y


@dataclass(frozen=True)
class Distribution:
    id: str
    codename: str


@dataclass(frozen=True)
class AptPlan:
    package: str
    lines: Optional[List[str]]  # None: the system's own apt sources and index


def load_coordinates(path: Path = DATA_FILE) -> Coordinates:
    try:
        data = tomllib.loads(path.read_text())
        return _coordinates(data)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise KitError(f"cannot read {path}: {error}") from None
    except (KeyError, TypeError, AttributeError) as error:
        raise KitError(f"{path} is missing or misspells {error}") from None


def _coordinates(data: Dict[str, Any]) -> Coordinates:
    git = {
        name: GitSource(name, e["url"], e["tag"], e["version"], e.get("tree_prefix", name))
        for name, e in data.get("git", {}).items()
    }
    ko = data["kernel_org"]
    deb = data["debian"]
    ubuntu = {
        codename: UbuntuRelease(dict(e.get("packages", {})), e.get("fallback"))
        for codename, e in data.get("ubuntu", {}).items()
    }
    return Coordinates(
        default=data["default"],
        git=git,
        kernel_org=KernelOrg(ko["base"], ko["tarball"], ko["sums"], dict(ko.get("sha256", {}))),
        debian=Debian(
            deb["options"],
            deb["package"],
            deb["architecture"],
            {series: list(lines) for series, lines in deb["series"].items()},
        ),
        ubuntu=ubuntu,
    )


def parse_spec(text: str, coords: Coordinates) -> Spec:
    text = text.strip()
    if text in coords.git:
        return Spec("git", text, text)
    prefix, colon, arg = text.partition(":")
    if colon and prefix == "kernel.org" and _RELEASE.match(arg):
        return Spec("kernel.org", text, arg)
    if colon and prefix == "debian" and _SERIES.match(arg):
        return Spec("debian", text, arg)
    named = ", ".join(sorted(coords.git))
    raise KitError(f"unknown source {text!r}: use {named}, debian:X.Y or kernel.org:X.Y[.Z]")


def running_distribution(path: Path = OS_RELEASE) -> Distribution:
    fields: Dict[str, str] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, eq, value = line.partition("=")
        if eq:
            fields[key.strip()] = value.strip().strip("\"'")
    return Distribution(fields.get("ID", ""), fields.get("VERSION_CODENAME", ""))


def fallback_spec(coords: Coordinates, distro: Distribution) -> Optional[str]:
    """The running distribution's own kernel source, as a spec; None when unknown."""
    if distro.id == "ubuntu":
        release = coords.ubuntu.get(distro.codename)
        return f"debian:{release.fallback}" if release and release.fallback else None
    for series, lines in coords.debian.series.items():
        words = lines[0].split() if lines else []
        if len(words) > 1 and words[1] == distro.codename:
            return f"debian:{series}"
    return None


def apt_plan(coords: Coordinates, series: str, distro: Distribution) -> AptPlan:
    """Which package gives debian:X.Y here, and from which apt sources."""
    if distro.id == "ubuntu":
        release = coords.ubuntu.get(distro.codename)
        if release and series in release.packages:
            return AptPlan(release.packages[series], None)
    lines = coords.debian.series.get(series)
    if not lines:
        known = ", ".join(sorted(coords.debian.series, key=_series_key))
        raise KitError(
            f"debian:{series} is not in {DATA_FILE.name} (known: {known}); add its apt suites there"
        )
    return AptPlan(coords.debian.package.format(series=series), list(lines))


def _series_key(series: str) -> List[int]:
    return [int(part) for part in series.split(".")]
