"""memuse-kit, installing the built packages on this machine (dpkg, GRUB)."""
