"""memuse-kit, trying a kernel without installing it: QEMU, modules, the test machine."""
