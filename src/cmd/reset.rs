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
    // Each device read once: the checks here and the quirk profiles use it.
    let mut infos = Vec::new();
    for b in bdfs {
        let Some(info) = device::read_for_ladder(&*ctx.host, b) else {
            return Err(Error::Usage(format!(
                "{b}: no such PCI device ({})",
                ctx.host.display(&paths::dev_dir(b))
            )));
        };
        if info.is_bridge() {
            return Err(Error::Usage(format!(
                "{b} is a PCI bridge; name the device below it"
            )));
        }
        infos.push(info);
    }
    // Never reset what the host or a running VM uses. pt-hook's own state of a stopped VM
    // is not a user: resetting its devices is what this command is for.
    let users = ctx.log.timed(Cat::Guard, "scan", || {
        crate::engine::guard::scan(
            &*ctx.host,
            bdfs,
            &crate::engine::guard::Opts {
                me: None,
                node: &ctx.node,
            },
        )
    });
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
    if ctx.dry_run {
        for b in bdfs {
            println!("dry-run: would reset {b} (function reset, then bus reset, then remove+rescan, checking after each)");
        }
        return Ok(());
    }
    // The devices asked for, plus whatever a VM's state says belongs with them.
    let mut owned: Vec<Bdf> = bdfs.to_vec();
    let state_t = ctx.log.span(Cat::State, "VMs' state");
    // Every VM's state (a key no VM has excludes none).
    let states =
        crate::engine::state::Others::load(&*ctx.host, &crate::engine::state::VmKey::Pve(u32::MAX));
    for b in bdfs {
        for st in states.readable().filter(|st| st.owns(b)) {
            owned.extend(st.bdfs());
        }
    }
    drop(state_t);
    crate::engine::metrics::timed(ctx, crate::engine::health::Phase::Reset, || {
        run(ctx, &infos, method, json, &owned)
    })
}

/// The ladder and its report (the checks above passed).
fn run(
    ctx: &Ctx,
    infos: &[device::DeviceInfo],
    method: Option<&str>,
    json: bool,
    owned: &[Bdf],
) -> Result<()> {
    let _keep_alive: Arc<dyn Host> = Arc::clone(&ctx.host);
    let bdfs: Vec<Bdf> = infos.iter().map(|i| i.bdf).collect();
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
