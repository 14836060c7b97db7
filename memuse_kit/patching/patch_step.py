"""`invoke patch`: render the memuse edits into a tree, write the patch file, or revert.

Plan, validate, then act: the edits, the patch text and the output path are all computed
and checked before the first byte changes; a failure while writing the patch file puts the
tree back as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from memuse_kit.core.cache import trees_dir
from memuse_kit.core.output import report, say
from memuse_kit.core.safety import check_output_path
from memuse_kit.patching import patcher, patchfile


def clean_before_run(tree: Path) -> None:
    """Remove what a killed run left in the tree, saying so."""
    removed = patcher.clean_leftovers(tree)
    if removed:
        say(f"  removed {len(removed)} leftover(s) of an interrupted run in {tree}")


def output_path(plan: patcher.PatchPlan, out: Optional[str]) -> Path:
    """--out, or the default patches/ file, after refusing every unsafe kind of path."""
    trees = [plan.tree, trees_dir()]  # the tree, and every other tree the tool fetched
    if out is None:
        default = patchfile.default_path(plan)
        return check_output_path(str(default), "the patch file", trees, may_create_dir=True)
    return check_output_path(out, "--out", trees)


def patch_tree(tree: Path, out: Optional[str] = None, dry_run: bool = False) -> patcher.PatchPlan:
    if not dry_run:
        clean_before_run(tree)
    plan = patcher.plan_patch(tree)
    path = output_path(plan, None if out is None else str(out))
    text = patchfile.render_patch(plan)
    report(f"kernel {plan.kernel} in {tree}: memuse is syscall number {plan.nr}")
    for file in plan.files:
        state = "would change" if dry_run else "changed"
        report(f"  {state if file.needs_write else 'unchanged'}: {file.path}")
    if dry_run:
        report(f"  would write the patch: {path}")
        return plan
    saved = patcher.TreeState(tree).saved()
    patcher.apply_plan(plan)
    try:
        changed = patchfile.write_text(path, text)
    except BaseException:
        patcher.undo_apply(plan, saved)
        raise
    report(f"  patch: {path}{'' if changed else ' (unchanged)'}")
    return plan


def revert_tree(tree: Path, dry_run: bool = False) -> None:
    if dry_run:
        plan = patcher.plan_patch(tree)
        restore = [file.path for file in plan.files if file.current != file.original]
        for path in restore:
            report(f"  would restore: {path}")
        if not restore:
            report(f"{tree} has no memuse-kit edits: nothing would be restored")
        return
    clean_before_run(tree)
    result = patcher.revert(tree)
    if not result.was_patched:
        report(f"{tree} is not patched by memuse-kit: nothing to revert")
        return
    for path in result.restored:
        report(f"  restored: {path}")
    report(f"{tree} is pristine again")
