"""The five kinds of memory memuse(pid, mem_type) measures, numbered as the kernel numbers them."""

from __future__ import annotations

import enum
from typing import List, Union


class Kind(enum.IntEnum):
    STACK = 1
    KERNEL_STACK = 2
    HEAP = 3
    KERNEL_MAPPINGS = 4
    TOTAL = 5

    @property
    def key(self) -> str:
        """The name used on the command line and in JSON: stack, kernel_stack, ..."""
        return self.name.lower()

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    Kind.STACK: "call stack",
    Kind.KERNEL_STACK: "kernel stack",
    Kind.HEAP: "heap",
    Kind.KERNEL_MAPPINGS: "kernel mappings",
    Kind.TOTAL: "total",
}

ALL_KINDS: List[Kind] = list(Kind)
KIND_KEYS: List[str] = [kind.key for kind in Kind]


def parse_kind(value: Union[Kind, int, str]) -> Kind:
    """A Kind from itself, its number (1-5, also as a string) or its name (any case, - or _).

    Raises ValueError naming the valid kinds.
    """
    if isinstance(value, Kind):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        text = str(value).strip().lower().replace("-", "_").replace(" ", "_")
        if not text.isdigit():
            for kind in Kind:
                if kind.key == text:
                    return kind
            raise ValueError(f"unknown kind {value!r} (expected one of {', '.join(KIND_KEYS)})")
        number = int(text)
    try:
        return Kind(number)
    except ValueError:
        raise ValueError(
            f"unknown kind {value!r} (expected 1-5 or one of {', '.join(KIND_KEYS)})"
        ) from None
