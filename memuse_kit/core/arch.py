"""What memuse-kit knows of each architecture it builds for and boots: one entry each.

Everything arch-bound reads its facts here: the kernel's ARCH and the cross compiler, the
image, the Debian architecture of packages and guests, QEMU's system and machine, the
configuration fragments of the fast VM kernel, the prefix of the syscall's kernel symbol.
x86_64 is the host's own architecture here; arm64 is cross-built and booted under TCG.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from memuse_client.smaps import arm64_thread_size, x86_64_thread_size
from memuse_kit.core.errors import KitError


@dataclass(frozen=True)
class Arch:
    name: str  # the --arch value
    kernel_arch: str  # make ARCH=
    # the GNU triplet of the cross tools (CROSS_COMPILE=<triplet>-), None when native
    cross_triplet: Optional[str]
    machines: Tuple[str, ...]  # what uname -m says on such a machine
    config_symbol: str  # the option a .config of this architecture sets
    image_target: str  # make target of the boot image
    image_path: str  # in the build's obj/ directory
    debian_arch: str
    qemu_system: str
    qemu_apt: str  # the Debian package with qemu_system
    qemu_machine: Tuple[str, ...]  # -machine ... -cpu ... and the like
    console: str  # the serial console's device name
    # the `vm` configuration: its fragments over allnoconfig (in templates/config)
    vm_fragments: Tuple[str, ...]
    syscall_symbol_prefix: str  # SYSCALL_DEFINE's wrapper: __x64_sys_memuse
    # THREAD_SIZE (memuse's kind 2) from a .config's text: the client's rule, which runs in
    # guests without memuse_kit (its SYSCALL_WRAPPERS and THREAD_SIZE_RULES are keyed by
    # uname -m; a test holds them to this table)
    thread_size: Callable[[str], Optional[int]]
    # the apt packages with the C compiler, the plain one first, then one per version
    compiler_apt: Tuple[str, ...]

    @property
    def cross_compile(self) -> Optional[str]:
        return f"{self.cross_triplet}-" if self.cross_triplet else None

    def compiler_command(self, plain: str) -> str:
        """gcc-11 -> aarch64-linux-gnu-gcc-11 for a cross build, gcc-11 for a native one."""
        return f"{self.cross_compile}{plain}" if self.cross_compile else plain

    def make_args(self) -> Tuple[str, ...]:
        """ARCH= and CROSS_COMPILE= for every make of a tree built for this architecture."""
        args = [f"ARCH={self.kernel_arch}"]
        if self.cross_compile:
            args.append(f"CROSS_COMPILE={self.cross_compile}")
        return tuple(args)

    def is_host(self) -> bool:
        return platform.machine() in self.machines


X86_64 = Arch(
    name="x86_64",
    kernel_arch="x86",
    cross_triplet=None,
    machines=("x86_64", "amd64"),
    config_symbol="CONFIG_X86_64",
    image_target="bzImage",
    image_path="arch/x86/boot/bzImage",
    debian_arch="amd64",
    qemu_system="qemu-system-x86_64",
    qemu_apt="qemu-system-x86",
    qemu_machine=("-machine", "q35"),
    console="ttyS0",
    vm_fragments=("vm.config",),
    syscall_symbol_prefix="__x64_sys_",
    thread_size=x86_64_thread_size,
    compiler_apt=("gcc", "gcc-11"),
)

ARM64 = Arch(
    name="arm64",
    kernel_arch="arm64",
    cross_triplet="aarch64-linux-gnu",
    machines=("aarch64", "arm64"),
    config_symbol="CONFIG_ARM64",
    image_target="Image",
    image_path="arch/arm64/boot/Image",
    debian_arch="arm64",
    qemu_system="qemu-system-aarch64",
    qemu_apt="qemu-system-arm",
    # cortex-a72: ARMv8.0 without pointer authentication, which TCG emulates slowly
    qemu_machine=("-machine", "virt", "-cpu", "cortex-a72"),
    console="ttyAMA0",
    vm_fragments=("vm-arm64.config",),
    syscall_symbol_prefix="__arm64_sys_",
    thread_size=arm64_thread_size,
    compiler_apt=("gcc-aarch64-linux-gnu", "gcc-11-aarch64-linux-gnu"),
)

ARCHES: Dict[str, Arch] = {arch.name: arch for arch in (X86_64, ARM64)}
ALIASES = {"amd64": "x86_64", "x86": "x86_64", "aarch64": "arm64"}
DEFAULT = X86_64


def get(name: Optional[str]) -> Arch:
    """The entry for --arch NAME (None: x86_64); one clear line for an unknown name."""
    if name is None:
        return DEFAULT
    key = ALIASES.get(name, name)
    if key not in ARCHES:
        raise KitError(f"--arch {name}: memuse-kit knows {', '.join(ARCHES)}")
    return ARCHES[key]


def of_config(text: str) -> Optional[Arch]:
    """The architecture a .config's text is for; None when no entry's option is set."""
    lines = set(text.splitlines())
    return next((a for a in ARCHES.values() if f"{a.config_symbol}=y" in lines), None)


def label_suffix(arch: Arch) -> str:
    """What a build directory's name gains: nothing for x86_64 (its builds keep their names),
    -arm64 for arm64."""
    return "" if arch is DEFAULT else f"-{arch.name}"
