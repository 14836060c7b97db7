"""memuse-kit, patching: syscall tables, edit targets, templates, probes, the patch file."""
