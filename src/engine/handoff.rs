//! Single-GPU console handoff planning: when a VM takes the GPU that drives the host console,
//! the host lets go in order (units, vtconsoles, firmware framebuffer, NVIDIA modules) before
//! the devices move to vfio-pci; post-stop undoes it in reverse from the journal.

use crate::engine::console;
use crate::engine::ctx::Ctx;
use crate::engine::plan::{PlannedDevice, Step};
use crate::error::Result;
use crate::host::{paths, Host};
use crate::parse::config::Handoff;
use crate::sysfs::device::DeviceInfo;

/// Units that hold GPUs: stopped only when running, restarted only if they were.
pub const GPU_UNITS: [&str; 2] = ["display-manager.service", "nvidia-persistenced.service"];
/// The NVIDIA stack, in unload order.
pub const NVIDIA_MODULES: [&str; 4] = ["nvidia_drm", "nvidia_modeset", "nvidia_uvm", "nvidia"];

/// Why a device counts as the host console, or None.
pub fn console_reason(host: &dyn Host, d: &DeviceInfo) -> Option<String> {
    if !d.is_display() {
        return None;
    }
    if d.boot_vga == Some(true) {
        return Some(format!("{} is the boot VGA device", d.bdf));
    }
    // fbcon on a framebuffer that belongs to this device (graphics/fbN under the device).
    let gdir = format!("{}/graphics", paths::dev_dir(&d.bdf));
    let has_fb = host
        .list(&gdir)
        .map(|v| v.iter().any(|n| n.starts_with("fb")))
        .unwrap_or(false);
    if has_fb && !console::fb_vtcons(host).is_empty() {
        return Some(format!("fbcon is bound to a framebuffer of {}", d.bdf));
    }
    None
}

pub fn plan(
    ctx: &Ctx,
    vmid: u32,
    devices: &[PlannedDevice],
    warnings: &mut Vec<String>,
) -> Result<Vec<Step>> {
    let h = &*ctx.host;
    let opts = ctx.cfg.vm(vmid);
    let active: Vec<&PlannedDevice> = devices.iter().filter(|d| !d.keep).collect();
    let reason = active.iter().find_map(|d| console_reason(h, &d.info));
    let wanted = match opts.console_handoff {
        Handoff::Off => {
            if let Some(r) = &reason {
                warnings.push(format!(
                    "{r}, but console_handoff = \"off\" for VM {vmid}: the host keeps its console drivers and the start may fail"
                ));
            }
            false
        }
        Handoff::On => true,
        Handoff::Auto => reason.is_some(),
    };
    if !wanted {
        return Ok(Vec::new());
    }
    ctx.log.info(&format!(
        "console handoff: {}",
        reason.as_deref().unwrap_or("forced on in the config")
    ));
    let mut steps = Vec::new();
    if console::has_systemd(h) {
        let exec = ctx.exec();
        let units: Vec<String> = if opts.units.is_empty() {
            GPU_UNITS.iter().map(|s| s.to_string()).collect()
        } else {
            opts.units.clone()
        };
        for u in units {
            if console::unit_active(&exec, &u) == Some(true) {
                steps.push(Step::StopUnit { unit: u });
            }
        }
    } else {
        ctx.log
            .info("no systemd on this host: no display manager to stop");
    }
    for v in console::fb_vtcons(h) {
        steps.push(Step::Vtcon {
            vtcon: v,
            bind: false,
        });
    }
    for (driver, device) in console::firmware_fbs(h) {
        steps.push(Step::UnbindPlatform { driver, device });
    }
    let uses_nvidia = active
        .iter()
        .any(|d| d.info.driver.as_deref() == Some("nvidia"));
    if uses_nvidia {
        let loaded: Vec<String> = NVIDIA_MODULES
            .iter()
            .filter(|m| paths::module_dir(m).is_some_and(|d| h.exists(&d)))
            .map(|m| m.to_string())
            .collect();
        if !loaded.is_empty() {
            steps.push(Step::UnloadModules { modules: loaded });
        }
    }
    Ok(steps)
}
