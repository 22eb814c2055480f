#!/usr/bin/env bash
# Builds pt-hook_<version>_amd64.deb with dpkg-deb, without network access.
#
#   contrib/deb/build.sh [--binary PATH] [--out DIR]
#
# Without --binary it builds the static binary with `cargo build --release --offline` (the
# crates must be in cargo's cache: run `cargo fetch` once while online). The man pages and
# completions are the committed ones in contrib/man and contrib/completions, which the test
# suite (src/tests/contrib_tests.rs) checks against the CLI. Prints the path of the .deb.
# PT_HOOK_DEB_COMPRESS: dpkg-deb compressor (default xz; the tests use gzip for a debug build).
#
# This is the one way the package is built (there is no `cargo deb` metadata: it cannot build
# with the static target flags and would make a different package). The result is
# reproducible: every file gets SOURCE_DATE_EPOCH (default: the last commit's time) as its
# mtime, root:root, fixed modes, and dpkg-deb sorts the members; contrib/deb/check.sh builds
# twice and compares, then runs lintian and installs the package into a temporary root.
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
for tool in dpkg-deb gzip md5sum objcopy; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool not found (apt-get install dpkg gzip coreutils binutils)" >&2; exit 1; }
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
changelog_version=$(sed -n '1s/^pt-hook (\([^)]*\)).*/\1/p' "$here/changelog")
[ "$changelog_version" = "$version" ] || {
    echo "build.sh: contrib/deb/changelog is at $changelog_version, Cargo.toml at $version: add a changelog entry" >&2
    exit 1
}
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$top" log -1 --format=%ct 2>/dev/null) || SOURCE_DATE_EPOCH=""
    [ -n "$SOURCE_DATE_EPOCH" ] || {
        echo "build.sh: not a git checkout: set SOURCE_DATE_EPOCH (seconds since 1970)" >&2
        exit 1
    }
fi
export SOURCE_DATE_EPOCH
umask 022

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
d=$stage/root
doc=$d/usr/share/doc/pt-hook
install -d -m 0755 "$d/DEBIAN" "$d/usr/sbin" "$d/lib/systemd/system" "$d/usr/lib/tmpfiles.d" \
    "$d/usr/share/man/man5" "$d/usr/share/man/man8" "$d/usr/share/bash-completion/completions" \
    "$d/usr/share/zsh/vendor-completions" "$d/usr/share/fish/vendor_completions.d" \
    "$d/usr/share/lintian/overrides" "$d/etc/pt-hook/quirks.d" "$doc/examples/hooks"
for p in pre-start post-start pre-stop post-stop; do
    install -d -m 0755 "$d/etc/pt-hook/hooks.d/$p"
done
install -m 0755 "$bin" "$d/usr/sbin/pt-hook"
# rustc's linker leaves a .comment section (compiler versions) that strip = true keeps.
objcopy --remove-section=.comment "$d/usr/sbin/pt-hook"
install -m 0644 "$top/contrib/systemd/pt-hook-cleanup.service" "$d/lib/systemd/system/"
install -m 0644 "$top/contrib/tmpfiles/pt-hook.conf" "$d/usr/lib/tmpfiles.d/pt-hook.conf"
for m in "$top"/contrib/man/*.[58]; do
    sec=${m##*.}
    gzip -9n <"$m" >"$d/usr/share/man/man$sec/$(basename "$m").gz"
done
install -m 0644 "$top/contrib/completions/pt-hook.bash" "$d/usr/share/bash-completion/completions/pt-hook"
install -m 0644 "$top/contrib/completions/_pt-hook" "$d/usr/share/zsh/vendor-completions/_pt-hook"
install -m 0644 "$top/contrib/completions/pt-hook.fish" "$d/usr/share/fish/vendor_completions.d/pt-hook.fish"
install -m 0644 "$top/contrib/pt-hook.toml" "$d/etc/pt-hook/pt-hook.toml"
install -m 0644 "$here/lintian-overrides" "$d/usr/share/lintian/overrides/pt-hook"
install -m 0644 "$here/copyright" "$doc/copyright"
gzip -9n <"$here/changelog" >"$doc/changelog.gz"
gzip -9n <"$top/README.md" >"$doc/README.md.gz"
install -m 0644 "$here/README.Debian" "$doc/README.Debian"
gzip -9n <"$top/hooks/README.md" >"$doc/examples/hooks/README.md.gz"
(cd "$top/hooks" && find . -mindepth 2 -type f | sed 's|^\./||' | LC_ALL=C sort) | while read -r f; do
    # A hook that is the same file as one already installed becomes a link to it.
    same=$(cd "$doc/examples/hooks" && for g in */*; do [ -f "$g" ] && cmp -s "$g" "$top/hooks/$f" && { echo "$g"; break; }; done || true)
    if [ -n "$same" ]; then
        install -d -m 0755 "$(dirname "$doc/examples/hooks/$f")"
        ln -s "../$same" "$doc/examples/hooks/$f"
    else
        install -D -m 0755 "$top/hooks/$f" "$doc/examples/hooks/$f"
    fi
done
chmod 0644 "$d"/usr/share/man/man*/* "$doc/changelog.gz" "$doc/README.md.gz" "$doc/examples/hooks/README.md.gz"

# Installed-Size as dpkg-gencontrol counts it (KiB per file rounded up, 1 per directory or
# link), independent of the file system the package is staged on.
size=$(cd "$d" && find . -path ./DEBIAN -prune -o -printf '%y %s\n' |
    awk '$1 == "f" { n += int(($2 + 1023) / 1024) } $1 != "f" { n += 1 } END { print n }')
cat >"$d/DEBIAN/control" <<CTRL
Package: pt-hook
Version: $version
Architecture: $arch
Maintainer: pt-hook developers <pt-hook@lists.example.org>
Installed-Size: $size
Section: admin
Priority: optional
Depends: kmod, init-system-helpers (>= 1.54~)
Recommends: systemd
Description: dependable GPU and PCIe passthrough hook for Proxmox VE and libvirt
 A static binary used as a Proxmox VE hookscript (qm set VMID --hookscript
 local:snippets/pt-hook, see pt-hook install) or as a libvirt qemu hook. At
 pre-start it moves a VM's PCI functions and the rest of their IOMMU groups
 to vfio-pci; at post-stop it resets them and gives them back to their host
 drivers exactly as they were, from its own write-ahead state.
CTRL
printf '/etc/pt-hook/pt-hook.toml\n' >"$d/DEBIAN/conffiles"
install -m 0755 "$here/postinst" "$d/DEBIAN/postinst"
install -m 0755 "$here/postrm" "$d/DEBIAN/postrm"
(cd "$d" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort | xargs md5sum) >"$d/DEBIAN/md5sums"
chmod 0644 "$d/DEBIAN/md5sums" "$d/DEBIAN/control" "$d/DEBIAN/conffiles"
# Same mtime everywhere (dpkg-deb also takes SOURCE_DATE_EPOCH for the ar members).
find "$d" -depth -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$out"
deb="$out/pt-hook_${version}_${arch}.deb"
dpkg-deb --root-owner-group --threads-max=1 "-Z${PT_HOOK_DEB_COMPRESS:-xz}" --build "$d" "$deb" >/dev/null
echo "$deb"
