//! The host guard on the simulated kernel: every kind of user refuses pre-start before any
//! change (exit 1, the user named); post-stop and cleanup never reset or unbind a held
//! function; `release_containers` stops and restarts the containers that hold a device.

use std::time::{Duration, Instant};

use crate::engine::lifecycle;
use crate::error::Error;
use crate::host::sim::SimHost;
use crate::host::OpenNode;
use crate::parse::config::VmOptions;
use crate::tests::test_support::T;

const VGA: &str = "0000:01:00.0";
const NVME: &str = "0000:02:00.0";
const VNET: &str = "0000:04:00.0";

fn write(t: &T, rel: &str, text: &str) {
    let p = t.sim.root_dir().join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// nvme0n1 (259:0) with partition nvme0n1p1 (259:1) on the first NVMe, non-multipath layout.
fn nvme_disk(s: &SimHost) {
    s.add_child(NVME, "nvme", "nvme/nvme0", "nvme", Some("244:0"));
    s.add_child(NVME, "nvme", "nvme/nvme0/nvme0n1", "block", Some("259:0"));
    s.add_child(
        NVME,
        "nvme",
        "nvme/nvme0/nvme0n1/nvme0n1p1",
        "block",
        Some("259:1"),
    );
}

/// eth0 on the virtio-net function.
fn eth0(s: &SimHost) {
    s.add_child(VNET, "virtio-pci", "virtio0/net/eth0", "net", None);
}

const ROUTE_HEAD: &str =
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";

/// pre-start of `vm` is refused: exit 1, no sysfs write, no state, the host as before; the
/// message holds every needle.
fn refused(t: &T, vm: u32, needles: &[&str]) -> String {
    let before = t.devices();
    let writes = t.sim.write_count();
    let e = crate::engine::phase::pve(&t.ctx(), vm, "pre-start").unwrap_err();
    let msg = e.to_string();
    assert_eq!(e.exit_code(), 1, "{msg}");
    assert!(matches!(e, Error::Failed(_)), "{msg}");
    for n in needles {
        assert!(msg.contains(n), "{n:?} not in: {msg}");
    }
    assert!(msg.contains("nothing was changed"), "{msg}");
    assert_eq!(
        t.sim.write_count(),
        writes,
        "pre-start wrote to sysfs: {msg}"
    );
    assert_eq!(t.devices(), before);
    assert!(!t.has_state(vm));
    // plan shows the same refusal.
    let p = lifecycle::plan_vm(&t.ctx_dry(true), vm).unwrap();
    assert!(!p.refusals.is_empty());
    for r in &p.refusals {
        assert!(msg.contains(r.as_str()), "{r:?} not in {msg}");
    }
    msg
}

#[test]
fn a_mounted_partition_refuses_with_the_config_line_to_fix() {
    let t = T::new();
    nvme_disk(&t.sim);
    write(
        &t,
        "proc/self/mountinfo",
        "22 1 0:21 / / rw - ext4 /dev/sda1 rw\n40 22 259:1 / /var/lib/vz rw,relatime - ext4 /dev/nvme0n1p1 rw\n41 22 259:1 /iso /srv/iso\\040images rw - ext4 /dev/nvme0n1p1 rw\n",
    );
    let msg = refused(
        &t,
        100,
        &[
            "hostpci0 0000:02:00.0: /dev/nvme0n1p1 is mounted at /var/lib/vz (ext4)",
            "/srv/iso images",
            "fix hostpci0 in",
            "etc/pve/qemu-server/100.conf or use a PCI mapping",
            "storage the host uses is never taken",
        ],
    );
    assert!(!msg.contains("hostpci1"), "{msg}");
}

#[test]
fn swap_on_a_multipath_namespace_refuses() {
    // Native NVMe multipath: the namespace sits under the subsystem, its path under the
    // controller.
    let t = T::new();
    t.sim
        .add_child(NVME, "nvme", "nvme/nvme0/nvme0c0n1", "block", Some("259:9"));
    let head = "sys/devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1";
    t.sim.add_sys_file(&format!("{head}/dev"), "259:0\n");
    t.sim.add_sys_link("sys/class/block/nvme0n1", head);
    t.sim.add_sys_link(
        &format!("{head}/multipath/nvme0c0n1"),
        &format!("sys/bus/pci/devices/{NVME}/nvme/nvme0/nvme0c0n1"),
    );
    write(
        &t,
        "proc/swaps",
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/dev/nvme0n1                            partition\t16380\t\t0\t\t-2\n",
    );
    refused(&t, 100, &["0000:02:00.0: /dev/nvme0n1 is active swap"]);
}

#[test]
fn lvm_on_the_disk_names_the_stack_and_its_mount() {
    let t = T::new();
    nvme_disk(&t.sim);
    t.sim
        .add_sys_file("sys/devices/virtual/block/dm-0/dev", "253:0\n");
    t.sim
        .add_sys_file("sys/devices/virtual/block/dm-0/dm/name", "pve-root\n");
    t.sim
        .add_sys_link("sys/class/block/dm-0", "sys/devices/virtual/block/dm-0");
    t.sim.add_sys_link(
        &format!("sys/bus/pci/devices/{NVME}/nvme/nvme0/nvme0n1/nvme0n1p1/holders/dm-0"),
        "sys/devices/virtual/block/dm-0",
    );
    write(
        &t,
        "proc/self/mountinfo",
        "22 1 253:0 / / rw,relatime - ext4 /dev/mapper/pve-root rw\n",
    );
    refused(
        &t,
        100,
        &[
            "/dev/nvme0n1p1 is held by dm-0 (pve-root)",
            "/dev/nvme0n1p1 → dm-0 (pve-root) is mounted at / (ext4)",
        ],
    );
}

#[test]
fn a_zfs_pool_member_refuses() {
    let t = T::new();
    nvme_disk(&t.sim);
    t.sim.add_sys_file("sys/module/zfs/version", "2.2.6\n");
    write(
        &t,
        "sim/zpool-status",
        "  pool: rpool\n state: ONLINE\nconfig:\n\n\tNAME                STATE\n\trpool               ONLINE\n\t  /dev/nvme0n1p1    ONLINE  0 0 0\n",
    );
    refused(&t, 100, &["/dev/nvme0n1p1 is in ZFS pool rpool"]);
}

#[test]
fn zfs_that_cannot_be_asked_is_a_warning_not_silence() {
    let t = T::new();
    nvme_disk(&t.sim);
    t.sim.add_sys_file("sys/module/zfs/version", "2.2.6\n");
    let p = lifecycle::plan_vm(&t.ctx_dry(true), 100).unwrap();
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("ZFS pool members could not be checked")),
        "{:?}",
        p.warnings
    );
}

#[test]
fn a_process_with_the_block_node_open_is_storage_and_named_with_its_unit() {
    let t = T::new();
    nvme_disk(&t.sim);
    t.sim.hold(
        4242,
        "dd",
        "/system.slice/backup.service",
        "/dev/nvme0n1",
        Some((259, 0)),
        true,
    );
    refused(
        &t,
        100,
        &[
            "/dev/nvme0n1 is open by pid 4242 (dd) in backup.service",
            "storage the host uses is never taken",
        ],
    );
    // The NVMe's controller node held by nvme-cli is a process use, not storage.
    let t = T::new();
    nvme_disk(&t.sim);
    t.sim.hold(
        77,
        "nvme",
        "/user.slice/user-0.slice/session-2.scope",
        "/dev/nvme0",
        Some((244, 0)),
        false,
    );
    let msg = refused(
        &t,
        100,
        &[
            "/dev/nvme0 is open by pid 77 (nvme)",
            "stop pid 77 (nvme) first",
        ],
    );
    assert!(!msg.contains("storage"), "{msg}");
}

#[test]
fn the_nic_with_the_default_route_refuses_directly_or_through_its_bridge() {
    let t = T::new();
    eth0(&t.sim);
    write(
        &t,
        "proc/net/route",
        &format!("{ROUTE_HEAD}eth0\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\neth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"),
    );
    t.sim.set_ipv4_addrs(&[("eth0", "10.0.2.15", 24)]);
    refused(
        &t,
        100,
        &[
            "hostpci1 0000:04:00.0: eth0 carries the default route (via 10.0.2.2)",
            "eth0 has the host address 10.0.2.15/24",
            "move the host's addresses",
        ],
    );

    // A Proxmox bridge: the port has nothing, vmbr0 has the address and the route.
    let t = T::new();
    eth0(&t.sim);
    t.sim
        .add_sys_link("sys/class/net/vmbr0", "sys/devices/virtual/net/vmbr0");
    t.sim.add_sys_link(
        &format!("sys/bus/pci/devices/{VNET}/virtio0/net/eth0/master"),
        "sys/devices/virtual/net/vmbr0",
    );
    write(
        &t,
        "proc/net/route",
        &format!("{ROUTE_HEAD}vmbr0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"),
    );
    write(
        &t,
        "proc/net/if_inet6",
        "20010db8000000000000000000000010 05 40 00 80 vmbr0\nfe800000000000000000000000000001 05 40 20 80 vmbr0\n",
    );
    refused(
        &t,
        100,
        &[
            "eth0 (through vmbr0) carries the default route (via 192.168.1.1)",
            "eth0 (through vmbr0) has the host address 2001:db8::10/64",
        ],
    );
}

#[test]
fn an_ipv6_default_route_and_a_corosync_link_refuse() {
    let t = T::new();
    eth0(&t.sim);
    write(
        &t,
        "proc/net/ipv6_route",
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0\n",
    );
    refused(&t, 100, &["eth0 carries the default route (via IPv6)"]);

    let t = T::new();
    eth0(&t.sim);
    t.sim.set_ipv4_addrs(&[("eth0", "10.10.10.1", 24)]);
    write(
        &t,
        "etc/pve/corosync.conf",
        "nodelist {\n  node {\n    name: pve1\n    nodeid: 1\n    ring0_addr: 10.10.10.1\n  }\n  node {\n    name: pve2\n    ring0_addr: 10.10.10.2\n  }\n}\n",
    );
    refused(
        &t,
        100,
        &["eth0 carries corosync link 10.10.10.1 (taking it breaks the cluster's quorum)"],
    );
}

#[test]
fn a_nic_without_addresses_or_routes_is_free() {
    let t = T::new();
    eth0(&t.sim);
    write(&t, "proc/net/route", ROUTE_HEAD);
    lifecycle::pre_start(&t.ctx(), 100).unwrap();
    lifecycle::post_stop(&t.ctx(), 100, true).unwrap();
}

#[test]
fn the_console_gpu_with_its_card_open_refuses_before_the_handoff() {
    let t = T::new();
    t.sim
        .add_child(VGA, "bochs-drm", "drm/card0", "drm", Some("226:0"));
    t.sim.hold(
        777,
        "Xorg",
        "/user.slice/user-0.slice/session-1.scope",
        "/dev/dri/card0",
        Some((226, 0)),
        false,
    );
    let before_units = t.sim.snapshot().active_units;
    refused(
        &t,
        102,
        &[
            "hostpci0 0000:01:00.0: /dev/dri/card0 is open by pid 777 (Xorg)",
            "stop pid 777 (Xorg) first",
        ],
    );
    assert!(t.sim.fbcon_bound());
    assert_eq!(t.sim.snapshot().active_units, before_units);
}

#[test]
fn a_holder_in_the_display_manager_the_handoff_stops_is_released_by_the_plan() {
    let t = T::new();
    t.sim.add_unit("display-manager.service", true);
    let dir = t.sim.root_dir().join("etc/systemd/system");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(
        "/lib/systemd/system/gdm.service",
        dir.join("display-manager.service"),
    )
    .unwrap();
    t.sim
        .add_child(VGA, "bochs-drm", "drm/card0", "drm", Some("226:0"));
    t.sim.hold(
        900,
        "gdm-x-session",
        "/system.slice/gdm.service",
        "/dev/dri/card0",
        Some((226, 0)),
        false,
    );
    let p = lifecycle::plan_vm(&t.ctx_dry(true), 102).unwrap();
    assert!(p.refusals.is_empty(), "{:?}", p.refusals);
    assert!(p
        .steps
        .iter()
        .any(|s| matches!(s, crate::engine::plan::Step::AwaitFree { .. })));
    lifecycle::pre_start(&t.ctx(), 102).unwrap();
    assert_eq!(t.sim.driver_of(VGA).as_deref(), Some("vfio-pci"));
}

#[test]
fn a_running_vm_without_the_hookscript_holds_its_device() {
    // Its reservation names its QEMU pid; its QEMU holds /dev/vfio/2.
    let t = T::new();
    t.sim.set_driver(NVME, Some("vfio-pci"));
    t.sim.set_driver_override(NVME, Some("vfio-pci"));
    t.sim.add_sys_file("sys/class/vfio/2/dev", "243:0\n");
    t.sim.hold(
        5555,
        "kvm",
        "/qemu.slice/105.scope",
        "/dev/vfio/2",
        Some((243, 0)),
        false,
    );
    write(
        &t,
        "run/qemu-server/pci-id-reservations",
        "0000:02:00.0 105 pid:5555\n",
    );
    refused(
        &t,
        100,
        &[
            "/dev/vfio/2 is open by pid 5555 (kvm) of VM 105",
            "reserved by running VM 105 (QEMU pid 5555)",
            "stop the other VM first",
        ],
    );
    // cleanup of a stale state naming the device leaves it alone while VM 105 runs.
}

#[test]
fn a_reservation_whose_qemu_is_gone_is_not_a_user() {
    let t = T::new();
    write(
        &t,
        "run/qemu-server/pci-id-reservations",
        "0000:02:00.0 105 pid:999999\n",
    );
    let p = lifecycle::plan_vm(&t.ctx_dry(true), 100).unwrap();
    assert!(p.refusals.is_empty(), "{:?}", p.refusals);
}

#[test]
fn a_vfio_device_fd_the_kernel_does_not_attribute_counts_as_a_holder() {
    // 6.1 and 6.12 show no vfio-device-syspath: a process with a device fd and no group fd
    // could hold any vfio device.
    let t = T::new();
    t.sim.set_driver(NVME, Some("vfio-pci"));
    t.sim
        .hold_vfio_fd(321, "spdk", "/system.slice/spdk.service", None);
    refused(
        &t,
        100,
        &["a vfio device fd (the kernel does not say which device) is open by pid 321 (spdk)"],
    );
    // With a group fd of another group it is that group's holder, not ours.
    let t = T::new();
    t.sim.set_driver(NVME, Some("vfio-pci"));
    t.sim
        .hold_vfio_fd(321, "spdk", "/system.slice/spdk.service", None);
    t.sim.hold(
        321,
        "spdk",
        "/system.slice/spdk.service",
        "/dev/vfio/9",
        None,
        false,
    );
    let p = lifecycle::plan_vm(&t.ctx_dry(true), 100).unwrap();
    assert!(p.refusals.is_empty(), "{:?}", p.refusals);
}

fn short_phase(t: &mut T, phase: Duration) {
    t.cfg.timeouts.phase = phase;
}

#[test]
fn post_stop_never_resets_or_unbinds_a_held_function_and_cleanup_restores_later() {
    let mut t = T::new();
    short_phase(&mut t, Duration::from_secs(2));
    lifecycle::pre_start(&t.ctx(), 100).unwrap();
    let before_resets = t.sim.writes_to("/reset").len();
    // The group node has a number in sysfs, and the walk found the holder's fd by its path
    // (no stat, so no number): still the holder.
    t.sim.add_sys_file("sys/class/vfio/2/dev", "243:0\n");
    t.sim.hold(
        6000,
        "vfio-hold",
        "/user.slice/user-0.slice/session-4.scope",
        "/dev/vfio/2",
        None,
        false,
    );
    let start = Instant::now();
    let e = crate::engine::phase::pve(&t.ctx(), 100, "post-stop").unwrap_err();
    let took = start.elapsed();
    let msg = e.to_string();
    assert_eq!(e.exit_code(), 1, "{msg}");
    assert!(
        msg.contains("/dev/vfio/2 is open by pid 6000 (vfio-hold)"),
        "{msg}"
    );
    assert!(msg.contains("nothing was reset or unbound"), "{msg}");
    assert!(msg.contains("state kept"), "{msg}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(t.has_state(100));
    assert_eq!(t.sim.driver_of(NVME).as_deref(), Some("vfio-pci"));
    assert_eq!(t.sim.writes_to("/reset").len(), before_resets);
    assert!(t.sim.writes_to("vfio-pci/unbind").is_empty());
    // The functions were resumed to D0 for the reset while the guard waited: nothing was
    // reset, so they are given back to runtime PM as vfio-pci had them.
    assert!(
        !t.sim.writes_to("power/control").is_empty(),
        "the hold ran beside the guard's wait"
    );
    for b in [NVME, VNET] {
        assert_eq!(
            t.sim.snapshot().device(b).unwrap().power_control,
            "auto",
            "{b}"
        );
    }
    // cleanup while held: the same refusal.
    assert!(crate::engine::phase::cleanup(&t.ctx(), None).is_err());
    assert!(t.has_state(100));
    // The holder exits: cleanup gives everything back.
    t.sim.exit_process(6000);
    crate::engine::phase::cleanup(&t.ctx(), None).unwrap();
    assert!(!t.has_state(100));
    assert_eq!(t.sim.driver_of(NVME).as_deref(), Some("nvme"));
}

#[test]
fn post_stop_waits_for_a_qemu_that_is_still_exiting() {
    let t = T::new();
    lifecycle::pre_start(&t.ctx(), 100).unwrap();
    t.sim.hold(
        7000,
        "kvm",
        "/qemu.slice/100.scope",
        "/dev/vfio/2",
        None,
        false,
    );
    let sim = std::sync::Arc::clone(&t.sim);
    let resets_before = t.sim.writes_to("/reset").len();
    let h = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        // Nothing was reset or unbound while the VM's own QEMU still had its group open.
        let r = (
            sim.writes_to("/reset").len(),
            sim.writes_to("vfio-pci/unbind").len(),
        );
        sim.exit_process(7000);
        r
    });
    let start = Instant::now();
    crate::engine::phase::pve(&t.ctx(), 100, "post-stop").unwrap();
    let took = start.elapsed();
    let (resets, unbinds) = h.join().unwrap();
    assert_eq!(
        (resets, unbinds),
        (resets_before, 0),
        "reset or unbound under QEMU"
    );
    assert!(took >= Duration::from_millis(300), "did not wait: {took:?}");
    assert_eq!(t.sim.writes_to("/reset").len(), resets_before + 2);
    assert!(!t.has_state(100));
    assert_eq!(t.sim.driver_of(NVME).as_deref(), Some("nvme"));
}

#[test]
fn cleanup_verifies_a_function_already_back_on_its_driver_and_never_resets_it() {
    let t = T::new();
    lifecycle::pre_start(&t.ctx(), 100).unwrap();
    // A late bind finished after an earlier post-stop gave up: the virtio-net is back on
    // its host driver (and the host configures it again).
    t.sim.set_driver_override(VNET, None);
    t.sim.set_driver(VNET, Some("virtio-pci"));
    let resets_before = t.sim.writes_to("/reset");
    crate::engine::phase::cleanup(&t.ctx(), None).unwrap();
    let resets: Vec<String> = t
        .sim
        .writes_to("/reset")
        .into_iter()
        .skip(resets_before.len())
        .collect();
    assert!(
        !resets.iter().any(|w| w.contains(VNET)),
        "reset under its host driver: {resets:?}"
    );
    assert!(!t.has_state(100));
    assert_eq!(t.sim.driver_of(VNET).as_deref(), Some("virtio-pci"));
    assert_eq!(t.sim.driver_of(NVME).as_deref(), Some("nvme"));
}

#[test]
fn reset_refuses_a_device_in_use() {
    let t = T::new();
    nvme_disk(&t.sim);
    write(
        &t,
        "proc/self/mountinfo",
        "40 22 259:1 / /mnt rw - xfs /dev/nvme0n1p1 rw\n",
    );
    let writes = t.sim.write_count();
    let e = crate::cmd::reset::command(
        &t.ctx(),
        &[crate::pci::Bdf::parse(NVME).unwrap()],
        None,
        false,
    )
    .unwrap_err();
    assert_eq!(e.exit_code(), 1);
    assert!(
        e.to_string()
            .contains("/dev/nvme0n1p1 is mounted at /mnt (xfs)"),
        "{e}"
    );
    assert_eq!(t.sim.write_count(), writes);
}

#[test]
fn doctor_reports_the_refusal_in_pre_starts_words() {
    let t = T::new();
    nvme_disk(&t.sim);
    write(
        &t,
        "proc/self/mountinfo",
        "40 22 259:1 / /var/lib/vz rw - ext4 /dev/nvme0n1p1 rw\n",
    );
    let pctx = t.ctx_dry(true);
    let planner = |v| lifecycle::plan_vm(&pctx, v);
    let r = crate::cmd::doctor::run(&*t.sim, &t.cfg, Some(100), &planner).unwrap();
    let c: Vec<_> = r.checks.iter().filter(|c| c.id == "vm.in-use").collect();
    let p = lifecycle::plan_vm(&t.ctx_dry(true), 100).unwrap();
    assert_eq!(c.len(), 1, "one check for the one function");
    assert_eq!(c[0].message, p.refusals.join("; "));
    assert_eq!(c[0].status, crate::cmd::doctor::Status::Fail);
    assert!(c[0].fix.as_deref().unwrap().contains("never taken"));
}

fn container_holding_the_gpu(t: &T, ctid: u32) {
    t.sim
        .add_child(VGA, "bochs-drm", "drm/renderD128", "drm", Some("226:128"));
    t.sim.add_container(
        ctid,
        true,
        vec![OpenNode {
            pid: 4242,
            path: "/dev/dri/renderD128".into(),
            rdev: Some((226, 128)),
            block: false,
            vfio_syspath: None,
        }],
    );
}

#[test]
fn a_container_holding_the_gpu_refuses_and_names_the_option() {
    let t = T::new();
    container_holding_the_gpu(&t, 105);
    refused(
        &t,
        102,
        &[
            "/dev/dri/renderD128 is open by pid 4242 (ct-proc) in container 105",
            "release_containers = true under [vm.102]",
        ],
    );
    assert!(t.sim.container_running(105));
}

#[test]
fn release_containers_stops_the_holders_and_starts_them_after_post_stop() {
    let mut t = T::new();
    t.cfg.vm.insert(
        102,
        VmOptions {
            release_containers: Some(true),
            ..VmOptions::default()
        },
    );
    container_holding_the_gpu(&t, 105);
    let before = t.devices();
    lifecycle::pre_start(&t.ctx(), 102).unwrap();
    assert!(!t.sim.container_running(105));
    assert_eq!(t.sim.driver_of(VGA).as_deref(), Some("vfio-pci"));
    let st = crate::engine::state::load(t.sim.as_ref(), &crate::engine::state::VmKey::Pve(102))
        .unwrap()
        .unwrap();
    assert!(st
        .journal
        .contains(&crate::engine::plan::Step::StopContainer { ctid: 105 }));
    lifecycle::post_stop(&t.ctx(), 102, true).unwrap();
    assert!(t.sim.container_running(105));
    assert_eq!(t.devices(), before);
}

#[test]
fn release_containers_still_refuses_a_holder_outside_a_container() {
    let mut t = T::new();
    t.cfg.vm.insert(
        102,
        VmOptions {
            release_containers: Some(true),
            ..VmOptions::default()
        },
    );
    container_holding_the_gpu(&t, 105);
    t.sim.hold(
        31,
        "ollama",
        "/system.slice/ollama.service",
        "/dev/dri/renderD128",
        Some((226, 128)),
        false,
    );
    refused(&t, 102, &["pid 31 (ollama) in ollama.service"]);
    assert!(t.sim.container_running(105), "nothing stopped");
}

#[test]
fn a_failed_start_after_stopping_containers_starts_them_again() {
    let mut t = T::new();
    t.cfg.vm.insert(
        102,
        VmOptions {
            release_containers: Some(true),
            ..VmOptions::default()
        },
    );
    container_holding_the_gpu(&t, 105);
    t.sim.set_probe_error(VGA, "vfio-pci", Some(libc::EIO));
    let e = lifecycle::pre_start(&t.ctx(), 102).unwrap_err();
    assert_eq!(e.exit_code(), 1, "{e}");
    assert!(
        t.sim.container_running(105),
        "rollback restarts container 105"
    );
    assert_eq!(t.sim.driver_of(VGA).as_deref(), Some("bochs-drm"));
}

#[test]
fn a_libvirt_domain_is_refused_the_same_way() {
    let t = T::new();
    nvme_disk(&t.sim);
    write(
        &t,
        "proc/swaps",
        "Filename Type Size Used Priority\n/dev/nvme0n1p1 partition 1 0 -2\n",
    );
    let key = crate::engine::state::VmKey::Libvirt(crate::engine::state::Domain {
        uuid: "4dea22b3-1d52-d8f3-2516-782e98ab3fa0".into(),
        name: "web".into(),
    });
    let ctx = t.ctx();
    let p = lifecycle::plan_bdfs(
        &ctx,
        &key,
        &[(crate::pci::Bdf::parse(NVME).unwrap(), "hostdev 0".into())],
    )
    .unwrap();
    let e = lifecycle::prepare(&ctx, &key, p, &|| unreachable!()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("/dev/nvme0n1p1 is active swap"), "{msg}");
    assert!(msg.contains("<hostdev>"), "{msg}");
    assert_eq!(t.sim.driver_of(NVME).as_deref(), Some("nvme"));
}

#[test]
fn a_udev_worker_probing_the_disk_is_waited_for_not_refused() {
    // The namespace just came back to nvme; udev's worker has it open for a moment.
    let t = T::new();
    nvme_disk(&t.sim);
    t.sim.hold(
        2953,
        "(udev-worker)",
        "/system.slice/systemd-udevd.service",
        "/dev/nvme0n1",
        Some((259, 0)),
        true,
    );
    let sim = std::sync::Arc::clone(&t.sim);
    let h = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        sim.exit_process(2953);
    });
    crate::engine::phase::pve(&t.ctx(), 100, "pre-start").unwrap();
    h.join().unwrap();
    assert_eq!(t.sim.driver_of(NVME).as_deref(), Some("vfio-pci"));
    // A mount is not waited for: refused at once.
    let t = T::new();
    nvme_disk(&t.sim);
    write(
        &t,
        "proc/self/mountinfo",
        "40 22 259:1 / /srv rw - ext4 /dev/nvme0n1p1 rw\n",
    );
    let start = Instant::now();
    assert!(lifecycle::pre_start(&t.ctx(), 100).is_err());
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
}
