"""memuse-kit tasks. Each is a thin call into the memuse_kit package; see README.md."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from invoke import Context, task

from memuse_kit import patch_step
from memuse_kit.cli import one_line_errors
from memuse_kit.errors import KitError
from memuse_kit.workspace import resolve_tree


@task(
    help={
        "source": "ubuntu-hwe-5.11 (default), debian:X.Y, kernel.org:X.Y[.Z]",
        "tree": "use a kernel tree you already have instead of downloading one",
    }
)
@one_line_errors
def fetch(c: Context, source: Optional[str] = None, tree: Optional[str] = None) -> None:
    """Download and unpack a kernel source into the cache (instant when cached)."""
    from memuse_kit.fetch import fetch_command

    fetch_command(source=source, tree=Path(tree) if tree else None)


@task(
    help={
        "tree": "kernel tree to patch (default: the last fetched source)",
        "source": "fetch this source first and patch its tree",
        "out": "patch file to write (default: patches/memuse-<kernelversion>.patch)",
        "revert": "restore every edited file byte for byte",
        "dry-run": "show what would change, write nothing",
    }
)
@one_line_errors
def patch(
    c: Context,
    tree: Optional[str] = None,
    source: Optional[str] = None,
    out: Optional[str] = None,
    revert: bool = False,
    dry_run: bool = False,
) -> None:
    """Add the memuse syscall to a tree (number chosen from its tables) and write the patch."""
    root = resolve_tree(tree, source)
    if revert:
        if out:
            raise KitError("--out and --revert do not go together")
        patch_step.revert_tree(root, dry_run=dry_run)
    else:
        patch_step.patch_tree(root, Path(out) if out else None, dry_run=dry_run)


@task(help={"check": "fail if a shipped patch differs from what the templates give"})
@one_line_errors
def patches(c: Context, check: bool = False) -> None:
    """Regenerate every shipped patch in patches/ from the templates."""
    from memuse_kit.shipped import regenerate_all

    regenerate_all(check=check)


@task(
    iterable=["fragment"],
    help={
        "tree": "kernel tree to build (default: the last fetched source)",
        "source": "fetch this source first",
        "config": "running (default: /boot/config-$(uname -r)), vm, vm-nodebug, or a file",
        "fragment": "extra config fragment merged last (repeatable)",
        "debug-info": "keep debug info (off by default: smaller, faster)",
        "reconfigure": "replace a .config you edited (it is saved as .config.edited)",
        "keep-config": "build the existing .config as it is",
        "jobs": "parallel jobs (default: number of CPUs)",
        "dry-run": "print the commands, run nothing",
    },
)
@one_line_errors
def build(
    c: Context,
    tree: Optional[str] = None,
    source: Optional[str] = None,
    config: str = "running",
    fragment: Optional[List[str]] = None,
    debug_info: bool = False,
    reconfigure: bool = False,
    keep_config: bool = False,
    jobs: int = 0,
    dry_run: bool = False,
) -> None:
    """Build .deb packages of the patched kernel (fetching and patching first if needed)."""
    from memuse_kit.pipeline import build_chain

    build_chain(
        tree,
        source,
        config,
        fragment or [],
        debug_info=debug_info,
        reconfigure=reconfigure,
        keep_config=keep_config,
        dry_run=dry_run,
        **({"jobs": jobs} if jobs else {}),
    )


@task
@one_line_errors
def install(c: Context) -> None:
    """Install the built kernel packages and boot them once (not yet)."""
    raise KitError("install is not implemented yet")


@task
@one_line_errors
def vm(c: Context) -> None:
    """Boot the built kernel in QEMU and run a command in it (not yet)."""
    raise KitError("vm is not implemented yet")
