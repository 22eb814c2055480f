//! `pt-hook quirks`: the quirk profiles, or the one that applies to a device.

use serde_json::json;

use crate::error::{Error, Result};
use crate::host::Host;
use crate::parse::config::Config;
use crate::pci::Bdf;

pub fn command(host: &dyn Host, cfg: &Config, target: Option<&str>, json: bool) -> Result<()> {
    use crate::engine::quirks;
    use crate::sysfs::device::{self, DeviceInfo};
    let all = quirks::load_all(host, cfg)?;
    let Some(t) = target else {
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "quirks": all })).unwrap_or_default()
            );
        } else {
            for p in &all {
                println!(
                    "{:<22} {}:{}  {}",
                    p.name,
                    p.vendor,
                    p.devices.join(","),
                    p.description
                );
            }
        }
        return Ok(());
    };
    let info: DeviceInfo = if let Some(id) = crate::pci::PciId::parse(t) {
        DeviceInfo {
            bdf: Bdf::parse("0000:00:00.0").map_err(|e| Error::Usage(e.to_string()))?,
            vendor: id.vendor,
            device: id.device,
            subsystem_vendor: None,
            subsystem_device: None,
            class: 0x030000,
            driver: None,
            driver_override: None,
            iommu_group: None,
            reset_method: None,
            has_reset: false,
            boot_vga: None,
            d3cold_allowed: None,
            power_control: None,
            link_speed: None,
            link_width: None,
        }
    } else {
        let b = Bdf::parse(t).map_err(|e| {
            Error::Usage(format!(
                "{e}; expected a device (0000:01:00.0) or an id (10de:2b85)"
            ))
        })?;
        device::read_device(host, &b).ok_or_else(|| {
            Error::Usage(format!(
                "{b}: no such PCI device ({})",
                host.display(&crate::host::paths::dev_dir(&b))
            ))
        })?
    };
    let p = quirks::find(&all, &info);
    let planned = p.and_then(|p| p.planned_reset_method(info.reset_method.as_deref()));
    let missing = p.and_then(|p| quirks::module_missing(host, p));
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "target": t,
                "vendor": info.vendor_hex(),
                "device": info.device_hex(),
                "quirk": p,
                "current_reset_method": info.reset_method,
                "reset_method": planned,
                "missing_module": missing,
            }))
            .unwrap_or_default()
        );
        return Ok(());
    }
    match p {
        None => println!(
            "{t} ({}:{}): no quirk profile; pt-hook uses the kernel's reset methods as they are",
            info.vendor_hex(),
            info.device_hex()
        ),
        Some(p) => {
            println!(
                "{t} ({}:{}): quirk {} ({})",
                info.vendor_hex(),
                info.device_hex(),
                p.name,
                p.source
            );
            println!("  {}", p.description);
            match (&info.reset_method, &planned) {
                (Some(cur), Some(new)) => {
                    println!("  pre-start: reset_method {cur:?} -> {new:?} (restored at post-stop)")
                }
                (_, None) if !p.reset_method.is_empty() || !p.reset_method_remove.is_empty() => {
                    println!(
                        "  pre-start: reset_method: first {:?}, without {:?}",
                        p.reset_method, p.reset_method_remove
                    )
                }
                _ => println!("  pre-start: reset_method left alone"),
            }
            if let Some(v) = &p.d3cold_allowed {
                println!("  pre-start: d3cold_allowed = {v}");
            }
            if let Some(v) = &p.power_control {
                println!("  pre-start: power/control = {v}");
            }
            if !p.skip_rungs.is_empty() {
                println!(
                    "  post-stop: reset ladder skips {}",
                    p.skip_rungs.join(", ")
                );
            }
            if let Some(w) = &p.host_rebind_wait {
                let drv = p
                    .host_driver
                    .clone()
                    .unwrap_or_else(|| "its original host driver".into());
                println!(
                    "  post-stop: host-rebind rung: binds {drv} (its probe is the reset), waits up to {w}, checks the card, then keeps it there if that is its host driver or hands it back to vfio-pci"
                );
            }
            if p.vfio_disable_idle_d3 {
                println!("  advice: load vfio-pci with disable_idle_d3=1 (keeps the card out of D3 while idle)");
            }
            if p.companion {
                println!("  companion function: moves to vfio-pci with its GPU (pt-hook adds it when the VM names only the GPU)");
            }
            if let Some(m) = &missing {
                println!("  MISSING: {m}");
            }
            for w in &p.warnings {
                println!("  warning: {w}");
            }
        }
    }
    Ok(())
}
