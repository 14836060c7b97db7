"""Packages out of bindeb-pkg: image and headers kept, linux-libc-dev set apart, all summed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional

from memuse_kit.building.builddir import BuildDir
from memuse_kit.core.digest import sha256_file

KEEP = ("linux-image-", "linux-headers-")
SUMS = "SHA256SUMS"


def _is_kept(name: str) -> bool:
    return name.startswith(KEEP) and "-dbg_" not in name


def collect(bd: BuildDir) -> List[Path]:
    """Move fresh packages from the build root into artifacts/, replacing the previous ones."""
    fresh = sorted(bd.root.glob("*.deb"))
    if not fresh:
        return kept_packages(bd)
    if bd.artifacts.exists():
        shutil.rmtree(bd.artifacts)
    bd.extra_artifacts.mkdir(parents=True)
    for deb in fresh:
        target = bd.artifacts if _is_kept(deb.name) else bd.extra_artifacts
        os.replace(deb, target / deb.name)
    for leftover in [*bd.root.glob("*.buildinfo"), *bd.root.glob("*.changes")]:
        leftover.unlink()
    kept = kept_packages(bd)
    lines = [f"{sha256_file(p)}  {p.name}\n" for p in kept]
    (bd.artifacts / SUMS).write_text("".join(lines))
    return kept


def kept_packages(bd: BuildDir) -> List[Path]:
    if not bd.artifacts.is_dir():
        return []
    return sorted(p for p in bd.artifacts.glob("*.deb") if _is_kept(p.name))


def image_package(bd: BuildDir, release: str) -> Optional[Path]:
    matches = [p for p in kept_packages(bd) if p.name.startswith(f"linux-image-{release}_")]
    return matches[0] if matches else None


def built_modules(bd: BuildDir) -> List[Path]:
    """The modules make built, from its modules.order (.o since 6.2, .ko before): a walk of
    obj/ would cost a no-op build half a second and find copies that are not the build's,
    such as the ones virtme-ng puts in obj/.virtme_mods."""
    order = bd.obj / "modules.order"
    lines = order.read_text().split() if order.is_file() else []
    return [
        bd.obj / (line[: -len(".o")] + ".ko" if line.endswith(".o") else line) for line in lines
    ]


def packages_up_to_date(bd: BuildDir, release: str) -> bool:
    """True when the image package is newer than the kernel image, its configuration and
    every module; a module that is missing means the packages cannot be judged current."""
    deb = image_package(bd, release)
    inputs = [bd.image(), bd.obj / ".config", *built_modules(bd)]
    try:
        newest = max(path.stat().st_mtime_ns for path in inputs)
    except OSError:
        return False
    return deb is not None and deb.stat().st_mtime_ns >= newest


def package_sums(bd: BuildDir, packages: List[Path]) -> Dict[str, str]:
    """name -> sha256 of each package: from SHA256SUMS when it was written after the package
    (a no-op build would otherwise read 20 MB of packages again), else read now."""
    recorded = _recorded_sums(bd)
    written = (bd.artifacts / SUMS).stat().st_mtime_ns if recorded else 0
    return {
        p.name: recorded[p.name]
        if p.name in recorded and written >= p.stat().st_mtime_ns
        else sha256_file(p)
        for p in packages
    }


def _recorded_sums(bd: BuildDir) -> Dict[str, str]:
    sums = bd.artifacts / SUMS
    lines = sums.read_text().splitlines() if sums.is_file() else []
    return {name: digest for digest, name in (line.split(maxsplit=1) for line in lines)}


def verify_sums(bd: BuildDir) -> Dict[str, bool]:
    return {
        name: (bd.artifacts / name).is_file() and sha256_file(bd.artifacts / name) == digest
        for name, digest in _recorded_sums(bd).items()
    }
