
set -eu
for user in "$SUDO_USER" "$PLAIN_USER"; do
    useradd --create-home --shell /bin/bash --password '*' "$user"
    install -d -m 700 -o "$user" -g "$user" "/home/$user/.ssh"
    install -m 600 -o "$user" -g "$user" /tmp/authorized_keys "/home/$user/.ssh/authorized_keys"
done
echo "$SUDO_USER ALL=(ALL) NOPASSWD:ALL" > "/etc/sudoers.d/$SUDO_USER"
chmod 440 "/etc/sudoers.d/$SUDO_USER"

echo "$HOSTNAME" > /etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n' "$HOSTNAME" > /etc/hosts
echo 'nameserver 10.0.2.3' > /etc/resolv.conf
mkdir -p /boot/efi
cat > /etc/fstab <<EOF
UUID=$ROOT_UUID / ext4 errors=remount-ro 0 1
UUID=$ESP_UUID /boot/efi vfat umask=0077,nofail,x-systemd.device-timeout=10s 0 2
EOF
cat > /etc/systemd/network/80-dhcp.network <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
EOF
systemctl enable systemd-networkd
systemctl mask apt-daily.timer apt-daily-upgrade.timer
printf 'PasswordAuthentication no\nKbdInteractiveAuthentication no\n' \
    > /etc/ssh/sshd_config.d/memuse-machine.conf

cat > /etc/default/grub <<EOF
GRUB_DEFAULT=$GRUB_DEFAULT_ENTRY
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=\`lsb_release -i -s 2> /dev/null || echo Debian\`
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="$KERNEL_CMDLINE"
GRUB_TERMINAL=serial
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
EOF
# what grub-install would put there; grubenv lets grub-reboot's one-shot work
mkdir -p /boot/grub
cp -r /usr/lib/grub/x86_64-efi /boot/grub/
grub-editenv /boot/grub/grubenv create
release=$(ls /lib/modules | sort -V | tail -n 1)
# only for the first boot, in which the machine's own update-grub replaces it
cat > /boot/grub/grub.cfg <<EOF
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
menuentry 'Debian GNU/Linux, first boot' {
    insmod part_gpt
    insmod ext2
    search --no-floppy --fs-uuid --set=root $ROOT_UUID
    linux /boot/vmlinuz-$release root=UUID=$ROOT_UUID ro $KERNEL_CMDLINE
    initrd /boot/initrd.img-$release
}
EOF
cat > /tmp/embedded.cfg <<EOF
insmod part_gpt
insmod ext2
search --no-floppy --fs-uuid --set=root $ROOT_UUID
set prefix=(\$root)/boot/grub
configfile \$prefix/grub.cfg
EOF
grub-mkstandalone -O x86_64-efi --modules="part_gpt ext2" -o /tmp/BOOTX64.EFI \
    "boot/grub/grub.cfg=/tmp/embedded.cfg"
# again now that fstab names the root filesystem
update-initramfs -u -k all
