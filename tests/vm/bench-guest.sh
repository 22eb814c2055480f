#!/bin/sh
# Benchmark guest script (a benchmark, not a test): prints BENCH lines, then SCENARIO-DONE.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C
. /run/vmtest.env
read -r T_START _ </proc/uptime
now() { read -r _t _ </proc/uptime; echo "$_t"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.3f", b - a}'; }
N=${BENCH_ROUNDS:-5}
H=/usr/sbin/pt-hook
SYS=/sys/bus/pci/devices
cat >/etc/pve/qemu-server/200.conf <<CONF
hostpci0: $NVME1
hostpci1: $VNET
CONF
modprobe vfio_pci

# 1. A VM's pre-start + post-stop cycle with pt-hook (reset at stop off: the raw loop does
#    not reset either) against the same sysfs writes from a shell loop.
mkdir -p /etc/pt-hook
printf '[vm.200]\nreset_on_stop = false\n' >/etc/pt-hook/pt-hook.toml
chmod 600 /etc/pt-hook/pt-hook.toml
t=$(now)
i=0; while [ $i -lt $N ]; do $H 200 pre-start >/dev/null 2>&1; $H 200 post-stop >/dev/null 2>&1; i=$((i+1)); done
PT=$(since "$t")
raw_cycle() {
    for d in $NVME1 $VNET; do
        drv=$(basename "$(readlink $SYS/$d/driver)")
        echo "$drv" >/tmp/drv.$d
        echo $d >/sys/bus/pci/drivers/$drv/unbind
        echo vfio-pci >$SYS/$d/driver_override
        echo $d >/sys/bus/pci/drivers_probe
    done
    for d in $NVME1 $VNET; do
        echo $d >/sys/bus/pci/drivers/vfio-pci/unbind
        echo >$SYS/$d/driver_override
        echo $d >/sys/bus/pci/drivers/$(cat /tmp/drv.$d)/bind
    done
}
t=$(now)
i=0; while [ $i -lt $N ]; do raw_cycle; i=$((i+1)); done
RAW=$(since "$t")
# The usual peer script: the same writes plus its fixed sleeps (2 s after stopping the
# display manager, 1 s around the unbinds, 2 s before restarting: 5 s per cycle; PEERS.md).
PEER_SLEEP=5
echo "BENCH cycle rounds=$N pt-hook=${PT}s raw-shell=${RAW}s ratio=$(awk -v a=$PT -v b=$RAW 'BEGIN{printf "%.2f", a/b}') peer-script=$(awk -v r=$RAW -v n=$N -v s=$PEER_SLEEP 'BEGIN{printf "%.2f", r + n*s}')s (raw + ${PEER_SLEEP}s fixed sleeps per cycle)"
rm -f /etc/pt-hook/pt-hook.toml

# 2. Resets: 1, 2 and 3 devices in one call against separate calls in a row (each R times).
R=${BENCH_RESET_ROUNDS:-5}
for set in "$NVME1" "$NVME1 $NVME2" "$NVME1 $NVME2 $VNET"; do
    n=$(echo $set | wc -w)
    t=$(now); i=0; while [ $i -lt $R ]; do $H reset $set >/dev/null 2>&1; i=$((i+1)); done; ONE=$(since "$t")
    t=$(now); i=0; while [ $i -lt $R ]; do for d in $set; do $H reset $d >/dev/null 2>&1; done; i=$((i+1)); done; SEP=$(since "$t")
    echo "BENCH reset devices=$n rounds=$R one-call=${ONE}s separate-calls=${SEP}s ratio=$(awk -v a=$ONE -v b=$SEP 'BEGIN{printf "%.2f", a/b}')"
done

# Where a 3-device reset spends its time (pt-hook's own log of one call).
$H reset $NVME1 $NVME2 $VNET 2>&1 | sed 's/^/BENCH reset-step /'

# 3. Per-step timings from pt-hook's own log (one cycle).
$H 200 pre-start 2>&1 | sed 's/^/BENCH step /'
$H 200 post-stop 2>&1 | sed 's/^/BENCH step /'
t=$(now); i=0; while [ $i -lt 20 ]; do $H --version >/dev/null; i=$((i+1)); done
V=$(since "$t")
t=$(now); i=0; while [ $i -lt 20 ]; do /bin/busybox true; i=$((i+1)); done
BT=$(since "$t")
echo "BENCH version-startup avg=$(awk -v a=$V 'BEGIN{printf "%.1f", a*1000/20}')ms busybox-true avg=$(awk -v a=$BT 'BEGIN{printf "%.1f", a*1000/20}')ms (guest, TCG, fork+exec included)"
echo "SCENARIO-DONE seconds=$(since "$T_START")"
