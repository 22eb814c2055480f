#!/usr/bin/env bash
# Builds sysfs-shaped fake hosts for pt-hook's tests and the bundled example host.
#   bash tests/fakehost.sh example DIR    the example host (contrib/example-host)
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
        *) echo "usage: $0 example DIR" >&2; exit 2 ;;
    esac
fi
