"""`invoke module NAME`: build memuse_kit/templates/NAME out of tree against a built kernel."""

from __future__ import annotations

import shutil
from pathlib import Path

from memuse_kit.building import compiler
from memuse_kit.building.builddir import BuildDir
from memuse_kit.core.cache import cache_root
from memuse_kit.core.errors import KitError
from memuse_kit.core.output import report
from memuse_kit.core.runner import Runner
from memuse_kit.patching.templates import TEMPLATES_DIR
from memuse_kit.trees.kernel_version import read_tree_version


def module_source(name: str) -> Path:
    source = TEMPLATES_DIR / name
    if "/" in name or name.startswith(".") or not (source / "Kbuild").is_file():
        known = sorted(p.parent.name for p in TEMPLATES_DIR.glob("*/Kbuild"))
        raise KitError(f"no module {name!r} under {TEMPLATES_DIR} (known: {', '.join(known)})")
    return source


def build_module(name: str, tree: Path, bd: BuildDir, dry_run: bool = False) -> Path:
    """Copy the module's sources to the cache and make it there; returns the .ko path."""
    source = module_source(name)
    if not (bd.obj / "Module.symvers").is_file() and not dry_run:
        raise KitError(f"{bd.obj} holds no built kernel with modules: run invoke build first")
    work = cache_root() / "modules" / f"{bd.root.name}-{name}"
    if not dry_run:
        work.mkdir(parents=True, exist_ok=True)
        for item in source.iterdir():
            target = work / item.name
            if not target.exists() or target.read_bytes() != item.read_bytes():
                shutil.copyfile(item, target)
    cc = compiler.pick(read_tree_version(tree), use_ccache=False, arch=bd.arch())
    cmd = ["make", "-C", str(bd.obj), f"M={work}", *cc.make_args(), "modules"]
    Runner(dry_run=dry_run).run(cmd)
    module = work / f"{name}.ko"
    if not dry_run:
        report(f"module: {module}")
    return module
