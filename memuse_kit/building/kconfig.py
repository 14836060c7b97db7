"""The kernel configuration of a build: a profile or a file, fragments, then sanitizing.

The configuration is generated next to the real one (KCONFIG_CONFIG=.config.memuse-new)
and only replaces obj/.config when it differs, so an unchanged configuration never
triggers a rebuild, and a .config the user edited is never overwritten silently.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from memuse_kit.building.compiler import Compiler
from memuse_kit.core import arch as arches
from memuse_kit.core import atomic
from memuse_kit.core.arch import Arch
from memuse_kit.core.digest import sha256_file
from memuse_kit.core.errors import KitError
from memuse_kit.core.output import warn
from memuse_kit.core.runner import Runner
from memuse_kit.patching.templates import TEMPLATES_DIR
from memuse_kit.trees.kernel_version import KernelVersion

CANDIDATE = ".config.memuse-new"
LOCALVERSION = "-memuse"
# Seconds a memuse kernel waits after a panic before it reboots (initramfs-tools honours the
# same panic= when it cannot find the root disk): a kernel that cannot come up reboots by
# itself, GRUB's one-shot entry is used up, and the machine comes back on its old kernel.
PANIC_REBOOT_SECONDS = 10
# Objects a built-in option compiles (1993 objects for the 1257 options of the 7.2 vm
# build), and a module option: its objects plus the .mod.o modpost adds (an estimate); the
# size past which a build from a distribution's configuration gets the suggestion to trim it
OBJECTS_PER_BUILTIN = 1.6
OBJECTS_PER_MODULE = 3.0
LARGE_CONFIG_OBJECTS = 10_000


@dataclass(frozen=True)
class Profile:
    base: str  # a make target of MAKE_BASES, "running" or a path
    fragments: Tuple[str, ...] = ()
    description: str = ""
    # the kernel mounts virtme-ng's 9p root, whatever else the fragments leave out
    virtme_root: bool = False


# Bases the kernel makes itself: defconfig, or allnoconfig (everything off that can be) for
# a configuration that lists what it needs
MAKE_BASES = ("defconfig", "allnoconfig")

PROFILES: Dict[str, Profile] = {
    "running": Profile("running", (), "the running kernel's /boot/config-$(uname -r)"),
    "vm": Profile(
        "allnoconfig", ("vm.config",), "the fast kernel for QEMU (virtme-ng)", virtme_root=True
    ),
    "vm-full": Profile(
        "defconfig", ("vm-full.config",), "defconfig for QEMU and the test machine (GRUB)"
    ),
    "vm-debug": Profile(
        "defconfig", ("vm-full.config", "debug.config"), "vm-full with KASAN and lockdep"
    ),
}

_OPTION = re.compile(r"^(CONFIG_\w+)=(.*)$|^# (CONFIG_\w+) is not set$")


def default_config() -> str:
    """On a host with its kernel's config, build like the running kernel; else the VM kernel."""
    return "running" if running_config_path().is_file() else "vm-full"


def arch_profiles(arch: Arch) -> Dict[str, Profile]:
    """The profiles of an architecture. Another architecture than x86_64 has the fast `vm`
    kernel (its own fragments over allnoconfig) and `vm-debug` on top of it: its defconfig
    builds every board's drivers, and the GRUB test machine is x86_64's."""
    if arch is arches.DEFAULT:
        return PROFILES
    vm = Profile("allnoconfig", arch.vm_fragments, f"the fast {arch.name} kernel for QEMU", True)
    debug = Profile(vm.base, (*vm.fragments, "debug.config"), "vm with KASAN and lockdep", True)
    profiles = {"vm": vm, "vm-debug": debug}
    if arch.is_host():
        profiles["running"] = PROFILES["running"]
    return profiles


def profile_for(config: str, arch: Arch = arches.DEFAULT) -> Profile:
    profiles = arch_profiles(arch)
    if config in profiles:
        return profiles[config]
    path = Path(config).expanduser()
    if not path.is_file():
        which = "" if arch is arches.DEFAULT else f" for {arch.name}"
        raise KitError(f"--config {config}: not one of {', '.join(profiles)}{which} and not a file")
    return Profile(str(path.resolve()))


def fragment_paths(profile: Profile, extra: Sequence[str]) -> List[Path]:
    paths = [TEMPLATES_DIR / "config" / name for name in profile.fragments]
    for item in extra:
        path = Path(item).expanduser()
        if not path.is_file():
            raise KitError(f"config fragment {item} does not exist")
        paths.append(path.resolve())
    return paths


def parse_options(text: str) -> Dict[str, str]:
    """CONFIG_X -> value ('n' for '# ... is not set' and '=n')."""
    options = {}
    for line in text.splitlines():
        match = _OPTION.match(line.strip())
        if match and match.group(1):
            options[match.group(1)] = match.group(2)
        elif match:
            options[match.group(3)] = "n"
    return options


def built_options(obj: Path) -> Dict[str, str]:
    """The options of the configuration a build directory's obj/ holds; empty without one."""
    config = obj / ".config"
    return parse_options(config.read_text()) if config.is_file() else {}


def running_config_path() -> Path:
    return Path("/boot") / f"config-{os.uname().release}"


def sanitize_args(kernel: KernelVersion, debug_info: bool, btf_ok: bool) -> List[str]:
    """scripts/config arguments applied to every configuration."""
    args = [
        "--set-str", "SYSTEM_TRUSTED_KEYS", "",
        "--set-str", "SYSTEM_REVOCATION_KEYS", "",
        "--set-str", "LOCALVERSION", LOCALVERSION,
        "--disable", "LOCALVERSION_AUTO",
    ]  # fmt: skip
    if debug_info:
        flag = "DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT" if kernel.at_least(5, 18) else "DEBUG_INFO"
        args += ["--disable", "DEBUG_INFO_NONE", "--enable", flag]
    else:
        args += ["--enable", "DEBUG_INFO_NONE", "--disable", "DEBUG_INFO"]
        args += ["--disable", "DEBUG_INFO_DWARF4", "--disable", "DEBUG_INFO_DWARF5"]
        args += ["--disable", "DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT"]
    if not (debug_info and btf_ok):
        args += ["--disable", "DEBUG_INFO_BTF"]
    return args


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def root_needs_block(tree: Path) -> bool:
    """Whether a 9p root tagged /dev/root needs CONFIG_BLOCK, which the vm profile leaves out.

    Since 6.5 init/do_mounts.c hands root= unchanged to mount_nodev_root(char *name), which
    mounts a filesystem without a device. Before, that function took no name and used the
    root name with /dev/ cut off ("root": 5.11-6.4), or did not exist: there only the block
    layer's path mounts /dev/root.
    """
    mounts = _read(tree / "init/do_mounts.c")
    return bool(mounts) and not re.search(r"\bmount_nodev_root\(char \*", mounts)


_9P_NEEDS_INET = re.compile(r"^config 9P_FS\n(?:[ \t]+.*\n|\n)*?[ \t]+depends on .*\bINET\b", re.M)


def p9_needs_inet(tree: Path) -> bool:
    """9p depended on IPv4 (fs/9p/Kconfig: depends on INET) until 6.x: the vm profile leaves
    INET out, so such a tree gets it back for its 9p root."""
    return bool(_9P_NEEDS_INET.search(_read(tree / "fs/9p/Kconfig")))


def virtme_root_needs(tree: Path) -> List[str]:
    """The options (without CONFIG_) a tree needs to mount virtme-ng's 9p root, read from its
    sources."""
    return [name for name, needed in (("BLOCK", root_needs_block), ("INET", p9_needs_inet))
            if needed(tree)]  # fmt: skip


def cmdline_args(current: Optional[str]) -> List[str]:
    """scripts/config arguments that put panic=N on the kernel's built-in command line (x86
    prepends it to the boot loader's), keeping a built-in command line the config has."""
    words = (current or '""').strip('"').split()
    if not any(word.startswith("panic=") for word in words):
        words.append(f"panic={PANIC_REBOOT_SECONDS}")
    return ["--enable", "CMDLINE_BOOL", "--set-str", "CMDLINE", " ".join(words)]


@dataclass
class ConfigRequest:
    tree: Path
    obj: Path
    kernel: KernelVersion
    compiler: Compiler
    profile: Profile
    fragments: List[Path]
    debug_info: bool = False
    btf_ok: bool = False
    # lsmod output (or /proc/modules) to trim the configuration to with make localmodconfig
    lsmod: Optional[Path] = None
    arch: Arch = arches.DEFAULT

    @cached_property
    def root_needs(self) -> List[str]:
        """Options the kit turns on for virtme-ng's root (read once: generate() and the
        inputs' digest both use them)."""
        return virtme_root_needs(self.tree) if self.profile.virtme_root else []


def localmodconfig(request: ConfigRequest, candidate: Path, runner: Runner) -> None:
    """Trim the candidate to the modules in request.lsmod with the kernel's own localmodconfig.

    localmodconfig works on the .config of its O= directory, so it runs in a scratch one
    beside obj/ and the result is copied back; modules the list names stay modules.
    """
    assert request.lsmod is not None
    scratch = request.obj.parent / "localmodconfig"
    make = ["make", f"O={scratch}", *request.compiler.make_args()]
    runner.run([*make, f"KCONFIG_CONFIG={candidate}", "olddefconfig"], cwd=request.tree)
    if not runner.dry_run:
        scratch.mkdir(parents=True, exist_ok=True)
        atomic.write_atomic(scratch / ".config", candidate.read_bytes())
    runner.run([*make, f"LSMOD={request.lsmod}", "localmodconfig"], cwd=request.tree)
    if not runner.dry_run:
        atomic.write_atomic(candidate, (scratch / ".config").read_bytes())


def generate(request: ConfigRequest, runner: Runner) -> Path:
    """Write obj/.config.memuse-new from the request; returns its path."""
    obj, tree = request.obj, request.tree
    if not runner.dry_run:
        obj.mkdir(parents=True, exist_ok=True)
    candidate = obj / CANDIDATE
    make = ["make", f"O={obj}", *request.compiler.make_args(), f"KCONFIG_CONFIG={CANDIDATE}"]
    base = request.profile.base
    if base in MAKE_BASES:
        runner.run([*make, base], cwd=tree)
    else:
        source = running_config_path() if base == "running" else Path(base)
        if not source.is_file():
            raise KitError(f"{source} does not exist: pass --config vm or --config FILE")
        if not runner.dry_run:
            atomic.write_atomic(candidate, source.read_bytes())
    if request.lsmod is not None:
        localmodconfig(request, candidate, runner)
    if request.fragments:
        merge = [str(tree / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(obj)]
        merge += [str(candidate), *map(str, request.fragments)]
        # merge_config.sh makes its temporary files in its working directory: never the tree
        runner.run(merge, cwd=obj, env={"KCONFIG_CONFIG": str(candidate)})
    edits = sanitize_args(request.kernel, request.debug_info, request.btf_ok)
    current = None if runner.dry_run else parse_options(candidate.read_text()).get("CONFIG_CMDLINE")
    edits += cmdline_args(current)
    edits += [arg for name in request.root_needs for arg in ("--enable", name)]
    runner.run([str(tree / "scripts/config"), "--file", str(candidate), *edits], cwd=tree)
    runner.run([*make, "olddefconfig"], cwd=tree)
    if not runner.dry_run:
        _warn_unmet(candidate, request.fragments, {f"CONFIG_{n}" for n in request.root_needs})
    return candidate


def _kconfig_files(obj: Path) -> Optional[List[str]]:
    """The Kconfig files the last configuration read (relative to the tree), from the list
    kconfig itself keeps for make; None when there is no configuration yet."""
    listing = obj / "include/config/auto.conf.cmd"
    try:
        text = listing.read_text()
    except OSError:
        return None
    files, in_list = [], False
    for line in text.splitlines():
        if line.startswith("deps_config :="):
            in_list = True
        elif in_list and line.startswith("\t"):
            files.append(line.strip().rstrip("\\").strip())
        elif in_list:
            break
    return files or None


def _feed(digest: hashlib._Hash, label: str, data: bytes) -> None:
    digest.update(f"{label} {len(data)}\n".encode())
    digest.update(data)


def _stat_line(path: Path) -> bytes:
    try:
        info = path.stat()
    except OSError:
        return b"missing"
    return f"{info.st_mtime_ns} {info.st_size}".encode()


def inputs_digest(request: ConfigRequest) -> Optional[str]:
    """A digest of everything generate() reads, so an unchanged configuration is not
    generated again (that cost a no-op build 6 s of its 14). None when it cannot be known.

    Kconfig files are taken by size and mtime from the list kconfig keeps; this module's own
    source stands for the recipe (the sanitizing, the fragments' order), so a new
    memuse-kit configures once more rather than keep a configuration made another way.
    """
    kconfig_files = _kconfig_files(request.obj)
    if kconfig_files is None:
        return None
    digest = hashlib.sha256()
    _feed(digest, "recipe", Path(__file__).read_bytes())
    _feed(digest, "kernel", str(request.kernel).encode())
    make_args = [*request.compiler.make_args(), request.compiler.version]
    _feed(digest, "compiler", "\0".join(make_args).encode())
    _feed(digest, "options", f"{request.debug_info} {request.btf_ok}".encode())
    _feed(digest, "base", _base_identity(request))
    # the edits a virtme-ng root needs, read from the tree's init/do_mounts.c and fs/9p/Kconfig
    _feed(digest, "virtme root", " ".join(request.root_needs).encode())
    for path in [*request.fragments, *([request.lsmod] if request.lsmod else [])]:
        _feed(digest, str(path), path.read_bytes())
    _feed(digest, "auto.conf.cmd", (request.obj / "include/config/auto.conf.cmd").read_bytes())
    for name in kconfig_files:
        _feed(digest, name, _stat_line(request.tree / name))
    return digest.hexdigest()


def _base_identity(request: ConfigRequest) -> bytes:
    """The base's name and what it reads besides the Kconfig files: the defconfig files for
    defconfig, nothing for allnoconfig, the file itself for a configuration file."""
    base = request.profile.base
    if base == "defconfig":
        configs = request.tree / "arch" / request.arch.kernel_arch / "configs"
        defconfigs = sorted(configs.glob("*defconfig"))
        listing = b"\n".join(str(p).encode() + b" " + _stat_line(p) for p in defconfigs)
        return b"defconfig\n" + listing
    if base in MAKE_BASES:
        return base.encode()
    source = running_config_path() if base == "running" else Path(base)
    return source.read_bytes() if source.is_file() else b"missing"


def is_current(obj: Path, digest: Optional[str], recorded: Dict[str, Any]) -> bool:
    """True when obj/.config is the one generated last from these very inputs."""
    if digest is None or recorded.get("inputs_sha256") != digest:
        return False
    config = obj / ".config"
    return config.is_file() and sha256_file(config) == recorded.get("sha256")


def _warn_unmet(candidate: Path, fragments: Sequence[Path], kits_own: Set[str]) -> None:
    """A fragment's option the tree does not give is worth a warning, unless the kit itself
    turned it on (a 9p root's needs)."""
    final = parse_options(candidate.read_text())
    for fragment in fragments:
        for name, wanted in parse_options(fragment.read_text()).items():
            if name in kits_own:
                continue
            got = final.get(name, "n")
            if got != wanted and not (wanted == "n" and name not in final):
                warn(f"{fragment.name}: {name}={wanted} requested, the tree gives {got}")


def estimated_objects(config: Path) -> int:
    """Objects a configuration compiles, roughly, from its built-in and module options."""
    values = list(parse_options(config.read_text()).values())
    builtins, modules = values.count("y"), values.count("m")
    return int(builtins * OBJECTS_PER_BUILTIN + modules * OBJECTS_PER_MODULE)


def suggest_trimming(config: Path, profile: Profile, lsmod: Optional[Path]) -> None:
    """A distribution's configuration builds thousands of modules nobody loads: say so."""
    if lsmod is not None or profile.base in MAKE_BASES:
        return
    objects = estimated_objects(config)
    if objects > LARGE_CONFIG_OBJECTS:
        warn(
            f"this configuration compiles about {objects} objects (hours on a laptop); "
            "--localmodconfig trims it to the modules loaded now (make localmodconfig)"
        )


def adopt(obj: Path, candidate: Path, last_written: Optional[str], reconfigure: bool) -> str:
    """Make the candidate obj/.config unless the user edited the current one; returns its hash."""
    current = obj / ".config"
    new_hash = sha256_file(candidate)
    if current.is_file():
        current_hash = sha256_file(current)
        if current_hash == new_hash:
            candidate.unlink()
            return new_hash
        if last_written and current_hash != last_written and not reconfigure:
            raise KitError(
                f"{current} was edited since memuse-kit wrote it; build it as it is with "
                "--keep-config, or replace it with --reconfigure"
            )
        if last_written and current_hash != last_written:
            atomic.write_atomic(obj / ".config.edited", current.read_bytes())
            warn(f"your edited configuration is saved as {obj / '.config.edited'}")
    os.replace(candidate, current)
    return new_hash
