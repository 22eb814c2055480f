//! `pt-hook plan`: a VM's plan as text or JSON.

use serde_json::json;

use crate::engine::lifecycle;

pub fn plan_json(p: &lifecycle::VmPlan) -> serde_json::Value {
    let devices: Vec<_> = p
        .devices
        .iter()
        .map(|d| {
            json!({
                "bdf": d.info.bdf,
                "vendor": d.info.vendor_hex(),
                "device": d.info.device_hex(),
                "class": d.info.class_hex(),
                "driver": d.info.driver,
                "driver_override": d.info.driver_override,
                "iommu_group": d.info.iommu_group,
                "quirk": d.quirk,
                "reset_method": d.reset_method,
                "current_reset_method": d.info.reset_method,
                "power": d.power.iter().map(|(f, v)| json!({"file": f, "value": v})).collect::<Vec<_>>(),
                "keep": d.keep,
                "origin": d.origin,
                "warnings": d.warnings,
            })
        })
        .collect();
    let steps: Vec<_> = p
        .steps
        .iter()
        .map(|s| {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("description".into(), json!(s.to_string()));
            }
            v
        })
        .collect();
    json!({
        "vmid": p.vmid,
        "devices": devices,
        "steps": steps,
        "post_stop": p.post_stop,
        "warnings": p.warnings,
        "users": p.users.findings,
        "refusals": p.refusals,
        "fixes": p.fixes,
        "drift": p.identity.drift,
    })
}

pub fn print_plan(p: &lifecycle::VmPlan, node: &str) {
    println!("VM {} on node {node}", p.vmid);
    if p.devices.is_empty() {
        println!("  no PCI devices passed through");
        return;
    }
    println!("devices:");
    for d in &p.devices {
        println!(
            "  {}  {}:{}  class {}  driver {:<14} group {:<4} {}{}{}",
            d.info.bdf,
            d.info.vendor_hex(),
            d.info.device_hex(),
            d.info.class_hex(),
            d.info.driver.as_deref().unwrap_or("(none)"),
            d.info
                .iommu_group
                .map(|g| g.to_string())
                .unwrap_or_else(|| "-".into()),
            d.origin,
            if d.keep { "  [driver=keep]" } else { "" },
            d.quirk
                .as_ref()
                .map(|q| format!("  quirk {q}"))
                .unwrap_or_default(),
        );
        if let Some(rm) = &d.reset_method {
            println!("      reset_method -> {rm:?}");
        }
        for w in &d.warnings {
            println!("      warning: {w}");
        }
    }
    if !p.identity.drift.is_empty() {
        println!("address drift: pre-start refuses (exit 1):");
        for d in &p.identity.drift {
            println!("  {}", d.message);
        }
    }
    println!("pre-start:");
    if p.steps.is_empty() {
        println!("  (nothing to do)");
    }
    for (i, s) in p.steps.iter().enumerate() {
        println!("  {:>2}. {s}", i + 1);
    }
    println!("post-stop:");
    for (i, s) in p.post_stop.iter().enumerate() {
        println!("  {:>2}. {s}", i + 1);
    }
    for w in &p.warnings {
        println!("warning: {w}");
    }
    let released: Vec<String> = p
        .users
        .lines()
        .into_iter()
        .filter(|l| !p.refusals.iter().any(|r| r.ends_with(l.as_str())))
        .collect();
    if !released.is_empty() {
        println!("in use, released by the plan:");
        for l in released {
            println!("  {l}");
        }
    }
    if !p.refusals.is_empty() {
        println!("REFUSED: pre-start would change nothing and abort the start; in use:");
        for r in &p.refusals {
            println!("  {r}");
        }
        for f in &p.fixes {
            println!("fix: {f}");
        }
    }
}
