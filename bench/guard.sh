#!/usr/bin/env bash
# Benchmark (not a test): what the host guard costs. Builds this tree's binary and a baseline
# from before the guard (BASE, default 2b2b555), runs both side by side on a copy of the
# example host whose /proc is the machine's own, first as the machine is, then with NPROC
# extra processes that each hold five fds (/dev/null on 0-2, /dev/zero, and a block node), and prints the
# average time of `plan 100`, `status` and the guard's own scan (from `-v`), with ratios.
#   bash bench/guard.sh
#   NPROC=2000 ROUNDS=30 BASE=<rev> bash bench/guard.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
NPROC=${NPROC:-2000}
ROUNDS=${ROUNDS:-30}
BASE=${BASE:-2b2b555}
TARGET=x86_64-unknown-linux-gnu
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    [ ${#PIDS[@]} -gt 0 ] && kill "${PIDS[@]}" 2>/dev/null || true
    git worktree remove --force "$WORK/base" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --release --target $TARGET >/dev/null 2>&1
NEW=$PWD/target/$TARGET/release/pt-hook
OLD=$WORK/pt-hook-base
git worktree add --detach "$WORK/base" "$BASE" >/dev/null 2>&1
(cd "$WORK/base" && CARGO_TARGET_DIR=$PWD/../base-target cargo build --release --target $TARGET >/dev/null 2>&1)
cp "$WORK/base-target/$TARGET/release/pt-hook" "$OLD"

# The example host, with the machine's /proc: the guard walks real processes' fds. VM 100's
# NVMe gets a namespace (nvme0n1, 259:0) so the guard has a node to look for; nothing holds it.
cp -a contrib/example-host "$WORK/host"
rm -rf "$WORK/host/proc"
ln -s /proc "$WORK/host/proc"
ns=$(readlink -f "$WORK/host/sys/bus/pci/devices/0000:02:00.0")/nvme/nvme0/nvme0n1
mkdir -p "$ns" "$WORK/host/sys/class/block"
echo 259:0 >"$ns/dev"
ln -s "$ns" "$WORK/host/sys/class/block/nvme0n1"
# A block node the sleepers hold (needs a stat per fd: not one the guard looks for by path).
BLK=
for b in $(ls /sys/block); do
    if (exec 9<"/dev/$b") 2>/dev/null; then BLK=/dev/$b; break; fi
done
[ -n "$BLK" ] || { echo "no openable block device for the sleepers" >&2; exit 1; }
export PT_HOOK_NODE=pve1

avg_ms() {
    local t0 t1 i
    t0=$(date +%s%N)
    for ((i = 0; i < ROUNDS; i++)); do "$@" >/dev/null 2>&1 || true; done
    t1=$(date +%s%N)
    awk -v a="$t0" -v b="$t1" -v n="$ROUNDS" 'BEGIN {printf "%.2f", (b - a) / n / 1e6}'
}
# The guard's own scan time, from its -v line, averaged.
guard_ms() {
    local i sum=0 v
    for ((i = 0; i < ROUNDS; i++)); do
        v=$("$NEW" -v --root "$WORK/host" plan 100 2>&1 >/dev/null | sed -n 's/.*host guard: .* user(s), \([0-9.]*\) \(µs\|ms\).*/\1 \2/p' | head -n1)
        case $v in *µs) v=$(awk -v x="${v% *}" 'BEGIN{print x/1000}') ;; *) v=${v% *} ;; esac
        sum=$(awk -v a="$sum" -v b="${v:-0}" 'BEGIN{print a+b}')
    done
    awk -v s="$sum" -v n="$ROUNDS" 'BEGIN {printf "%.2f", s / n}'
}
nodes() { "$NEW" -v --root "$WORK/host" plan 100 2>&1 >/dev/null | sed -n 's/.*function(s), \([0-9]*\) open fd.*/\1/p' | head -n1; }
# The kernel's floor for the same walk: one find over every /proc/PID/fd, a readlink per fd
# (what lsof/fuser pay), single-threaded.
floor_ms() { avg_ms find /proc/ -mindepth 3 -maxdepth 3 -path '/proc/[0-9]*/fd/*' -lname '/dev/*' -printf ''; }
row() { # LABEL
    local po pn so sn g
    po=$(avg_ms "$OLD" --root "$WORK/host" plan 100)
    pn=$(avg_ms "$NEW" --root "$WORK/host" plan 100)
    so=$(avg_ms "$OLD" --root "$WORK/host" status)
    sn=$(avg_ms "$NEW" --root "$WORK/host" status)
    g=$(guard_ms)
    f=$(floor_ms)
    printf '%-34s %8s %8s %6s  %8s %8s %6s  %8s %8s  %s\n' "$1" "$po" "$pn" \
        "$(awk -v a="$pn" -v b="$po" 'BEGIN{printf "%.2fx", a/b}')" "$so" "$sn" \
        "$(awk -v a="$sn" -v b="$so" 'BEGIN{printf "%.2fx", a/b}')" "$g" "$f" "$(nodes)"
}

echo "baseline $BASE vs this tree; avg of $ROUNDS runs each, ms (fork+exec included); $(nproc) CPUs"
printf '%-34s %8s %8s %6s  %8s %8s %6s  %8s %8s  %s\n' "host" "plan old" "plan new" "ratio" "stat old" "stat new" "ratio" "guard" "find fd" "fds on its nodes"
echo "(guard: the scan inside plan 100, from -v; find fd: find(1) readlinking every /proc/*/fd entry, the kernel's floor for the walk)"
row "as is ($(ls -d /proc/[0-9]* 2>/dev/null | wc -l) processes)"
for ((i = 0; i < NPROC; i++)); do
    sleep 3600 </dev/null >/dev/null 2>&1 3</dev/zero 4<"$BLK" &
    PIDS+=($!)
done
n=$(ls -d /proc/[0-9]* 2>/dev/null | wc -l)
row "+$NPROC sleepers ($n processes, each on $BLK)"
