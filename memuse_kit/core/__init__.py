"""memuse-kit, shared core: commands, files, cache and errors every stage uses."""
