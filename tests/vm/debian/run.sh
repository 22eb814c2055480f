#!/usr/bin/env bash
# The test bed's second guest: Debian 12 with systemd as PID 1, real dpkg, libvirtd and a
# nested QEMU that assigns devices through vfio-pci. See tests/vm/README.md ("systemd guest").
#
# Environment (besides tests/vm/run.sh's PT_HOOK_BIN, PT_HOOK_VM_CACHE):
#   PT_HOOK_DEB_WORK=dir       per-run files (default $CACHE/debian-run)
#   PT_HOOK_DEB_KERNEL=spec    kernel (default 6.12, as the busybox bed)
#   PT_HOOK_DEB_TIMEOUT=secs   wall-clock limit of the QEMU run (default 1500)
#   PT_HOOK_DEB_SECTIONS="..." only these guest.sh sections (default all)
#   PT_HOOK_DEB_SMP=n          guest CPUs (default 2)
#   PT_HOOK_DEB_TCG_THREAD=t   QEMU's TCG threading, single or multi (default single; see
#                              boot_debian)
#   PT_HOOK_VM_VERBOSE=1       print the whole console
set -euo pipefail
DHERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Kernel download/unpack, host tools and the pt-hook build come from the busybox bed.
PT_HOOK_VM_LIB_ONLY=1 source "$DHERE/../run.sh"
DWORK=${PT_HOOK_DEB_WORK:-$CACHE/debian-run}
DKERNEL=${PT_HOOK_DEB_KERNEL:-6.12}
DTIMEOUT=${PT_HOOK_DEB_TIMEOUT:-1500}
DSECTIONS=${PT_HOOK_DEB_SECTIONS:-all}
WORK=$DWORK # build_vfio_hold writes $WORK/vfio-hold
dlog() { printf '[debian] %s\n' "$*" >&2; }

ensure_debian_tools() {
    local need=()
    command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
    command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
    command -v dpkg-deb >/dev/null || need+=(dpkg)
    [ ${#need[@]} -eq 0 ] && return 0
    dlog "installing ${need[*]}"
    wait_for_apt
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >&2; then
        apt_update_once
        apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >&2
    fi
}

# The image is keyed by everything that goes into it; other keys are pruned.
image_dir() {
    local pkg=$1 ver=$2 key
    key=$( (cat "$DHERE/packages" "$DHERE/build-image.sh" "$DHERE/guest-boot"; echo "$pkg $ver") |
        sha256sum | cut -c1-16)
    echo "$CACHE/debian-image/$key"
}

boot_debian() { # IMG DIR: one QEMU run, console on stdout
    local img=$1 dir=$2
    # Same machine as the busybox bed (run.sh boot_kernel) plus two virtio disks on pcie.0:
    # the per-run root copy and the per-run inject disk (read-only).
    # Two vCPUs on one host thread (thread=single): with a host thread per vCPU (MTTCG) a CI
    # run panicked in the idle task of the second CPU, its RIP inside a 5-byte jmp of
    # __schedule (a jump label being patched while the other vCPU ran that code: x86's
    # text_poke relies on cross-CPU instruction-cache coherence that multi-threaded TCG does
    # not give every time). One thread runs the vCPUs in turn and sees its own code writes.
    # Measured on the 2-core CI machine: 4m23s multi-threaded, 6m09s single (134 checks both).
    timeout -k 10 "$DTIMEOUT" qemu-system-x86_64 \
        -accel tcg,thread="${PT_HOOK_DEB_TCG_THREAD:-single}" -cpu max -smp "${PT_HOOK_DEB_SMP:-2}" -m 3072 \
        -machine q35,kernel-irqchip=split \
        -device intel-iommu,intremap=on,caching-mode=on \
        -nodefaults -no-user-config -nographic -vga none -no-reboot \
        -serial stdio -monitor none \
        -kernel "$img/vmlinuz" -initrd "$img/initrd.gz" \
        -append "console=ttyS0 intel_iommu=on panic=-1 loglevel=1 printk.time=1 tsc=reliable systemd.show_status=0 net.ifnames=0" \
        -drive if=none,id=root,file="$dir/root.img",format=raw \
        -device virtio-blk-pci,drive=root,bus=pcie.0,addr=0x9 \
        -drive if=none,id=inj,file="$dir/inject.img",format=raw,readonly=on \
        -device virtio-blk-pci,drive=inj,bus=pcie.0,addr=0xa \
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
        </dev/null
}

main_debian() {
    ensure_host_tools
    ensure_debian_tools
    mkdir -p "$CACHE" "$DWORK"
    local res pkg ver kroot img bin deb t0
    res=$(resolve_kernel "$DKERNEL")
    read -r pkg ver <<<"$res"
    kroot=$(fetch_kernel "$pkg" "$ver") || die "cannot fetch kernel $pkg $ver"
    img=$(image_dir "$pkg" "$ver")
    if [ ! -e "$img/.done" ]; then
        t0=$(date +%s)
        dlog "building the Debian image in $img (cold: a few minutes)"
        bash "$DHERE/build-image.sh" "$kroot" "$img" || die "image build failed"
        echo "$(($(date +%s) - t0))" >"$img/build-seconds"
        for d in "$CACHE"/debian-image/*; do
            [ "$d" = "$img" ] || { dlog "pruning old image $(basename "$d")"; rm -rf "$d"; }
        done
    else
        dlog "cached image $img (built in $(cat "$img/build-seconds" 2>/dev/null || echo ?) s)"
    fi

    bin=$(find_binary)
    dlog "pt-hook binary: $bin"
    build_vfio_hold
    deb=$(bash "$REPO/contrib/deb/build.sh" --binary "$bin" --out "$DWORK/deb") || die "contrib/deb/build.sh failed"
    dlog "package: $deb"

    # Per-run disk: the guest script, the .deb, helpers. Read-only in the guest.
    local inj="$DWORK/inject"
    rm -rf "$inj" "$DWORK/inject.img"
    mkdir -p "$inj"
    cp "$DHERE/guest.sh" "$DHERE/pve-start.py" "$inj/"
    cp "$deb" "$inj/pt-hook.deb"
    cp "$bin" "$inj/pt-hook"
    [ -x "$DWORK/vfio-hold" ] && cp "$DWORK/vfio-hold" "$inj/vfio-hold"
    echo "$DSECTIONS" >"$inj/sections"
    truncate -s 64M "$DWORK/inject.img"
    mkfs.ext4 -q -F -L ptinject -d "$inj" "$DWORK/inject.img"

    local dir=$DWORK rc=0 t1 boot=0
    truncate -s 16M "$dir/nvme1.img" "$dir/nvme2.img"
    # A writable copy of the cached root per run (sparse: ~0.5 GB, a few seconds). guest.sh
    # reboots once (boot 2 checks the cleanup unit at boot); a warm reboot of this machine
    # hangs in early boot under TCG (soft lockups in swapper), so the guest's reboot ends
    # QEMU (-no-reboot) and this loop boots the same disk again.
    cp --sparse=always "$img/root.img" "$dir/root.img"
    : >"$dir/console.raw"
    t0=$(date +%s.%N)
    while [ "$boot" -lt 3 ]; do
        boot=$((boot + 1))
        dlog "boot $boot of the systemd guest (timeout ${DTIMEOUT}s)"
        rc=0
        boot_debian "$img" "$dir" >>"$dir/console.raw" 2>"$dir/qemu.err" || rc=$?
        [ "$rc" = 0 ] || break
        tail -n 5 "$dir/console.raw" | tr -d '\r' | grep -q '^GUEST-REBOOT' || break
    done
    t1=$(date +%s.%N)
    tr -d '\r' <"$dir/console.raw" | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g' >"$dir/console.log"
    local wall
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')

    local log="$dir/console.log" pass fail
    echo "=== systemd guest: Debian 12, $pkg $ver"
    [ "${PT_HOOK_VM_VERBOSE:-0}" = 1 ] && sed 's/^/  | /' "$log"
    pass=$(grep -c '^PASS ' "$log" || true)
    fail=$(grep -c '^FAIL ' "$log" || true)
    grep -E '^(FAIL |INFO |SKIP |GUEST-BOOT)' "$log" | sed 's/^/  /' || true
    if ! grep -q '^GUEST-DONE' "$log" || ! grep -q '^SUMMARY ' "$log"; then
        local why="qemu exit $rc"
        [ "$rc" = 124 ] && why="timed out after ${DTIMEOUT}s"
        grep -q 'Kernel panic' "$log" && why="$why, kernel panic"
        echo "  FAIL guest did not finish (no SUMMARY/GUEST-DONE; $why; see $log)"
        # An oops names its task and CPU at its start, not in the last lines: print the
        # start of the first one, then the end of the console.
        grep -n -m1 -E '(BUG:|Oops:|invalid opcode|general protection fault|kernel BUG at)' "$log" |
            cut -d: -f1 | while read -r at; do
                echo "  first oops (console line $at):"
                sed -n "${at},$((at + 11))p" "$log" | sed 's/^/  > /'
            done
        tail -n 20 "$log" | sed 's/^/  > /'
        fail=$((fail + 1))
    fi
    echo "  systemd guest: $boot boot(s), qemu wall ${wall}s; transcript in $log"
    rm -f "$dir/root.img"
    echo "$pass passed, $fail failed"
    [ "$fail" -eq 0 ] && [ "$pass" -gt 0 ]
}

main_debian "$@"
