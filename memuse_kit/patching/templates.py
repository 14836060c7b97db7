"""The Jinja environments that render every kernel edit: memuse_kit/templates/ and the folders
of syscalls that live elsewhere (spec.user_dir())."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Set

from memuse_kit.core.errors import KitError

if TYPE_CHECKING:  # Jinja loads on the first render: a tree found unchanged renders nothing
    import jinja2

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


def toml_value(value: Any) -> str:
    """A string or a list of strings as TOML writes it (a JSON string is a TOML basic string)."""
    return json.dumps(value, ensure_ascii=False)


def environment() -> jinja2.Environment:
    """The environment for the current TEMPLATES_DIR (tests point it at a modified copy)."""
    return _environment(TEMPLATES_DIR)


@lru_cache(maxsize=None)
def _environment(root: Path) -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(root)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["tab_pad"] = tab_pad
    env.filters["toml"] = toml_value
    return env


def render(template: str, /, **context: Any) -> str:
    return render_from(TEMPLATES_DIR, template, **context)


def render_from(root: Path, template: str, /, **context: Any) -> str:
    """A template under root, rendered; every template problem is one KitError line."""
    import jinja2

    name = template
    try:
        return _environment(root).get_template(name).render(**context)
    except jinja2.TemplateNotFound:
        raise KitError(f"template {name} not found under {root}") from None
    except jinja2.TemplateSyntaxError as error:
        raise KitError(f"{root / name}:{error.lineno}: {error.message}") from None
    except jinja2.UndefinedError as error:
        raise KitError(f"template {root / name}: {error}") from None


def variables_used(root: Path, name: str, /) -> Set[str]:
    """The names a template reads from its context (facts, probes, spec, ...)."""
    import jinja2
    import jinja2.meta

    env = _environment(root)
    try:
        source = env.loader.get_source(env, name)[0]  # type: ignore[union-attr]
        return set(jinja2.meta.find_undeclared_variables(env.parse(source)))
    except jinja2.TemplateNotFound:
        raise KitError(f"template {name} not found under {root}") from None
    except jinja2.TemplateSyntaxError as error:
        raise KitError(f"{root / name}:{error.lineno}: {error.message}") from None
