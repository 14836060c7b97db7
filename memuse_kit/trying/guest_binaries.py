"""The guest's C programs, compiled on the host, statically, for the guest's architecture:
compiling them in a TCG guest is slow, and a static binary needs nothing from its root.

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


def guest_bin_dir(arch: Arch) -> Path:
    """Where arch's static programs live: apart from <cache>/bin, the host's own programs."""
    return cache_root() / "guest-bin" / arch.debian_arch


def callers_name(source: Path) -> str:
    return f"memuse-callers-{sha256_file(source)[:16]}"


def static_command(arch: Arch, source: Path, flags: Sequence[str], output: Path) -> List[str]:
    return [arch.compiler_command("gcc"), "-static", *flags, "-o", str(output), str(source)]


def static_program(
    arch: Arch, source: Path, flags: Sequence[str], name: str, dry_run: bool = False
) -> Path:
    """source compiled statically for arch into guest_bin_dir(arch)/name; kept when there."""
    target = guest_bin_dir(arch) / name
    if os.access(target, os.X_OK):
        return target
    if dry_run:
        Runner(dry_run=True).run(static_command(arch, source, flags, target))
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # a unique name, then a rename: another run may compile the same program at once
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", dir=target.parent)
    os.close(handle)
    try:
        done = Runner().run(static_command(arch, source, flags, Path(temporary)), check=False)
        if done.returncode != 0:
            first = next((line for line in done.stderr.splitlines() if ": error:" in line), "")
            raise KitError(
                f"{arch.compiler_command('gcc')} -static could not compile {source.name} for "
                f"{arch.name}: {first.strip() or done.stderr.strip()[-200:]}"
            )
        os.chmod(temporary, 0o755)
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target


def static_scenarios(arch: Arch, dry_run: bool = False) -> Path:
    """The client's scenario program for arch, named binary_name()."""
    return static_program(arch, SOURCE, CFLAGS, binary_name(), dry_run)


def static_callers(arch: Arch, source: Path, dry_run: bool = False) -> Path:
    """tests/guest/callers.c (source) for arch, named as tests/guest_support names it."""
    if not source.is_file():
        raise KitError(f"no {source}: give the checkout's tests/guest/callers.c")
    return static_program(arch, source, CALLERS_FLAGS, callers_name(source), dry_run)


def guest_binaries_env(
    arch: Arch, callers_source: Optional[Path] = None, dry_run: bool = False
) -> Dict[str, Path]:
    """The environment that hands the guest its programs: {variable: binary}."""
    env = {SCENARIOS_ENV: static_scenarios(arch, dry_run)}
    if callers_source is not None:
        callers = static_callers(arch, callers_source, dry_run)
        env.update({CALLERS_ENV: callers, CALLERS_ENV_OLD: callers})
    return env
