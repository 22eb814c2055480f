//! The fleet view: every node publishes a small inventory of its passthrough devices to
//! `/etc/pve/nodes/<node>/pt-hook.json` (pmxcfs replicates it to every node), and
//! `status --cluster` reads them all.
//!
//! Publishing happens after pre-start and post-stop (whatever their outcome), after `cleanup`
//! (which the boot unit runs) and on `pt-hook publish`. It never fails or holds a phase: the
//! whole publish (reading the VM configs and pci.cfg, writing the file) runs in a child
//! process, `pt-hook publish`, that the phase waits for at most [`PUBLISH_TIMEOUT`] and then
//! kills (a request stuck in a hung pmxcfs is killable, FUSE waits for fatal signals). Its
//! failure is one warning line; a host without `/etc/pve` (libvirt, plain Debian) is skipped
//! without starting a child, one with `/etc/pve` but no `/etc/pve/nodes/<node>` (pmxcfs not
//! mounted, or not a Proxmox node) is skipped by the child without a word.
//!
//! The inventory is built by [`build`] from the same device facts `status` shows
//! (`engine::devices`), the address drift records (`engine::identity`) and, per device,
//! [`device_health`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::engine::ctx::Ctx;
use crate::engine::devices::{self, DeviceRow};
use crate::engine::state::{self, VmKey};
use crate::host::Host;
use crate::parse::pve::config::valid_node_name;
use crate::pci::Bdf;

pub const INVENTORY_VERSION: u32 = 1;
pub const INVENTORY_FILE: &str = "pt-hook.json";
/// The largest inventory written. pmxcfs refuses files above `MEMDB_MAX_FILE_SIZE` (128 KiB
/// in older pve-cluster releases, 512 KiB and 1 MiB in later ones: EFBIG) and keeps the
/// whole cluster file system in a small database (30 MiB in the older releases) shared by
/// every node's configs, so the inventory stays far below: at about 250 bytes per device this
/// is some 250 devices. Over it, the least interesting devices are left out (see
/// [`encode_bounded`]) and `dropped` says how many.
pub const MAX_INVENTORY_BYTES: usize = 64 << 10;
/// A peer's file larger than this is not read (a newer pt-hook may write a little more).
pub const MAX_READ_BYTES: usize = 2 * MAX_INVENTORY_BYTES;
/// How long a phase waits for its publish child.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// Reset health of a device, as the inventory carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The last reset left the device in a state only a host reboot fixes.
    #[serde(default)]
    pub needs_reboot: bool,
    /// Failed resets remembered for this device.
    #[serde(default)]
    pub failures: u32,
    /// The rung that recovered it last ("flr", "bus", ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rung: Option<String>,
    /// Seconds since the epoch of its last reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset: Option<u64>,
}

/// One passthrough device of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvDevice {
    pub bdf: Bdf,
    /// vendor:device, "10de:2786".
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsystem: Option<String>,
    /// Class code, "030000".
    pub class: String,
    /// From pci.ids, when the node has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub iommu_group: Option<u32>,
    /// "100" or "libvirt:NAME"; null when no VM names it.
    #[serde(default)]
    pub owner: Option<String>,
    /// The Proxmox VM id of the owner.
    #[serde(default)]
    pub vm: Option<u32>,
    /// "state" (pt-hook holds it for a running or starting VM) or "config" (a VM config names
    /// it).
    #[serde(default)]
    pub owner_source: Option<String>,
    /// The owner's QEMU runs.
    #[serde(default)]
    pub running: bool,
    /// PCI mappings that name it on this node.
    #[serde(default)]
    pub mappings: Vec<String>,
    /// A VM's remembered device at this address was another one (see `pt-hook accept`).
    #[serde(default)]
    pub drift: bool,
    #[serde(default)]
    pub boot_vga: bool,
    #[serde(default)]
    pub health: Option<Health>,
}

impl InvDevice {
    /// A VM has it now: pt-hook's state, or a running VM whose config names it.
    pub fn held(&self) -> bool {
        self.owner_source.as_deref() == Some("state") || self.running
    }
    /// Nobody has it and nothing is wrong with it.
    pub fn free(&self) -> bool {
        !self.held() && !self.drift && !self.health.as_ref().is_some_and(|h| h.needs_reboot)
    }
}

/// `/etc/pve/nodes/<node>/pt-hook.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub version: u32,
    pub node: String,
    /// Seconds since the epoch.
    pub reported: u64,
    /// What wrote it: "pre-start", "post-stop", "cleanup", "publish".
    pub phase: String,
    /// The pt-hook version that wrote it.
    pub pt_hook: String,
    pub devices: Vec<InvDevice>,
    /// Devices left out to stay under [`MAX_INVENTORY_BYTES`].
    #[serde(default)]
    pub dropped: usize,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The reset health of one device, for the inventory. This is the one place the inventory
/// takes health from; it gives nothing until the reset memory (`engine::health`) exists, and
/// is wired to `device_health` when that lands.
pub fn device_health(host: &dyn Host, bdf: &Bdf) -> Option<Health> {
    let _ = (host, bdf);
    None
}

/// Whether a device belongs in the inventory: someone names it (a VM, a mapping), it sits on
/// vfio-pci, or it is a GPU; never a bridge.
fn wanted(r: &DeviceRow) -> bool {
    !r.dev.is_bridge()
        && (r.owner.is_some()
            || !r.mappings.is_empty()
            || r.dev.driver.as_deref() == Some("vfio-pci")
            || r.dev.is_display())
}

/// Which devices stay when the inventory is too large (lower first).
fn keep_rank(d: &InvDevice) -> u8 {
    match (
        d.held(),
        d.owner.is_some(),
        !d.mappings.is_empty(),
        d.driver.as_deref(),
    ) {
        (true, ..) => 0,
        (_, true, ..) => 1,
        (_, _, true, _) => 2,
        (.., Some("vfio-pci")) => 3,
        _ => 4,
    }
}

/// The node's inventory now.
pub fn build(host: &dyn Host, node: &str, phase: &str) -> Inventory {
    let rows: Vec<DeviceRow> = devices::rows(host, &[])
        .into_iter()
        .filter(wanted)
        .collect();
    let drift: BTreeSet<Bdf> = crate::engine::identity::all_drift(host)
        .into_iter()
        .map(|d| d.bdf)
        .collect();
    let want = rows.iter().map(|r| (r.dev.vendor, r.dev.device)).collect();
    let names = crate::sysfs::pciids::load(host, &want);
    let devices = rows
        .into_iter()
        .map(|r| {
            let d = &r.dev;
            let (owner, vm, source, running) = match &r.owner {
                None => (None, None, None, false),
                Some((key, src)) => {
                    let vm = match key {
                        VmKey::Pve(v) => Some(*v),
                        VmKey::Libvirt(_) => None,
                    };
                    // State means pt-hook holds it; a config owner holds it while it runs.
                    let running =
                        *src == "state" || vm.is_some_and(|v| state::vm_running(host, v).is_some());
                    (
                        Some(devices::owner_label(key)),
                        vm,
                        Some(src.to_string()),
                        running,
                    )
                }
            };
            InvDevice {
                bdf: d.bdf,
                id: format!("{}:{}", d.vendor_hex(), d.device_hex()),
                subsystem: d
                    .subsystem_vendor
                    .zip(d.subsystem_device)
                    .map(|(v, s)| format!("{v:04x}:{s:04x}")),
                class: d.class_hex(),
                name: names
                    .describe(d.vendor, d.device)
                    .or_else(|| Some(names.class(d.class))),
                driver: d.driver.clone(),
                iommu_group: d.iommu_group,
                owner,
                vm,
                owner_source: source,
                running,
                mappings: r.mappings.clone(),
                drift: drift.contains(&d.bdf),
                boot_vga: d.boot_vga == Some(true),
                health: device_health(host, &d.bdf),
            }
        })
        .collect();
    Inventory {
        version: INVENTORY_VERSION,
        node: node.to_string(),
        reported: now_secs(),
        phase: phase.to_string(),
        pt_hook: env!("CARGO_PKG_VERSION").to_string(),
        devices,
        dropped: 0,
    }
}

/// The inventory as JSON of at most `max` bytes: when it is larger, devices are left out,
/// the least interesting first (free GPUs, then vfio-pci devices no one names, then mapped
/// ones, then those a VM config names; held devices last), and `dropped` counts them. `None`
/// when even no device at all does not fit.
pub fn encode_bounded(inv: &Inventory, max: usize) -> Option<(Vec<u8>, usize)> {
    let mut inv = inv.clone();
    let total = inv.devices.len();
    let mut order: Vec<usize> = (0..total).collect();
    // Keep first: the lowest rank, then address order.
    order.sort_by_key(|&i| (keep_rank(&inv.devices[i]), inv.devices[i].bdf));
    let all = std::mem::take(&mut inv.devices);
    let mut keep = total;
    loop {
        let mut chosen: Vec<&InvDevice> = order[..keep].iter().map(|&i| &all[i]).collect();
        chosen.sort_by_key(|d| d.bdf);
        inv.devices = chosen.into_iter().cloned().collect();
        inv.dropped = total - keep;
        let mut out = serde_json::to_vec(&inv).ok()?;
        out.push(b'\n');
        if out.len() <= max {
            return Some((out, total - keep));
        }
        if keep == 0 {
            return None;
        }
        // Drop about as many devices as the excess needs, at least one.
        let per = out.len() / (keep + 1).max(1);
        let over = (out.len() - max).div_ceil(per.max(1));
        keep = keep.saturating_sub(over.max(1));
    }
}

/// The path of a node's inventory under the root, for a valid node name.
pub fn inventory_rel(node: &str) -> Option<String> {
    valid_node_name(node).then(|| format!("etc/pve/nodes/{node}/{INVENTORY_FILE}"))
}

/// What [`publish`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Written: devices kept, devices left out, bytes.
    Wrote {
        path: String,
        devices: usize,
        dropped: usize,
        bytes: usize,
    },
    /// Not a Proxmox node (or pmxcfs not mounted): nothing to do, nothing to say.
    NoNodeDir,
}

/// Whether an errno means /etc/pve does not take writes now: pmxcfs without quorum answers
/// EACCES; a read-only mount EROFS; an immutable directory EPERM.
pub fn read_only_errno(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EACCES) | Some(libc::EROFS) | Some(libc::EPERM)
    )
}

/// Builds and writes this node's inventory (the work of `pt-hook publish`, the child each
/// phase starts). Atomic: a temporary file in the same directory, renamed over the old one
/// (pmxcfs renames within a directory); a temporary file a killed publisher left behind is
/// removed.
pub fn publish(host: &dyn Host, node: &str, phase: &str) -> Result<Published, String> {
    let Some(rel) = inventory_rel(node) else {
        return Err(format!(
            "node name {:?} is not a host name: not publishing (set PT_HOOK_NODE)",
            crate::log::escape_controls(node)
        ));
    };
    let dir = format!("etc/pve/nodes/{node}");
    if !host.exists(&dir) {
        return Ok(Published::NoNodeDir);
    }
    let inv = build(host, node, phase);
    let Some((bytes, dropped)) = encode_bounded(&inv, MAX_INVENTORY_BYTES) else {
        return Err(format!(
            "the inventory does not fit in {MAX_INVENTORY_BYTES} bytes: not published"
        ));
    };
    host.write_atomic(&rel, &bytes).map_err(|e| {
        if read_only_errno(&e) {
            format!(
                "{} is read-only ({}; no quorum?): the device inventory was not updated, the last one stays",
                host.display(&dir),
                crate::host::errno_text(&e)
            )
        } else {
            format!(
                "writing {}: {}: the device inventory was not updated",
                host.display(&rel),
                crate::host::errno_text(&e)
            )
        }
    })?;
    // Temporary files of publishers that were killed (`pt-hook.tmp.PID`).
    for f in host.list(&dir).unwrap_or_default() {
        let Some(pid) = f
            .strip_prefix("pt-hook.tmp.")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !host.exists(&format!("proc/{pid}")) {
            let _ = host.remove_file(&format!("{dir}/{f}"));
        }
    }
    Ok(Published::Wrote {
        path: host.display(&rel),
        devices: inv.devices.len() - dropped,
        dropped,
        bytes: bytes.len(),
    })
}

/// After a phase: publish this node's inventory through a bounded child (see the module
/// doc). Never fails; a problem is one warning.
pub fn publish_after(ctx: &Ctx, phase: &str) {
    // Without /etc/pve (a libvirt host, plain Debian) there is nothing to publish to. Listing
    // /etc reads only the local file system, never pmxcfs.
    let has_pve = ctx
        .h()
        .list("etc")
        .map(|l| l.iter().any(|n| n == "pve"))
        .unwrap_or(false);
    if !has_pve {
        return;
    }
    if ctx.dry_run {
        ctx.log.info(&format!(
            "dry-run: would publish the device inventory to /etc/pve/nodes/{}/{INVENTORY_FILE}",
            crate::log::escape_controls(&ctx.node)
        ));
        return;
    }
    let start = std::time::Instant::now();
    let timeout = crate::host::kio::cap(PUBLISH_TIMEOUT);
    let r = ctx.h().run_self(&["publish", "--phase", phase], timeout);
    match r {
        Ok(o) if o.success() => ctx.log.debug(&format!(
            "inventory: {} ({})",
            o.stdout.trim(),
            crate::log::fmt_dur(start.elapsed())
        )),
        Ok(o) => {
            let why = o.stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
            ctx.log.warn(&format!(
                "publishing the device inventory failed: {}",
                crate::log::escape_controls(why.trim())
            ));
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            // A host that cannot start pt-hook again (the simulated kernel): the same work
            // in this process.
            match publish(ctx.h(), &ctx.node, phase) {
                Ok(p) => ctx.log.debug(&format!("inventory: {p:?}")),
                Err(e) => ctx.log.warn(&format!(
                    "publishing the device inventory failed: {e}"
                )),
            }
        }
        Err(e) => ctx.log.warn(&format!(
            "publishing the device inventory to /etc/pve/nodes/{}/{INVENTORY_FILE} gave up after {}: {} (pmxcfs hung?); the phase goes on",
            crate::log::escape_controls(&ctx.node),
            crate::log::fmt_dur(start.elapsed()),
            crate::host::errno_text(&e)
        )),
    }
}

// ---------------------------------------------------------------------------- reading

/// What `status --cluster` knows about one node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub name: String,
    /// This node (its inventory is built live, not read).
    pub local: bool,
    /// From `.members`; None when `.members` does not list it (or could not be read).
    pub online: Option<bool>,
    /// Offline in `.members`: its devices are as of its last report, not free.
    pub stale: bool,
    pub inventory: Option<Inventory>,
    /// Why there is no inventory (not published, unreadable, corrupt).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    pub cluster: Option<String>,
    pub quorate: Option<bool>,
    /// A problem with `.members` (then no node is known to be online or offline).
    pub members_error: Option<String>,
    pub nodes: Vec<NodeView>,
    /// Entries under /etc/pve/nodes/ or in `.members` that are not node names.
    pub skipped: Vec<String>,
}

/// Reads and checks one node's published inventory.
pub fn read_inventory(host: &dyn Host, node: &str) -> Result<Option<Inventory>, String> {
    let Some(rel) = inventory_rel(node) else {
        return Err("not a node name".into());
    };
    if !host.exists(&rel) {
        return Ok(None);
    }
    let bytes = host
        .read_bytes(&rel, MAX_READ_BYTES + 1)
        .map_err(|e| format!("{}: {}", host.display(&rel), crate::host::errno_text(&e)))?;
    if bytes.len() > MAX_READ_BYTES {
        return Err(format!(
            "{}: larger than {MAX_READ_BYTES} bytes: not read",
            host.display(&rel)
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "{}: corrupt (line {}: {e}); it is rewritten at that node's next phase or `pt-hook publish`",
            host.display(&rel),
            e.line()
        )
    })?;
    let version = v.get("version").and_then(|x| x.as_u64()).unwrap_or(0);
    if version != INVENTORY_VERSION as u64 {
        return Err(format!(
            "{}: inventory version {version}, this pt-hook reads version {INVENTORY_VERSION}: update pt-hook on every node",
            host.display(&rel)
        ));
    }
    let inv: Inventory =
        serde_json::from_value(v).map_err(|e| format!("{}: corrupt: {e}", host.display(&rel)))?;
    if inv.node != node {
        return Err(format!(
            "{}: written for node {:?}, not {node}",
            host.display(&rel),
            crate::log::escape_controls(&inv.node)
        ));
    }
    Ok(Some(inv))
}

/// Every node's devices: the local node's live, the others' from their published files.
pub fn cluster_view(host: &dyn Host, local: &str) -> ClusterView {
    let mut view = ClusterView {
        cluster: None,
        quorate: None,
        members_error: None,
        nodes: Vec::new(),
        skipped: Vec::new(),
    };
    let members = match crate::parse::config::read_bounded(host, "etc/pve/.members") {
        Ok(t) => match crate::parse::pve::members::parse_members(&t, "/etc/pve/.members") {
            Ok(m) => Some(m),
            Err(e) => {
                view.members_error = Some(e.to_string());
                None
            }
        },
        Err(e) => {
            view.members_error = Some(format!(
                "{}: cannot tell which nodes are online ({e})",
                host.display("etc/pve/.members")
            ));
            None
        }
    };
    let mut names: BTreeMap<String, Option<bool>> = BTreeMap::new();
    if let Some(m) = &members {
        view.cluster = m.cluster.clone();
        view.quorate = m.quorate;
        view.skipped.extend(m.skipped.iter().cloned());
        for n in &m.nodes {
            names.insert(n.name.clone(), Some(n.online));
        }
    }
    for d in host.list("etc/pve/nodes").unwrap_or_default() {
        if valid_node_name(&d) {
            names.entry(d).or_insert(None);
        } else {
            view.skipped.push(d);
        }
    }
    if valid_node_name(local) {
        // The local node is online by definition; a standalone node has no nodelist.
        names.insert(local.to_string(), Some(true));
    }
    for (name, online) in names {
        let is_local = name == local;
        let (inventory, error) = if is_local {
            (Some(build(host, &name, "live")), None)
        } else {
            match read_inventory(host, &name) {
                Ok(Some(i)) => (Some(i), None),
                Ok(None) => (
                    None,
                    Some(format!(
                        "no {INVENTORY_FILE}: pt-hook has not published on this node (install it there, or run `pt-hook publish` on it)"
                    )),
                ),
                Err(e) => (None, Some(e)),
            }
        };
        view.nodes.push(NodeView {
            stale: online == Some(false),
            local: is_local,
            online,
            name,
            inventory,
            error,
        });
    }
    view
}

/// What `--free` looks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// A PCI mapping by name.
    Mapping(String),
    /// vendor:device.
    Id(String),
    /// Words of the pci.ids name ("4090", "rtx a6000"), case-insensitive.
    Name(String),
}

impl Want {
    pub fn parse(s: &str) -> Result<Want, String> {
        let s = s.trim();
        if let Some(m) = s.strip_prefix("mapping=") {
            if !crate::parse::pve::hostpci::valid_mapping_name(m) {
                return Err(format!("{m:?} is not a mapping name"));
            }
            return Ok(Want::Mapping(m.to_string()));
        }
        if crate::pci::PciId::parse(s).is_some() {
            return Ok(Want::Id(s.to_ascii_lowercase()));
        }
        if s.is_empty() {
            return Err("empty: give vvvv:dddd, mapping=NAME or words of the device name".into());
        }
        Ok(Want::Name(s.to_lowercase()))
    }

    pub fn matches(&self, d: &InvDevice) -> bool {
        match self {
            Want::Mapping(m) => d.mappings.iter().any(|x| x == m),
            Want::Id(id) => d.id.eq_ignore_ascii_case(id),
            Want::Name(words) => {
                let name = d.name.as_deref().unwrap_or("").to_lowercase();
                words.split_whitespace().all(|w| name.contains(w))
            }
        }
    }
}
