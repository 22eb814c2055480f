#!/bin/sh
# Benchmark guest script (a benchmark, not a test): prints BENCH lines, then SCENARIO-DONE.
# Run by tests/vm/bench.sh with PT_HOOK_VM_BENCH_DEVICES extra NVMe controllers.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C
. /run/vmtest.env
read -r T_START _ </proc/uptime
now() { read -r _t _ </proc/uptime; echo "$_t"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.2f", b - a}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "?"}'; }
C=${BENCH_CYCLES:-41}   # cycles of each variant, interleaved
R=${BENCH_RESET_ROUNDS:-5}
H=/usr/sbin/pt-hook
SYS=/sys/bus/pci/devices
DRV=/sys/bus/pci/drivers
cat >/etc/pve/qemu-server/200.conf <<CONF
hostpci0: $NVME1
hostpci1: $E1000E
CONF
modprobe vfio_pci
rm -f /etc/pt-hook/pt-hook.toml
echo "BENCH devices nvme=$NVME1 e1000e=$E1000E reset_method: nvme '$(cat $SYS/$NVME1/reset_method)' e1000e '$(cat $SYS/$E1000E/reset_method)'"
$H plan 200 2>&1 | sed 's/^/BENCH plan /'

# 1. A VM's cycle: pre-start + post-stop with the reset (the default reset_on_stop = true),
#    against the same sysfs writes by a shell. Per device, in pt-hook's order:
#    pre-start:  read the driver link; unbind from it; driver_override = vfio-pci;
#                drivers_probe
#    post-stop:  reset (the rung the ladder uses first: `1 > reset` with the device's own
#                reset_method, FLR for the NVMe, PM for the e1000e); unbind from vfio-pci;
#                clear driver_override; bind to the driver it had
#    "serial": one device after the other. "parallel": one background job per device, then
#    `wait`, separately for pre-start and for post-stop (pt-hook's phases are separate runs).
sh_pre() {
    drv=$(basename "$(readlink $SYS/$1/driver)")
    echo "$drv" >/tmp/drv.$1
    echo $1 >$DRV/$drv/unbind
    echo vfio-pci >$SYS/$1/driver_override
    echo $1 >/sys/bus/pci/drivers_probe
}
sh_post() {
    echo 1 >$SYS/$1/reset
    echo $1 >$DRV/vfio-pci/unbind
    echo >$SYS/$1/driver_override
    echo $1 >$DRV/$(cat /tmp/drv.$1)/bind
}
# As Proxmox runs it (no -v: the hook's fast path); the -v runs for the breakdown come after.
# MID: when the cycle's pre-start part ended (read without a fork), for the split per phase.
cycle_with() {
    $1 200 pre-start 2>>/tmp/pt.err || echo "BENCH ERROR $1 pre-start failed: $(tail -n 1 /tmp/pt.err)"
    read -r MID _ </proc/uptime
    $1 200 post-stop 2>>/tmp/pt.err || echo "BENCH ERROR $1 post-stop failed: $(tail -n 1 /tmp/pt.err)"
}
cycle_pt() { cycle_with $H; }
# An older build to compare with in the same run (bench.sh PT_HOOK_BENCH_BEFORE=path).
HB=/usr/sbin/pt-hook-before
cycle_before() { cycle_with $HB; }
VARIANTS="pt serial parallel"
[ -x $HB ] && VARIANTS="pt before serial parallel"
cycle_serial() {
    for d in $NVME1 $E1000E; do sh_pre $d; done
    read -r MID _ </proc/uptime
    for d in $NVME1 $E1000E; do sh_post $d; done
}
cycle_parallel() {
    for d in $NVME1 $E1000E; do sh_pre $d & done
    wait
    read -r MID _ </proc/uptime
    for d in $NVME1 $E1000E; do sh_post $d & done
    wait
}
# Cycle by cycle, the three variants one after another (the order rotating), each cycle
# timed on its own: a burst of load on the machine hits all three alike.
: >/tmp/pt.err
# One untimed cycle of each variant first: a first run pays what no later one does (TCG
# translating code it has not run yet, pt-hook creating its directories and records), and
# the timed cycles measure the steady state of all of them alike.
for v in $VARIANTS; do cycle_$v; done
echo "BENCH warm-up: one untimed cycle of each variant ($VARIANTS) before the timed ones"
TPT=0 TSER=0 TPAR=0 TBEF=0 c_before=0 RATIOS=""
i=0
while [ $i -lt $C ]; do
    # Rotate the order: each variant goes first as often as the others.
    order=$VARIANTS
    j=0; while [ $j -lt $i ]; do order="${order#* } ${order%% *}"; j=$((j + 1)); done
    for v in $order; do
        t=$(now); cycle_$v; eval "c_$v=$(since "$t")"
        # The pre-start part of it, summed per variant (the post-stop part is the rest).
        eval "P_$v=\$(awk -v s=\${P_$v:-0} -v a=$t -v b=$MID 'BEGIN{print s + b - a}')"
    done
    echo "BENCH cycle $((i + 1)) pt-hook=${c_pt}s serial-shell=${c_serial}s parallel-shell=${c_parallel}s ratio-vs-parallel=$(ratio $c_pt $c_parallel)$([ -x $HB ] && echo " before=${c_before}s before-ratio-vs-parallel=$(ratio $c_before $c_parallel)")"
    RATIOS="$RATIOS $(ratio $c_pt $c_parallel)"
    TBEF=$(awk -v a=$TBEF -v b=$c_before 'BEGIN{print a + b}')
    TPT=$(awk -v a=$TPT -v b=$c_pt 'BEGIN{print a + b}')
    TSER=$(awk -v a=$TSER -v b=$c_serial 'BEGIN{print a + b}')
    TPAR=$(awk -v a=$TPAR -v b=$c_parallel 'BEGIN{print a + b}')
    i=$((i + 1))
done
N=$C
MED=$(echo $RATIOS | tr ' ' '\n' | sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}')
[ -x $HB ] && echo "BENCH cycle total-before cycles=$N before=${TBEF}s ratio-vs-parallel=$(ratio $TBEF $TPAR) ratio-vs-serial=$(ratio $TBEF $TSER) pt-hook-vs-before=$(ratio $TPT $TBEF)"
echo "BENCH cycle total cycles=$N pt-hook=${TPT}s serial-shell=${TSER}s parallel-shell=${TPAR}s ratio-vs-serial=$(ratio $TPT $TSER) ratio-vs-parallel=$(ratio $TPT $TPAR) median-cycle-ratio-vs-parallel=$MED per-cycle: pt-hook=$(awk -v a=$TPT -v n=$N 'BEGIN{printf "%.0f", a*1000/n}')ms serial-shell=$(awk -v a=$TSER -v n=$N 'BEGIN{printf "%.0f", a*1000/n}')ms parallel-shell=$(awk -v a=$TPAR -v n=$N 'BEGIN{printf "%.0f", a*1000/n}')ms"
# The same cycles split at the end of their pre-start part (/proc/uptime: 10 ms steps,
# averaged over the cycles).
split() { awk -v c=$1 -v p=$2 -v n=$N 'BEGIN{printf "pre-start=%.0fms post-stop=%.0fms", p*1000/n, (c-p)*1000/n}'; }
echo "BENCH cycle split pt-hook: $(split $TPT $P_pt) parallel-shell: $(split $TPAR $P_parallel) serial-shell: $(split $TSER $P_serial)$([ -x $HB ] && echo " before: $(split $TBEF $P_before)")"
# The device state after all that (every variant must leave the host as it found it).
for d in $NVME1 $E1000E; do
    echo "BENCH after-cycles $d driver=$(basename "$(readlink $SYS/$d/driver)") override=$(cat $SYS/$d/driver_override)"
done

# Where pt-hook's cycle time goes: its own -v log of BENCH_LOG_CYCLES more cycles, averaged.
N=${BENCH_LOG_CYCLES:-10}
: >/tmp/pt.log
i=0
while [ $i -lt $N ]; do
    $H -v 200 pre-start 2>>/tmp/pt.log
    $H -v 200 post-stop 2>>/tmp/pt.log
    i=$((i + 1))
done
#   "timing ..." lines (pt-hook with the timing breakdown): per phase, per category.
#   step lines "...: ok (N ms)" (every version): per kernel step.
awk -v n=$N '
    / pre-start: timing total=/ { ph = "pre-start" }
    / post-stop: timing total=/ { ph = "post-stop" }
    / timing total=/ {
        for (i = 1; i <= NF; i++) if (split($i, kv, "=") == 2 && kv[2] ~ /ms/) {
            v = kv[2]; sub(/ms.*/, "", v); sum[ph " " kv[1]] += v; seen[ph " " kv[1]] = 1
        }
    }
    END { for (k in seen) printf "BENCH breakdown %s avg=%.1fms\n", k, sum[k] / n }
' /tmp/pt.log | sort
awk '/^pt-hook: VM 200 [a-z-]+: .*: ok \(/ {
        ph = $4; sub(/:$/, "", ph)
        line = $0; sub(/^pt-hook: VM 200 [a-z-]+: /, "", line)
        i = index(line, ": ok ("); desc = substr(line, 1, i - 1); split(substr(line, i + 6), a, " ")
        v = a[1]; if (a[2] !~ /^ms/) v = v / 1000
        k = ph " " desc; s[k] += v; c[k]++
    }
    / done in [0-9.]+ ms/ { ph = $4; sub(/:$/, "", ph); d[ph] += $(NF - 1); dc[ph]++ }
    END {
        for (k in s) printf "BENCH step %s avg=%.1fms n=%d\n", k, s[k] / c[k], c[k]
        for (k in d) printf "BENCH phase %s in-process avg=%.1fms n=%d\n", k, d[k] / dc[k], dc[k]
    }' /tmp/pt.log | sort
#   milestones per phase from the span lines ("timing +START cat what: DUR"): when the first
#   kernel write began (and the first reset), when the last kernel write or wait ended, and
#   the phase's total; the
#   parts before and after the kernel's work are pt-hook's own.
awk -v n=$N '
    function ms(v, u) { return u == "s" ? v * 1000 : (u == "ms" ? v : v / 1000) }
    / timing total=/ {
        ph = ($4 == "pre-start:") ? "pre-start" : "post-stop"
        t = $0; sub(/.*timing total=/, "", t); sub(/ms.*/, "", t); tot[ph] += t; runs[ph]++
        first = -1; freset = -1
        next
    }
    / timing \+/ {
        st = $6; sub(/^\+/, "", st); sub(/ms$/, "", st); cat = $7
        if (cat != "write" && cat != "wait") next
        if (cat == "write" && first < 0) { first = st; fw[ph] += st }
        if (cat == "write" && freset < 0 && $0 ~ /\/reset: /) { freset = st; fr[ph] += st; nr[ph]++ }
        end = st + ms($(NF - 1), $NF)
        if (end > last[ph, runs[ph]]) last[ph, runs[ph]] = end
    }
    END {
        for (p in runs) {
            le = 0; for (i = 1; i <= runs[p]; i++) le += last[p, i]
            printf "BENCH milestones %s first-kernel-write=+%.1fms%s last-kernel-op-end=+%.1fms total=%.1fms (avg of %d)\n", p, fw[p] / runs[p], nr[p] ? sprintf(" first-reset=+%.1fms", fr[p] / nr[p]) : "", le / runs[p], tot[p] / runs[p], runs[p]
        }
    }' /tmp/pt.log | sort
grep -a -i 'error\|FAILED' /tmp/pt.log | head -5 | sed 's/^/BENCH log-error /'
# One cycle's whole -v log, for reading.
$H -v 200 pre-start 2>&1 | sed 's/^/BENCH log /'
$H -v 200 post-stop 2>&1 | sed 's/^/BENCH log /'

# 2. Resets: 8 NVMe/virtio functions (NVMe 1 and 2, the virtio-net, the benchmark NVMe
#    controllers), each behind its own root port, in one `pt-hook reset` call against 8
#    separate calls one after another; R rounds, interleaved.
EXTRA=$(for d in $SYS/*; do
    [ "$(cat $d/vendor):$(cat $d/device)" = 0x1b36:0x0010 ] || continue
    b=$(basename $d); [ "$b" = "$NVME1" ] || [ "$b" = "$NVME2" ] || echo $b
done)
SET="$NVME1 $NVME2 $VNET $EXTRA"
SET=$(echo $SET | tr ' ' '\n' | head -8 | tr '\n' ' ')
n=$(echo $SET | wc -w)
echo "BENCH reset-set n=$n $SET"
# Untimed: one call of each build first (as for the cycles).
$H reset $SET >/dev/null 2>&1
[ -x $HB ] && $HB reset $SET >/dev/null 2>&1
ONE=0 SEP=0 BONE=0
i=0
while [ $i -lt $R ]; do
    t=$(now); $H reset $SET >/tmp/reset.out 2>&1 || { echo "BENCH ERROR reset one call:"; sed 's/^/BENCH   /' /tmp/reset.out; }; o=$(since "$t")
    t=$(now); for d in $SET; do $H reset $d >/dev/null 2>&1 || echo "BENCH ERROR reset $d failed"; done; s=$(since "$t")
    b=0
    if [ -x $HB ]; then t=$(now); $HB reset $SET >/dev/null 2>&1 || echo "BENCH ERROR before: reset one call failed"; b=$(since "$t"); fi
    echo "BENCH reset-round $((i + 1)) devices=$n one-call=${o}s separate-calls=${s}s ratio=$(ratio $o $s)$([ -x $HB ] && echo " before-one-call=${b}s before-ratio=$(ratio $b $s)")"
    ONE=$(awk -v a=$ONE -v b=$o 'BEGIN{print a + b}')
    SEP=$(awk -v a=$SEP -v b=$s 'BEGIN{print a + b}')
    BONE=$(awk -v a=$BONE -v b=$b 'BEGIN{print a + b}')
    i=$((i + 1))
done
echo "BENCH reset total devices=$n rounds=$R one-call=${ONE}s separate-calls=${SEP}s ratio=$(ratio $ONE $SEP) (floor 1/$n = $(awk -v n=$n 'BEGIN{printf "%.3f", 1/n}'))$([ -x $HB ] && echo " before-one-call=${BONE}s before-ratio=$(ratio $BONE $SEP)")"
# The kernel's own floor for that ratio: the same 8 resets by a shell (`1 > reset`, the rung
# the ladder uses first), one after another against all at once; R rounds, interleaved.
KS=0 KP=0
i=0
while [ $i -lt $R ]; do
    t=$(now); for d in $SET; do echo 1 >$SYS/$d/reset; done; s=$(since "$t")
    t=$(now); for d in $SET; do echo 1 >$SYS/$d/reset & done; wait; p=$(since "$t")
    echo "BENCH reset-shell-round $((i + 1)) devices=$n serial=${s}s parallel=${p}s ratio=$(ratio $p $s)"
    KS=$(awk -v a=$KS -v b=$s 'BEGIN{print a + b}')
    KP=$(awk -v a=$KP -v b=$p 'BEGIN{print a + b}')
    i=$((i + 1))
done
echo "BENCH reset kernel-floor devices=$n rounds=$R shell-serial=${KS}s shell-parallel=${KP}s ratio=$(ratio $KP $KS) (the kernel's own ratio: pt-hook's one call / 8 calls lies between this and 1/$n, nearer 1/$n the more each call costs; a cheaper call moves it towards this)"
# Where one 8-device call spends its time.
$H -v reset $SET 2>&1 | grep -v '^pt-hook: reset: timing +' | sed 's/^/BENCH reset-log /'
$H reset --json $SET 2>/dev/null | grep -A14 '"timing"' | sed 's/^/BENCH reset-json /'

# 3. Start-up: --version against busybox true (fork+exec included).
t=$(now); i=0; while [ $i -lt 20 ]; do $H --version >/dev/null; i=$((i+1)); done
V=$(since "$t")
t=$(now); i=0; while [ $i -lt 20 ]; do /bin/busybox true; i=$((i+1)); done
BT=$(since "$t")
echo "BENCH version-startup avg=$(awk -v a=$V 'BEGIN{printf "%.1f", a*1000/20}')ms busybox-true avg=$(awk -v a=$BT 'BEGIN{printf "%.1f", a*1000/20}')ms (guest, TCG, fork+exec included)"
echo "SCENARIO-DONE seconds=$(since "$T_START")"
