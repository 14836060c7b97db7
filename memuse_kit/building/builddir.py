"""Where one build of one tree with one configuration lives (all under the cache)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from memuse_client.build_record import FILE_NAME, BuildRecord, RecordError, read_record
from memuse_kit.core import arch as arches
from memuse_kit.core.arch import Arch
from memuse_kit.core.cache import builds_dir
from memuse_kit.core.errors import KitError


@dataclass(frozen=True)
class BuildDir:
    root: Path

    @classmethod
    def for_tree(cls, tree: Path, config: str) -> BuildDir:
        resolved = tree.resolve()
        digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:8]
        label = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(config).name if "/" in config else config)
        return cls(builds_dir() / f"{resolved.name}-{digest}-{label}")

    @classmethod
    def latest_for_tree(cls, tree: Path, arch: Arch = arches.DEFAULT) -> Optional[BuildDir]:
        """The most recently finished successful build of a tree for an architecture, any
        configuration."""
        probe = cls.for_tree(tree, "x")
        prefix = probe.root.name[: -len("x")]
        candidates = []
        for meta in builds_dir().glob(f"{prefix}*/{FILE_NAME}"):
            bd = cls(meta.parent)
            try:
                record = bd.read_record()
            except KitError:
                continue  # damaged, or from another memuse-kit: not a build to use
            # one read of obj/.config: bd.image() would read it again for the image's path
            if record is None or not record.succeeded or bd.arch() is not arch:
                continue
            if (bd.obj / arch.image_path).is_file():
                candidates.append((record.finished, bd))
        return max(candidates, key=lambda item: item[0])[1] if candidates else None

    @property
    def obj(self) -> Path:
        """make O= directory; bindeb-pkg drops its packages in its parent, self.root."""
        return self.root / "obj"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def extra_artifacts(self) -> Path:
        return self.artifacts / "extra"

    @property
    def log(self) -> Path:
        return self.root / "build.log"

    @property
    def metadata(self) -> Path:
        return self.root / FILE_NAME

    def read_record(self) -> Optional[BuildRecord]:
        """None when nothing was built here yet; a record that cannot be used is a KitError."""
        if not self.metadata.exists():
            return None
        try:
            return read_record(self.metadata)
        except RecordError as error:
            raise KitError(str(error)) from None

    def kernel_release(self) -> Optional[str]:
        path = self.obj / "include/config/kernel.release"
        return path.read_text().strip() if path.is_file() else None

    def arch(self) -> Arch:
        """The architecture obj/.config is for (x86_64 before there is one)."""
        config = self.obj / ".config"
        text = config.read_text(errors="replace") if config.is_file() else ""
        return arches.of_config(text) or arches.DEFAULT

    def image(self) -> Path:
        return self.obj / self.arch().image_path


def find_build(
    tree: Path,
    config: Optional[str],
    handed: Optional[Path] = None,
    arch: Arch = arches.DEFAULT,
) -> BuildDir:
    """The build this command line made (handed on), else --config's, else the latest."""
    if handed is not None:
        return BuildDir(handed)
    if config:
        return BuildDir.for_tree(tree, config + arches.label_suffix(arch))
    latest = BuildDir.latest_for_tree(tree, arch)
    if latest is None:
        native = arch is arches.DEFAULT
        which, flag = ("", "") if native else (f" {arch.name}", f" --arch {arch.name}")
        raise KitError(
            f"{tree} has no successful{which} build yet: run invoke build{flag} --config vm"
        )
    return latest
