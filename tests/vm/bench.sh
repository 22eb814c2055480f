#!/usr/bin/env bash
# Benchmark on the real-kernel test bed (not a test): boots the 6.12 kernel with
# PT_HOOK_VM_BENCH_DEVICES extra NVMe controllers and prints the BENCH figures, all from one
# run: a VM's cycle (NVMe + e1000e, pre-start + post-stop with the reset) by pt-hook against
# the same sysfs writes by a shell, serial and per-device parallel; 8 NVMe/virtio functions
# reset in one call against 8 calls; where pt-hook's time goes (its own timing breakdown and
# step lines); start-up time. Each variant runs one untimed cycle (and each build one untimed
# reset call) first. See tests/vm/bench-guest.sh for exactly what each variant does.
#
#   PT_HOOK_BIN=path        benchmark this static binary (e.g. an older build) instead of
#                           building the tree
#   PT_HOOK_BENCH_BEFORE=path  also run this (older) static build, as pt-hook-before, in the
#                           same guest beside the current one: before/after from one run
#   BENCH_CYCLES=41 BENCH_RESET_ROUNDS=5 BENCH_LOG_CYCLES=10   sizes (passed to the guest; the
#                           run-to-run noise here is 3-5%: fewer cycles swing more)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PT_HOOK_VM_SCENARIO=$HERE/bench-guest.sh
export PT_HOOK_VM_KERNELS=${PT_HOOK_VM_KERNELS:-6.12}
# Two guest CPUs (one kernel at a time here): parallel resets and unbinds can use them.
export PT_HOOK_VM_SMP=${PT_HOOK_VM_SMP:-2}
# NVMe 1 and 2, the virtio-net and five more NVMe controllers: the 8-function reset.
export PT_HOOK_VM_BENCH_DEVICES=${PT_HOOK_VM_BENCH_DEVICES:-5}
export PT_HOOK_VM_WORK=${PT_HOOK_VM_WORK:-${PT_HOOK_VM_CACHE:-$HOME/.cache/pt-hook-vm}/bench}
# The sizes reach the guest as a line of assignments after the script's #! line.
SCEN=$(mktemp)
EXTRA_DIR=$(mktemp -d)
trap 'rm -rf "$SCEN" "$EXTRA_DIR"' EXIT
if [ -n "${PT_HOOK_BENCH_BEFORE:-}" ]; then
    cp "$PT_HOOK_BENCH_BEFORE" "$EXTRA_DIR/pt-hook-before"
    export PT_HOOK_VM_EXTRA="${PT_HOOK_VM_EXTRA:-} $EXTRA_DIR/pt-hook-before"
fi
{
    head -n 1 "$HERE/bench-guest.sh"
    echo "BENCH_CYCLES=${BENCH_CYCLES:-41} BENCH_RESET_ROUNDS=${BENCH_RESET_ROUNDS:-5} BENCH_LOG_CYCLES=${BENCH_LOG_CYCLES:-10}"
    tail -n +2 "$HERE/bench-guest.sh"
} >"$SCEN"
export PT_HOOK_VM_SCENARIO=$SCEN
bash "$HERE/run.sh" >/dev/null 2>&1 || true
# A guest kernel that panics while booting (seen here now and then with 2 vCPUs under
# multi-threaded TCG: an oops in the idle task before userspace, nothing of pt-hook running)
# gets one more boot; the line below says so.
for log in "$PT_HOOK_VM_WORK"/*/console.log; do
    if ! grep -q '^SCENARIO-DONE' "$log" && grep -aq 'Kernel panic' "$log" && ! grep -aq '^BENCH' "$log"; then
        echo "(the guest kernel panicked while booting, before the benchmark began: booting once more)"
        bash "$HERE/run.sh" >/dev/null 2>&1 || true
        break
    fi
done
for log in "$PT_HOOK_VM_WORK"/*/console.log; do
    echo "== $(basename "$(dirname "$log")")"
    grep -a '^BENCH' "$log" | sed 's/^BENCH //'
    grep -q '^SCENARIO-DONE' "$log" || echo "(the benchmark did not finish: see $log)"
done
B=${PT_HOOK_BIN:-$HERE/../../target/x86_64-unknown-linux-gnu/release/pt-hook}
echo "binary: $(stat -c %s "$B") bytes (static, stripped)"
