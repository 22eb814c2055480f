#!/usr/bin/env bash
# The layer check alone: imports point one way (cli -> cmd -> engine -> parse|sysfs -> host ->
# leaves) and no module cycles (tests/layers.rs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo test --target x86_64-unknown-linux-gnu --test layers -q
