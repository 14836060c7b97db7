"""memuse-kit: add the memuse(pid, mem_type) system call to a Linux tree, build, install, try it."""

__version__ = "0.1.0"
