"""memuse-kit: add system calls (memuse, fdcount, yours) to a Linux tree, build, install, try."""

__version__ = "0.1.0"
