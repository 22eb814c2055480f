//! Fault injection generated from clean runs, for every phase: pre-start (core steps, console
//! handoff, a quirk profile's power pinning), post-stop (reset ladder + restore), the `reset`
//! command and `cleanup`. Every write a clean run makes fails in turn with each errno, hangs,
//! or finds its device gone. Contract checked per case:
//! - pre-start: exit 1, message names the device or file and the errno, the host is exactly
//!   as before and no state remains; except a hang (the timed-out write may still land, or
//!   holds the device so the undo cannot finish) and a vanished device: then the state stays,
//!   the message says to run cleanup, and once the fault is over (hang released, rescan)
//!   `cleanup` puts the host back exactly;
//! - post-stop / cleanup: success with the host back, or exit 1/3 with every device on its
//!   host driver, held on vfio-pci, or without a driver (a timed-out unbind that completed
//!   later; never on another driver) and the state kept; once the fault is gone `cleanup`
//!   restores the host exactly;
//! - reset: returns a verdict (no panic), and once the fault is gone the device is back on its
//!   driver;
//! - every case returns within the phase deadline budget.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::engine::ctx::Ctx;
use crate::engine::lifecycle;
use crate::error::Error;
use crate::host::sim::{Fault, FaultOp, FaultPoint, OpKind, PathMatch, Snapshot};
use crate::host::Host;
use crate::log::Logger;
use crate::parse::config::{Config, Timeouts};
use crate::pci::Bdf;
use crate::tests::test_support::{blackwell_host, T};

fn timeouts() -> Timeouts {
    // Short enough to keep ~600 cases quick, long enough that a clean step never times out
    // on a loaded 2-core machine.
    Timeouts {
        step: Duration::from_millis(1200),
        driver_bind: Duration::from_secs(2),
        flr: Duration::from_millis(1200),
        bus_reset: Duration::from_secs(2),
        rescan: Duration::from_secs(2),
        module: Duration::from_secs(2),
        unit: Duration::from_secs(2),
        lock: Duration::from_millis(500),
        phase: Duration::from_secs(10),
        hook: Duration::from_secs(5),
        container: Duration::from_secs(5),
    }
}

/// Longest a single hook call may take in these tests: the phase deadline for the forward
/// steps plus one more for the undo (pre-start's rollback and post-stop's restore each get
/// the phase budget), plus scheduling slack.
fn budget() -> Duration {
    2 * timeouts().phase + Duration::from_secs(2)
}

impl T {
    /// gpu_host plus an RTX 5090-like card (VM 120), and hangs that end.
    fn blackwell() -> T {
        let t = T::build(
            blackwell_host(),
            &[
                (
                    100,
                    "machine: q35\nhostpci0: 02:00.0\nhostpci1: 04:00.0,pcie=1\n",
                ),
                (102, "machine: q35\nhostpci0: 01:00,x-vga=1\n"),
                (120, "machine: q35\nhostpci0: 06:00.0\n"),
            ],
            timeouts(),
        );
        t.sim.set_hang_limit(Duration::from_millis(2500));
        t
    }
    /// Takes the fault away: no more injected faults, hangs released, removed devices back.
    fn heal(&self) {
        self.sim.clear_faults();
        self.sim.release_hangs();
        let _ = self.sim.write("sys/bus/pci/rescan", "1");
    }
}

/// The host equals `before`, except what the kernel itself changed when it re-enumerated the
/// device that vanished: a function that comes back beside its sibling loses the "bus" reset
/// method (its reset_method file is gone), which no one can write back.
fn same_host(before: &Snapshot, now: &Snapshot, gone: Option<Bdf>) -> bool {
    let mut b = before.clone();
    if let (Some(g), Some(n)) = (gone, gone.and_then(|g| now.devices.get(&g))) {
        if n.reset_method.is_empty() {
            if let Some(d) = b.devices.get_mut(&g) {
                d.reset_method.clear();
            }
        }
    }
    &b == now
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    PreStart(u32),
    PostStop(u32),
    Reset(&'static str),
    Cleanup(u32),
}

/// Puts the host into the state the phase starts from (with default, generous timeouts: the
/// setup is not under test and must not trip over a loaded machine).
fn setup(t: &T, p: Phase) {
    let cfg = Config::default();
    let t = &T {
        sim: Arc::clone(&t.sim),
        cfg,
        log: Logger::new(-3, false),
    };
    match p {
        Phase::PreStart(_) | Phase::Reset(_) => {}
        Phase::PostStop(vm) => lifecycle::pre_start(&t.ctx(), vm).unwrap(),
        Phase::Cleanup(vm) => {
            // The pre-start "died" after its last step: no post-stop will come.
            // The last step boundary: every step done, the process gone before "prepared".
            // Count the boundaries on a throwaway host: the counter goes down once per boundary.
            const BIG: usize = 1_000_000;
            let probe = T::blackwell();
            lifecycle::CRASH_AT.with(|c| c.set(Some(BIG)));
            lifecycle::pre_start(&probe.ctx(), vm).unwrap();
            let n = BIG - lifecycle::CRASH_AT.with(|c| c.get()).unwrap();
            assert!(n > 0, "{p:?}: no step boundaries");
            lifecycle::CRASH_AT.with(|c| c.set(Some(n - 1)));
            let r = lifecycle::pre_start(&t.ctx(), vm);
            lifecycle::CRASH_AT.with(|c| c.set(None));
            assert!(matches!(&r, Err(Error::SimulatedCrash)), "{p:?}: {r:?}");
        }
    }
    t.sim.clear_ops();
}

fn act(t: &T, p: Phase) -> Result<(), Error> {
    match p {
        Phase::PreStart(vm) => lifecycle::pre_start(&t.ctx(), vm),
        Phase::PostStop(vm) => lifecycle::post_stop(&t.ctx(), vm, true),
        Phase::Reset(b) => {
            crate::cmd::reset::command(&t.ctx(), &[Bdf::parse(b).unwrap()], None, true)
        }
        Phase::Cleanup(vm) => crate::engine::phase::cleanup(&t.ctx(), Some(vm)),
    }
}

/// The device a write is about: the BDF in its path, or the BDF written (bind/unbind/probe).
fn device_of(path: &str, data: &str) -> Option<Bdf> {
    if let Ok(b) = Bdf::parse(data.trim()) {
        return Some(b);
    }
    path.split('/').find_map(|c| Bdf::parse(c).ok())
}

fn faults() -> Vec<(Fault, &'static str)> {
    vec![
        (Fault::Errno(libc::ENODEV), "ENODEV"),
        (Fault::Errno(libc::EBUSY), "EBUSY"),
        (Fault::Errno(libc::EINVAL), "EINVAL"),
        (Fault::Errno(libc::EIO), "EIO"),
        (Fault::Errno(libc::ENOTTY), "ENOTTY"),
        (Fault::Errno(libc::EAGAIN), "EAGAIN"),
        (Fault::Hang, "ETIMEDOUT"),
    ]
}

struct Case {
    phase: Phase,
    nth: usize,
    path: String,
    /// What the write writes (the case is the nth write of this to `path`).
    data: String,
    fault: Fault,
    name: &'static str,
}

#[derive(Default)]
struct Tally {
    cases: AtomicUsize,
    exact: AtomicUsize,
    safe_error: AtomicUsize,
    recovered: AtomicUsize,
    max_ms: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

/// The cases for one phase: each write of a clean run × each fault (and a vanish where the
/// write names a device).
fn cases(p: Phase) -> Vec<Case> {
    let clean = T::blackwell();
    setup(&clean, p);
    act(&clean, p).unwrap_or_else(|e| panic!("{p:?} clean run: {e}"));
    let writes: Vec<(String, String)> = clean
        .sim
        .ops()
        .iter()
        .filter(|o| o.kind == OpKind::Write)
        .map(|o| (o.path.clone(), o.data.clone()))
        .collect();
    assert!(!writes.is_empty(), "{p:?} made no writes");
    let mut v = Vec::new();
    for (i, (path, data)) in writes.iter().enumerate() {
        // The nth write of this very data to this file: in a faulted run parallel steps may
        // write to a shared file (`vfio-pci/unbind`) in another order than the clean run did,
        // and the case must still hit the device it was made for.
        let nth = writes[..=i]
            .iter()
            .filter(|(q, d)| q == path && d == data)
            .count();
        let mut fs = faults();
        if let Some(b) = device_of(path, data) {
            fs.push((Fault::vanish(b), "vanish"));
        }
        for (fault, name) in fs {
            v.push(Case {
                phase: p,
                nth,
                path: path.clone(),
                data: data.clone(),
                fault,
                name,
            });
        }
    }
    v
}

fn check(c: &Case, tally: &Tally, vanish_recovery: bool) -> Result<(), String> {
    let t = T::blackwell();
    let before = t.devices();
    setup(&t, c.phase);
    let mid = t.devices();
    t.sim.inject(FaultPoint {
        path: PathMatch::ExactWrite {
            path: c.path.clone(),
            data: c.data.clone(),
        },
        op: FaultOp::Write,
        nth: Some(c.nth),
        fault: c.fault.clone(),
    });
    let start = Instant::now();
    let r = act(&t, c.phase);
    let took = start.elapsed();
    tally
        .max_ms
        .fetch_max(took.as_millis() as usize, Ordering::Relaxed);
    let id = format!(
        "{:?} write #{} of {:?} to {} {}",
        c.phase, c.nth, c.data, c.path, c.name
    );
    if took > budget() {
        return Err(format!("{id}: took {took:?}"));
    }
    let vanished = matches!(c.fault, Fault::Vanish(_));
    let gone = match &c.fault {
        Fault::Vanish(b) => Some(*b),
        _ => None,
    };
    match c.phase {
        Phase::PreStart(vm) => {
            let e = match r {
                Ok(()) if vanished => {
                    // The write found the device gone only after it had done its job (e.g.
                    // a probe that already bound); the VM would start without it: QEMU
                    // fails then and post-stop restores. Nothing is lost: state is kept.
                    if !t.has_state(vm) {
                        return Err(format!("{id}: success without state"));
                    }
                    t.heal();
                    lifecycle::post_stop(&t.ctx(), vm, true)
                        .map_err(|e| format!("{id}: post-stop after heal: {e}"))?;
                    if !same_host(&before, &t.devices(), gone) {
                        return Err(format!("{id}: host differs after heal + post-stop"));
                    }
                    tally.recovered.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(()) => return Err(format!("{id}: pre-start succeeded")),
                Err(e) => e,
            };
            if e.exit_code() != 1 {
                return Err(format!("{id}: exit {}: {e}", e.exit_code()));
            }
            let msg = e.to_string();
            if vanished {
                let b = device_of(&c.path, "").map(|b| b.to_string());
                if !b.as_ref().is_some_and(|b| msg.contains(b.as_str())) && !msg.contains("ENODEV")
                {
                    return Err(format!(
                        "{id}: message names neither device nor ENODEV: {msg}"
                    ));
                }
                if !t.has_state(vm) {
                    return Err(format!("{id}: device gone but no state kept: {msg}"));
                }
                tally.safe_error.fetch_add(1, Ordering::Relaxed);
                if !vanish_recovery {
                    return Ok(());
                }
                // Recovery: the device comes back (rescan), cleanup puts everything back.
                t.heal();
                crate::engine::phase::cleanup(&t.ctx(), None)
                    .map_err(|e| format!("{id}: cleanup after rescan: {e}"))?;
                if !same_host(&before, &t.devices(), gone) {
                    return Err(format!(
                        "{id}: host differs after rescan + cleanup:\n{:?}\n{:?}",
                        before,
                        t.devices()
                    ));
                }
                tally.recovered.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            if !msg.contains(c.name) {
                return Err(format!("{id}: message lacks {}: {msg}", c.name));
            }
            if msg.contains(&format!("pt-hook cleanup {vm}")) {
                // The rollback could not finish (the hung write holds the device) or the
                // write may still land: the state stays, cleanup finishes once it is over.
                if !t.has_state(vm) {
                    return Err(format!("{id}: asks for cleanup but kept no state: {msg}"));
                }
                t.heal();
                crate::engine::phase::cleanup(&t.ctx(), None)
                    .map_err(|e| format!("{id}: cleanup after the hang: {e}"))?;
                if t.devices() != before || t.has_state(vm) {
                    return Err(format!("{id}: cleanup did not restore: {msg}"));
                }
                tally.recovered.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            if !msg.contains(&t.sim.display(&c.path)) && !msg.contains("0000:") {
                return Err(format!("{id}: message names no file or device: {msg}"));
            }
            t.sim.release_hangs();
            if t.devices() != before {
                return Err(format!(
                    "{id}: not rolled back: {msg}\n{:?}\n{:?}",
                    before,
                    t.devices()
                ));
            }
            if t.has_state(vm) {
                return Err(format!("{id}: state left after a clean rollback"));
            }
            tally.exact.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Phase::PostStop(vm) | Phase::Cleanup(vm) => {
            match r {
                Ok(()) => {
                    t.sim.release_hangs();
                    if t.devices() != before || t.has_state(vm) {
                        return Err(format!("{id}: success but host differs / state left"));
                    }
                    tally.exact.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) => {
                    if ![1, 3].contains(&e.exit_code()) {
                        return Err(format!("{id}: exit {}: {e}", e.exit_code()));
                    }
                    if !t.has_state(vm) {
                        return Err(format!("{id}: failed ({e}) but the state is gone"));
                    }
                    // Every device: on its host driver, or held on vfio-pci, or gone (vanish).
                    t.sim.release_hangs();
                    let now = t.devices();
                    for (b, d) in &before.devices {
                        let Some(n) = now.devices.get(b) else {
                            continue;
                        };
                        if !n.present {
                            if vanished {
                                continue;
                            }
                            return Err(format!("{id}: {b} missing"));
                        }
                        let was_vfio = mid.devices.get(b).and_then(|m| m.driver.clone());
                        // No driver at all is safe too: a timed-out unbind that the
                        // kernel completed later; nothing on the host touches the device.
                        let ok = n.driver == d.driver
                            || n.driver.is_none()
                            || (n.driver.as_deref() == Some("vfio-pci")
                                && was_vfio.as_deref() == Some("vfio-pci"));
                        if !ok {
                            return Err(format!(
                                "{id}: {b} on {:?} (was {:?}) after: {e}",
                                n.driver, d.driver
                            ));
                        }
                    }
                    tally.safe_error.fetch_add(1, Ordering::Relaxed);
                }
            }
            if vanished && !vanish_recovery {
                return Ok(());
            }
            t.heal();
            crate::engine::phase::cleanup(&t.ctx(), None)
                .map_err(|e| format!("{id}: cleanup after the fault: {e}"))?;
            if !same_host(&before, &t.devices(), gone) || t.has_state(vm) {
                return Err(format!(
                    "{id}: cleanup did not restore:\n{before:?}\n{:?}",
                    t.devices()
                ));
            }
            tally.recovered.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Phase::Reset(b) => {
            if let Err(e) = &r {
                if ![1, 3].contains(&e.exit_code()) {
                    return Err(format!("{id}: exit {}: {e}", e.exit_code()));
                }
                if !e.to_string().contains(b) {
                    return Err(format!("{id}: message does not name {b}: {e}"));
                }
            }
            t.heal();
            let want = before.device(b).and_then(|d| d.driver.clone());
            if t.sim.driver_of(b) != want {
                // A second reset once the fault is gone brings the device back.
                act(&t, c.phase).map_err(|e| format!("{id}: second reset: {e}"))?;
            }
            if t.sim.driver_of(b) != want {
                return Err(format!(
                    "{id}: {b} on {:?}, want {want:?} ({r:?})",
                    t.sim.driver_of(b)
                ));
            }
            if r.is_ok() {
                tally.exact.fetch_add(1, Ordering::Relaxed);
            } else {
                tally.safe_error.fetch_add(1, Ordering::Relaxed);
            }
            tally.recovered.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }
}

fn run_phase(phases: &[Phase], vanish_recovery: bool) -> String {
    let all: Vec<Case> = phases.iter().flat_map(|p| cases(*p)).collect();
    let tally = Tally::default();
    let next = AtomicUsize::new(0);
    // Hangs mostly wait: several cases at once keep the wall time down on 2 cores.
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(c) = all.get(i) else { break };
                tally.cases.fetch_add(1, Ordering::Relaxed);
                if let Err(m) = check(c, &tally, vanish_recovery) {
                    tally.failures.lock().unwrap().push(m);
                }
            });
        }
    });
    let f = tally.failures.lock().unwrap();
    let summary = format!(
        "fault cases {:?}: {}, rolled back / exact: {}, safe error (vfio-pci or host driver, state kept): {}, recovered after the fault: {}, failures: {}, slowest {} ms",
        phases,
        tally.cases.load(Ordering::Relaxed),
        tally.exact.load(Ordering::Relaxed),
        tally.safe_error.load(Ordering::Relaxed),
        tally.recovered.load(Ordering::Relaxed),
        f.len(),
        tally.max_ms.load(Ordering::Relaxed),
    );
    eprintln!("{summary}");
    assert!(
        f.is_empty(),
        "{summary}\n{}",
        f.iter().take(15).cloned().collect::<Vec<_>>().join("\n")
    );
    summary
}

#[test]
fn fault_at_every_pre_start_write_rolls_back() {
    run_phase(
        &[
            Phase::PreStart(100),
            Phase::PreStart(102),
            Phase::PreStart(120),
        ],
        true,
    );
}

#[test]
fn fault_at_every_post_stop_write_leaves_a_safe_state() {
    run_phase(
        &[
            Phase::PostStop(100),
            Phase::PostStop(102),
            Phase::PostStop(120),
        ],
        true,
    );
}

#[test]
fn fault_at_every_reset_write_is_reported_and_recoverable() {
    run_phase(
        &[Phase::Reset("0000:02:00.0"), Phase::Reset("0000:04:00.0")],
        true,
    );
}

#[test]
fn fault_at_every_cleanup_write_leaves_a_safe_state() {
    run_phase(&[Phase::Cleanup(100), Phase::Cleanup(102)], true);
}

/// The phase deadline holds when every write hangs: pre-start and post-stop return within
/// their budget and say what they could not do.
#[test]
fn every_write_hanging_still_returns_within_the_deadline() {
    let t = T::blackwell();
    let mut cfg = t.cfg.clone();
    cfg.timeouts.step = Duration::from_secs(30);
    cfg.timeouts.driver_bind = Duration::from_secs(30);
    cfg.timeouts.phase = Duration::from_secs(2);
    t.sim.set_hang_limit(Duration::from_secs(60));
    let ctx = Ctx {
        cfg: &cfg,
        ..t.ctx()
    };
    let hang_all = FaultPoint {
        path: PathMatch::Any,
        op: FaultOp::Write,
        nth: None,
        fault: Fault::Hang,
    };
    t.sim.inject(hang_all.clone());
    let start = Instant::now();
    let e = lifecycle::pre_start(&ctx, 100).unwrap_err();
    let took = start.elapsed();
    eprintln!("pre-start, every write hanging: {took:?}: {e}");
    assert!(took < Duration::from_millis(4500), "{took:?}");
    assert!(e.to_string().contains("ETIMEDOUT"), "{e}");
    assert!(e.to_string().contains("cleanup 100"), "{e}");
    assert!(t.has_state(100), "what was not undone stays recorded");
    // The hangs end; cleanup finishes the job.
    t.heal();
    crate::engine::phase::cleanup(&t.ctx(), None).unwrap();
    assert!(!t.has_state(100));

    lifecycle::pre_start(&t.ctx(), 100).unwrap();
    t.sim.inject(hang_all);
    let start = Instant::now();
    let r = lifecycle::post_stop(&ctx, 100, true);
    let took = start.elapsed();
    eprintln!("post-stop, every write hanging: {took:?}: {r:?}");
    assert!(r.is_err());
    // post-stop: the reset ladder (per-rung deadlines: flr + bus reset) then the restore
    // under the phase deadline.
    let bound =
        cfg.timeouts.phase + cfg.timeouts.flr + cfg.timeouts.bus_reset + Duration::from_secs(1);
    assert!(took < bound, "{took:?} >= {bound:?}");
    assert!(t.has_state(100));
    t.heal();
    crate::engine::phase::cleanup(&t.ctx(), None).unwrap();
    assert!(!t.has_state(100));
}

/// Bug found on the test bed: a post-stop that could not give back one device (it vanished)
/// kept the state of all of them, so the later cleanup reset devices that were already back
/// on their host drivers and in use. Now the state keeps only what is not back.
#[test]
fn failed_restore_keeps_only_the_devices_not_back() {
    let t = T::blackwell();
    let before = t.devices();
    lifecycle::pre_start(&t.ctx(), 100).unwrap();
    t.sim.vanish("0000:04:00.0");
    let e = lifecycle::post_stop(&t.ctx(), 100, true).unwrap_err();
    assert_eq!(e.exit_code(), 1, "{e}");
    assert!(e.to_string().contains("0000:04:00.0"), "{e}");
    assert_eq!(t.sim.driver_of("0000:02:00.0").as_deref(), Some("nvme"));
    let st = crate::engine::state::load(&*t.sim, &crate::engine::state::VmKey::Pve(100))
        .unwrap()
        .unwrap();
    assert_eq!(
        st.bdfs(),
        vec![Bdf::parse("0000:04:00.0").unwrap()],
        "only the missing device stays recorded"
    );
    assert!(st
        .journal
        .iter()
        .all(|s| s.bdf().is_none_or(|b| b.to_string() == "0000:04:00.0")));
    t.heal();
    t.sim.clear_ops();
    let r = crate::engine::phase::cleanup(&t.ctx(), None);
    let touched_nvme: Vec<_> = t
        .sim
        .ops()
        .into_iter()
        .filter(|o| {
            o.kind == OpKind::Write
                && (o.path.contains("0000:02:00.0") || o.data.contains("0000:02:00.0"))
        })
        .collect();
    assert!(
        touched_nvme.is_empty(),
        "cleanup touched the nvme: {touched_nvme:?}"
    );
    eprintln!("cleanup after rescan: {r:?}");
    r.unwrap();
    assert_eq!(t.devices(), before);
}

/// Bug: a device once recorded as "unrecovered" (post-stop exit 3) stayed so forever: after
/// the slot came back (power cycle of the slot, rescan) every cleanup still exited 3 without
/// looking. Now cleanup resets it again and gives it back when that works.
#[test]
fn an_unrecovered_device_that_recovers_is_given_back_by_cleanup() {
    use crate::host::sim::ResetBehaviour;
    let t = T::blackwell();
    let before = t.devices();
    let nvme = "0000:02:00.0";
    lifecycle::pre_start(&t.ctx(), 100).unwrap();
    t.sim
        .set_reset_behaviour(nvme, "flr", ResetBehaviour::Wedge);
    t.sim
        .set_reset_behaviour(nvme, "bus", ResetBehaviour::Wedge);
    t.sim
        .set_subordinate_error(Bdf::parse("0000:00:1c.1").unwrap(), Some(libc::EIO));
    t.sim.inject(FaultPoint {
        path: PathMatch::Suffix("/rescan".into()),
        op: FaultOp::Write,
        nth: None,
        fault: Fault::Errno(libc::EIO),
    });
    let e = lifecycle::post_stop(&t.ctx(), 100, true).unwrap_err();
    assert_eq!(e.exit_code(), 3, "{e}");
    assert_eq!(t.sim.driver_of(nvme).as_deref(), Some("vfio-pci"));
    // The slot is power-cycled: the card works again.
    t.sim.set_reset_behaviour(nvme, "flr", ResetBehaviour::Ok);
    t.sim.set_reset_behaviour(nvme, "bus", ResetBehaviour::Ok);
    t.sim
        .set_subordinate_error(Bdf::parse("0000:00:1c.1").unwrap(), None);
    t.sim.clear_faults();
    t.sim.unwedge(nvme);
    crate::engine::phase::cleanup(&t.ctx(), None).unwrap();
    assert_eq!(t.devices(), before);
    assert!(!t.has_state(100));
}

/// Bug: a damaged state file of another VM counted as "owns nothing", so a second VM could
/// take devices the damaged record may still describe. Now it counts as owning them.
#[test]
fn a_damaged_state_of_another_vm_blocks_the_start() {
    let t = T::blackwell();
    let before = t.devices();
    let dir = t.sim.root_dir().join("run/pt-hook");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("vm-101.json"),
        "{\"version\": 1, \"vmid\": 101, \"devi",
    )
    .unwrap();
    let e = lifecycle::pre_start(&t.ctx(), 100).unwrap_err();
    assert_eq!(e.exit_code(), 1, "{e}");
    assert!(e.to_string().contains("101"), "{e}");
    assert_eq!(t.devices(), before);
}
