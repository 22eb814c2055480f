//! `pt-hook status --cluster [--free WHAT] [--json]` (every node's passthrough devices, from
//! the inventories in /etc/pve/nodes/*/pt-hook.json) and `pt-hook publish` (write this node's).

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;
use serde_json::json;

use crate::engine::fleet::{self, ClusterView, InvDevice, NodeView, Published, Want};
use crate::error::{Error, Result};
use crate::host::Host;

/// `pt-hook publish`: this node's inventory now. Prints one line: what was written, or why
/// nothing was (no /etc/pve/nodes/<node>).
pub fn publish(host: &dyn Host, phase: &str, dry_run: bool) -> Result<()> {
    let node = host.node_name();
    if dry_run {
        let inv = fleet::build_readonly(host, &node, phase);
        let rel = fleet::inventory_rel(&node).unwrap_or_default();
        match fleet::encode_bounded(&inv, fleet::MAX_INVENTORY_BYTES) {
            Some((bytes, dropped)) => println!(
                "dry-run: would write {} device(s), {} bytes, to {}{}",
                inv.devices.len() - dropped,
                bytes.len(),
                host.display(&rel),
                if dropped > 0 {
                    format!(" ({dropped} left out: size limit)")
                } else {
                    String::new()
                }
            ),
            None => println!("dry-run: the inventory would not fit"),
        }
        return Ok(());
    }
    match fleet::publish(host, &node, phase) {
        Ok(Published::Wrote {
            path,
            devices,
            dropped,
            bytes,
        }) => {
            let left_out = if dropped > 0 {
                format!(
                    "; {dropped} device(s) left out to stay under {} bytes (free GPUs and unnamed vfio-pci devices first)",
                    fleet::MAX_INVENTORY_BYTES
                )
            } else {
                String::new()
            };
            println!("published {devices} device(s), {bytes} bytes, to {path}{left_out}");
            Ok(())
        }
        Ok(Published::NoNodeDir) => {
            println!(
                "not published: {} does not exist (not a Proxmox VE node, or pmxcfs is not mounted)",
                host.display(&format!("etc/pve/nodes/{node}"))
            );
            Ok(())
        }
        Err(e) => Err(Error::Failed(e)),
    }
}

/// "2026-12-02T00:41:05Z (5m ago)".
fn when(reported: u64, now: u64) -> String {
    let t = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(reported));
    format!("{t} ({} ago)", age(now.saturating_sub(reported)))
}

fn age(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// A device's state in the cluster view.
fn device_state(n: &NodeView, d: &InvDevice) -> &'static str {
    if n.stale {
        "stale"
    } else if d.held() {
        "held"
    } else if d.health.as_ref().is_some_and(|h| h.needs_reboot) {
        "needs-reboot"
    } else if d.drift {
        "drift"
    } else if d.owner.is_some() {
        "assigned"
    } else {
        "free"
    }
}

fn node_state(n: &NodeView) -> String {
    match (n.local, n.online) {
        (true, _) => "online(this)".into(),
        (_, Some(true)) => "online".into(),
        (_, Some(false)) => "STALE".into(),
        (_, None) => "unknown".into(),
    }
}

/// Devices of one model over the cluster.
#[derive(Debug, Default, Serialize)]
struct Model {
    id: String,
    name: Option<String>,
    free: Vec<String>,
    held: Vec<String>,
    other: Vec<String>,
    unknown: Vec<String>,
}

fn models(view: &ClusterView, want: Option<&Want>) -> Vec<Model> {
    let mut m: BTreeMap<String, Model> = BTreeMap::new();
    for n in &view.nodes {
        let Some(inv) = &n.inventory else { continue };
        for d in &inv.devices {
            if want.is_some_and(|w| !w.matches(d)) {
                continue;
            }
            // Functions a VM takes along (audio, USB) are counted with their GPU: only
            // function 0 and named devices make the model list.
            if want.is_none() && d.bdf.func != 0 && d.mappings.is_empty() {
                continue;
            }
            let e = m.entry(d.id.clone()).or_insert_with(|| Model {
                id: d.id.clone(),
                name: d.name.clone(),
                ..Model::default()
            });
            let at = format!("{} {}", n.name, d.bdf);
            match device_state(n, d) {
                "stale" => e.unknown.push(format!("{at} (node offline)")),
                "held" => e
                    .held
                    .push(format!("{at} by VM {}", d.owner.as_deref().unwrap_or("?"))),
                "free" => e.free.push(at),
                "assigned" => e.free.push(format!(
                    "{at} (in the config of stopped VM {})",
                    d.owner.as_deref().unwrap_or("?")
                )),
                s => e.other.push(format!("{at} ({s})")),
            }
        }
    }
    m.into_values().collect()
}

fn list(v: &[String]) -> String {
    v.join(", ")
}

/// `status --cluster`.
pub fn status(host: &dyn Host, json_out: bool, free: Option<&str>) -> Result<()> {
    let want = free
        .map(Want::parse)
        .transpose()
        .map_err(|e| Error::Usage(format!("--free: {e}")))?;
    let node = host.node_name();
    let view = fleet::cluster_view(host, &node);
    let now = fleet::now_secs();
    let models = models(&view, want.as_ref());
    let found_free = models.iter().any(|m| !m.free.is_empty());
    if json_out {
        let doc = json!({
            "cluster": view.cluster,
            "quorate": view.quorate,
            "members_error": view.members_error,
            "skipped": view.skipped,
            "nodes": view.nodes.iter().map(|n| json!({
                "name": n.name,
                "local": n.local,
                "online": n.online,
                "stale": n.stale,
                "reported": n.inventory.as_ref().map(|i| i.reported),
                "age_seconds": n.inventory.as_ref().map(|i| now.saturating_sub(i.reported)),
                "error": n.error,
                "dropped": n.inventory.as_ref().map(|i| i.dropped),
                "devices": n.inventory.as_ref().map(|i| i.devices.iter().map(|d| {
                    let mut v = serde_json::to_value(d).unwrap_or_default();
                    v["state"] = json!(device_state(n, d));
                    v
                }).collect::<Vec<_>>()),
            })).collect::<Vec<_>>(),
            "models": models,
            "free": free,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print_text(&view, &models, want.as_ref(), free, now);
    }
    match (free, found_free) {
        (Some(w), false) => Err(Error::Failed(format!(
            "no free device matches {w:?} on an online node"
        ))),
        _ => Ok(()),
    }
}

fn print_text(
    view: &ClusterView,
    models: &[Model],
    want: Option<&Want>,
    free: Option<&str>,
    now: u64,
) {
    let cluster = match (&view.cluster, view.quorate) {
        (Some(c), Some(true)) => format!("cluster {c} (quorate)"),
        (Some(c), Some(false)) => format!("cluster {c} (NOT quorate: /etc/pve is read-only)"),
        (Some(c), None) => format!("cluster {c}"),
        (None, _) => "no cluster (standalone node)".into(),
    };
    println!("{cluster}, {} node(s)", view.nodes.len());
    if let Some(e) = &view.members_error {
        println!("warning: {e}");
    }
    for s in &view.skipped {
        println!(
            "warning: skipped {:?}: not a node name",
            crate::log::escape_controls(s)
        );
    }
    let mut nodes = vec![[
        "NODE", "STATE", "REPORTED", "AGE", "DEVICES", "HELD", "FREE",
    ]
    .map(String::from)];
    for n in &view.nodes {
        let count = |f: fn(&InvDevice) -> bool| -> String {
            match &n.inventory {
                Some(_) if n.stale => "-".into(),
                Some(i) => i.devices.iter().filter(|d| f(d)).count().to_string(),
                None => "-".into(),
            }
        };
        let (rep, ago, devs) = match &n.inventory {
            Some(i) if n.local => ("live".to_string(), "-".to_string(), i.devices.len()),
            Some(i) => (
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(i.reported))
                    .to_string(),
                age(now.saturating_sub(i.reported)),
                i.devices.len(),
            ),
            None => ("-".into(), "-".into(), 0),
        };
        nodes.push([
            n.name.clone(),
            node_state(n),
            rep,
            ago,
            if n.inventory.is_some() {
                devs.to_string()
            } else {
                "-".into()
            },
            count(InvDevice::held),
            count(InvDevice::free),
        ]);
    }
    super::status::print_table(&nodes, &[3, 4, 5, 6]);
    for n in &view.nodes {
        if let Some(e) = &n.error {
            println!("{}: {e}", n.name);
        }
        if n.stale {
            let at = n
                .inventory
                .as_ref()
                .map(|i| format!("its last report, {}", when(i.reported, now)))
                .unwrap_or_else(|| "no report".into());
            println!(
                "{}: offline in /etc/pve/.members: its devices are shown as of {at}, none counts as free",
                n.name
            );
        }
        if let Some(i) = n.inventory.as_ref().filter(|i| i.dropped > 0) {
            println!(
                "{}: {} device(s) left out of its inventory (size limit)",
                n.name, i.dropped
            );
        }
    }
    if want.is_none() {
        let mut rows = vec![[
            "NODE", "BDF", "ID", "DRIVER", "STATE", "VM", "MAPPING", "NAME",
        ]
        .map(String::from)];
        for n in &view.nodes {
            let Some(inv) = &n.inventory else { continue };
            for d in &inv.devices {
                rows.push([
                    n.name.clone(),
                    d.bdf.to_string(),
                    d.id.clone(),
                    d.driver.clone().unwrap_or_else(|| "-".into()),
                    device_state(n, d).to_string(),
                    d.owner
                        .as_deref()
                        .map(crate::log::escape_controls)
                        .unwrap_or_else(|| "-".into()),
                    if d.mappings.is_empty() {
                        "-".into()
                    } else {
                        d.mappings.join(",")
                    },
                    d.name
                        .clone()
                        .unwrap_or_else(|| format!("class {}", d.class)),
                ]);
            }
        }
        println!();
        super::status::print_table(&rows, &[]);
    }
    println!();
    match free {
        Some(w) => println!("where a free {w} is:"),
        None => println!("by model (function 0 and mapped devices):"),
    }
    if models.is_empty() {
        println!("  no device matches");
    }
    for m in models {
        println!(
            "  {} {}: {} free, {} held{}{}",
            m.id,
            m.name.as_deref().unwrap_or(""),
            m.free.len(),
            m.held.len(),
            if m.unknown.is_empty() {
                String::new()
            } else {
                format!(", {} on offline nodes", m.unknown.len())
            },
            if m.other.is_empty() {
                String::new()
            } else {
                format!(", {} unusable", m.other.len())
            },
        );
        for (label, v) in [
            ("free", &m.free),
            ("held", &m.held),
            ("unusable", &m.other),
            ("unknown", &m.unknown),
        ] {
            if !v.is_empty() {
                println!("    {label}: {}", list(v));
            }
        }
    }
}
