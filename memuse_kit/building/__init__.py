"""memuse-kit, building: compiler, configuration, checks, make, packages and the build record."""
