"""Calling memuse(pid, mem_type) through libc's syscall(), errno turned into Python exceptions."""

from __future__ import annotations

import ctypes
import errno
import functools
import os
from typing import Callable, Optional, Union

from .discovery import (
    HOW_TO_GET_ONE,
    MEMUSE,
    SyscallNumber,
    cache_root,
    discover,
    env_force,
    env_nr,
    kernel_release,
)
from .errors import MemuseUnavailable
from .kinds import Kind, parse_kind

PID_MAX = (1 << 31) - 1  # pid_t: a larger number would reach the kernel as another pid


@functools.lru_cache(maxsize=1)
def _syscall_function() -> Callable[..., int]:
    libc = ctypes.CDLL(None, use_errno=True)
    function = libc.syscall
    # the default restype is int: totals above 2 GiB would wrap
    function.restype = ctypes.c_long
    return function  # type: ignore[no-any-return]


def raw_memuse(nr: int, pid: int, mem_type: int, source: str = "") -> int:
    """memuse as system call `nr`, with no checks on the arguments: for testing the kernel.

    ESRCH -> ProcessLookupError, EACCES/EPERM -> PermissionError, EINVAL -> ValueError,
    ENOSYS -> MemuseUnavailable, EINTR is retried, other errno -> OSError.
    """
    call = _syscall_function()
    while True:
        ctypes.set_errno(0)
        result = call(ctypes.c_long(nr), ctypes.c_long(pid), ctypes.c_long(mem_type))
        if result >= 0:
            return int(result)
        code = ctypes.get_errno()
        if code != errno.EINTR:
            raise _error(code, nr, pid, mem_type, source)


def _error(code: int, nr: int, pid: int, mem_type: int, source: str) -> Exception:
    if code == errno.ESRCH:
        return ProcessLookupError(code, f"no process with pid {pid}")
    if code in (errno.EACCES, errno.EPERM):
        return PermissionError(code, f"not permitted to read the memory of pid {pid}")
    if code == errno.EINVAL:
        return ValueError(f"the kernel rejected memory type {mem_type} (EINVAL)")
    if code == errno.ENOSYS:
        origin = f" (from {source})" if source else ""
        return MemuseUnavailable(
            f"system call {nr}{origin} is not implemented by the running kernel "
            f"({kernel_release()}): {HOW_TO_GET_ONE}"
        )
    return OSError(code, f"memuse({pid}, {mem_type}) as system call {nr}: {os.strerror(code)}")


@functools.lru_cache(maxsize=8)
def _discover_cached(
    name: str,
    override: Optional[int],
    force: bool,
    env_nr_value: str,
    env_force_value: str,
    root: str,
    release: str,
) -> SyscallNumber:
    return discover(override=override, release=release, force=force, name=name)


def syscall_number(
    override: Optional[int] = None, force: bool = False, name: str = MEMUSE
) -> SyscallNumber:
    """discover() the number of syscall `name` (memuse unless told), remembered while its
    variables ($MEMUSE_NR, $MEMUSE_FORCE...), the cache root and the kernel stay the same.
    force calls an unconfirmed override anyway (see discovery.FORCE_RISK)."""
    return _discover_cached(
        name,
        override,
        force,
        os.environ.get(env_nr(name), ""),
        os.environ.get(env_force(name), ""),
        str(cache_root()),
        kernel_release(),
    )


def clear_cache() -> None:
    _discover_cached.cache_clear()


def memuse(
    pid: int, kind: Union[Kind, int, str], nr: Optional[int] = None, force: bool = False
) -> int:
    """Resident bytes of one kind of memory of process `pid`, as the memuse syscall counts them.

    `kind` is a Kind, its number or its name. `nr` overrides the syscall number discovery; it
    is called only when confirmed to be memuse, unless `force` (then system call `nr` runs,
    whatever it is). Raises ValueError (bad kind), ProcessLookupError,
    PermissionError, MemuseUnavailable.
    """
    checked = parse_kind(kind)
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid <= PID_MAX:
        raise ValueError(f"not a process id: {pid!r}")
    number = syscall_number(nr, force)
    return raw_memuse(number.nr, pid, int(checked), number.source)
