#!/usr/bin/python3
"""What qemu-server 9.2.x does around a hookscript and its PCI devices, re-implemented for the
test bed from the measured facts (shared/reference/PROXMOX.md, "Measured from qemu-server
9.2.6"). Not Proxmox's code: only the steps, their order and their files.

  pve-start.py start VMID     vm_start: pre-start hook, hostpci parsed, reservations with a
                              time, prepare_pci_device, real QEMU (-device vfio-pci), the
                              reservation rewritten with QEMU's pid, VMID.cleanup, post-start
  pve-start.py stop VMID      _do_vm_stop: pre-stop hook, QEMU quit (QMP) / killed, then
                              vm_stop_cleanup: post-stop only when VMID.cleanup exists
  pve-start.py cleanup VMID   qmeventd's `qm cleanup` after QEMU went away by itself

PVE_TEST_QEMU_FAIL=1 makes QEMU exit at start (a bad -device), after pre-start and the PCI
work. Every step is printed as `pve: ...`; exit 0 on success, 255 when it "dies" as
qemu-server would (message `pve: die: ...`)."""
import os
import re
import signal
import socket
import subprocess
import sys
import time

RUN = "/run/qemu-server"
RES = RUN + "/pci-id-reservations"
SYS = "/sys/bus/pci/devices"
VFIO = "/sys/bus/pci/drivers/vfio-pci"


def say(msg):
    print("pve: " + msg, flush=True)


def die(msg):
    say("die: " + msg)
    sys.exit(255)


def conf(vmid):
    lines = []
    with open("/etc/pve/qemu-server/%s.conf" % vmid) as f:
        for line in f:
            if line.startswith("["):
                break  # only the current config counts
            m = re.match(r"^([a-z][a-z_\-]*\d*):\s*(.*?)\s*$", line)
            if m:
                lines.append((m.group(1), m.group(2)))
    return lines


def hookscript(vmid):
    for k, v in conf(vmid):
        if k == "hookscript":
            storage, _, rest = v.partition(":")
            assert storage == "local" and rest.startswith("snippets/"), v
            return "/var/lib/vz/" + rest
    return None


def run_hook(vmid, phase):
    path = hookscript(vmid)
    if not path:
        return 0
    env = dict(os.environ, LC_ALL="C", LVM_SUPPRESS_FD_WARNINGS="1")
    # run_command: stdin a pipe closed at once, stdout+stderr into the task log; waits for
    # the exit and for the pipes to close.
    p = subprocess.Popen([path, str(vmid), phase], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, env=env, cwd="/")
    p.stdin.close()
    out = p.stdout.read().decode(errors="replace")
    rc = p.wait()
    for line in out.splitlines():
        print("  hook| " + line)
    say("hook %s exit %d" % (phase, rc))
    if rc != 0 and phase == "pre-start":
        die("hookscript error for %s on pre-start: command '%s %s pre-start' failed: exit code %d"
            % (vmid, path, vmid, rc))
    return rc


def hostpci(vmid):
    """[(bdf list, opts)] per hostpciN, prefix addresses expanded to every function."""
    out = []
    for k, v in conf(vmid):
        if not re.match(r"^hostpci\d+$", k):
            continue
        opts = {}
        for i, part in enumerate(v.split(",")):
            if "=" in part:
                a, _, b = part.partition("=")
                opts[a] = b
            elif i == 0:
                opts["host"] = part
        bdfs = []
        for addr in opts.get("host", "").split(";"):
            if addr.count(":") == 1:
                addr = "0000:" + addr
            if "." in addr:
                bdfs.append(addr)
            else:
                bdfs += sorted(d for d in os.listdir(SYS) if d.startswith(addr + "."))
        out.append((bdfs, opts))
    return out


def read(path):
    with open(path) as f:
        return f.read().strip()


def write(path, value):
    with open(path, "w") as f:
        f.write(value)


def driver(bdf):
    p = SYS + "/" + bdf + "/driver"
    return os.path.basename(os.readlink(p)) if os.path.exists(p) else None


def reservations():
    res = []
    try:
        with open(RES) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    res.append(parts)
    except FileNotFoundError:
        pass
    return res


def save_reservations(res):
    os.makedirs(RUN, exist_ok=True)
    tmp = RES + ".tmp"
    with open(tmp, "w") as f:
        for r in res:
            f.write(" ".join(r) + "\n")
    os.rename(tmp, RES)


def reserve(bdfs, vmid, timeout=None, pid=None):
    now = int(time.time())
    res = reservations()
    keep = []
    for bdf, owner, how in res:
        if owner != str(vmid) and bdf in bdfs:
            kind, _, val = how.partition(":")
            alive = (kind == "pid" and os.path.exists("/proc/" + val)) or (kind == "time" and int(val) > now)
            if alive:
                die("PCI device '%s' already in use by VMID '%s'" % (bdf, owner))
            continue
        if owner == str(vmid):
            continue
        keep.append([bdf, owner, how])
    for bdf in bdfs:
        keep.append([bdf, str(vmid), "pid:%d" % pid if pid else "time:%d" % (now + timeout)])
    save_reservations(keep)
    say("reserved %s for %s (%s)" % (" ".join(bdfs), vmid, "pid %d" % pid if pid else "time"))


def drop_reservations(vmid):
    save_reservations([r for r in reservations() if r[1] != str(vmid)])
    say("reservations of %s dropped" % vmid)


def prepare_pci_device(bdf):
    """For every non-bridge member of the group: new_id + unbind + bind unless on vfio-pci,
    then reset (a failure only warns). Never driver_override, never reset_method."""
    if not os.path.isdir(VFIO):
        die("Cannot find vfio-pci module!")
    group = SYS + "/" + bdf + "/iommu_group/devices"
    for member in sorted(os.listdir(group)):
        cls = read(SYS + "/" + member + "/class")
        if cls.startswith("0x0604"):
            continue  # bridge
        if driver(member) == "vfio-pci":
            say("%s already on vfio-pci" % member)
            continue
        ids = "%s %s" % (read(SYS + "/" + member + "/vendor")[2:], read(SYS + "/" + member + "/device")[2:])
        try:
            write(VFIO + "/new_id", ids)
            say("new_id %s (for %s)" % (ids, member))
        except OSError as e:
            say("new_id %s: %s (accepted)" % (ids, e.strerror))
        if driver(member):
            write(SYS + "/" + member + "/driver/unbind", member)
            say("unbound %s" % member)
        try:
            write(VFIO + "/bind", member)
        except OSError as e:
            say("bind %s: %s" % (member, e.strerror))
        if driver(member) != "vfio-pci":
            die("Cannot bind %s to vfio" % member)
        say("bound %s to vfio-pci" % member)
    if os.path.exists(SYS + "/" + bdf + "/reset"):
        try:
            write(SYS + "/" + bdf + "/reset", "1")
            say("reset %s" % bdf)
        except OSError as e:
            say("warning: reset %s failed: %s" % (bdf, e.strerror))


def qmp(vmid, cmd):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect("%s/%s.qmp" % (RUN, vmid))
    f = s.makefile("rw")
    f.readline()
    f.write('{"execute":"qmp_capabilities"}\n'); f.flush(); f.readline()
    f.write('{"execute":"%s"}\n' % cmd); f.flush()
    try:
        return f.readline()
    finally:
        s.close()


def qemu_pid(vmid):
    try:
        pid = int(read("%s/%s.pid" % (RUN, vmid)))
        return pid if os.path.exists("/proc/%d" % pid) else None
    except (OSError, ValueError):
        return None


def start(vmid):
    os.makedirs(RUN, exist_ok=True)
    if qemu_pid(vmid):
        die("VM %s already running" % vmid)
    say("start %s" % vmid)
    run_hook(vmid, "pre-start")
    devs = hostpci(vmid)  # parsed after the hook
    allbdfs = [b for bdfs, _ in devs for b in bdfs]
    reserve(allbdfs, vmid, timeout=10)
    args = ["qemu-system-x86_64", "-name", "vm%s" % vmid, "-machine", "q35", "-accel", "tcg",
            "-m", "64", "-nodefaults", "-display", "none", "-vga", "none", "-S",
            "-pidfile", "%s/%s.pid" % (RUN, vmid), "-daemonize",
            "-qmp", "unix:%s/%s.qmp,server=on,wait=off" % (RUN, vmid)]
    try:
        for i, (bdfs, opts) in enumerate(devs):
            keep = opts.get("driver") == "keep"
            for j, bdf in enumerate(bdfs):
                if not keep:
                    prepare_pci_device(bdf)
                dev = "vfio-pci,host=%s,id=hostpci%d.%d" % (bdf, i, j)
                if len(bdfs) > 1:
                    dev += ",multifunction=on,addr=0x%x.%d" % (0x10 + i, j)
                if opts.get("x-vga") in ("1", "on", "yes", "true") and j == 0:
                    dev += ",x-vga=on"
                args += ["-device", dev]
        if os.environ.get("PVE_TEST_QEMU_FAIL") == "1":
            args += ["-device", "no-such-device-pvetest"]
        say("qemu: " + " ".join(args))
        r = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=120)
        for line in r.stdout.decode(errors="replace").splitlines():
            print("  qemu| " + line)
        if r.returncode != 0:
            raise RuntimeError("start failed: QEMU exited with code %d" % r.returncode)
    except SystemExit:
        cleanup_pci_devices(vmid)
        raise
    except Exception as e:  # QEMU or PCI step failed after pre-start: no post-stop
        cleanup_pci_devices(vmid)
        die(str(e))
    pid = qemu_pid(vmid)
    say("qemu running, pid %s" % pid)
    reserve(allbdfs, vmid, pid=pid)
    open("%s/%s.cleanup" % (RUN, vmid), "w").close()
    run_hook(vmid, "post-start")
    return 0


def cleanup_pci_devices(vmid):
    drop_reservations(vmid)


def vm_stop_cleanup(vmid):
    flag = "%s/%s.cleanup" % (RUN, vmid)
    cleanup_pci_devices(vmid)
    if os.path.exists(flag):
        os.unlink(flag)
        run_hook(vmid, "post-stop")
    else:
        say("no %s: no post-stop" % flag)


def stop(vmid):
    pid = qemu_pid(vmid)
    say("stop %s (qemu pid %s)" % (vmid, pid))
    if pid:
        run_hook(vmid, "pre-stop")
        try:
            qmp(vmid, "quit")
        except OSError as e:
            say("qmp quit: %s; SIGTERM" % e)
            os.kill(pid, signal.SIGTERM)
        for _ in range(300):
            if not os.path.exists("/proc/%d" % pid):
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
    vm_stop_cleanup(vmid)
    return 0


def main():
    op, vmid = sys.argv[1], sys.argv[2]
    if op == "start":
        return start(vmid)
    if op == "stop":
        return stop(vmid)
    if op == "cleanup":
        vm_stop_cleanup(vmid)
        return 0
    die("unknown op " + op)


if __name__ == "__main__":
    sys.exit(main())
