#!/usr/bin/env bash
# Real-kernel test bed for pt-hook.
#
# Boots Debian's 6.12 and 6.1 kernels under QEMU/TCG (q35 + intel-iommu) with a
# busybox initramfs, a set of PCIe devices behind root ports, and runs
# tests/vm/scenario.sh inside each guest. See tests/vm/README.md.
#
# Environment:
#   PT_HOOK_BIN=path           use this static binary instead of building pt-hook
#   PT_HOOK_VM_KERNELS="6.12 6.1"  kernels to boot (a version spec or a linux-image-* package)
#   PT_HOOK_VM_CACHE=dir       download/unpack cache (default ~/.cache/pt-hook-vm)
#   PT_HOOK_VM_WORK=dir        per-run files: initramfs, disk images, console logs
#   PT_HOOK_VM_TIMEOUT=secs    wall-clock limit for one QEMU run (default 420)
#   PT_HOOK_VM_JOBS=n          kernels booted concurrently (default: 2 if >= 2 CPUs)
#   PT_HOOK_VM_VERBOSE=1       print the whole guest console of every kernel
#   PT_HOOK_VM_SECTIONS="..."  only run these scenario sections (default: all)
#   PT_HOOK_VM_SCENARIO=file   run this guest script instead of tests/vm/scenario.sh
#   PT_HOOK_VM_SMP=n           guest CPUs (default 1; the two kernels already run side by side)
#   PT_HOOK_VM_EXTRA="f ..."   more static programs to put in the guest's /usr/sbin (benchmarks)
#   PT_HOOK_VM_BENCH_DEVICES=n benchmarks only: n more NVMe controllers (serial ptbenchN), each
#                              behind its own pcie-root-port after the regular five, so the
#                              regular layout (BDFs, IOMMU groups) stays as it is
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${PT_HOOK_VM_CACHE:-$HOME/.cache/pt-hook-vm}
WORK=${PT_HOOK_VM_WORK:-$CACHE/run}
KERNELS=${PT_HOOK_VM_KERNELS:-6.12 6.1}
QEMU_TIMEOUT=${PT_HOOK_VM_TIMEOUT:-420}
VERBOSE=${PT_HOOK_VM_VERBOSE:-0}
SECTIONS=${PT_HOOK_VM_SECTIONS:-all}
if [ -z "${PT_HOOK_VM_JOBS:-}" ]; then
    if [ "$(nproc)" -ge 2 ]; then PT_HOOK_VM_JOBS=2; else PT_HOOK_VM_JOBS=1; fi
fi

# Modules the guest needs, resolved with their dependencies. vfio-pci is shipped
# but not loaded by init: pt-hook has to load it.
MODULES="vfio vfio_iommu_type1 vfio_pci vfio_pci_core irqbypass bochs
snd_hda_intel snd_hda_codec_generic nvme nvme_core virtio virtio_ring virtio_pci
virtio_net net_failover failover e1000e ext4 crc32c_generic"

log() { printf '[vm] %s\n' "$*" >&2; }
die() { printf '[vm] ERROR: %s\n' "$*" >&2; exit 1; }

# --------------------------------------------------------------------------
# 1. host tools
# --------------------------------------------------------------------------
wait_for_apt() {
    # Another apt/dpkg (e.g. the machine's background install logging to
    # /tmp/apt.log) may hold the dpkg lock: wait for it to finish.
    local i
    for i in $(seq 1 900); do
        if pgrep -x 'apt-get|apt|dpkg|unattended-upgr' >/dev/null 2>&1; then
            [ "$i" = 1 ] && log "waiting for a running apt/dpkg to finish (see /tmp/apt.log)"
            sleep 1
        else
            return 0
        fi
    done
    log "apt/dpkg still busy after 900 s; trying anyway"
}

APT_UPDATED=0
apt_update_once() {
    [ "$APT_UPDATED" = 1 ] && return 0
    wait_for_apt
    log "apt-get update"
    apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 || log "apt-get update failed"
    APT_UPDATED=1
}

ensure_host_tools() {
    local need=()
    command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
    # busybox must be the static build: it runs inside the initramfs.
    if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
        need+=(busybox-static)
    fi
    command -v cpio >/dev/null || need+=(cpio)
    command -v depmod >/dev/null || need+=(kmod)
    command -v modprobe >/dev/null || need+=(kmod)
    command -v xz >/dev/null || need+=(xz-utils)
    command -v gzip >/dev/null || need+=(gzip)
    command -v timeout >/dev/null || need+=(coreutils)
    [ ${#need[@]} -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || die "missing packages ${need[*]} and not root to install them"
    log "installing ${need[*]}"
    wait_for_apt
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >&2; then
        apt_update_once
        apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >&2
    fi
}

# --------------------------------------------------------------------------
# 2. kernels
# --------------------------------------------------------------------------
meta_for_spec() {
    case "$1" in
        linux-image-*) echo "$1" ;;
        6.1) echo linux-image-amd64 ;;
        *) echo "linux-image-$1-amd64" ;;
    esac
}

# Prints "PKG VERSION" of the real image package behind a spec.
resolve_kernel() {
    local spec=$1 meta pkg ver memo="$CACHE/resolved-$1"
    meta=$(meta_for_spec "$spec")
    pkg=""
    for attempt in 1 2; do
        pkg=$(apt-cache depends "$meta" 2>/dev/null |
            awk '/^ *\|?Depends: linux-image-/ {print $2; exit}')
        # A concrete image package (not a metapackage) names itself.
        [ -z "$pkg" ] && [[ "$meta" == linux-image-*.*-* ]] && pkg=$meta
        if [ -n "$pkg" ]; then
            ver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | awk '/^Version:/ {print $2; exit}')
            [ -n "$ver" ] && break
        fi
        pkg=""
        [ "$attempt" = 1 ] && apt_update_once
    done
    if [ -z "$pkg" ]; then
        if [ -s "$memo" ]; then
            log "apt does not know $meta; using the cached $(cat "$memo")"
            cat "$memo"
            return 0
        fi
        die "cannot resolve kernel '$spec' ($meta): not in apt-cache (check apt-cache policy $meta)"
    fi
    echo "$pkg $ver" >"$memo"
    echo "$pkg $ver"
}

# Downloads and unpacks; prints the unpacked root. Returns 1 on failure
# (explicit checks: callers use it in `if`, where set -e does not apply).
fetch_kernel() {
    local pkg=$1 ver=$2 root deb kver enc
    root="$CACHE/kernels/${pkg}_${ver}"
    enc=$(echo "$ver" | sed 's/:/%3a/')
    if [ ! -e "$root/.unpacked" ]; then
        mkdir -p "$CACHE/debs" || return 1
        deb="$CACHE/debs/${pkg}_${enc}_amd64.deb"
        if [ ! -s "$deb" ]; then
            log "downloading $pkg $ver"
            (cd "$CACHE/debs" && apt-get -q -o APT::Sandbox::User=root download "$pkg=$ver" >&2) || return 1
            [ -s "$deb" ] || { log "apt-get download did not produce $deb"; return 1; }
        fi
        log "unpacking $(basename "$deb")"
        rm -rf "$root"
        mkdir -p "$root" || return 1
        dpkg -x "$deb" "$root" || { rm -f "$deb"; return 1; }
        kver=$(ls "$root/lib/modules" 2>/dev/null)
        [ -n "$kver" ] && [ -e "$root/boot/vmlinuz-$kver" ] || { log "no kernel/modules in $deb"; return 1; }
        # The package ships no modules.dep (postinst runs depmod): make one.
        depmod -b "$root" "$kver" || return 1
        touch "$root/.unpacked"
    fi
    echo "$root"
}

# Drop downloads/unpacked trees no resolved-* memo refers to any more (a
# kernel update would otherwise leave ~0.5 GB behind per version).
prune_cache() {
    local keep=" " f pkg ver
    for f in "$CACHE"/resolved-*; do
        [ -s "$f" ] || continue
        read -r pkg ver <"$f"
        keep+="${pkg}_${ver} ${pkg}_$(echo "$ver" | sed 's/:/%3a/')_amd64.deb "
    done
    for f in "$CACHE"/kernels/* "$CACHE"/debs/*.deb; do
        [ -e "$f" ] || continue
        case "$keep" in *" $(basename "$f") "*) ;; *) log "pruning old $(basename "$f")"; rm -rf "$f" ;; esac
    done
}

# --------------------------------------------------------------------------
# 3. pt-hook binary
# --------------------------------------------------------------------------
find_binary() {
    local bin
    if [ -n "${PT_HOOK_BIN:-}" ]; then
        bin=$PT_HOOK_BIN
        [ -x "$bin" ] || die "PT_HOOK_BIN=$bin is not an executable file"
    else
        log "cargo build --release --target x86_64-unknown-linux-gnu"
        (cd "$REPO" && cargo build --release --target x86_64-unknown-linux-gnu >&2) ||
            die "cargo build failed (set PT_HOOK_BIN to test the bed with another binary)"
        bin="$REPO/target/x86_64-unknown-linux-gnu/release/pt-hook"
    fi
    if command -v readelf >/dev/null && readelf -lW "$bin" 2>/dev/null | grep -q 'Requesting program interpreter'; then
        die "$bin is dynamically linked; the initramfs has no libc (need crt-static)"
    fi
    readlink -f "$bin"
}

# The static VFIO holder (tests/vm/vfio-hold.c). Without gcc the guest gets none and the
# sections that need it fail (never skip).
build_vfio_hold() {
    rm -f "$WORK/vfio-hold"
    if ! command -v gcc >/dev/null; then
        log "WARNING: no gcc: vfio-hold not built, the facts/guard VFIO cases will FAIL"
        return 0
    fi
    gcc -static -O2 -Wall -o "$WORK/vfio-hold" "$HERE/vfio-hold.c" >&2 ||
        die "gcc -static failed for tests/vm/vfio-hold.c (is libc6-dev installed?)"
}

# --------------------------------------------------------------------------
# 4. initramfs
# --------------------------------------------------------------------------
build_initramfs() {
    local root=$1 out=$2 bin=$3 kver stage m line
    kver=$(ls "$root/lib/modules")
    stage="$out.d"
    rm -rf "$stage"
    mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp,etc/pve/qemu-server,var/log,root,lib/modules/"$kver"}
    cp /bin/busybox "$stage/bin/busybox"
    local applet
    while read -r applet; do
        [ "$applet" = bin/busybox ] && continue
        mkdir -p "$stage/$(dirname "$applet")"
        ln -sf /bin/busybox "$stage/$applet"
    done < <(/bin/busybox --list-full)
    cp "$bin" "$stage/usr/sbin/pt-hook"
    # The VFIO holder for the facts and guard sections (absent: those sections fail).
    [ -x "$WORK/vfio-hold" ] && cp "$WORK/vfio-hold" "$stage/usr/sbin/vfio-hold"
    # Extra static programs for benchmarks (baselines), copied to /usr/sbin.
    for x in ${PT_HOOK_VM_EXTRA:-}; do cp "$x" "$stage/usr/sbin/"; done
    cp "$HERE/init" "$stage/init"
    cp "${PT_HOOK_VM_SCENARIO:-$HERE/scenario.sh}" "$stage/scenario.sh"
    chmod 755 "$stage/init" "$stage/scenario.sh" "$stage/usr/sbin/pt-hook"
    echo "$SECTIONS" >"$stage/etc/vmtest-sections"
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$stage/etc/passwd"
    printf 'root:x:0:\n' >"$stage/etc/group"

    # Modules: the closure of $MODULES per the kernel's own modules.dep,
    # decompressed (busybox insmod cannot read .ko.xz), then depmod again.
    local mods=()
    for m in $MODULES; do
        while read -r line; do
            case "$line" in insmod\ *) mods+=("$(echo "$line" | awk '{print $2}')") ;; esac
        done < <(modprobe -d "$root" -S "$kver" --show-depends "$m" 2>/dev/null || true)
    done
    local src rel dst
    for src in $(printf '%s\n' "${mods[@]}" | sort -u); do
        rel=${src#"$root"/lib/modules/"$kver"/}
        rel=${rel#/}
        dst="$stage/lib/modules/$kver/${rel%.xz}"
        mkdir -p "$(dirname "$dst")"
        case "$src" in
            *.xz) xz -dc "$src" >"$dst" ;;
            *.zst) zstd -qdc "$src" >"$dst" ;;
            *) cp "$src" "$dst" ;;
        esac
    done
    cp "$root/lib/modules/$kver/modules.builtin" "$root/lib/modules/$kver/modules.order" "$stage/lib/modules/$kver/" 2>/dev/null || true
    [ -e "$root/lib/modules/$kver/modules.builtin.modinfo" ] &&
        cp "$root/lib/modules/$kver/modules.builtin.modinfo" "$stage/lib/modules/$kver/"
    depmod -b "$stage" "$kver"
    (cd "$stage" && find . -print0 | cpio --null -o -H newc --owner=0:0 --quiet) | gzip -1 >"$out"
}

# --------------------------------------------------------------------------
# 5. boot
# --------------------------------------------------------------------------
# Layout (see README.md): every endpoint sits behind its own pcie-root-port so
# it gets its own IOMMU group, except the VGA + HDA pair (one multifunction
# device, one group) like a real GPU with HDMI audio.
boot_kernel() {
    local root=$1 initrd=$2 dir=$3 kernel
    kernel="$root/boot/vmlinuz-$(ls "$root/lib/modules")"
    truncate -s 16M "$dir/nvme1.img" "$dir/nvme2.img"
    # Benchmark devices (PT_HOOK_VM_BENCH_DEVICES): root ports at 00:09.0 and up, so they
    # enumerate after the regular ones (buses 06 and up) and change nothing before them.
    local extra=() i n=${PT_HOOK_VM_BENCH_DEVICES:-0}
    case "$n" in ''|*[!0-9]*) die "PT_HOOK_VM_BENCH_DEVICES=$n is not a number" ;; esac
    [ "$n" -le 16 ] || die "PT_HOOK_VM_BENCH_DEVICES=$n: at most 16"
    for i in $(seq 1 "$n"); do
        truncate -s 1M "$dir/bench$i.img"
        extra+=(-device "pcie-root-port,id=brp$i,chassis=$((5 + i)),slot=$((5 + i)),bus=pcie.0,addr=$(printf '0x%x' $((8 + i)))"
            -drive "if=none,id=bnv$i,file=$dir/bench$i.img,format=raw"
            -device "nvme,serial=ptbench$i,drive=bnv$i,bus=brp$i")
    done
    local t0 t1 rc=0
    t0=$(date +%s.%N)
    timeout -k 10 "$QEMU_TIMEOUT" qemu-system-x86_64 \
        -accel tcg -cpu max -smp "${PT_HOOK_VM_SMP:-1}" -m 1024 \
        -machine q35,kernel-irqchip=split \
        -device intel-iommu,intremap=on,caching-mode=on \
        -nodefaults -no-user-config -nographic -vga none -no-reboot \
        -serial stdio -monitor none \
        -kernel "$kernel" -initrd "$initrd" \
        -append "console=ttyS0 intel_iommu=on panic=-1 rdinit=/init loglevel=1 printk.time=1 tsc=reliable no_timer_check" \
        -audiodev none,id=snd0 \
        -device pcie-root-port,id=rp1,chassis=1,slot=1,bus=pcie.0,addr=0x4 \
        -device pcie-root-port,id=rp2,chassis=2,slot=2,bus=pcie.0,addr=0x5 \
        -device pcie-root-port,id=rp3,chassis=3,slot=3,bus=pcie.0,addr=0x6 \
        -device pcie-root-port,id=rp4,chassis=4,slot=4,bus=pcie.0,addr=0x7 \
        -device pcie-root-port,id=rp5,chassis=5,slot=5,bus=pcie.0,addr=0x8 \
        -device VGA,bus=rp1,addr=0.0,multifunction=on \
        -device ich9-intel-hda,id=hda0,bus=rp1,addr=0.1 \
        -device hda-output,bus=hda0.0,audiodev=snd0 \
        -drive if=none,id=nv1,file="$dir/nvme1.img",format=raw \
        -device nvme,serial=ptnvme1,drive=nv1,bus=rp2 \
        -drive if=none,id=nv2,file="$dir/nvme2.img",format=raw \
        -device nvme,serial=ptnvme2,drive=nv2,bus=rp3 \
        -netdev user,id=n0,restrict=on \
        -device virtio-net-pci,netdev=n0,bus=rp4,romfile=,disable-legacy=on,disable-modern=off \
        -netdev user,id=n1,restrict=on \
        -device e1000e,netdev=n1,bus=rp5,romfile= \
        "${extra[@]}" \
        </dev/null >"$dir/console.raw" 2>"$dir/qemu.err" || rc=$?
    t1=$(date +%s.%N)
    tr -d '\r' <"$dir/console.raw" >"$dir/console.log"
    echo "$rc" >"$dir/qemu.rc"
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f\n", b - a}' >"$dir/wall"
}

run_one() {
    local spec=$1 bin=$2 pkg=$3 ver=$4 root dir
    root=$(fetch_kernel "$pkg" "$ver")
    dir="$WORK/$spec"
    rm -rf "$dir"
    mkdir -p "$dir"
    echo "$pkg $ver" >"$dir/package"
    ls "$root/lib/modules" >"$dir/kver"
    build_initramfs "$root" "$dir/initrd.gz" "$bin"
    rm -rf "$dir/initrd.gz.d"
    boot_kernel "$root" "$dir/initrd.gz" "$dir"
}

# --------------------------------------------------------------------------
# 6. results
# --------------------------------------------------------------------------
report() {
    local spec=$1 dir="$WORK/$1" log pass fail done_marker
    log="$dir/console.log"
    echo "=== kernel $spec: $(cat "$dir/package" 2>/dev/null) ($(cat "$dir/kver" 2>/dev/null))"
    if [ ! -s "$log" ]; then
        echo "FAIL $spec: no console output (qemu rc $(cat "$dir/qemu.rc" 2>/dev/null); $(head -c 400 "$dir/qemu.err" 2>/dev/null))"
        TOTAL_FAIL=$((TOTAL_FAIL + 1))
        return
    fi
    [ "$VERBOSE" = 1 ] && sed 's/^/  | /' "$log"
    pass=$(grep -c '^PASS ' "$log" || true)
    fail=$(grep -c '^FAIL ' "$log" || true)
    grep -E '^(FAIL |INFO |SKIP )' "$log" | sed 's/^/  /' || true
    if grep -q '^SCENARIO-DONE' "$log"; then
        done_marker=1
    else
        done_marker=0
        local qrc why
        qrc=$(cat "$dir/qemu.rc")
        why="qemu exit $qrc"
        [ "$qrc" = 124 ] && why="timed out after ${QEMU_TIMEOUT}s"
        grep -q 'Kernel panic' "$log" && why="$why, kernel panic"
        echo "  FAIL scenario did not finish (no SCENARIO-DONE; $why; see $log)"
        tail -n 15 "$log" | sed 's/^/  > /'
        fail=$((fail + 1))
    fi
    local kboot ready scen gend
    kboot=$(sed -n 's/^INIT-START uptime=\([0-9.]*\).*/\1/p' "$log" | head -1)
    ready=$(sed -n 's/^INIT-READY uptime=\([0-9.]*\).*/\1/p' "$log" | head -1)
    scen=$(sed -n 's/^SCENARIO-DONE .*seconds=\([0-9.]*\).*/\1/p' "$log" | head -1)
    gend=$(sed -n 's/^INIT-END uptime=\([0-9.]*\).*/\1/p' "$log" | head -1)
    echo "  $spec: $pass passed, $fail failed; guest uptime at init ${kboot:-?}s, drivers" \
        "ready ${ready:-?}s, scenario ${scen:-?}s, end ${gend:-?}s; qemu wall $(cat "$dir/wall")s"
    TOTAL_PASS=$((TOTAL_PASS + pass))
    TOTAL_FAIL=$((TOTAL_FAIL + fail))
    [ "$done_marker" = 1 ] || true
}

main() {
    ensure_host_tools
    mkdir -p "$CACHE" "$WORK"
    local bin
    bin=$(find_binary)
    log "pt-hook binary: $bin"
    build_vfio_hold
    # Resolve/download serially (apt), then build+boot in parallel.
    local spec pkg ver res
    for spec in $KERNELS; do
        res=$(resolve_kernel "$spec")
        read -r pkg ver <<<"$res"
        if ! fetch_kernel "$pkg" "$ver" >/dev/null; then
            # Stale package lists name a version the mirror no longer has.
            [ "$APT_UPDATED" = 1 ] && die "cannot download kernel $pkg $ver"
            apt_update_once
            res=$(resolve_kernel "$spec")
            read -r pkg ver <<<"$res"
            fetch_kernel "$pkg" "$ver" >/dev/null || die "cannot download kernel $pkg $ver"
        fi
        log "kernel $spec -> $pkg $ver"
    done
    prune_cache
    local t0 pids=() running=0
    t0=$(date +%s)
    for spec in $KERNELS; do
        if [ "$running" -ge "$PT_HOOK_VM_JOBS" ]; then
            wait "${pids[0]}" || true
            pids=("${pids[@]:1}")
            running=$((running - 1))
        fi
        log "booting $spec"
        read -r pkg ver <"$CACHE/resolved-$spec"
        run_one "$spec" "$bin" "$pkg" "$ver" &
        pids+=($!)
        running=$((running + 1))
    done
    local p
    for p in "${pids[@]}"; do wait "$p" || true; done
    log "all guests done in $(($(date +%s) - t0)) s; logs in $WORK/<kernel>/console.log"

    TOTAL_PASS=0
    TOTAL_FAIL=0
    for spec in $KERNELS; do report "$spec"; done
    echo "$TOTAL_PASS passed, $TOTAL_FAIL failed"
    [ "$TOTAL_FAIL" -eq 0 ]
}

# tests/vm/debian/run.sh sources this file for the kernel and binary helpers.
[ "${PT_HOOK_VM_LIB_ONLY:-0}" = 1 ] || main "$@"
