#!/usr/bin/env bash
# Builds the systemd guest's root image for tests/vm/debian/run.sh:
#
#   build-image.sh KERNEL_ROOT OUT_DIR
#
# KERNEL_ROOT is an unpacked linux-image package (tests/vm/run.sh's fetch_kernel), OUT_DIR
# receives root.img (ext4, built with mkfs.ext4 -d: no loop device), initrd.gz (a busybox
# initramfs that loads virtio_blk + ext4 and switches to /sbin/init = systemd) and vmlinuz.
# Debian 12 userland from the configured apt mirror with mmdebstrap (packages: ./packages).
# Run as root. Writes OUT_DIR/.done last: a half-built directory is never used.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KROOT=${1:?kernel root}
OUT=${2:?out dir}
KVER=$(ls "$KROOT/lib/modules")
log() { printf '[debian-image] %s\n' "$*" >&2; }

rm -rf "$OUT"
mkdir -p "$OUT"
ROOT="$OUT/rootfs"
pkgs=$(grep -v '^#' "$HERE/packages" | grep . | paste -sd, -)
log "mmdebstrap bookworm ($pkgs)"
t0=$(date +%s)
# --variant=minbase: essential + apt; recommends off (the package list names what we need).
mmdebstrap --mode=root --variant=minbase --aptopt='APT::Install-Recommends "false"' \
    --include="$pkgs" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    bookworm "$ROOT" >&2
log "mmdebstrap took $(($(date +%s) - t0)) s"

# --- guest configuration ---------------------------------------------------
echo pve1 >"$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 pve1\n' >"$ROOT/etc/hosts"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$ROOT/etc/fstab"
sed -i 's/^root:[^:]*:/root::/' "$ROOT/etc/shadow"
# The kernel's modules (with the modules.dep fetch_kernel made); udev/kmod load what they need.
mkdir -p "$ROOT/usr/lib/modules"
cp -a "$KROOT/lib/modules/$KVER" "$ROOT/usr/lib/modules/"
# No getty on the serial console: the test unit owns ttyS0. Quiet, quick boot.
ln -sf /dev/null "$ROOT/etc/systemd/system/serial-getty@ttyS0.service"
ln -sf /dev/null "$ROOT/etc/systemd/system/getty@tty1.service"
for u in systemd-timesyncd apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
    libvirt-guests.service; do
    ln -sf /dev/null "$ROOT/etc/systemd/system/$u" 2>/dev/null || true
done
mkdir -p "$ROOT/etc/systemd/system.conf.d" "$ROOT/etc/systemd/journald.conf.d"
printf '[Manager]\nShowStatus=no\nDefaultTimeoutStopSec=20s\n' >"$ROOT/etc/systemd/system.conf.d/vmtest.conf"
printf '[Journal]\nStorage=volatile\nForwardToConsole=no\n' >"$ROOT/etc/systemd/journald.conf.d/vmtest.conf"
# The test unit: mounts the per-run disk (/dev/vdb) and runs its guest.sh with the console.
install -m 0755 "$HERE/guest-boot" "$ROOT/usr/local/sbin/vmtest-boot"
cat >"$ROOT/etc/systemd/system/vmtest.service" <<'UNIT'
[Unit]
Description=pt-hook test bed: run the injected guest script
After=multi-user.target libvirtd.service
Wants=libvirtd.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/vmtest-boot
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/vmtest.service "$ROOT/etc/systemd/system/multi-user.target.wants/vmtest.service"
# libvirt: no default network autostart (needs dnsmasq/iptables), QEMU as root is not needed.
rm -f "$ROOT/etc/libvirt/qemu/networks/autostart/default.xml"
rm -rf "$ROOT/var/cache/apt/archives/"*.deb "$ROOT/var/lib/apt/lists/"*_Packages

# --- image ------------------------------------------------------------------
size_mb=$(($(du -sm "$ROOT" | cut -f1) * 13 / 10 + 400))
log "mkfs.ext4 -d ($size_mb MiB)"
truncate -s "${size_mb}M" "$OUT/root.img"
mkfs.ext4 -q -F -L ptroot -d "$ROOT" "$OUT/root.img"

# --- initramfs: load virtio_blk + ext4, mount /dev/vda, switch_root to systemd -----------
st="$OUT/initrd.d"
mkdir -p "$st"/{bin,dev,proc,sys,newroot,lib/modules/"$KVER"}
cp /bin/busybox "$st/bin/busybox"
for a in sh mount umount switch_root insmod sleep cat echo mkdir; do ln -s busybox "$st/bin/$a"; done
mods=()
for m in virtio_pci virtio_blk ext4 crc32c_generic; do
    while read -r line; do
        case "$line" in insmod\ *) mods+=("$(echo "$line" | awk '{print $2}')") ;; esac
    done < <(modprobe -d "$KROOT" -S "$KVER" --show-depends "$m" 2>/dev/null || true)
done
: >"$st/modules"
for src in "${mods[@]}"; do # modprobe's order: dependencies first
    b=$(basename "${src%.xz}")
    [ -e "$st/lib/modules/$b" ] && continue
    case "$src" in *.xz) xz -dc "$src" >"$st/lib/modules/$b" ;; *) cp "$src" "$st/lib/modules/$b" ;; esac
    echo "$b" >>"$st/modules"
done
cat >"$st/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules); do insmod /lib/modules/$m 2>/dev/null; done
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mount -t ext4 -o rw /dev/vda /newroot || { echo "INITRD: cannot mount /dev/vda"; sleep 5; echo o >/proc/sysrq-trigger; }
umount /proc /sys; umount /dev 2>/dev/null
exec switch_root /newroot /sbin/init
INIT
chmod 755 "$st/init"
(cd "$st" && find . -print0 | cpio --null -o -H newc --owner=0:0 --quiet) | gzip -1 >"$OUT/initrd.gz"
cp "$KROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
echo "$KVER" >"$OUT/kver"
rm -rf "$st" "$ROOT"
touch "$OUT/.done"
log "image built in $(($(date +%s) - t0)) s: $(du -sh --apparent-size "$OUT/root.img" | cut -f1) (apparent), $(du -sh "$OUT/root.img" | cut -f1) used"
