"""The chain behind `invoke build install`: each step skips itself when its output is current."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from memuse_kit.building import distributed, kconfig, preflight
from memuse_kit.building.build import BuildOptions, BuildResult, build
from memuse_kit.core import arch as arches
from memuse_kit.core.cache import builds_dir, trees_dir
from memuse_kit.core.errors import KitError
from memuse_kit.core.output import report
from memuse_kit.patching import patcher
from memuse_kit.patching.patch_step import clean_before_run
from memuse_kit.patching.spec import DEFAULT_SYSCALLS
from memuse_kit.trees.workspace import NotFetched, resolve_tree


def ensure_patched(
    tree: Path, dry_run: bool = False, syscalls: Sequence[str] = ()
) -> patcher.PatchPlan:
    """The tree with the syscalls it has brought up to date, and `syscalls` added (memuse
    on a tree that has none)."""
    if not dry_run:
        clean_before_run(tree)
    plan = patcher.plan_patch(tree, syscalls)
    numbers = patcher.describe_numbers(plan.numbers)
    if not plan.changed:
        if not dry_run:
            patcher.remember(plan)
        report(f"{tree}: already patched ({numbers})")
        return plan
    if dry_run:
        report(f"# patch: would patch {', '.join(f.path for f in plan.changed)} ({numbers})")
        return plan
    patcher.apply_plan(plan)
    patcher.remember(plan)
    report(f"{tree}: patched ({numbers}; {len(plan.changed)} files)")
    return plan


def build_chain(
    tree: Optional[str],
    source: Optional[str],
    config: str,
    fragments: Sequence[str] = (),
    **flags: object,
) -> Optional[BuildResult]:
    dry_run = bool(flags.get("dry_run"))
    check_engine_options(flags.get("distcc"), bool(flags.get("icecream")))
    target = arches.get(str(flags.get("arch") or arches.DEFAULT.name))
    if not dry_run:
        # what stops the build anyway stops it before anything is fetched or patched
        preflight.check_not_root()
        kconfig.fragment_paths(kconfig.profile_for(config, target), fragments)
    try:
        root = resolve_tree(tree, source, dry_run=dry_run)
    except NotFetched as missing:
        _plan_unfetched(missing.spec, config, fragments, target)
        return None
    plan = ensure_patched(root, dry_run=dry_run)
    from memuse_kit.trees.fetch import source_record

    options = BuildOptions(tree=root, config=config, fragments=tuple(fragments), **flags)  # type: ignore[arg-type]
    options.source = source_record(root)
    options.planned_syscalls = plan.numbers
    options.planned_probes = plan.probe_results()
    return build(options)


def check_engine_options(distcc: object, icecream: bool) -> None:
    """--distcc and --icecream are checked before anything is fetched or patched."""
    if distcc is not None and icecream:
        raise KitError("give --distcc or --icecream, not both")
    if distcc is not None:
        distributed.parse_distcc_hosts(str(distcc))


def _plan_unfetched(spec: str, config: str, fragments: Sequence[str], target: arches.Arch) -> None:
    """The whole plan of a build whose tree is not fetched yet: nothing can be run or read."""
    # the same checks as a build
    kconfig.fragment_paths(kconfig.profile_for(config, target), fragments)
    extra = "".join(f" + {fragment}" for fragment in fragments)
    for line in (
        f"# fetch: would download and unpack {spec} into {trees_dir()}",
        f"# patch: would add {' and '.join(DEFAULT_SYSCALLS)} to the fetched tree "
        "(numbers chosen from its tables)",
        f"# configure: would generate the {config}{extra} configuration in {builds_dir()}",
        "# compile: would run make O=<build dir>/obj -j<jobs> in the tree",
        "# package: would run make bindeb-pkg, packages into <build dir>/artifacts",
    ):
        report(line)
