"""memuse-kit, getting kernel trees: sources, downloads, Debian and git, which tree a task uses."""
