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
/// every node's configs, so the inventory stays far below: at about 300 bytes per device this
/// is some 200 devices. Over it, the least interesting devices are left out (see
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

/// The reset health of one device, for the inventory: the reset memory's own view
/// (`engine::health`, the one truth `status` also shows), cut to what a peer needs.
pub fn device_health(
    memory: &crate::engine::health::Memory,
    d: &crate::sysfs::device::DeviceInfo,
) -> Option<Health> {
    let h = memory.device_health(&d.bdf, &crate::engine::health::ModelKey::of(d))?;
    Some(Health {
        needs_reboot: h.needs_reboot,
        failures: u32::try_from(h.failures).unwrap_or(u32::MAX),
        last_rung: h.last_rung.map(|r| r.name().to_string()),
        last_reset: Some(h.last_reset),
    })
}

/// Where the names of the ids seen so far are kept (tmpfs: gone at reboot).
const NAMES_CACHE: &str = "run/pt-hook/names.json";
/// At most this many ids in the cache (a node has a few dozen models at most).
const NAMES_CACHE_MAX: usize = 4096;

/// pci.ids names ("NVIDIA Corporation AD104 [GeForce RTX 4070]", None when pci.ids does not
/// know it) of `want`. pci.ids is over a megabyte, and parsing it would be most of what a
/// publish costs, so the names are kept in [`NAMES_CACHE`] and pci.ids is read only when an
/// id is not there yet.
fn cached_names(
    host: &dyn Host,
    want: &BTreeSet<(u16, u16)>,
    write: bool,
) -> BTreeMap<(u16, u16), Option<String>> {
    let key = |(v, d): (u16, u16)| format!("{v:04x}:{d:04x}");
    let mut cache: BTreeMap<String, Option<String>> = host
        .read_bytes(NAMES_CACHE, 256 << 10)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if want.iter().any(|id| !cache.contains_key(&key(*id))) {
        let names = crate::sysfs::pciids::load(host, want);
        if cache.len() + want.len() > NAMES_CACHE_MAX {
            cache.clear();
        }
        for id in want {
            cache.insert(key(*id), names.describe(id.0, id.1));
        }
        if let (true, Ok(b)) = (write, serde_json::to_vec(&cache)) {
            let _ = host.write_atomic(NAMES_CACHE, &b);
        }
    }
    want.iter()
        .map(|id| (*id, cache.get(&key(*id)).cloned().flatten()))
        .collect()
}

/// Whether a device belongs in the inventory: someone names it (a VM, a mapping), it sits on
/// vfio-pci, or it is a GPU; never a bridge.
fn wanted(g: &devices::Glance) -> bool {
    !g.is_bridge() && (g.owned || g.mapped || g.driver == Some("vfio-pci") || g.is_display())
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

/// The node's inventory now, for publishing (new names go into the names cache).
pub fn build(host: &dyn Host, node: &str, phase: &str) -> Inventory {
    build_with(host, node, phase, true)
}

/// The node's inventory now, writing nothing (the read-only commands, `--dry-run`).
pub fn build_readonly(host: &dyn Host, node: &str, phase: &str) -> Inventory {
    build_with(host, node, phase, false)
}

fn build_with(host: &dyn Host, node: &str, phase: &str, write_cache: bool) -> Inventory {
    let rows: Vec<DeviceRow> = devices::rows_where(host, node, &[], &wanted);
    let drift: BTreeSet<Bdf> = crate::engine::identity::all_drift(host)
        .into_iter()
        .map(|d| d.bdf)
        .collect();
    let want: BTreeSet<(u16, u16)> = rows.iter().map(|r| (r.dev.vendor, r.dev.device)).collect();
    let names = cached_names(host, &want, write_cache);
    let classes = crate::sysfs::pciids::Names::default();
    // Read once for all devices; a damaged file only means no health (status warns).
    let memory = crate::engine::health::Memory::load(host);
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
                    .get(&(d.vendor, d.device))
                    .cloned()
                    .flatten()
                    .or_else(|| Some(classes.class(d.class))),
                driver: d.driver.clone(),
                iommu_group: d.iommu_group,
                owner,
                vm,
                owner_source: source,
                running,
                mappings: r.mappings.clone(),
                drift: drift.contains(&d.bdf),
                boot_vga: d.boot_vga == Some(true),
                health: device_health(&memory, d),
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
    host.replace_file(&rel, &bytes).map_err(|e| {
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
    if !ctx.cfg.cluster.publish {
        return;
    }
    let _t = ctx.log.span(crate::log::Cat::Run, "inventory publish");
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
    // An /etc/pve that is no mount at all (a plain directory: Proxmox's files without pmxcfs, a
    // test bed) cannot hang, so the node's directory is looked for here and no child is started
    // without it. On a mount (pmxcfs) only the bounded child looks.
    if matches!(crate::host::mount_at(ctx.h(), "etc/pve"), Ok(None))
        && !(crate::parse::pve::config::valid_node_name(&ctx.node)
            && ctx.h().exists(&format!("etc/pve/nodes/{}", ctx.node)))
    {
        ctx.log.debug(&format!(
            "inventory: not published: /etc/pve is a plain directory (no pmxcfs mounted) without nodes/{}",
            crate::log::escape_controls(&ctx.node)
        ));
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
            let why = why.trim();
            let why = why.strip_prefix("pt-hook: publish: error: ").unwrap_or(why);
            ctx.log.warn(&format!(
                "publishing the device inventory failed: {}",
                crate::log::escape_controls(why)
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
        Err(e) if e.raw_os_error() == Some(libc::ETIMEDOUT) => ctx.log.warn(&format!(
            "publishing the device inventory to /etc/pve/nodes/{}/{INVENTORY_FILE} gave up after {} (pmxcfs hung?): the publisher was killed, the phase goes on",
            crate::log::escape_controls(&ctx.node),
            crate::log::fmt_dur(start.elapsed()),
        )),
        Err(e) => ctx.log.warn(&format!(
            "publishing the device inventory: starting pt-hook publish: {}; the phase goes on",
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
            (Some(build_readonly(host, &name, "live")), None)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::sim::{Fault, FaultPoint};
    use crate::tests::test_support::T;

    fn node_dir(t: &T) -> std::path::PathBuf {
        let d = t.sim.root_dir().join("etc/pve/nodes/pve1");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn published(t: &T) -> Inventory {
        let p = t.sim.root_dir().join("etc/pve/nodes/pve1/pt-hook.json");
        serde_json::from_slice(&std::fs::read(p).expect("inventory written")).unwrap()
    }

    fn dev<'a>(inv: &'a Inventory, bdf: &str) -> Option<&'a InvDevice> {
        inv.devices.iter().find(|d| d.bdf.to_string() == bdf)
    }

    #[test]
    fn phases_publish_who_holds_what() {
        let t = T::new();
        node_dir(&t);
        let ctx = t.ctx();
        crate::engine::phase::pve(&ctx, 100, "pre-start").unwrap();
        let inv = published(&t);
        assert_eq!(inv.phase, "pre-start");
        assert_eq!(inv.node, "pve1");
        let nvme = dev(&inv, "0000:02:00.0").expect("named by VM 100");
        assert_eq!(nvme.owner.as_deref(), Some("100"));
        assert_eq!(nvme.owner_source.as_deref(), Some("state"));
        assert!(nvme.held() && !nvme.free());
        assert_eq!(nvme.driver.as_deref(), Some("vfio-pci"));
        assert_eq!(nvme.id, "1b36:0010");
        // The std VGA is a GPU: published though only VM 102's config names it.
        let vga = dev(&inv, "0000:01:00.0").unwrap();
        assert_eq!(vga.owner_source.as_deref(), Some("config"));
        assert!(vga.boot_vga && !vga.held());
        // Bridges never; the e1000e only because VM 103 names it.
        assert!(dev(&inv, "0000:00:1c.0").is_none());
        assert!(dev(&inv, "0000:05:00.0").is_some());
        crate::engine::phase::pve(&ctx, 100, "post-stop").unwrap();
        let inv = published(&t);
        assert_eq!(inv.phase, "post-stop");
        let nvme = dev(&inv, "0000:02:00.0").unwrap();
        assert_eq!(nvme.owner_source.as_deref(), Some("config"));
        assert!(nvme.free(), "{nvme:?}");
        assert_eq!(nvme.driver.as_deref(), Some("nvme"));
        // cleanup (the boot unit) publishes too.
        std::fs::remove_file(t.sim.root_dir().join("etc/pve/nodes/pve1/pt-hook.json")).unwrap();
        crate::engine::phase::cleanup(&ctx, None).unwrap();
        assert_eq!(published(&t).phase, "cleanup");
    }

    #[test]
    fn publishing_can_be_turned_off() {
        let mut t = T::new();
        let dir = node_dir(&t);
        t.cfg.cluster.publish = false;
        crate::engine::phase::pve(&t.ctx(), 100, "pre-start").unwrap();
        crate::engine::phase::pve(&t.ctx(), 100, "post-stop").unwrap();
        assert!(!dir.join("pt-hook.json").exists());
        let cfg = crate::parse::config::parse("[cluster]\npublish = false\n", "t.toml").unwrap();
        assert!(!cfg.cluster.publish);
        assert!(
            crate::parse::config::parse("", "t.toml")
                .unwrap()
                .cluster
                .publish
        );
        assert!(crate::parse::config::parse("[cluster]\npublsh = 1\n", "t.toml").is_err());
    }

    #[test]
    fn names_come_from_the_cache_once_known() {
        let t = T::new();
        node_dir(&t);
        let ids = t.sim.root_dir().join("usr/share/misc/pci.ids");
        std::fs::create_dir_all(ids.parent().unwrap()).unwrap();
        std::fs::write(
            &ids,
            "1b36  Red Hat, Inc.\n\t0010  QEMU NVM Express Controller\n",
        )
        .unwrap();
        let name = |t: &T| {
            dev(&build(t.sim.as_ref(), "pve1", "x"), "0000:02:00.0")
                .unwrap()
                .name
                .clone()
        };
        assert_eq!(
            name(&t).as_deref(),
            Some("Red Hat, Inc. QEMU NVM Express Controller")
        );
        // pci.ids is not read again for a known id.
        std::fs::write(&ids, "1b36  Someone else\n\t0010  Other\n").unwrap();
        assert_eq!(
            name(&t).as_deref(),
            Some("Red Hat, Inc. QEMU NVM Express Controller")
        );
        // The read-only build writes no cache.
        std::fs::remove_file(t.sim.root_dir().join(NAMES_CACHE)).unwrap();
        let _ = build_readonly(t.sim.as_ref(), "pve1", "live");
        assert!(!t.sim.root_dir().join(NAMES_CACHE).exists());
        // Without a name: the class.
        let _ = build(t.sim.as_ref(), "pve1", "x");
        std::fs::remove_file(t.sim.root_dir().join(NAMES_CACHE)).unwrap();
        std::fs::remove_file(&ids).unwrap();
        assert_eq!(name(&t).as_deref(), Some("Non-Volatile memory controller"));
    }

    #[test]
    fn a_failed_start_is_published_too() {
        let t = T::new();
        node_dir(&t);
        t.sim.inject(FaultPoint::write(
            "sys/bus/pci/devices/0000:02:00.0/driver_override",
            Fault::Errno(libc::EIO),
        ));
        assert!(crate::engine::phase::pve(&t.ctx(), 100, "pre-start").is_err());
        let inv = published(&t);
        let nvme = dev(&inv, "0000:02:00.0").unwrap();
        assert!(!nvme.held(), "rolled back: {nvme:?}");
    }

    #[test]
    fn read_only_pve_keeps_the_phase_and_the_last_file() {
        let t = T::new();
        let dir = node_dir(&t);
        std::fs::write(dir.join("pt-hook.json"), "old\n").unwrap();
        // pmxcfs without quorum answers EACCES.
        t.sim.inject(FaultPoint::write(
            "etc/pve/nodes/pve1/pt-hook.json",
            Fault::Errno(libc::EACCES),
        ));
        crate::engine::phase::pve(&t.ctx(), 100, "pre-start").unwrap();
        assert!(t.has_state(100));
        assert_eq!(
            std::fs::read_to_string(dir.join("pt-hook.json")).unwrap(),
            "old\n"
        );
        let e = publish(t.sim.as_ref(), "pve1", "publish").unwrap_err();
        assert!(e.contains("read-only") && e.contains("no quorum"), "{e}");
        crate::engine::phase::pve(&t.ctx(), 100, "post-stop").unwrap();
        assert!(!t.has_state(100));
    }

    #[test]
    fn no_node_dir_no_file_and_no_error() {
        let t = T::new();
        std::fs::create_dir_all(t.sim.root_dir().join("etc/pve/nodes/pve2")).unwrap();
        assert_eq!(
            publish(t.sim.as_ref(), "pve1", "publish"),
            Ok(Published::NoNodeDir)
        );
        assert!(!t.sim.root_dir().join("etc/pve/nodes/pve1").exists());
        assert!(publish(t.sim.as_ref(), "../etc", "publish").is_err());
        assert!(inventory_rel("a/b").is_none());
    }

    #[test]
    fn leftover_temporary_files_of_dead_publishers_are_removed() {
        let t = T::new();
        let dir = node_dir(&t);
        std::fs::write(dir.join("pt-hook.tmp.999999"), "half").unwrap();
        std::fs::create_dir_all(t.sim.root_dir().join("proc/4242")).unwrap();
        std::fs::write(dir.join("pt-hook.tmp.4242"), "in flight").unwrap();
        publish(t.sim.as_ref(), "pve1", "publish").unwrap();
        assert!(!dir.join("pt-hook.tmp.999999").exists());
        assert!(dir.join("pt-hook.tmp.4242").exists(), "its publisher lives");
    }

    fn gpu(bdf: &str) -> InvDevice {
        InvDevice {
            bdf: Bdf::parse(bdf).unwrap(),
            id: "10de:2786".into(),
            subsystem: Some("1043:8870".into()),
            class: "030000".into(),
            name: Some("NVIDIA Corporation AD104 [GeForce RTX 4070]".into()),
            driver: Some("nvidia".into()),
            iommu_group: Some(12),
            owner: None,
            vm: None,
            owner_source: None,
            running: false,
            mappings: vec![],
            drift: false,
            boot_vga: false,
            health: None,
        }
    }

    #[test]
    fn oversize_inventory_is_bounded() {
        // 400 GPUs nobody names, one held by VM 100, one only in a stopped VM's config, one
        // mapped, one on vfio-pci.
        let mut devices: Vec<InvDevice> = (0..400u32)
            .map(|i| gpu(&format!("0000:{:02x}:00.{}", 1 + i / 8, i % 8)))
            .collect();
        devices[399].owner = Some("100".into());
        devices[399].owner_source = Some("state".into());
        devices[399].running = true;
        devices[398].owner = Some("101".into());
        devices[398].owner_source = Some("config".into());
        devices[397].mappings = vec!["big".into()];
        devices[396].driver = Some("vfio-pci".into());
        let inv = Inventory {
            version: INVENTORY_VERSION,
            node: "pve1".into(),
            reported: 1,
            phase: "publish".into(),
            pt_hook: "0".into(),
            devices,
            dropped: 0,
        };
        assert!(serde_json::to_vec(&inv).unwrap().len() > MAX_INVENTORY_BYTES);
        let (bytes, dropped) = encode_bounded(&inv, MAX_INVENTORY_BYTES).unwrap();
        assert!(bytes.len() <= MAX_INVENTORY_BYTES, "{}", bytes.len());
        assert!(dropped > 0);
        let out: Inventory = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(out.dropped, dropped);
        assert_eq!(out.devices.len() + dropped, 400);
        // Tight: one device more would not fit.
        let one = serde_json::to_vec(&gpu("0000:01:00.0")).unwrap().len() + 1;
        assert!(
            bytes.len() + one > MAX_INVENTORY_BYTES,
            "{} + {one}",
            bytes.len()
        );
        // The unnamed GPUs go first; held, assigned, mapped and vfio-pci ones stay.
        for b in [
            "0000:32:00.7",
            "0000:32:00.6",
            "0000:32:00.5",
            "0000:32:00.4",
        ] {
            assert!(dev(&out, b).is_some(), "{b} kept");
        }
        assert!(out.devices.windows(2).all(|w| w[0].bdf < w[1].bdf));
        // Under the bound nothing is dropped; nothing fits: None.
        assert_eq!(
            encode_bounded(&out, MAX_INVENTORY_BYTES).map(|x| x.1),
            Some(0)
        );
        assert!(encode_bounded(&inv, 10).is_none());
    }

    #[test]
    fn publish_writes_mapping_names_of_this_node() {
        let t = T::new();
        let dir = node_dir(&t);
        std::fs::create_dir_all(t.sim.root_dir().join("etc/pve/mapping")).unwrap();
        std::fs::write(
            t.sim.root_dir().join("etc/pve/mapping/pci.cfg"),
            "disk\n\tmap node=pve1,path=0000:03:00.0,id=1b36:0010\n\tmap node=pve2,path=0000:02:00.0,id=1b36:0010\n",
        )
        .unwrap();
        let Published::Wrote { bytes, .. } = publish(t.sim.as_ref(), "pve1", "publish").unwrap()
        else {
            panic!("not written")
        };
        let inv = published(&t);
        assert_eq!(
            std::fs::read(dir.join("pt-hook.json")).unwrap().len(),
            bytes
        );
        assert_eq!(dev(&inv, "0000:03:00.0").unwrap().mappings, ["disk"]);
        assert!(dev(&inv, "0000:02:00.0").unwrap().mappings.is_empty());
    }

    #[test]
    fn peer_files_are_checked() {
        let t = T::new();
        let base = t.sim.root_dir().join("etc/pve/nodes");
        let put = |node: &str, text: &str| {
            std::fs::create_dir_all(base.join(node)).unwrap();
            std::fs::write(base.join(node).join(INVENTORY_FILE), text).unwrap();
        };
        let h = t.sim.as_ref();
        put("a", "{");
        assert!(read_inventory(h, "a").unwrap_err().contains("corrupt"));
        put("b", "{\"version\":2,\"node\":\"b\"}");
        assert!(read_inventory(h, "b").unwrap_err().contains("version 2"));
        put("c", "{\"version\":1,\"node\":\"d\",\"reported\":1,\"phase\":\"x\",\"pt_hook\":\"1\",\"devices\":[]}");
        assert!(read_inventory(h, "c")
            .unwrap_err()
            .contains("written for node"));
        put("e", &" ".repeat(MAX_READ_BYTES + 1));
        assert!(read_inventory(h, "e").unwrap_err().contains("larger than"));
        put("f", "{\"version\":1,\"node\":\"f\",\"reported\":1,\"phase\":\"x\",\"pt_hook\":\"1\",\"devices\":[{\"bdf\":\"../../x\",\"id\":\"1:2\",\"class\":\"0\"}]}");
        assert!(read_inventory(h, "f").unwrap_err().contains("corrupt"));
        assert_eq!(read_inventory(h, "g"), Ok(None));
    }

    #[test]
    fn what_free_matches() {
        let d = InvDevice {
            bdf: Bdf::parse("0000:01:00.0").unwrap(),
            id: "10de:2684".into(),
            subsystem: None,
            class: "030000".into(),
            name: Some("NVIDIA Corporation AD102 [GeForce RTX 4090]".into()),
            driver: Some("vfio-pci".into()),
            iommu_group: None,
            owner: None,
            vm: None,
            owner_source: None,
            running: false,
            mappings: vec!["rtx4090".into()],
            drift: false,
            boot_vga: false,
            health: None,
        };
        for (w, m) in [
            ("10DE:2684", true),
            ("10de:2786", false),
            ("mapping=rtx4090", true),
            ("mapping=other", false),
            ("RTX 4090", true),
            ("4090 geforce", true),
            ("4080", false),
        ] {
            assert_eq!(Want::parse(w).unwrap().matches(&d), m, "{w}");
        }
        assert!(Want::parse("mapping=../x").is_err());
        assert!(Want::parse(" ").is_err());
        assert!(d.free());
        let mut held = d.clone();
        held.owner_source = Some("config".into());
        held.running = true;
        assert!(!held.free());
        let mut sick = d;
        sick.health = Some(Health {
            needs_reboot: true,
            failures: 3,
            last_rung: None,
            last_reset: None,
        });
        assert!(!sick.free());
    }
}
