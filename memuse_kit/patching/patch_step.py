"""`invoke patch`: render syscalls into a tree, write the patch file, or revert.

Plan, validate, then act: the edits, the patch text and the output path are all computed
and checked before the first byte changes; a failure while writing the patch file puts the
tree back as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

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
        from memuse_kit.trees.fetch import source_label

        default = patchfile.default_path(plan, source_label(plan.tree))
        return check_output_path(str(default), "the patch file", trees, may_create_dir=True)
    return check_output_path(out, "--out", trees)


def describe(plan: patcher.PatchPlan) -> str:
    """memuse is syscall number 472, fdcount 473"""
    numbers = list(plan.numbers.items())
    first = f"{numbers[0][0]} is syscall number {numbers[0][1]}"
    return ", ".join([first, *(f"{name} {nr}" for name, nr in numbers[1:])])


def patch_tree(
    tree: Path, out: Optional[str] = None, dry_run: bool = False, syscalls: Sequence[str] = ()
) -> patcher.PatchPlan:
    if not dry_run:
        clean_before_run(tree)
    plan = patcher.plan_patch(tree, syscalls)
    path = output_path(plan, None if out is None else str(out))
    text = patchfile.render_patch(plan)
    report(f"kernel {plan.kernel} in {tree}: {describe(plan)}")
    for file in plan.files:
        if file.needs_write:
            report(f"  {'would change' if dry_run else 'changed'}: {file.path}{_how(file)}")
        elif file.edited:
            report(f"  unchanged: {file.path}")
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
    patcher.remember(plan)
    report(f"  patch: {path}{'' if changed else ' (unchanged)'}")
    return plan


def _how(file: patcher.FilePlan) -> str:
    if file.current is None:
        return " (new)"
    if file.patched is None:
        return " (removed)"
    return " (back as it was)" if not file.edited else ""


def revert_tree(tree: Path, dry_run: bool = False, syscalls: Sequence[str] = ()) -> None:
    recorded = patcher.recorded_syscalls(tree)
    absent = [name for name in syscalls if name not in recorded]
    for name in absent:
        report(f"{tree} has no {name} from memuse-kit: nothing to revert for it")
    if syscalls and not set(syscalls) & set(recorded):
        return
    if dry_run:
        _revert_dry_run(tree, syscalls)
        return
    clean_before_run(tree)
    result = patcher.revert(tree, syscalls)
    if not result.was_patched:
        report(f"{tree} is not patched by memuse-kit: nothing to revert")
        return
    for path in result.restored:
        report(f"  restored: {path}")
    if result.remaining:
        report(f"{tree} still has {patcher.describe_numbers(result.remaining)}")
    else:
        report(f"{tree} is pristine again")


def _revert_dry_run(tree: Path, syscalls: Sequence[str]) -> None:
    recorded = patcher.recorded_syscalls(tree)
    if syscalls and set(recorded) - set(syscalls):
        plan = patcher.plan_without(tree, syscalls)
        restore = [file.path for file in plan.files if file.needs_write]
    else:
        restore = patcher.files_to_restore(tree)
    for path in restore:
        report(f"  would restore: {path}")
    if not restore:
        report(f"{tree} has no memuse-kit edits: nothing would be restored")
