//! The phases as the front-ends run them: pt-hook's own steps (lifecycle) with the user hooks
//! around them. The hookscript, libvirt mode and `cleanup` enter here.

use crate::engine::ctx::Ctx;
use crate::engine::health::Phase;
use crate::engine::lifecycle::{self, VmPlan};
use crate::engine::metrics;
use crate::engine::state::{self, VmKey};
use crate::engine::userhooks;
use crate::error::{Error, Result};
use crate::log::Cat;
use crate::pci::Bdf;

/// The user hooks of a phase, timed.
fn hooks(
    ctx: &Ctx,
    key: &VmKey,
    phase: &str,
    devices: &[Bdf],
    rollback: bool,
) -> (usize, Result<()>) {
    ctx.log.timed(Cat::Hooks, phase, || {
        userhooks::run_hooks(ctx, key, phase, devices, rollback)
    })
}

fn undo_after_failed_start(ctx: &Ctx, key: &VmKey, devices: &[Bdf]) {
    ctx.log.warn(
        "pre-start failed after user pre-start hooks ran: running the post-stop hooks with PT_HOOK_ROLLBACK=1",
    );
    if let (_, Err(e)) = hooks(ctx, key, "post-stop", devices, true) {
        ctx.log.error(&format!("rollback: {e}"));
    }
}

/// pre-start with user hooks around pt-hook's own steps (see the module doc).
pub fn pre_start(
    ctx: &Ctx,
    key: &VmKey,
    p: VmPlan,
    replan: &dyn Fn() -> Result<VmPlan>,
) -> Result<()> {
    // Address drift refuses before the user pre-start hooks change anything either.
    crate::engine::identity::refuse(&p.identity)?;
    ctx.log.timed(Cat::Hooks, "list", || {
        userhooks::PHASES
            .iter()
            .try_for_each(|ph| userhooks::list(ctx.host.as_ref(), ph, ctx.log).map(drop))
    })?;
    let devices: Vec<Bdf> = p
        .devices
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.info.bdf)
        .collect();
    let (ok, r) = hooks(ctx, key, "pre-start", &devices, false);
    if let Err(e) = r {
        if ok > 0 {
            undo_after_failed_start(ctx, key, &devices);
        }
        return Err(e);
    }
    if let Err(e) = lifecycle::prepare(ctx, key, p, replan) {
        if ok > 0 {
            undo_after_failed_start(ctx, key, &devices);
        }
        return Err(e);
    }
    Ok(())
}

/// post-stop: give the devices back, then run the user hooks.
pub fn post_stop(ctx: &Ctx, key: &VmKey) -> Result<()> {
    // One read of the state: its devices for the user hooks, all of it for the restore.
    let loaded = lifecycle::load_state(ctx, key);
    let devices = match &loaded {
        Ok(Some(st)) => st.bdfs(),
        _ => Vec::new(),
    };
    let r = lifecycle::post_stop_loaded(ctx, key, loaded, true);
    let (_, h) = hooks(ctx, key, "post-stop", &devices, false);
    match (r, h) {
        (Err(e), Err(h)) => {
            ctx.log.error(&h.to_string());
            Err(e)
        }
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(())) => Ok(()),
    }
}

/// A Proxmox hookscript phase: `pt-hook <VMID> <PHASE>`. Its duration goes to the reset
/// memory and the metrics (`engine::metrics`).
pub fn pve(ctx: &Ctx, vmid: u32, phase: &str) -> Result<()> {
    match Phase::from_hook(phase) {
        Some(p) => metrics::timed(ctx, p, || pve_steps(ctx, vmid, phase)),
        None => pve_steps(ctx, vmid, phase),
    }
}

fn pve_steps(ctx: &Ctx, vmid: u32, phase: &str) -> Result<()> {
    let key = VmKey::Pve(vmid);
    match phase {
        "pre-start" => {
            let r = lifecycle::plan_vm(ctx, vmid)
                .and_then(|p| pre_start(ctx, &key, p, &|| lifecycle::plan_vm(ctx, vmid)));
            // Whatever the outcome (a failed start rolled back): the fleet view follows.
            crate::engine::fleet::publish_after(ctx, phase);
            r
        }
        "post-stop" => {
            let r = post_stop(ctx, &key);
            crate::engine::fleet::publish_after(ctx, phase);
            r
        }
        "post-start" | "pre-stop" => {
            let devices = userhooks::held_devices(ctx, &key);
            let (n, r) = hooks(ctx, &key, phase, &devices, false);
            if n == 0 && r.is_ok() {
                ctx.log.info("nothing to do in this phase");
            }
            r
        }
        other => {
            ctx.log
                .info(&format!("unknown phase {other:?}: nothing to do"));
            Ok(())
        }
    }
}

/// `pt-hook cleanup [VMID]`: restore what pre-starts left behind without a post-stop.
pub fn cleanup(ctx: &Ctx, vmid: Option<u32>) -> Result<()> {
    metrics::timed(ctx, Phase::Cleanup, || cleanup_steps(ctx, vmid))
}

fn cleanup_steps(ctx: &Ctx, vmid: Option<u32>) -> Result<()> {
    let vms = match vmid {
        Some(v) => vec![VmKey::Pve(v)],
        None => state::list(ctx.h()),
    };
    if vms.is_empty() {
        ctx.log.info("no pt-hook state: nothing to clean up");
    }
    let mut worst: Option<Error> = None;
    for vm in vms {
        if let Some(pid) = state::running(ctx.h(), &vm) {
            ctx.log.warn(&format!(
                "{vm} is running (QEMU pid {pid}): leaving its devices alone"
            ));
            continue;
        }
        // The post-stop that never came: devices back, then the user post-stop hooks.
        match post_stop(ctx, &vm) {
            Ok(()) => {}
            Err(e) => {
                ctx.log.error(&e.to_string());
                if worst.as_ref().is_none_or(|w| e.exit_code() > w.exit_code()) {
                    worst = Some(e);
                }
            }
        }
    }
    // Also at boot (the cleanup unit): the node's inventory is fresh before guests start.
    crate::engine::fleet::publish_after(ctx, "cleanup");
    worst.map_or(Ok(()), Err)
}
