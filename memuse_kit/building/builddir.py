"""Where one build of one tree with one configuration lives (all under the cache)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from memuse_kit.core.cache import builds_dir


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
    def latest_for_tree(cls, tree: Path) -> Optional[BuildDir]:
        """The most recently finished successful build of a tree, any configuration."""
        probe = cls.for_tree(tree, "x")
        prefix = probe.root.name[: -len("x")]
        candidates = []
        for meta in builds_dir().glob(f"{prefix}*/metadata.json"):
            bd = cls(meta.parent)
            data = bd.read_metadata()
            if data.get("status") == "success" and bd.image().is_file():
                candidates.append((data.get("finished", ""), bd))
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
        return self.root / "metadata.json"

    def read_metadata(self) -> dict:
        try:
            return json.loads(self.metadata.read_text())
        except (OSError, ValueError):
            return {}

    def kernel_release(self) -> Optional[str]:
        path = self.obj / "include/config/kernel.release"
        return path.read_text().strip() if path.is_file() else None

    def image(self) -> Path:
        return self.obj / "arch/x86/boot/bzImage"
