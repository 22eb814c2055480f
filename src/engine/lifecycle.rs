//! The hookscript phases: pre-start takes a VM's devices from the host, post-stop (and
//! cleanup) gives them back from pt-hook's own state.

use std::collections::BTreeSet;

use crate::engine::ctx::Ctx;
use crate::engine::exec::Exec;
use crate::engine::guard;
use crate::engine::plan::{self, HostFacts, PlannedDevice, Step};
use crate::engine::resolve::{self, Resolved};
use crate::engine::state::{self, DeviceRecord, VmKey, VmState};
use crate::error::{Error, Result};
use crate::host::{paths, Host, LockGuard};
use crate::log::Cat;
use crate::pci::Bdf;
use crate::sysfs::device;

/// Writes the state (atomically, with its fsyncs), timed.
fn save(ctx: &Ctx, st: &VmState) -> Result<()> {
    let _t = ctx.log.span(Cat::State, format!("write {}", st.phase));
    state::save(ctx.h(), st)
}

/// What `plan` prints and pre-start executes.
#[derive(Debug, serde::Serialize)]
pub struct VmPlan {
    pub vmid: u32,
    pub devices: Vec<PlannedDevice>,
    pub steps: Vec<Step>,
    pub post_stop: Vec<String>,
    pub warnings: Vec<String>,
    /// Address drift since the last good start: pre-start refuses while it is not empty.
    pub identity: crate::engine::identity::PlanIdentity,
    /// Who uses the functions (the host guard), released ones included.
    pub users: guard::Report,
    /// Users that make pre-start refuse: "hostpci0 0000:02:00.0: /dev/nvme0n1p1 is mounted
    /// at /srv (ext4)". Empty: pre-start may proceed.
    pub refusals: Vec<String>,
    /// What to do about the refusals.
    pub fixes: Vec<String>,
    /// Every refusal is a process with a node open (no mount, swap, route, VM): such users
    /// can be gone a moment later (a udev worker probing a disk that just came back).
    #[serde(skip)]
    pub transient: bool,
}

impl VmPlan {
    /// The error pre-start (and `plan`) gives for the refusals.
    pub fn refusal(&self, key: &VmKey) -> Option<Error> {
        if self.refusals.is_empty() {
            return None;
        }
        Some(Error::Failed(format!(
            "{key} would take devices in use, so nothing was changed: {} — {}",
            self.refusals.join("; "),
            self.fixes.join("; ")
        )))
    }
}

pub fn plan_vm(ctx: &Ctx, vmid: u32) -> Result<VmPlan> {
    let vmcfg = ctx
        .log
        .timed(Cat::Config, format!("VM {vmid} config"), || {
            resolve::load_vm_config(ctx.h(), vmid)
        })?;
    let key = VmKey::Pve(vmid);
    let all = device::list_all(ctx.h());
    // The guard's scan of the functions the hostpci lines name (it only reads) runs beside
    // resolve, which reads those functions and their IOMMU groups: when resolve adds nobody
    // (no group member, no mapping) the plan uses it (`plan_resolved`).
    let named = resolve::named_functions(&vmcfg, &all).filter(|b| !b.is_empty());
    std::thread::scope(|sc| {
        let key = &key;
        let early = named.map(|bdfs| {
            let scan = {
                let bdfs = bdfs.clone();
                sc.spawn(move || guard_scan(ctx, key, &bdfs))
            };
            let join: EarlyScan<'_> =
                Box::new(move || scan.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            (bdfs, join)
        });
        let resolved = ctx
            .log
            .timed(Cat::Resolve, "hostpci lines, IOMMU groups", || {
                resolve::resolve_listed(ctx.h(), &vmcfg, &ctx.node, ctx.log, all)
            });
        plan_resolved_with(ctx, key, resolved?, early)
    })
}

/// The result of a guard scan still running beside the caller (its join).
type EarlyScan<'a> = Box<dyn FnOnce() -> guard::Report + 'a>;

/// The plan for an explicit list of functions (libvirt hostdevs): same steps as `plan_vm`.
/// `key.vmid()` selects `[vm.N]` options (0, the defaults, for a libvirt domain).
pub fn plan_bdfs(ctx: &Ctx, key: &VmKey, bdfs: &[(Bdf, String)]) -> Result<VmPlan> {
    let resolved = ctx.log.timed(Cat::Resolve, "hostdevs, IOMMU groups", || {
        resolve::resolve_bdfs(ctx.h(), bdfs)
    })?;
    plan_resolved(ctx, key, resolved)
}

/// A display-manager alias ("display-manager.service" → "gdm.service"), as the cgroup of its
/// processes names it.
fn unit_id(host: &dyn Host, unit: &str) -> String {
    host.link_name(&format!("etc/systemd/system/{unit}"))
        .ok()
        .filter(|n| paths::safe_name(n))
        .unwrap_or_else(|| unit.to_string())
}

/// The hostpciN a function was named by ("IOMMU group 8 (with X)" → X's origin).
fn config_key(devices: &[PlannedDevice], origin: &str) -> Option<String> {
    if origin.starts_with("hostpci") {
        return origin.split_whitespace().next().map(str::to_string);
    }
    let anchor = origin.split("(with ").nth(1)?.trim_end_matches(')');
    let b = Bdf::parse(anchor).ok()?;
    let d = devices.iter().find(|d| d.info.bdf == b)?;
    d.origin
        .starts_with("hostpci")
        .then(|| d.origin.split_whitespace().next().map(str::to_string))
        .flatten()
}

struct Guarded {
    users: guard::Report,
    refusals: Vec<String>,
    fixes: Vec<String>,
    containers: Vec<u32>,
    released: bool,
    transient: bool,
}

/// The host guard applied to a plan: which users refuse the start, which the plan itself
/// releases (units the console handoff stops; containers with `release_containers`).
/// The functions of a plan the guard checks (those pt-hook moves).
fn guarded_bdfs(devices: &[PlannedDevice]) -> Vec<Bdf> {
    devices
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.info.bdf)
        .collect()
}

/// The guard's scan of `bdfs`; the phase's first one uses its early walk of /proc.
fn guard_scan(ctx: &Ctx, key: &VmKey, bdfs: &[Bdf]) -> guard::Report {
    let r = ctx.log.timed(Cat::Guard, "scan", || {
        guard::scan_with(
            ctx.h(),
            bdfs,
            &guard::Opts {
                me: Some(key),
                node: &ctx.node,
                own_processes_hold: false,
            },
            Some(&ctx.prewalk),
        )
    });
    record_prewalk(ctx);
    r
}

/// The early /proc walk a scan used, in the timing breakdown (it ran beside the phase).
fn record_prewalk(ctx: &Ctx) {
    if let Some((t0, t1)) = ctx.prewalk.ran() {
        ctx.log
            .record(Cat::Guard, "early walk of /proc (beside the phase)", t0, t1);
    }
}

/// `early`: a scan of `scanned` made beside the quirk profiles; used when the plan's
/// functions are still those (a profile may add companions: then they are scanned again).
fn guard_plan(
    ctx: &Ctx,
    key: &VmKey,
    vmid: u32,
    devices: &[PlannedDevice],
    handoff: &[Step],
    early: Option<(Vec<Bdf>, guard::Report)>,
) -> Guarded {
    let h = ctx.h();
    let bdfs = guarded_bdfs(devices);
    let users = match early {
        Some((scanned, r)) if scanned == bdfs => r,
        _ => guard_scan(ctx, key, &bdfs),
    };
    ctx.log.debug(&format!(
        "host guard: {} function(s), {} open fd(s) on their nodes, {} user(s), {}",
        bdfs.len(),
        users.nodes_seen.unwrap_or(0),
        users.pairs().count(),
        crate::log::fmt_dur(users.took)
    ));
    let stopped: BTreeSet<String> = handoff
        .iter()
        .filter_map(|s| match s {
            Step::StopUnit { unit } => Some(unit_id(h, unit)),
            _ => None,
        })
        .collect();
    let release_ct =
        matches!(key, VmKey::Pve(_)) && ctx.cfg.vm(vmid).release_containers.unwrap_or(false);
    let mut refusals = Vec::new();
    let mut transient = true;
    let mut containers = BTreeSet::new();
    let mut released = false;
    let mut keys = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    let mut not_released_ct = BTreeSet::new();
    let mut others = BTreeSet::new();
    for (b, u) in users.pairs() {
        // Another VM's pt-hook state is decided under the device locks (prepare), where two
        // racing starts are told apart; here it would only pre-empt that answer.
        if matches!(u, guard::Use::State { .. }) {
            continue;
        }
        let scope = u.process().map(|p| &p.scope);
        let kind = u.kind();
        let ok = match (kind, scope) {
            (guard::Kind::Process, Some(guard::Scope::Unit(unit))) if stopped.contains(unit) => {
                true
            }
            (guard::Kind::Process, Some(guard::Scope::Container(c))) if release_ct => {
                containers.insert(*c);
                true
            }
            _ => false,
        };
        if ok {
            released = true;
            continue;
        }
        let origin = devices
            .iter()
            .find(|d| d.info.bdf == *b)
            .map(|d| d.origin.clone())
            .unwrap_or_default();
        if let Some(k) = config_key(devices, &origin) {
            keys.insert(k);
        }
        kinds.insert(kind);
        match (kind, scope) {
            (guard::Kind::Process, Some(guard::Scope::Container(c))) => {
                not_released_ct.insert(*c);
            }
            (guard::Kind::Process, Some(_)) => {
                others.insert(u.process().map(|p| p.to_string()).unwrap_or_default());
            }
            _ => {}
        }
        transient &= matches!(u, guard::Use::Open { .. });
        refusals.push(format!("{origin} {b}: {u}").trim_start().to_string());
    }
    let mut fixes = Vec::new();
    if !refusals.is_empty() {
        let cfg = match key {
            VmKey::Pve(v) => crate::parse::pve::config::vm_config_path(*v, None)
                .map(|p| h.display(&p))
                .unwrap_or_default(),
            VmKey::Libvirt(_) => String::new(),
        };
        match key {
            VmKey::Pve(_) if !keys.is_empty() => fixes.push(format!(
                "if an address is wrong, fix {} in {cfg} or use a PCI mapping",
                keys.into_iter().collect::<Vec<_>>().join(", ")
            )),
            VmKey::Pve(_) => fixes.push(format!(
                "if an address is wrong, fix the hostpci lines in {cfg} or use a PCI mapping"
            )),
            VmKey::Libvirt(_) => fixes.push(
                "if an address is wrong, fix the <hostdev> source address in the domain XML".into(),
            ),
        }
        if kinds.contains(&guard::Kind::Storage) {
            fixes.push("storage the host uses is never taken: unmount it, swapoff, or stop what is stacked on it first".into());
        }
        if kinds.contains(&guard::Kind::Network) {
            fixes.push(
                "move the host's addresses, routes and bridge ports off the interface first".into(),
            );
        }
        if !not_released_ct.is_empty() {
            let cts = not_released_ct
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(" ");
            fixes.push(match key {
                VmKey::Pve(v) => format!(
                    "stop container {cts} first, or set release_containers = true under [vm.{v}] in {} to have pt-hook stop and restart it",
                    h.display(paths::DEFAULT_CONFIG)
                ),
                VmKey::Libvirt(_) => format!("stop container {cts} first"),
            });
        }
        if !others.is_empty() {
            fixes.push(format!(
                "stop {} first",
                others.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        if kinds.contains(&guard::Kind::Vm) {
            fixes.push("stop the other VM first (or pass it another device)".into());
        }
    }
    Guarded {
        transient: transient && !refusals.is_empty(),
        users,
        refusals,
        fixes,
        containers: containers.into_iter().collect(),
        released,
    }
}

fn plan_resolved(ctx: &Ctx, key: &VmKey, resolved: Vec<Resolved>) -> Result<VmPlan> {
    plan_resolved_with(ctx, key, resolved, None)
}

/// `scanned`: a guard scan started beside resolve, of the functions it names (`plan_vm`),
/// and its join; it is used when those are the functions resolve found (joined after the
/// checks below have started), otherwise they are scanned here.
fn plan_resolved_with(
    ctx: &Ctx,
    key: &VmKey,
    resolved: Vec<Resolved>,
    scanned: Option<(Vec<Bdf>, EarlyScan<'_>)>,
) -> Result<VmPlan> {
    let vmid = key.vmid();
    let mut devices: Vec<PlannedDevice> = resolved.into_iter().map(planned).collect();
    let mut warnings = Vec::new();
    // Before anything else reads or plans a change: what the named addresses hold now. The
    // check only reads (config space, the record): it runs beside the quirk profiles, the
    // console handoff's plan and the guard's scan, which do not depend on it.
    let named = devices.clone();
    let mut id_warnings = Vec::new();
    let (identity, planned) = std::thread::scope(|sc| {
        let id = sc.spawn(|| {
            ctx.log.timed(Cat::Identity, "check", || {
                crate::engine::identity::check(ctx.h(), key, &named, &mut id_warnings)
            })
        });
        // The guard's scan of the named functions (only reads) runs beside the profiles too,
        // unless it already ran beside resolve.
        let want = guarded_bdfs(&named);
        let ready = scanned.filter(|(b, _)| *b == want);
        let early = match ready {
            Some(running) => Ok(running),
            None => Err(sc.spawn(move || {
                let r = guard_scan(ctx, key, &want);
                (want, r)
            })),
        };
        let planned = (|| -> Result<Vec<Step>> {
            ctx.log.timed(Cat::Quirks, "load and match", || {
                crate::engine::quirks::apply_profiles(ctx.h(), ctx.cfg, &mut devices, &mut warnings)
            })?;
            let plan_t = ctx.log.span(Cat::Plan, "console handoff");
            let handoff = crate::engine::handoff::plan(ctx, vmid, &devices, &mut warnings)?;
            drop(plan_t);
            Ok(handoff)
        })();
        let early = match early {
            Ok((bdfs, join)) => (bdfs, join()),
            Err(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
        };
        let planned = planned.map(|handoff| {
            let g = guard_plan(ctx, key, vmid, &devices, &handoff, Some(early));
            (handoff, g)
        });
        let identity = id.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (identity, planned)
    });
    let (handoff, g) = planned?;
    let mut warnings: Vec<String> = id_warnings.into_iter().chain(warnings).collect();
    let _plan_t = ctx.log.span(Cat::Plan, "steps");
    let facts = HostFacts {
        vfio_loaded: ctx
            .h()
            .exists(&format!("{}/{}", paths::PCI_DRIVERS, plan::VFIO)),
    };
    let mut steps = Vec::new();
    warnings.extend(g.users.notes.iter().cloned());
    steps.extend(
        g.containers
            .iter()
            .map(|c| Step::StopContainer { ctid: *c }),
    );
    steps.extend(handoff);
    if g.released {
        steps.push(Step::AwaitFree {
            bdfs: devices
                .iter()
                .filter(|d| !d.keep)
                .map(|d| d.info.bdf)
                .collect(),
        });
    }
    steps.extend(plan::pre_start_steps(&devices, &facts));
    let mut post_stop: Vec<String> = Vec::new();
    let active: Vec<&PlannedDevice> = devices.iter().filter(|d| !d.keep).collect();
    let list = |ds: &[&PlannedDevice]| {
        ds.iter()
            .map(|d| d.info.bdf.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let reset_on = ctx.cfg.vm(vmid).resets_on_stop();
    if !active.is_empty() && reset_on {
        // The functions going back to a host driver are held at D0 through the reset
        // (`reset::hold_d0`).
        let held: Vec<&PlannedDevice> = active
            .iter()
            .copied()
            .filter(|d| d.info.driver.as_deref().is_some_and(|o| o != plan::VFIO))
            // A profile's own power/control pin (Blackwell) stays: nothing to hold.
            .filter(|d| !d.power.iter().any(|(f, _)| f == "power/control"))
            .collect();
        if !held.is_empty() {
            post_stop.push(format!(
                "power/control on (held at D0 until the unbind) for {}",
                list(&held)
            ));
        }
        post_stop.push(format!("reset and verify {}", list(&active)));
    } else if !active.is_empty() {
        post_stop.push(format!(
            "check config space of {} (no reset: reset_on_stop = false)",
            list(&active)
        ));
    }
    post_stop.extend(plan::restore_steps(&steps).iter().map(|s| s.to_string()));
    for d in &active {
        post_stop.push(format!(
            "{}: verify driver {}",
            d.info.bdf,
            d.info.driver.as_deref().unwrap_or("(none)")
        ));
    }
    Ok(VmPlan {
        vmid,
        devices,
        steps,
        post_stop,
        warnings,
        users: g.users,
        refusals: g.refusals,
        fixes: g.fixes,
        transient: g.transient,
        identity,
    })
}

fn planned(r: Resolved) -> PlannedDevice {
    PlannedDevice {
        info: r.info,
        origin: r.origin,
        keep: r.keep,
        quirk: None,
        reset_method: None,
        power: Vec::new(),
        load_module: None,
        warnings: Vec::new(),
    }
}

/// Per-device flocks, taken in BDF order so two hooks never deadlock.
fn lock_devices(ctx: &Ctx, bdfs: &[Bdf]) -> Result<Vec<Box<dyn LockGuard>>> {
    if ctx.dry_run {
        return Ok(Vec::new());
    }
    let mut v: Vec<Bdf> = bdfs.to_vec();
    v.sort();
    v.dedup();
    let _t = ctx.log.span(Cat::Lock, "device locks");
    let mut guards = Vec::new();
    for b in v {
        let rel = paths::lock_file(&b);
        let g = ctx.h().lock(&rel, ctx.cfg.timeouts.lock).map_err(|e| {
            Error::host(
                b,
                "locking (another pt-hook holds the device)",
                ctx.h().display(&rel),
                e,
            )
        })?;
        guards.push(g);
    }
    Ok(guards)
}

/// pre-start without user hooks (the hookscript goes through `phase::pve`).
#[allow(dead_code)]
pub fn pre_start(ctx: &Ctx, vmid: u32) -> Result<()> {
    let p = plan_vm(ctx, vmid)?;
    prepare(ctx, &VmKey::Pve(vmid), p, &|| plan_vm(ctx, vmid))
}

/// How long pre-start gives open fds (and only those) to close before it refuses: udev
/// probes a disk that has just come back to its driver for a few milliseconds.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// The plan if the guard lets it through, waiting up to `SETTLE` when every user is an
/// open fd; else the refusal.
fn settle(
    ctx: &Ctx,
    key: &VmKey,
    p: VmPlan,
    replan: &dyn Fn() -> Result<VmPlan>,
) -> Result<VmPlan> {
    let Some(e) = p.refusal(key) else {
        return Ok(p);
    };
    if !p.transient {
        return Err(e);
    }
    let mut last = e;
    let got = crate::host::poll_until(SETTLE.min(ctx.cfg.timeouts.phase / 4), || match replan() {
        Ok(q) => match q.refusal(key) {
            None => Some(Ok(q)),
            Some(e) if q.transient => {
                last = e;
                None
            }
            Some(e) => Some(Err(e)),
        },
        Err(e) => Some(Err(e)),
    });
    match got {
        Some(r) => r,
        None => Err(last),
    }
}

/// pre-start for a VM or libvirt domain from its plan; `replan` plans again after an old
/// state was restored.
pub fn prepare(
    ctx: &Ctx,
    key: &VmKey,
    p: VmPlan,
    replan: &dyn Fn() -> Result<VmPlan>,
) -> Result<()> {
    for w in &p.warnings {
        ctx.log.warn(w);
    }
    // Address drift (driver=keep functions included): refused before anything is touched.
    crate::engine::identity::refuse(&p.identity)?;
    // The host guard, before any change: a device the host or another VM uses is refused.
    let p = settle(ctx, key, p, replan)?;
    let active: Vec<&PlannedDevice> = p.devices.iter().filter(|d| !d.keep).collect();
    for d in p.devices.iter().filter(|d| d.keep) {
        ctx.log
            .info(&format!("{}: driver=keep, leaving it alone", d.info.bdf));
    }
    if active.is_empty() {
        ctx.log.info("no PCI devices to prepare");
        crate::engine::identity::remember(ctx, key, &p.identity);
        return Ok(());
    }
    let bdfs: Vec<Bdf> = active.iter().map(|d| d.info.bdf).collect();
    let _locks = lock_devices(ctx, &bdfs)?;
    let others_t = ctx.log.span(Cat::State, "other VMs' state");
    for b in &bdfs {
        if let Some(owner) = state::owner_of(ctx.h(), b, key) {
            // cleanup leaves a running VM or domain alone: only a stopped one's leftover
            // state is something `pt-hook cleanup` gives back.
            let fix = match state::running(ctx.h(), &owner) {
                Some(pid) => format!("it is running (QEMU pid {pid}): stop it first"),
                None => format!(
                    "it is not running: `{}` gives back what its start left behind",
                    owner.cleanup_hint()
                ),
            };
            return Err(Error::Failed(format!(
                "{b}: in use by {owner} (state {}); {fix}",
                ctx.h().display(&owner.state_file()),
            )));
        }
    }
    let old = state::load(ctx.h(), key);
    drop(others_t);
    let p = if let Some(old) = old? {
        if let Some(pid) = state::running(ctx.h(), key) {
            return Err(Error::Failed(format!(
                "{key} is running (QEMU pid {pid}) and already holds its devices"
            )));
        }
        ctx.log.warn(&format!(
            "found state of an earlier pre-start (pid {}, phase {}) without post-stop: restoring the host first",
            old.pid, old.phase
        ));
        if ctx.dry_run {
            println!("dry-run: would restore the earlier state first; the plan below assumes the current host state");
            p
        } else {
            restore(ctx, old, false)?;
            // The host changed: plan again from what it is now.
            let p = replan()?;
            crate::engine::identity::refuse(&p.identity)?;
            settle(ctx, key, p, replan)?
        }
    } else {
        p
    };
    let active: Vec<PlannedDevice> = p.devices.iter().filter(|d| !d.keep).cloned().collect();
    let records = active
        .iter()
        .map(|d| DeviceRecord {
            original: d.info.clone(),
            origin: d.origin.clone(),
            quirk: d.quirk.clone(),
        })
        .collect();
    let mut st = VmState::for_key(key, records);
    let exec = ctx.exec();
    if ctx.dry_run {
        println!(
            "dry-run: write state {}",
            ctx.h().display(&key.state_file())
        );
        for s in &p.steps {
            exec.apply(s)?;
        }
        crate::engine::identity::remember(ctx, key, &p.identity);
        return Ok(());
    }
    // The state is first written with the first batch (below): nothing changes before it.
    // What the addresses hold is remembered beside the kernel's work (the identity check
    // passed above; it is the hardware as it is, whatever the start's outcome).
    let steps = |st: &mut VmState| -> Result<()> {
        // Write-ahead: a batch is in the journal before any of its steps runs; every inverse is
        // idempotent, so undoing a step that never ran is harmless.
        for batch in plan::batches(&p.steps) {
            st.journal.extend(batch.iter().cloned());
            let r = save(ctx, st).and_then(|_| {
                crash_point()?;
                exec.apply_batch(&batch)?;
                crash_point()
            });
            if let Err(e) = r {
                #[cfg(test)]
                if matches!(&e, Error::SimulatedCrash) {
                    // The process "died" here: no rollback, the state file is all that is left.
                    return Err(e);
                }
                ctx.log
                    .error(&format!("pre-start failed: {e}; rolling back"));
                // A write that timed out is still pending in the kernel and may take effect after
                // the rollback: keep the record so `cleanup` can undo it then.
                let pending = matches!(&e, Error::Host { err, .. } if err.raw_os_error() == Some(libc::ETIMEDOUT));
                let keep = pending.then(|| st.clone());
                match restore(ctx, st.clone(), false) {
                    Ok(()) if keep.is_some() => {
                        let mut k = keep.expect("checked");
                        k.phase = "rollback-pending".into();
                        save(ctx, &k)?;
                        return Err(Error::Failed(format!(
                        "{e}; rolled back, but the timed-out write may still complete in the kernel: state kept in {}; run `{}` once the device responds",
                        ctx.h().display(&key.state_file()),
                        key.cleanup_hint()
                    )));
                    }
                    Ok(()) => ctx.log.info("rollback complete: the host is as it was"),
                    Err(re) => {
                        return Err(Error::Failed(format!(
                            "{e}; rollback incomplete: {re}; run `{}`",
                            key.cleanup_hint()
                        )))
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    };
    // Only a record that changes is written (most starts find what the last one did: then
    // there is nothing to do and no thread to start).
    std::thread::scope(|sc| {
        if p.identity.changes_record(key) {
            sc.spawn(|| {
                ctx.log.timed(Cat::Identity, "remember", || {
                    crate::engine::identity::remember(ctx, key, &p.identity)
                })
            });
        }
        steps(&mut st)
    })?;
    st.phase = "prepared".into();
    save(ctx, &st)?;
    ctx.log.info(&format!(
        "{} device(s) on vfio-pci: {}",
        bdfs.len(),
        bdfs.iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    Ok(())
}

/// post-stop and cleanup: reset (post-stop), undo the journal, verify, drop the state.
#[allow(dead_code)]
pub fn post_stop(ctx: &Ctx, vmid: u32, with_reset: bool) -> Result<()> {
    post_stop_key(ctx, &VmKey::Pve(vmid), with_reset)
}

pub fn post_stop_key(ctx: &Ctx, key: &VmKey, with_reset: bool) -> Result<()> {
    post_stop_loaded(ctx, key, load_state(ctx, key), with_reset)
}

/// The VM's state, read (and timed) once for a post-stop.
pub fn load_state(ctx: &Ctx, key: &VmKey) -> Result<Option<VmState>> {
    ctx.log
        .timed(Cat::State, "read", || state::load(ctx.h(), key))
}

/// `post_stop_key` with the state already read (`load_state`).
pub fn post_stop_loaded(
    ctx: &Ctx,
    key: &VmKey,
    loaded: Result<Option<VmState>>,
    with_reset: bool,
) -> Result<()> {
    let Some(st) = loaded? else {
        ctx.log
            .info(&format!("no pt-hook state for {key}: nothing to restore"));
        return Ok(());
    };
    let _locks = lock_devices(ctx, &st.bdfs())?;
    restore(ctx, st, with_reset)
}

/// Puts the host back as the state records it. Undo steps run in reverse order and each is
/// idempotent, so a journal cut short by a crash replays safely. Devices whose reset failed
/// stay on vfio-pci (safe) and keep their state; the result is then exit 3.
pub fn restore(ctx: &Ctx, mut st: VmState, with_reset: bool) -> Result<()> {
    let key = st.key();
    if ctx.dry_run {
        for s in plan::restore_steps(&st.journal) {
            println!("dry-run: {s}");
        }
        return Ok(());
    }
    let exec = ctx.exec();
    // The functions the reset holds at D0 (`reset::hold_d0`): each one with a host driver to
    // go back to. `hold_d0` writes only those still on vfio-pci with "auto", so one already
    // back on its host driver (below) is left alone.
    let resets = with_reset && ctx.cfg.vm(st.vmid).resets_on_stop();
    let d0: Vec<Bdf> = if resets {
        st.devices
            .iter()
            .filter(|d| {
                d.original
                    .driver
                    .as_deref()
                    .is_some_and(|o| o != plan::VFIO)
            })
            .map(|d| d.original.bdf)
            .collect()
    } else {
        Vec::new()
    };
    // The holds start first, one thread per function (the ladder waits for them); the quirk
    // profiles load, and the guard waits for the devices to be free, meanwhile.
    let (back, free, (profiles, memory), held) = std::thread::scope(|sc| {
        let deadline = exec.deadline;
        let holds: Vec<_> = d0
            .iter()
            .map(|b| sc.spawn(move || crate::engine::reset::hold_d0(ctx, b, deadline)))
            .collect();
        // A function already back on the host driver it had (a late bind that finished after
        // an earlier post-stop gave up) is verified below and never reset: a reset under a
        // bound host driver can wedge it (a NIC then blocks `ip link` under the RTNL lock).
        let back_t = ctx
            .log
            .span(Cat::Verify, "already back on the host driver?");
        let back: Vec<Bdf> = st
            .devices
            .iter()
            .filter(|d| {
                let b = d.original.bdf;
                d.original.driver.as_deref().is_some_and(|o| {
                    o != plan::VFIO && device::driver_of(ctx.h(), &b).as_deref() == Some(o)
                })
            })
            .map(|d| d.original.bdf)
            .collect();
        drop(back_t);
        for b in &back {
            ctx.log.info(&format!(
                "{b}: already back on its host driver: verifying it, not resetting it"
            ));
        }
        // Only devices pre-start recorded a profile for use one (by its name): with none,
        // there is nothing to parse. The ladder's reset memory is read here too.
        let need = st.devices.iter().any(|d| d.quirk.is_some());
        let q = sc.spawn(move || {
            let memory = resets.then(|| crate::engine::reset::load_memory(ctx));
            if !need {
                return (Vec::new(), memory);
            }
            let profiles = ctx.log.timed(Cat::Quirks, "load", || {
                crate::engine::quirks::load_all(ctx.h(), ctx.cfg)
                    .unwrap_or_else(|_| crate::engine::quirks::builtin())
            });
            (profiles, memory)
        });
        // The state says post-stop before anything is reset (written while the functions
        // resume).
        let free = wait_for_holders(ctx, &exec, &mut st, &back).and_then(|()| {
            st.phase = "post-stop".into();
            st.pid = std::process::id();
            save(ctx, &st)
        });
        let held: Vec<Bdf> = holds
            .into_iter()
            .filter_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect();
        (
            back,
            free,
            q.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            held,
        )
    });
    if let Err(e) = free {
        // Nothing is reset: the functions stay on vfio-pci as they were.
        crate::engine::reset::release_d0(ctx, &held, exec.deadline);
        return Err(e);
    }
    // An earlier "unrecovered" device that is present again was reset once more just now
    // (post_stop_reset): it stays unrecovered only if that failed too.
    let unrecovered: Vec<Bdf> = if with_reset {
        st.unrecovered
            .iter()
            .copied()
            .filter(|b| !device::exists(ctx.h(), b))
            .collect()
    } else {
        st.unrecovered.clone()
    };
    // The restore's batches (see `plan::batches`). The first, when it only moves devices
    // (the usual post-stop: unbind from vfio-pci, driver_override, bind back), runs for the
    // functions of each bus as soon as that bus's resets are done, while other buses are
    // still resetting; with no batch after it, each device is verified right after its own
    // steps. Functions of an unrecovered slot stay together on vfio-pci.
    let stages = plan::batches(&plan::restore_steps(&st.journal));
    let early: Vec<Step> = match stages.first() {
        Some(b) if with_reset && b.iter().all(|s| s.bdf().is_some()) => b.clone(),
        _ => Vec::new(),
    };
    let rest = &stages[usize::from(!early.is_empty())..];
    let verify_early = !early.is_empty() && rest.is_empty();
    let held_in = |unrec: &[Bdf], b: &Bdf| unrec.iter().any(|u| u.slot() == b.slot());
    let progress = std::sync::Mutex::new(Progress {
        unrecovered,
        ..Progress::default()
    });
    let lock = || progress.lock().unwrap_or_else(|p| p.into_inner());
    let restore_now = |bdfs: &[Bdf]| {
        let unrec = lock().unrecovered.clone();
        let mine: Vec<Bdf> = bdfs
            .iter()
            .copied()
            .filter(|b| !held_in(&unrec, b))
            .collect();
        let batch: Vec<Step> = early
            .iter()
            .filter(|s| s.bdf().is_some_and(|b| mine.contains(&b)))
            .cloned()
            .collect();
        let mut done = Progress::default();
        // Each step of a batch on its own: one failure must not hide the others.
        for (s, r) in batch.iter().zip(exec.apply_each(&batch)) {
            if let Err(e) = r {
                done.failed.push(e.to_string());
                done.undo_failed.extend(s.bdf());
            }
        }
        if verify_early {
            for d in st.devices.iter().filter(|d| mine.contains(&d.original.bdf)) {
                verify_restored(ctx, &exec, &profiles, d, &mut done.failed);
                done.verified.push(d.original.bdf);
            }
        }
        done.ran = mine;
        lock().add(done);
    };
    if with_reset {
        let bus_done = |funcs: &[Bdf], bad: &[(Bdf, String)]| {
            {
                let mut p = lock();
                for (b, _) in bad {
                    if !p.unrecovered.contains(b) {
                        p.unrecovered.push(*b);
                    }
                }
            }
            if !early.is_empty() {
                restore_now(funcs);
            }
        };
        let outcome = crate::engine::reset::post_stop_reset(
            ctx, &st, &profiles, &back, &held, memory, &bus_done,
        );
        let mut p = lock();
        for (b, msg) in outcome.failed {
            ctx.log.error(&format!(
                "{b}: {msg}; leaving it on vfio-pci (safe); it needs a host reboot or power cycle"
            ));
            if !p.unrecovered.contains(&b) {
                p.unrecovered.push(b);
            }
        }
    }
    let Progress {
        mut failed,
        mut undo_failed,
        unrecovered,
        ran,
        verified,
    } = progress.into_inner().unwrap_or_else(|p| p.into_inner());
    let held = |b: &Bdf| held_in(&unrecovered, b);
    // What did not run yet: the first batch's steps of devices no bus finished (not reset:
    // already back, or no reset), then every later batch.
    let left: Vec<Step> = early
        .iter()
        .filter(|s| s.bdf().is_some_and(|b| !ran.contains(&b)))
        .cloned()
        .collect();
    let todo: Vec<Step> = rest.iter().flatten().cloned().collect::<Vec<Step>>();
    for batch in [left, todo].iter().flat_map(|l| {
        let l: Vec<Step> = l
            .iter()
            .filter(|s| !s.bdf().is_some_and(|b| held(&b)))
            .cloned()
            .collect();
        plan::batches(&l)
    }) {
        for (s, r) in batch.iter().zip(exec.apply_each(&batch)) {
            if let Err(e) = r {
                failed.push(e.to_string());
                undo_failed.extend(s.bdf());
            }
        }
    }
    for d in &st.devices {
        if held(&d.original.bdf) || verified.contains(&d.original.bdf) {
            continue;
        }
        verify_restored(ctx, &exec, &profiles, d, &mut failed);
    }
    if !unrecovered.is_empty() {
        st.unrecovered = unrecovered.clone();
        st.journal.retain(|s| s.bdf().is_some_and(|b| held(&b)));
        st.devices.retain(|d| held(&d.original.bdf));
        st.phase = "unrecovered".into();
        save(ctx, &st)?;
        return Err(Error::NeedsReboot(format!(
            "{key}: {} did not recover from reset and stay on vfio-pci; {}host reboot (or power cycle) needed",
            unrecovered.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(" "),
            if failed.is_empty() { String::new() } else { format!("also: {}; ", failed.join("; ")) }
        )));
    }
    if !failed.is_empty() {
        // Keep only what is not back: a later cleanup must not reset (or touch) devices
        // already returned to their host drivers and in use there.
        let h = ctx.h();
        let back = |d: &DeviceRecord| {
            let b = d.original.bdf;
            !undo_failed.contains(&b)
                && device::exists(h, &b)
                && device::driver_of(h, &b) == d.original.driver
                && device::override_of(h, &b) == d.original.driver_override
                && (d.original.reset_method.is_none()
                    || device::reset_method_of(h, &b) == d.original.reset_method)
        };
        let left: Vec<Bdf> = st
            .devices
            .iter()
            .filter(|d| !back(d))
            .map(|d| d.original.bdf)
            .collect();
        st.devices.retain(|d| left.contains(&d.original.bdf));
        st.journal
            .retain(|s| s.bdf().is_none_or(|b| left.contains(&b)));
        st.phase = "restore-failed".into();
        save(ctx, &st)?;
        return Err(Error::Failed(format!(
            "{key}: restore incomplete: {}; state kept in {} for `{}`",
            failed.join("; "),
            ctx.h().display(&key.state_file()),
            key.cleanup_hint()
        )));
    }
    ctx.log
        .timed(Cat::State, "remove", || state::remove(ctx.h(), &key))?;
    ctx.log.info(&format!(
        "{key}: {} device(s) back on their host drivers",
        st.devices.len()
    ));
    Ok(())
}

/// What a restore has done so far (gathered from the buses' threads).
#[derive(Default)]
struct Progress {
    failed: Vec<String>,
    undo_failed: Vec<Bdf>,
    unrecovered: Vec<Bdf>,
    /// Devices whose first-batch steps ran.
    ran: Vec<Bdf>,
    verified: Vec<Bdf>,
}

impl Progress {
    fn add(&mut self, o: Progress) {
        self.failed.extend(o.failed);
        self.undo_failed.extend(o.undo_failed);
        self.ran.extend(o.ran);
        self.verified.extend(o.verified);
    }
}

/// Nothing is reset or unbound while something holds a device: QEMU may still be exiting,
/// so wait (most of the phase), then keep the state and name the holder.
fn wait_for_holders(ctx: &Ctx, exec: &Exec, st: &mut VmState, back: &[Bdf]) -> Result<()> {
    let key = st.key();
    let check: Vec<Bdf> = st
        .bdfs()
        .into_iter()
        .filter(|b| !back.contains(b) && device::exists(ctx.h(), b))
        .collect();
    if !check.is_empty() {
        let phase = ctx.cfg.timeouts.phase;
        let wait = phase.saturating_sub((phase / 4).min(std::time::Duration::from_secs(30)));
        let _t = ctx.log.span(Cat::Guard, "scan, wait until free");
        let left = guard::wait_free(
            ctx.h(),
            &check,
            &guard::Opts {
                me: Some(&key),
                node: &ctx.node,
                own_processes_hold: true,
            },
            wait.min(
                exec.deadline
                    .saturating_duration_since(std::time::Instant::now()),
            ),
            Some(&ctx.prewalk),
        );
        record_prewalk(ctx);
        if !left.is_clear() {
            st.phase = "held".into();
            save(ctx, st)?;
            return Err(Error::Failed(format!(
                "{key}: {} after {}; nothing was reset or unbound; state kept in {}; run `{}` once it is released",
                left.lines().join("; "),
                humantime::format_duration(wait),
                ctx.h().display(&key.state_file()),
                key.cleanup_hint()
            )));
        }
    }
    Ok(())
}

/// Whether a restored device is back as it was: driver, driver_override, reset_method.
fn verify_restored(
    ctx: &Ctx,
    exec: &Exec,
    profiles: &[crate::engine::quirks::Profile],
    d: &DeviceRecord,
    failed: &mut Vec<String>,
) {
    let b = d.original.bdf;
    let want = d.original.driver.as_deref();
    let _t = ctx.log.span(Cat::Verify, format!("{b} back as it was"));
    if !device::exists(ctx.h(), &b) {
        failed.push(format!(
            "{b}: device is gone from {}",
            ctx.h().display(&paths::dev_dir(&b))
        ));
        return;
    }
    // A host-rebind profile: the host driver's probe is the reset, and it takes a while.
    let wait = d
        .quirk
        .as_deref()
        .and_then(|q| crate::engine::quirks::by_name(profiles, q))
        .and_then(|p| p.rebind_wait())
        .unwrap_or(ctx.cfg.timeouts.driver_bind)
        .max(ctx.cfg.timeouts.driver_bind);
    if let Err(e) = exec.wait_driver_as(Cat::Verify, &b, want, wait) {
        failed.push(e.to_string());
    }
    let ov = device::override_of(ctx.h(), &b);
    if ov != d.original.driver_override {
        failed.push(format!(
            "{b}: driver_override is {:?}, was {:?}",
            ov, d.original.driver_override
        ));
    }
    if let Some(orig) = &d.original.reset_method {
        let mut rm = device::reset_method_of(ctx.h(), &b);
        if rm.as_ref() != Some(orig) {
            // Re-enumeration (remove/rescan, a vanished device back) resets the list to
            // the kernel's default: put the recorded one back.
            let _ = exec.write(
                &b,
                &paths::dev(&b, crate::host::paths::DevFile::ResetMethod),
                device::reset_method_data(orig),
                ctx.cfg.timeouts.step,
            );
            rm = device::reset_method_of(ctx.h(), &b);
        }
        if rm.is_none() {
            // No reset_method file: the kernel re-enumerated the device (remove/rescan,
            // surprise removal) and now offers no reset method at all (a function that
            // came back beside its sibling loses "bus"). Not pt-hook's change, and nothing
            // pt-hook can write: say so, do not keep the state forever.
            ctx.log.warn(&format!(
                "{b}: reset_method was {orig:?}; after re-enumeration the kernel offers no reset method for it",
            ));
        } else if rm != d.original.reset_method {
            failed.push(format!(
                "{b}: reset_method is {:?}, was {:?}",
                rm, d.original.reset_method
            ));
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Tests set this to N to make pre-start "die" at its Nth step boundary.
    pub static CRASH_AT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// A step boundary. In tests it can simulate the process being killed there.
fn crash_point() -> Result<()> {
    #[cfg(test)]
    {
        let hit = CRASH_AT.with(|c| match c.get() {
            Some(0) => true,
            Some(n) => {
                c.set(Some(n - 1));
                false
            }
            None => false,
        });
        if hit {
            CRASH_AT.with(|c| c.set(None));
            return Err(Error::SimulatedCrash);
        }
    }
    Ok(())
}
