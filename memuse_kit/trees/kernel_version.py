"""The kernel version a tree holds, read from its top Makefile."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

from memuse_kit.core.errors import KitError

_FIELD = re.compile(r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)\s*=\s*(\S*)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class KernelVersion:
    major: int
    minor: int
    sublevel: int = 0
    extra: str = ""

    @property
    def tuple(self) -> Tuple[int, int, int]:
        return (self.major, self.minor, self.sublevel)

    @property
    def short(self) -> str:
        """X.Y, the name used for patches and compiler rules."""
        return f"{self.major}.{self.minor}"

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.sublevel}{self.extra}"

    def at_least(self, major: int, minor: int, sublevel: int = 0) -> bool:
        return self.tuple >= (major, minor, sublevel)


def parse_makefile(text: str) -> KernelVersion:
    fields = dict(_FIELD.findall(text))
    try:
        return KernelVersion(
            int(fields["VERSION"]),
            int(fields["PATCHLEVEL"]),
            int(fields.get("SUBLEVEL") or 0),
            fields.get("EXTRAVERSION", ""),
        )
    except (KeyError, ValueError) as error:
        raise KitError(f"top Makefile has no usable VERSION/PATCHLEVEL ({error})") from None


def read_tree_version(tree: Path) -> KernelVersion:
    makefile = tree / "Makefile"
    if not makefile.is_file():
        raise KitError(f"{tree} is not a kernel tree: it has no top-level Makefile")
    return parse_makefile(makefile.read_text(errors="replace"))
