//! `pt-hook reset BDF…`: the escalation ladder on devices nobody uses, and its report.

use std::sync::Arc;

use crate::engine::ctx::Ctx;
use crate::engine::reset::{self, Mode, Verdict};
use crate::error::{Error, Result};
use crate::host::{paths, Host};
use crate::log::Cat;
use crate::pci::Bdf;
use crate::sysfs::device;

/// `pt-hook reset BDF…`
pub fn command(ctx: &Ctx, bdfs: &[Bdf], method: Option<&str>, json: bool) -> Result<()> {
    if let Some(m) = method {
        use crate::pci::RESET_METHODS as KNOWN;
        if !KNOWN.contains(&m) {
            return Err(Error::Usage(format!(
                "unknown reset method {m:?}; the kernel knows {}",
                KNOWN.join(", ")
            )));
        }
    }
    if let Some(b) = bdfs.iter().find(|b| !device::exists(&*ctx.host, b)) {
        return Err(no_such_device(ctx, b));
    }
    // Never reset what the host or a running VM uses. pt-hook's own state of a stopped VM
    // is not a user: resetting its devices is what this command is for. The scan (its walk
    // of /proc started with the process, `guard::PreWalk`) runs beside what the checks here
    // and the ladder read first (only reads): each device, the VMs' state, the quirk
    // profiles, the reset memory. Nothing is written before the scan is clear.
    let (users, read) = std::thread::scope(|s| {
        let scan = s.spawn(|| {
            ctx.log.timed(Cat::Guard, "scan", || {
                crate::engine::guard::scan_with(
                    &*ctx.host,
                    bdfs,
                    &crate::engine::guard::Opts {
                        me: None,
                        node: &ctx.node,
                        own_processes_hold: false,
                    },
                    Some(&ctx.prewalk),
                )
            })
        });
        let read = read_devices(ctx, bdfs).and_then(|infos| {
            let prepared = prepare(ctx, &infos, method)?;
            Ok((infos, prepared))
        });
        let users = scan.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (users, read)
    });
    // A usage error first (nothing was touched either way), then what the guard found.
    let (infos, (owned, quirks)) = match read {
        Err(e @ Error::Usage(_)) => return Err(e),
        r => {
            users_ok(&users)?;
            r?
        }
    };
    if ctx.dry_run {
        for b in bdfs {
            println!("dry-run: would reset {b} (function reset, then bus reset, then remove+rescan, checking after each)");
        }
        return Ok(());
    }
    run(ctx, &infos, method, json, &owned, quirks)
}

/// Each device read once (the checks here, the quirk profiles and the ladder use it); a
/// bridge is refused.
fn read_devices(ctx: &Ctx, bdfs: &[Bdf]) -> Result<Vec<device::DeviceInfo>> {
    let mut infos = Vec::new();
    for b in bdfs {
        let Some(info) = device::read_for_ladder(&*ctx.host, b) else {
            return Err(no_such_device(ctx, b));
        };
        if info.is_bridge() {
            return Err(Error::Usage(format!(
                "{b} is a PCI bridge; name the device below it"
            )));
        }
        infos.push(info);
    }
    Ok(infos)
}

fn no_such_device(ctx: &Ctx, b: &Bdf) -> Error {
    Error::Usage(format!(
        "{b}: no such PCI device ({})",
        ctx.host.display(&paths::dev_dir(b))
    ))
}

/// Refuses what the guard found in use (a stopped VM's own state is not a user).
fn users_ok(users: &crate::engine::guard::Report) -> Result<()> {
    let refused: Vec<String> = users
        .pairs()
        .filter(|(_, u)| !matches!(u, crate::engine::guard::Use::State { .. }))
        .map(|(b, u)| format!("{b}: {u}"))
        .collect();
    if !refused.is_empty() {
        return Err(Error::Failed(format!(
            "not resetting devices in use, nothing was changed: {}",
            refused.join("; ")
        )));
    }
    Ok(())
}

/// What the ladder needs before its first rung, read while the guard scans: the devices
/// asked for plus whatever a VM's state says belongs with them, the quirk profiles' changes
/// to the ladder, the reset memory, and each function as the ladder starts from it (`infos`
/// were just read: config space and serials are added).
fn prepare(
    ctx: &Ctx,
    infos: &[device::DeviceInfo],
    method: Option<&str>,
) -> Result<(Vec<Bdf>, reset::LadderQuirks)> {
    let mut owned: Vec<Bdf> = infos.iter().map(|i| i.bdf).collect();
    let state_t = ctx.log.span(Cat::State, "VMs' state");
    // Every VM's state (a key no VM has excludes none).
    let states =
        crate::engine::state::Others::load(&*ctx.host, &crate::engine::state::VmKey::Pve(u32::MAX));
    for i in infos {
        for st in states.readable().filter(|st| st.owns(&i.bdf)) {
            owned.extend(st.bdfs());
        }
    }
    drop(state_t);
    let quirks_t = ctx.log.span(Cat::Quirks, "load and match");
    let vendors: Vec<u16> = infos.iter().map(|i| i.vendor).collect();
    let all = crate::engine::quirks::load_for(&*ctx.host, ctx.cfg, &vendors)?;
    let mut quirks = reset::LadderQuirks::default();
    if method.is_none() {
        for info in infos {
            if let Some(p) = crate::engine::quirks::find(&all, info) {
                quirks.add(info.bdf, p, None);
            }
        }
    }
    drop(quirks_t);
    quirks.memory = Some(reset::load_memory(ctx));
    let _t = ctx.log.span(Cat::Verify, "read before the ladder");
    quirks.read = infos
        .iter()
        .filter_map(|i| reset::read_before(&*ctx.host, &i.bdf, Some(i.clone())))
        .collect();
    Ok((owned, quirks))
}

/// The ladder and its report (the checks above passed).
fn run(
    ctx: &Ctx,
    infos: &[device::DeviceInfo],
    method: Option<&str>,
    json: bool,
    owned: &[Bdf],
    mut quirks: reset::LadderQuirks,
) -> Result<()> {
    let _keep_alive: Arc<dyn Host> = Arc::clone(&ctx.host);
    let bdfs: Vec<Bdf> = infos.iter().map(|i| i.bdf).collect();
    // The phase's run is recorded with the ladder's (`LadderQuirks::phase`).
    quirks.phase = Some((
        crate::engine::health::Phase::Reset,
        std::time::Instant::now(),
    ));
    let reports = reset::reset_many(ctx, &bdfs, method, Mode::Manual, owned, &quirks);
    // Each device's health as the memory has it now (this reset included); the model is the
    // one read before the ladder.
    let health_t = ctx.log.span(Cat::State, "reset memory: health");
    let memory = crate::engine::health::Memory::load(&*ctx.host);
    let health: Vec<crate::engine::health::DeviceHealth> = reports
        .iter()
        .flat_map(|r| r.facts.iter())
        .filter_map(|f| memory.device_health(&f.bdf, &f.model))
        .collect();
    drop(health_t);
    if json {
        // `timing`: where this call's time went so far (see `log::Timing`).
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "results": reports, "health": health, "timing": ctx.log.timing() })
            )
            .unwrap_or_default()
        );
    } else {
        for r in &reports {
            println!(
                "{}: {} ({} ms): {}",
                reset::list(&r.functions),
                match r.verdict {
                    Verdict::Reset => "reset",
                    Verdict::Refused => "NOT reset",
                    Verdict::Unrecovered => "UNRECOVERED",
                },
                r.ms,
                r.message
            );
            if let Some(m) = &r.memory {
                println!("  reset memory: {m}");
            }
        }
        for h in &health {
            println!("  health: {}: {}", h.bdf, h.summary());
        }
    }
    if let Some(r) = reports.iter().find(|r| r.verdict == Verdict::Unrecovered) {
        return Err(Error::NeedsReboot(r.message.clone()));
    }
    if let Some(r) = reports.iter().find(|r| r.verdict == Verdict::Refused) {
        return Err(Error::Failed(format!(
            "{}: {}",
            reset::list(&r.functions),
            r.message
        )));
    }
    Ok(())
}
