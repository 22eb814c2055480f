#!/bin/sh
# Runs inside the test guest (busybox sh), started by /init. Prints
#   PASS name | FAIL name (details) | INFO ... | SKIP name (why)
# and finally SCENARIO-DONE. No `set -e`: one failing check must not stop the rest.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C
. /run/vmtest.env
KVER=$(uname -r)
SYS=/sys/bus/pci/devices
read -r T_START _ </proc/uptime
SECTIONS=$(cat /etc/vmtest-sections 2>/dev/null || echo all)
HOOK=/usr/sbin/pt-hook
HOOK_TIMEOUT=120

# ---------------------------------------------------------------- helpers
WHY=""
check() { # NAME CONDITION... ; the condition may set WHY
    _name=$1
    shift
    WHY=""
    if "$@"; then
        echo "PASS $_name"
    else
        echo "FAIL $_name ($*${WHY:+: $WHY})"
    fi
}
info() { echo "INFO [$KVER] $*"; }
section() { # NAME: returns 1 when the section is filtered out
    case " $SECTIONS " in
        *" all "* | *" $1 "*) echo "== section $1" ;;
        *) return 1 ;;
    esac
}
now() { read -r _t _ </proc/uptime; echo "$_t"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.2f", b - a}'; }
short() { echo "${1#0000:}"; }

drv() { # BDF -> driver name or "none"
    if [ -e "$SYS/$1/driver" ]; then basename "$(readlink "$SYS/$1/driver")"; else echo none; fi
}
ovr() { cat "$SYS/$1/driver_override" 2>/dev/null || echo missing; }
rmeth() { cat "$SYS/$1/reset_method" 2>/dev/null || echo "<no file>"; }
pwr() { cat "$SYS/$1/power/control" 2>/dev/null || echo missing; }
group() { basename "$(readlink "$SYS/$1/iommu_group" 2>/dev/null)"; }

drv_is() { # BDF NAME (polls up to ~3 s: probes may finish asynchronously)
    _i=0
    while [ "$(drv "$1")" != "$2" ] && [ $_i -lt 30 ]; do
        sleep 0.1
        _i=$((_i + 1))
    done
    [ "$(drv "$1")" = "$2" ] || { WHY="$1 driver=$(drv "$1")"; return 1; }
}
drv_now_is() { # BDF NAME, no polling
    [ "$(drv "$1")" = "$2" ] || { WHY="$1 driver=$(drv "$1")"; return 1; }
}
ovr_is() { [ "$(ovr "$1")" = "$2" ] || { WHY="$1 driver_override=$(ovr "$1")"; return 1; }; }
rmeth_is() { [ "$(rmeth "$1")" = "$2" ] || { WHY="$1 reset_method='$(rmeth "$1")'"; return 1; }; }
rmeth_has() { case " $(rmeth "$1") " in *" $2 "*) return 0 ;; esac; WHY="$1 reset_method='$(rmeth "$1")'"; return 1; }
eq() { [ "$1" = "$2" ] || { WHY="'$1' != '$2'"; return 1; }; }
ne() { [ "$1" != "$2" ] || { WHY="both '$1'"; return 1; }; }
exists() { [ -e "$1" ] || { WHY="$1 missing"; return 1; }; }
absent() { [ ! -e "$1" ] || { WHY="$1 exists"; return 1; }; }
module_loaded() { [ -d "/sys/module/$1" ] || { WHY="module $1 not loaded"; return 1; }; }
module_unloaded() { [ ! -d "/sys/module/$1" ] || { WHY="module $1 loaded"; return 1; }; }
state_exists() {
    ls /run/pt-hook 2>/dev/null | grep -q "$1" || { WHY="no file naming $1 in /run/pt-hook: $(ls /run/pt-hook 2>&1 | tr '\n' ' ')"; return 1; }
}
state_gone() {
    ! ls /run/pt-hook 2>/dev/null | grep -q "$1" || { WHY="/run/pt-hook still has $(ls /run/pt-hook | grep "$1" | tr '\n' ' ')"; return 1; }
}
has_blockdev() { # BDF: an nvme namespace block device below it (polls ~5 s)
    _i=0
    while [ $_i -lt 50 ]; do
        for _b in /sys/block/*; do
            case "$(readlink -f "$_b")" in */"$1"/*) return 0 ;; esac
        done
        sleep 0.1
        _i=$((_i + 1))
    done
    WHY="no block device below $1"
    return 1
}
has_netdev() { # BDF: a network interface below it (polls ~5 s)
    _i=0
    while [ $_i -lt 50 ]; do
        for _n in /sys/class/net/*; do
            case "$(readlink -f "$_n")" in */"$1"/*) return 0 ;; esac
        done
        sleep 0.1
        _i=$((_i + 1))
    done
    WHY="no net device below $1"
    return 1
}
fbcon_vt() { # the vtconsole that is fbcon, if any
    for _v in /sys/class/vtconsole/vtcon*; do
        grep -q 'frame buffer' "$_v/name" 2>/dev/null && { echo "$_v"; return 0; }
    done
    return 1
}
fbcon_bound() { # polls ~3 s
    _i=0
    while [ $_i -lt 30 ]; do
        _v=$(fbcon_vt) && [ "$(cat "$_v/bind")" = 1 ] && return 0
        sleep 0.1
        _i=$((_i + 1))
    done
    WHY="vtconsoles: $(for _v in /sys/class/vtconsole/vtcon*; do printf '%s=%s,bind=%s ' "${_v##*/}" "$(cat "$_v/name")" "$(cat "$_v/bind")"; done)"
    return 1
}

# pt-hook call: sets RC and OUT, echoes a transcript (not PASS/FAIL lines).
# Called like Proxmox does: stdin closed, cwd /, LC_ALL=C.
RC=0
OUT=""
hook() { run_exe - pt-hook $HOOK "$@"; }
# run_exe STDIN LABEL EXE ARGS...: STDIN is a file, or - for a closed stdin (as Proxmox runs
# the hookscript); sets RC, STDOUT, OUT and HOOK_SECS and prints the transcript.
run_exe() {
    _in=$1
    _label=$2
    _exe=$3
    shift 3
    _t0=$(now)
    if [ "$_in" = - ]; then
        (cd / && exec timeout $HOOK_TIMEOUT "$_exe" "$@" >/tmp/hook.stdout 2>/tmp/hook.stderr <&-)
    else
        (cd / && exec timeout $HOOK_TIMEOUT "$_exe" "$@" <"$_in" >/tmp/hook.stdout 2>/tmp/hook.stderr)
    fi
    RC=$?
    STDOUT=$(cat /tmp/hook.stdout)
    OUT=$(cat /tmp/hook.stdout /tmp/hook.stderr)
    HOOK_SECS=$(elapsed "$_t0")
    if [ "$_in" = - ]; then
        echo "  \$ $_label $* -> exit $RC ($HOOK_SECS s)"
    else
        echo "  \$ $_label $* < $_in -> exit $RC ($HOOK_SECS s)"
    fi
    [ -n "$OUT" ] && echo "$OUT" | head -n 40 | sed 's/^/  | /'
    return 0
}
rc_is() { [ "$RC" = "$1" ] || { WHY="exit $RC, output: $(echo "$OUT" | head -c 300 | tr '\n' ' ')"; return 1; }; }
rc_nonzero() { [ "$RC" != 0 ] || { WHY="exit 0, output: $(echo "$OUT" | head -c 300 | tr '\n' ' ')"; return 1; }; }
out_has() { echo "$OUT" | grep -qi -- "$1" || { WHY="output lacks '$1': $(echo "$OUT" | head -c 300 | tr '\n' ' ')"; return 1; }; }
ok_and_has() { rc_is 0 && out_has "$1"; }
not_mounted_pve() { ! grep -q " /etc/pve " /proc/self/mountinfo || { WHY="/etc/pve still mounted"; return 1; }; }
not_out_has() { ! echo "$OUT" | grep -qi -- "$1" || { WHY="output has '$1'"; return 1; }; }

# ------------------------------------------------ holders (facts, guard)
HOLD=/usr/sbin/vfio-hold
pstate() { # PID -> state letter from /proc/PID/stat, empty when gone
    sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1
}
pid_alive() { _s=$(pstate "$1"); [ -n "$_s" ] && [ "$_s" != Z ]; }
wait_gone() { # PID TENTHS: polls until the process is gone (or a zombie)
    _i=0
    while pid_alive "$1" && [ $_i -lt "$2" ]; do sleep 0.1; _i=$((_i + 1)); done
    ! pid_alive "$1" || { WHY="pid $1 still running (state $(pstate "$1"))"; return 1; }
}
fd_links() { # PID -> "fd->target; ..."
    for _f in /proc/$1/fd/*; do printf '%s->%s; ' "${_f##*/}" "$(readlink "$_f")"; done
}
# start_holder BDF [--group-only]: vfio-hold in the background; sets HOLDER_PID, HOLDER_LINE
# (HOLDING pid=.. group=.. container_fd=.. group_fd=.. device_fd=..).
HOLDER_PID=""
HOLDER_LINE=""
HOLDER_N=0
start_holder() {
    HOLDER_N=$((HOLDER_N + 1))
    HOLDER_STOP=/tmp/hold.stop.$HOLDER_N
    rm -f "$HOLDER_STOP" /tmp/hold.out.$HOLDER_N
    HOLDER_PID=""
    HOLDER_LINE=""
    [ -x "$HOLD" ] || { WHY="$HOLD missing (run.sh builds it with gcc)"; return 1; }
    # A real host has it from QEMU's first VFIO use; busybox modprobe ignores vfio's softdep.
    [ -d /sys/module/vfio_iommu_type1 ] || modprobe vfio_iommu_type1
    $HOLD "$@" --until "$HOLDER_STOP" >/tmp/hold.out.$HOLDER_N 2>&1 </dev/null &
    HOLDER_PID=$!
    _i=0
    while [ $_i -lt 50 ]; do
        HOLDER_LINE=$(grep '^HOLDING ' /tmp/hold.out.$HOLDER_N)
        [ -n "$HOLDER_LINE" ] && return 0
        pid_alive $HOLDER_PID || break
        sleep 0.1
        _i=$((_i + 1))
    done
    WHY="vfio-hold $*: $(head -c 300 /tmp/hold.out.$HOLDER_N | tr '\n' ' ')"
    return 1
}
holder_field() { echo "$HOLDER_LINE" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
stop_holder() { # asks the current holder to exit (its --until file), then TERM, then KILL
    [ -n "$HOLDER_PID" ] || return 0
    touch "$HOLDER_STOP"
    wait_gone $HOLDER_PID 50 || { kill $HOLDER_PID 2>/dev/null; wait_gone $HOLDER_PID 30; } ||
        { kill -9 $HOLDER_PID 2>/dev/null; wait_gone $HOLDER_PID 30; }
    _r=$?
    HOLDER_PID=""
    return $_r
}
blk_of() { # BDF -> the block device below it (nvme0n1), empty if none; no polling
    for _b in /sys/block/*; do
        case "$(readlink -f "$_b")" in */"$1"/*) echo "${_b##*/}"; return 0 ;; esac
    done
}
net_of() { ls "$SYS/$1/net" 2>/dev/null | head -n 1; }
to_vfio_by_hand() { # BDF
    modprobe vfio-pci
    [ -e "$SYS/$1/driver" ] && echo "$1" >"$SYS/$1/driver/unbind"
    echo vfio-pci >"$SYS/$1/driver_override"
    echo "$1" >/sys/bus/pci/drivers_probe
    drv_is "$1" vfio-pci
}
back_by_hand() { # BDF HOSTDRIVER
    [ -e "$SYS/$1/driver" ] && echo "$1" >"$SYS/$1/driver/unbind"
    echo >"$SYS/$1/driver_override"
    echo "$1" >/sys/bus/pci/drivers_probe
    drv_is "$1" "$2"
}

# pt-hook in the background, its stdout+stderr through a pipe into `cat`: the pipe only closes
# when every process that inherited it is gone. hook_bg ARGS... starts it (BG_P = its files),
# hook_wait LIMIT polls until the pipe closed or LIMIT seconds passed; sets RC ("running" if
# not done), OUT, HOOK_SECS (start to pipe closed), BG_DONE. Never blocks on the kernel.
BG_N=0
BG_PENDING=""
hook_bg() {
    BG_N=$((BG_N + 1))
    BG_P=/tmp/bg.$BG_N
    BG_ARGS="$*"
    rm -f $BG_P.*
    now >$BG_P.t0
    ( { cd / && $HOOK "$@" <&-; echo $? >$BG_P.rc; } 2>&1 | cat >$BG_P.out; now >$BG_P.end ) &
}
hook_wait() { # LIMIT_SECONDS
    read -r _t0 <$BG_P.t0
    _lim=$(awk -v l="$1" 'BEGIN {printf "%d", l * 10}')
    _i=0
    while [ ! -s $BG_P.end ] && [ $_i -lt "$_lim" ]; do sleep 0.1; _i=$((_i + 1)); done
    OUT=$(cat $BG_P.out 2>/dev/null)
    STDOUT=$OUT
    if [ -s $BG_P.end ]; then
        BG_DONE=1
        RC=$(cat $BG_P.rc 2>/dev/null || echo "?")
        HOOK_SECS=$(awk -v a="$_t0" -v b="$(cat $BG_P.end)" 'BEGIN {printf "%.2f", b - a}')
    else
        BG_DONE=0
        RC=running
        HOOK_SECS=$(elapsed "$_t0")
        [ -s $BG_P.rc ] && RC="exited $(cat $BG_P.rc), pipe still open"
        BG_PENDING="$BG_PENDING $BG_P"
    fi
    echo "  \$ pt-hook $BG_ARGS -> exit $RC ($HOOK_SECS s, pipe $([ $BG_DONE = 1 ] && echo closed || echo OPEN))"
    [ -n "$OUT" ] && echo "$OUT" | head -n 40 | sed 's/^/  | /'
    return 0
}
bg_done() { [ "$BG_DONE" = 1 ] || { WHY="still running after $HOOK_SECS s (pipe open), output: $(echo "$OUT" | head -c 200 | tr '\n' ' ')"; return 1; }; }
secs_le() { # LIMIT: HOOK_SECS <= LIMIT
    awk -v s="$HOOK_SECS" -v l="$1" 'BEGIN {exit !(s + 0 <= l + 0)}' || { WHY="took $HOOK_SECS s > $1 s"; return 1; }
}
bg_reap() { # LIMIT_SECONDS: wait for the pt-hooks left running by hook_wait, report them
    _lim=$(($1 * 10))
    for _p in $BG_PENDING; do
        _i=0
        while [ ! -s $_p.end ] && [ $_i -lt $_lim ]; do sleep 0.1; _i=$((_i + 1)); done
        if [ -s $_p.end ]; then
            echo "  (late: $_p exit $(cat $_p.rc 2>/dev/null) after $(awk -v a="$(cat $_p.t0)" -v b="$(cat $_p.end)" 'BEGIN {printf "%.2f", b - a}') s)"
            sed 's/^/  | /' $_p.out | head -n 20
        else
            echo "  (still running: $_p, $(head -c 200 $_p.out | tr '\n' ' '))"
        fi
    done
    BG_PENDING=""
}
out_json() { # stdout is a JSON object or array (stderr may carry progress)
    case "$(echo "$STDOUT" | sed -n '/[^[:space:]]/{p;q;}')" in
        \{* | \[*) return 0 ;;
    esac
    WHY="stdout not JSON: $(echo "$STDOUT" | head -c 200 | tr '\n' ' ')"
    return 1
}

# Original state, read once before anything moves.
DEVS="$VGA $AUDIO $NVME1 $NVME2 $VNET $E1000E"
for d in $DEVS; do
    eval "ORIG_DRV_$(echo "$d" | tr ':.' '__')=\$(drv $d)"
    eval "ORIG_RM_$(echo "$d" | tr ':.' '__')=\"\$(rmeth $d)\""
done
orig_drv() { eval "echo \$ORIG_DRV_$(echo "$1" | tr ':.' '__')"; }
orig_rm() { eval "echo \"\$ORIG_RM_$(echo "$1" | tr ':.' '__')\""; }
info "devices: VGA=$VGA($(orig_drv $VGA)) AUDIO=$AUDIO($(orig_drv $AUDIO)) NVME1=$NVME1 NVME2=$NVME2 VNET=$VNET($(orig_drv $VNET)) E1000E=$E1000E"

all_original() { # every device on its original driver, no override
    for _d in $DEVS; do
        drv_is "$_d" "$(orig_drv "$_d")" || return 1
        ovr_is "$_d" "(null)" || return 1
    done
}

# Put the bed back to the boot state whatever the previous section left, so
# sections stay independent. Not a test of pt-hook.
restore_bed() {
    for _d in $DEVS; do
        _o=$(orig_drv "$_d")
        echo > "$SYS/$_d/driver_override" 2>/dev/null
        if [ "$(drv "$_d")" != "$_o" ]; then
            [ -e "$SYS/$_d/driver" ] && echo "$_d" > "$SYS/$_d/driver/unbind" 2>/dev/null
            echo "$_d" > /sys/bus/pci/drivers_probe 2>/dev/null
        fi
        _rm=$(orig_rm "$_d")
        [ "$_rm" != "<no file>" ] && [ "$(rmeth "$_d")" != "$_rm" ] && echo "$_rm" > "$SYS/$_d/reset_method" 2>/dev/null
    done
    for _d in $DEVS; do
        drv_is "$_d" "$(orig_drv "$_d")" >/dev/null || echo "  restore_bed: $_d still on $(drv "$_d")"
    done
    _v=$(fbcon_vt) && [ "$(cat "$_v/bind")" != 1 ] && echo 1 > "$_v/bind" 2>/dev/null
    rm -rf /run/pt-hook/* 2>/dev/null
    return 0
}

# ================================================================= facts
# Kernel truths the rest relies on, without pt-hook (also validate the bed).
if section facts; then
    check facts.bdfs-found test -n "$VGA" -a -n "$AUDIO" -a -n "$NVME1" -a -n "$NVME2" -a -n "$VNET" -a -n "$E1000E"
    check facts.vga-audio-one-group eq "$(group $VGA)" "$(group $AUDIO)"
    check facts.group-nonempty ne "$(group $VGA)" ""
    check facts.nvme-separate-groups ne "$(group $NVME1)" "$(group $NVME2)"
    check facts.nvme-not-in-gpu-group ne "$(group $NVME1)" "$(group $VGA)"
    check facts.host-drivers-bound eq "$(drv $VGA) $(drv $AUDIO) $(drv $NVME1) $(drv $NVME2) $(drv $VNET) $(drv $E1000E)" \
        "bochs-drm snd_hda_intel nvme nvme virtio-pci e1000e"
    check facts.vfio-pci-not-loaded module_unloaded vfio_pci
    check facts.vga-boot_vga eq "$(cat $SYS/$VGA/boot_vga 2>&1)" 1
    check facts.vga-reset-method-bus rmeth_is $VGA bus
    check facts.audio-no-reset_method absent $SYS/$AUDIO/reset_method
    check facts.audio-no-reset absent $SYS/$AUDIO/reset
    check facts.nvme-flr rmeth_has $NVME1 flr
    check facts.nvme2-flr rmeth_has $NVME2 flr
    check facts.virtio-flr-pm-bus rmeth_is $VNET "flr pm bus"
    check facts.e1000e-pm-bus rmeth_is $E1000E "pm bus"
    case "$KVER" in
        6.12.*) check facts.rootport-reset_subordinate-6.12 exists $SYS/$RP_GPU/reset_subordinate ;;
        *) if [ -e $SYS/$RP_GPU/reset_subordinate ]; then
               info "reset_subordinate present on root port $RP_GPU (KERNEL.md expected none on 6.1)"
           else
               info "no reset_subordinate on root port $RP_GPU"
           fi ;;
    esac
    check facts.fbcon-bound fbcon_bound
    info "vtconsoles: $(for v in /sys/class/vtconsole/vtcon*; do printf '%s=%s,bind=%s ' "${v##*/}" "$(cat $v/name)" "$(cat $v/bind)"; done)"
    check facts.nvme-blockdev has_blockdev $NVME1
    check facts.virtio-netdev has_netdev $VNET

    # sysfs FLR on an nvme: keeps its driver and namespace
    t0=$(now)
    echo 1 > $SYS/$NVME2/reset
    r=$?
    info "sysfs reset of nvme $NVME2: rc=$r in $(elapsed $t0) s"
    check facts.nvme-sysfs-reset eq "$r" 0
    check facts.nvme-after-reset drv_now_is $NVME2 nvme
    check facts.nvme-blockdev-after-reset has_blockdev $NVME2

    # manual move to vfio-pci and back
    t0=$(now)
    modprobe vfio-pci
    check facts.modprobe-vfio-pci eq "$?" 0
    info "modprobe vfio-pci took $(elapsed $t0) s"
    t0=$(now)
    echo $NVME2 > $SYS/$NVME2/driver/unbind
    echo vfio-pci > $SYS/$NVME2/driver_override
    echo $NVME2 > /sys/bus/pci/drivers_probe
    check facts.manual-to-vfio drv_now_is $NVME2 vfio-pci
    check facts.vfio-group-node exists /dev/vfio/$(group $NVME2)
    info "unbind+override+probe to vfio-pci took $(elapsed $t0) s"
    check facts.manual-reset_method-kept rmeth_is $NVME2 "$(orig_rm $NVME2)"
    t0=$(now)
    echo $NVME2 > $SYS/$NVME2/driver/unbind
    echo > $SYS/$NVME2/driver_override
    echo $NVME2 > /sys/bus/pci/drivers_probe
    check facts.manual-back-to-nvme drv_now_is $NVME2 nvme
    check facts.manual-override-cleared ovr_is $NVME2 "(null)"
    check facts.manual-back-blockdev has_blockdev $NVME2
    info "back to nvme took $(elapsed $t0) s"
    rmmod vfio_pci
    check facts.rmmod-vfio-pci module_unloaded vfio_pci

    # writing an unknown reset method is refused and keeps the old list
    echo bogus > $SYS/$E1000E/reset_method 2>/dev/null
    check facts.reset_method-bogus-refused rmeth_is $E1000E "pm bus"

    # GPU + audio by hand: unbind both (fbcon goes away), reset below the
    # port where the kernel has reset_subordinate, rebind: fbcon comes back.
    echo $VGA > $SYS/$VGA/driver/unbind
    echo $AUDIO > $SYS/$AUDIO/driver/unbind
    check facts.gpu-unbound eq "$(drv $VGA) $(drv $AUDIO)" "none none"
    info "vtconsoles with GPU unbound: $(for v in /sys/class/vtconsole/vtcon*; do printf '%s=%s,bind=%s ' "${v##*/}" "$(cat $v/name)" "$(cat $v/bind)"; done)"
    if [ -e $SYS/$RP_GPU/reset_subordinate ]; then
        t0=$(now)
        echo 1 > $SYS/$RP_GPU/reset_subordinate
        r=$?
        info "reset_subordinate on $RP_GPU: rc=$r in $(elapsed $t0) s"
        check facts.reset_subordinate-works eq "$r" 0
    fi
    echo $VGA > /sys/bus/pci/drivers_probe
    echo $AUDIO > /sys/bus/pci/drivers_probe
    check facts.gpu-rebound-bochs drv_is $VGA bochs-drm
    check facts.audio-rebound drv_is $AUDIO snd_hda_intel
    check facts.fbcon-back fbcon_bound

    # ---- a function held through VFIO (vfio-hold, like a running QEMU), without pt-hook
    if [ ! -x "$HOLD" ]; then
        echo "FAIL facts.vfio-hold-present ($HOLD missing: run.sh builds it with gcc -static)"
    elif ! to_vfio_by_hand $NVME2 || ! echo none >/tmp/ub.rc; then
        echo "FAIL facts.hold.setup (could not bind $NVME2 to vfio-pci: $(drv $NVME2))"
    else
        G2=$(group $NVME2)
        sleep 0.5
        info "vfio: $NVME2 on vfio-pci, not held: power/runtime_status=$(cat $SYS/$NVME2/power/runtime_status)"
        for f in /sys/class/vfio/$G2/dev /sys/devices/virtual/vfio/$G2/dev; do
            if [ -e $f ]; then info "vfio: $f = $(cat $f)"; else info "vfio: $f absent"; fi
        done
        info "vfio: /dev/vfio: $(ls -l /dev/vfio | awk 'NR > 1 {printf "%s %s%s ", $NF, $5, $6}')"
        info "vfio: /sys/class/vfio: $(ls /sys/class/vfio 2>&1 | tr '\n' ' ')"
        if [ -d $SYS/$NVME2/vfio-dev ]; then
            info "vfio: $SYS/$NVME2/vfio-dev/ = $(ls $SYS/$NVME2/vfio-dev | tr '\n' ' ') dev=$(cat $SYS/$NVME2/vfio-dev/*/dev 2>/dev/null); /dev/vfio/devices: $(ls /dev/vfio/devices 2>&1 | tr '\n' ' ')"
        else
            info "vfio: $SYS/$NVME2/vfio-dev/ absent"
        fi
        if start_holder $NVME2; then
            check facts.hold.started true
            P=$HOLDER_PID
            DFD=$(holder_field device_fd)
            GFD=$(holder_field group_fd)
            info "vfio-hold: $HOLDER_LINE"
            info "vfio-hold fds: $(fd_links $P)"
            check facts.hold.group-fd-link eq "$(readlink /proc/$P/fd/$GFD)" /dev/vfio/$G2
            check facts.hold.container-fd-link eq "$(readlink /proc/$P/fd/$(holder_field container_fd))" /dev/vfio/vfio
            info "vfio-hold device fd $DFD -> $(readlink /proc/$P/fd/$DFD)"
            info "vfio-hold fdinfo/$DFD: $(tr '\t\n' ' |' </proc/$P/fdinfo/$DFD)"
            info "vfio-hold fdinfo/$GFD (group): $(tr '\t\n' ' |' </proc/$P/fdinfo/$GFD)"
            if grep -q '^vfio-device-syspath:' /proc/$P/fdinfo/$DFD; then
                info "vfio: device fdinfo has vfio-device-syspath: $(sed -n 's/^vfio-device-syspath:[[:space:]]*//p' /proc/$P/fdinfo/$DFD)"
            else
                info "vfio: device fdinfo has NO vfio-device-syspath line"
            fi
            info "vfio: held: power/runtime_status=$(cat $SYS/$NVME2/power/runtime_status)"
            # unbind under the holder: blocks in the kernel (bounded poll, never a plain wait)
            rm -f /tmp/ub.rc /tmp/ovr.rc
            t0=$(now)
            ( echo $NVME2 >/sys/bus/pci/drivers/vfio-pci/unbind; echo $? >/tmp/ub.rc ) 2>/tmp/ub.err &
            UB=$!
            i=0
            while [ ! -e /tmp/ub.rc ] && [ $i -lt 20 ]; do sleep 0.1; i=$((i + 1)); done
            check facts.hold.unbind-blocks absent /tmp/ub.rc
            info "vfio: unbind under a holder: $([ -e /tmp/ub.rc ] && echo "returned rc=$(cat /tmp/ub.rc)" || echo "still blocked after $(elapsed $t0) s"), writer state $(pstate $UB) (wchan $(cat /proc/$UB/wchan 2>/dev/null))"
            ( cat $SYS/$NVME2/driver_override >/tmp/ovr.out 2>&1; echo $? >/tmp/ovr.rc ) &
            OV=$!
            i=0
            while [ ! -e /tmp/ovr.rc ] && [ $i -lt 20 ]; do sleep 0.1; i=$((i + 1)); done
            if [ -e /tmp/ovr.rc ]; then
                info "vfio: reading driver_override during the blocked unbind: does NOT block ('$(cat /tmp/ovr.out)')"
            else
                info "vfio: reading driver_override during the blocked unbind: BLOCKS (>2 s, reader state $(pstate $OV), wchan $(cat /proc/$OV/wchan 2>/dev/null))"
            fi
            info "vfio: during the blocked unbind: driver link=$(drv $NVME2) reset_method='$(rmeth $NVME2)' runtime_status=$(cat $SYS/$NVME2/power/runtime_status)"
            info "vfio: holder fds during the blocked unbind: $(fd_links $P)"
            stop_holder
            check facts.hold.holder-stops true
            i=0
            while [ ! -e /tmp/ub.rc ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
            check facts.hold.unbind-completes-after-release exists /tmp/ub.rc
            info "vfio: unbind returned rc=$(cat /tmp/ub.rc 2>/dev/null) $(elapsed $t0) s after it started; driver now $(drv $NVME2)"
            i=0
            while [ ! -e /tmp/ovr.rc ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
            check facts.hold.override-read-completes exists /tmp/ovr.rc
            check facts.hold.unbound drv_now_is $NVME2 none
        else
            echo "FAIL facts.hold.started ($WHY)"
        fi
        # only the group (/dev/vfio/N) open: the unbind does not wait, but the host driver
        # cannot bind while the group is claimed for user space
        [ "$(drv $NVME2)" = none ] && echo $NVME2 >/sys/bus/pci/drivers_probe
        if drv_is $NVME2 vfio-pci; then
            if start_holder $NVME2 --group-only; then
                P=$HOLDER_PID
                info "vfio-hold --group-only: $HOLDER_LINE; fds: $(fd_links $P)"
                rm -f /tmp/ub.rc
                ( echo $NVME2 >/sys/bus/pci/drivers/vfio-pci/unbind; echo $? >/tmp/ub.rc ) 2>/tmp/ub.err &
                i=0
                while [ ! -e /tmp/ub.rc ] && [ $i -lt 30 ]; do sleep 0.1; i=$((i + 1)); done
                info "vfio: unbind with only the group open: $([ -e /tmp/ub.rc ] && echo "returned rc=$(cat /tmp/ub.rc) $(cat /tmp/ub.err)" || echo "BLOCKS")"
                echo > $SYS/$NVME2/driver_override
                echo $NVME2 > /sys/bus/pci/drivers_probe 2>/tmp/probe.err
                sleep 0.5
                info "vfio: nvme probe while the group is held: driver=$(drv $NVME2) $(cat /tmp/probe.err)"
                stop_holder
                i=0
                while [ ! -e /tmp/ub.rc ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
            else
                echo "FAIL facts.hold.group-only-started ($WHY)"
            fi
        fi
        if [ -e /tmp/ub.rc ]; then
            back_by_hand $NVME2 nvme
            check facts.hold.back-to-nvme drv_is $NVME2 nvme
        else
            echo "FAIL facts.hold.unbind-never-returned (the bed cannot give $NVME2 back)"
        fi
        rmmod vfio_pci 2>/dev/null
    fi

    # ---- where a filesystem and a swap on an NVMe show up
    B=$(blk_of $NVME2)
    if [ -z "$B" ]; then
        echo "FAIL facts.fs.blockdev (no block device below $NVME2)"
    else
        mke2fs -F /dev/$B >/dev/null 2>&1
        mkdir -p /mnt/facts
        mount -t ext4 /dev/$B /mnt/facts
        check facts.fs.ext4-mount eq "$?" 0
        info "fs: /sys/block/$B/dev=$(cat /sys/block/$B/dev); mountinfo: $(grep " /mnt/facts " /proc/self/mountinfo)"
        check facts.fs.mountinfo-majmin eq "$(awk '$5 == "/mnt/facts" {print $3}' /proc/self/mountinfo)" "$(cat /sys/block/$B/dev)"
        umount /mnt/facts
        mkswap /dev/$B >/dev/null 2>&1
        swapon /dev/$B
        check facts.swap.swapon eq "$?" 0
        info "swap: /proc/swaps: $(tr '\n' '|' </proc/swaps)"
        check facts.swap.listed eq "$(awk 'NR > 1 {print $1}' /proc/swaps)" /dev/$B
        swapoff /dev/$B
        dd if=/dev/zero of=/dev/$B bs=64k count=16 2>/dev/null
    fi
    restore_bed
fi

# ========================================================= pt-hook basics
if section hook-basics; then
    check hook.binary-runs exists $HOOK
    hook 100 future-phase
    check hook.unknown-phase-exit-0 rc_is 0
    check hook.unknown-phase-changes-nothing all_original
    hook 100 post-stop
    check hook.post-stop-without-state-exit-0 rc_is 0
    hook plan 100 --json
    check hook.plan-json-exit-0 rc_is 0
    check hook.plan-json-is-json out_json
    check hook.plan-names-nvme out_has "$(short $NVME1)"
    check hook.plan-names-virtio out_has "$(short $VNET)"
    check hook.plan-changes-nothing all_original
    hook plan 100
    check hook.plan-text-exit-0 rc_is 0
    check hook.plan-names-the-d0-hold out_has "power/control on (held at D0 until the unbind) for 0000:"
    hook status --json
    check hook.status-json-exit-0 rc_is 0
    check hook.status-json-is-json out_json
    restore_bed
fi

# ============================================================ lifecycle
if section lifecycle; then
    RM_NVME1=$(rmeth $NVME1)
    RM_VNET=$(rmeth $VNET)
    PC_NVME1=$(pwr $NVME1) PC_VNET=$(pwr $VNET)
    hook 100 pre-start
    check life.pre-start-exit-0 rc_is 0
    # vfio-pci's probe allows runtime PM: what post-stop holds at D0 through the reset.
    check life.vfio-allows-runtime-pm eq "$(pwr $NVME1)" auto
    info "pre-start 100 (nvme + virtio-net, loads vfio-pci) took $HOOK_SECS s"
    check life.vfio-pci-loaded-by-hook module_loaded vfio_pci
    check life.nvme-on-vfio drv_now_is $NVME1 vfio-pci
    check life.virtio-on-vfio drv_now_is $VNET vfio-pci
    check life.nvme-override ovr_is $NVME1 vfio-pci
    check life.virtio-override ovr_is $VNET vfio-pci
    check life.state-file state_exists 100
    check life.snapshot-hostpci-ignored drv_now_is $E1000E e1000e
    check life.other-nvme-untouched drv_now_is $NVME2 nvme
    hook status --json
    check life.status-exit-0 rc_is 0
    check life.status-names-100 ok_and_has 100
    hook 100 post-start
    check life.post-start-exit-0 rc_is 0
    hook 100 pre-stop
    check life.pre-stop-exit-0 rc_is 0
    hook 100 post-stop
    check life.post-stop-exit-0 rc_is 0
    info "post-stop 100 took $HOOK_SECS s"
    check life.nvme-back drv_is $NVME1 nvme
    check life.virtio-back drv_is $VNET "$(orig_drv $VNET)"
    check life.nvme-override-cleared ovr_is $NVME1 "(null)"
    check life.virtio-override-cleared ovr_is $VNET "(null)"
    check life.nvme-reset_method-restored rmeth_is $NVME1 "$RM_NVME1"
    check life.virtio-reset_method-restored rmeth_is $VNET "$RM_VNET"
    # The hold ends with vfio-pci's unbind: power/control is as the host had it.
    check life.nvme-power-control-as-before eq "$(pwr $NVME1)" "$PC_NVME1"
    check life.virtio-power-control-as-before eq "$(pwr $VNET)" "$PC_VNET"
    check life.nvme-blockdev-back has_blockdev $NVME1
    check life.virtio-netdev-back has_netdev $VNET
    check life.state-file-gone state_gone 100
    restore_bed

    # a second pre-start (e.g. after a failed start) must not record vfio-pci
    # as the "original" driver
    hook 100 pre-start
    check double.first-exit-0 rc_is 0
    hook 100 pre-start
    check double.second-exit-0 rc_is 0
    check double.still-on-vfio drv_now_is $NVME1 vfio-pci
    hook 100 post-stop
    check double.post-stop-exit-0 rc_is 0
    check double.nvme-original drv_is $NVME1 nvme
    check double.virtio-original drv_is $VNET "$(orig_drv $VNET)"
    check double.overrides-cleared ovr_is $NVME1 "(null)"
    check double.state-gone state_gone 100
    restore_bed

    # cleanup without post-stop (start failed after pre-start)
    hook 100 pre-start
    check cleanup.pre-start-exit-0 rc_is 0
    hook cleanup 100
    check cleanup.vm-exit-0 rc_is 0
    check cleanup.vm-nvme-back drv_is $NVME1 nvme
    check cleanup.vm-virtio-back drv_is $VNET "$(orig_drv $VNET)"
    check cleanup.vm-override-cleared ovr_is $NVME1 "(null)"
    check cleanup.vm-state-gone state_gone 100
    restore_bed
    hook 100 pre-start
    hook cleanup
    check cleanup.all-exit-0 rc_is 0
    check cleanup.all-restored all_original
    check cleanup.all-state-gone state_gone 100
    restore_bed
fi

# ============================================================ ownership
if section ownership; then
    hook 100 pre-start
    check owner.first-exit-0 rc_is 0
    hook 101 pre-start
    check owner.second-exit-1 rc_is 1
    check owner.message-names-vm-100 out_has 'vm[ id:#]*100'
    check owner.shared-device-stays-with-100 drv_now_is $VNET vfio-pci
    check owner.101-other-device-untouched drv_now_is $NVME2 nvme
    check owner.101-other-override-untouched ovr_is $NVME2 "(null)"
    check owner.100-state-kept state_exists 100
    hook 100 post-stop
    check owner.post-stop-100-exit-0 rc_is 0
    check owner.all-restored all_original
    # now 101 can start
    hook 101 pre-start
    check owner.101-after-100-exit-0 rc_is 0
    check owner.101-nvme2-on-vfio drv_now_is $NVME2 vfio-pci
    hook 101 post-stop
    check owner.101-post-stop-exit-0 rc_is 0
    check owner.101-restored all_original
    restore_bed
fi

# ============================================================ bad input
if section bad-input; then
    hook 103 pre-start
    check bad.unparsable-hostpci-exit-2 rc_is 2
    check bad.unparsable-changes-nothing all_original
    hook 104 pre-start
    check bad.missing-device-exit-2 rc_is 2
    check bad.missing-device-changes-nothing all_original
    check bad.missing-device-no-state state_gone 104
    hook reset ../../etc
    check bad.reset-path-exit-2 rc_is 2
    hook abc pre-start
    check bad.vmid-abc-exit-2 rc_is 2
    hook
    check bad.no-args-exit-2 rc_is 2
    hook reset 0000:09:00.0
    check bad.reset-missing-device-nonzero rc_nonzero
    hook reset $NVME1 --method nosuchmethod
    check bad.reset-unknown-method-nonzero rc_nonzero
    check bad.unknown-method-keeps-reset_method rmeth_is $NVME1 "$(orig_rm $NVME1)"
    check bad.all-original all_original
    restore_bed
fi

# ======================================================= vfio-pci missing
if section no-vfio; then
    rmmod vfio_pci 2>/dev/null
    VF=$(find /lib/modules/$KVER -name 'vfio-pci.ko' -o -name 'vfio_pci.ko' | head -1)
    if [ -n "$VF" ] && mv "$VF" /tmp/vfio-pci.ko.hidden; then
        check novfio.module-hidden module_unloaded vfio_pci
        hook 105 pre-start
        check novfio.pre-start-exit-1 rc_is 1
        check novfio.nvme2-kept drv_is $NVME2 nvme
        check novfio.e1000e-kept drv_is $E1000E e1000e
        check novfio.overrides-clean all_original
        check novfio.nvme2-reset_method-kept rmeth_is $NVME2 "$(orig_rm $NVME2)"
        check novfio.e1000e-reset_method-kept rmeth_is $E1000E "$(orig_rm $E1000E)"
        mv /tmp/vfio-pci.ko.hidden "$VF"
    else
        echo "FAIL novfio.setup (cannot hide vfio-pci module: '$VF')"
    fi
    restore_bed
fi

# =============================================================== resets
if section resets; then
    hook reset $NVME1
    check reset.nvme-exit-0 rc_is 0
    check reset.nvme-still-nvme drv_now_is $NVME1 nvme
    check reset.nvme-blockdev has_blockdev $NVME1
    check reset.nvme-reset_method-kept rmeth_is $NVME1 "$(orig_rm $NVME1)"
    hook reset $VNET --method flr
    check reset.virtio-flr-exit-0 rc_is 0
    check reset.virtio-still-bound drv_is $VNET "$(orig_drv $VNET)"
    check reset.virtio-reset_method-kept rmeth_is $VNET "$(orig_rm $VNET)"
    hook reset $E1000E --method pm
    check reset.e1000e-pm-exit-0 rc_is 0
    check reset.e1000e-still-bound drv_is $E1000E e1000e
    check reset.e1000e-reset_method-kept rmeth_is $E1000E "$(orig_rm $E1000E)"
    hook reset $E1000E
    check reset.e1000e-default-exit-0 rc_is 0
    hook reset $AUDIO
    info "reset of the audio function (no reset_method) exited $RC"
    check reset.audio-gpu-present exists $SYS/$VGA
    check reset.audio-present exists $SYS/$AUDIO
    check reset.audio-gpu-bound drv_is $VGA bochs-drm
    check reset.audio-bound drv_is $AUDIO snd_hda_intel
    hook reset $NVME1 $NVME2 $VNET
    check reset.three-exit-0 rc_is 0
    info "reset of three devices in one call took $HOOK_SECS s"
    check reset.three-nvme1 drv_is $NVME1 nvme
    check reset.three-nvme2 drv_is $NVME2 nvme
    check reset.three-virtio drv_is $VNET "$(orig_drv $VNET)"
    check reset.three-blockdevs has_blockdev $NVME2
    hook reset $NVME1 --json
    check reset.json-exit-0 rc_is 0
    check reset.json-is-json out_json
    check reset.all-original all_original
    restore_bed
fi

# ======================================================= console handoff
if section console; then
    check console.fbcon-before fbcon_bound
    hook 102 pre-start
    check console.pre-start-exit-0 rc_is 0
    info "pre-start 102 (GPU + audio, console handoff) took $HOOK_SECS s"
    check console.vga-on-vfio drv_now_is $VGA vfio-pci
    check console.audio-on-vfio drv_now_is $AUDIO vfio-pci
    check console.state-file state_exists 102
    info "vtconsoles with GPU on vfio-pci: $(for v in /sys/class/vtconsole/vtcon*; do printf '%s=%s,bind=%s ' "${v##*/}" "$(cat $v/name)" "$(cat $v/bind)"; done)"
    hook 102 post-stop
    check console.post-stop-exit-0 rc_is 0
    info "post-stop 102 took $HOOK_SECS s"
    check console.vga-back drv_is $VGA bochs-drm
    check console.audio-back drv_is $AUDIO snd_hda_intel
    check console.fbcon-after fbcon_bound
    check console.overrides-cleared all_original
    check console.state-gone state_gone 102
    restore_bed
fi

# ================================================================ tools
# JSON object of one device from `status --json` on one line, whitespace removed.
dev_json() { # BDF
    echo "$STDOUT" | awk -v b="\"bdf\": \"$1\"" '
        index($0, b) { on = 1 }
        on { printf "%s", $0 }
        on && /^    }/ { exit }' | tr -d ' \n'
}
json_has() { # BDF PATTERN (fixed string in the device object)
    case "$(dev_json "$1")" in
        *"$2"*) return 0 ;;
    esac
    WHY="$1 lacks $2: $(dev_json "$1" | head -c 400)"
    return 1
}
# libvirt mode (domain XML on stdin, run as /etc/libvirt/hooks/qemu), user hooks from
# /etc/pt-hook/hooks.d, and `pt-hook install`.
lvhook() { # EXE ARGS...: like hook(), with /tmp/dom.xml on stdin (as libvirt runs it)
    _lv=$1
    shift
    run_exe /tmp/dom.xml "$_lv" "$_lv" "$@"
}
stdout_empty() { [ -z "$STDOUT" ] || { WHY="stdout: $(echo "$STDOUT" | head -c 200)"; return 1; }; }
file_has() { grep -q -- "$2" "$1" 2>/dev/null || { WHY="$1 lacks '$2': $(head -c 300 "$1" 2>&1 | tr '\n' ' ')"; return 1; }; }
link_is() { [ "$(readlink "$1")" = "$2" ] || { WHY="$1 -> '$(readlink "$1")'"; return 1; }; }
if section tools; then
    UUID=4dea22b3-1d52-d8f3-2516-782e98ab3fa0
    _b=${NVME1#*:}
    _b=${_b%%:*}
    _s=${NVME1##*:}
    _s=${_s%.*}
    cat >/tmp/dom.xml <<XML
<domain type='kvm'>
  <name>guest one</name>
  <uuid>$UUID</uuid>
  <devices>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x$_b' slot='0x$_s' function='0x${NVME1##*.}'/></source>
    </hostdev>
  </devices>
</domain>
XML
    mkdir -p /etc/libvirt/hooks
    ln -sf $HOOK /etc/libvirt/hooks/qemu
    LV=/etc/libvirt/hooks/qemu
    lvhook $HOOK --dry-run libvirt "guest one" prepare begin -
    check lv.dry-run-exit-0 rc_is 0
    check lv.dry-run-names-nvme out_has "$NVME1"
    check lv.dry-run-changes-nothing all_original
    check lv.dry-run-no-state state_gone libvirt
    lvhook $LV "guest one" prepare begin -
    check lv.prepare-exit-0 rc_is 0
    info "libvirt prepare (nvme) took $HOOK_SECS s"
    check lv.nvme-on-vfio drv_now_is $NVME1 vfio-pci
    check lv.state-by-uuid state_exists "libvirt-$UUID"
    lvhook $LV "guest one" started begin -
    check lv.started-exit-0 rc_is 0
    check lv.started-stdout-empty stdout_empty
    # status: the domain's state wins over VM 100's config line for the same NVMe.
    hook status --json
    check lv.status-json-exit-0 rc_is 0
    check lv.status-owner-domain json_has $NVME1 '"libvirt_uuid":"'$UUID'"'
    check lv.status-owner-name json_has $NVME1 '"owner":"libvirt:guestone"'
    check lv.status-vm-null json_has $NVME1 '"vm":null,"vm_source":"state"'
    hook status
    check lv.status-table out_has "libvirt:guest one(state)"
    hook 100 pre-start
    check lv.pve-vm-refused rc_is 1
    check lv.pve-vm-names-domain out_has "libvirt domain"
    lvhook $LV "guest one" release end -
    check lv.release-exit-0 rc_is 0
    info "libvirt release (nvme) took $HOOK_SECS s"
    check lv.nvme-back drv_is $NVME1 nvme
    check lv.nvme-blockdev-back has_blockdev $NVME1
    check lv.state-gone state_gone libvirt
    check lv.all-original all_original
    lvhook $LV "other" prepare begin -
    check lv.name-mismatch-exit-2 rc_is 2
    restore_bed

    # user hooks around VM 101 (nvme2 + virtio-net)
    mkdir -p /etc/pt-hook/hooks.d/pre-start /etc/pt-hook/hooks.d/post-stop
    chmod 755 /etc/pt-hook /etc/pt-hook/hooks.d /etc/pt-hook/hooks.d/*
    rm -f /tmp/hooks.log
    for _h in pre-start/10-rec post-stop/10-rec; do
        printf '#!/bin/sh\necho "$1 $2 [$PT_HOOK_DEVICES] rb=${PT_HOOK_ROLLBACK:-0} nvme2=$(basename $(readlink /sys/bus/pci/devices/%s/driver))" >>/tmp/hooks.log\n' "$NVME2" >/etc/pt-hook/hooks.d/$_h
        chmod 755 /etc/pt-hook/hooks.d/$_h
    done
    hook 101 pre-start
    check uh.pre-start-exit-0 rc_is 0
    check uh.nvme2-on-vfio drv_now_is $NVME2 vfio-pci
    hook 101 post-stop
    check uh.post-stop-exit-0 rc_is 0
    check uh.pre-hook-before-devices file_has /tmp/hooks.log "101 pre-start \[$NVME2 $VNET\] rb=0 nvme2=nvme"
    check uh.post-hook-after-devices file_has /tmp/hooks.log "101 post-stop \[$NVME2 $VNET\] rb=0 nvme2=nvme"
    printf '#!/bin/sh\necho no >&2\nexit 7\n' >/etc/pt-hook/hooks.d/pre-start/20-fail
    chmod 755 /etc/pt-hook/hooks.d/pre-start/20-fail
    hook 101 pre-start
    check uh.failing-hook-exit-1 rc_is 1
    check uh.failing-hook-named out_has "20-fail"
    check uh.failing-hook-nothing-moved all_original
    check uh.failing-hook-rollback-hooks file_has /tmp/hooks.log "101 post-stop .* rb=1"
    chmod 757 /etc/pt-hook/hooks.d/pre-start/20-fail
    hook 101 pre-start
    check uh.untrusted-exit-2 rc_is 2
    check uh.untrusted-named out_has "writable by others"
    rm -rf /etc/pt-hook/hooks.d
    restore_bed

    # install: the snippet link from storage.cfg
    mkdir -p /var/lib/vz
    printf 'dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,snippets\n' >/etc/pve/storage.cfg
    hook install --vmid 100
    check inst.exit-0 rc_is 0
    check inst.link link_is /var/lib/vz/snippets/pt-hook $HOOK
    check inst.qm-set-line out_has "qm set 100 --hookscript local:snippets/pt-hook"
    hook install
    check inst.idempotent ok_and_has "already installed"
    rm -f /etc/pve/storage.cfg /etc/libvirt/hooks/qemu
    restore_bed
fi

# ======================================================= quirk profiles
# A user profile (quirks.d) that makes the nvme a "host-rebind" device: the ladder skips its
# FLR and bus reset and uses the host driver's probe as the reset, on real sysfs.
if section quirks; then
    mkdir -p /etc/pt-hook/quirks.d
    cat >/etc/pt-hook/quirks.d/50-test.toml <<'EOF'
[[quirk]]
name = "test-nvme-rebind"
description = "test bed: QEMU nvme reset through its host driver"
vendor = "1b36"
devices = ["0010"]
skip_rungs = ["function-reset", "bus-reset"]
host_rebind_wait = "10s"
host_driver = "nvme"
EOF
    chmod 644 /etc/pt-hook/quirks.d/50-test.toml
    hook quirks $NVME1
    check quirks.user-profile-applies ok_and_has test-nvme-rebind
    hook reset $NVME1
    check quirks.rebind-reset-exit-0 rc_is 0
    check quirks.rebind-reset-used-host-rebind out_has "host-rebind: ok"
    check quirks.rebind-reset-still-nvme drv_now_is $NVME1 nvme
    check quirks.rebind-reset-override ovr_is $NVME1 "(null)"
    check quirks.rebind-reset-blockdev has_blockdev $NVME1
    hook 100 pre-start
    check quirks.pre-start-exit-0 rc_is 0
    check quirks.pre-start-vfio drv_now_is $NVME1 vfio-pci
    hook 100 post-stop
    check quirks.post-stop-exit-0 rc_is 0
    check quirks.post-stop-host-rebind out_has "host-rebind: ok"
    check quirks.post-stop-kept-on-nvme out_has "kept"
    check quirks.post-stop-all-original all_original
    check quirks.post-stop-blockdev has_blockdev $NVME1
    check quirks.state-gone state_gone 100
    # The same card on vfio-pci from boot: the rebind is a round trip through nvme.
    echo vfio-pci >$SYS/$NVME1/driver_override
    echo "$NVME1" >$SYS/$NVME1/driver/unbind
    echo "$NVME1" >/sys/bus/pci/drivers_probe
    if drv_is $NVME1 vfio-pci; then
        hook reset $NVME1
        check quirks.round-trip-exit-0 rc_is 0
        check quirks.round-trip-handed-back out_has "handed back to vfio-pci"
        check quirks.round-trip-on-vfio drv_now_is $NVME1 vfio-pci
        check quirks.round-trip-override ovr_is $NVME1 vfio-pci
    else
        echo "FAIL quirks.round-trip-setup (could not put $NVME1 on vfio-pci: $(drv $NVME1))"
    fi
    rm -rf /etc/pt-hook/quirks.d
    restore_bed
fi

# ============================================================== cluster
# The cluster-wide config on a real kernel: /etc/pve/pt-hook as a plain directory first (a
# [node.pve1] section applies; a hook phase caches the good read), then /etc/pve as a mount
# that is not pmxcfs (a tmpfs): a pt-hook/ there is refused, and when its read blocks (a FIFO
# where pt-hook.toml was: the open waits for a writer, as a read waits for a hung pmxcfs)
# the bounded walk gives up after 2 s and the hook goes on with the cached copy.
if section cluster; then
    mkdir -p /etc/pve/pt-hook
    cat >/etc/pve/pt-hook/pt-hook.toml <<'EOF'
[[node.pve1.quirk]]
name = "cluster-nvme"
description = "test bed: a profile from the cluster file, for this node only"
vendor = "1b36"
devices = ["0010"]
[[node.pve9.quirk]]
name = "other-node-nvme"
vendor = "1b36"
devices = ["0010"]
EOF
    chmod 640 /etc/pve/pt-hook/pt-hook.toml
    hook quirks $NVME1
    check cluster.node-section-applies ok_and_has cluster-nvme
    check cluster.other-node-ignored not_out_has other-node-nvme
    hook 100 pre-start
    check cluster.pre-start-exit-0 rc_is 0
    check cluster.cache-written exists /var/lib/pt-hook/cluster-config.json
    hook 100 post-stop
    check cluster.post-stop-exit-0 rc_is 0
    # /etc/pve as another filesystem (not pmxcfs), the VM configs copied along.
    rm -rf /tmp/pve-copy && cp -a /etc/pve /tmp/pve-copy
    mount -t tmpfs -o mode=0755 tmpfs /etc/pve
    cp -a /tmp/pve-copy/. /etc/pve/
    hook 100 pre-start
    check cluster.other-mount-refused-exit-2 rc_is 2
    check cluster.other-mount-refused-says-why out_has "not pmxcfs"
    rm /etc/pve/pt-hook/pt-hook.toml
    mkfifo /etc/pve/pt-hook/pt-hook.toml
    hook quirks $NVME1
    check cluster.blocked-read-uses-cache ok_and_has cluster-nvme
    check cluster.blocked-read-warns out_has "did not finish within 2s"
    info "cluster: quirks with /etc/pve blocked took $HOOK_SECS s"
    hook 100 pre-start
    check cluster.blocked-pre-start-exit-0 rc_is 0
    check cluster.blocked-pre-start-vfio drv_now_is $NVME1 vfio-pci
    check cluster.blocked-pre-start-warns out_has "using the copy read at"
    hook 100 post-stop
    check cluster.blocked-post-stop-exit-0 rc_is 0
    check cluster.blocked-all-original all_original
    # Release the walkers still waiting in open(2) on the FIFO, then put /etc/pve back.
    exec 3<>/etc/pve/pt-hook/pt-hook.toml
    exec 3>&-
    _i=0
    while ! umount /etc/pve 2>/dev/null && [ $_i -lt 50 ]; do sleep 0.1; _i=$((_i + 1)); done
    check cluster.pve-unmounted not_mounted_pve
    rm -rf /etc/pve/pt-hook /tmp/pve-copy /var/lib/pt-hook/cluster-config.json
    restore_bed
fi

# ========================================================== reliability
# Faults on real sysfs. Every case ends by comparing driver, driver_override and reset_method
# of every test device with a snapshot taken before it.
host_snap() { for _d in $DEVS; do printf '%s|%s|%s|%s;' "$_d" "$(drv $_d)" "$(ovr $_d)" "$(rmeth $_d)"; done; }
wait_dev() { # BDF: polls ~10 s for the device dir (after a rescan)
    _i=0
    while [ $_i -lt 100 ]; do [ -e "$SYS/$1" ] && return 0; sleep 0.1; _i=$((_i + 1)); done
    WHY="$1 not back"; return 1
}
snap_is() { # SNAPSHOT (polls ~5 s: probes finish asynchronously)
    _i=0
    while [ $_i -lt 50 ]; do [ "$(host_snap)" = "$1" ] && return 0; sleep 0.1; _i=$((_i + 1)); done
    WHY="host differs: now $(host_snap) before $1"; return 1
}
if section reliability; then
    SNAP0=$(host_snap)

    # A device removed between pre-start and post-stop (surprise removal): post-stop reports
    # it and gives the rest back; after a rescan, cleanup finishes.
    hook 100 pre-start
    check rel.removed.pre-start-exit-0 rc_is 0
    echo 1 >$SYS/$VNET/remove
    check rel.removed.device-gone absent $SYS/$VNET
    hook 100 post-stop
    check rel.removed.post-stop-fails rc_nonzero
    check rel.removed.post-stop-names-device out_has "$(short $VNET)"
    check rel.removed.other-device-back drv_is $NVME1 nvme
    check rel.removed.other-override-cleared ovr_is $NVME1 "(null)"
    check rel.removed.state-kept state_exists 100
    echo 1 >/sys/bus/pci/rescan
    check rel.removed.rescan-brings-it-back wait_dev $VNET
    hook cleanup 100
    check rel.removed.cleanup-exit-0 rc_is 0
    check rel.removed.state-gone state_gone 100
    check rel.removed.host-as-before snap_is "$SNAP0"
    restore_bed

    # Two hooks for two VMs sharing the virtio-net, started together: exactly one wins, the
    # other exits 1 naming the winner; the winner's post-stop puts everything back.
    for n in 1 2 3 4; do
        (cd / && $HOOK 100 pre-start >/tmp/race.100 2>&1 <&-; echo $? >/tmp/race.100.rc) &
        (cd / && $HOOK 101 pre-start >/tmp/race.101 2>&1 <&-; echo $? >/tmp/race.101.rc) &
        wait
        r100=$(cat /tmp/race.100.rc) r101=$(cat /tmp/race.101.rc)
        case "$r100 $r101" in
            "0 1") win=100 lose=101 ;;
            "1 0") win=101 lose=100 ;;
            *) win="" lose="" ;;
        esac
        check rel.race$n.exactly-one-wins test -n "$win"
        info "race $n: VM 100 exit $r100, VM 101 exit $r101"
        if [ -n "$win" ]; then
            OUT=$(cat /tmp/race.$lose)
            check rel.race$n.loser-names-winner out_has "VM $win"
            check rel.race$n.winner-state state_exists $win
            check rel.race$n.loser-no-state state_gone $lose
            check rel.race$n.shared-on-vfio drv_now_is $VNET vfio-pci
            hook $win post-stop
            check rel.race$n.post-stop-exit-0 rc_is 0
        fi
        check rel.race$n.host-as-before snap_is "$SNAP0"
        restore_bed
    done

    # A VM that stopped without post-stop (killed QEMU, host crash): its state still owns the
    # devices, the other VM is refused, cleanup gives them back.
    hook 100 pre-start
    check rel.no-post-stop.pre-start-exit-0 rc_is 0
    hook 101 pre-start
    check rel.no-post-stop.other-vm-refused rc_is 1
    check rel.no-post-stop.names-owner out_has "VM 100"
    check rel.no-post-stop.nvme2-untouched drv_now_is $NVME2 nvme
    hook cleanup
    check rel.no-post-stop.cleanup-exit-0 rc_is 0
    check rel.no-post-stop.host-as-before snap_is "$SNAP0"
    check rel.no-post-stop.state-gone state_gone 100

    # Bad arguments: exit 2, nothing touched.
    for a in "../" "/" "$NVME1/../.." "" "$NVME1/remove" "../../sys/bus/pci/rescan"; do
        hook reset "$a"
        check "rel.bad-bdf[$a]-exit-2" rc_is 2
    done
    for v in abc "100/../101" "../100" 99 1e3 ""; do
        hook "$v" pre-start
        check "rel.bad-vmid[$v]-exit-2" rc_is 2
    done
    check rel.bad-args.host-as-before snap_is "$SNAP0"
    check rel.bad-args.no-state test -z "$(ls /run/pt-hook/*.json 2>/dev/null)"
    restore_bed
fi

# ====================================================== status and doctor
# Status word of check ID in the human doctor output, within "host:" or "VM N:".
doc_status() { # SECTION ID
    echo "$STDOUT" | awk -v s="$1:" -v id="$2" '
        /^[^ ]/ { cur = $0 }
        cur == s && $2 == id { print $1; exit }'
}
doc_is() { # SECTION ID STATUS
    _s=$(doc_status "$1" "$2")
    [ "$_s" = "$3" ] || { WHY="$1 $2 is '${_s:-absent}': $(echo "$STDOUT" | grep -F -- " $2 " | head -n 3 | tr '\n' ' ')"; return 1; }
}
if section status-doctor; then
    G=$(group $VGA)
    hook status --json
    check status.json-exit-0 rc_is 0
    check status.json-is-json out_json
    check status.vga-driver json_has $VGA '"driver":"bochs-drm"'
    check status.audio-driver json_has $AUDIO '"driver":"snd_hda_intel"'
    check status.vga-group json_has $VGA "\"iommu_group\":$G,"
    check status.audio-same-group json_has $AUDIO "\"iommu_group\":$G,"
    check status.vga-members-list-audio json_has $VGA "\"iommu_group_members\":[\"$VGA\",\"$AUDIO\"]"
    check status.audio-members-list-vga json_has $AUDIO "\"iommu_group_members\":[\"$VGA\",\"$AUDIO\"]"
    check status.nvme-own-group json_has $NVME1 "\"iommu_group_members\":[\"$NVME1\"]"
    check status.vga-boot_vga json_has $VGA '"boot_vga":true'
    check status.vga-reset-bus json_has $VGA '"reset_methods":["bus"]'
    check status.audio-no-reset-methods json_has $AUDIO '"reset_methods":null'
    check status.nvme-flr json_has $NVME1 '"reset_methods":["flr"'
    check status.virtio-flr-pm-bus json_has $VNET '"reset_methods":["flr","pm","bus"]'
    check status.nvme-link json_has $NVME1 '"link_width":"'
    check status.vga-owner-102 json_has $VGA '"vm":102,"vm_source":"config"'
    check status.audio-owner-102 json_has $AUDIO '"vm":102,"vm_source":"config"'
    check status.nvme1-owner-100 json_has $NVME1 '"vm":100,"vm_source":"config"'
    check status.e1000e-owner-105-not-snapshot json_has $E1000E '"vm":105,"vm_source":"config"'
    check status.class-name json_has $NVME1 '"class_name":"Non-Volatilememorycontroller"'
    hook status
    check status.text-exit-0 rc_is 0
    check status.text-names-audio-with-vga out_has "$(short $VGA).*$(short $AUDIO)"
    check status.changes-nothing all_original

    # While VM 100 runs, its state file (not the configs) says who owns the devices.
    hook 100 pre-start
    check status.pre-start-100-exit-0 rc_is 0
    hook status --json
    check status.state-owner json_has $NVME1 '"vm":100,"vm_source":"state"'
    check status.state-driver json_has $NVME1 '"driver":"vfio-pci"'
    hook 100 post-stop
    check status.post-stop-100-exit-0 rc_is 0
    check status.restored all_original

    info "/proc/cmdline: $(cat /proc/cmdline)"
    info "IR interrupt chips: $(grep -o 'IR-[A-Z-]*' /proc/interrupts | sort -u | tr '\n' ' ')"
    # All configs: 102 sets pcie=1 without q35, 103 does not parse, 104 names an absent
    # device: doctor fails (exit 1) and names them.
    hook doctor
    check doctor.all-exit-1 rc_is 1
    info "doctor: $(echo "$STDOUT" | tail -n 1)"
    check doctor.iommu-enabled doc_is host iommu.enabled PASS
    check doctor.iommu-cmdline doc_is host iommu.cmdline PASS
    check doctor.no-iommu-pt-warns doc_is host iommu.passthrough-mode WARN
    check doctor.interrupt-remapping doc_is host iommu.interrupt-remapping PASS
    check doctor.no-bootloader-config-warns doc_is host boot.loader WARN
    check doctor.no-acs-override doc_is host boot.acs-override PASS
    check doctor.vfio-modules doc_is host modules.vfio PASS
    check doctor.blacklist doc_is host modules.blacklist PASS
    check doctor.102-gpu-group doc_is "VM 102" vm.iommu-group PASS
    check doctor.102-all-functions doc_is "VM 102" vm.all-functions PASS
    check doctor.102-pcie-without-q35 doc_is "VM 102" vm.machine FAIL
    check doctor.102-x-vga-without-vga-none doc_is "VM 102" vm.x-vga WARN
    check doctor.102-no-hookscript doc_is "VM 102" vm.hookscript WARN
    check doctor.102-console-gpu-no-sshd doc_is "VM 102" vm.console-access WARN
    check doctor.103-config-error doc_is "VM 103" vm.config FAIL
    check doctor.104-absent-device doc_is "VM 104" vm.devices FAIL
    check doctor.100-groups doc_is "VM 100" vm.iommu-group PASS
    check doctor.100-virtio-also-in-101 doc_is "VM 100" vm.shared-device WARN
    check doctor.changes-nothing all_original
    # One VM with nothing wrong but warnings: exit 0.
    hook doctor 100 --json
    check doctor.100-exit-0 rc_is 0
    check doctor.100-json out_json
    check doctor.100-json-names-nvme out_has "\"device\": \"$NVME1\""
    check doctor.100-json-only-100 test -z "$(echo "$STDOUT" | grep '"vm": ' | grep -v '"vm": 100')"
    hook doctor 103
    check doctor.103-exit-1 rc_is 1
    check doctor.103-names-line out_has '103.conf:1'
    check doctor.absent-vm-exit-2 sh -c "$HOOK doctor 999 >/dev/null 2>&1; [ \$? = 2 ]"
    restore_bed
fi

# ========================================================== reset memory
# /var/lib/pt-hook/health.json after two resets of one slot. The GPU pair (std VGA `bus`
# only + ich9 HDA without reset) off its host drivers: the VGA's function reset cannot run
# (`bus` is refused at reset time while the audio function shares the bus: ENOTTY), so the
# reset below the root port (reset_subordinate) recovers the slot; both models remember it,
# and the second reset starts there. Then status shows the health, and a VM cycle with
# metrics_file set writes the node_exporter file.
in_results() { echo "$STDOUT" | sed -n '/"results"/,$p'; }
hf_count() { grep -c -- "$1" /var/lib/pt-hook/health.json 2>/dev/null; }
if section memory; then
    HF=/var/lib/pt-hook/health.json
    PROM=/var/lib/prometheus/node-exporter/pt-hook.prom
    rm -f $HF $HF.corrupt
    echo $VGA > $SYS/$VGA/driver/unbind 2>/dev/null
    echo $AUDIO > $SYS/$AUDIO/driver/unbind 2>/dev/null
    check memory.gpu-unbound drv_is $VGA none
    check memory.audio-unbound drv_is $AUDIO none
    hook reset $VGA $AUDIO --json
    check memory.first-exit-0 rc_is 0
    check memory.first-is-json out_json
    first=$(in_results | grep -m1 '"rung":' | tr -d ' ,')
    check memory.first-starts-at-function-reset eq "$first" '"rung":"function-reset"'
    check memory.first-recovered-by-bus out_has '"message": "bus-reset:'
    check memory.file-written exists $HF
    check memory.file-model file_has $HF '"id": "1234:1111"'
    check memory.file-rung file_has $HF '"rung": "bus-reset"'
    info "first reset: $(in_results | grep -m1 '"message"')"

    hook reset $VGA $AUDIO --json
    check memory.second-exit-0 rc_is 0
    check memory.second-start out_has '"start": "bus-reset"'
    first=$(in_results | grep -m1 '"rung":' | tr -d ' ,')
    check memory.second-starts-at-bus-reset eq "$first" '"rung":"bus-reset"'
    n=$(in_results | grep -c '"rung": "function-reset"')
    check memory.second-no-function-reset eq "$n" 0
    check memory.second-gpu-present exists $SYS/$VGA
    info "second reset: $(echo "$STDOUT" | grep -m1 '"memory"')"
    # The file: two models (VGA, audio) each recovered twice at the bus reset, two slots
    # with two resets each, the second started by the memory.
    check memory.file-resets eq "$(hf_count '"resets": 2')" 4
    check memory.file-start eq "$(hf_count '"start": "bus-reset"')" 2
    check memory.file-bdf file_has $HF "\"bdf\": \"$VGA\""
    check memory.file-reset-phases file_has $HF '"phase": "reset"'
    sed -n '1,12p' $HF | sed 's/^/  health.json: /'

    hook status
    check memory.status-exit-0 rc_is 0
    check memory.status-health out_has "HEALTH: $VGA 1234:1111: last reset"
    check memory.status-starts out_has "ladder starts at bus-reset"
    hook status --json
    check memory.status-json-health json_has $VGA '"ladder_starts_at":"bus-reset"'
    hook status --prometheus
    check memory.prometheus-exit-0 rc_is 0
    check memory.prometheus-resets out_has 'pt_hook_resets_total{model="1234:1111",subsystem="[0-9a-f:]*",rung="bus-reset"} 2'
    check memory.prometheus-type out_has '# TYPE pt_hook_resets_total counter'
    restore_bed
    check memory.gpu-back drv_is $VGA bochs-drm
    check memory.fbcon-back fbcon_bound

    # A VM cycle with metrics_file: the hook writes the file after each phase.
    mkdir -p ${PROM%/*}
    chmod 755 /var/lib/prometheus ${PROM%/*}
    mkdir -p /etc/pt-hook
    printf 'metrics_file = "%s"\n' "$PROM" >/etc/pt-hook/pt-hook.toml
    chown 0:0 /etc/pt-hook/pt-hook.toml
    chmod 644 /etc/pt-hook/pt-hook.toml
    hook 100 pre-start
    check memory.vm-pre-start-exit-0 rc_is 0
    check memory.prom-written exists $PROM
    check memory.prom-owner-vm file_has $PROM 'pt_hook_devices{owner="vm",vm="100"} 2'
    check memory.prom-pre-start file_has $PROM 'pt_hook_phase_duration_seconds_count{phase="pre-start"} 1'
    hook 100 post-stop
    check memory.vm-post-stop-exit-0 rc_is 0
    check memory.prom-post-stop file_has $PROM 'pt_hook_phase_duration_seconds_count{phase="post-stop"} 1'
    check memory.prom-mode eq "$(stat -c %a $PROM)" 644
    check memory.prom-no-vm-now eq "$(grep -c 'owner="vm"' $PROM)" 0
    check memory.prom-nvme-reset file_has $PROM 'pt_hook_resets_total{model="1b36:0010",subsystem="1af4:1100",rung="function-reset"} 1'
    check memory.post-stop-remembered file_has $HF "\"bdf\": \"$NVME1\""
    grep -E '^pt_hook_(resets_total|phase_last_duration_seconds|devices)' $PROM | sed 's/^/  prom: /'
    rm -f /etc/pt-hook/pt-hook.toml $HF $PROM
    check memory.all-original all_original
    restore_bed
fi

# ================================================================ guard
# The host guard. pre-start must refuse (exit 1, before any change) a VM whose functions the
# host uses, naming each function and user ("mounted at", "active swap", "open by pid N",
# "default route"); post-stop and cleanup must never unbind or reset a function a live process
# holds (wait up to the phase deadline, keep the state, exit 1 naming the holder, within the
# deadline + 1 s, every process gone); cleanup after the holder exits restores the host.
# Every case ends with guard_cleanup and a comparison with the state at the section start.
GMNT=/mnt/guard
G_PIDS=""
G_UB=""
gstate() { # host_snap plus what the guard cases set up
    printf '%sblk1=%s;card0=%s;swaps=%s;default=%s;guardmnt=%s;toml=%s' "$(host_snap)" "$(blk_of $NVME1)" \
        "$([ -e /dev/dri/card0 ] && echo y || echo n)" "$(awk 'NR > 1 && !/deleted/' /proc/swaps | wc -l)" \
        "$(ip route 2>/dev/null | grep -c '^default')" "$(grep -c " $GMNT " /proc/mounts)" \
        "$([ -e /etc/pt-hook/pt-hook.toml ] && echo y || echo n)"
}
gstate_is() { # STATE (polls ~5 s)
    _i=0
    while [ $_i -lt 50 ]; do [ "$(gstate)" = "$1" ] && return 0; sleep 0.1; _i=$((_i + 1)); done
    WHY="host differs: now $(gstate) at start $1"; return 1
}
snap_now_is() { [ "$(host_snap)" = "$1" ] || { WHY="host changed: now $(host_snap) before $1"; return 1; }; }
refused() { # NAME VMID BDF PHRASE SNAPSHOT: the checks every refused pre-start makes
    check $1.exit-1 rc_is 1
    check $1.names-bdf out_has "$(short $3)"
    check $1.names-user out_has "$4"
    check $1.host-unchanged snap_now_is "$5"
    check $1.no-state state_gone $2
}
phase_timeout_5s() {
    mkdir -p /etc/pt-hook
    chmod 755 /etc/pt-hook
    printf '[timeouts]\nphase_timeout = "5s"\n' >/etc/pt-hook/pt-hook.toml
    chown 0:0 /etc/pt-hook/pt-hook.toml
    chmod 644 /etc/pt-hook/pt-hook.toml
}
guard_cleanup() { # the host back to the section's start, whatever a case (or pt-hook) left
    for _p in $G_PIDS; do kill $_p 2>/dev/null; done
    for _p in $G_PIDS; do wait_gone $_p 30 >/dev/null || kill -9 $_p 2>/dev/null; done
    G_PIDS=""
    stop_holder >/dev/null
    for _p in $G_UB; do wait_gone $_p 150 >/dev/null || echo "  guard_cleanup: unbind writer $_p still blocked"; done
    G_UB=""
    bg_reap 30
    if grep -q " $GMNT " /proc/mounts; then umount $GMNT 2>/dev/null || umount -l $GMNT; fi
    for _s in $(awk 'NR > 1 {print $1}' /proc/swaps); do
        swapoff "$_s" 2>/dev/null || echo "  guard_cleanup: swapoff $_s failed (a stale swap entry stays until reboot)"
    done
    _if=$(net_of $E1000E)
    if [ -n "$_if" ]; then
        ip route del default 2>/dev/null
        ip addr flush dev $_if 2>/dev/null
        ip link set dev $_if down 2>/dev/null
    fi
    rm -f /etc/pt-hook/pt-hook.toml
    restore_bed
    # a namespace or DRM card that came back under a new name while the old one was held
    if [ -n "$BOOT_BLK1" ] && [ "$(blk_of $NVME1)" != "$BOOT_BLK1" ]; then
        echo "  guard_cleanup: $NVME1 has $(blk_of $NVME1), not $BOOT_BLK1: rebinding nvme"
        back_by_hand $NVME1 nvme >/dev/null
        has_blockdev $NVME1 >/dev/null
    fi
    if [ ! -e /dev/dri/card0 ] && [ "$(drv $VGA)" = bochs-drm ]; then
        echo "  guard_cleanup: no /dev/dri/card0 ($(ls /dev/dri 2>&1 | tr '\n' ' ')): rebinding bochs-drm"
        back_by_hand $VGA bochs-drm >/dev/null
        fbcon_bound >/dev/null || { _v=$(fbcon_vt) && echo 1 >"$_v/bind"; }
    fi
    _b=$(blk_of $NVME1)
    [ -n "$_b" ] && dd if=/dev/zero of=/dev/$_b bs=64k count=16 2>/dev/null
    return 0
}
if section guard; then
    modprobe vfio-pci
    [ -x "$HOLD" ] || echo "FAIL guard.vfio-hold-present ($HOLD missing: run.sh builds it with gcc -static; cases f and g cannot run)"
    BOOT_BLK1=$(blk_of $NVME1)
    check guard.setup.nvme1-blockdev test -n "$BOOT_BLK1"
    check guard.setup.card0 exists /dev/dri/card0
    GSTATE0=$(gstate)
    info "guard: start state $GSTATE0"

    # a. a mounted ext4 on VM 100's NVMe, a file on it open
    B=$BOOT_BLK1
    mke2fs -F /dev/$B >/dev/null 2>&1
    mkdir -p $GMNT
    if mount -t ext4 /dev/$B $GMNT && echo "guard $KVER" >$GMNT/file && sync; then
        sleep 1000 <$GMNT/file &
        G_PIDS="$G_PIDS $!"
        SNAP=$(host_snap)
        hook 100 pre-start
        refused guard.mount 100 $NVME1 "mounted at" "$SNAP"
        echo 3 >/proc/sys/vm/drop_caches
        check guard.mount.file-readable eq "$(cat $GMNT/file 2>&1)" "guard $KVER"
        check guard.mount.still-writable sh -c "echo alive >$GMNT/probe && sync && [ \"\$(cat $GMNT/probe)\" = alive ]"
        check guard.mount.still-mounted grep -q " $GMNT ext4 rw" /proc/mounts
        check guard.mount.same-namespace eq "$(blk_of $NVME1)" "$B"
    else
        echo "FAIL guard.mount.setup (mount -t ext4 /dev/$B $GMNT failed)"
    fi
    guard_cleanup
    check guard.mount.host-as-at-start gstate_is "$GSTATE0"

    # c. a process holding the raw block node
    B=$(blk_of $NVME1)
    sleep 1000 </dev/$B &
    P=$!
    G_PIDS="$G_PIDS $P"
    SNAP=$(host_snap)
    hook 100 pre-start
    refused guard.blockopen 100 $NVME1 "open by pid $P" "$SNAP"
    check guard.blockopen.fd-intact eq "$(readlink /proc/$P/fd/0)" /dev/$B
    guard_cleanup
    check guard.blockopen.host-as-at-start gstate_is "$GSTATE0"

    # d. the default route through the e1000e (VM 105 = nvme2 + e1000e)
    IF=$(net_of $E1000E)
    if [ -n "$IF" ] && ip addr add 10.0.2.15/24 dev $IF && ip link set dev $IF up &&
        ip route add default via 10.0.2.2 dev $IF; then
        ROUTE=$(ip route | grep '^default')
        info "guard: default route: $ROUTE"
        SNAP=$(host_snap)
        hook 105 pre-start
        refused guard.route 105 $E1000E "default route" "$SNAP"
        check guard.route.route-kept eq "$(ip route | grep '^default')" "$ROUTE"
        check guard.route.address-kept sh -c "ip -4 addr show dev $IF | grep -q 'inet 10.0.2.15/24'"
        check guard.route.same-interface eq "$(net_of $E1000E)" "$IF"
    else
        echo "FAIL guard.route.setup (no address/route on e1000e '$IF')"
    fi
    guard_cleanup
    check guard.route.host-as-at-start gstate_is "$GSTATE0"

    # e. a process holding /dev/dri/card0 of the console GPU (VM 102, x-vga)
    sleep 1000 </dev/dri/card0 &
    P=$!
    G_PIDS="$G_PIDS $P"
    SNAP=$(host_snap)
    hook 102 pre-start
    refused guard.drm 102 $VGA "open by pid $P" "$SNAP"
    check guard.drm.fbcon-bound fbcon_bound
    check guard.drm.bochs-bound drv_now_is $VGA bochs-drm
    check guard.drm.card0 exists /dev/dri/card0
    check guard.drm.no-card1 absent /dev/dri/card1
    guard_cleanup
    check guard.drm.host-as-at-start gstate_is "$GSTATE0"

    # g. a process holding /dev/vfio/N (group only, then group + device) of a function that is
    # on vfio-pci already (by hand) and that VM 100 names
    for mode in group device; do
        if to_vfio_by_hand $NVME1 && start_holder $NVME1 $([ $mode = group ] && echo --group-only); then
            P=$HOLDER_PID
            SNAP=$(host_snap)
            hook 100 pre-start
            refused guard.vfio-$mode 100 $NVME1 "open by pid $P" "$SNAP"
            check guard.vfio-$mode.holder-alive pid_alive $P
        else
            echo "FAIL guard.vfio-$mode.setup ($NVME1 driver $(drv $NVME1); $WHY)"
        fi
        guard_cleanup
        check guard.vfio-$mode.host-as-at-start gstate_is "$GSTATE0"
    done

    # h. control: nothing holds VM 100's functions, a whole cycle passes
    hook 100 pre-start
    check guard.control.pre-start-exit-0 rc_is 0
    hook 100 post-stop
    check guard.control.post-stop-exit-0 rc_is 0
    check guard.control.host-as-at-start gstate_is "$GSTATE0"
    guard_cleanup

    # b. active swap on an NVMe: VM 101's (nvme2 + virtio-net), as the last case that can leave
    # something behind on today's pt-hook: a swap whose device went away cannot be swapped off
    # (/proc/swaps keeps "/dev/nvme0n1 (deleted)" until reboot).
    B=$(blk_of $NVME2)
    if mkswap /dev/$B >/dev/null 2>&1 && swapon /dev/$B; then
        SNAP=$(host_snap)
        hook 101 pre-start
        refused guard.swap 101 $NVME2 "active swap" "$SNAP"
        check guard.swap.still-listed eq "$(awk 'NR > 1 {print $1}' /proc/swaps)" /dev/$B
        check guard.swap.same-namespace eq "$(blk_of $NVME2)" "$B"
        swapoff /dev/$B 2>/tmp/swapoff.err
        r=$?
        WHY=$(cat /tmp/swapoff.err)
        check guard.swap.swapoff-works eq "$r" 0
    else
        echo "FAIL guard.swap.setup (mkswap/swapon /dev/$B failed)"
    fi
    guard_cleanup
    check guard.swap.host-as-at-start gstate_is "$GSTATE0"
    check guard.swap.no-stale-swap eq "$(awk 'NR > 1' /proc/swaps | wc -l)" 0

    # f(i). VM 100 running, vfio-hold holding its NVMe (group + device fd) like a QEMU that
    # has not let go: post-stop waits at most the phase timeout, keeps the state, exits 1
    hook 100 pre-start
    check guard.held.pre-start-exit-0 rc_is 0
    if rc_is 0 && start_holder $NVME1; then
        P=$HOLDER_PID
        phase_timeout_5s
        hook_bg 100 post-stop
        hook_wait 10
        check guard.held.post-stop-returns bg_done
        check guard.held.post-stop-within-6s secs_le 6
        check guard.held.post-stop-exit-1 rc_is 1
        check guard.held.names-holder out_has "open by pid $P"
        check guard.held.names-bdf out_has "$(short $NVME1)"
        check guard.held.state-kept state_exists 100
        check guard.held.still-on-vfio drv_now_is $NVME1 vfio-pci
        check guard.held.holder-alive pid_alive $P
        stop_holder
        bg_reap 30
        hook_bg cleanup
        hook_wait 30
        check guard.held.cleanup-exit-0 rc_is 0
        check guard.held.cleanup-nvme-back drv_is $NVME1 nvme
        check guard.held.cleanup-state-gone state_gone 100
        rm -f /etc/pt-hook/pt-hook.toml
        check guard.held.cleanup-restores-host gstate_is "$GSTATE0"
    else
        echo "FAIL guard.held.setup ($WHY)"
    fi
    guard_cleanup
    check guard.held.host-as-at-start gstate_is "$GSTATE0"

    # f(iii). the holder is VM 100's own QEMU, still exiting (a process in qemu.slice/100.scope
    # with the group and the device open): post-stop does not reset or unbind under it either;
    # it waits, keeps the state, exits 1 naming it as VM 100's; cleanup after it exits.
    hook 100 pre-start
    check guard.own-qemu.pre-start-exit-0 rc_is 0
    CG=/sys/fs/cgroup
    CG_MOUNTED=""
    grep -q " $CG cgroup2 " /proc/mounts || { mount -t cgroup2 none $CG 2>/dev/null && CG_MOUNTED=1; }
    if rc_is 0 && mkdir -p $CG/qemu.slice/100.scope && start_holder $NVME1 &&
        echo $HOLDER_PID >$CG/qemu.slice/100.scope/cgroup.procs; then
        P=$HOLDER_PID
        check guard.own-qemu.setup-scope eq "$(cat /proc/$P/cgroup)" "0::/qemu.slice/100.scope"
        phase_timeout_5s
        hook_bg 100 post-stop
        hook_wait 10
        check guard.own-qemu.post-stop-returns bg_done
        check guard.own-qemu.post-stop-within-6s secs_le 6
        check guard.own-qemu.post-stop-exit-1 rc_is 1
        check guard.own-qemu.names-holder out_has "open by pid $P"
        check guard.own-qemu.names-vm out_has "of VM 100"
        check guard.own-qemu.nothing-reset out_has "nothing was reset or unbound"
        check guard.own-qemu.state-kept state_exists 100
        check guard.own-qemu.still-on-vfio drv_now_is $NVME1 vfio-pci
        stop_holder
        bg_reap 30
        hook_bg cleanup
        hook_wait 30
        check guard.own-qemu.cleanup-exit-0 rc_is 0
        check guard.own-qemu.cleanup-nvme-back drv_is $NVME1 nvme
        check guard.own-qemu.cleanup-state-gone state_gone 100
        rm -f /etc/pt-hook/pt-hook.toml
    else
        echo "FAIL guard.own-qemu.setup (cgroup $CG/qemu.slice/100.scope: $(ls -d $CG/qemu.slice/100.scope 2>&1); $WHY)"
    fi
    guard_cleanup
    rmdir $CG/qemu.slice/100.scope $CG/qemu.slice 2>/dev/null
    [ -z "$CG_MOUNTED" ] || umount $CG
    check guard.own-qemu.host-as-at-start gstate_is "$GSTATE0"

    # f(ii). the same, and a shell stuck in `echo BDF > vfio-pci/unbind` (it holds the device
    # lock; on 6.1 even a read of driver_override blocks behind it): post-stop, status and
    # cleanup each return within the phase timeout + 1 s with their pipes closed; after the
    # holder exits, cleanup restores the host and leaves alone (no reset) a function that is
    # already back on its host driver. Last case: a reset virtio-net can stall RTNL.
    hook 100 pre-start
    check guard.stuck.pre-start-exit-0 rc_is 0
    if rc_is 0 && start_holder $NVME1; then
        P=$HOLDER_PID
        phase_timeout_5s
        rm -f /tmp/gub.rc
        ( echo $NVME1 >/sys/bus/pci/drivers/vfio-pci/unbind; echo $? >/tmp/gub.rc ) 2>/dev/null &
        UB=$!
        G_UB=$UB
        i=0
        while [ ! -e /tmp/gub.rc ] && [ $i -lt 10 ]; do sleep 0.1; i=$((i + 1)); done
        check guard.stuck.setup-unbind-blocked absent /tmp/gub.rc
        for c in "100 post-stop" status cleanup; do
            n=$(echo "$c" | tr ' ' '-')
            hook_bg $c
            hook_wait 10
            check guard.stuck.$n-returns bg_done
            check guard.stuck.$n-within-6s secs_le 6
            case $c in
                status) ;;
                *) check guard.stuck.$n-exit-1 rc_is 1
                   check guard.stuck.$n-names-holder out_has "open by pid $P" ;;
            esac
        done
        check guard.stuck.state-kept state_exists 100
        check guard.stuck.holder-alive pid_alive $P
        stop_holder
        check guard.stuck.unbind-completes wait_gone $UB 150
        G_UB=""
        bg_reap 30
        rm -f /etc/pt-hook/pt-hook.toml
        VDRV=$(drv $VNET)
        hook_bg cleanup
        hook_wait 30
        check guard.stuck.final-cleanup-exit-0 rc_is 0
        check guard.stuck.final-cleanup-nvme-back drv_is $NVME1 nvme
        check guard.stuck.final-cleanup-state-gone state_gone 100
        check guard.stuck.final-cleanup-restores-host gstate_is "$GSTATE0"
        # The virtio-net was back on virtio-pci before that cleanup: had cleanup reset it,
        # virtio-net's next control command spins with RTNL held (ip link set up hangs).
        VIF=$(net_of $VNET)
        if [ "$VDRV" = "$(orig_drv $VNET)" ] && [ -n "$VIF" ]; then
            rm -f /tmp/vup.rc
            ( ip link set dev $VIF up; echo $? >/tmp/vup.rc ) &
            i=0
            while [ ! -e /tmp/vup.rc ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
            check guard.stuck.virtio-not-reset exists /tmp/vup.rc
            [ -e /tmp/vup.rc ] && ip link set dev $VIF down
            [ -e /tmp/vup.rc ] || info "guard: 'ip link set $VIF up' hangs: RTNL is stuck, later ip commands will hang"
        else
            info "guard: $VNET was on '$VDRV' before the final cleanup: the no-reset-of-a-bound-function check does not apply"
        fi
    else
        echo "FAIL guard.stuck.setup ($WHY)"
    fi
    guard_cleanup
    check guard.stuck.host-as-at-start gstate_is "$GSTATE0"
    rmmod vfio_pci 2>/dev/null
fi

# ================================================================ fleet
# The device inventory a node publishes to /etc/pve/nodes/<node>/pt-hook.json after its
# phases (here /etc/pve is a plain directory of the initramfs, the node is pve1), from real
# sysfs: who holds what after a pre-start, and after the post-stop.
INV=/etc/pve/nodes/pve1/pt-hook.json
inv_dev() { # BDF -> that device's object from the one-line inventory (health is its last field)
    tr '{' '\n' <"$INV" 2>/dev/null | grep "\"bdf\":\"$1\""
}
inv_dev_has() { # BDF PATTERN...
    _j=$(inv_dev "$1")
    _b=$1
    shift
    for _p in "$@"; do
        case "$_j" in
            *"$_p"*) ;;
            *) WHY="$_b lacks $_p: $(echo "$_j" | head -c 300)"; return 1 ;;
        esac
    done
}
inv_has() { grep -q -- "$1" "$INV" 2>/dev/null || { WHY="$INV lacks $1: $(head -c 200 "$INV" 2>/dev/null)"; return 1; }; }
if section fleet; then
    mkdir -p /etc/pve/nodes/pve1
    rm -f "$INV"
    hook -v 100 pre-start
    check fleet.pre-start-exit-0 rc_is 0
    info "pre-start: $(echo "$OUT" | grep -o 'inventory: .*' | head -n 1)"
    check fleet.published-after-pre-start exists "$INV"
    check fleet.pre-start-phase inv_has '"phase":"pre-start","pt_hook"'
    check fleet.pre-start-node inv_has '"node":"pve1"'
    check fleet.nvme1-held-by-100 inv_dev_has $NVME1 '"driver":"vfio-pci"' '"owner":"100"' '"owner_source":"state","running":true'
    check fleet.vga-listed-boot-vga inv_dev_has $VGA '"driver":"bochs-drm"' '"boot_vga":true' '"owner":"102"'
    check fleet.nvme1-id inv_dev_has $NVME1 "\"iommu_group\":$(group $NVME1),"
    hook -v 100 post-stop
    check fleet.post-stop-exit-0 rc_is 0
    info "post-stop: $(echo "$OUT" | grep -o 'inventory: .*' | head -n 1)"
    check fleet.post-stop-phase inv_has '"phase":"post-stop","pt_hook"'
    check fleet.nvme1-back-and-free inv_dev_has $NVME1 "\"driver\":\"$(orig_drv $NVME1)\"" '"owner_source":"config","running":false'
    check fleet.no-temporary-left absent /etc/pve/nodes/pve1/pt-hook.tmp.*
    hook status --cluster --json
    check fleet.cluster-exit-0 rc_is 0
    check fleet.cluster-local out_has '"local": true'
    # Quorum lost: /etc/pve read-only (here a read-only tmpfs over the node's directory, so
    # the writes get EROFS). The phases still succeed, with one warning each.
    cp "$INV" /tmp/inv.before
    mount -t tmpfs -o ro tmpfs /etc/pve/nodes/pve1
    hook 100 pre-start
    check fleet.ro-pre-start-exit-0 rc_is 0
    check fleet.ro-pre-start-warns out_has 'read-only'
    check fleet.ro-nvme1-on-vfio drv_is $NVME1 vfio-pci
    hook 100 post-stop
    check fleet.ro-post-stop-exit-0 rc_is 0
    check fleet.ro-post-stop-warns out_has 'read-only'
    umount /etc/pve/nodes/pve1
    check fleet.ro-old-inventory-kept cmp -s /tmp/inv.before "$INV"
    check fleet.restored all_original
    rm -rf /etc/pve/nodes /tmp/inv.before
    restore_bed
fi

# =============================================================== syslog
if section syslog; then
    n=$(grep -c 'pt-hook' /var/log/messages 2>/dev/null)
    check syslog.pt-hook-lines test "${n:-0}" -gt 0
    grep 'pt-hook' /var/log/messages 2>/dev/null | tail -n 5 | sed 's/^/  syslog: /'
fi

echo "SCENARIO-DONE seconds=$(elapsed "$T_START")"
