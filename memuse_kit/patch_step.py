"""`invoke patch`: render the memuse edits into a tree, write the patch file, or revert."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from . import patcher, patchfile
from .cli import say


def patch_tree(tree: Path, out: Optional[Path] = None, dry_run: bool = False) -> patcher.PatchPlan:
    plan = patcher.plan_patch(tree)
    say(f"kernel {plan.kernel} in {tree}: memuse is syscall number {plan.nr}")
    for file in plan.files:
        state = "would change" if dry_run else "changed"
        say(f"  {state if file.needs_write else 'unchanged'}: {file.path}")
    if dry_run:
        return plan
    patcher.apply_plan(plan)
    path, changed = patchfile.write_patch(plan, out)
    say(f"  patch: {path}{'' if changed else ' (unchanged)'}")
    return plan


def revert_tree(tree: Path, dry_run: bool = False) -> None:
    if dry_run:
        plan = patcher.plan_patch(tree)
        for file in plan.files:
            if file.current != file.original:
                say(f"  would restore: {file.path}")
        return
    result = patcher.revert(tree)
    if not result.was_patched:
        say(f"{tree} is not patched by memuse-kit: nothing to revert")
        return
    for path in result.restored:
        say(f"  restored: {path}")
    say(f"{tree} is pristine again")
