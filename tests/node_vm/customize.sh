#!/bin/sh
# mmdebstrap --customize-hook for the node image (tests/node_vm/image.py):
# turn the chroot at $1 into a bootable node with Debian's cloud kernel $2
# (a .deb), and a oneshot unit that runs the test driver from the second disk
# at every boot.
#
# usage: customize.sh ROOT KERNEL.deb
set -eu
root=$1
kernel_deb=$2

# The kernel's modules (binfmt_misc, overlay …) and its image. dpkg-deb -x
# would replace the merged-/usr /lib symlink with a directory; tar keeps it.
dpkg-deb --fsys-tarfile "$kernel_deb" | tar -C "$root" --keep-directory-symlink -x ./lib/modules ./boot
release=$(ls "$root/lib/modules")
chroot "$root" depmod -a "$release"

echo node > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 node\n' > "$root/etc/hosts"
printf '/dev/nvme0n1 / ext4 rw,errors=remount-ro 0 1\n' > "$root/etc/fstab"
chroot "$root" passwd --delete root >/dev/null

# The test driver: the second disk holds it, its inputs and its results.
cat > "$root/usr/local/sbin/node-vm-step" <<'STEP'
#!/bin/sh
# Run the node-VM test driver from the data disk (tests/node_vm/guest.py).
set -eu
mkdir -p /mnt/data
mountpoint -q /mnt/data || mount /dev/nvme0n2 /mnt/data
exec python3 /mnt/data/guest.py /mnt/data
STEP
chmod 755 "$root/usr/local/sbin/node-vm-step"
cat > "$root/etc/systemd/system/node-vm-step.service" <<'UNIT'
[Unit]
Description=binfmt node-VM test step
After=multi-user.target containerd.service
Wants=containerd.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/node-vm-step
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/node-vm-step.service \
    "$root/etc/systemd/system/multi-user.target.wants/node-vm-step.service"

# Nothing else at boot: no timers that wake apt or fstrim under TCG.
for timer in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
    rm -f "$root/etc/systemd/system/timers.target.wants/$timer"
done
