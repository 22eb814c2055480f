#!/usr/bin/env bash
# pt-hook's tests: unit + simulated-kernel behaviour tests, then the real-kernel test bed:
# the busybox guests (Debian 6.12 and 6.1 kernels under QEMU) and the systemd guest (Debian 12
# userland: dpkg, systemd, libvirtd, Proxmox's PCI sequence; tests/vm/debian/run.sh). Each
# prints its own `N passed, M failed`; both always run, and any failure fails the command.
# tests/vm/run.sh and tests/vm/debian/run.sh install what they need.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo test --target x86_64-unknown-linux-gnu
rc=0
bash tests/vm/run.sh || rc=1
bash tests/vm/debian/run.sh || rc=1
exit $rc
