"""The guest's C programs, compiled on the host for the guest's architecture: compiling them
in a TCG guest is slow. callers.c is static, needing nothing from the guest's root. The
scenario program is linked against the guest root's C library (Debian's libc6, as the
cross toolchain's): a static glibc program sets its thread-local storage up with brk, so it
would start with a heap, and the report's figures (heap 0 for a process that does nothing),
the heap scenarios' page counts and brk-page's start_brk would not be the x86_64 ones.

The scenario program (memuse_client/scenarios.c) is named as the client names it
(binary_name(): its source and CFLAGS), so the client takes it from $MEMUSE_SCENARIOS_BIN;
tests/guest/callers.c as tests/guest_support.py names it (callers_name(): its source).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from memuse_client.scenarios import CFLAGS, ENV_BINARY, SOURCE, binary_name
from memuse_kit.core.arch import Arch
from memuse_kit.core.cache import cache_root
from memuse_kit.core.digest import sha256_file
from memuse_kit.core.errors import KitError
from memuse_kit.core.runner import Runner

SCENARIOS_ENV = ENV_BINARY  # MEMUSE_SCENARIOS_BIN
CALLERS_ENV = "MEMUSE_CALLERS_BIN"
# the name tests/guest_support.py reads today (CALLERS_ENV there)
CALLERS_ENV_OLD = "MEMUSE_GUEST_CALLERS"
CALLERS_FLAGS = ["-O2", "-Wall", "-Werror"]  # tests/guest_support.compile_callers's


def guest_bin_dir(arch: Arch, static: bool = True) -> Path:
    """Where arch's programs live: apart from <cache>/bin, the host's own programs, and the
    static ones apart from the dynamic ones (the scenario program's name is the client's,
    whichever way it is linked)."""
    return cache_root() / "guest-bin" / arch.debian_arch / ("static" if static else "dynamic")


def callers_name(source: Path) -> str:
    return f"memuse-callers-{sha256_file(source)[:16]}"


def compile_command(
    arch: Arch, source: Path, flags: Sequence[str], output: Path, static: bool = True
) -> List[str]:
    linkage = ["-static"] if static else []
    return [arch.compiler_command("gcc"), *linkage, *flags, "-o", str(output), str(source)]


def guest_program(
    arch: Arch,
    source: Path,
    flags: Sequence[str],
    name: str,
    dry_run: bool = False,
    static: bool = True,
) -> Path:
    """source compiled for arch into guest_bin_dir(arch, static)/name; kept when there."""
    target = guest_bin_dir(arch, static) / name
    if os.access(target, os.X_OK):
        return target
    if dry_run:
        Runner(dry_run=True).run(compile_command(arch, source, flags, target, static))
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # a unique name, then a rename: another run may compile the same program at once
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", dir=target.parent)
    os.close(handle)
    try:
        command = compile_command(arch, source, flags, Path(temporary), static)
        done = Runner().run(command, check=False)
        if done.returncode != 0:
            first = next((line for line in done.stderr.splitlines() if ": error:" in line), "")
            raise KitError(
                f"{arch.compiler_command('gcc')} could not compile {source.name} for "
                f"{arch.name}: {first.strip() or done.stderr.strip()[-200:]}"
            )
        os.chmod(temporary, 0o755)
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target


def guest_scenarios(arch: Arch, dry_run: bool = False) -> Path:
    """The client's scenario program for arch, named binary_name(): dynamically linked (see
    the module's docstring)."""
    return guest_program(arch, SOURCE, CFLAGS, binary_name(), dry_run, static=False)


def static_callers(arch: Arch, source: Path, dry_run: bool = False) -> Path:
    """tests/guest/callers.c (source) for arch, named as tests/guest_support names it."""
    if not source.is_file():
        raise KitError(f"no {source}: give the checkout's tests/guest/callers.c")
    return guest_program(arch, source, CALLERS_FLAGS, callers_name(source), dry_run)


def guest_binaries_env(
    arch: Arch, callers_source: Optional[Path] = None, dry_run: bool = False
) -> Dict[str, Path]:
    """The environment that hands the guest its programs: {variable: binary}."""
    env = {SCENARIOS_ENV: guest_scenarios(arch, dry_run)}
    if callers_source is not None:
        callers = static_callers(arch, callers_source, dry_run)
        env.update({CALLERS_ENV: callers, CALLERS_ENV_OLD: callers})
    return env
