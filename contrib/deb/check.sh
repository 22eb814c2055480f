#!/usr/bin/env bash
# Checks the Debian package as a packager would (CI runs this; .ci/run installs lintian):
#   1. builds the release binary and the .deb twice, in two staging directories with
#      different umask and TZ, and compares the sha256 (reproducible build);
#   2. lintian --pedantic -I -E: no tag except the overrides in contrib/deb/lintian-overrides;
#   3. installs it with dpkg into an empty root (--root, maintainer scripts run chrootless
#      with DPKG_ROOT, so nothing of this host's /etc changes): files, conffile, the clean-up
#      unit enabled, tmpfiles created; an admin's disable survives an upgrade; remove masks
#      and keeps state; purge leaves nothing of the package behind.
#   contrib/deb/check.sh [--binary PATH]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../.." && pwd)
target=x86_64-unknown-linux-gnu
bin=""
[ "${1:-}" = --binary ] && bin=${2:?--binary needs a path}
fail() { echo "deb check: FAIL: $*" >&2; exit 1; }
for tool in lintian dpkg dpkg-deb sha256sum deb-systemd-helper systemd-tmpfiles; do
    command -v "$tool" >/dev/null || fail "$tool not found (apt-get install lintian dpkg coreutils init-system-helpers systemd)"
done
if [ -z "$bin" ]; then
    (cd "$top" && cargo build --release --target "$target") || fail "cargo build"
    bin="$top/target/$target/release/pt-hook"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. Two builds, byte for byte.
deb1=$(umask 022 && TZ=UTC "$here/build.sh" --binary "$bin" --out "$work/a")
sleep 1
deb2=$(umask 077 && TZ=Pacific/Kiritimati "$here/build.sh" --binary "$bin" --out "$work/b")
s1=$(sha256sum <"$deb1" | cut -d' ' -f1)
s2=$(sha256sum <"$deb2" | cut -d' ' -f1)
echo "deb check: build 1 sha256 $s1"
echo "deb check: build 2 sha256 $s2"
[ "$s1" = "$s2" ] || fail "two builds differ (diffoscope $deb1 $deb2)"
deb=$deb1

# 2. lintian.
lint=$(lintian --pedantic -I -E --fail-on none "$deb" 2>&1 | grep -v '^N: \|running with root privileges' || true)
if [ -n "$lint" ]; then
    printf '%s\n' "$lint" >&2
    fail "lintian found the tags above"
fi
echo "deb check: lintian --pedantic -I -E: clean ($(grep -c '^pt-hook:' "$here/lintian-overrides") justified overrides)"

# 3. dpkg into an empty root.
R=$work/root
mkdir -p "$R/var/lib/dpkg/info" "$R/var/lib/dpkg/updates" "$R/etc/systemd/system" "$R/run"
: >"$R/var/lib/dpkg/status"
: >"$R/var/lib/dpkg/available"
d() { dpkg --root="$R" --force-script-chrootless --force-depends --log=/dev/null "$@" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg $*"; }; }
wants=$R/etc/systemd/system/multi-user.target.wants/pt-hook-cleanup.service
d -i "$deb"
for f in usr/sbin/pt-hook etc/pt-hook/pt-hook.toml lib/systemd/system/pt-hook-cleanup.service \
    usr/lib/tmpfiles.d/pt-hook.conf usr/share/man/man8/pt-hook.8.gz usr/share/man/man5/pt-hook.toml.5.gz \
    usr/share/doc/pt-hook/copyright usr/share/doc/pt-hook/changelog.gz; do
    [ -e "$R/$f" ] || fail "installed package lacks /$f"
done
grep -q '^/etc/pt-hook/pt-hook.toml ' <(dpkg-query --root="$R" -W -f='${Conffiles}\n' pt-hook | sed 's/^ //') ||
    fail "/etc/pt-hook/pt-hook.toml is not a conffile"
[ -L "$wants" ] || fail "first install did not enable pt-hook-cleanup.service"
[ "$(stat -c %a "$R/run/pt-hook")" = 700 ] || fail "tmpfiles did not create /run/pt-hook 0700"
"$R/usr/sbin/pt-hook" --version >/dev/null || fail "installed binary does not run"
echo "deb check: install: files, conffile, unit enabled, /run/pt-hook 0700"
# The admin disables the unit; an upgrade (same version reinstalled) must not re-enable it.
if command -v systemctl >/dev/null; then
    systemctl --root="$R" --quiet disable pt-hook-cleanup.service
else
    rm -f "$wants" # what systemctl disable does for this unit
fi
[ ! -e "$wants" ] || fail "disable did not remove the wants link"
d -i "$deb"
[ ! -e "$wants" ] || fail "upgrade re-enabled a disabled pt-hook-cleanup.service"
echo "deb check: upgrade: the admin's disable is kept"
mkdir -p "$R/var/lib/pt-hook/identity" && echo '{}' >"$R/var/lib/pt-hook/identity/vm-100.json"
d -r pt-hook
[ -e "$R/etc/pt-hook/pt-hook.toml" ] || fail "remove deleted the conffile"
[ -e "$R/var/lib/pt-hook/identity/vm-100.json" ] || fail "remove deleted /var/lib/pt-hook"
[ ! -e "$R/usr/sbin/pt-hook" ] || fail "remove left the binary"
[ "$(readlink "$R/etc/systemd/system/pt-hook-cleanup.service")" = /dev/null ] || fail "remove did not mask the unit"
echo "deb check: remove: binary gone, conffile and /var/lib/pt-hook kept, unit masked"
d -P pt-hook
# Files and links anywhere, directories with pt-hook in their name (the empty system
# directories dpkg and deb-systemd-helper made in this empty root do not count).
left=$(cd "$R" && find . -path ./var/lib/dpkg -prune -o \( ! -type d -o -name '*pt-hook*' \) -print)
[ -z "$left" ] || fail "purge left: $left"
echo "deb check: purge: nothing left (state, identity files, unit links, mask, conffile)"
echo "deb check: ok"
