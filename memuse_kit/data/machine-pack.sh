
set -eu
chroot "$1" dpkg-query -W -f '${Package}\t${Version}\n' > "$STAGE/packages.tsv"
ls "$1/lib/modules" > "$STAGE/kernel-release"
mv "$1/tmp/BOOTX64.EFI" "$STAGE/BOOTX64.EFI"
rm -rf "$1"/tmp/* "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin \
    "$1"/var/cache/apt/archives/*.deb "$1"/etc/apt/apt.conf.d/*mmdebstrap \
    "$1"/etc/dpkg/dpkg.cfg.d/*mmdebstrap "$1"/var/log/apt/eipp.log.xz
: > "$1/etc/machine-id"
mkdir "$STAGE/rootfs"
mount --bind "$STAGE" "$1/mnt"
mount --bind "$1" "$1/mnt/rootfs"
chroot "$1" mkfs.ext4 -q -F -U "$ROOT_UUID" -L memuse-root -d /mnt/rootfs /mnt/root.ext4 \
    "${ROOT_MIB}M"
umount "$1/mnt/rootfs"
umount "$1/mnt"
rmdir "$STAGE/rootfs"
chmod 0644 "$STAGE"/*
