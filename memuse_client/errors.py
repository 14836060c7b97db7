"""Exceptions of the client that are not plain OSErrors."""

from __future__ import annotations


class MemuseUnavailable(RuntimeError):
    """The running kernel has no memuse system call, or its number cannot be found."""


class ScenarioError(RuntimeError):
    """A native scenario could not be compiled, started or did not stop as expected."""


class ScenarioUnavailable(ScenarioError):
    """The scenario needs something this machine lacks (hugetlb pages, address space)."""
