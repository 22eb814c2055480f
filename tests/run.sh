#!/usr/bin/env bash
# pt-hook's tests: unit + simulated-kernel behaviour tests, then the real-kernel test bed
# (Debian 6.12 and 6.1 kernels under QEMU; tests/vm/run.sh installs what it needs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo test --target x86_64-unknown-linux-gnu
bash tests/vm/run.sh
