"""The chain behind `invoke build install`: each step skips itself when its output is current."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from . import patcher
from .build import BuildOptions, BuildResult, build
from .cli import say
from .workspace import resolve_tree


def ensure_patched(tree: Path, dry_run: bool = False) -> patcher.PatchPlan:
    plan = patcher.plan_patch(tree)
    if not plan.changed:
        say(f"{tree}: memuse (syscall {plan.nr}) already patched in")
        return plan
    if dry_run:
        say(f"{tree}: would patch {', '.join(f.path for f in plan.changed)}")
        return plan
    patcher.apply_plan(plan)
    say(f"{tree}: patched memuse in as syscall {plan.nr} ({len(plan.changed)} files)")
    return plan


def build_chain(
    tree: Optional[str],
    source: Optional[str],
    config: str,
    fragments: Sequence[str] = (),
    **flags: object,
) -> BuildResult:
    root = resolve_tree(tree, source)
    ensure_patched(root, dry_run=bool(flags.get("dry_run")))
    from .fetch import source_record

    options = BuildOptions(tree=root, config=config, fragments=tuple(fragments), **flags)  # type: ignore[arg-type]
    options.source = source_record(root)
    return build(options)
