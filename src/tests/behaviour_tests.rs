//! Behaviour tests against the simulated kernel: the full cycle, rollback, idempotence,
//! ownership, crash recovery, generated fault injection, the reset ladder and the console
//! handoff.

use std::time::Duration;

use crate::engine::lifecycle;
use crate::engine::reset::{self, Mode, Verdict};
use crate::error::Error;
use crate::host::sim::{Fault, FaultPoint, ResetBehaviour, SimDevice, SimHost};
use crate::pci::Bdf;
use crate::tests::test_support::T;

const NVME: &str = "0000:02:00.0";
const NVME2: &str = "0000:03:00.0";
const VNET: &str = "0000:04:00.0";
const VGA: &str = "0000:01:00.0";
const AUDIO: &str = "0000:01:00.1";

fn bdf(s: &str) -> Bdf {
    Bdf::parse(s).unwrap()
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

fn power_of(t: &T, b: &str) -> String {
    t.sim.snapshot().device(b).unwrap().power_control.clone()
}

/// vfio-pci allows runtime PM (power/control "auto"); post-stop holds the functions at D0
/// ("on") from before the reset until vfio-pci's unbind, which leaves "on" as the host had it.
#[test]
fn post_stop_holds_the_functions_at_d0_through_the_reset() {
    let t = T::new();
    lifecycle::pre_start(&t.ctx(), 100).unwrap();
    assert_eq!(
        power_of(&t, NVME),
        "auto",
        "vfio-pci lets it runtime-suspend"
    );
    t.sim.clear_ops();
    lifecycle::post_stop(&t.ctx(), 100, true).unwrap();
    let ops: Vec<(String, String)> = t.sim.ops().into_iter().map(|o| (o.path, o.data)).collect();
    for b in [NVME, VNET] {
        let at = |suffix: &str, data: Option<&str>| {
            ops.iter()
                .position(|(p, d)| {
                    p.ends_with(&format!("{b}/{suffix}")) && data.is_none_or(|x| d.trim() == x)
                })
                .unwrap_or_else(|| panic!("{b}: no {suffix} write in {ops:?}"))
        };
        let hold = at("power/control", Some("on"));
        let reset = at("reset", None);
        let unbind = ops
            .iter()
            .position(|(p, d)| p.ends_with("vfio-pci/unbind") && d.trim() == b)
            .expect("unbind");
        assert!(hold < reset && reset < unbind, "{b}: {ops:?}");
        assert!(
            !ops.iter()
                .any(|(p, d)| p.ends_with(&format!("{b}/power/control")) && d.trim() == "auto"),
            "{b}: {ops:?}"
        );
        assert_eq!(power_of(&t, b), "on", "{b}");
    }
}

/// `plan` says which functions post-stop holds at D0, and that nothing is reset when
/// reset_on_stop is off.
#[test]
fn plan_names_the_d0_hold_and_a_post_stop_without_reset() {
    let mut t = T::new();
    t.sim.set_driver(NVME, Some("vfio-pci"));
    let p = lifecycle::plan_vm(&t.ctx(), 100).unwrap();
    assert_eq!(
        p.post_stop[0],
        format!("power/control on (held at D0 until the unbind) for {VNET}"),
        "{:?}",
        p.post_stop
    );
    assert_eq!(p.post_stop[1], format!("reset and verify {NVME} {VNET}"));
    t.cfg.vm.insert(
        100,
        crate::parse::config::VmOptions {
            reset_on_stop: Some(false),
            ..Default::default()
        },
    );
    let p = lifecycle::plan_vm(&t.ctx(), 100).unwrap();
    assert_eq!(
        p.post_stop[0],
        format!("check config space of {NVME} {VNET} (no reset: reset_on_stop = false)"),
        "{:?}",
        p.post_stop
    );
    assert!(!p
        .post_stop
        .iter()
        .any(|l| l.contains("reset and verify") || l.contains("D0")));
}

/// A function whose host driver is vfio-pci itself stays there after post-stop: it is not
/// held (nothing would put "auto" back after a crash).
#[test]
fn a_function_that_stays_on_vfio_pci_is_not_held() {
    let t = T::new();
    t.sim.set_driver(NVME, Some("vfio-pci"));
    t.sim.set_driver_override(NVME, Some("vfio-pci"));
    lifecycle::pre_start(&t.ctx(), 100).unwrap();
    t.sim.clear_ops();
    lifecycle::post_stop(&t.ctx(), 100, true).unwrap();
    assert!(
        !t.sim
            .ops()
            .iter()
            .any(|o| o.path.ends_with(&format!("{NVME}/power/control"))),
        "{:?}",
        t.sim.ops()
    );
    assert!(t
        .sim
        .ops()
        .iter()
        .any(|o| o.path.ends_with(&format!("{NVME}/reset"))));
    assert_eq!(power_of(&t, NVME), "auto");
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
    let st = crate::engine::state::load(&*t.sim, &crate::engine::state::VmKey::Pve(100))
        .unwrap()
        .unwrap();
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
    let steps = lifecycle::plan_vm(&t0.ctx_dry(true), 102).unwrap().steps;
    assert!(steps.len() >= 6);
    // Two boundaries per batch (steps of a batch run in parallel).
    let boundaries = 2 * crate::engine::plan::batches(&steps).len();
    for n in 0..boundaries {
        for via_cleanup in [true, false] {
            let t = T::new();
            let before = t.devices();
            lifecycle::CRASH_AT.with(|c| c.set(Some(n)));
            let r = lifecycle::pre_start(&t.ctx(), 102);
            lifecycle::CRASH_AT.with(|c| c.set(None));
            assert!(matches!(&r, Err(Error::SimulatedCrash)), "n={n}: {r:?}");
            assert!(t.has_state(102), "n={n}: the state must exist at the crash");
            if via_cleanup {
                crate::engine::phase::cleanup(&t.ctx(), None).unwrap();
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
            if *name == "ETIMEDOUT" {
                // The timed-out write may still complete in the kernel: the record stays
                // for cleanup, which finds nothing left to undo.
                assert!(t.has_state(102), "write {i} {path} {name}");
                assert!(msg.contains("pt-hook cleanup 102"), "{msg}");
                crate::engine::phase::cleanup(&t.ctx(), None).unwrap();
                assert_eq!(t.devices(), before, "write {i} {path} {name}: {msg}");
            }
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
    reset::reset_many(
        &t.ctx(),
        &list,
        None,
        Mode::Manual,
        &list,
        &Default::default(),
    )
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
    let e = crate::cmd::reset::command(&t.ctx(), &list, None, true).unwrap_err();
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
    let r = reset::reset_many(
        &t.ctx(),
        &list,
        Some("pm"),
        Mode::Manual,
        &list,
        &Default::default(),
    );
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
    let t = T::with(crate::tests::test_support::blackwell_host());
    std::fs::write(
        t.sim.root_dir().join("etc/pve/qemu-server/120.conf"),
        "hostpci0: 06:00.0\n",
    )
    .unwrap();
    let p = lifecycle::plan_vm(&t.ctx_dry(true), 120).unwrap();
    assert_eq!(p.devices[0].quirk.as_deref(), Some("nvidia-blackwell"));
    assert_eq!(p.devices[0].reset_method.as_deref(), Some("bus"));
    let pc_host = t
        .sim
        .snapshot()
        .device("0000:06:00.0")
        .unwrap()
        .power_control
        .clone();
    lifecycle::pre_start(&t.ctx(), 120).unwrap();
    let s = t.sim.snapshot();
    assert_eq!(s.device("0000:06:00.0").unwrap().reset_method, "bus");
    assert_eq!(
        s.device("0000:06:00.0").unwrap().d3cold_allowed,
        Some(false)
    );
    // The pin holds on vfio-pci, whose probe allows runtime PM.
    assert_eq!(s.device("0000:06:00.0").unwrap().power_control, "on");
    lifecycle::post_stop(&t.ctx(), 120, true).unwrap();
    assert!(!t.sim.is_wedged("0000:06:00.0"));
    assert_eq!(
        t.sim
            .snapshot()
            .device("0000:06:00.0")
            .unwrap()
            .power_control,
        pc_host,
        "as the host had it"
    );
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
    // Held at D0 for the ladder, given back to runtime PM as it stays on vfio-pci; the one
    // that went back is as the host had it.
    assert_eq!(power_of(&t, NVME), "auto");
    assert_eq!(power_of(&t, VNET), "on");
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
    // Each reset is held in the simulated kernel until all three are in progress at once
    // (or the hang limit): resets run one after another would never overlap.
    for b in [NVME, NVME2, VNET] {
        t.sim
            .set_reset_behaviour(b, "flr", ResetBehaviour::Together(3));
    }
    let r = ctx_reset(&t, &[NVME, NVME2, VNET]);
    assert!(r.iter().all(|r| r.verdict == Verdict::Reset), "{r:?}");
    let spans = t.sim.reset_spans();
    let of: Vec<_> = [NVME, NVME2, VNET]
        .iter()
        .map(|d| {
            let b = Bdf::parse(d).unwrap();
            let v: Vec<_> = spans.iter().filter(|(x, _, _)| *x == b).collect();
            assert_eq!(v.len(), 1, "{d}: one reset each: {spans:?}");
            (v[0].1, v[0].2)
        })
        .collect();
    // Every reset began before any of them ended: all three overlapped.
    let last_start = of.iter().map(|(s, _)| *s).max().unwrap();
    let first_end = of.iter().map(|(_, e)| *e).min().unwrap();
    assert!(last_start < first_end, "the resets did not overlap: {of:?}");
}

// ---- AMD reset-bug models ----------------------------------------------------------------
//
// The AMD reset bug as the simulated kernel models it: after the VM the card is wedged (the
// guest left it in a state only a device-specific reset or the host driver's probe clears);
// FLR and bus reset report success and change nothing (`ResetBehaviour::Ineffective`). A host
// driver that does not reset on probe fails to bind a wedged card (EIO).

mod amd {
    use super::*;
    use crate::host::sim::{SimDriver, SimModule};

    const CARD: &str = "0000:08:00.0";
    const HDMI: &str = "0000:08:00.1";

    /// An AMD card + its HDMI audio behind their own root port, VM 130 passing both.
    fn amd_host(device: u16, vendor_reset: Option<bool>, amdgpu_resets: bool) -> T {
        let sim = SimHost::gpu_host();
        if let Some(loaded) = vendor_reset {
            let mut m = SimModule::new("vendor_reset");
            m.loaded = loaded;
            sim.add_module(m);
        }
        let mut amdgpu = SimDriver::new("amdgpu").id(0x1002, device);
        if amdgpu_resets {
            amdgpu = amdgpu.resets_on_probe();
        }
        sim.add_driver(amdgpu);
        sim.add_driver(
            SimDriver::new("snd_hda_intel")
                .id(0x8086, 0x293e)
                .id(0x1002, 0xab28),
        );
        sim.add_device(SimDevice::bridge("0000:00:1d.0").group(40));
        sim.add_device(
            SimDevice::new(CARD, 0x1002, device, 0x030000)
                .parent("0000:00:1d.0")
                .group(41)
                // Two functions on the bus: no `bus` method; the slot is reset through the
                // root port's reset_subordinate.
                .reset_methods(&["device_specific", "flr"])
                .current_reset_method(&["flr"])
                .reset_behaviour("flr", ResetBehaviour::Ineffective)
                .reset_behaviour("bus", ResetBehaviour::Ineffective)
                .link("16.0 GT/s PCIe", 16)
                .driver("amdgpu"),
        );
        sim.add_device(
            SimDevice::new(HDMI, 0x1002, 0xab28, 0x040300)
                .parent("0000:00:1d.0")
                .group(41)
                .link("16.0 GT/s PCIe", 16)
                .driver("snd_hda_intel"),
        );
        let t = T::with(sim);
        std::fs::write(
            t.sim.root_dir().join("etc/pve/qemu-server/130.conf"),
            "machine: q35\nhostpci0: 08:00,pcie=1\n",
        )
        .unwrap();
        t
    }

    /// Vega 10 with vendor-reset loaded: `device_specific` goes first, and after the VM left
    /// the card wedged, the function reset (vendor-reset) brings it back.
    #[test]
    fn vega10_device_specific_recovers_the_wedged_card() {
        let t = amd_host(0x687f, Some(true), false);
        let before = t.devices();
        let p = lifecycle::plan_vm(&t.ctx_dry(true), 130).unwrap();
        assert_eq!(p.devices[0].quirk.as_deref(), Some("amd-vega10"));
        assert_eq!(
            p.devices[0].reset_method.as_deref(),
            Some("device_specific flr")
        );
        lifecycle::pre_start(&t.ctx(), 130).unwrap();
        assert_eq!(
            t.sim.snapshot().device(CARD).unwrap().reset_method,
            "device_specific flr"
        );
        t.sim.wedge(CARD); // the guest's driver left it like this
        lifecycle::post_stop(&t.ctx(), 130, true).unwrap();
        assert!(!t.sim.is_wedged(CARD));
        assert_eq!(t.devices(), before, "host exactly as it was");
        assert!(!t.has_state(130));
    }

    /// The same card with the kernel's own resets only (a user profile replaced the built-in
    /// and dropped device_specific): FLR and bus "succeed", the card stays wedged, amdgpu
    /// cannot probe it; remove + rescan does not find it again: exit 3, state kept.
    #[test]
    fn vega10_without_device_specific_reports_exit_3() {
        let mut t = amd_host(0x687f, Some(true), false);
        t.cfg = crate::parse::config::parse(
            "[[quirk]]\nname = \"amd-vega10\"\nvendor = \"1002\"\ndevices = [\"687f\"]\n",
            "/etc/pt-hook/pt-hook.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        t.cfg.timeouts.driver_bind = Duration::from_millis(300);
        t.cfg.timeouts.rescan = Duration::from_millis(300);
        lifecycle::pre_start(&t.ctx(), 130).unwrap();
        t.sim.wedge(CARD);
        let e = lifecycle::post_stop(&t.ctx(), 130, true).unwrap_err();
        assert_eq!(e.exit_code(), 3, "{e}");
        assert!(e.to_string().contains(CARD), "{e}");
        assert!(t.has_state(130));
    }

    /// vendor-reset installed but not loaded: pre-start loads it before writing
    /// device_specific.
    #[test]
    fn vega10_pre_start_loads_vendor_reset() {
        let t = amd_host(0x687f, Some(false), false);
        let p = lifecycle::plan_vm(&t.ctx_dry(true), 130).unwrap();
        assert!(
            p.warnings.iter().any(|w| w.contains("vendor_reset")),
            "{:?}",
            p.warnings
        );
        lifecycle::pre_start(&t.ctx(), 130).unwrap();
        assert!(t.sim.module_loaded("vendor_reset"));
        assert_eq!(
            t.sim.snapshot().device(CARD).unwrap().reset_method,
            "device_specific flr"
        );
        t.sim.wedge(CARD);
        lifecycle::post_stop(&t.ctx(), 130, true).unwrap();
        assert!(!t.sim.is_wedged(CARD));
        assert_eq!(t.sim.driver_of(CARD).as_deref(), Some("amdgpu"));
    }

    /// vendor-reset not installed at all: pre-start refuses before touching the card, naming
    /// the module; the host is as it was.
    #[test]
    fn vega10_without_vendor_reset_refuses_to_start() {
        let t = amd_host(0x687f, None, false);
        let before = t.devices();
        let e = lifecycle::pre_start(&t.ctx(), 130).unwrap_err();
        assert_eq!(e.exit_code(), 1, "{e}");
        assert!(e.to_string().contains("vendor_reset"), "{e}");
        assert_eq!(t.devices(), before);
        assert!(!t.has_state(130));
    }

    /// RDNA2 (RX 6800, 73bf) on amdgpu: FLR and bus are skipped by the profile; post-stop binds
    /// amdgpu (its probe resets the card), keeps it there, and the restore finds it done.
    #[test]
    fn rdna2_host_rebind_recovers_and_keeps_amdgpu() {
        let t = amd_host(0x73bf, None, true);
        let before = t.devices();
        lifecycle::pre_start(&t.ctx(), 130).unwrap();
        assert_eq!(t.sim.driver_of(CARD).as_deref(), Some("vfio-pci"));
        t.sim.wedge(CARD);
        lifecycle::post_stop(&t.ctx(), 130, true).unwrap();
        assert!(!t.sim.is_wedged(CARD));
        assert_eq!(t.devices(), before, "host exactly as it was");
        // FLR never ran: the profile skips it.
        assert!(
            !t.sim
                .ops()
                .iter()
                .any(|o| o.path.ends_with(&format!("{CARD}/reset"))),
            "{:?}",
            t.sim.ops()
        );
    }

    /// An RDNA card the host keeps on vfio-pci (bound at boot): the rebind is a round trip,
    /// amdgpu in and out, and the card ends on vfio-pci with its override, healthy.
    #[test]
    fn rdna_on_vfio_at_boot_round_trips_through_amdgpu() {
        let t = amd_host(0x73bf, None, true);
        t.sim.add_module(SimModule::new("vfio_pci"));
        t.sim.set_driver(CARD, Some("vfio-pci"));
        t.sim.set_driver_override(CARD, Some("vfio-pci"));
        let before = t.devices();
        lifecycle::pre_start(&t.ctx(), 130).unwrap();
        t.sim.wedge(CARD);
        lifecycle::post_stop(&t.ctx(), 130, true).unwrap();
        assert!(!t.sim.is_wedged(CARD));
        assert_eq!(t.devices(), before);
        assert!(
            t.sim
                .ops()
                .iter()
                .any(|o| o.path.ends_with("drivers/amdgpu/bind")),
            "{:?}",
            t.sim.ops()
        );
    }

    /// amdgpu's probe does not bring this card back (EIO): it goes back to vfio-pci, the
    /// ladder goes on to remove + rescan, the card is not found again: exit 3.
    #[test]
    fn rdna_host_rebind_that_fails_is_exit_3() {
        let mut t = amd_host(0x73bf, None, false);
        t.cfg.timeouts.rescan = Duration::from_millis(300);
        lifecycle::pre_start(&t.ctx(), 130).unwrap();
        t.sim.wedge(CARD);
        let e = lifecycle::post_stop(&t.ctx(), 130, true).unwrap_err();
        assert_eq!(e.exit_code(), 3, "{e}");
        assert!(t.has_state(130));
    }

    /// `pt-hook reset` of an RDNA card on vfio-pci: host-rebind round trip, verdict reset.
    #[test]
    fn manual_reset_of_rdna_uses_the_host_rebind() {
        let t = amd_host(0x73bf, None, true);
        t.sim.add_module(SimModule::new("vfio_pci"));
        t.sim.set_driver(CARD, Some("vfio-pci"));
        t.sim.set_driver_override(CARD, Some("vfio-pci"));
        t.sim.wedge(CARD);
        let ctx = t.ctx();
        let all = crate::engine::quirks::builtin();
        let mut q = reset::LadderQuirks::default();
        let info = crate::sysfs::device::read_device(&*ctx.host, &bdf(CARD)).unwrap();
        q.add(
            bdf(CARD),
            crate::engine::quirks::find(&all, &info).unwrap(),
            None,
        );
        let list = vec![bdf(CARD)];
        let r = reset::reset_many(&ctx, &list, None, Mode::Manual, &list, &q);
        assert_eq!(r[0].verdict, Verdict::Reset, "{r:?}");
        assert!(r[0].message.contains("host-rebind"), "{r:?}");
        assert_eq!(t.sim.driver_of(CARD).as_deref(), Some("vfio-pci"));
        assert!(!t.sim.is_wedged(CARD));
    }
}

/// Blackwell whose slot reset also leaves config space at 0xffffffff (the card fell off the
/// bus): the ladder escalates to remove + rescan, the card is not found again, post-stop says
/// so with exit 3 and keeps the state; nothing is handed to the host driver.
#[test]
fn blackwell_gone_after_every_rung_is_exit_3() {
    let mut t = T::with(crate::tests::test_support::blackwell_host());
    t.sim
        .set_reset_behaviour("0000:06:00.0", "bus", ResetBehaviour::Wedge);
    t.cfg.timeouts.driver_bind = Duration::from_millis(300);
    t.cfg.timeouts.rescan = Duration::from_millis(300);
    std::fs::write(
        t.sim.root_dir().join("etc/pve/qemu-server/120.conf"),
        "hostpci0: 06:00.0\n",
    )
    .unwrap();
    lifecycle::pre_start(&t.ctx(), 120).unwrap();
    let e = lifecycle::post_stop(&t.ctx(), 120, true).unwrap_err();
    assert_eq!(e.exit_code(), 3, "{e}");
    let m = e.to_string();
    assert!(m.contains("0000:06:00.0") && m.contains("reboot"), "{m}");
    assert!(t.has_state(120));
    assert_ne!(t.sim.driver_of("0000:06:00.0").as_deref(), Some("nvidia"));
    // FLR was taken out of its reset_method before the VM started.
    assert!(t
        .sim
        .ops()
        .iter()
        .any(|o| o.path.ends_with("0000:06:00.0/reset_method") && o.data.trim() == "bus"));
}

/// A Turing card whose four functions sit in four IOMMU groups (ACS override) and a VM config
/// that names only the GPU: the HDMI audio, USB-C xHCI and UCSI functions are companions and
/// move to vfio-pci with it, and come back to their host drivers after the VM.
#[test]
fn companion_functions_move_with_the_gpu() {
    use crate::host::sim::SimDriver;
    let sim = SimHost::gpu_host();
    sim.add_driver(SimDriver::new("nvidia").id(0x10de, 0x1e84));
    sim.add_driver(
        SimDriver::new("snd_hda_intel")
            .id(0x8086, 0x293e)
            .id(0x10de, 0x10f8),
    );
    sim.add_driver(SimDriver::new("xhci_hcd").id(0x10de, 0x1ad8));
    sim.add_driver(
        SimDriver::new("nvidia-gpu")
            .module("i2c_nvidia_gpu")
            .id(0x10de, 0x1ad9),
    );
    sim.add_device(SimDevice::bridge("0000:00:1d.0").group(40));
    for (f, dev, class, drv) in [
        (0, 0x1e84, 0x030000, "nvidia"),
        (1, 0x10f8, 0x040300, "snd_hda_intel"),
        (2, 0x1ad8, 0x0c0330, "xhci_hcd"),
        (3, 0x1ad9, 0x0c8000, "nvidia-gpu"),
    ] {
        sim.add_device(
            SimDevice::new(format!("0000:08:00.{f}").as_str(), 0x10de, dev, class)
                .parent("0000:00:1d.0")
                .group(41 + f)
                .driver(drv),
        );
    }
    let t = T::with(sim);
    std::fs::write(
        t.sim.root_dir().join("etc/pve/qemu-server/140.conf"),
        "machine: q35\nhostpci0: 08:00.0,pcie=1\n",
    )
    .unwrap();
    let before = t.devices();
    let p = lifecycle::plan_vm(&t.ctx_dry(true), 140).unwrap();
    let origins: Vec<(String, String)> = p
        .devices
        .iter()
        .map(|d| (d.info.bdf.to_string(), d.origin.clone()))
        .collect();
    assert_eq!(p.devices.len(), 4, "{origins:?}");
    for f in 1..4 {
        let d = &p.devices[f];
        assert!(
            d.origin.starts_with("companion of 0000:08:00.0"),
            "{origins:?}"
        );
        assert_eq!(d.quirk.as_deref(), Some("nvidia-companion"));
    }
    assert!(
        p.warnings.iter().any(|w| w.contains("0000:08:00.3")),
        "{:?}",
        p.warnings
    );
    lifecycle::pre_start(&t.ctx(), 140).unwrap();
    for f in 0..4 {
        assert_eq!(
            t.sim
                .driver_of(format!("0000:08:00.{f}").as_str())
                .as_deref(),
            Some("vfio-pci")
        );
    }
    lifecycle::post_stop(&t.ctx(), 140, true).unwrap();
    assert_eq!(t.devices(), before);
}

/// The reset ladder keeps to the phase deadline: FLR "succeeds" but leaves the function
/// wedged, and the check after it waits for config space until the (1.5 s) phase is used
/// up; the bus reset is then not started, and the call returns in about the phase time, not
/// the sum of the rungs' own timeouts (5 s each).
#[test]
fn reset_ladder_keeps_to_the_phase_deadline() {
    let mut t = T::new();
    t.cfg.timeouts.flr = Duration::from_secs(5);
    t.cfg.timeouts.bus_reset = Duration::from_secs(5);
    t.cfg.timeouts.rescan = Duration::from_secs(5);
    t.cfg.timeouts.driver_bind = Duration::from_secs(5);
    t.cfg.timeouts.phase = Duration::from_millis(1500);
    t.sim
        .set_reset_behaviour(NVME, "flr", ResetBehaviour::Wedge);
    let start = std::time::Instant::now();
    let r = ctx_reset(&t, &[NVME]);
    let took = start.elapsed();
    assert!(took < Duration::from_millis(3000), "took {took:?}: {r:?}");
    assert_eq!(r[0].verdict, Verdict::Unrecovered, "{r:?}");
    let bus = r[0].rungs.iter().find(|g| g.rung == "bus-reset").unwrap();
    assert!(bus.detail.contains("phase deadline"), "{r:?}");
}

/// A reset write that never returns is never "reset", even when the function looks healthy
/// afterwards: the kernel still holds the device. The ladder stops there and says so.
#[test]
fn a_reset_that_did_not_return_is_not_a_reset() {
    let t = T::new();
    t.sim.set_hang_limit(Duration::from_secs(5));
    t.sim
        .set_reset_behaviour(NVME2, "flr", ResetBehaviour::Hang);
    let r = ctx_reset(&t, &[NVME2]);
    t.sim.release_hangs();
    assert_eq!(r[0].verdict, Verdict::Unrecovered, "{r:?}");
    assert_eq!(r[0].rungs.len(), 1, "no rung after a stuck one: {r:?}");
    assert!(r[0].message.contains("did not return"), "{r:?}");
}
