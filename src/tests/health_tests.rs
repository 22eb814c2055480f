//! The reset memory on the simulated kernel: the adaptive ladder (a model that needs the bus
//! reset starts there the next time; a remembered FLR that fails now still escalates), a
//! damaged or unreadable file, the lock, concurrent writers (threads and processes), phase
//! durations and the metrics file.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::health::{self, Memory, ModelKey, Outcome, Phase, RungName};
use crate::engine::metrics;
use crate::engine::reset::{self, LadderQuirks, Mode, SlotReport, Verdict};
use crate::host::sim::{Fault, FaultPoint, OpKind, ResetBehaviour, SimHost};
use crate::host::Host;
use crate::pci::Bdf;
use crate::sysfs::device;
use crate::tests::test_support::T;

const NVME: &str = "0000:02:00.0";
const NVME2: &str = "0000:03:00.0";
const PORT_NVME: &str = "0000:00:1c.1";
const PORT_NVME2: &str = "0000:00:1c.2";
const FILE: &str = "var/lib/pt-hook/health.json";

fn bdf(s: &str) -> Bdf {
    Bdf::parse(s).unwrap()
}

fn reset_with(t: &T, b: &str, q: &LadderQuirks) -> SlotReport {
    let list = vec![bdf(b)];
    let mut r = reset::reset_many(&t.ctx(), &list, None, Mode::Manual, &list, q);
    assert_eq!(r.len(), 1);
    r.remove(0)
}

fn reset1(t: &T, b: &str) -> SlotReport {
    reset_with(t, b, &LadderQuirks::default())
}

fn tried(r: &SlotReport) -> Vec<&'static str> {
    r.rungs.iter().map(|x| x.rung).collect()
}

/// The reset writes the simulated kernel saw, in order: "DEV/reset" or "PORT/reset_subordinate".
fn reset_writes(sim: &SimHost) -> Vec<String> {
    sim.ops()
        .iter()
        .filter(|o| o.kind == OpKind::Write)
        .filter(|o| o.path.ends_with("/reset") || o.path.ends_with("/reset_subordinate"))
        .map(|o| {
            let mut it = o.path.rsplit('/');
            let file = it.next().unwrap();
            format!("{}/{file}", it.next().unwrap())
        })
        .collect()
}

/// The `pt-hook reset` phase's record in the memory: (runs, failures).
fn reset_phase(m: &Memory) -> (u64, u64) {
    let p = m
        .file
        .phases
        .iter()
        .find(|p| p.phase == Phase::Reset)
        .expect("a reset phase");
    (p.count, p.failures)
}

fn memory(t: &T) -> Memory {
    let m = Memory::load(&*t.sim);
    assert!(m.warning.is_none(), "{:?}", m.warning);
    m
}

fn model_of(t: &T, b: &str) -> ModelKey {
    ModelKey::of(&device::read_device(&*t.sim, &bdf(b)).unwrap())
}

fn file_json(t: &T) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(t.sim.root_dir().join(FILE)).unwrap()).unwrap()
}

/// A card whose FLR never works (the checks fail after it) needs the bus reset; its second
/// reset starts there and never writes the FLR. The other card of the same model (same
/// vendor:device and subsystem) learns from it too.
#[test]
fn a_model_that_needs_the_bus_reset_starts_there_the_second_time() {
    let t = T::new();
    t.sim
        .set_reset_behaviour(NVME, "flr", ResetBehaviour::Wedge);
    t.sim
        .set_reset_behaviour(NVME2, "flr", ResetBehaviour::Wedge);
    let r = reset1(&t, NVME);
    assert_eq!(r.verdict, Verdict::Reset, "{r:?}");
    assert_eq!(tried(&r), ["function-reset", "bus-reset"]);
    assert_eq!(r.start, None);
    assert_eq!(
        reset_writes(&t.sim),
        [
            format!("{NVME}/reset"),
            format!("{PORT_NVME}/reset_subordinate")
        ]
    );
    // What the file says.
    let j = file_json(&t);
    assert_eq!(j["version"], 1);
    assert_eq!(j["models"][0]["id"], "1b36:0010");
    assert_eq!(j["models"][0]["subsystem"], "1af4:1100");
    assert_eq!(j["models"][0]["rung"], "bus-reset");
    assert_eq!(j["slots"][0]["bdf"], NVME);
    assert_eq!(j["slots"][0]["last_rung"], "bus-reset");
    assert_eq!(j["slots"][0]["history"][0]["rungs"][0]["ok"], false);

    t.sim.clear_ops();
    let r = reset1(&t, NVME);
    assert_eq!(r.verdict, Verdict::Reset, "{r:?}");
    assert_eq!(tried(&r), ["bus-reset"], "{r:?}");
    assert_eq!(r.start, Some("bus-reset"));
    assert!(
        r.memory.as_deref().unwrap().contains("1b36:0010"),
        "{:?}",
        r.memory
    );
    assert_eq!(
        reset_writes(&t.sim),
        [format!("{PORT_NVME}/reset_subordinate")]
    );
    assert!(!t.sim.is_wedged(NVME));

    // The same model in another slot.
    t.sim.clear_ops();
    let r = reset1(&t, NVME2);
    assert_eq!(tried(&r), ["bus-reset"], "{r:?}");
    assert_eq!(
        reset_writes(&t.sim),
        [format!("{PORT_NVME2}/reset_subordinate")]
    );

    let m = memory(&t);
    let h = m.device_health(&bdf(NVME), &model_of(&t, NVME)).unwrap();
    assert_eq!((h.resets, h.failures), (2, 0));
    assert_eq!(h.last_rung, Some(RungName::BusReset));
    assert_eq!(h.ladder_starts_at, Some(RungName::BusReset));
    assert_eq!(h.history.len(), 2);
    assert_eq!(h.history[1].start, Some(RungName::BusReset));
    let model = m.model(&model_of(&t, NVME)).unwrap();
    assert_eq!(model.resets, 3);
    let flr = model
        .rungs
        .iter()
        .find(|s| s.rung == Some(RungName::FunctionReset))
        .unwrap();
    assert_eq!((flr.ok, flr.failed), (0, 1), "FLR tried once only");
}

/// The memory says FLR works for this model; now it does not: the ladder still escalates,
/// recovers with the bus reset, and the memory moves to the bus reset.
#[test]
fn a_remembered_flr_that_fails_now_still_escalates_and_the_memory_follows() {
    let t = T::new();
    let r = reset1(&t, NVME);
    assert_eq!(tried(&r), ["function-reset"]);
    let m = memory(&t);
    assert_eq!(
        m.model(&model_of(&t, NVME)).unwrap().rung,
        Some(RungName::FunctionReset)
    );
    assert_eq!(m.start_rung(&[model_of(&t, NVME)]), None);

    t.sim
        .set_reset_behaviour(NVME, "flr", ResetBehaviour::Wedge);
    t.sim.clear_ops();
    let r = reset1(&t, NVME);
    assert_eq!(r.verdict, Verdict::Reset, "{r:?}");
    assert_eq!(tried(&r), ["function-reset", "bus-reset"]);
    assert_eq!(
        reset_writes(&t.sim),
        [
            format!("{NVME}/reset"),
            format!("{PORT_NVME}/reset_subordinate")
        ]
    );
    let m = memory(&t);
    assert_eq!(
        m.model(&model_of(&t, NVME)).unwrap().rung,
        Some(RungName::BusReset)
    );
    let h = m.device_health(&bdf(NVME), &model_of(&t, NVME)).unwrap();
    assert_eq!(h.last_rung, Some(RungName::BusReset));
    assert_eq!(h.resets, 2);
}

/// The remembered bus reset fails its checks now (the card is gone after it): the ladder
/// goes on to remove + rescan, which recovers the card, without trying the FLR; the memory
/// learns remove-rescan, and the next ladder starts at the last reset rung before it (never
/// at remove + rescan itself).
#[test]
fn a_remembered_bus_reset_that_fails_escalates_past_it() {
    let t = T::new();
    t.sim
        .set_reset_behaviour(NVME, "flr", ResetBehaviour::Wedge);
    reset1(&t, NVME);
    // The card now drops off the bus during the bus reset (a rescan brings it back).
    t.sim.inject(FaultPoint::write_suffix(
        "/reset_subordinate",
        Fault::vanish(NVME),
    ));
    t.sim.clear_ops();
    let r = reset1(&t, NVME);
    assert_eq!(r.start, Some("bus-reset"));
    assert_eq!(tried(&r), ["bus-reset", "remove-rescan"], "{r:?}");
    assert_eq!(r.verdict, Verdict::Reset, "{r:?}");
    assert!(r.rungs[0].ran && !r.rungs[0].ok);
    assert!(r.rungs[0].detail.contains("missing"), "{r:?}");
    assert!(t.sim.writes_to(&format!("{NVME}/reset")).is_empty());
    let m = memory(&t);
    assert_eq!(
        m.model(&model_of(&t, NVME)).unwrap().rung,
        Some(RungName::RemoveRescan)
    );
    t.sim.clear_faults();
    let r = reset1(&t, NVME);
    assert_eq!(r.start, Some("bus-reset"));
    assert_eq!(tried(&r), ["bus-reset"], "{r:?}");
}

/// The remembered rung cannot run here (the bus reset is refused: another device on the bus
/// in use): the ladder runs from the top, so a working FLR still resets the card.
#[test]
fn a_remembered_rung_that_cannot_run_falls_back_to_the_whole_ladder() {
    let t = T::new();
    t.sim
        .set_reset_behaviour(NVME, "flr", ResetBehaviour::Wedge);
    reset1(&t, NVME);
    t.sim.set_reset_behaviour(NVME, "flr", ResetBehaviour::Ok);
    t.sim
        .set_subordinate_error(bdf(PORT_NVME), Some(libc::EINVAL));
    let r = reset1(&t, NVME);
    assert_eq!(r.verdict, Verdict::Reset, "{r:?}");
    assert_eq!(tried(&r), ["bus-reset", "function-reset"], "{r:?}");
    assert!(
        r.memory.as_deref().unwrap().contains("from the top"),
        "{r:?}"
    );
    // It learnt that the FLR works again.
    assert_eq!(
        memory(&t).model(&model_of(&t, NVME)).unwrap().rung,
        Some(RungName::FunctionReset)
    );
}

/// A rung a quirk profile forbids, or one the slot does not have, is never where the memory
/// starts.
#[test]
fn the_memory_never_starts_at_a_rung_the_slot_may_not_or_cannot_run() {
    let t = T::new();
    t.sim
        .set_reset_behaviour(NVME, "flr", ResetBehaviour::Wedge);
    reset1(&t, NVME);
    t.sim.set_reset_behaviour(NVME, "flr", ResetBehaviour::Ok);
    // A profile that forbids the bus reset for this card.
    let q = LadderQuirks {
        skip: vec![(bdf(NVME), vec!["bus-reset".to_string()])],
        ..LadderQuirks::default()
    };
    t.sim.clear_ops();
    let r = reset_with(&t, NVME, &q);
    assert_eq!(r.start, None, "{r:?}");
    assert_eq!(r.rungs[0].rung, "function-reset", "{r:?}");
    assert_eq!(reset_writes(&t.sim)[0], format!("{NVME}/reset"));

    // A memory that says host-rebind, for a slot without a host-rebind profile.
    let mut j = file_json(&t);
    j["models"][0]["rung"] = "host-rebind".into();
    std::fs::write(t.sim.root_dir().join(FILE), j.to_string()).unwrap();
    let r = reset1(&t, NVME);
    assert_eq!(r.start, None, "{r:?}");
    assert_eq!(tried(&r), ["function-reset"]);

    // --method: the operator chose the first rung; the memory is not consulted and learns
    // nothing (the slot's history still records it).
    let mut j = file_json(&t);
    j["models"][0]["rung"] = "bus-reset".into();
    std::fs::write(t.sim.root_dir().join(FILE), j.to_string()).unwrap();
    let list = vec![bdf(NVME)];
    let r = reset::reset_many(
        &t.ctx(),
        &list,
        Some("flr"),
        Mode::Manual,
        &list,
        &LadderQuirks::default(),
    );
    assert_eq!(tried(&r[0]), ["function-reset"]);
    let m = memory(&t);
    assert_eq!(
        m.model(&model_of(&t, NVME)).unwrap().rung,
        Some(RungName::BusReset)
    );
}

/// A device that does not come back is "needs a host reboot" in the memory, `status` and the
/// metrics; the reset itself exits 3 as before.
#[test]
fn an_unrecovered_device_needs_a_host_reboot() {
    let t = T::new();
    std::fs::create_dir_all(t.sim.root_dir().join("proc/sys/kernel/random")).unwrap();
    std::fs::write(
        t.sim.root_dir().join("proc/sys/kernel/random/boot_id"),
        "6f0c3c1e-boot\n",
    )
    .unwrap();
    t.sim
        .set_reset_behaviour(NVME, "flr", ResetBehaviour::Wedge);
    t.sim.set_subordinate_error(bdf(PORT_NVME), Some(libc::EIO));
    t.sim
        .inject(FaultPoint::write_suffix("/rescan", Fault::Errno(libc::EIO)));
    let e = crate::cmd::reset::command(&t.ctx(), &[bdf(NVME)], None, true).unwrap_err();
    assert_eq!(e.exit_code(), 3, "{e}");
    let m = memory(&t);
    let h = m.device_health(&bdf(NVME), &model_of(&t, NVME)).unwrap();
    assert!(h.needs_reboot, "{h:?}");
    assert_eq!(h.last_outcome, Outcome::Unrecovered);
    assert!(
        h.last_failure.as_deref().unwrap().contains("reboot"),
        "{h:?}"
    );
    assert_eq!(m.file.slots[0].boot_id.as_deref(), Some("6f0c3c1e-boot"));
    let text = metrics::render(&*t.sim, &m.file, m.boot_id.as_deref());
    let samples = metrics::tests::parse_strict(&text).unwrap();
    let needs = samples
        .iter()
        .find(|(n, l, _)| n == "pt_hook_device_needs_reboot" && l.iter().any(|(_, v)| v == NVME))
        .unwrap();
    assert_eq!(needs.2, 1.0);
    let fails = samples
        .iter()
        .find(|(n, _, _)| n == "pt_hook_reset_failures_total")
        .unwrap();
    assert_eq!(fails.2, 1.0);
    // The reset command's own run is a failed "reset" phase.
    assert_eq!(reset_phase(&m), (1, 1));
    // After a reboot (another boot id) the mark is gone; the failure stays counted.
    std::fs::write(
        t.sim.root_dir().join("proc/sys/kernel/random/boot_id"),
        "another-boot\n",
    )
    .unwrap();
    let h = Memory::load(&*t.sim)
        .device_health(&bdf(NVME), &model_of(&t, NVME))
        .unwrap();
    assert!(!h.needs_reboot);
    assert_eq!(h.failures, 1);
}

/// A damaged file: reported naming the file and the parse error, moved aside, rebuilt; the
/// reset works as if there were no memory.
#[test]
fn a_corrupt_memory_is_reported_moved_aside_and_rebuilt() {
    let t = T::new();
    let dir = t.sim.root_dir().join("var/lib/pt-hook");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("health.json"), "{\"version\": 1, \"models\": [tru").unwrap();
    let m = Memory::load(&*t.sim);
    let w = m.warning.unwrap();
    assert!(w.contains(&t.sim.display(FILE)), "{w}");
    assert!(w.contains("line 1"), "the parse error: {w}");
    let r = reset1(&t, NVME);
    assert_eq!(r.verdict, Verdict::Reset, "{r:?}");
    assert_eq!(
        std::fs::read_to_string(dir.join("health.json.corrupt")).unwrap(),
        "{\"version\": 1, \"models\": [tru"
    );
    let m = memory(&t);
    assert_eq!(m.file.slots.len(), 1);

    // Valid JSON that is not a memory (a wrong id) is damaged too.
    let mut j = file_json(&t);
    j["models"][0]["id"] = "nonsense".into();
    std::fs::write(dir.join("health.json"), j.to_string()).unwrap();
    let w = Memory::load(&*t.sim).warning.unwrap();
    assert!(w.contains("nonsense"), "{w}");
    reset1(&t, NVME);
    assert_eq!(memory(&t).file.models[0].id, "1b36:0010");

    // Unreadable (a directory where the file should be): the same.
    std::fs::remove_file(dir.join("health.json")).unwrap();
    std::fs::create_dir(dir.join("health.json")).unwrap();
    assert!(Memory::load(&*t.sim)
        .warning
        .unwrap()
        .contains("cannot read it"));
    let r = reset1(&t, NVME);
    assert_eq!(r.verdict, Verdict::Reset);
    assert!(dir.join("health.json.corrupt").is_dir());
    assert_eq!(memory(&t).file.slots[0].resets, 1);
}

/// Another writer holds the lock longer than the memory waits: the reset still works and
/// says nothing is lost but the record.
#[test]
fn a_held_lock_never_fails_the_reset() {
    let t = T::new();
    let _held = t
        .sim
        .lock("var/lib/pt-hook/health.lock", Duration::from_secs(1))
        .unwrap();
    let r = reset1(&t, NVME);
    assert_eq!(r.verdict, Verdict::Reset, "{r:?}");
    assert!(!t.sim.root_dir().join(FILE).exists());
}

/// Many writers at once, as threads of one process and as other processes: every update
/// lands (the lock serialises them; nothing is lost to a read-modify-write race).
#[test]
fn concurrent_writers_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let host: Arc<dyn Host> = Arc::new(crate::host::real::RealHost::new(dir.path()));
    let log = crate::log::Logger::new(-3, false);
    const THREADS: u64 = 4;
    const EACH: u64 = 15;
    // Two other processes: this test binary again, running `child_writer` below.
    let children: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "tests::health_tests::child_writer",
                    "--ignored",
                    "--quiet",
                ])
                .env("PT_HOOK_TEST_HEALTH_ROOT", dir.path())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::scope(|s| {
        for n in 0..THREADS {
            let host = Arc::clone(&host);
            let log = &log;
            s.spawn(move || {
                for _ in 0..EACH {
                    assert!(health::update(
                        &*host,
                        log,
                        |f, _| health::apply_phase(
                            f,
                            Phase::PostStop,
                            Duration::from_millis(n),
                            true,
                            1
                        ),
                        |_| {},
                    ));
                }
            });
        }
    });
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let m = Memory::load(&*host);
    assert!(m.warning.is_none(), "{:?}", m.warning);
    let count = |p: Phase| {
        m.file
            .phases
            .iter()
            .find(|x| x.phase == p)
            .map_or(0, |x| x.count)
    };
    assert_eq!(count(Phase::PostStop), THREADS * EACH);
    assert_eq!(count(Phase::PreStart), 2 * CHILD_UPDATES);
}

const CHILD_UPDATES: u64 = 25;

/// The other process of `concurrent_writers_lose_nothing` (runs only when it starts it).
#[test]
#[ignore]
fn child_writer() {
    let Some(root) = std::env::var_os("PT_HOOK_TEST_HEALTH_ROOT") else {
        return;
    };
    let host = crate::host::real::RealHost::new(root);
    let log = crate::log::Logger::new(-3, false);
    for _ in 0..CHILD_UPDATES {
        assert!(health::update(
            &host,
            &log,
            |f, _| health::apply_phase(f, Phase::PreStart, Duration::from_millis(3), true, 1),
            |_| {},
        ));
    }
}

/// Parallel resets in one process (two slots on different buses, one ladder call, and two
/// ladder calls at once): every slot is remembered.
#[test]
fn parallel_resets_are_all_remembered() {
    let t = T::new();
    let list = vec![bdf(NVME), bdf(NVME2)];
    let r = reset::reset_many(
        &t.ctx(),
        &list,
        None,
        Mode::Manual,
        &list,
        &LadderQuirks::default(),
    );
    assert!(r.iter().all(|x| x.verdict == Verdict::Reset), "{r:?}");
    std::thread::scope(|s| {
        s.spawn(|| reset1(&t, NVME));
        s.spawn(|| reset1(&t, NVME2));
    });
    let m = memory(&t);
    assert_eq!(m.file.slots.len(), 2);
    assert!(
        m.file.slots.iter().all(|s| s.resets == 2),
        "{:?}",
        m.file.slots
    );
    assert_eq!(m.file.models[0].resets, 4);
}

/// The phases record their durations in the memory, and with `metrics_file` set each one
/// rewrites the metrics file: strict text format, mode 0644, devices by owner, a libvirt
/// domain's name escaped in its label.
#[test]
fn phases_write_their_durations_and_the_metrics_file() {
    let mut t = T::new();
    let rel = "var/lib/prometheus/node-exporter/pt-hook.prom";
    let dir = t.sim.root_dir().join("var/lib/prometheus/node-exporter");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    t.cfg.metrics_file = Some(rel.to_string());
    let ctx = t.ctx();
    crate::engine::phase::pve(&ctx, 100, "pre-start").unwrap();
    let path = t.sim.root_dir().join(rel);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    let text = std::fs::read_to_string(&path).unwrap();
    let samples = metrics::tests::parse_strict(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let get = |s: &[metrics::tests::Sample], name: &str, labels: &[(&str, &str)]| {
        s.iter()
            .find(|(n, l, _)| {
                n == name
                    && labels.len() == l.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(a, b)| a == k && b == v))
            })
            .map(|x| x.2)
    };
    // How often the metrics file says `phase` ran.
    let runs = |s: &[metrics::tests::Sample], phase: &str| {
        get(
            s,
            "pt_hook_phase_duration_seconds_count",
            &[("phase", phase)],
        )
    };
    // The NVMe model's function resets.
    let nvme_flrs = |s: &[metrics::tests::Sample]| {
        get(
            s,
            "pt_hook_resets_total",
            &[
                ("model", "1b36:0010"),
                ("subsystem", "1af4:1100"),
                ("rung", "function-reset"),
            ],
        )
    };
    assert_eq!(
        get(
            &samples,
            "pt_hook_phase_duration_seconds_count",
            &[("phase", "pre-start")]
        ),
        Some(1.0)
    );
    // VM 100 holds its NVMe and the virtio-net now.
    assert_eq!(
        get(
            &samples,
            "pt_hook_devices",
            &[("owner", "vm"), ("vm", "100")]
        ),
        Some(2.0),
        "{text}"
    );
    crate::engine::phase::pve(&ctx, 100, "post-stop").unwrap();
    crate::engine::phase::pve(&ctx, 100, "pre-migrate").unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let samples = metrics::tests::parse_strict(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(runs(&samples, "post-stop"), Some(1.0));
    assert_eq!(
        get(
            &samples,
            "pt_hook_devices",
            &[("owner", "vm"), ("vm", "100")]
        ),
        None
    );
    // post-stop reset both devices (FLR): counted per model and rung.
    assert_eq!(nvme_flrs(&samples), Some(1.0), "{text}");
    let m = memory(&t);
    let phases: Vec<Phase> = m.file.phases.iter().map(|p| p.phase).collect();
    assert_eq!(
        phases,
        [Phase::PreStart, Phase::PostStop],
        "pre-migrate is not a phase"
    );

    // `pt-hook reset`: its run and its ladder's are one update of the memory, and the
    // metrics file shows both.
    crate::cmd::reset::command(&ctx, &[bdf(NVME)], None, true).unwrap();
    let m = memory(&t);
    assert_eq!(reset_phase(&m), (1, 0));
    let text = std::fs::read_to_string(&path).unwrap();
    let samples = metrics::tests::parse_strict(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(runs(&samples, "reset"), Some(1.0), "{text}");
    assert_eq!(nvme_flrs(&samples), Some(2.0), "{text}");

    // A libvirt domain with a quote and a backslash in its name: the label escapes them.
    let mut args = Vec::new();
    let name = "we\"b\\01";
    let xml = format!(
        "<domain type='kvm'><name>{name}</name><uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid><devices><hostdev mode='subsystem' type='pci'><source><address domain='0' bus='3' slot='0' function='0'/></source></hostdev></devices></domain>"
    );
    args.push(crate::cmd::libvirt::LibvirtArgs {
        domain: name.into(),
        operation: "prepare".into(),
        sub_operation: "begin".into(),
        extra: Some("-".into()),
    });
    let cfg = t.cfg.clone();
    let load = move |_: &dyn Host| -> crate::error::Result<crate::parse::config::Config> {
        Ok(cfg.clone())
    };
    crate::cmd::libvirt::command(
        Arc::clone(&t.sim) as Arc<dyn Host>,
        &load,
        false,
        &t.log,
        &args[0],
        &mut xml.as_bytes(),
        false,
    )
    .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("pt_hook_devices{owner=\"vm\",vm=\"libvirt:we\\\"b\\\\01\"} 1\n"),
        "{text}"
    );
    let samples = metrics::tests::parse_strict(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        get(
            &samples,
            "pt_hook_devices",
            &[("owner", "vm"), ("vm", "libvirt:we\"b\\01")]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            &samples,
            "pt_hook_phase_duration_seconds_count",
            &[("phase", "pre-start")]
        ),
        Some(2.0)
    );

    // A directory others can write: the file is not written (a warning), the phase works.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let before = std::fs::read_to_string(&path).unwrap();
    crate::engine::phase::pve(&ctx, 101, "post-start").unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
}

/// `--dry-run` resets nothing and remembers nothing.
#[test]
fn dry_run_remembers_nothing() {
    let t = T::new();
    crate::cmd::reset::command(&t.ctx_dry(true), &[bdf(NVME)], None, false).unwrap();
    crate::engine::phase::pve(&t.ctx_dry(true), 100, "pre-start").unwrap();
    assert!(!t.sim.root_dir().join(FILE).exists());
}

/// The fleet inventory carries the reset memory's health of a device (one truth: the same
/// view `status` prints), and none for a device never reset.
#[test]
fn the_published_inventory_carries_the_health_of_the_last_reset() {
    let t = T::new();
    t.sim
        .set_reset_behaviour(NVME, "flr", ResetBehaviour::Wedge);
    let r = reset1(&t, NVME);
    assert_eq!(r.verdict, Verdict::Reset, "{r:?}");
    let inv = crate::engine::fleet::build_readonly(&*t.sim, "pve1", "publish");
    let dev = |b: &str| {
        inv.devices
            .iter()
            .find(|d| d.bdf == bdf(b))
            .unwrap_or_else(|| panic!("{b} not in the inventory: {inv:?}"))
    };
    let h = dev(NVME).health.as_ref().expect("health of the reset NVMe");
    assert_eq!(h.last_rung.as_deref(), Some("bus-reset"));
    assert_eq!(h.failures, 0);
    assert!(!h.needs_reboot);
    let m = memory(&t);
    let full = m.device_health(&bdf(NVME), &model_of(&t, NVME)).unwrap();
    assert_eq!(h.last_reset, Some(full.last_reset));
    assert!(dev(NVME2).health.is_none(), "{:?}", dev(NVME2));
}

/// `pt-hook reset` hands the ladder each function as read beside the guard: used as they
/// are while the function is still on the driver it had (its attributes are not read again),
/// read again when it is not (the checks after each rung compare with what is there now).
#[test]
fn reads_beside_the_guard_are_used_while_the_driver_is_the_same() {
    let given = |t: &T, driver: Option<&str>| {
        let mut info = device::read_for_ladder(&*t.sim, &bdf(NVME)).unwrap();
        if let Some(d) = driver {
            info.driver = Some(d.into());
        }
        LadderQuirks {
            read: vec![reset::read_before(&*t.sim, &bdf(NVME), Some(info)).unwrap()],
            ..Default::default()
        }
    };
    let vendor_fails =
        || FaultPoint::read_suffix(&format!("{NVME}/vendor"), Fault::Errno(libc::EIO));
    // Used: a read of the vendor attribute would now fail, and none is made.
    let t = T::new();
    let q = given(&t, None);
    t.sim.inject(vendor_fails());
    let r = reset_with(&t, NVME, &q);
    assert_eq!(r.verdict, Verdict::Reset, "{r:?}");
    assert_eq!(tried(&r), ["function-reset"], "{r:?}");
    // Another driver than the function has now: the slot is read again (and that read fails
    // here, so the function is refused untouched)...
    let t = T::new();
    let q = given(&t, Some("vfio-pci"));
    t.sim.inject(vendor_fails());
    let r = reset_with(&t, NVME, &q);
    assert_eq!(r.verdict, Verdict::Refused, "{r:?}");
    assert!(reset_writes(&t.sim).is_empty(), "{r:?}");
    // ...and with that read working, the function passes the checks against what it is now.
    let t = T::new();
    let q = given(&t, Some("vfio-pci"));
    let r = reset_with(&t, NVME, &q);
    assert_eq!(r.verdict, Verdict::Reset, "{r:?}");
    assert_eq!(tried(&r), ["function-reset"], "{r:?}");
}
