"""A Debian root filesystem for a guest of any architecture in the arch table, built without
root and without running a single binary of that architecture (no binfmt, no qemu-user).

mmdebstrap --variant=extract only unpacks the packages (no maintainer scripts run), in its
own user namespace (--mode=unshare), into a tarball; the user then extracts that tarball, so
every file is the user's own and QEMU can share the tree read-only over 9p. What the skipped
maintainer scripts would have made and the guest needs is added here: /etc/passwd and
/etc/group (root, nobody/nogroup), the mount points, and compiled Python bytecode. The
dynamic loader needs no /etc/ld.so.cache: Debian's ld.so searches the multiarch directories
(/lib/<triplet>, /usr/lib/<triplet>) by itself.

The tree is cached by recipe (<cache>/rootfs/debian-<suite>-<arch>-<digest>/root), built in a
stage directory renamed into place at the end, so a failed build leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from memuse_kit.core.arch import Arch
from memuse_kit.core.cache import cache_root
from memuse_kit.core.digest import sha256_bytes
from memuse_kit.core.errors import KitError
from memuse_kit.core.runner import Runner
from memuse_kit.trying.machine_image import debian_sources

# Bump when the build steps change in a way the recipe's fields do not show.
RECIPE_VERSION = 1
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
INFO_FILE = "rootfs.json"
# the guest's PID 1 (init=): mounts this boot's own share and runs the script it holds
GUEST_INIT = "/usr/sbin/memuse-kit-init"
BOOT_TAG = "memuse-boot"
BOOT_MOUNT = "/run/memuse-kit/boot"
# cache=loose: every share is read-only and the host leaves it alone during a boot, so the
# guest may cache without asking; it halves Python's start and imports under TCG
NINEP_OPTIONS = "trans=virtio,version=9p2000.L,msize=512000,cache=loose"
# what the project's client and tests/guest run with; busybox (static: no ld.so per exec,
# which under TCG took the init scripts from 1.3 s to 3.4 s) mounts, chroots, powers off
PACKAGES: Tuple[str, ...] = (
    "python3", "python3-pytest", "base-files", "busybox-static", "coreutils", "dash",
    "grep", "sed", "findutils",
)  # fmt: skip
PASSWD = """\
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""
GROUP = """\
root:x:0:
nogroup:x:65534:
"""
# glibc's built-in default would do; said explicitly so that pwd and grp read the files
NSSWITCH = """\
passwd: files
group: files
shadow: files
hosts: files
"""
BOOTSTRAP = f"""\
#!/bin/sh
# memuse-kit's guest init: everything else comes from the boot's own share ({BOOT_TAG}).
/bin/busybox mount -t tmpfs -o mode=0755 run /run
/bin/busybox mkdir -p {BOOT_MOUNT}
/bin/busybox mount -t 9p -o ro,{NINEP_OPTIONS} {BOOT_TAG} {BOOT_MOUNT}
exec /bin/sh {BOOT_MOUNT}/init.sh
"""
# the merged-/usr links debootstrap makes (Debian 12's default layout), before extraction, so
# that tar puts /bin's files into /usr/bin (mmdebstrap extracts with --keep-directory-symlink)
MERGED_USR = ("bin", "sbin", "lib")
MERGED_USR_HOOK = " ".join(
    f'ln -s usr/{d} "$1/{d}" && mkdir -p "$1/usr/{d}" &&' for d in MERGED_USR
).rstrip(" &")
# mount points of the guest's init; /root and /tmp get a tmpfs
DIRECTORIES = {"proc": 0o555, "sys": 0o555, "dev": 0o755, "run": 0o755, "tmp": 0o1777,
               "root": 0o700}  # fmt: skip

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RootfsRecipe:
    """Everything that decides the tree's content; its hash names the cache directory."""

    debian_arch: str
    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    security_mirror: str = "http://deb.debian.org/debian-security"
    packages: Tuple[str, ...] = PACKAGES
    passwd: str = field(default=PASSWD, repr=False)
    group: str = field(default=GROUP, repr=False)
    bootstrap: str = field(default=BOOTSTRAP, repr=False)
    merged_usr_hook: str = field(default=MERGED_USR_HOOK, repr=False)
    version: int = RECIPE_VERSION

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return sha256_bytes(text.encode())[:16]

    def name(self) -> str:
        return f"debian-{self.suite}-{self.debian_arch}-{self.digest()}"

    def sources(self) -> List[str]:
        return debian_sources(self.mirror, self.security_mirror, self.suite)


def recipe_for(arch: Arch) -> RootfsRecipe:
    return RootfsRecipe(debian_arch=arch.debian_arch)


@dataclass(frozen=True)
class Rootfs:
    """A finished tree in the cache: root/ is the guest's /, rootfs.json what it holds."""

    home: Path
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.home / "root"


def rootfs_parent() -> Path:
    return cache_root() / "rootfs"


def rootfs_home(recipe: RootfsRecipe) -> Path:
    return rootfs_parent() / recipe.name()


def load_rootfs(recipe: RootfsRecipe) -> Optional[Rootfs]:
    """The finished tree of this recipe, or None when there is none (or only a broken one)."""
    home = rootfs_home(recipe)
    try:
        info = json.loads((home / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    rootfs = Rootfs(home, info)
    if info.get("status") != "complete" or not (rootfs.root / GUEST_INIT.lstrip("/")).is_file():
        return None
    return rootfs


def mmdebstrap_command(recipe: RootfsRecipe, tarball: Path) -> List[str]:
    cmd = [
        "mmdebstrap", "--mode=unshare", "--variant=extract", "--format=tar",
        f"--architectures={recipe.debian_arch}", f"--include={','.join(recipe.packages)}",
        "--aptopt=Acquire::Retries \"3\"", f"--setup-hook={recipe.merged_usr_hook}",
    ]  # fmt: skip
    if KEYRING.is_file():
        cmd.append(f"--keyring={KEYRING}")
    return [*cmd, recipe.suite, str(tarball), *recipe.sources()]


def extract_command(tarball: Path, root: Path) -> List[str]:
    """Extract as the user: files owned by the user, their modes kept; /dev's device nodes
    (which a user cannot make) are left out, the guest mounts a devtmpfs there."""
    return [
        "tar", "--extract", f"--file={tarball}", f"--directory={root}",
        "--no-same-owner", "--preserve-permissions", "--exclude=./dev/*",
    ]  # fmt: skip


def ensure_rootfs(
    recipe: RootfsRecipe, dry_run: bool = False, say: Progress = lambda _: None
) -> Rootfs:
    """The cached tree of this recipe, built now when there is none.

    A dry run prints the commands a build would run and touches nothing.
    """
    found = load_rootfs(recipe)
    if found is not None:
        return found
    home = rootfs_home(recipe)
    if dry_run:
        runner = Runner(dry_run=True)
        runner.stream(mmdebstrap_command(recipe, home / "rootfs.tar"))
        runner.run(extract_command(home / "rootfs.tar", home / "root"))
        return Rootfs(home)
    check_rootfs_host()
    rootfs_parent().mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".stage-{home.name}-", dir=rootfs_parent()))
    try:
        info = build_tree(recipe, stage, say)
        (stage / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        try:
            stage.rename(home)
        except OSError:  # another build finished first: use that one
            if load_rootfs(recipe) is None:
                raise KitError(
                    f"{home} is there but not a finished root filesystem: remove it "
                    f"(rm -rf {home}) and run again"
                ) from None
    finally:
        if stage.exists():
            remove_tree(stage)
    done = load_rootfs(recipe)
    if done is None:
        raise KitError(f"the root filesystem at {home} is incomplete: remove it and run again")
    return done


def check_rootfs_host() -> None:
    """One line naming what a rootless build lacks (see guest_preflight for every tool)."""
    from memuse_kit.trying.guest_preflight import rootfs_problems

    problems = rootfs_problems()
    if problems:
        raise KitError(problems[0])


def build_tree(recipe: RootfsRecipe, stage: Path, say: Progress) -> Dict[str, Any]:
    """mmdebstrap into stage/rootfs.tar, extracted into stage/root and completed there."""
    tarball, root = stage / "rootfs.tar", stage / "root"
    log = stage / "mmdebstrap.log"
    started = time.monotonic()
    say(f"mmdebstrap: Debian {recipe.suite} {recipe.debian_arch}, {len(recipe.packages)} "
        "packages and their dependencies (extract only, rootless) ...")  # fmt: skip
    with log.open("w") as handle:
        status = Runner().stream(
            mmdebstrap_command(recipe, tarball), log=handle, env={"LC_ALL": "C.UTF-8"}
        )
    if status != 0 or not tarball.is_file():
        raise KitError(f"mmdebstrap failed (status {status}): {_last_line(log)}; log: {log}")
    downloaded = time.monotonic()
    root.mkdir()
    Runner().run(extract_command(tarball, root))
    tarball.unlink()
    complete_tree(recipe, root)
    compiled = compile_bytecode(root)
    finished = time.monotonic()
    return {
        "status": "complete",
        "recipe": {k: v for k, v in asdict(recipe).items() if k in ("debian_arch", "suite")},
        "packages": list(recipe.packages),
        "bytecode": compiled,
        "bytes": tree_bytes(root),
        "durations": {
            "mmdebstrap": round(downloaded - started, 1),
            "complete": round(finished - downloaded, 1),
        },
    }


def complete_tree(recipe: RootfsRecipe, root: Path) -> None:
    """What the maintainer scripts an extract skips would have made, and the guest's init."""
    for name in MERGED_USR:
        link = root / name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(f"usr/{name}")
    for name, mode in DIRECTORIES.items():
        path = root / name
        path.mkdir(exist_ok=True)
        path.chmod(mode)
    etc = root / "etc"
    for name, text in (("passwd", recipe.passwd), ("group", recipe.group),
                       ("nsswitch.conf", NSSWITCH)):  # fmt: skip
        (etc / name).write_text(text)
        (etc / name).chmod(0o644)
    init = root / GUEST_INIT.lstrip("/")
    init.write_text(recipe.bootstrap)
    init.chmod(0o755)
    drop_set_ids(root)


def drop_set_ids(root: Path) -> None:
    """No setuid or setgid bits: every file is the user's, so such a bit would make an
    unprivileged guest process (nobody) the host user's uid, not root."""
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory, name)
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
                path.chmod(stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))


def guest_python_dirs(root: Path) -> List[Path]:
    """The guest Python's library directories, when its version is this Python's."""
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    stdlib = root / "usr/lib" / version
    if not stdlib.is_dir():
        return []
    return [stdlib, root / "usr/lib/python3/dist-packages"]


def compile_bytecode(root: Path) -> bool:
    """Compile the guest's Python modules as the packages' postinst (py3compile) would have:
    the root is read-only in the guest, and compiling each import anew is slow under TCG.

    Bytecode is the same on every architecture for one Python version, so this Python
    compiles it when its version is the guest's; else the guest goes without.
    """
    dirs = [d for d in guest_python_dirs(root) if d.is_dir()]
    if not dirs:
        return False
    cmd = [sys.executable, "-m", "compileall", "-q", "-j", "1", "-s", str(root), "-p", "/"]
    Runner().run([*cmd, *map(str, dirs)])
    return True


def tree_bytes(root: Path) -> int:
    """Disk use of the tree, each hard-linked file once."""
    seen = set()
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            info = os.lstat(os.path.join(directory, name))
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


def remove_tree(path: Path) -> None:
    """rm -rf, also through directories the tree made read-only (/proc, /sys are 0555)."""

    def writable_then_retry(function: Callable[..., Any], target: str, _: Any) -> None:
        parent = os.path.dirname(target)
        os.chmod(parent, stat.S_IRWXU)
        if os.path.isdir(target) and not os.path.islink(target):
            os.chmod(target, stat.S_IRWXU)
        function(target)

    shutil.rmtree(path, onerror=writable_then_retry)


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("E:", "error", "mmdebstrap: error"))]
    return (errors or lines or ["no output"])[-1][:300]
