#!/usr/bin/env bash
# Fuzzes every parser of untrusted text (src/tests/fuzz_tests.rs) for a fixed time per target and
# prints executions and panics per target. Usage: bash tests/fuzz.sh [SECONDS_PER_TARGET] [TARGET]
# Targets: vm-config hostpci pci.cfg reservations pt-hook.toml quirks libvirt-xml. A panicking input is
# saved in target/fuzz-crashes/. Exit 1 when any target panicked.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PT_HOOK_FUZZ_SECS="${1:-60}"
[ -n "${2:-}" ] && export PT_HOOK_FUZZ_TARGET="$2"
# Optimised code (more executions per second); tests keep unwinding, so panics are caught.
cargo test --release --target x86_64-unknown-linux-gnu --bin pt-hook fuzz_parsers_do_not_panic \
    -- --nocapture 2>&1 | grep -E '^fuzz |test result|panicked' 
