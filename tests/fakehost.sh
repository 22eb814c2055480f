#!/usr/bin/env bash
# Builds sysfs-shaped fake hosts for pt-hook's tests and the bundled example host.
#   bash tests/fakehost.sh example DIR    the example host (contrib/example-host)
#   bash tests/fakehost.sh good DIR       a host `doctor` passes
#   bash tests/fakehost.sh broken DIR     a host with the common mistakes `doctor` fails
#   source tests/fakehost.sh; fh_root DIR; fh_dev ...   build your own
# A fake host is read-only truth for `plan`, `status`, `doctor`, `quirks`: it has no kernel
# behind it, so writes to it prove nothing (the simulated kernel and the QEMU test bed do).
set -u

fh_link() { # fh_link TARGET LINK: a relative symlink, like sysfs has
    ln -sfn "$(realpath -m --relative-to="$(dirname "$2")" "$1")" "$2"
}

fh_root() {
    mkdir -p "$1"
    FH=$(cd "$1" && pwd)
    mkdir -p "$FH"/sys/bus/pci/devices "$FH"/sys/bus/pci/drivers "$FH"/sys/kernel/iommu_groups \
        "$FH"/sys/devices/pci0000:00 "$FH"/sys/class/iommu/dmar0 "$FH"/sys/module \
        "$FH"/etc/pve/qemu-server "$FH"/etc/pve/mapping "$FH"/run/pt-hook "$FH"/proc \
        "$FH"/sys/class/vtconsole
    : > "$FH"/sys/bus/pci/drivers_probe
    : > "$FH"/sys/bus/pci/rescan
    printf 'BOOT_IMAGE=/boot/vmlinuz root=/dev/mapper/pve-root ro quiet intel_iommu=on iommu=pt\n' > "$FH"/proc/cmdline
}

# fh_driver NAME [MODULE]
fh_driver() {
    mkdir -p "$FH/sys/bus/pci/drivers/$1"
    : > "$FH/sys/bus/pci/drivers/$1/bind"
    : > "$FH/sys/bus/pci/drivers/$1/unbind"
    : > "$FH/sys/bus/pci/drivers/$1/new_id"
    mkdir -p "$FH/sys/module/${2:-${1//-/_}}"
}

# fh_dev BDF VENDOR DEVICE CLASS DRIVER|- GROUP|- PARENT|- [key=value...]
#   keys: reset=flr,bus  boot_vga=1  width=16  speed="16.0 GT/s PCIe"  override=NAME
fh_dev() {
    local bdf=$1 ven=$2 dev=$3 class=$4 drv=$5 grp=$6 parent=$7
    shift 7
    local base="$FH/sys/devices/pci0000:00"
    if [ "$parent" != "-" ]; then
        base=$(readlink -f "$FH/sys/bus/pci/devices/$parent")
    fi
    local d="$base/$bdf"
    mkdir -p "$d/power"
    printf '0x%s\n' "$ven" > "$d/vendor"
    printf '0x%s\n' "$dev" > "$d/device"
    printf '0x%s\n' "$class" > "$d/class"
    printf '0x%s\n' "$ven" > "$d/subsystem_vendor"
    printf '0x0000\n' > "$d/subsystem_device"
    printf '(null)\n' > "$d/driver_override"
    printf 'auto\n' > "$d/power/control"
    printf '1\n' > "$d/d3cold_allowed"
    : > "$d/remove"
    # config space: vendor and device little-endian, then zeros (64 bytes, as non-root sees)
    printf "\\x${ven:2:2}\\x${ven:0:2}\\x${dev:2:2}\\x${dev:0:2}" > "$d/config"
    head -c 60 /dev/zero >> "$d/config"
    local kv
    for kv in "$@"; do
        case $kv in
            reset=*) printf '%s\n' "$(echo "${kv#reset=}" | tr ',' ' ')" > "$d/reset_method"; : > "$d/reset" ;;
            boot_vga=*) printf '%s\n' "${kv#boot_vga=}" > "$d/boot_vga" ;;
            width=*) printf '%s\n' "${kv#width=}" > "$d/current_link_width"; printf '%s\n' "${kv#width=}" > "$d/max_link_width" ;;
            speed=*) printf '%s\n' "${kv#speed=}" > "$d/current_link_speed"; printf '%s\n' "${kv#speed=}" > "$d/max_link_speed" ;;
            override=*) printf '%s\n' "${kv#override=}" > "$d/driver_override" ;;
            subsys=*) printf '0x%s\n' "${kv#subsys=}" > "$d/subsystem_device" ;;
            reset_subordinate) : > "$d/reset_subordinate" ;;
            *) echo "fh_dev: unknown key $kv" >&2; return 1 ;;
        esac
    done
    fh_link "$d" "$FH/sys/bus/pci/devices/$bdf"
    if [ "$drv" != "-" ]; then
        [ -d "$FH/sys/bus/pci/drivers/$drv" ] || fh_driver "$drv"
        fh_link "$FH/sys/bus/pci/drivers/$drv" "$d/driver"
        fh_link "$d" "$FH/sys/bus/pci/drivers/$drv/$bdf"
    fi
    if [ "$grp" != "-" ]; then
        mkdir -p "$FH/sys/kernel/iommu_groups/$grp/devices"
        fh_link "$FH/sys/kernel/iommu_groups/$grp" "$d/iommu_group"
        fh_link "$d" "$FH/sys/kernel/iommu_groups/$grp/devices/$bdf"
    fi
}

# fh_bridge BDF GROUP [PARENT]
fh_bridge() {
    fh_dev "$1" 8086 7a38 060400 pcieport "$2" "${3:--}" reset_subordinate
}

fh_vm() { # fh_vm VMID <<EOF ... EOF
    cat > "$FH/etc/pve/qemu-server/$1.conf"
}

fh_vtcon() { # fh_vtcon N NAME BIND
    mkdir -p "$FH/sys/class/vtconsole/vtcon$1"
    printf '%s\n' "$2" > "$FH/sys/class/vtconsole/vtcon$1/name"
    printf '%s\n' "$3" > "$FH/sys/class/vtconsole/vtcon$1/bind"
}

fh_file() { # fh_file REL < content: any file under the root, parents created
    mkdir -p "$(dirname "$FH/$1")"
    cat > "$FH/$1"
}

# fh_netdev IFACE BDF: a network interface on a PCI function
fh_netdev() {
    mkdir -p "$FH/sys/class/net/$1"
    fh_link "$FH/sys/bus/pci/devices/$2" "$FH/sys/class/net/$1/device"
}

# A few pci.ids entries in the real file's format (vendor, tab device, classes at the end).
fh_pci_ids() {
    printf '%s\n' \
        '# pci.ids excerpt for pt-hook fake hosts' \
        '10de  NVIDIA Corporation' \
        '	2786  AD104 [GeForce RTX 4070]' \
        '	22bc  AD104 High Definition Audio Controller' \
        '8086  Intel Corporation' \
        '	15f3  Ethernet Controller I225-V' \
        '		8086 0001  Ethernet Controller I225-V' \
        '	7a38  Raptor Lake PCI Express Root Port' \
        '	a780  Raptor Lake-S GT1 [UHD Graphics 770]' \
        '' \
        '# List of known device classes, subclasses and programming interfaces' \
        'C 02  Network controller' \
        '	00  Ethernet controller' \
        'C 03  Display controller' \
        '	00  VGA compatible controller' \
        'C 04  Multimedia controller' \
        '	03  Audio device' \
        'C 06  Bridge' \
        '	04  PCI bridge' | fh_file usr/share/misc/pci.ids
}

# What `doctor` reads besides sysfs: kernel release, CPU vendor, interrupt chips, routes.
fh_proc() { # fh_proc CMDLINE IR(yes|no)
    printf '%s\n' "$1" > "$FH/proc/cmdline"
    mkdir -p "$FH/proc/sys/kernel" "$FH/proc/net"
    printf '6.8.12-4-pve\n' > "$FH/proc/sys/kernel/osrelease"
    printf 'processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: 13th Gen Intel(R) Core(TM) i7-13700K\n' > "$FH/proc/cpuinfo"
    local chip=PCI-MSI-0000:00:17.0 apic=IO-APIC
    if [ "$2" = yes ]; then chip=IR-PCI-MSI-0000:00:17.0; apic=IR-IO-APIC; fi
    printf '           CPU0       CPU1\n  0:         41          0  %s    2-edge      timer\n 130:     12345          0  %s    0-edge      ahci[0000:00:17.0]\n' \
        "$apic" "$chip" > "$FH/proc/interrupts"
    printf 'Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\nvmbr0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\nvmbr0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n' \
        > "$FH/proc/net/route"
    mkdir -p "$FH/sys/class/net/vmbr0/brif/enp3s0"
}

# A node doctor passes: Intel iGPU on the host console, an RTX 4070 (own IOMMU group, both
# functions) for VM 100 set up by the book, the management NIC in its own group.
fh_good() {
    fh_root "$1"
    fh_proc "BOOT_IMAGE=/boot/vmlinuz-6.8.12-4-pve root=ZFS=rpool/ROOT/pve-1 boot=zfs quiet intel_iommu=on iommu=pt" yes
    fh_pci_ids
    fh_driver vfio-pci vfio_pci
    mkdir -p "$FH/sys/module/vfio" "$FH/sys/module/vfio_iommu_type1/parameters"
    printf 'N\n' > "$FH/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts"
    printf 'root=ZFS=rpool/ROOT/pve-1 boot=zfs quiet intel_iommu=on iommu=pt\n' | fh_file etc/kernel/cmdline
    printf '0A1B-2C3D\n' | fh_file etc/kernel/proxmox-boot-uuids
    printf 'vfio\nvfio_iommu_type1\nvfio_pci\n' | fh_file etc/modules
    printf 'blacklist nouveau\n' | fh_file etc/modprobe.d/pve-blacklist.conf
    fh_dev 0000:00:02.0 8086 a780 030000 i915 0 - boot_vga=1 reset=flr
    fh_bridge 0000:00:01.0 1
    fh_dev 0000:01:00.0 10de 2786 030000 nvidia 12 0000:00:01.0 reset=flr,bus boot_vga=0 width=16 "speed=16.0 GT/s PCIe"
    fh_dev 0000:01:00.1 10de 22bc 040300 snd_hda_intel 12 0000:00:01.0
    fh_bridge 0000:00:1c.0 3
    fh_dev 0000:03:00.0 8086 15f3 020000 igc 14 0000:00:1c.0 reset=flr,pm,bus width=1 "speed=5.0 GT/s PCIe"
    fh_netdev enp3s0 0000:03:00.0
    mkdir -p "$FH/usr/sbin" "$FH/var/lib/vz/snippets"
    printf '#!/bin/sh\n' > "$FH/usr/sbin/pt-hook"
    chmod 755 "$FH/usr/sbin/pt-hook"
    fh_link "$FH/usr/sbin/pt-hook" "$FH/var/lib/vz/snippets/pt-hook"
    fh_vm 100 <<'EOF'
# Gaming VM: RTX 4070 with its audio, by the book
balloon: 0
bios: ovmf
cores: 8
cpu: host
efidisk0: local-zfs:vm-100-disk-0,efitype=4m,size=1M
hookscript: local:snippets/pt-hook
hostpci0: 0000:01:00,pcie=1,x-vga=1
machine: q35
memory: 16384
name: gaming
vga: none
EOF
    fh_vm 110 <<'EOF'
# no passthrough: doctor skips it
memory: 2048
name: web
EOF
}

# A node with what the guides warn about: no IOMMU (no units, no flags), no interrupt
# remapping, GRUB without flags, the GPU sharing its IOMMU group with the management NIC,
# an i440fx VM without pcie, an i440fx VM with pcie=1, a missing hookscript snippet, the host
# console's driver blacklisted, a stale vfio_virqfd line and a VM taking the boot disk.
fh_broken() {
    fh_root "$1"
    rm -rf "$FH/sys/class/iommu/dmar0"
    fh_proc "BOOT_IMAGE=/boot/vmlinuz-6.8.12-4-pve root=/dev/mapper/pve-root ro quiet" no
    fh_pci_ids
    printf 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX=""\n' | fh_file etc/default/grub
    printf 'vfio\nvfio_iommu_type1\nvfio_pci\nvfio_virqfd\n' | fh_file etc/modules
    printf 'blacklist nouveau\nblacklist i915\n' | fh_file etc/modprobe.d/blacklist.conf
    mkdir -p "$FH/sys/module/vfio" "$FH/sys/module/vfio_iommu_type1" "$FH/sys/module/vfio_pci"
    fh_dev 0000:00:02.0 8086 a780 030000 i915 0 - boot_vga=1 reset=flr
    fh_bridge 0000:00:01.0 1
    # A switch without ACS: the GPU, its audio and the NIC end up in one group.
    fh_dev 0000:01:00.0 10de 2786 030000 nvidia 12 0000:00:01.0 reset=flr,bus width=16
    fh_dev 0000:01:00.1 10de 22bc 040300 snd_hda_intel 12 0000:00:01.0
    fh_dev 0000:03:00.0 8086 15f3 020000 igc 12 0000:00:01.0 reset=flr,pm,bus
    fh_netdev enp3s0 0000:03:00.0
    # The root filesystem: LVM (dm-0) on the NVMe that VM 102 wants.
    fh_bridge 0000:00:1d.0 4
    fh_dev 0000:02:00.0 144d a808 010802 nvme 13 0000:00:1d.0 reset=flr,bus
    local part=$FH/sys/devices/pci0000:00/0000:00:1d.0/0000:02:00.0/nvme/nvme0/nvme0n1/nvme0n1p3
    mkdir -p "$part" "$FH/sys/devices/virtual/block/dm-0/slaves" "$FH/sys/devices/virtual/block/dm-0/dm" "$FH/sys/class/block"
    printf 'pve-root\n' > "$FH/sys/devices/virtual/block/dm-0/dm/name"
    fh_link "$part" "$FH/sys/class/block/nvme0n1p3"
    fh_link "$part" "$FH/sys/devices/virtual/block/dm-0/slaves/nvme0n1p3"
    fh_link "$FH/sys/devices/virtual/block/dm-0" "$FH/sys/class/block/dm-0"
    printf 'sysfs /sys sysfs rw 0 0\n/dev/mapper/pve-root / ext4 rw,relatime 0 0\n' > "$FH/proc/mounts"
    fh_vm 102 <<'EOF'
# takes the NVMe the host boots from
machine: q35
balloon: 0
hookscript: local:snippets/pt-hook
hostpci0: 02:00.0,pcie=1
EOF
    fh_vm 100 <<'EOF'
# GPU on i440fx (no machine line), no pcie, SeaBIOS
hostpci0: 01:00
memory: 8192
name: old
EOF
    fh_vm 101 <<'EOF'
# pcie=1 on i440fx, hookscript snippet missing
hookscript: local:snippets/pt-hook
hostpci0: 01:00.0,pcie=1
machine: pc-i440fx-9.0
memory: 4096
EOF
}

# The example host: a Proxmox node "pve1" with an Intel iGPU driving the console, an RTX 4070
# for a gaming VM, an NVMe behind a mapping, a Vega 64 (vendor-reset family), an RTX 5090
# (Blackwell) and the management NIC.
fh_example() {
    fh_root "$1"
    fh_driver vfio-pci vfio_pci
    fh_dev 0000:00:02.0 8086 a780 030000 i915 0 - boot_vga=1 reset=flr
    fh_bridge 0000:00:01.0 1
    fh_dev 0000:01:00.0 10de 2786 030000 nvidia 12 0000:00:01.0 reset=flr,bus boot_vga=0 width=16 "speed=16.0 GT/s PCIe"
    fh_dev 0000:01:00.1 10de 22bc 040300 snd_hda_intel 12 0000:00:01.0
    fh_bridge 0000:00:01.1 2
    fh_dev 0000:02:00.0 144d a808 010802 nvme 13 0000:00:01.1 reset=flr,bus width=4 "speed=8.0 GT/s PCIe"
    fh_bridge 0000:00:1c.0 3
    fh_dev 0000:03:00.0 8086 15f3 020000 igc 14 0000:00:1c.0 reset=flr,pm,bus
    fh_bridge 0000:00:1c.1 4
    fh_dev 0000:04:00.0 1002 687f 030000 amdgpu 15 0000:00:1c.1 reset=flr,bus width=16
    fh_dev 0000:04:00.1 1002 aaf8 040300 snd_hda_intel 15 0000:00:1c.1
    fh_bridge 0000:00:1c.2 5
    fh_dev 0000:05:00.0 10de 2b85 030000 nvidia 16 0000:00:1c.2 reset=flr,bus width=16 "speed=32.0 GT/s PCIe"
    fh_dev 0000:05:00.1 10de 22e8 040300 snd_hda_intel 16 0000:00:1c.2
    fh_vtcon 0 "(S) dummy device" 1
    fh_vtcon 1 "(M) frame buffer device" 1
    # A fresh Proxmox install's storages (`pt-hook install --root` links into local's path).
    printf 'dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup,snippets\n\nlvmthin: local-lvm\n\tthinpool data\n\tvgname pve\n\tcontent rootdir,images\n' \
        > "$FH/etc/pve/storage.cfg"
    mkdir -p "$FH/var/lib/vz" "$FH/usr/sbin"
    # What `pt-hook install` links to (a stand-in: the fake host runs nothing).
    printf '#!/bin/sh\n# Stand-in for the installed pt-hook on the example host.\nexit 0\n' > "$FH/usr/sbin/pt-hook"
    chmod 0755 "$FH/usr/sbin/pt-hook"
    printf 'fastnvme\n\tmap id=144d:a808,iommugroup=13,node=pve1,path=0000:02:00.0\n\tmap id=144d:a808,node=pve2,path=0000:07:00.0\n\tdescription Fast NVMe\n' \
        > "$FH/etc/pve/mapping/pci.cfg"
    fh_vm 100 <<'EOF'
# Gaming VM: RTX 4070 with its audio (all functions) and the NVMe through a mapping
bios: ovmf
cores: 8
efidisk0: local-lvm:vm-100-disk-0,size=4M
hookscript: local:snippets/pt-hook
hostpci0: 0000:01:00,pcie=1,x-vga=1
hostpci1: mapping=fastnvme,pcie=1
machine: q35
memory: 16384
balloon: 0
vga: none

[PENDING]
hostpci2: 03:00.0

[before-upgrade]
hostpci0: 04:00,pcie=1
snaptime: 1736939109
EOF
    fh_vm 101 <<'EOF'
# AI box: Vega 64 (vendor-reset family) and the NVMe kept on its host driver
bios: ovmf
machine: q35
hostpci0: 04:00.0;04:00.1,pcie=1
memory: 8192
EOF
    fh_vm 102 <<'EOF'
# CAD VM: RTX 5090 (Blackwell)
bios: ovmf
machine: q35
hostpci0: 05:00,pcie=1
memory: 32768
EOF
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    case "${1:-}" in
        example) rm -rf "${2:?DIR}"; fh_example "$2" ;;
        good) rm -rf "${2:?DIR}"; fh_good "$2" ;;
        broken) rm -rf "${2:?DIR}"; fh_broken "$2" ;;
        *) echo "usage: $0 example|good|broken DIR" >&2; exit 2 ;;
    esac
fi
