//! Behaviour tests against the simulated kernel: the full cycle, rollback, idempotence,
//! ownership, crash recovery, generated fault injection, the reset ladder and the console
//! handoff.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Timeouts};
use crate::error::Error;
use crate::host::sim::{Fault, FaultPoint, ResetBehaviour, SimDevice, SimHost, Snapshot};
use crate::host::Host;
use crate::lifecycle::{self, Ctx};
use crate::log::Logger;
use crate::pci::Bdf;
use crate::reset::{self, Mode, Verdict};

const NVME: &str = "0000:02:00.0";
const NVME2: &str = "0000:03:00.0";
const VNET: &str = "0000:04:00.0";
const VGA: &str = "0000:01:00.0";
const AUDIO: &str = "0000:01:00.1";

fn bdf(s: &str) -> Bdf {
    Bdf::parse(s).unwrap()
}

struct T {
    sim: Arc<SimHost>,
    cfg: Config,
    log: Logger,
}

impl T {
    fn new() -> T {
        T::with(SimHost::gpu_host())
    }
    fn with(sim: SimHost) -> T {
        let sim = Arc::new(sim);
        for (vm, body) in [
            (100, "hostpci0: 02:00.0\nhostpci1: 04:00.0,pcie=1\n"),
            (101, "hostpci0: 03:00.0;04:00.0\n"),
            (102, "hostpci0: 01:00,x-vga=1\n"),
            (103, "hostpci0: 03:00.0,driver=keep\nhostpci1: 05:00.0\n"),
        ] {
            let dir = sim.root_dir().join("etc/pve/qemu-server");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join(format!("{vm}.conf")),
                format!("machine: q35\n{body}"),
            )
            .unwrap();
        }
        let cfg = Config {
            timeouts: Timeouts {
                step: Duration::from_millis(1500),
                driver_bind: Duration::from_secs(3),
                flr: Duration::from_millis(1500),
                bus_reset: Duration::from_secs(3),
                rescan: Duration::from_secs(3),
                module: Duration::from_secs(3),
                unit: Duration::from_secs(3),
                lock: Duration::from_millis(300),
                phase: Duration::from_secs(20),
                hook: Duration::from_secs(5),
            },
            ..Config::default()
        };
        T {
            sim,
            cfg,
            log: Logger::new(-3, false), // silent: tests assert on results
        }
    }
    fn ctx(&self) -> Ctx<'_> {
        self.ctx_dry(false)
    }
    fn ctx_dry(&self, dry_run: bool) -> Ctx<'_> {
        Ctx {
            host: Arc::clone(&self.sim) as Arc<dyn Host>,
            cfg: &self.cfg,
            log: &self.log,
            dry_run,
            node: "pve1".into(),
        }
    }
    fn devices(&self) -> Snapshot {
        let mut s = self.sim.snapshot();
        // vfio-pci staying loaded after a cycle is intended (other VMs may use it).
        s.modules.remove("vfio_pci");
        s.modules.remove("vfio-pci");
        s
    }
    fn has_state(&self, vm: u32) -> bool {
        self.sim.exists(&format!("run/pt-hook/vm-{vm}.json"))
    }
}

#[test]
fn full_cycle_moves_devices_to_vfio_and_back_exactly() {
    let t = T::new();
    let before = t.devices();
    lifecycle::pre_start(&t.ctx(), 100).unwrap();
    for b in [NVME, VNET] {
        assert_eq!(t.sim.driver_of(b).as_deref(), Some("vfio-pci"), "{b}");
        assert_eq!(
            t.sim
                .snapshot()
                .device(b)
                .unwrap()
                .driver_override
                .as_deref(),
            Some("vfio-pci")
        );
    }
    assert!(t.has_state(100));
    lifecycle::post_stop(&t.ctx(), 100, true).unwrap();
    assert_eq!(t.devices(), before);
    assert!(!t.has_state(100));
}

#[test]
fn vfio_unavailable_refuses_start_and_changes_nothing() {
    let t = T::new();
    t.sim.set_module_available("vfio_pci", false);
    let before = t.devices();
    let e = lifecycle::pre_start(&t.ctx(), 100).unwrap_err();
    assert_eq!(e.exit_code(), 1);
    assert!(e.to_string().contains("vfio_pci"), "{e}");
    assert_eq!(t.devices(), before);
    assert!(!t.has_state(100));
}

#[test]
fn double_pre_start_keeps_the_original_driver() {
    let t = T::new();
    let before = t.devices();
    lifecycle::pre_start(&t.ctx(), 100).unwrap();
    lifecycle::pre_start(&t.ctx(), 100).unwrap();
    let st = crate::state::load(&*t.sim, 100).unwrap().unwrap();
    assert!(st
        .devices
        .iter()
        .all(|d| d.original.driver.as_deref() != Some("vfio-pci")));
    lifecycle::post_stop(&t.ctx(), 100, true).unwrap();
    assert_eq!(t.devices(), before);
}

#[test]
fn post_stop_without_state_changes_nothing() {
    let t = T::new();
    lifecycle::post_stop(&t.ctx(), 100, true).unwrap();
    assert_eq!(t.sim.write_count(), 0);
}

#[test]
fn dry_run_writes_nothing() {
    let t = T::new();
    lifecycle::pre_start(&t.ctx_dry(true), 102).unwrap();
    assert_eq!(t.sim.write_count(), 0);
    // Only queries ran (systemctl is-active): nothing that changes the host.
    assert!(
        t.sim
            .ops()
            .iter()
            .all(|o| o.path == "systemctl" && o.data.starts_with("is-active")),
        "{:?}",
        t.sim.ops()
    );
}

#[test]
fn a_device_owned_by_another_vm_is_refused_naming_it() {
    let t = T::new();
    lifecycle::pre_start(&t.ctx(), 100).unwrap();
    let mid = t.devices();
    let e = lifecycle::pre_start(&t.ctx(), 101).unwrap_err();
    assert_eq!(e.exit_code(), 1);
    assert!(e.to_string().contains("VM 100"), "{e}");
    assert_eq!(
        t.devices(),
        mid,
        "VM 101's other device must stay untouched"
    );
}

#[test]
fn driver_keep_is_left_alone() {
    let t = T::new();
    lifecycle::pre_start(&t.ctx(), 103).unwrap();
    assert_eq!(t.sim.driver_of(NVME2).as_deref(), Some("nvme"));
    assert_eq!(t.sim.driver_of("0000:05:00.0").as_deref(), Some("vfio-pci"));
}

#[test]
fn bad_config_is_exit_2_before_touching_anything() {
    let t = T::new();
    let dir = t.sim.root_dir().join("etc/pve/qemu-server");
    std::fs::write(dir.join("110.conf"), "hostpci0: zz:00.0\n").unwrap();
    std::fs::write(dir.join("111.conf"), "hostpci0: 0000:09:00.0\n").unwrap();
    std::fs::write(dir.join("112.conf"), "hostpci0: 00:1c.0\n").unwrap();
    for vm in [110, 111, 112] {
        let e = lifecycle::pre_start(&t.ctx(), vm).unwrap_err();
        assert_eq!(e.exit_code(), 2, "VM {vm}: {e}");
        assert!(e.to_string().contains("hostpci0"), "{e}");
    }
    assert_eq!(t.sim.write_count(), 0);
}

/// Kill the pre-start at every step boundary; cleanup, and separately the next pre-start
/// followed by post-stop, put the host back exactly.
#[test]
fn crash_at_every_step_boundary_is_recoverable() {
    let t0 = T::new();
    let steps = lifecycle::plan_vm(&t0.ctx_dry(true), 102)
        .unwrap()
        .steps
        .len();
    assert!(steps >= 6);
    for n in 0..(2 * steps) {
        for via_cleanup in [true, false] {
            let t = T::new();
            let before = t.devices();
            lifecycle::CRASH_AT.with(|c| c.set(Some(n)));
            let r = lifecycle::pre_start(&t.ctx(), 102);
            lifecycle::CRASH_AT.with(|c| c.set(None));
            assert!(
                matches!(&r, Err(Error::Failed(m)) if m == lifecycle::SIMULATED_CRASH),
                "n={n}: {r:?}"
            );
            assert!(t.has_state(102), "n={n}: the state must exist at the crash");
            if via_cleanup {
                lifecycle::cleanup(&t.ctx(), None).unwrap();
            } else {
                lifecycle::pre_start(&t.ctx(), 102).unwrap();
                lifecycle::post_stop(&t.ctx(), 102, true).unwrap();
            }
            assert_eq!(t.devices(), before, "n={n} via_cleanup={via_cleanup}");
            assert!(!t.has_state(102));
        }
    }
}

/// Fault injection generated from a clean run: every write pre-start makes fails in turn
/// with each errno (and hangs); the host must come back exactly, exit 1, with a message
/// naming the device or file and the errno.
#[test]
fn every_pre_start_write_fault_rolls_back() {
    let clean = T::new();
    lifecycle::pre_start(&clean.ctx(), 102).unwrap();
    let writes: Vec<String> = clean
        .sim
        .ops()
        .iter()
        .filter(|o| o.kind == crate::host::sim::OpKind::Write)
        .map(|o| o.path.clone())
        .collect();
    assert!(writes.len() >= 6, "{writes:?}");
    let faults: Vec<(Fault, &str)> = vec![
        (Fault::Errno(libc::ENODEV), "ENODEV"),
        (Fault::Errno(libc::EBUSY), "EBUSY"),
        (Fault::Errno(libc::EINVAL), "EINVAL"),
        (Fault::Errno(libc::EIO), "EIO"),
        (Fault::Errno(libc::EAGAIN), "EAGAIN"),
        (Fault::Hang, "ETIMEDOUT"),
    ];
    let mut cases = 0;
    for (i, path) in writes.iter().enumerate() {
        for (f, name) in &faults {
            let t = T::new();
            t.sim.set_hang_limit(Duration::from_millis(2500));
            let before = t.devices();
            // The nth write to this path in the clean run.
            let nth = writes[..=i].iter().filter(|p| *p == path).count();
            t.sim.inject(FaultPoint::write(path, f.clone()).nth(nth));
            let e = lifecycle::pre_start(&t.ctx(), 102).unwrap_err();
            assert_eq!(e.exit_code(), 1, "write {i} {path} {name}: {e}");
            let msg = e.to_string();
            assert!(msg.contains(name), "write {i} {path}: {msg}");
            t.sim.release_hangs();
            assert_eq!(t.devices(), before, "write {i} {path} {name}: {msg}");
            assert!(!t.has_state(102), "write {i} {path} {name}");
            cases += 1;
        }
    }
    eprintln!("fault injection: {cases} pre-start cases, all rolled back");
}

#[test]
fn console_handoff_unbinds_fbcon_and_restores_it() {
    let t = T::new();
    assert!(t.sim.fbcon_bound());
    let before = t.devices();
    lifecycle::pre_start(&t.ctx(), 102).unwrap();
    assert!(!t.sim.fbcon_bound());
    assert_eq!(t.sim.driver_of(VGA).as_deref(), Some("vfio-pci"));
    assert_eq!(t.sim.driver_of(AUDIO).as_deref(), Some("vfio-pci"));
    lifecycle::post_stop(&t.ctx(), 102, true).unwrap();
    assert!(t.sim.fbcon_bound());
    assert_eq!(t.devices(), before);
}

#[test]
fn vtcon_that_ignores_the_write_fails_the_start_and_rolls_back() {
    let t = T::new();
    let before = t.devices();
    t.sim
        .inject(FaultPoint::write_suffix("/bind", Fault::SilentNoop).nth(1));
    let e = lifecycle::pre_start(&t.ctx(), 102).unwrap_err();
    assert!(e.to_string().contains("reads"), "{e}");
    assert_eq!(t.devices(), before);
}

fn ctx_reset(t: &T, bdfs: &[&str]) -> Vec<reset::SlotReport> {
    let list: Vec<Bdf> = bdfs.iter().map(|b| bdf(b)).collect();
    reset::reset_many(&t.ctx(), &list, None, Mode::Manual, &list, &[])
}

#[test]
fn reset_of_a_bound_nvme_keeps_it_bound() {
    let t = T::new();
    let r = ctx_reset(&t, &[NVME]);
    assert_eq!(r[0].verdict, Verdict::Reset, "{r:?}");
    assert_eq!(t.sim.driver_of(NVME).as_deref(), Some("nvme"));
}

#[test]
fn wedged_after_flr_escalates_to_the_bus_and_recovers() {
    let t = T::new();
    t.sim
        .set_reset_behaviour(NVME, "flr", ResetBehaviour::Wedge);
    let r = ctx_reset(&t, &[NVME]);
    assert_eq!(r[0].verdict, Verdict::Reset, "{r:?}");
    assert_eq!(r[0].rungs[0].rung, "function-reset");
    assert!(!r[0].rungs[0].ok);
    assert_eq!(r[0].rungs[1].rung, "bus-reset");
    assert!(!t.sim.is_wedged(NVME));
}

#[test]
fn narrower_link_is_detected() {
    let t = T::new();
    t.sim
        .set_reset_behaviour(NVME, "flr", ResetBehaviour::NarrowLink(2));
    let r = ctx_reset(&t, &[NVME]);
    assert!(r[0].rungs[0].detail.contains("x2"), "{r:?}");
    assert_eq!(
        t.sim.link_width(NVME),
        Some(4),
        "the bus reset retrains the link"
    );
}

#[test]
fn unrecoverable_device_is_exit_3() {
    let t = T::new();
    t.sim
        .set_reset_behaviour(NVME, "flr", ResetBehaviour::Wedge);
    t.sim
        .set_subordinate_error(bdf("0000:00:1c.1"), Some(libc::EIO));
    t.sim
        .inject(FaultPoint::write_suffix("/rescan", Fault::Errno(libc::EIO)));
    let list = vec![bdf(NVME)];
    let e = reset::command(&t.ctx(), &list, None, true).unwrap_err();
    assert_eq!(e.exit_code(), 3, "{e}");
    assert!(e.to_string().contains("reboot"), "{e}");
}

#[test]
fn reset_that_never_returns_is_bounded() {
    let t = T::new();
    t.sim.set_hang_limit(Duration::from_secs(3));
    t.sim
        .set_reset_behaviour(NVME2, "flr", ResetBehaviour::Hang);
    let start = std::time::Instant::now();
    let r = ctx_reset(&t, &[NVME2]);
    t.sim.release_hangs();
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    assert!(r[0].rungs[0].detail.contains("ETIMEDOUT"), "{r:?}");
}

#[test]
fn audio_function_without_method_is_refused_while_the_console_uses_the_slot() {
    let t = T::new();
    let r = ctx_reset(&t, &[AUDIO]);
    assert_eq!(r[0].verdict, Verdict::Refused, "{r:?}");
    assert!(r[0].message.contains("console"), "{r:?}");
    assert_eq!(t.sim.driver_of(AUDIO).as_deref(), Some("snd_hda_intel"));
    assert_eq!(t.sim.driver_of(VGA).as_deref(), Some("bochs-drm"));
}

#[test]
fn forced_unsupported_method_is_reported_not_guessed() {
    let t = T::new();
    let list = vec![bdf(NVME)];
    let r = reset::reset_many(&t.ctx(), &list, Some("pm"), Mode::Manual, &list, &[]);
    assert!(r[0].rungs[0].detail.contains("EINVAL"), "{r:?}");
    assert_eq!(
        t.sim.snapshot().device(NVME).unwrap().reset_method,
        "flr bus"
    );
}

/// Blackwell: FLR leaves config space at 0xffffffff. The profile removes FLR before the VM
/// starts, so post-stop resets through the slot and the card comes back.
#[test]
fn blackwell_profile_avoids_flr_and_recovers() {
    let sim = SimHost::gpu_host();
    sim.add_driver(crate::host::sim::SimDriver::new("nvidia").id(0x10de, 0x2b85));
    sim.add_device(
        SimDevice::new("0000:06:00.0", 0x10de, 0x2b85, 0x030000)
            .parent("0000:00:1c.2")
            .group(30)
            .reset_methods(&["flr", "bus"])
            .reset_behaviour("flr", ResetBehaviour::Wedge)
            .link("32.0 GT/s PCIe", 16)
            .d3cold(Some(true))
            .driver("nvidia"),
    );
    let t = T::with(sim);
    std::fs::write(
        t.sim.root_dir().join("etc/pve/qemu-server/120.conf"),
        "hostpci0: 06:00.0\n",
    )
    .unwrap();
    let p = lifecycle::plan_vm(&t.ctx_dry(true), 120).unwrap();
    assert_eq!(p.devices[0].quirk.as_deref(), Some("nvidia-blackwell"));
    assert_eq!(p.devices[0].reset_method.as_deref(), Some("bus"));
    lifecycle::pre_start(&t.ctx(), 120).unwrap();
    let s = t.sim.snapshot();
    assert_eq!(s.device("0000:06:00.0").unwrap().reset_method, "bus");
    assert_eq!(
        s.device("0000:06:00.0").unwrap().d3cold_allowed,
        Some(false)
    );
    lifecycle::post_stop(&t.ctx(), 120, true).unwrap();
    assert!(!t.sim.is_wedged("0000:06:00.0"));
    assert_eq!(
        t.sim
            .snapshot()
            .device("0000:06:00.0")
            .unwrap()
            .reset_method,
        "flr bus"
    );
}

/// The same card without the profile's help: FLR wedges it and nothing brings it back; the
/// post-stop leaves it on vfio-pci and says the host needs a reboot.
#[test]
fn wedged_card_stays_on_vfio_and_post_stop_exits_3() {
    let t = T::new();
    lifecycle::pre_start(&t.ctx(), 100).unwrap();
    t.sim
        .set_reset_behaviour(NVME, "flr", ResetBehaviour::Wedge);
    t.sim
        .set_reset_behaviour(NVME, "bus", ResetBehaviour::Wedge);
    t.sim
        .set_subordinate_error(bdf("0000:00:1c.1"), Some(libc::EIO));
    t.sim
        .inject(FaultPoint::write_suffix("/rescan", Fault::Errno(libc::EIO)));
    let e = lifecycle::post_stop(&t.ctx(), 100, true).unwrap_err();
    assert_eq!(e.exit_code(), 3, "{e}");
    assert_eq!(t.sim.driver_of(NVME).as_deref(), Some("vfio-pci"));
    assert_eq!(t.sim.driver_of(VNET).as_deref(), Some("virtio-pci"));
    assert!(t.has_state(100), "the unrecovered device keeps its state");
}

#[test]
fn display_manager_is_stopped_and_restarted_only_if_it_was_running() {
    let t = T::new();
    t.sim.add_unit("display-manager.service", true);
    t.sim.add_unit("nvidia-persistenced.service", false);
    let before = t.devices();
    lifecycle::pre_start(&t.ctx(), 102).unwrap();
    assert!(!t.sim.unit_active("display-manager.service"));
    lifecycle::post_stop(&t.ctx(), 102, true).unwrap();
    assert!(t.sim.unit_active("display-manager.service"));
    assert!(!t.sim.unit_active("nvidia-persistenced.service"));
    assert_eq!(t.devices(), before);
}

#[test]
fn a_unit_that_will_not_stop_aborts_the_start_and_keeps_the_console() {
    use crate::host::sim::UnitOutcome;
    let t = T::new();
    t.sim.add_unit("display-manager.service", true);
    t.sim
        .set_unit_outcome("display-manager.service", "stop", UnitOutcome::Hang);
    let before = t.devices();
    let e = lifecycle::pre_start(&t.ctx(), 102).unwrap_err();
    assert_eq!(e.exit_code(), 1, "{e}");
    assert!(e.to_string().contains("display-manager"), "{e}");
    assert!(t.sim.fbcon_bound());
    assert_eq!(t.devices(), before);
}

#[test]
fn ebusy_from_flr_escalates_and_eagain_on_the_bridge_is_bounded() {
    let t = T::new();
    t.sim
        .set_reset_behaviour(NVME, "flr", ResetBehaviour::Errno(libc::EBUSY));
    let r = ctx_reset(&t, &[NVME]);
    assert!(r[0].rungs[0].detail.contains("EBUSY"), "{r:?}");
    assert_eq!(r[0].verdict, Verdict::Reset, "bus reset after EBUSY: {r:?}");

    let t = T::new();
    t.sim
        .set_reset_behaviour(NVME, "flr", ResetBehaviour::Enotty);
    t.sim
        .set_reset_behaviour(NVME, "bus", ResetBehaviour::Enotty);
    t.sim
        .set_subordinate_error(bdf("0000:00:1c.1"), Some(libc::EAGAIN));
    let r = ctx_reset(&t, &[NVME]);
    assert_eq!(r[0].verdict, Verdict::Refused, "{r:?}");
    assert!(r[0].message.contains("EAGAIN"), "{r:?}");
    assert_eq!(t.sim.driver_of(NVME).as_deref(), Some("nvme"));
}

#[test]
fn three_devices_on_three_buses_reset_in_parallel() {
    let t = T::new();
    for b in [NVME, NVME2, VNET] {
        t.sim
            .set_reset_behaviour(b, "flr", ResetBehaviour::Slow(Duration::from_millis(400)));
    }
    let start = std::time::Instant::now();
    let r = ctx_reset(&t, &[NVME, NVME2, VNET]);
    assert!(r.iter().all(|r| r.verdict == Verdict::Reset), "{r:?}");
    // Serially this is at least 1.2 s of simulated kernel time.
    assert!(
        start.elapsed() < Duration::from_millis(1150),
        "{:?}",
        start.elapsed()
    );
}
