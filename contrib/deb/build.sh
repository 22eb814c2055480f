#!/usr/bin/env bash
# Builds pt-hook_<version>_amd64.deb with dpkg-deb, without network access.
#
#   contrib/deb/build.sh [--binary PATH] [--out DIR]
#
# Without --binary it builds the static binary with `cargo build --release --offline` (the
# crates must be in cargo's cache: run `cargo fetch` once while online). The man pages and
# completions are the committed ones in contrib/man and contrib/completions, which the test
# suite (src/contrib_tests.rs) checks against the CLI. Prints the path of the .deb.
# PT_HOOK_DEB_COMPRESS: dpkg-deb compressor (default xz; the tests use gzip for a debug build).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../.." && pwd)
target=x86_64-unknown-linux-gnu
bin=""
out="$top/target/deb"
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) bin=${2:?--binary needs a path}; shift 2 ;;
        --out) out=${2:?--out needs a directory}; shift 2 ;;
        -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for tool in dpkg-deb gzip md5sum; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool not found (apt-get install dpkg gzip coreutils)" >&2; exit 1; }
done
if [ -z "$bin" ]; then
    (cd "$top" && cargo build --release --offline --target "$target") || {
        echo "build.sh: offline build failed; if crates are missing run 'cargo fetch' once while online" >&2
        exit 1
    }
    bin="$top/target/$target/release/pt-hook"
fi
[ -x "$bin" ] || { echo "build.sh: $bin is not an executable" >&2; exit 1; }
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$top/Cargo.toml" | head -n1)
[ -n "$version" ] || { echo "build.sh: no version in Cargo.toml" >&2; exit 1; }
arch=amd64

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
d=$stage/root
install -d -m 0755 "$d/DEBIAN" "$d/usr/sbin" "$d/lib/systemd/system" "$d/usr/lib/tmpfiles.d" \
    "$d/usr/share/man/man8" "$d/usr/share/bash-completion/completions" \
    "$d/usr/share/zsh/vendor-completions" "$d/usr/share/fish/vendor_completions.d" \
    "$d/etc/pt-hook/quirks.d" "$d/usr/share/doc/pt-hook/examples/hooks"
for p in pre-start post-start pre-stop post-stop; do
    install -d -m 0755 "$d/etc/pt-hook/hooks.d/$p"
done
install -m 0755 "$bin" "$d/usr/sbin/pt-hook"
install -m 0644 "$top/contrib/systemd/pt-hook-cleanup.service" "$d/lib/systemd/system/"
install -m 0644 "$top/contrib/tmpfiles/pt-hook.conf" "$d/usr/lib/tmpfiles.d/pt-hook.conf"
for m in "$top"/contrib/man/*.8; do
    gzip -9n <"$m" >"$d/usr/share/man/man8/$(basename "$m").gz"
done
chmod 0644 "$d"/usr/share/man/man8/*
install -m 0644 "$top/contrib/completions/pt-hook.bash" "$d/usr/share/bash-completion/completions/pt-hook"
install -m 0644 "$top/contrib/completions/_pt-hook" "$d/usr/share/zsh/vendor-completions/_pt-hook"
install -m 0644 "$top/contrib/completions/pt-hook.fish" "$d/usr/share/fish/vendor_completions.d/pt-hook.fish"
install -m 0644 "$top/contrib/pt-hook.toml" "$d/etc/pt-hook/pt-hook.toml"
install -m 0644 "$top/README.md" "$d/usr/share/doc/pt-hook/README.md"
install -m 0644 "$top/hooks/README.md" "$d/usr/share/doc/pt-hook/examples/hooks/README.md"
(cd "$top/hooks" && find . -mindepth 2 -type f) | while read -r f; do
    install -D -m 0755 "$top/hooks/$f" "$d/usr/share/doc/pt-hook/examples/hooks/$f"
done
cat >"$d/usr/share/doc/pt-hook/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: pt-hook
License: MIT OR Apache-2.0
COPY

size=$(du -sk --exclude=DEBIAN "$d" | cut -f1)
cat >"$d/DEBIAN/control" <<CTRL
Package: pt-hook
Version: $version
Architecture: $arch
Maintainer: pt-hook developers <root@localhost>
Installed-Size: $size
Section: admin
Priority: optional
Depends: kmod
Recommends: systemd
Description: dependable GPU and PCIe passthrough hook for Proxmox VE and libvirt
 A static binary used as a Proxmox VE hookscript (qm set VMID --hookscript
 local:snippets/pt-hook, see pt-hook install) or as a libvirt qemu hook. At
 pre-start it moves a VM's PCI functions and the rest of their IOMMU groups
 to vfio-pci; at post-stop it resets them and gives them back to their host
 drivers exactly as they were, from its own write-ahead state.
CTRL
printf '/etc/pt-hook/pt-hook.toml\n' >"$d/DEBIAN/conffiles"
cat >"$d/DEBIAN/postinst" <<'POST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if [ -d /run/systemd/system ]; then
        systemd-tmpfiles --create pt-hook.conf || true
        systemctl daemon-reload || true
    fi
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper enable pt-hook-cleanup.service || true
    fi
    echo "pt-hook: link it as a hookscript with 'pt-hook install' (libvirt: 'pt-hook install --libvirt')"
fi
exit 0
POST
cat >"$d/DEBIAN/postrm" <<'POST'
#!/bin/sh
set -e
if [ "$1" = remove ] || [ "$1" = purge ]; then
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper purge pt-hook-cleanup.service >/dev/null || true
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
fi
# pt-hook's own records (address-drift memory, /var/lib/pt-hook/identity): gone with a purge.
if [ "$1" = purge ]; then
    rm -rf /var/lib/pt-hook
fi
exit 0
POST
chmod 0755 "$d/DEBIAN/postinst" "$d/DEBIAN/postrm"
(cd "$d" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -print | sed 's|^\./||' | sort | xargs md5sum) >"$d/DEBIAN/md5sums"
chmod 0644 "$d/DEBIAN/md5sums" "$d/DEBIAN/control" "$d/DEBIAN/conffiles"

mkdir -p "$out"
deb="$out/pt-hook_${version}_${arch}.deb"
dpkg-deb --root-owner-group "-Z${PT_HOOK_DEB_COMPRESS:-xz}" --build "$d" "$deb" >/dev/null
echo "$deb"
