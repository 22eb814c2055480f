//! `pt-hook status`: every PCI device, its driver, group, quirk and owner.

use serde_json::json;

use crate::engine::health;
use crate::engine::state::VmKey;
use crate::error::Result;
use crate::host::Host;
use crate::parse::config::Config;
use crate::pci::Bdf;
use crate::sysfs::device::DeviceInfo;

use crate::engine::devices::owner_label;

/// A PCIe link as one field: "16GT/s:x16" (speed as the kernel gives it, "16.0 GT/s PCIe").
fn link_label(speed: Option<&str>, width: Option<&str>) -> String {
    let speed = speed.map(|s| {
        let n = s.split_whitespace().next().unwrap_or("");
        format!("{}GT/s", n.trim_end_matches(".0"))
    });
    match (speed, width) {
        (Some(s), Some(w)) => format!("{s}:x{w}"),
        (None, Some(w)) => format!("x{w}"),
        (Some(s), None) => s,
        _ => "-".into(),
    }
}

/// Prints rows as columns as wide as their widest cell (two spaces between), the last one
/// unpadded; columns in `right` are right-aligned. Cells never hold a space of their own
/// except in the last column, so `awk '{print $N}'` finds column N.
pub(super) fn print_table<const N: usize>(rows: &[[String; N]], right: &[usize]) {
    let mut w = [0usize; N];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == N {
                line.push_str(c);
            } else if right.contains(&i) {
                line.push_str(&format!("{c:>width$}  ", width = w[i]));
            } else {
                line.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

// ---------------------------------------------------------------- health and metrics

/// The reset memory for `status`; a damaged file is a warning on stderr (never fatal).
fn load_health(host: &dyn Host) -> health::Memory {
    let m = health::Memory::load(host);
    if let Some(w) = &m.warning {
        eprintln!("pt-hook: warning: {w}");
    }
    m
}

/// A device's health (its last resets), when the memory has it for the card there now.
fn health_of(memory: &health::Memory, d: &DeviceInfo) -> Option<health::DeviceHealth> {
    memory.device_health(&d.bdf, &health::ModelKey::of(d))
}

/// The `HEALTH:` lines under the table: every device with a reset memory.
fn print_health(memory: &health::Memory, devices: &[&DeviceInfo]) {
    for d in devices {
        if let Some(h) = health_of(memory, d) {
            println!("HEALTH: {} {}: {}", d.bdf, h.id, h.summary());
        }
    }
}

/// `pt-hook status --prometheus`: the node_exporter textfile `metrics_file` gets.
pub fn prometheus(host: &dyn Host) -> Result<()> {
    let m = load_health(host);
    print!(
        "{}",
        crate::engine::metrics::render(host, &m.file, m.boot_id.as_deref())
    );
    Ok(())
}

// ---------------------------------------------------------------- the device table

pub fn command(host: &dyn Host, cfg: &Config, json: bool) -> Result<()> {
    let profiles = crate::engine::quirks::load_all(host, cfg)?;
    let memory = load_health(host);
    let drift = crate::engine::identity::all_drift(host);
    let drift_at = |b: &Bdf| -> Vec<&str> {
        drift
            .iter()
            .filter(|x| x.bdf == *b)
            .map(|x| x.message.as_str())
            .collect()
    };
    let rows: Vec<_> = crate::engine::devices::rows(host, &host.node_name(), &profiles)
        .into_iter()
        .map(|r| (r.dev, r.members, r.quirk, r.owner))
        .collect();
    let want = rows.iter().map(|r| (r.0.vendor, r.0.device)).collect();
    let names = crate::sysfs::pciids::load(host, &want);
    if json {
        let devices: Vec<_> = rows
            .iter()
            .map(|(d, members, quirk, vm)| {
                json!({
                    "bdf": d.bdf,
                    "vendor": d.vendor_hex(),
                    "device": d.device_hex(),
                    "class": d.class_hex(),
                    "vendor_name": names.vendor(d.vendor),
                    "device_name": names.device(d.vendor, d.device),
                    "class_name": names.class(d.class),
                    "driver": d.driver,
                    "driver_override": d.driver_override,
                    "iommu_group": d.iommu_group,
                    "iommu_group_members": members,
                    "reset_methods": d.reset_method.as_ref().map(|r| r.split_whitespace().collect::<Vec<_>>()),
                    "boot_vga": d.boot_vga,
                    "link_speed": d.link_speed,
                    "link_width": d.link_width,
                    "quirk": quirk,
                    // A Proxmox VM id (number), null for a libvirt domain or no owner.
                    "vm": vm.as_ref().and_then(|v| match &v.0 {
                        VmKey::Pve(id) => Some(*id),
                        VmKey::Libvirt(_) => None,
                    }),
                    // Who holds it: "100" or "libvirt:NAME"; null if no one.
                    "owner": vm.as_ref().map(|v| owner_label(&v.0)),
                    "libvirt_uuid": vm.as_ref().and_then(|v| match &v.0 {
                        VmKey::Libvirt(d) => Some(d.uuid.as_str()),
                        VmKey::Pve(_) => None,
                    }),
                    "vm_source": vm.as_ref().map(|v| v.1),
                    // Address drift: a VM's remembered device was another one.
                    "drift": drift_at(&d.bdf),
                    // The reset memory: last reset, rung, time, failures, needs a reboot.
                    "health": health_of(&memory, d),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "pci_ids": names.source,
                "devices": devices,
            }))
            .unwrap_or_default()
        );
        return Ok(());
    }
    let short = |b: &Bdf| {
        let s = b.to_string();
        s.strip_prefix("0000:").map(str::to_string).unwrap_or(s)
    };
    let mut table = vec![[
        "BDF", "ID", "CLASS", "DRIVER", "GROUP", "WITH", "RESET", "LINK", "QUIRK", "VM", "NAME",
    ]
    .map(String::from)];
    for (d, members, quirk, vm) in &rows {
        let with: Vec<String> = members.iter().filter(|m| **m != d.bdf).map(short).collect();
        let name = names
            .describe(d.vendor, d.device)
            .unwrap_or_else(|| names.class(d.class));
        let flags = format!(
            "{}{}",
            if d.boot_vga == Some(true) {
                "[boot_vga] "
            } else {
                ""
            },
            if drift_at(&d.bdf).is_empty() {
                ""
            } else {
                "[DRIFT] "
            },
        );
        let flags = match health_of(&memory, d) {
            Some(h) if h.needs_reboot => format!("{flags}[NEEDS-REBOOT] "),
            _ => flags,
        };
        table.push([
            d.bdf.to_string(),
            format!("{}:{}", d.vendor_hex(), d.device_hex()),
            d.class_hex(),
            d.driver.clone().unwrap_or_else(|| "-".into()),
            d.iommu_group
                .map(|g| g.to_string())
                .unwrap_or_else(|| "-".into()),
            if with.is_empty() {
                "-".into()
            } else {
                with.join(",")
            },
            d.reset_method
                .as_deref()
                .map(|r| if r.is_empty() { "(none)" } else { r })
                .unwrap_or("-")
                .replace(' ', ","),
            link_label(d.link_speed.as_deref(), d.link_width.as_deref()),
            quirk.clone().unwrap_or_else(|| "-".into()),
            vm.as_ref()
                .map(|(v, src)| format!("{}({src})", owner_label(v)))
                .unwrap_or_else(|| "-".into()),
            format!("{flags}{name}"),
        ]);
    }
    print_table(&table, &[4]);
    for x in &drift {
        println!("DRIFT: {}", x.message);
    }
    print_health(&memory, &rows.iter().map(|r| &r.0).collect::<Vec<_>>());
    Ok(())
}
