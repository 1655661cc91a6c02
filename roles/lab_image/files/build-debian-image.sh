#!/usr/bin/env bash
# Build the lab's Debian guest image with debootstrap, without loop devices or a
# bootloader: the root filesystem is written by `mkfs.ext4 -d` straight from the
# debootstrap tree, and the VMs boot its kernel and initrd directly (libvirt
# <kernel>/<initrd>, root=/dev/vda). That works in containers and needs no grub.
#
# usage: build-debian-image.sh [--module-src DIR] OUTDIR SUITE MIRROR DISK_SIZE PACKAGES...
#
# OUTDIR receives base.qcow2, vmlinuz, initrd.img and manifest.txt; it is built
# under OUTDIR.tmp and renamed at the end, so an interrupted build leaves no
# half image behind for the cache to reuse.
#
# --module-src DIR: an out-of-tree kernel module (a Kbuild Makefile and its sources,
# the lab's guest/doorbell) built in the image against the image's own kernel and
# installed under /lib/modules/<version>/extra. The image then also carries that
# kernel's headers and a compiler, so the module can be rebuilt in a guest.
set -euo pipefail

module_src=""
if [ "${1:-}" = "--module-src" ]; then
    module_src=$2
    shift 2
fi
outdir=$1 suite=$2 mirror=$3 disk_size=$4
shift 4
if [ -n "$module_src" ]; then
    set -- "$@" linux-headers-amd64 gcc make libc6-dev
fi
packages=$(IFS=,; echo "$*")

work="$outdir.tmp"
root="$work/root"
cleanup() {
    for m in dev/pts dev proc sys; do
        mountpoint -q "$root/$m" 2>/dev/null && umount -l "$root/$m" || true
    done
}
trap cleanup EXIT
rm -rf "$work"
mkdir -p "$root"

debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror"

# The packages' maintainer scripts already ran inside debootstrap; what follows
# only shapes the image. Host keys are removed so that no two guests share one:
# each VM gets its own from the NoCloud seed (cxl-lab-seed.service below).
rm -f "$root"/etc/ssh/ssh_host_*
rm -f "$root/etc/machine-id" && touch "$root/etc/machine-id"
echo "localhost" > "$root/etc/hostname"
cat > "$root/etc/fstab" <<'FSTAB'
/dev/vda  /  ext4  rw,errors=remount-ro  0  1
FSTAB
cat > "$root/etc/apt/sources.list" <<SOURCES
deb $mirror $suite main
SOURCES
# No password anywhere: root logs in with the lab's key only.
sed -i 's/^root:[^:]*:/root:*:/' "$root/etc/shadow"
mkdir -p "$root/etc/ssh/sshd_config.d"
cat > "$root/etc/ssh/sshd_config.d/cxl-lab.conf" <<'SSHD'
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
SSHD

install -m 0755 /dev/stdin "$root/usr/local/sbin/cxl-lab-seed" <<'SEED'
#!/bin/sh
# First-boot (and every-boot) step of the lab's debootstrap image, the image's
# small equivalent of cloud-init: apply the NoCloud seed's lab/ files (hostname,
# root's authorized_keys, the SSH host key, systemd-networkd units).
set -eu
# The seed's CD-ROM may show up late on a slow boot (TCG on a loaded host): look for it
# until it does, and mount it until that works (blkid may name the device a moment before
# the SCSI layer has attached it: a boot under heavy load failed as the CD-ROM attached);
# the bound (600 s) only stops a boot that really has no seed.
dev=""
tries=0
mnt=$(mktemp -d)
mounted=""
while [ -z "$mounted" ] && [ "$tries" -lt 600 ]; do
    dev=$(blkid -L cidata || true)
    if [ -n "$dev" ] && mount -o ro "$dev" "$mnt" 2>/dev/null; then
        mounted=yes
    else
        tries=$((tries + 1))
        sleep 1
    fi
done
if [ -z "$mounted" ]; then
    rmdir "$mnt"
    if [ -n "$dev" ]; then
        echo "cxl-lab-seed: cannot mount the seed $dev" >&2
        exit 1
    fi
    echo "cxl-lab-seed: no cidata seed, nothing to apply"
    exit 0
fi
trap 'umount "$mnt"; rmdir "$mnt"' EXIT
seed="$mnt/lab"
if [ -f "$seed/hostname" ]; then
    cp "$seed/hostname" /etc/hostname
    hostname "$(cat /etc/hostname)"
fi
install -d -m 0700 /root/.ssh
[ -f "$seed/authorized_keys" ] && install -m 0600 "$seed/authorized_keys" /root/.ssh/authorized_keys
if [ -f "$seed/ssh_host_ed25519_key" ]; then
    install -m 0600 "$seed/ssh_host_ed25519_key" /etc/ssh/ssh_host_ed25519_key
    install -m 0644 "$seed/ssh_host_ed25519_key.pub" /etc/ssh/ssh_host_ed25519_key.pub
fi
[ -f /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
rm -f /etc/systemd/network/*-cxl-lab-*.network
for unit in "$seed"/network/*.network; do
    [ -f "$unit" ] && install -m 0644 "$unit" /etc/systemd/network/
done
echo "cxl-lab-seed: applied $dev"
SEED
cat > "$root/etc/systemd/system/cxl-lab-seed.service" <<'UNIT'
[Unit]
Description=Apply the CXL lab's NoCloud seed (hostname, SSH keys, network)
DefaultDependencies=no
After=local-fs.target systemd-udev-settle.service systemd-udevd.service
Wants=systemd-udevd.service
Before=network-pre.target systemd-networkd.service ssh.service
Wants=network-pre.target

[Service]
Type=oneshot
# No `udevadm settle`: the script waits for the seed's device itself, which appears as soon
# as udev loads the CD-ROM driver, long before every device has settled under TCG.
ExecStart=/usr/local/sbin/cxl-lab-seed
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
UNIT
chroot "$root" systemctl enable cxl-lab-seed.service systemd-networkd.service ssh.service
# No DNS is reachable from the lab: skip waiting for "online" at boot.
chroot "$root" systemctl mask systemd-networkd-wait-online.service
# Housekeeping a lab guest does not need, which competes for the emulated CPUs at boot
# (e2scrub_reap alone took 20 s to 90 s of a TCG boot with three VMs on two cores): the
# ext4 snapshot scrubber (no LVM here), fstrim, apt's and dpkg's daily timers. A stock
# server the packages enable (redis-server) starts only when a role asks for it.
chroot "$root" systemctl mask e2scrub_reap.service e2scrub_all.timer fstrim.timer \
    apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer
if [ -e "$root/lib/systemd/system/redis-server.service" ]; then
    chroot "$root" systemctl disable redis-server.service
fi
if [ -n "$module_src" ]; then
    kver=$(ls "$root"/lib/modules | sort -V | tail -n1)
    rm -rf "$root/usr/src/cxl-module"
    cp -r "$module_src" "$root/usr/src/cxl-module"
    chroot "$root" make -C "/lib/modules/$kver/build" M=/usr/src/cxl-module modules
    mkdir -p "$root/lib/modules/$kver/extra"
    cp "$root"/usr/src/cxl-module/*.ko "$root/lib/modules/$kver/extra/"
    chroot "$root" depmod -a "$kver"
    chroot "$root" make -C "/lib/modules/$kver/build" M=/usr/src/cxl-module clean
fi
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/*

kernel=$(ls "$root"/boot/vmlinuz-* | sort -V | tail -n1)
initrd=$(ls "$root"/boot/initrd.img-* | sort -V | tail -n1)
cp "$kernel" "$work/vmlinuz"
cp "$initrd" "$work/initrd.img"
chroot "$root" dpkg-query -W -f='${Package} ${Version}\n' > "$work/manifest.txt"
cleanup
mkfs.ext4 -q -L cxl-lab-root -d "$root" "$work/root.raw" "$disk_size"
qemu-img convert -f raw -O qcow2 "$work/root.raw" "$work/base.qcow2"
rm -rf "$root" "$work/root.raw"
chmod 0644 "$work"/*
rm -rf "$outdir"
mv "$work" "$outdir"
echo "build-debian-image: $outdir ready"
