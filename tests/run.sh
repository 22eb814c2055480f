#!/usr/bin/env bash
# pt-hook's tests: unit + simulated-kernel behaviour tests, then the real-kernel test bed:
# the busybox guests (Debian 6.12 and 6.1 kernels under QEMU) and the systemd guest (Debian 12
# userland: dpkg, systemd, libvirtd, Proxmox's PCI sequence; tests/vm/debian/run.sh). Each
# prints its own `N passed, M failed`; both always run, and any failure fails the command.
# tests/vm/run.sh and tests/vm/debian/run.sh install what they need; the shells and groff
# the cargo tests run (completions, man pages: tests/completions.rs, src/tests/contrib_tests.rs)
# are installed here when missing (a fresh Debian 12 has neither zsh nor fish).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
need=()
command -v zsh >/dev/null || need+=(zsh)
command -v fish >/dev/null || need+=(fish)
command -v groff >/dev/null || need+=(groff-base)
if [ ${#need[@]} -gt 0 ]; then
    echo "tests: installing ${need[*]} (the cargo tests run them)" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >&2; then
        apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
        apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >&2
    fi
fi
cargo test --target x86_64-unknown-linux-gnu
rc=0
bash tests/vm/run.sh || rc=1
bash tests/vm/debian/run.sh || rc=1
exit $rc
