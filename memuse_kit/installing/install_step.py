"""Task glue for `invoke install` and `uninstall`: find the build, then install or remove it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from memuse_kit.building.builddir import BuildDir, find_build
from memuse_kit.core.errors import KitError
from memuse_kit.core.runner import Runner
from memuse_kit.installing import install as installer
from memuse_kit.trees.workspace import resolve_tree


def install_command(
    tree: Optional[str],
    config: Optional[str],
    default: bool,
    dry_run: bool,
    build_dir: Optional[str] = None,
    handed: Optional[Path] = None,
) -> None:
    host, runner = installer.Host(), Runner(dry_run)
    if build_dir:
        if tree or config:
            raise KitError("--build-dir names the packages itself: leave out --tree and --config")
        handed_in = BuildDir(Path(build_dir).expanduser().resolve())
        installer.install(handed_in, None, host, runner, default)
        return
    root = resolve_tree(tree, None, dry_run=dry_run)
    installer.install(find_build(root, config, handed), root, host, runner, default)


def uninstall_command(
    tree: Optional[str], config: Optional[str], release: Optional[str], dry_run: bool
) -> None:
    if not release:
        root = resolve_tree(tree, None, dry_run=dry_run)
        release = installer.release_of(find_build(root, config))
    if not release:
        raise KitError("no built kernel to name: pass --release")
    installer.uninstall(release, installer.Host(), Runner(dry_run))
