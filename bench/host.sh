#!/usr/bin/env bash
# Host-side benchmark (a benchmark, not a test): binary size, start-up time of
# `pt-hook --version`, `plan` and `status` on a generated fake host with 64 PCI functions,
# and peak memory. Prints figures; never fails on a slow machine.
#   bash bench/host.sh            (builds the release binary first)
#   ROUNDS=200 bash bench/host.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS=${ROUNDS:-100}
TARGET=x86_64-unknown-linux-gnu
cargo build --release --target $TARGET >/dev/null 2>&1
B=$PWD/target/$TARGET/release/pt-hook
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# ---- a generated host: 16 root ports, each with a 4-function card (VGA, audio, USB, serial
# bus), = 64 endpoint functions (+16 bridges), one IOMMU group per card; VM 100 passes 8 cards.
. tests/fakehost.sh
fh_root "$WORK/host"
fh_driver vfio-pci vfio_pci
vm="machine: q35\nbios: ovmf\n"
for i in $(seq 1 16); do
    bus=$(printf '%02x' "$i")
    port=$(printf '0000:00:%02x.0' "$((i + 1))")
    fh_bridge "$port" "$((100 + i))"
    fh_dev "0000:$bus:00.0" 10de 1e84 030000 nvidia "$i" "$port" reset=flr,bus width=16 "speed=8.0 GT/s PCIe"
    fh_dev "0000:$bus:00.1" 10de 10f8 040300 snd_hda_intel "$i" "$port"
    fh_dev "0000:$bus:00.2" 10de 1ad8 0c0330 xhci_hcd "$i" "$port"
    fh_dev "0000:$bus:00.3" 10de 1ad9 0c8000 nvidia-gpu "$i" "$port"
    [ "$i" -le 8 ] && vm="${vm}hostpci$((i - 1)): $bus:00,pcie=1\n"
done
printf "$vm" > "$WORK/host/etc/pve/qemu-server/100.conf"
ndev=$(ls "$WORK/host/sys/bus/pci/devices" | wc -l)

# Average wall time of ROUNDS runs of a command, in ms (fork+exec included).
avg_ms() {
    local t0 t1 i
    t0=$(date +%s%N)
    for ((i = 0; i < ROUNDS; i++)); do "$@" >/dev/null 2>&1; done
    t1=$(date +%s%N)
    awk -v a="$t0" -v b="$t1" -v n="$ROUNDS" 'BEGIN {printf "%.2f", (b - a) / n / 1e6}'
}
peak_kb() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -n 1; }

lddout=$(ldd "$B" 2>&1 || true)
case $lddout in *"not a dynamic executable"* | *"statically linked"*) linkage=static ;; *) linkage="DYNAMIC: $lddout" ;; esac
echo "binary: $(stat -c %s "$B") bytes ($(awk -v s="$(stat -c %s "$B")" 'BEGIN{printf "%.2f", s/1048576}') MiB), $linkage"
# Baselines: a static busybox `true` (when installed) and the dynamic /bin/true.
BB=""
for c in /bin/busybox /usr/bin/busybox; do [ -x "$c" ] && BB=$c && break; done
T=$(avg_ms /bin/true)
[ -n "$BB" ] && TB=$(avg_ms "$BB" true) || TB="n/a"
V=$(avg_ms "$B" --version)
echo "startup (avg of $ROUNDS, fork+exec included): pt-hook --version ${V} ms; baselines: busybox true ${TB} ms, /bin/true ${T} ms"
P=$(PT_HOOK_NODE=pve1 avg_ms "$B" --root "$WORK/host" plan 100)
S=$(avg_ms "$B" --root "$WORK/host" status)
SJ=$(avg_ms "$B" --root "$WORK/host" status --json)
echo "fake host: $ndev PCI functions (64 endpoints + 16 bridges); plan 100 (8 cards = 32 functions) ${P} ms; status ${S} ms; status --json ${SJ} ms (avg of $ROUNDS)"
echo "peak RSS: --version $(peak_kb "$B" --version) KB, plan $(PT_HOOK_NODE=pve1 peak_kb "$B" --root "$WORK/host" plan 100) KB, status $(peak_kb "$B" --root "$WORK/host" status) KB"
