"""The Jinja environment that renders every kernel edit from memuse_kit/templates/."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from memuse_kit.core.errors import KitError

# package data: found wherever memuse_kit is installed, not only in the repository
TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates"
TAB = 8


def tab_pad(text: str, start_column: int, target_column: int) -> str:
    """text followed by the tabs that move the cursor from start_column to target_column."""
    column = start_column + len(text)
    tabs = ""
    while column < target_column or not tabs:
        column = (column // TAB + 1) * TAB
        tabs += "\t"
    return text + tabs


def environment() -> jinja2.Environment:
    """The environment for the current TEMPLATES_DIR (tests point it at a modified copy)."""
    return _environment(TEMPLATES_DIR)


@lru_cache(maxsize=None)
def _environment(root: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(root)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["tab_pad"] = tab_pad
    return env


def render(name: str, **context: Any) -> str:
    try:
        return environment().get_template(name).render(**context)
    except jinja2.TemplateNotFound:
        raise KitError(f"template {name} not found under {TEMPLATES_DIR}") from None
    except jinja2.UndefinedError as error:
        raise KitError(f"template {name}: {error}") from None
