//! Address drift: what each VM's PCI addresses held at its last good start.
//!
//! `hostpciN:` lines (and libvirt `<hostdev>`s) name raw PCI addresses. After a card is
//! added or a firmware update the addresses move, and the same line now names another device
//! (the host's NIC, the controller of its root disk). pt-hook remembers, for every function a
//! VM names (not the IOMMU group members it adds), what it was at the end of the last
//! successful pre-start: vendor:device, subsystem, class, and a serial where the device has
//! one (the PCIe Device Serial Number capability in config space, an NVMe controller's
//! `serial`). Planning compares: a remembered address that now holds a different device
//! refuses the start (exit 1) before anything is touched, until the config is fixed or
//! `pt-hook accept` takes the new device. A function that is absent now is not drift
//! (resolving already fails for it). Entries are matched by address: the address is what
//! drifts, and libvirt origins carry XML line numbers.
//!
//! Files: `/var/lib/pt-hook/identity/vm-VMID.json` and `libvirt-UUID.json` (not `/run`: they
//! must survive the reboot that moved the addresses), written atomically, at most
//! [`MAX_FILE_BYTES`]; a damaged file is a warning, ignored, and rewritten at the next good
//! start.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::engine::ctx::Ctx;
use crate::engine::plan::PlannedDevice;
use crate::engine::resolve::Resolved;
use crate::engine::state::{Domain, VmKey};
use crate::error::{Error, Result};
use crate::host::paths::{self, DevFile};
use crate::host::{errno_text, Host};
use crate::log::escape_controls;
use crate::pci::{Bdf, PciId};
use crate::sysfs::device::{self, DeviceInfo};

pub const IDENTITY_VERSION: u32 = 1;
/// An identity file larger than this is damaged (a VM names at most a few dozen functions).
pub const MAX_FILE_BYTES: usize = 256 << 10;
/// At most this many functions are remembered per VM.
pub const MAX_FUNCTIONS: usize = 256;
/// Serials longer than this (or with other than printable ASCII) are not used.
const MAX_SERIAL: usize = 64;
/// Root reads the whole extended config space; others get 64 bytes (and so no DSN).
const CONFIG_BYTES: usize = 4096;
/// What is read first: the header and the start of extended space, where the capability
/// list usually ends. Each dword of a config read is a transaction on the bus (and a trap
/// under emulation): the whole 4 KiB only when the list goes on past this.
const FIRST_CONFIG_BYTES: usize = 1024;
const EXT_CAP_DSN: u32 = 0x0003;

/// One named function as it was at a start (or is now).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionId {
    /// Where the VM names it: "hostpci0", "hostpci1 (mapping fastnvme)", "hostdev 0 (line 12)".
    pub origin: String,
    pub bdf: Bdf,
    /// vendor:device, "10de:2786".
    pub id: String,
    /// Subsystem vendor:device, when the kernel shows one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsystem: Option<String>,
    /// Class code, "030000".
    pub class: String,
    /// PCIe Device Serial Number as lspci prints it ("00-11-22-33-44-55-66-77").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// An NVMe controller's serial (readable while the nvme driver is bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvme_serial: Option<String>,
}

/// `var/lib/pt-hook/identity/*.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityFile {
    pub version: u32,
    /// A Proxmox VM (then `domain` is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmid: Option<u32>,
    /// A libvirt domain, keyed by its UUID (then `vmid` is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<Domain>,
    /// Seconds since the epoch of the start (or `accept`) that wrote it.
    pub recorded: u64,
    pub functions: Vec<FunctionId>,
}

/// A remembered address that now holds another device: pre-start refuses.
#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    pub origin: String,
    pub bdf: Bdf,
    pub was: FunctionId,
    pub now: FunctionId,
    /// The refusal: both devices, the fix and the accept command.
    pub message: String,
    /// Where to fix the address: "fix hostpci0 in /etc/pve/qemu-server/100.conf (...)".
    pub fix: String,
    /// The command that accepts the device now at the address.
    pub accept: String,
}

/// What planning found: the named functions as they are now (remembered after a good start)
/// and the drift that refuses the start.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PlanIdentity {
    #[serde(skip)]
    pub current: Vec<FunctionId>,
    pub drift: Vec<Drift>,
    /// The file as planning read it (None: there was none, or it was damaged).
    #[serde(skip)]
    pub remembered: Option<IdentityFile>,
}

impl PlanIdentity {
    /// Whether remembering `current` would change the file planning read (the first start,
    /// other devices, a damaged file, a serial or subsystem it did not have): only then does
    /// a start write it (`record`).
    pub fn changes_record(&self, key: &VmKey) -> bool {
        !self.current.is_empty()
            && !self
                .remembered
                .as_ref()
                .is_some_and(|f| says_already(f, key, &self.current))
    }
}

/// The record `current` would give, against the file it would replace (serials the devices
/// do not show now kept from it).
fn functions_over(current: &[FunctionId], old: Option<&IdentityFile>) -> Vec<FunctionId> {
    let mut functions: Vec<FunctionId> = current.iter().take(MAX_FUNCTIONS).cloned().collect();
    for f in &mut functions {
        keep_serials(f, old);
    }
    functions
}

/// Whether `f` already records exactly `current` for `key`.
fn says_already(f: &IdentityFile, key: &VmKey, current: &[FunctionId]) -> bool {
    let (vmid, domain) = key_fields(key);
    f.vmid == vmid && f.domain == domain && f.functions == functions_over(current, Some(f))
}

fn key_fields(key: &VmKey) -> (Option<u32>, Option<Domain>) {
    match key {
        VmKey::Pve(v) => (Some(*v), None),
        VmKey::Libvirt(d) => (None, Some(d.clone())),
    }
}

pub fn file_of(key: &VmKey) -> String {
    match key {
        VmKey::Pve(v) => paths::identity_file(*v),
        VmKey::Libvirt(d) => paths::libvirt_identity_file(&d.uuid),
    }
}

/// The command that accepts the devices now at a VM's addresses.
pub fn accept_hint(key: &VmKey) -> String {
    match key {
        VmKey::Pve(v) => format!("pt-hook accept {v}"),
        VmKey::Libvirt(d) => format!("pt-hook accept --libvirt-uuid {}", d.uuid),
    }
}

/// Functions the VM names itself (not IOMMU group members or quirk companions it takes along).
fn is_named(origin: &str) -> bool {
    origin.starts_with("hostpci") || origin.starts_with("hostdev ")
}

/// The serial in a Device Serial Number extended capability, walking the capability list
/// from 0x100 (bounded: at most one hop per dword of extended space).
pub fn parse_dsn(config: &[u8]) -> Option<String> {
    match walk_dsn(config) {
        Walk::Found(s) => Some(s),
        Walk::Ended | Walk::Beyond => None,
    }
}

/// Where a walk of the extended capability list of `config` (the bytes read) got to.
#[derive(Debug, PartialEq, Eq)]
enum Walk {
    /// The DSN capability, with a serial.
    Found(String),
    /// The list ended, looped, or holds no usable serial: none in this config space.
    Ended,
    /// The list goes on past the bytes read.
    Beyond,
}

fn walk_dsn(config: &[u8]) -> Walk {
    let dword = |off: usize| -> Option<u32> {
        config
            .get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut off = 0x100usize;
    for _ in 0..(CONFIG_BYTES - 0x100) / 4 {
        let Some(hdr) = dword(off) else {
            return Walk::Beyond;
        };
        if hdr == 0 || hdr == 0xffff_ffff {
            return Walk::Ended;
        }
        if hdr & 0xffff == EXT_CAP_DSN {
            let (Some(lo), Some(hi)) = (dword(off + 4), dword(off + 8)) else {
                return Walk::Beyond;
            };
            let v = ((hi as u64) << 32) | lo as u64;
            if v == 0 || v == u64::MAX {
                return Walk::Ended;
            }
            let b = v.to_be_bytes();
            return Walk::Found(
                b.iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join("-"),
            );
        }
        let next = ((hdr >> 20) & 0xffc) as usize;
        if next < 0x100 {
            return Walk::Ended;
        }
        off = next;
    }
    Walk::Ended
}

/// A serial as the kernel shows it (space-padded): trimmed, printable ASCII only, bounded.
fn clean_serial(raw: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?.trim();
    let ok = !s.is_empty()
        && s.len() <= MAX_SERIAL
        && s.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    ok.then(|| s.to_string())
}

fn nvme_serial(host: &dyn Host, bdf: &Bdf) -> Option<String> {
    for ctrl in host.list(&paths::nvme_dir(bdf)).ok()? {
        let Some(rel) = paths::nvme_serial(bdf, &ctrl) else {
            continue;
        };
        if let Some(s) = host
            .read_bytes(&rel, MAX_SERIAL * 2)
            .ok()
            .and_then(|b| clean_serial(&b))
        {
            return Some(s);
        }
    }
    None
}

/// What the function at `info.bdf` is, with its serials read from the host.
pub fn function_id(host: &dyn Host, info: &DeviceInfo, origin: &str) -> FunctionId {
    let config = config_bytes(host, &info.bdf);
    function_id_with(host, info, origin, config.as_deref())
}

/// `function_id` with the function's config space already read (`config_bytes`; None: it
/// could not be read).
pub fn function_id_with(
    host: &dyn Host,
    info: &DeviceInfo,
    origin: &str,
    config: Option<&[u8]>,
) -> FunctionId {
    FunctionId {
        origin: origin.to_string(),
        bdf: info.bdf,
        id: format!("{:04x}:{:04x}", info.vendor, info.device),
        subsystem: match (info.subsystem_vendor, info.subsystem_device) {
            (Some(v), Some(d)) => Some(format!("{v:04x}:{d:04x}")),
            _ => None,
        },
        class: info.class_hex(),
        serial: config.and_then(parse_dsn),
        nvme_serial: nvme_serial(host, &info.bdf),
    }
}

/// The bytes of config space `function_id` reads (the extended capabilities, for the DSN):
/// the first `FIRST_CONFIG_BYTES`, and all of it only when the capability list goes on past
/// them (a shorter read is all there is: conventional PCI's 256 bytes, a non-root 64).
pub fn config_bytes(host: &dyn Host, bdf: &Bdf) -> Option<Vec<u8>> {
    let rel = paths::dev(bdf, DevFile::Config);
    let first = host.read_bytes(&rel, FIRST_CONFIG_BYTES).ok()?;
    if first.len() < FIRST_CONFIG_BYTES || walk_dsn(&first) != Walk::Beyond {
        return Some(first);
    }
    Some(host.read_bytes(&rel, CONFIG_BYTES).unwrap_or(first))
}

/// The functions a plan's VM names, as they are now.
pub fn current(host: &dyn Host, devices: &[PlannedDevice]) -> Vec<FunctionId> {
    devices
        .iter()
        .filter(|d| is_named(&d.origin))
        .take(MAX_FUNCTIONS)
        .map(|d| function_id(host, &d.info, &d.origin))
        .collect()
}

/// The same for a resolved (not planned) VM: `doctor`, `status`.
pub fn current_resolved(host: &dyn Host, resolved: &[Resolved]) -> Vec<FunctionId> {
    resolved
        .iter()
        .filter(|r| is_named(&r.origin))
        .take(MAX_FUNCTIONS)
        .map(|r| function_id(host, &r.info, &r.origin))
        .collect()
}

fn valid_id(s: &str) -> bool {
    PciId::parse(s).is_some() && s.len() == 9
}

fn valid(f: &FunctionId) -> bool {
    valid_id(&f.id)
        && f.subsystem.as_deref().is_none_or(valid_id)
        && f.class.len() == 6
        && f.class.bytes().all(|b| b.is_ascii_hexdigit())
}

fn lower(f: &mut FunctionId) {
    f.id.make_ascii_lowercase();
    f.class.make_ascii_lowercase();
    if let Some(s) = &mut f.subsystem {
        s.make_ascii_lowercase();
    }
    if let Some(s) = &mut f.serial {
        s.make_ascii_lowercase();
    }
}

/// The remembered identity of a VM. `Err` is a warning (damaged, oversized, another VM's):
/// the file is then ignored and rewritten at the next good start, never fatal.
pub fn load(host: &dyn Host, key: &VmKey) -> std::result::Result<Option<IdentityFile>, String> {
    let rel = file_of(key);
    if !host.exists(&rel) {
        return Ok(None);
    }
    let shown = host.display(&rel);
    let damaged = |why: String| {
        format!("{shown}: the remembered PCI identity of {key} is damaged ({why}); ignoring it, the next successful start rewrites it")
    };
    let bytes = host
        .read_bytes(&rel, MAX_FILE_BYTES + 1)
        .map_err(|e| damaged(errno_text(&e)))?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(damaged(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    let mut f: IdentityFile = serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
    if f.version != IDENTITY_VERSION {
        return Err(damaged(format!(
            "version {}, expected {IDENTITY_VERSION}",
            f.version
        )));
    }
    let same = match (key, f.vmid, &f.domain) {
        (VmKey::Pve(v), Some(x), None) => x == *v,
        (VmKey::Libvirt(d), None, Some(fd)) => fd.uuid == d.uuid,
        _ => false,
    };
    if !same {
        return Err(damaged("it names another VM".into()));
    }
    if f.functions.len() > MAX_FUNCTIONS {
        return Err(damaged(format!("more than {MAX_FUNCTIONS} functions")));
    }
    for x in &mut f.functions {
        lower(x);
        if !valid(x) {
            return Err(damaged(format!("{}: malformed ids", x.bdf)));
        }
    }
    Ok(Some(f))
}

/// The key a file belongs to, with the libvirt domain's name from the file.
fn key_of(f: &IdentityFile, fallback: &VmKey) -> VmKey {
    match (&f.domain, f.vmid) {
        (Some(d), _) => VmKey::Libvirt(d.clone()),
        (None, Some(v)) => VmKey::Pve(v),
        _ => fallback.clone(),
    }
}

fn both_differ(a: &Option<String>, b: &Option<String>) -> bool {
    matches!((a, b), (Some(x), Some(y)) if x != y)
}

/// Whether `now` is another device than `was`. A subsystem or serial that one side does not
/// show (no file, an NVMe on vfio-pci) is not compared.
pub fn differs(was: &FunctionId, now: &FunctionId) -> bool {
    was.id != now.id
        || was.class != now.class
        || both_differ(&was.subsystem, &now.subsystem)
        || both_differ(&was.serial, &now.serial)
        || both_differ(&was.nvme_serial, &now.nvme_serial)
}

fn ids_of(f: &FunctionId) -> Option<(u16, u16)> {
    PciId::parse(&f.id).map(|p| (p.vendor, p.device))
}

fn names_for<'a>(
    host: &dyn Host,
    pairs: impl Iterator<Item = (&'a FunctionId, &'a FunctionId)>,
) -> crate::sysfs::pciids::Names {
    let mut want = BTreeSet::new();
    for (a, b) in pairs {
        want.extend(ids_of(a));
        want.extend(ids_of(b));
    }
    crate::sysfs::pciids::load(host, &want)
}

/// "10de:2786 NVIDIA Corporation AD104 [GeForce RTX 4070]", plus what tells it apart from
/// `other` when the ids are the same (subsystem, class, serial).
fn describe(f: &FunctionId, other: &FunctionId, names: &crate::sysfs::pciids::Names) -> String {
    let class = u32::from_str_radix(&f.class, 16).unwrap_or(0);
    let name = ids_of(f)
        .and_then(|(v, d)| names.describe(v, d))
        .unwrap_or_else(|| names.class(class));
    let mut s = format!("{} {name}", f.id);
    if f.id == other.id {
        if f.subsystem != other.subsystem {
            if let Some(x) = &f.subsystem {
                s.push_str(&format!(" subsystem {x}"));
            }
        }
        if f.class != other.class {
            s.push_str(&format!(" class {}", f.class));
        }
        if f.serial != other.serial {
            if let Some(x) = &f.serial {
                s.push_str(&format!(" serial {}", escape_controls(x)));
            }
        }
        if f.nvme_serial != other.nvme_serial {
            if let Some(x) = &f.nvme_serial {
                s.push_str(&format!(" NVMe serial {}", escape_controls(x)));
            }
        }
    }
    s
}

/// Where the operator fixes the address.
fn fix_hint(host: &dyn Host, key: &VmKey, origin: &str) -> String {
    match key {
        VmKey::Pve(v) => {
            if let Some(name) = origin
                .split_once("(mapping ")
                .and_then(|(_, r)| r.strip_suffix(')'))
            {
                return format!("fix mapping {name} in {}", host.display(paths::MAPPING_PCI));
            }
            let hp = origin.split_whitespace().next().unwrap_or(origin);
            let migrated = std::env::var("PVE_MIGRATED_FROM").ok();
            let cfg = crate::parse::pve::config::vm_config_path(
                *v,
                migrated.as_deref().filter(|s| !s.is_empty()),
            )
            .unwrap_or_else(|_| format!("etc/pve/qemu-server/{v}.conf"));
            format!("fix {hp} in {} (or use a PCI mapping)", host.display(&cfg))
        }
        VmKey::Libvirt(d) => format!(
            "fix the <hostdev> address in the domain XML (virsh edit {})",
            escape_controls(&d.name)
        ),
    }
}

/// The drift between what `remembered` says and the functions named now.
pub fn compare(
    host: &dyn Host,
    key: &VmKey,
    remembered: &IdentityFile,
    current: &[FunctionId],
) -> Vec<Drift> {
    let pairs: Vec<(&FunctionId, &FunctionId)> = current
        .iter()
        .filter_map(|now| {
            remembered
                .functions
                .iter()
                .find(|w| w.bdf == now.bdf)
                .map(|w| (w, now))
        })
        .filter(|(w, n)| differs(w, n))
        .collect();
    if pairs.is_empty() {
        return Vec::new();
    }
    let names = names_for(host, pairs.iter().copied());
    let accept = accept_hint(key);
    let who = match key {
        VmKey::Pve(v) => format!("VM {v}'s last start"),
        VmKey::Libvirt(_) => format!("the last start of {key}"),
    };
    pairs
        .into_iter()
        .map(|(w, n)| {
            let origin = escape_controls(&n.origin);
            let fix = fix_hint(host, key, &n.origin);
            let message = format!(
                "{origin} {} was {} at {who}, now it is {}: PCI addresses moved; {fix}, or if you replaced the card on purpose run `{accept}`",
                n.bdf,
                describe(w, n, &names),
                describe(n, w, &names),
            );
            Drift {
                origin,
                bdf: n.bdf,
                was: w.clone(),
                now: n.clone(),
                message,
                fix,
                accept: accept.clone(),
            }
        })
        .collect()
}

/// Planning: the named functions now, and their drift from the last good start. A damaged
/// file becomes a warning of the plan.
pub fn check(
    host: &dyn Host,
    key: &VmKey,
    devices: &[PlannedDevice],
    warnings: &mut Vec<String>,
) -> PlanIdentity {
    let current = current(host, devices);
    let (drift, remembered) = match load(host, key) {
        Ok(Some(f)) => (compare(host, key, &f, &current), Some(f)),
        Ok(None) => (Vec::new(), None),
        Err(w) => {
            warnings.push(w);
            (Vec::new(), None)
        }
    };
    PlanIdentity {
        current,
        drift,
        remembered,
    }
}

/// pre-start refuses (exit 1) while any named address holds another device.
pub fn refuse(p: &PlanIdentity) -> Result<()> {
    if p.drift.is_empty() {
        return Ok(());
    }
    Err(Error::Failed(
        p.drift
            .iter()
            .map(|d| d.message.as_str())
            .collect::<Vec<_>>()
            .join("; "),
    ))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn write(host: &dyn Host, key: &VmKey, f: &IdentityFile) -> Result<()> {
    let rel = file_of(key);
    let data = serde_json::to_vec_pretty(f).map_err(|e| Error::Failed(e.to_string()))?;
    if data.len() > MAX_FILE_BYTES {
        return Err(Error::Failed(format!(
            "{}: identity would be larger than {MAX_FILE_BYTES} bytes",
            host.display(&rel)
        )));
    }
    host.write_atomic(&rel, &data)
        .map_err(|e| Error::host(key, "writing", host.display(&rel), e))
}

/// Keeps a serial the device does not show now (an NVMe serial while the controller sits on
/// vfio-pci) when everything else matches the remembered function.
fn keep_serials(f: &mut FunctionId, old: Option<&IdentityFile>) {
    let Some(o) = old.and_then(|o| o.functions.iter().find(|o| o.bdf == f.bdf)) else {
        return;
    };
    if differs(o, f) {
        return;
    }
    if f.serial.is_none() {
        f.serial = o.serial.clone();
    }
    if f.nvme_serial.is_none() {
        f.nvme_serial = o.nvme_serial.clone();
    }
}

/// Writes the identity of `current` as the VM's last good start (replacing the file, or a
/// damaged one). A file that already says exactly that is left as it is (`recorded` stays the
/// first start that found these devices): Ok(false), nothing written. A start is not a disk
/// write and an fsync on the host's root file system every time.
pub fn record(host: &dyn Host, key: &VmKey, current: &[FunctionId]) -> Result<bool> {
    let old = load(host, key).ok().flatten();
    if old.as_ref().is_some_and(|o| says_already(o, key, current)) {
        return Ok(false);
    }
    let functions = functions_over(current, old.as_ref());
    let (vmid, domain) = key_fields(key);
    write(
        host,
        key,
        &IdentityFile {
            version: IDENTITY_VERSION,
            vmid,
            domain,
            recorded: now_secs(),
            functions,
        },
    )
    .map(|()| true)
}

/// The end of a successful pre-start: remember what the named addresses held. A failure is a
/// warning (the devices are prepared; the start goes on).
pub fn remember(ctx: &Ctx, key: &VmKey, p: &PlanIdentity) {
    if p.current.is_empty() {
        return;
    }
    let host = &*ctx.host;
    let shown = host.display(&file_of(key));
    if ctx.dry_run {
        if p.changes_record(key) {
            println!(
                "dry-run: remember the identity of {} PCI function(s) in {shown}",
                p.current.len()
            );
        } else {
            println!(
                "dry-run: the identity of {} PCI function(s) in {shown} is unchanged (not written)",
                p.current.len()
            );
        }
        return;
    }
    match record(host, key, &p.current) {
        Ok(true) => ctx.log.debug(&format!(
            "remembered the identity of {} PCI function(s) in {shown}",
            p.current.len()
        )),
        Ok(false) => ctx.log.debug(&format!(
            "the identity of {} PCI function(s) in {shown} is unchanged",
            p.current.len()
        )),
        Err(e) => ctx.log.warn(&format!(
            "{key}: could not remember the PCI identity ({e}); address drift is not checked at the next start"
        )),
    }
}

/// The functions at the remembered addresses now (absent ones left out).
fn at_addresses(host: &dyn Host, f: &IdentityFile) -> Vec<FunctionId> {
    f.functions
        .iter()
        .filter_map(|w| device::read_device(host, &w.bdf).map(|i| function_id(host, &i, &w.origin)))
        .collect()
}

/// The functions a Proxmox VM's config names now; empty when it does not resolve (that error
/// is reported by plan and doctor themselves).
fn named_now_pve(host: &dyn Host, vmid: u32) -> Vec<FunctionId> {
    let log = crate::log::Logger::new(-3, false);
    let Ok(cfg) = crate::engine::resolve::load_vm_config(host, vmid) else {
        return Vec::new();
    };
    match crate::engine::resolve::resolve(host, &cfg, &host.node_name(), &log) {
        Ok(r) => current_resolved(host, &r),
        Err(_) => Vec::new(),
    }
}

/// The key an identity file name stands for (`vm-100.json`, `libvirt-UUID.json`); None for
/// anything else, including names that do not round-trip ("vm-0100.json").
fn key_of_name(name: &str) -> Option<VmKey> {
    let key = if let Some(v) = name
        .strip_prefix("vm-")
        .and_then(|r| r.strip_suffix(".json"))
    {
        VmKey::Pve(v.parse().ok()?)
    } else {
        let u = name.strip_prefix("libvirt-")?.strip_suffix(".json")?;
        VmKey::Libvirt(Domain {
            uuid: crate::parse::libvirt::parse_uuid(u)?,
            name: String::new(),
        })
    };
    (file_of(&key) == format!("{}/{name}", paths::IDENTITY_DIR)).then_some(key)
}

/// Drift of every VM and domain pt-hook remembers (`status`): Proxmox VMs against what their
/// configs name now, libvirt domains at their remembered addresses.
pub fn all_drift(host: &dyn Host) -> Vec<Drift> {
    let mut out = Vec::new();
    for name in host.list(paths::IDENTITY_DIR).unwrap_or_default() {
        let Some(probe) = key_of_name(&name) else {
            continue;
        };
        let Ok(Some(f)) = load(host, &probe) else {
            continue;
        };
        let key = key_of(&f, &probe);
        let current = match &key {
            VmKey::Pve(v) => named_now_pve(host, *v),
            VmKey::Libvirt(_) => at_addresses(host, &f),
        };
        out.extend(compare(host, &key, &f, &current));
    }
    out
}

/// `doctor`: None when nothing is remembered for the VM, `Err` a warning (damaged file).
pub fn doctor_drift(
    host: &dyn Host,
    vmid: u32,
    resolved: &[Resolved],
) -> std::result::Result<Option<Vec<Drift>>, String> {
    let key = VmKey::Pve(vmid);
    let Some(f) = load(host, &key)? else {
        return Ok(None);
    };
    Ok(Some(compare(
        host,
        &key,
        &f,
        &current_resolved(host, resolved),
    )))
}

/// `pt-hook accept`: the devices now at the remembered addresses become the VM's. Prints each
/// change (old -> new); `dry_run` writes nothing. Nothing remembered is not an error.
pub fn accept(host: &dyn Host, key: &VmKey, dry_run: bool) -> Result<()> {
    let shown = host.display(&file_of(key));
    let old = match load(host, key) {
        Ok(Some(f)) => f,
        Ok(None) => {
            println!("{key}: no remembered PCI identity ({shown}): nothing to accept; the next successful start records one");
            return Ok(());
        }
        Err(w) => {
            println!("{w}: nothing to accept");
            return Ok(());
        }
    };
    let key = key_of(&old, key);
    let mut functions = Vec::new();
    let mut changes = Vec::new();
    for w in &old.functions {
        match device::read_device(host, &w.bdf) {
            None => {
                println!(
                    "{} {}: absent now; keeping what it was",
                    escape_controls(&w.origin),
                    w.bdf
                );
                functions.push(w.clone());
            }
            Some(info) => {
                let mut n = function_id(host, &info, &w.origin);
                if differs(w, &n) {
                    changes.push((w.clone(), n.clone()));
                } else {
                    keep_serials(&mut n, Some(&old));
                }
                functions.push(n);
            }
        }
    }
    if changes.is_empty() {
        println!("{key}: every remembered address still holds the same device: nothing to accept");
        return Ok(());
    }
    let names = names_for(host, changes.iter().map(|(a, b)| (a, b)));
    for (w, n) in &changes {
        println!(
            "{}{} {}: {} -> {}",
            if dry_run {
                "dry-run: would accept "
            } else {
                "accepted "
            },
            escape_controls(&w.origin),
            w.bdf,
            describe(w, n, &names),
            describe(n, w, &names)
        );
    }
    if dry_run {
        println!("dry-run: would write {shown}");
        return Ok(());
    }
    write(
        host,
        &key,
        &IdentityFile {
            recorded: now_secs(),
            functions,
            ..old
        },
    )?;
    println!("{key}: wrote {shown}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with_caps(caps: &[(usize, u32, &[u32])]) -> Vec<u8> {
        let mut c = vec![0u8; 4096];
        for (off, hdr, body) in caps {
            c[*off..off + 4].copy_from_slice(&hdr.to_le_bytes());
            for (i, d) in body.iter().enumerate() {
                c[off + 4 + 4 * i..off + 8 + 4 * i].copy_from_slice(&d.to_le_bytes());
            }
        }
        c
    }

    #[test]
    fn dsn_is_found_along_the_extended_capability_list() {
        // AER (id 1) at 0x100 -> DSN at 0x140.
        let c = config_with_caps(&[
            (0x100, 0x1401_0001, &[0; 3]),
            (0x140, 0x0001_0003, &[0x4455_6677, 0x0011_2233]),
        ]);
        assert_eq!(parse_dsn(&c).as_deref(), Some("00-11-22-33-44-55-66-77"));
        // No DSN, a loop, short (non-root) reads, all-ones (device gone): none.
        let c = config_with_caps(&[(0x100, 0x1001_0001, &[])]);
        assert_eq!(parse_dsn(&c), None);
        assert_eq!(parse_dsn(&c[..64]), None);
        assert_eq!(parse_dsn(&vec![0xff; 4096]), None);
        let c = config_with_caps(&[(0x100, 0x0001_0003, &[0, 0])]);
        assert_eq!(parse_dsn(&c), None, "a zero serial is no serial");
        // Truncated in the middle of the capability.
        let c = config_with_caps(&[(0x100, 0x0001_0003, &[1, 2])]);
        assert_eq!(parse_dsn(&c[..0x106]), None);
        assert_eq!(walk_dsn(&c[..0x106]), Walk::Beyond);
        // A list that ends inside the first read, and one that goes on past it.
        let c = config_with_caps(&[(0x100, 0x1401_0001, &[])]);
        assert_eq!(walk_dsn(&c[..FIRST_CONFIG_BYTES]), Walk::Ended);
        let c = config_with_caps(&[
            (0x100, 0x8001_0001, &[0; 3]),
            (0x800, 0x0001_0003, &[0x4455_6677, 0x0011_2233]),
        ]);
        assert_eq!(walk_dsn(&c[..FIRST_CONFIG_BYTES]), Walk::Beyond);
        assert_eq!(parse_dsn(&c).as_deref(), Some("00-11-22-33-44-55-66-77"));
    }

    /// Config space is read in full only when the capability list goes on past the first
    /// read: the serial is found either way.
    #[test]
    fn config_is_read_in_full_only_when_the_list_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let host = crate::host::real::RealHost::new(dir.path());
        let b = Bdf::parse("0000:02:00.0").unwrap();
        let rel = paths::dev(&b, DevFile::Config);
        std::fs::create_dir_all(dir.path().join(&rel).parent().unwrap()).unwrap();
        let near = config_with_caps(&[(0x100, 0x0001_0003, &[0x4455_6677, 0x0011_2233])]);
        std::fs::write(dir.path().join(&rel), &near).unwrap();
        let got = config_bytes(&host, &b).unwrap();
        assert_eq!(got.len(), FIRST_CONFIG_BYTES);
        assert_eq!(parse_dsn(&got).as_deref(), Some("00-11-22-33-44-55-66-77"));
        let far = config_with_caps(&[
            (0x100, 0x8001_0001, &[0; 3]),
            (0x800, 0x0001_0003, &[0x4455_6677, 0x0011_2233]),
        ]);
        std::fs::write(dir.path().join(&rel), &far).unwrap();
        let got = config_bytes(&host, &b).unwrap();
        assert_eq!(got.len(), CONFIG_BYTES);
        assert_eq!(parse_dsn(&got).as_deref(), Some("00-11-22-33-44-55-66-77"));
        // Conventional PCI: 256 bytes are all there is.
        std::fs::write(dir.path().join(&rel), &near[..256]).unwrap();
        assert_eq!(config_bytes(&host, &b).unwrap().len(), 256);
    }

    #[test]
    fn serials_are_cleaned_and_bounded() {
        assert_eq!(
            clean_serial(b"S4EWNX0R123456      \n").as_deref(),
            Some("S4EWNX0R123456")
        );
        assert_eq!(clean_serial(b"   \n"), None);
        assert_eq!(clean_serial(b"a\x1b[2Jb"), None);
        assert_eq!(clean_serial(&[b'x'; 65]), None);
    }

    #[test]
    fn file_names_round_trip_only() {
        assert_eq!(key_of_name("vm-100.json"), Some(VmKey::Pve(100)));
        assert_eq!(key_of_name("vm-0100.json"), None);
        assert_eq!(key_of_name("vm-100.json.tmp"), None);
        assert_eq!(key_of_name("libvirt-../x.json"), None);
        assert!(matches!(
            key_of_name("libvirt-4dea22b3-1d52-d8f3-2516-782e98ab3fa0.json"),
            Some(VmKey::Libvirt(_))
        ));
    }

    // ---- on the simulated kernel ----

    use crate::engine::lifecycle;
    use crate::host::sim::{SimDevice, SimDriver, SimHost};
    use crate::tests::test_support::{timeouts, T};

    const NVME: &str = "0000:02:00.0";
    const NVME2: &str = "0000:03:00.0";
    const UUID: &str = "4dea22b3-1d52-d8f3-2516-782e98ab3fa0";

    fn bdf(s: &str) -> Bdf {
        Bdf::parse(s).unwrap()
    }

    /// The card at 02:00.0 replaced by an Intel I225 NIC (what a moved address looks like).
    fn nic_at(t: &T, at: &str) {
        t.sim.add_driver(SimDriver::new("igc").id(0x8086, 0x15f3));
        t.sim.add_device(
            SimDevice::new(at, 0x8086, 0x15f3, 0x020000)
                .subsystem(0x8086, 0x0000)
                .parent("0000:00:1c.1")
                .group(2)
                .reset_methods(&["flr", "bus"])
                .driver("igc"),
        );
    }

    fn identity_of(t: &T, key: &VmKey) -> IdentityFile {
        load(&*t.sim, key).unwrap().expect("an identity file")
    }

    #[test]
    fn first_start_records_the_named_functions_and_the_same_device_passes() {
        let t = T::new();
        assert!(load(&*t.sim, &VmKey::Pve(100)).unwrap().is_none());
        lifecycle::pre_start(&t.ctx(), 100).unwrap();
        let f = identity_of(&t, &VmKey::Pve(100));
        assert_eq!(f.vmid, Some(100));
        let got: Vec<(&str, String, &str)> = f
            .functions
            .iter()
            .map(|x| (x.origin.as_str(), x.bdf.to_string(), x.id.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("hostpci0", NVME.to_string(), "1b36:0010"),
                ("hostpci1", "0000:04:00.0".to_string(), "1af4:1041"),
            ]
        );
        assert_eq!(f.functions[0].subsystem.as_deref(), Some("1af4:1100"));
        assert_eq!(f.functions[0].class, "010802");
        lifecycle::post_stop(&t.ctx(), 100, true).unwrap();
        // Same devices: no drift, the start goes on.
        let p = lifecycle::plan_vm(&t.ctx_dry(true), 100).unwrap();
        assert!(p.identity.drift.is_empty(), "{:?}", p.identity.drift);
        lifecycle::pre_start(&t.ctx(), 100).unwrap();
        lifecycle::post_stop(&t.ctx(), 100, true).unwrap();
    }

    #[test]
    fn a_start_that_finds_the_same_devices_leaves_the_file_as_it_is() {
        let t = T::new();
        let key = VmKey::Pve(100);
        lifecycle::pre_start(&t.ctx(), 100).unwrap();
        lifecycle::post_stop(&t.ctx(), 100, true).unwrap();
        // The record as an older start left it (its time).
        let mut f = identity_of(&t, &key);
        f.recorded = 1;
        let rel = file_of(&key);
        write(&*t.sim, &key, &f).unwrap();
        let bytes = t.sim.read(&rel).unwrap();
        lifecycle::pre_start(&t.ctx(), 100).unwrap();
        lifecycle::post_stop(&t.ctx(), 100, true).unwrap();
        assert_eq!(
            t.sim.read(&rel).unwrap(),
            bytes,
            "the same devices: not rewritten"
        );
        // What a dry run says of it.
        let dry = lifecycle::plan_vm(&t.ctx_dry(true), 100).unwrap();
        assert!(!dry.identity.changes_record(&key));
        // Something the record does not say (a subsystem it lacks, which is not drift): the
        // file is written, with this start's time.
        assert!(f.functions[0].subsystem.is_some(), "{:?}", f.functions[0]);
        f.functions[0].subsystem = None;
        write(&*t.sim, &key, &f).unwrap();
        let dry = lifecycle::plan_vm(&t.ctx_dry(true), 100).unwrap();
        assert!(dry.identity.changes_record(&key));
        lifecycle::pre_start(&t.ctx(), 100).unwrap();
        let now = identity_of(&t, &key);
        assert!(now.recorded > 1, "{now:?}");
        assert_eq!(now.functions[0].subsystem.as_deref(), Some("1af4:1100"));
        lifecycle::post_stop(&t.ctx(), 100, true).unwrap();
    }

    #[test]
    fn a_moved_address_refuses_before_any_write_and_accept_lets_the_next_start_pass() {
        let t = T::new();
        lifecycle::pre_start(&t.ctx(), 100).unwrap();
        lifecycle::post_stop(&t.ctx(), 100, true).unwrap();
        nic_at(&t, NVME);
        let before = t.devices();
        t.sim.clear_ops();
        let e = lifecycle::pre_start(&t.ctx(), 100).unwrap_err();
        assert_eq!(e.exit_code(), 1, "{e}");
        let m = e.to_string();
        for want in [
            "hostpci0 0000:02:00.0 was 1b36:0010 Non-Volatile memory controller at VM 100's last start",
            "now it is 8086:15f3 Ethernet controller",
            "PCI addresses moved; fix hostpci0 in ",
            "etc/pve/qemu-server/100.conf (or use a PCI mapping)",
            "run `pt-hook accept 100`",
        ] {
            assert!(m.contains(want), "{want:?} not in {m}");
        }
        assert_eq!(t.sim.write_count(), 0, "{:?}", t.sim.ops());
        assert_eq!(t.devices(), before);
        assert!(!t.has_state(100));
        // plan shows the same refusal as a typed value.
        let p = lifecycle::plan_vm(&t.ctx_dry(true), 100).unwrap();
        assert_eq!(p.identity.drift.len(), 1);
        assert_eq!(p.identity.drift[0].bdf, bdf(NVME));
        assert_eq!(p.identity.drift[0].was.id, "1b36:0010");
        assert_eq!(p.identity.drift[0].now.id, "8086:15f3");
        assert_eq!(p.identity.drift[0].accept, "pt-hook accept 100");
        // A dry-run pre-start refuses too.
        assert_eq!(
            lifecycle::pre_start(&t.ctx_dry(true), 100)
                .unwrap_err()
                .exit_code(),
            1
        );
        // accept --dry-run changes nothing; accept rewrites; the next start passes.
        let old = identity_of(&t, &VmKey::Pve(100));
        accept(&*t.sim, &VmKey::Pve(100), true).unwrap();
        assert_eq!(identity_of(&t, &VmKey::Pve(100)), old);
        accept(&*t.sim, &VmKey::Pve(100), false).unwrap();
        let new = identity_of(&t, &VmKey::Pve(100));
        assert_eq!(new.functions[0].id, "8086:15f3");
        assert_eq!(new.functions[0].origin, "hostpci0");
        assert_eq!(new.functions[1], old.functions[1]);
        assert_eq!(t.sim.write_count(), 0, "accept touches no sysfs file");
        lifecycle::pre_start(&t.ctx(), 100).unwrap();
        assert_eq!(t.sim.driver_of(NVME).as_deref(), Some("vfio-pci"));
        lifecycle::post_stop(&t.ctx(), 100, true).unwrap();
    }

    #[test]
    fn the_refusal_names_both_devices_from_pci_ids() {
        let t = T::new();
        let dir = t.sim.root_dir().join("usr/share/misc");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("pci.ids"),
            "1b36  Red Hat, Inc.\n\t0010  QEMU NVM Express Controller\n8086  Intel Corporation\n\t15f3  Ethernet Controller I225-V\n",
        )
        .unwrap();
        lifecycle::pre_start(&t.ctx(), 100).unwrap();
        lifecycle::post_stop(&t.ctx(), 100, true).unwrap();
        nic_at(&t, NVME);
        let m = lifecycle::pre_start(&t.ctx(), 100).unwrap_err().to_string();
        assert!(
            m.contains("was 1b36:0010 Red Hat, Inc. QEMU NVM Express Controller at VM 100's last start, now it is 8086:15f3 Intel Corporation Ethernet Controller I225-V:"),
            "{m}"
        );
    }

    #[test]
    fn the_identity_survives_a_reboot_under_var_lib() {
        let t = T::new();
        lifecycle::pre_start(&t.ctx(), 100).unwrap();
        assert_eq!(
            file_of(&VmKey::Pve(100)),
            "var/lib/pt-hook/identity/vm-100.json"
        );
        // A reboot: /run is a tmpfs, gone.
        std::fs::remove_dir_all(t.sim.root_dir().join("run/pt-hook")).unwrap();
        assert!(t.sim.exists("var/lib/pt-hook/identity/vm-100.json"));
        // The host comes back with a NIC where the NVMe was.
        let t2 = T::with(SimHost::gpu_host());
        let from = t.sim.root_dir().join("var/lib/pt-hook");
        let to = t2.sim.root_dir().join("var/lib/pt-hook");
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::rename(&from, &to).unwrap();
        nic_at(&t2, NVME);
        let e = lifecycle::pre_start(&t2.ctx(), 100).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().contains("8086:15f3"), "{e}");
    }

    #[test]
    fn a_damaged_identity_file_is_a_warning_and_rebuilt() {
        let t = T::new();
        let path = t.sim.root_dir().join("var/lib/pt-hook/identity");
        std::fs::create_dir_all(&path).unwrap();
        let file = path.join("vm-100.json");
        for junk in [
            b"{ not json".to_vec(),
            vec![b' '; MAX_FILE_BYTES + 10],
            br#"{"version":1,"vmid":101,"recorded":0,"functions":[]}"#.to_vec(),
            br#"{"version":1,"vmid":100,"recorded":0,"functions":[{"origin":"hostpci0","bdf":"0000:02:00.0","id":"zz","class":"010802"}]}"#.to_vec(),
        ] {
            std::fs::write(&file, &junk).unwrap();
            let p = lifecycle::plan_vm(&t.ctx_dry(true), 100).unwrap();
            assert!(p.identity.drift.is_empty());
            assert!(
                p.warnings.iter().any(|w| w.contains("vm-100.json")
                    && w.contains("damaged")
                    && w.contains("rewrites it")),
                "{:?}",
                p.warnings
            );
            lifecycle::pre_start(&t.ctx(), 100).unwrap();
            assert_eq!(identity_of(&t, &VmKey::Pve(100)).functions.len(), 2);
            lifecycle::post_stop(&t.ctx(), 100, true).unwrap();
        }
    }

    #[test]
    fn a_serial_change_alone_is_drift() {
        // Two cards with the same ids: only the DSN tells them apart.
        let sim = SimHost::gpu_host();
        sim.add_driver(SimDriver::new("nouveau").id(0x10de, 0x2786));
        let card = |dsn: u64| {
            SimDevice::new("0000:06:00.0", 0x10de, 0x2786, 0x030000)
                .subsystem(0x1043, 0x8888)
                .parent("0000:00:1c.2")
                .group(30)
                .reset_methods(&["flr", "bus"])
                .serial_number(dsn)
                .driver("nouveau")
        };
        sim.add_device(card(0x0011_2233_4455_6677));
        let t = T::build(
            sim,
            &[(120, "hostpci0: 06:00.0\n"), (121, "hostpci0: 03:00.0\n")],
            timeouts(),
        );
        lifecycle::pre_start(&t.ctx(), 120).unwrap();
        assert_eq!(
            identity_of(&t, &VmKey::Pve(120)).functions[0]
                .serial
                .as_deref(),
            Some("00-11-22-33-44-55-66-77")
        );
        lifecycle::post_stop(&t.ctx(), 120, true).unwrap();
        t.sim.add_device(card(0x0011_2233_4455_6688));
        t.sim.clear_ops();
        let m = lifecycle::pre_start(&t.ctx(), 120).unwrap_err().to_string();
        assert!(
            m.contains("serial 00-11-22-33-44-55-66-77 at VM 120's last start, now it is 10de:2786 VGA compatible controller serial 00-11-22-33-44-55-66-88"),
            "{m}"
        );
        assert_eq!(t.sim.write_count(), 0);

        // An NVMe's serial: read while nvme drives it; on vfio-pci it is unknown, not drift.
        let nvme = |serial: &str| {
            SimDevice::new(NVME2, 0x1b36, 0x0010, 0x010802)
                .subsystem(0x1af4, 0x1100)
                .parent("0000:00:1c.2")
                .group(3)
                .reset_methods(&["flr", "bus"])
                .link("8.0 GT/s PCIe", 4)
                .nvme_serial(serial)
                .driver("nvme")
        };
        t.sim.add_device(nvme("S4EWNX0R123456"));
        lifecycle::pre_start(&t.ctx(), 121).unwrap();
        assert_eq!(
            identity_of(&t, &VmKey::Pve(121)).functions[0]
                .nvme_serial
                .as_deref(),
            Some("S4EWNX0R123456")
        );
        // Still on vfio-pci (no post-stop): the next start recovers first and passes; the
        // serial is kept.
        lifecycle::pre_start(&t.ctx(), 121).unwrap();
        lifecycle::post_stop(&t.ctx(), 121, true).unwrap();
        assert_eq!(
            identity_of(&t, &VmKey::Pve(121)).functions[0]
                .nvme_serial
                .as_deref(),
            Some("S4EWNX0R123456")
        );
        t.sim.add_device(nvme("S4EWNX0R999999"));
        let m = lifecycle::pre_start(&t.ctx(), 121).unwrap_err().to_string();
        assert!(
            m.contains("NVMe serial S4EWNX0R123456") && m.contains("NVMe serial S4EWNX0R999999"),
            "{m}"
        );
    }

    #[test]
    fn driver_keep_functions_are_checked_too() {
        let t = T::new();
        lifecycle::pre_start(&t.ctx(), 103).unwrap();
        let f = identity_of(&t, &VmKey::Pve(103));
        assert!(f.functions.iter().any(|x| x.bdf == bdf(NVME2)));
        lifecycle::post_stop(&t.ctx(), 103, true).unwrap();
        t.sim.add_device(
            SimDevice::new(NVME2, 0x8086, 0x15f3, 0x020000)
                .parent("0000:00:1c.2")
                .group(3)
                .driver("igc"),
        );
        let before = t.devices();
        t.sim.clear_ops();
        let m = lifecycle::pre_start(&t.ctx(), 103).unwrap_err().to_string();
        assert!(m.contains("hostpci0 0000:03:00.0 was 1b36:0010"), "{m}");
        assert_eq!(t.sim.write_count(), 0);
        assert_eq!(t.devices(), before);
    }

    #[test]
    fn a_device_absent_now_is_not_drift() {
        let t = T::new();
        lifecycle::pre_start(&t.ctx(), 101).unwrap();
        lifecycle::post_stop(&t.ctx(), 101, true).unwrap();
        let f = identity_of(&t, &VmKey::Pve(101));
        assert!(compare(&*t.sim, &VmKey::Pve(101), &f, &[]).is_empty());
        t.sim.vanish(NVME2);
        // Resolving fails for the missing address (exit 2), not as drift.
        let e = lifecycle::plan_vm(&t.ctx_dry(true), 101).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(all_drift(&*t.sim).is_empty());
    }

    #[test]
    fn a_libvirt_domain_is_keyed_by_its_uuid() {
        let t = T::new();
        let key = |uuid: &str, name: &str| {
            VmKey::Libvirt(Domain {
                uuid: uuid.into(),
                name: name.into(),
            })
        };
        let win = key(UUID, "win11");
        let devs = vec![(bdf(NVME), "hostdev 0 (line 7)".to_string())];
        let start = |k: &VmKey| {
            let ctx = t.ctx();
            let p = lifecycle::plan_bdfs(&ctx, k, &devs)?;
            lifecycle::prepare(&ctx, k, p, &|| lifecycle::plan_bdfs(&ctx, k, &devs))
        };
        start(&win).unwrap();
        assert!(t
            .sim
            .exists(&format!("var/lib/pt-hook/identity/libvirt-{UUID}.json")));
        let f = identity_of(&t, &win);
        assert_eq!(f.domain.as_ref().map(|d| d.name.as_str()), Some("win11"));
        assert_eq!(f.vmid, None);
        lifecycle::post_stop_key(&t.ctx(), &win, true).unwrap();
        nic_at(&t, NVME);
        t.sim.clear_ops();
        let e = start(&win).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        let m = e.to_string();
        assert!(
            m.contains("hostdev 0 (line 7) 0000:02:00.0 was 1b36:0010")
                && m.contains("the last start of libvirt domain \"win11\"")
                && m.contains("virsh edit win11")
                && m.contains(&format!("`pt-hook accept --libvirt-uuid {UUID}`")),
            "{m}"
        );
        assert_eq!(t.sim.write_count(), 0);
        // status sees it at the remembered address.
        let d = all_drift(&*t.sim);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].bdf, bdf(NVME));
        // Another domain (same name, other UUID) remembers nothing: it starts.
        let other = key("00000000-1111-2222-3333-444444444444", "win11");
        start(&other).unwrap();
        lifecycle::post_stop_key(&t.ctx(), &other, true).unwrap();
        // Accept by UUID (the name comes from the file); then it starts.
        accept(&*t.sim, &key(UUID, ""), false).unwrap();
        assert_eq!(identity_of(&t, &win).functions[0].id, "8086:15f3");
        start(&win).unwrap();
        lifecycle::post_stop_key(&t.ctx(), &win, true).unwrap();
    }

    #[test]
    fn accept_without_a_file_or_drift_writes_nothing() {
        let t = T::new();
        accept(&*t.sim, &VmKey::Pve(100), false).unwrap();
        assert!(!t.sim.exists(&file_of(&VmKey::Pve(100))));
        lifecycle::pre_start(&t.ctx(), 100).unwrap();
        let before = std::fs::read(t.sim.root_dir().join(file_of(&VmKey::Pve(100)))).unwrap();
        accept(&*t.sim, &VmKey::Pve(100), false).unwrap();
        let after = std::fs::read(t.sim.root_dir().join(file_of(&VmKey::Pve(100)))).unwrap();
        assert_eq!(before, after);
    }

    #[test]
    fn doctor_fails_the_vm_with_the_same_words() {
        let t = T::new();
        lifecycle::pre_start(&t.ctx(), 100).unwrap();
        lifecycle::post_stop(&t.ctx(), 100, true).unwrap();
        let cfg = crate::parse::config::Config::default();
        let pctx = t.ctx_dry(true);
        let planner = |v| lifecycle::plan_vm(&pctx, v);
        let r = crate::cmd::doctor::run(&*t.sim, &cfg, Some(100), &planner).unwrap();
        let c: Vec<_> = r.checks.iter().filter(|c| c.id == "vm.identity").collect();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].status, crate::cmd::doctor::Status::Pass);
        nic_at(&t, NVME);
        let r = crate::cmd::doctor::run(&*t.sim, &cfg, Some(100), &planner).unwrap();
        let c: Vec<_> = r.checks.iter().filter(|c| c.id == "vm.identity").collect();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].status, crate::cmd::doctor::Status::Fail);
        let plan_msg = lifecycle::plan_vm(&t.ctx_dry(true), 100)
            .unwrap()
            .identity
            .drift[0]
            .message
            .clone();
        assert_eq!(c[0].message, plan_msg);
        assert!(c[0].fix.as_deref().unwrap().contains("pt-hook accept 100"));
        assert_eq!(c[0].device, Some(bdf(NVME)));
    }
}
