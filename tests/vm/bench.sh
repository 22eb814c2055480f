#!/usr/bin/env bash
# Benchmark on the real-kernel test bed (not a test): boots the 6.12 kernel and prints the
# BENCH figures: pt-hook's cycle vs raw shell writes vs a peer script with fixed sleeps,
# resets of 1/2/3 devices in one call vs separate calls, per-step timings, start-up time.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PT_HOOK_VM_SCENARIO=$HERE/bench-guest.sh
export PT_HOOK_VM_KERNELS=${PT_HOOK_VM_KERNELS:-6.12}
# Two guest CPUs (one kernel at a time here): parallel resets and unbinds can use them.
export PT_HOOK_VM_SMP=${PT_HOOK_VM_SMP:-2}
export PT_HOOK_VM_WORK=${PT_HOOK_VM_WORK:-${PT_HOOK_VM_CACHE:-$HOME/.cache/pt-hook-vm}/bench}
bash "$HERE/run.sh" >/dev/null 2>&1 || true
for log in "$PT_HOOK_VM_WORK"/*/console.log; do
    echo "== $(basename "$(dirname "$log")")"
    grep -a '^BENCH' "$log" | sed 's/^BENCH //'
done
B="$HERE/../../target/x86_64-unknown-linux-gnu/release/pt-hook"
echo "binary: $(stat -c %s "$B") bytes (static, stripped)"
