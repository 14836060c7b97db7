"""memuse-kit tasks. Each is a thin call into the memuse_kit package; see README.md.

`invoke` finds them through the repository's tasks.py, the installed `memuse-kit` command
(memuse_kit.program) through `namespace`: one set of tasks for both."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from invoke import Collection, Context, task
from invoke.exceptions import Exit

from memuse_kit.cli import VERBOSITY_HELP, one_line_errors
from memuse_kit.core.errors import KitError
from memuse_kit.core.output import report
from memuse_kit.handoff import hand_on, handed_build, handed_tree
from memuse_kit.patching import patch_step
from memuse_kit.patching.spec import check_syscall_name
from memuse_kit.trees.workspace import remember_tree, resolve_tree


def kit_task(*args: Any, help: Optional[Dict[str, str]] = None, **kwargs: Any) -> Any:
    """Invoke's @task, with the help of the -v/-q flags every task gets from one_line_errors."""
    return task(*args, help={**(help or {}), **VERBOSITY_HELP}, **kwargs)


@kit_task(
    help={
        "source": "ubuntu-hwe-5.11 (default), debian:X.Y, kernel.org:X.Y[.Z]",
        "tree": "use a kernel tree you already have instead of downloading one",
        "dry-run": "say what would be fetched, download and write nothing",
    }
)
@one_line_errors
def fetch(
    c: Context, source: Optional[str] = None, tree: Optional[str] = None, dry_run: bool = False
) -> None:
    """Download and unpack a kernel source into the cache (instant when cached)."""
    from memuse_kit.trees.fetch import fetch_command

    fetch_command(source=source, tree=tree, dry_run=dry_run)


@kit_task(
    iterable=["syscall"],
    help={
        "tree": "kernel tree to patch (default: the last fetched source)",
        "source": "fetch this source first and patch its tree",
        "syscall": "a syscall to add, by name (repeatable; default: the ones the tree has, "
        "else memuse); with --revert, one to take out (default: all)",
        "out": "patch file to write (default: patches/<source>-<version>-<syscalls>.patch)",
        "revert": "restore every edited file byte for byte (or take out --syscall ones)",
        "dry-run": "show what would change, write nothing",
    },
)
@one_line_errors
def patch(
    c: Context,
    tree: Optional[str] = None,
    source: Optional[str] = None,
    syscall: Optional[List[str]] = None,
    out: Optional[str] = None,
    revert: bool = False,
    dry_run: bool = False,
) -> None:
    """Add syscalls to a tree (numbers chosen from its tables) and write the patch."""
    if revert and out is not None:
        raise KitError("--out and --revert do not go together")
    names = [check_syscall_name(name) for name in syscall or []]
    root = resolve_tree(handed_tree(c, tree, source), source, dry_run=dry_run)
    if revert:
        patch_step.revert_tree(root, dry_run=dry_run, syscalls=names)
    else:
        patch_step.patch_tree(root, out, dry_run=dry_run, syscalls=names)
    remember_tree(tree, dry_run)
    hand_on(c, tree=root)


@kit_task(
    iterable=["tree"],
    help={
        "check": "fail if a shipped patch differs from what the templates give (no tree needed)",
        "tree": "a tree to use for its kernel series instead of fetching one (repeatable)",
    },
)
@one_line_errors
def patches(c: Context, check: bool = False, tree: Optional[List[str]] = None) -> None:
    """Regenerate every shipped patch in patches/ from the templates."""
    from memuse_kit.patching.shipped import regenerate_all

    regenerate_all([Path(t).expanduser().resolve() for t in tree or []], check=check)


@kit_task(
    iterable=["fragment"],
    help={
        "tree": "kernel tree to build (default: the last fetched source)",
        "source": "fetch this source first",
        "config": "running (/boot/config-$(uname -r)), vm, vm-debug or a file; default: "
        "running when that exists, else vm",
        "fragment": "extra config fragment merged last (repeatable)",
        "localmodconfig": "trim the config to the modules loaded now (make localmodconfig)",
        "lsmod": "trim to the modules of this lsmod output instead (implies --localmodconfig)",
        "debug-info": "keep debug info (off by default: smaller, faster)",
        "packages": "--no-packages: compile and link only, no bindeb-pkg: for invoke vm's "
        "edit loop (install then asks for a build with packages)",
        "reconfigure": "replace a .config you edited (it is saved as .config.edited)",
        "keep-config": "build the existing .config as it is",
        "jobs": "parallel jobs (default: number of CPUs, or the helpers' slots)",
        "distcc": "compile on these distcc helpers: distcc's hosts, e.g. 'box1/8 box2:3632/4'",
        "icecream": "compile on the helpers of icecream's scheduler (icecc, $ICECC_SCHEDULER)",
        "arch": "x86_64 (default) or arm64 (cross-compiled; configs vm and vm-debug)",
        "dry-run": "print the commands, run nothing",
    },
)
@one_line_errors
def build(
    c: Context,
    tree: Optional[str] = None,
    source: Optional[str] = None,
    config: Optional[str] = None,
    fragment: Optional[List[str]] = None,
    localmodconfig: bool = False,
    lsmod: Optional[str] = None,
    debug_info: bool = False,
    reconfigure: bool = False,
    keep_config: bool = False,
    jobs: Optional[str] = None,
    packages: bool = True,
    distcc: Optional[str] = None,
    icecream: bool = False,
    arch: Optional[str] = None,
    dry_run: bool = False,
) -> None:
    """Build .deb packages of the patched kernel (fetching and patching first if needed)."""
    from memuse_kit.building.kconfig import default_config
    from memuse_kit.building.pipeline import build_chain
    from memuse_kit.core import arch as arches
    from memuse_kit.core.options import parse_jobs
    from memuse_kit.trees.workspace import check_not_empty

    check_not_empty(config, "--config")
    target = arches.get(arch)
    parallel = parse_jobs(jobs)
    native = target is arches.DEFAULT
    result = build_chain(
        handed_tree(c, tree, source),
        source,
        config or (default_config() if native else "vm"),
        fragment or [],
        localmodconfig=localmodconfig,
        lsmod=lsmod,
        debug_info=debug_info,
        reconfigure=reconfigure,
        keep_config=keep_config,
        packages=packages,
        dry_run=dry_run,
        distcc=distcc,
        icecream=icecream,
        arch=target.name,
        **({"jobs": parallel} if parallel else {}),
    )
    if result is not None:
        remember_tree(tree, dry_run)
        hand_on(c, tree=result.tree, build=result.build_dir.root)


@kit_task(
    help={
        "tree": "kernel tree whose packages to install (default: the last fetched source)",
        "config": "which build of the tree (default: the latest successful one)",
        "build-dir": "a build directory copied from another machine (metadata.json, artifacts/)",
        "default": "boot the new kernel from now on, not just on the next reboot",
        "dry-run": "print the exact commands, change nothing",
    }
)
@one_line_errors
def install(
    c: Context,
    tree: Optional[str] = None,
    config: Optional[str] = None,
    build_dir: Optional[str] = None,
    default: bool = False,
    dry_run: bool = False,
) -> None:
    """Install the built image and headers packages and boot them once (grub-reboot)."""
    from memuse_kit.installing.install_step import install_command

    if build_dir:  # packages from elsewhere: nothing of this command line applies
        install_command(tree, config, default, dry_run, build_dir)
        return
    handed = handed_build(c, tree, None, config)
    install_command(handed_tree(c, tree, None), config, default, dry_run, None, handed)
    remember_tree(tree, dry_run)


@kit_task(
    help={
        "tree": "kernel tree whose kernel to remove (default: the last fetched source)",
        "config": "which build of the tree (default: the latest successful one)",
        "release": "kernel release to remove instead, e.g. 7.2.13-memuse",
        "dry-run": "print the exact commands, change nothing",
    }
)
@one_line_errors
def uninstall(
    c: Context,
    tree: Optional[str] = None,
    config: Optional[str] = None,
    release: Optional[str] = None,
    dry_run: bool = False,
) -> None:
    """Remove an installed memuse kernel's image and headers packages."""
    from memuse_kit.installing.install_step import uninstall_command

    uninstall_command(handed_tree(c, tree, None), config, release, dry_run)


@kit_task(
    help={
        "tree": "kernel tree whose build to boot (default: the last fetched source)",
        "source": "use this source's tree",
        "config": "which build of the tree (default: the latest successful one)",
        "memory": "guest memory (default 3G)",
        "accel": "auto (default: KVM only where it really boots), kvm or tcg",
        "timeout": "seconds before the VM is stopped (default 900)",
        "arch": "boot the build for this architecture: x86_64 (default) or arm64 (QEMU's "
        "virt machine, TCG, a Debian arm64 root)",
        "dry-run": "print the QEMU (or vng) command, run nothing",
    }
)
@one_line_errors
def vm(
    c: Context,
    tree: Optional[str] = None,
    source: Optional[str] = None,
    config: Optional[str] = None,
    memory: str = "3G",
    accel: str = "auto",
    timeout: str = "900",
    arch: Optional[str] = None,
    dry_run: bool = False,
) -> None:
    """Boot the built kernel in QEMU, run a command as root (after --), exit with its status.

    The default command is `memuse experiment`. The host is not touched.
    """
    from memuse_kit.trying.vm_step import vm_command

    handed = handed_build(c, tree, source, config)
    chosen = handed_tree(c, tree, source)
    status = vm_command(
        chosen, source, config, c.remainder, memory, accel, timeout, dry_run, handed, arch
    )
    remember_tree(tree, dry_run)
    if status:
        raise Exit(code=status)


@kit_task(
    help={
        "create": "build the image when the cache has none for the current recipe",
        "rebuild": "build it again even when it is cached",
    }
)
@one_line_errors
def machine(c: Context, create: bool = False, rebuild: bool = False) -> None:
    """The Debian 12 test machine's disk image (mmdebstrap, GRUB, QEMU): show it or create it."""
    from memuse_kit.trying.machine import machine_command

    machine_command(create=create, rebuild=rebuild)


@kit_task(
    help={
        "name": "module under memuse_kit/templates/ (default: hello)",
        "tree": "kernel tree whose build to compile against",
        "config": "which build of the tree (default: the latest successful one)",
        "arch": "the build for this architecture: x86_64 (default) or arm64",
        "dry-run": "print the make command, run nothing",
    }
)
@one_line_errors
def module(
    c: Context,
    name: str = "hello",
    tree: Optional[str] = None,
    config: Optional[str] = None,
    arch: Optional[str] = None,
    dry_run: bool = False,
) -> None:
    """Build an out-of-tree module (Part 1 of the report: hello) against the built kernel."""
    from memuse_kit.trying.vm_step import module_command

    handed = handed_build(c, tree, None, config)
    module_command(name, handed_tree(c, tree, None), config, dry_run, handed, arch)
    remember_tree(tree, dry_run)


@kit_task(
    iterable=["arg", "abi", "header"],
    help={
        "name": "the syscall's name (a C identifier, lower case)",
        "arg": "a parameter, its C type then its name, e.g. 'pid_t pid' (repeatable, in order)",
        "description": "what it does, in one line",
        "abi": "x86_64, i386 or generic (repeatable; default: all three)",
        "header": "a header its body needs, e.g. linux/fdtable.h (repeatable)",
        "min-kernel": "the oldest kernel series it is for (default 5.10)",
        "into": "the directory to create NAME/ in (default: the kit's syscalls in the "
        "repository, else $MEMUSE_KIT_SYSCALLS or ~/.config/memuse-kit/syscalls)",
        "dry-run": "check everything, say what would be created, write nothing",
    },
)
@one_line_errors
def new(
    c: Context,
    name: str,
    arg: Optional[List[str]] = None,
    description: Optional[str] = None,
    abi: Optional[List[str]] = None,
    header: Optional[List[str]] = None,
    min_kernel: str = "5.10",
    into: Optional[str] = None,
    dry_run: bool = False,
) -> None:
    """Scaffold a new syscall: syscall.toml, a body returning -ENOSYS, a guest test stub."""
    from memuse_kit.patching import scaffold

    wanted = scaffold.request(name, arg or [], description, abi or [], header or [], min_kernel)
    scaffold.create(wanted, scaffold.target_dir(into), dry_run=dry_run)


@kit_task(name="list")
@one_line_errors
def list_syscalls(c: Context) -> None:
    """The syscalls the kit knows, and where each one's folder is."""
    from memuse_kit.patching import spec

    for loaded in spec.load_specs(spec.available()):
        report(f"{loaded.signature}: {loaded.description} ({loaded.folder})")


syscall = Collection("syscall", new, list_syscalls)
namespace = Collection(
    fetch, patch, patches, build, install, uninstall, vm, machine, module, syscall
)
