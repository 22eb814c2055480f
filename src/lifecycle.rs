//! The hookscript phases: pre-start takes a VM's devices from the host, post-stop (and
//! cleanup) gives them back from pt-hook's own state.

use std::sync::Arc;

use crate::config::Config;
use crate::device;
use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::host::{paths, Host, LockGuard};
use crate::log::Logger;
use crate::pci::Bdf;
use crate::plan::{self, HostFacts, PlannedDevice, Step};
use crate::resolve::{self, Resolved};
use crate::state::{self, DeviceRecord, VmKey, VmState};

pub struct Ctx<'a> {
    pub host: Arc<dyn Host>,
    pub cfg: &'a Config,
    pub log: &'a Logger,
    pub dry_run: bool,
    pub node: String,
}

impl<'a> Ctx<'a> {
    pub fn exec(&self) -> Exec<'a> {
        Exec::new(
            Arc::clone(&self.host),
            &self.cfg.timeouts,
            self.dry_run,
            self.log,
        )
    }
    fn h(&self) -> &dyn Host {
        &*self.host
    }
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
    pub identity: crate::identity::PlanIdentity,
}

pub fn plan_vm(ctx: &Ctx, vmid: u32) -> Result<VmPlan> {
    let vmcfg = resolve::load_vm_config(ctx.h(), vmid)?;
    let resolved = resolve::resolve(ctx.h(), &vmcfg, &ctx.node, ctx.log)?;
    plan_resolved(ctx, &VmKey::Pve(vmid), resolved)
}

/// The plan for an explicit list of functions (libvirt hostdevs): same steps as `plan_vm`.
/// `key.vmid()` selects `[vm.N]` options (0, the defaults, for a libvirt domain).
pub fn plan_bdfs(ctx: &Ctx, key: &VmKey, bdfs: &[(Bdf, String)]) -> Result<VmPlan> {
    let resolved = resolve::resolve_bdfs(ctx.h(), bdfs)?;
    plan_resolved(ctx, key, resolved)
}

fn plan_resolved(ctx: &Ctx, key: &VmKey, resolved: Vec<Resolved>) -> Result<VmPlan> {
    let vmid = key.vmid();
    let mut devices: Vec<PlannedDevice> = resolved.into_iter().map(planned).collect();
    let mut warnings = Vec::new();
    // Before anything else reads or plans a change: what the named addresses hold now.
    let identity = crate::identity::check(ctx.h(), key, &devices, &mut warnings);
    crate::quirks::apply_profiles(ctx.h(), ctx.cfg, &mut devices, &mut warnings)?;
    let facts = HostFacts {
        vfio_loaded: ctx
            .h()
            .exists(&format!("{}/{}", paths::PCI_DRIVERS, plan::VFIO)),
    };
    let mut steps = Vec::new();
    let handoff = crate::handoff::plan(ctx, vmid, &devices, &mut warnings)?;
    steps.extend(handoff);
    steps.extend(plan::pre_start_steps(&devices, &facts));
    let mut post_stop: Vec<String> = Vec::new();
    let active: Vec<&PlannedDevice> = devices.iter().filter(|d| !d.keep).collect();
    if !active.is_empty() {
        post_stop.push(format!(
            "reset and verify {}",
            active
                .iter()
                .map(|d| d.info.bdf.to_string())
                .collect::<Vec<_>>()
                .join(" ")
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

/// pre-start without user hooks (the hookscript goes through `userhooks::pve_phase`).
#[allow(dead_code)]
pub fn pre_start(ctx: &Ctx, vmid: u32) -> Result<()> {
    let p = plan_vm(ctx, vmid)?;
    prepare(ctx, &VmKey::Pve(vmid), p, &|| plan_vm(ctx, vmid))
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
    crate::identity::refuse(&p.identity)?;
    let active: Vec<&PlannedDevice> = p.devices.iter().filter(|d| !d.keep).collect();
    for d in p.devices.iter().filter(|d| d.keep) {
        ctx.log
            .info(&format!("{}: driver=keep, leaving it alone", d.info.bdf));
    }
    if active.is_empty() {
        ctx.log.info("no PCI devices to prepare");
        crate::identity::remember(ctx, key, &p.identity);
        return Ok(());
    }
    let bdfs: Vec<Bdf> = active.iter().map(|d| d.info.bdf).collect();
    let _locks = lock_devices(ctx, &bdfs)?;
    for b in &bdfs {
        if let Some(owner) = state::owner_of_key(ctx.h(), b, key) {
            return Err(Error::Failed(format!(
                "{b}: in use by {owner} (state {}); stop it or run `{}` first",
                ctx.h().display(&owner.state_file()),
                owner.cleanup_hint()
            )));
        }
    }
    let p = if let Some(old) = state::load_key(ctx.h(), key)? {
        if let Some(pid) = state::key_running(ctx.h(), key) {
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
            crate::identity::refuse(&p.identity)?;
            p
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
        crate::identity::remember(ctx, key, &p.identity);
        return Ok(());
    }
    state::save(ctx.h(), &st)?;
    // Write-ahead: a batch is in the journal before any of its steps runs; every inverse is
    // idempotent, so undoing a step that never ran is harmless.
    for batch in plan::batches(&p.steps) {
        st.journal.extend(batch.iter().cloned());
        let r = state::save(ctx.h(), &st).and_then(|_| {
            crash_point()?;
            exec.apply_batch(&batch)?;
            crash_point()
        });
        if let Err(e) = r {
            if matches!(&e, Error::Failed(m) if m == SIMULATED_CRASH) {
                // The process "died" here: no rollback, the state file is all that is left.
                return Err(e);
            }
            ctx.log
                .error(&format!("pre-start failed: {e}; rolling back"));
            // A write that timed out is still pending in the kernel and may take effect after
            // the rollback: keep the record so `cleanup` can undo it then.
            let pending = matches!(&e, Error::Host { err, .. } if err.raw_os_error() == Some(libc::ETIMEDOUT));
            let keep = pending.then(|| st.clone());
            match restore(ctx, st, false) {
                Ok(()) if keep.is_some() => {
                    let mut k = keep.expect("checked");
                    k.phase = "rollback-pending".into();
                    state::save(ctx.h(), &k)?;
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
    st.phase = "prepared".into();
    state::save(ctx.h(), &st)?;
    crate::identity::remember(ctx, key, &p.identity);
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
    let Some(st) = state::load_key(ctx.h(), key)? else {
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
    st.phase = "post-stop".into();
    st.pid = std::process::id();
    state::save(ctx.h(), &st)?;
    let exec = ctx.exec();
    let profiles =
        crate::quirks::load_all(ctx.h(), ctx.cfg).unwrap_or_else(|_| crate::quirks::builtin());
    let mut failed: Vec<String> = Vec::new();
    // An earlier "unrecovered" device that is present again was reset once more just now
    // (post_stop_reset): it stays unrecovered only if that failed too.
    let mut unrecovered: Vec<Bdf> = if with_reset {
        st.unrecovered
            .iter()
            .copied()
            .filter(|b| !device::exists(ctx.h(), b))
            .collect()
    } else {
        st.unrecovered.clone()
    };
    if with_reset {
        let outcome = crate::reset::post_stop_reset(ctx, &st, &profiles);
        for (b, msg) in outcome.failed {
            ctx.log.error(&format!(
                "{b}: {msg}; leaving it on vfio-pci (safe); it needs a host reboot or power cycle"
            ));
            if !unrecovered.contains(&b) {
                unrecovered.push(b);
            }
        }
    }
    // Functions of an unrecovered slot stay together on vfio-pci.
    let held = |b: &Bdf| unrecovered.iter().any(|u| u.slot() == b.slot());
    let mut undo_failed: Vec<Bdf> = Vec::new();
    let todo: Vec<Step> = plan::restore_steps(&st.journal)
        .into_iter()
        .filter(|s| !s.bdf().is_some_and(|b| held(&b)))
        .collect();
    // Each step of a batch on its own: one failure must not hide the others.
    for batch in plan::batches(&todo) {
        for (s, r) in batch.iter().zip(exec.apply_each(&batch)) {
            if let Err(e) = r {
                failed.push(e.to_string());
                undo_failed.extend(s.bdf());
            }
        }
    }
    for d in &st.devices {
        let b = d.original.bdf;
        if held(&b) {
            continue;
        }
        let want = d.original.driver.as_deref();
        if !device::exists(ctx.h(), &b) {
            failed.push(format!(
                "{b}: device is gone from {}",
                ctx.h().display(&paths::dev_dir(&b))
            ));
            continue;
        }
        // A host-rebind profile: the host driver's probe is the reset, and it takes a while.
        let wait = d
            .quirk
            .as_deref()
            .and_then(|q| crate::quirks::by_name(&profiles, q))
            .and_then(|p| p.rebind_wait())
            .unwrap_or(ctx.cfg.timeouts.driver_bind)
            .max(ctx.cfg.timeouts.driver_bind);
        if let Err(e) = exec.wait_driver(&b, want, wait) {
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
    if !unrecovered.is_empty() {
        st.unrecovered = unrecovered.clone();
        st.journal.retain(|s| s.bdf().is_some_and(|b| held(&b)));
        st.devices.retain(|d| held(&d.original.bdf));
        st.phase = "unrecovered".into();
        state::save(ctx.h(), &st)?;
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
        state::save(ctx.h(), &st)?;
        return Err(Error::Failed(format!(
            "{key}: restore incomplete: {}; state kept in {} for `{}`",
            failed.join("; "),
            ctx.h().display(&key.state_file()),
            key.cleanup_hint()
        )));
    }
    state::remove_key(ctx.h(), &key)?;
    ctx.log.info(&format!(
        "{key}: {} device(s) back on their host drivers",
        st.devices.len()
    ));
    Ok(())
}

/// `pt-hook cleanup [VMID]`: restore what pre-starts left behind without a post-stop.
pub fn cleanup(ctx: &Ctx, vmid: Option<u32>) -> Result<()> {
    let vms = match vmid {
        Some(v) => vec![VmKey::Pve(v)],
        None => state::list_keys(ctx.h()),
    };
    if vms.is_empty() {
        ctx.log.info("no pt-hook state: nothing to clean up");
    }
    let mut worst: Option<Error> = None;
    for vm in vms {
        if let Some(pid) = state::key_running(ctx.h(), &vm) {
            ctx.log.warn(&format!(
                "{vm} is running (QEMU pid {pid}): leaving its devices alone"
            ));
            continue;
        }
        // The post-stop that never came: devices back, then the user post-stop hooks.
        match crate::userhooks::post_stop(ctx, &vm) {
            Ok(()) => {}
            Err(e) => {
                ctx.log.error(&e.to_string());
                if worst.as_ref().is_none_or(|w| e.exit_code() > w.exit_code()) {
                    worst = Some(e);
                }
            }
        }
    }
    worst.map_or(Ok(()), Err)
}

pub const SIMULATED_CRASH: &str = "simulated crash";

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
            return Err(Error::Failed(SIMULATED_CRASH.into()));
        }
    }
    Ok(())
}
