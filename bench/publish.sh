#!/usr/bin/env bash
# Benchmark (not a test): what publishing the device inventory adds to a hook phase. One
# fake Proxmox node (8 two-function GPUs on vfio-pci, 32 other functions, 20 VM configs, a
# PCI mapping, a pci.ids of the real one's size), one
# release binary; every round runs pre-start and post-stop of VM 100 twice, with publishing
# (/etc/pve/nodes/pve1 exists) and without ([cluster] publish = false), alternating so both
# see the same machine load. Prints the average wall time of each phase (fork+exec included)
# and the difference. The fake /etc/pve is a plain directory: on a real cluster the write
# goes through pmxcfs and corosync, which this does not measure.
#   bash bench/publish.sh
#   ROUNDS=100 bash bench/publish.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS=${ROUNDS:-50}
TARGET=x86_64-unknown-linux-gnu
cargo build --release --target $TARGET >/dev/null 2>&1
B=$PWD/target/$TARGET/release/pt-hook
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

. tests/fakehost.sh
fh_root "$WORK/host"
fh_pci_ids
# A pci.ids the size of the real one (~1.3 MB, 40,000 lines; the inventory looks names up
# in it like `status` does): the excerpt's entries, then 1,900 made-up vendors of 20 devices.
awk 'BEGIN {
    for (v = 0; v < 1900; v++) {
        printf "%04x  Vendor %d Incorporated Technologies\n", 0xa000 + v, v
        for (d = 0; d < 20; d++) printf "\t%04x  Device %d of vendor %d, a long enough product name [Series %d]\n", d, d, v, d
    }
}' >"$WORK/pci.ids.more"
sed -i "/^# List of known device classes/e cat $WORK/pci.ids.more" "$WORK/host/usr/share/misc/pci.ids"
fh_driver vfio-pci vfio_pci
for i in 1 2 3 4 5 6 7 8; do
    b=$(printf %02x "$i")
    fh_dev "0000:$b:00.0" 10de 2786 030000 vfio-pci "$i" - override=vfio-pci
    fh_dev "0000:$b:00.1" 10de 22bc 040300 vfio-pci "$i" - override=vfio-pci
done
# What else a node has and the inventory leaves out: 8 root ports, 24 chipset functions.
for i in $(seq 0 7); do fh_bridge "0000:00:1c.$i" "$((20 + i))"; done
classes=(0c0330 010601 0c0500 040300 020000 078000 0c8000 060100)
for i in $(seq 0 23); do
    fh_dev "0000:00:$(printf %02x $((0x10 + i / 8))).$((i % 8))" 8086 "7a$(printf %02x "$i")" "${classes[$((i % 8))]}" - "$((40 + i))" -
done
printf 'machine: q35\nhostpci0: 01:00,pcie=1\n' >"$WORK/host/etc/pve/qemu-server/100.conf"
for v in $(seq 101 119); do
    printf 'machine: q35\nmemory: 4096\nhostpci0: mapping=rtx4070,pcie=1\n' >"$WORK/host/etc/pve/qemu-server/$v.conf"
done
{
    printf 'rtx4070\n'
    for i in 2 3 4 5 6 7 8; do printf '\tmap node=pve1,path=0000:%02x:00,id=10de:2786\n' "$i"; done
} >"$WORK/host/etc/pve/mapping/pci.cfg"
mkdir -p "$WORK/host/etc/pve/nodes/pve1"
mkdir -p "$WORK/host/etc/pt-hook"
printf '[cluster]\npublish = false\n' >"$WORK/host/etc/pt-hook/off.toml"
chmod 0644 "$WORK/host/etc/pt-hook/off.toml"
OFF=/etc/pt-hook/off.toml
export PT_HOOK_NODE=pve1

# One run: adds its wall time and its CPU time (user + system, its children included: the
# publish child is waited for) in milliseconds to wall[KEY] and cpu[KEY]. CPU time is what
# to compare on a busy machine; wall time includes waiting for a core.
declare -A wall=() cpu=()
add() { # add KEY COMMAND...
    local k=$1 out r u s
    shift
    out=$( { TIMEFORMAT='%3R %3U %3S'; time "$@" >/dev/null 2>&1; } 2>&1 ) || { echo "failed: $*" >&2; exit 1; }
    read -r r u s <<<"$out"
    wall[$k]=$(( ${wall[$k]:-0} + 10#${r/./} ))
    cpu[$k]=$(( ${cpu[$k]:-0} + 10#${u/./} + 10#${s/./} ))
}
for ((r = 0; r < ROUNDS; r++)); do
    add pre_on "$B" --root "$WORK/host" 100 pre-start
    add post_on "$B" --root "$WORK/host" 100 post-stop
    add pre_off "$B" --root "$WORK/host" --config "$OFF" 100 pre-start
    add post_off "$B" --root "$WORK/host" --config "$OFF" 100 post-stop
    add pub "$B" --root "$WORK/host" publish
done
ms() { awk -v s="$1" -v n="$ROUNDS" 'BEGIN {printf "%.2f", s / n}'; }
diff_ms() { awk -v a="$1" -v b="$2" -v n="$ROUNDS" 'BEGIN {printf "%+.2f", (a - b) / n}'; }
inv="$WORK/host/etc/pve/nodes/pve1/pt-hook.json"
ndev=$(grep -o '"bdf"' "$inv" | wc -l)
echo "fake node: 16 functions on vfio-pci, 32 others, 20 VM configs, pci.ids $(stat -c %s "$WORK/host/usr/share/misc/pci.ids") bytes; inventory $ndev devices, $(stat -c %s "$inv") bytes"
echo "average of $ROUNDS rounds (fork+exec included), load $(cut -d' ' -f1 /proc/loadavg) at the end:"
for p in pre post; do
    name=$([ $p = pre ] && echo pre-start || echo post-stop)
    echo "  $name: wall with publishing $(ms "${wall[${p}_on]}") ms, without $(ms "${wall[${p}_off]}") ms, adds $(diff_ms "${wall[${p}_on]}" "${wall[${p}_off]}") ms;" \
        "CPU with $(ms "${cpu[${p}_on]}") ms, without $(ms "${cpu[${p}_off]}") ms, adds $(diff_ms "${cpu[${p}_on]}" "${cpu[${p}_off]}") ms"
done
echo "  pt-hook publish alone: wall $(ms "${wall[pub]}") ms, CPU $(ms "${cpu[pub]}") ms"
