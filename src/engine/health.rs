//! The reset memory and device health: the one place that knows how each device model and
//! each slot came out of its resets.
//!
//! After every ladder run (`pt-hook reset`, a VM's post-stop, `cleanup`) pt-hook records, per
//! device model (vendor:device and subsystem) which rung recovered it and how long each rung
//! took, and per slot (the PCI address, with the platform's physical slot name and the device's
//! serial where known) the outcome, the time, a short history and whether it needs a host
//! reboot. The next ladder for that model starts at the rung that worked last time (the
//! ladder still verifies after it and still escalates past it; it never starts at a rung a
//! quirk profile forbids or the slot cannot do). The hook phases add their durations here, and
//! `engine::metrics` renders all of it for node_exporter.
//!
//! File: `/var/lib/pt-hook/health.json` (survives reboots), bounded ([`MAX_MODELS`],
//! [`MAX_SLOTS`], [`MAX_HISTORY`], [`MAX_FILE_BYTES`]), written under an flock of
//! `/var/lib/pt-hook/health.lock` (bounded wait, [`LOCK_WAIT`]) by write-temp + fsync +
//! rename. Readers take no lock: a rename is atomic. A damaged or unreadable file is a
//! warning naming the file and the error; the next writer moves it to `health.json.corrupt`
//! and starts a new one. Nothing here ever fails a reset or a phase: a memory that cannot be
//! read or written is a warning.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::host::paths;
use crate::host::{errno_text, Host};
use crate::log::{escape_controls, Logger};
use crate::pci::{Bdf, PciId};
use crate::sysfs::device::DeviceInfo;

pub const HEALTH_VERSION: u32 = 1;
/// Device models remembered; beyond this the least recently reset are forgotten.
pub const MAX_MODELS: usize = 64;
/// Slots (PCI addresses) remembered; beyond this the least recently reset are forgotten
/// (those that need a host reboot in this boot go last).
pub const MAX_SLOTS: usize = 128;
/// Resets kept in each slot's history (newest last).
pub const MAX_HISTORY: usize = 8;
/// A health file larger than this is damaged (the caps keep it far below).
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// Failure messages are cut to this many characters.
pub const MAX_TEXT: usize = 512;
/// Serials, physical slot names and boot ids are cut to this many characters.
pub const MAX_NAME: usize = 64;
/// How long a writer waits for another one (another hook, a parallel reset).
pub const LOCK_WAIT: Duration = Duration::from_secs(2);
/// After this many ladders started at a remembered rung, the next one runs from the top
/// again: a firmware or kernel update may have made the skipped rungs work.
pub const REPROBE_AFTER: u32 = 32;

/// The rungs of the ladder, in ladder order (`Ord` is that order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RungName {
    FunctionReset,
    BusReset,
    HostRebind,
    RemoveRescan,
}

impl RungName {
    pub const ALL: [RungName; 4] = [
        RungName::FunctionReset,
        RungName::BusReset,
        RungName::HostRebind,
        RungName::RemoveRescan,
    ];

    /// The name the ladder and its reports use ("bus-reset").
    pub fn name(self) -> &'static str {
        match self {
            RungName::FunctionReset => "function-reset",
            RungName::BusReset => "bus-reset",
            RungName::HostRebind => "host-rebind",
            RungName::RemoveRescan => "remove-rescan",
        }
    }

    pub fn from_name(s: &str) -> Option<RungName> {
        RungName::ALL.into_iter().find(|r| r.name() == s)
    }
}

/// How one ladder run ended (the ladder's verdict, as remembered).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Reset and verified.
    Reset,
    /// Not reset (no safe method), healthy.
    Refused,
    /// Still unhealthy after every rung: needs a host reboot.
    Unrecovered,
}

/// The phases whose durations are kept (the hook's four, `cleanup` and `pt-hook reset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    PreStart,
    PostStart,
    PreStop,
    PostStop,
    Cleanup,
    Reset,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::PreStart,
        Phase::PostStart,
        Phase::PreStop,
        Phase::PostStop,
        Phase::Cleanup,
        Phase::Reset,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::PreStart => "pre-start",
            Phase::PostStart => "post-start",
            Phase::PreStop => "pre-stop",
            Phase::PostStop => "post-stop",
            Phase::Cleanup => "cleanup",
            Phase::Reset => "reset",
        }
    }

    /// A hookscript phase name; None for the phases pt-hook only logs.
    pub fn from_hook(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().take(4).find(|p| p.name() == s)
    }
}

/// A device model: vendor:device and, when the kernel shows one, the subsystem (the board
/// maker's id). Different boards of one chip can reset differently, so they are remembered
/// apart.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModelKey {
    pub id: PciId,
    pub subsystem: Option<PciId>,
}

impl ModelKey {
    pub fn of(info: &DeviceInfo) -> ModelKey {
        ModelKey {
            id: PciId {
                vendor: info.vendor,
                device: info.device,
            },
            subsystem: match (info.subsystem_vendor, info.subsystem_device) {
                (Some(vendor), Some(device)) => Some(PciId { vendor, device }),
                _ => None,
            },
        }
    }

    fn matches(&self, id: &str, subsystem: Option<&str>) -> bool {
        self.id.to_string() == id && self.subsystem.map(|s| s.to_string()).as_deref() == subsystem
    }
}

impl std::fmt::Display for ModelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.subsystem {
            Some(s) => write!(f, "{} (subsystem {s})", self.id),
            None => write!(f, "{}", self.id),
        }
    }
}

/// What the ladder remembers about one function before it starts: its model and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionFacts {
    pub bdf: Bdf,
    pub model: ModelKey,
    /// The PCIe Device Serial Number, or an NVMe controller's serial.
    pub serial: Option<String>,
    /// The platform's name for the physical slot (`/sys/bus/pci/slots/NAME`).
    pub physical_slot: Option<String>,
}

/// Physical slots by device address (domain, bus, device), read once per ladder.
pub fn physical_slots(host: &dyn Host) -> Vec<((u16, u8, u8), String)> {
    let mut out = Vec::new();
    for name in host.list(paths::PCI_SLOTS).unwrap_or_default() {
        let Some(rel) = paths::pci_slot_address(&name) else {
            continue;
        };
        let Ok(addr) = host.read(&rel) else {
            continue;
        };
        // "0000:01:00": a device address without the function.
        if let Ok(b) = Bdf::parse(&format!("{}.0", addr.trim())) {
            out.push(((b.domain, b.bus, b.dev), clip_name(&name)));
        }
    }
    out
}

impl FunctionFacts {
    /// The function's model and its serial (from `config`, its config space as read, None
    /// when unreadable, and NVMe's own); the physical slot is named by the caller
    /// (`physical_slots`).
    pub fn read(host: &dyn Host, info: &DeviceInfo, config: Option<&[u8]>) -> FunctionFacts {
        let id = crate::engine::identity::function_id_with(host, info, "", config);
        FunctionFacts {
            bdf: info.bdf,
            model: ModelKey::of(info),
            serial: id.serial.or(id.nvme_serial).map(|s| clip_name(&s)),
            physical_slot: None,
        }
    }
}

/// One rung as a ladder run tried it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RungTry {
    pub rung: RungName,
    /// It touched the device (false: not offered, refused, skipped by a profile).
    pub ran: bool,
    /// It ran and the checks after it passed.
    pub ok: bool,
    pub ms: u64,
}

/// One ladder run over one slot, as the ladder reports it to the memory.
#[derive(Clone, Debug)]
pub struct ResetRecord {
    pub functions: Vec<FunctionFacts>,
    pub outcome: Outcome,
    /// The rung the memory started the ladder at (None: from the top).
    pub start: Option<RungName>,
    pub rungs: Vec<RungTry>,
    pub ms: u64,
    /// The ladder's message when it did not reset the device.
    pub message: Option<String>,
}

/// How often a rung was tried for a model and how long it took.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RungStats {
    pub rung: Option<RungName>,
    /// It ran and the device passed the checks after it (the resets it recovered).
    pub ok: u64,
    /// It ran and the device failed the checks after it.
    pub failed: u64,
    pub last_ms: u64,
    pub sum_ms: u64,
}

/// What one device model taught the ladder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelMemory {
    /// "10de:2786".
    pub id: String,
    /// "1043:8884", when the kernel shows a subsystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsystem: Option<String>,
    /// The rung that recovered it last time: where the next ladder starts.
    #[serde(default)]
    pub rung: Option<RungName>,
    /// Seconds since the epoch of the last reset recorded.
    pub updated: u64,
    /// Ladder runs that reset it and verified it.
    #[serde(default)]
    pub resets: u64,
    /// Ladder runs after which it did not recover.
    #[serde(default)]
    pub unrecovered: u64,
    /// Ladders started at a remembered rung since the last one from the top.
    #[serde(default)]
    pub since_probe: u32,
    #[serde(default)]
    pub rungs: Vec<RungStats>,
}

/// One reset in a slot's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryEntry {
    pub at: u64,
    pub outcome: Outcome,
    pub ms: u64,
    /// Where the memory started the ladder (absent: from the top).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<RungName>,
    pub rungs: Vec<RungTry>,
}

/// One slot (PCI address) and the card last seen in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotMemory {
    pub bdf: Bdf,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsystem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical_slot: Option<String>,
    pub last_reset: u64,
    pub last_outcome: Outcome,
    /// The rung that recovered it at the last reset.
    #[serde(default)]
    pub last_rung: Option<RungName>,
    pub last_ms: u64,
    #[serde(default)]
    pub resets: u64,
    /// Resets after which it did not recover.
    #[serde(default)]
    pub failures: u64,
    #[serde(default)]
    pub consecutive_failures: u32,
    /// The last reset left it broken: only a host reboot (or power cycle) helps.
    #[serde(default)]
    pub needs_reboot: bool,
    /// The boot in which it was marked (a later boot clears the mark).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

/// How long a phase took, over every run since the file was started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseStats {
    pub phase: Phase,
    pub count: u64,
    #[serde(default)]
    pub failures: u64,
    pub sum_ms: u64,
    pub last_ms: u64,
    pub last_at: u64,
    pub last_ok: bool,
}

/// `/var/lib/pt-hook/health.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryFile {
    pub version: u32,
    #[serde(default)]
    pub models: Vec<ModelMemory>,
    #[serde(default)]
    pub slots: Vec<SlotMemory>,
    #[serde(default)]
    pub phases: Vec<PhaseStats>,
}

impl Default for MemoryFile {
    fn default() -> Self {
        MemoryFile {
            version: HEALTH_VERSION,
            models: Vec::new(),
            slots: Vec::new(),
            phases: Vec::new(),
        }
    }
}

/// A device's health as `status`, `reset --json` and the fleet inventory show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceHealth {
    pub bdf: Bdf,
    pub id: String,
    pub subsystem: Option<String>,
    pub physical_slot: Option<String>,
    pub serial: Option<String>,
    /// Seconds since the epoch.
    pub last_reset: u64,
    /// The same as RFC 3339 (UTC).
    pub last_reset_time: String,
    pub last_outcome: Outcome,
    pub last_rung: Option<RungName>,
    pub last_ms: u64,
    pub resets: u64,
    pub failures: u64,
    pub consecutive_failures: u32,
    /// Marked unrecovered in this boot (a reboot since clears it).
    pub needs_reboot: bool,
    pub last_failure: Option<String>,
    /// Where the next ladder for this model starts (None: from the top).
    pub ladder_starts_at: Option<RungName>,
    pub history: Vec<HistoryEntry>,
}

impl DeviceHealth {
    /// One line for people: "last reset 2026-12-02T00:40:12Z: bus-reset, 345 ms; 3 resets,
    /// 0 failures; ladder starts at bus-reset".
    pub fn summary(&self) -> String {
        let how = match (self.last_outcome, self.last_rung) {
            (Outcome::Reset, Some(r)) => format!("{}, {} ms", r.name(), self.last_ms),
            (Outcome::Reset, None) => format!("reset, {} ms", self.last_ms),
            (Outcome::Refused, _) => format!("not reset (no safe method), {} ms", self.last_ms),
            (Outcome::Unrecovered, _) => format!("did NOT recover, {} ms", self.last_ms),
        };
        let mut s = format!(
            "last reset {}: {how}; {} reset{}, {} failure{}",
            self.last_reset_time,
            self.resets,
            if self.resets == 1 { "" } else { "s" },
            self.failures,
            if self.failures == 1 { "" } else { "s" },
        );
        if let Some(r) = self.ladder_starts_at {
            s.push_str(&format!("; ladder starts at {}", r.name()));
        }
        if let Some(p) = &self.physical_slot {
            s.push_str(&format!("; physical slot {}", escape_controls(p)));
        }
        if self.needs_reboot {
            s.push_str("; NEEDS A HOST REBOOT");
            if let Some(f) = &self.last_failure {
                s.push_str(&format!(" ({})", escape_controls(f)));
            }
        }
        s
    }
}

/// The memory as read (no lock: writers rename a complete file into place).
#[derive(Clone, Debug, Default)]
pub struct Memory {
    pub file: MemoryFile,
    /// This boot's id (a "needs a host reboot" mark of another boot no longer holds).
    pub boot_id: Option<String>,
    /// Why the file could not be used, naming it (it is ignored, then rebuilt).
    pub warning: Option<String>,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn boot_id(host: &dyn Host) -> Option<String> {
    host.read(paths::BOOT_ID)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.len() <= 64)
}

/// At most [`MAX_TEXT`] characters.
fn clip(s: &str) -> String {
    s.chars().take(MAX_TEXT).collect()
}

/// At most [`MAX_NAME`] characters.
fn clip_name(s: &str) -> String {
    s.chars().take(MAX_NAME).collect()
}

fn valid_id(s: &str) -> bool {
    PciId::parse(s).is_some_and(|p| p.to_string() == s)
}

/// Checks what serde cannot: ids are ids, and the caps hold (a hand-edited file that is too
/// long is cut, not refused).
fn validate(f: &mut MemoryFile) -> Result<(), String> {
    if f.version != HEALTH_VERSION {
        return Err(format!(
            "version {} (this pt-hook writes version {HEALTH_VERSION})",
            f.version
        ));
    }
    for m in &f.models {
        if !valid_id(&m.id) || m.subsystem.as_deref().is_some_and(|s| !valid_id(s)) {
            return Err(format!(
                "model {:?}: not a vvvv:dddd id",
                escape_controls(&m.id)
            ));
        }
    }
    for s in &mut f.slots {
        if !valid_id(&s.id) || s.subsystem.as_deref().is_some_and(|x| !valid_id(x)) {
            return Err(format!(
                "slot {}: id {:?} is not vvvv:dddd",
                s.bdf,
                escape_controls(&s.id)
            ));
        }
        for t in [&mut s.serial, &mut s.physical_slot, &mut s.boot_id] {
            if let Some(v) = t.as_mut() {
                *v = clip_name(v);
            }
        }
        if let Some(v) = s.last_failure.as_mut() {
            *v = clip(v);
        }
        let n = s.history.len();
        if n > MAX_HISTORY {
            s.history.drain(..n - MAX_HISTORY);
        }
    }
    f.phases.sort_by_key(|p| p.phase);
    f.phases.dedup_by_key(|p| p.phase);
    prune(f, None);
    Ok(())
}

/// Enforces the caps: the least recently reset models and slots go first; slots that need a
/// host reboot in this boot go last.
fn prune(f: &mut MemoryFile, boot: Option<&str>) {
    if f.models.len() > MAX_MODELS {
        f.models.sort_by_key(|m| std::cmp::Reverse(m.updated));
        f.models.truncate(MAX_MODELS);
    }
    if f.slots.len() > MAX_SLOTS {
        let keep =
            |s: &SlotMemory| s.needs_reboot && (boot.is_none() || s.boot_id.as_deref() == boot);
        f.slots
            .sort_by_key(|s| std::cmp::Reverse((keep(s), s.last_reset)));
        f.slots.truncate(MAX_SLOTS);
    }
    f.models
        .sort_by(|a, b| (&a.id, &a.subsystem).cmp(&(&b.id, &b.subsystem)));
    f.slots.sort_by_key(|s| s.bdf);
    for m in &mut f.models {
        m.rungs.sort_by_key(|r| r.rung);
    }
}

/// Reads the file: Ok(None) when there is none, Err(why) when it cannot be used.
fn read_file(host: &dyn Host) -> Result<Option<MemoryFile>, String> {
    let bytes = match host.read_bytes(paths::HEALTH_FILE, MAX_FILE_BYTES + 1) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {}", errno_text(&e))),
    };
    if bytes.len() > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    let mut f: MemoryFile = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    validate(&mut f)?;
    Ok(Some(f))
}

impl Memory {
    /// The memory as it is now, without a lock; a damaged file is a warning (and an empty
    /// memory).
    pub fn load(host: &dyn Host) -> Memory {
        let boot_id = boot_id(host);
        match read_file(host) {
            Ok(f) => Memory {
                file: f.unwrap_or_default(),
                boot_id,
                warning: None,
            },
            Err(why) => Memory {
                file: MemoryFile::default(),
                boot_id,
                warning: Some(format!(
                    "reset memory {}: {why}; ignoring it (the next reset moves it to {} and starts a new one)",
                    host.display(paths::HEALTH_FILE),
                    host.display(paths::HEALTH_CORRUPT)
                )),
            },
        }
    }

    pub fn model(&self, key: &ModelKey) -> Option<&ModelMemory> {
        model_of(&self.file, key)
    }

    /// Where the ladder should start for a slot holding these models: the earliest rung any
    /// of them was last recovered by (functions of one slot are reset together), or None
    /// (from the top) when nothing is remembered, it was the first rung, or it is time to
    /// try the skipped rungs again ([`REPROBE_AFTER`]). The text says why, for the log.
    pub fn start_rung(&self, models: &[ModelKey]) -> Option<(RungName, String)> {
        let known: Vec<(&ModelKey, &ModelMemory, RungName)> = models
            .iter()
            .filter_map(|k| self.model(k).and_then(|m| m.rung.map(|r| (k, m, r))))
            .collect();
        let (k, m, r) = known.iter().min_by_key(|(_, _, r)| *r)?;
        if *r == RungName::FunctionReset {
            return None;
        }
        if known.iter().any(|(_, m, _)| m.since_probe >= REPROBE_AFTER) {
            return None;
        }
        let ok = m
            .rungs
            .iter()
            .find(|s| s.rung == Some(*r))
            .map_or(0, |s| s.ok);
        Some((
            *r,
            format!(
                "the reset memory says {k} recovered at {} last time (it did in {ok} of {} resets)",
                r.name(),
                m.resets
            ),
        ))
    }

    /// The health of the device at `bdf`, if the memory has it and it is the same card
    /// (`ids`: the device there now; a different one has no health yet).
    pub fn device_health(&self, bdf: &Bdf, ids: &ModelKey) -> Option<DeviceHealth> {
        let s = self.file.slots.iter().find(|s| s.bdf == *bdf)?;
        if !ids.matches(&s.id, s.subsystem.as_deref()) {
            return None;
        }
        let needs_reboot = s.needs_reboot
            && match (&s.boot_id, &self.boot_id) {
                (Some(then), Some(now)) => then == now,
                // Without a boot id the mark cannot be known to be stale.
                _ => true,
            };
        Some(DeviceHealth {
            bdf: s.bdf,
            id: s.id.clone(),
            subsystem: s.subsystem.clone(),
            physical_slot: s.physical_slot.clone(),
            serial: s.serial.clone(),
            last_reset: s.last_reset,
            last_reset_time: rfc3339(s.last_reset),
            last_outcome: s.last_outcome,
            last_rung: s.last_rung,
            last_ms: s.last_ms,
            resets: s.resets,
            failures: s.failures,
            consecutive_failures: s.consecutive_failures,
            needs_reboot,
            last_failure: s.last_failure.clone(),
            ladder_starts_at: self.start_rung(std::slice::from_ref(ids)).map(|(r, _)| r),
            history: s.history.clone(),
        })
    }
}

/// The health of one device, loading the memory (for many devices, load a [`Memory`] once).
/// The entry point for other readers of the memory (the fleet inventory).
#[allow(dead_code)]
pub fn device_health(host: &dyn Host, bdf: &Bdf, ids: &ModelKey) -> Option<DeviceHealth> {
    Memory::load(host).device_health(bdf, ids)
}

fn model_of<'a>(f: &'a MemoryFile, key: &ModelKey) -> Option<&'a ModelMemory> {
    f.models
        .iter()
        .find(|m| key.matches(&m.id, m.subsystem.as_deref()))
}

fn model_mut<'a>(f: &'a mut MemoryFile, key: &ModelKey, now: u64) -> &'a mut ModelMemory {
    let i = match f
        .models
        .iter()
        .position(|m| key.matches(&m.id, m.subsystem.as_deref()))
    {
        Some(i) => i,
        None => {
            f.models.push(ModelMemory {
                id: key.id.to_string(),
                subsystem: key.subsystem.map(|s| s.to_string()),
                rung: None,
                updated: now,
                resets: 0,
                unrecovered: 0,
                since_probe: 0,
                rungs: Vec::new(),
            });
            f.models.len() - 1
        }
    };
    &mut f.models[i]
}

/// Applies ladder runs to the memory (the pure part of [`record_resets`]). `learn`: the
/// ladder chose its own first rung (no `--method`), so the models learn from it; otherwise
/// only the slots' histories record it.
pub fn apply_resets(
    f: &mut MemoryFile,
    records: &[ResetRecord],
    learn: bool,
    now: u64,
    boot: Option<&str>,
) {
    for rec in records {
        let recovered_by = rec
            .rungs
            .iter()
            .find(|t| t.ok)
            .map(|t| t.rung)
            .filter(|_| rec.outcome == Outcome::Reset);
        if learn {
            let mut models: Vec<&ModelKey> = rec.functions.iter().map(|x| &x.model).collect();
            models.sort();
            models.dedup();
            for key in models {
                let m = model_mut(f, key, now);
                m.updated = now;
                for t in rec.rungs.iter().filter(|t| t.ran) {
                    let i = match m.rungs.iter().position(|s| s.rung == Some(t.rung)) {
                        Some(i) => i,
                        None => {
                            m.rungs.push(RungStats {
                                rung: Some(t.rung),
                                ..RungStats::default()
                            });
                            m.rungs.len() - 1
                        }
                    };
                    let s = &mut m.rungs[i];
                    if t.ok {
                        s.ok += 1;
                    } else {
                        s.failed += 1;
                    }
                    s.last_ms = t.ms;
                    s.sum_ms = s.sum_ms.saturating_add(t.ms);
                }
                match rec.outcome {
                    Outcome::Reset => {
                        m.resets += 1;
                        if let Some(r) = recovered_by {
                            m.rung = Some(r);
                        }
                    }
                    Outcome::Unrecovered => m.unrecovered += 1,
                    Outcome::Refused => {}
                }
                if rec.start.is_some() {
                    m.since_probe = m.since_probe.saturating_add(1);
                } else {
                    m.since_probe = 0;
                }
            }
        }
        for fx in &rec.functions {
            let same_card = |s: &SlotMemory| {
                fx.model.matches(&s.id, s.subsystem.as_deref())
                    && !matches!((&s.serial, &fx.serial), (Some(a), Some(b)) if a != b)
            };
            match f.slots.iter().position(|s| s.bdf == fx.bdf) {
                Some(i) if same_card(&f.slots[i]) => {}
                // Another card in this slot now: its history starts here.
                Some(i) => {
                    f.slots.remove(i);
                }
                None => {}
            }
            let i = match f.slots.iter().position(|s| s.bdf == fx.bdf) {
                Some(i) => i,
                None => {
                    f.slots.push(SlotMemory {
                        bdf: fx.bdf,
                        id: fx.model.id.to_string(),
                        subsystem: fx.model.subsystem.map(|s| s.to_string()),
                        serial: None,
                        physical_slot: None,
                        last_reset: now,
                        last_outcome: rec.outcome,
                        last_rung: None,
                        last_ms: 0,
                        resets: 0,
                        failures: 0,
                        consecutive_failures: 0,
                        needs_reboot: false,
                        boot_id: None,
                        last_failure: None,
                        history: Vec::new(),
                    });
                    f.slots.len() - 1
                }
            };
            let s = &mut f.slots[i];
            if fx.serial.is_some() {
                s.serial = fx.serial.clone();
            }
            if fx.physical_slot.is_some() {
                s.physical_slot = fx.physical_slot.clone();
            }
            s.last_reset = now;
            s.last_outcome = rec.outcome;
            s.last_rung = recovered_by;
            s.last_ms = rec.ms;
            s.resets += 1;
            match rec.outcome {
                Outcome::Unrecovered => {
                    s.failures += 1;
                    s.consecutive_failures = s.consecutive_failures.saturating_add(1);
                    s.needs_reboot = true;
                    s.boot_id = boot.map(clip_name);
                    s.last_failure = rec.message.as_deref().map(clip);
                }
                Outcome::Reset | Outcome::Refused => {
                    // It is healthy now (the ladder verified it).
                    s.consecutive_failures = 0;
                    s.needs_reboot = false;
                    s.boot_id = None;
                }
            }
            s.history.push(HistoryEntry {
                at: now,
                outcome: rec.outcome,
                ms: rec.ms,
                start: rec.start,
                rungs: rec.rungs.clone(),
            });
            let n = s.history.len();
            if n > MAX_HISTORY {
                s.history.drain(..n - MAX_HISTORY);
            }
        }
    }
    prune(f, boot);
}

/// Adds one phase run (the pure part of the phase recording).
pub fn apply_phase(f: &mut MemoryFile, phase: Phase, took: Duration, ok: bool, now: u64) {
    let ms = took.as_millis().min(u64::MAX as u128) as u64;
    let i = match f.phases.iter().position(|p| p.phase == phase) {
        Some(i) => i,
        None => {
            f.phases.push(PhaseStats {
                phase,
                count: 0,
                failures: 0,
                sum_ms: 0,
                last_ms: 0,
                last_at: 0,
                last_ok: true,
            });
            f.phases.len() - 1
        }
    };
    let p = &mut f.phases[i];
    p.count += 1;
    if !ok {
        p.failures += 1;
    }
    p.sum_ms = p.sum_ms.saturating_add(ms);
    p.last_ms = ms;
    p.last_at = now;
    p.last_ok = ok;
    f.phases.sort_by_key(|p| p.phase);
}

/// Changes the memory under its lock: read (a damaged file is reported, moved aside to
/// `health.json.corrupt` and replaced), `change` (given this boot's id, read when it asks),
/// write atomically, then `after` with the new
/// content while the lock is still held (the metrics file). Never fails: returns false, with
/// a warning, when the memory could not be locked or written.
pub fn update(
    host: &dyn Host,
    log: &Logger,
    change: impl FnOnce(&mut MemoryFile, &dyn Fn() -> Option<String>),
    after: impl FnOnce(&MemoryFile),
) -> bool {
    let file = host.display(paths::HEALTH_FILE);
    let _lock = match host.lock(paths::HEALTH_LOCK, crate::host::kio::cap(LOCK_WAIT)) {
        Ok(l) => l,
        Err(e) => {
            log.warn(&format!(
                "reset memory {file} not updated: could not lock {}: {e}",
                host.display(paths::HEALTH_LOCK)
            ));
            return false;
        }
    };
    let mut f = match read_file(host) {
        Ok(f) => f.unwrap_or_default(),
        Err(why) => {
            let aside = host.display(paths::HEALTH_CORRUPT);
            // Only the latest damaged file is kept.
            let _ = host.remove_file(paths::HEALTH_CORRUPT);
            match host.rename(paths::HEALTH_FILE, paths::HEALTH_CORRUPT) {
                Ok(()) => log.warn(&format!(
                    "reset memory {file}: {why}; moved it to {aside} and started a new one"
                )),
                Err(e) => log.warn(&format!(
                    "reset memory {file}: {why}; starting a new one (moving it to {aside} failed: {})",
                    errno_text(&e)
                )),
            }
            MemoryFile::default()
        }
    };
    // This boot's id, read only by a change that needs it (a reset's record).
    let boot = std::cell::OnceCell::new();
    change(&mut f, &|| boot.get_or_init(|| boot_id(host)).clone());
    let mut bytes = serde_json::to_vec_pretty(&f).unwrap_or_default();
    bytes.push(b'\n');
    if bytes.len() > MAX_FILE_BYTES {
        // The caps keep it far below (a test checks the worst case); never write a file the
        // next reader would refuse.
        log.warn(&format!(
            "reset memory {file} not updated: it would be {} bytes (limit {MAX_FILE_BYTES})",
            bytes.len()
        ));
        return false;
    }
    if let Err(e) = host.write_atomic_mode(paths::HEALTH_FILE, &bytes, 0o600) {
        log.warn(&format!(
            "reset memory {file} not updated: {}",
            errno_text(&e)
        ));
        return false;
    }
    after(&f);
    true
}

/// Remembers ladder runs (post-stop, `pt-hook reset`, cleanup). Never fails.
pub fn record_resets(host: &dyn Host, log: &Logger, records: &[ResetRecord], learn: bool) {
    if records.is_empty() {
        return;
    }
    let now = now_secs();
    update(
        host,
        log,
        |f, boot| apply_resets(f, records, learn, now, boot().as_deref()),
        |_| {},
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(v: u16, d: u16) -> ModelKey {
        ModelKey {
            id: PciId {
                vendor: v,
                device: d,
            },
            subsystem: Some(PciId {
                vendor: 0x1af4,
                device: 0x1100,
            }),
        }
    }

    fn facts(b: &str, k: &ModelKey) -> FunctionFacts {
        FunctionFacts {
            bdf: Bdf::parse(b).unwrap(),
            model: k.clone(),
            serial: None,
            physical_slot: None,
        }
    }

    fn rec(
        fx: Vec<FunctionFacts>,
        outcome: Outcome,
        rungs: &[(RungName, bool, bool)],
    ) -> ResetRecord {
        ResetRecord {
            functions: fx,
            outcome,
            start: None,
            rungs: rungs
                .iter()
                .map(|(r, ran, ok)| RungTry {
                    rung: *r,
                    ran: *ran,
                    ok: *ok,
                    ms: 7,
                })
                .collect(),
            ms: 20,
            message: (outcome == Outcome::Unrecovered).then(|| "gone".to_string()),
        }
    }

    #[test]
    fn learns_the_rung_that_recovered_and_counts_the_rest() {
        let k = key(0x10de, 0x2786);
        let mut f = MemoryFile::default();
        let r = rec(
            vec![facts("0000:01:00.0", &k)],
            Outcome::Reset,
            &[
                (RungName::FunctionReset, true, false),
                (RungName::BusReset, true, true),
            ],
        );
        apply_resets(&mut f, &[r], true, 100, None);
        let m = &f.models[0];
        assert_eq!(m.rung, Some(RungName::BusReset));
        assert_eq!((m.resets, m.unrecovered), (1, 0));
        assert_eq!(m.rungs.len(), 2);
        assert_eq!((m.rungs[0].ok, m.rungs[0].failed), (0, 1));
        assert_eq!((m.rungs[1].ok, m.rungs[1].failed), (1, 0));
        let mem = Memory {
            file: f.clone(),
            ..Memory::default()
        };
        let (start, why) = mem.start_rung(std::slice::from_ref(&k)).unwrap();
        assert_eq!(start, RungName::BusReset);
        assert!(why.contains("10de:2786"), "{why}");
        // Another board of the same chip is another model.
        let other = ModelKey {
            subsystem: None,
            ..k.clone()
        };
        assert_eq!(mem.start_rung(&[other]), None);
        // Not learning (--method): the slot's history only.
        let r = rec(
            vec![facts("0000:01:00.0", &k)],
            Outcome::Reset,
            &[(RungName::FunctionReset, true, true)],
        );
        apply_resets(&mut f, &[r], false, 101, None);
        assert_eq!(f.models[0].rung, Some(RungName::BusReset));
        assert_eq!(f.models[0].resets, 1);
        assert_eq!(f.slots[0].resets, 2);
        assert_eq!(f.slots[0].last_rung, Some(RungName::FunctionReset));
    }

    #[test]
    fn unrecovered_marks_needs_reboot_for_this_boot_only() {
        let k = key(0x1b36, 0x0010);
        let mut f = MemoryFile::default();
        let b = "0000:02:00.0";
        apply_resets(
            &mut f,
            &[rec(
                vec![facts(b, &k)],
                Outcome::Unrecovered,
                &[(RungName::FunctionReset, true, false)],
            )],
            true,
            50,
            Some("boot-a"),
        );
        let mut mem = Memory {
            file: f.clone(),
            boot_id: Some("boot-a".into()),
            warning: None,
        };
        let h = mem.device_health(&Bdf::parse(b).unwrap(), &k).unwrap();
        assert!(h.needs_reboot);
        assert_eq!((h.failures, h.consecutive_failures), (1, 1));
        assert!(
            h.summary().contains("NEEDS A HOST REBOOT"),
            "{}",
            h.summary()
        );
        assert_eq!(f.models[0].unrecovered, 1);
        // After a reboot the mark no longer holds; the failure count stays.
        mem.boot_id = Some("boot-b".into());
        let h = mem.device_health(&Bdf::parse(b).unwrap(), &k).unwrap();
        assert!(!h.needs_reboot);
        assert_eq!(h.failures, 1);
        // Another card at that address has no health yet.
        assert!(mem
            .device_health(&Bdf::parse(b).unwrap(), &key(0x8086, 0x10d3))
            .is_none());
        // A reset that recovers clears the mark.
        apply_resets(
            &mut f,
            &[rec(
                vec![facts(b, &k)],
                Outcome::Reset,
                &[(RungName::BusReset, true, true)],
            )],
            true,
            60,
            Some("boot-a"),
        );
        assert!(!f.slots[0].needs_reboot);
        assert_eq!(f.slots[0].consecutive_failures, 0);
        assert_eq!(f.slots[0].history.len(), 2);
    }

    #[test]
    fn another_card_in_the_slot_starts_a_new_history() {
        let k = key(0x1b36, 0x0010);
        let mut f = MemoryFile::default();
        let mut a = facts("0000:02:00.0", &k);
        a.serial = Some("A".into());
        apply_resets(
            &mut f,
            &[rec(
                vec![a.clone()],
                Outcome::Reset,
                &[(RungName::FunctionReset, true, true)],
            )],
            true,
            1,
            None,
        );
        apply_resets(
            &mut f,
            &[rec(
                vec![a.clone()],
                Outcome::Reset,
                &[(RungName::FunctionReset, true, true)],
            )],
            true,
            2,
            None,
        );
        assert_eq!(f.slots[0].resets, 2);
        let mut b = a.clone();
        b.serial = Some("B".into());
        apply_resets(
            &mut f,
            &[rec(
                vec![b],
                Outcome::Reset,
                &[(RungName::FunctionReset, true, true)],
            )],
            true,
            3,
            None,
        );
        assert_eq!(f.slots.len(), 1);
        assert_eq!(f.slots[0].resets, 1);
        assert_eq!(f.slots[0].serial.as_deref(), Some("B"));
    }

    #[test]
    fn caps_hold_and_the_worst_case_file_fits() {
        let mut f = MemoryFile::default();
        let long = "x".repeat(5000);
        for i in 0..(MAX_SLOTS as u32 + 40) {
            let k = key(0x1000 + i as u16, 0x2000);
            let b = format!("0000:{:02x}:{:02x}.0", i / 32, i % 32);
            let mut fx = facts(&b, &k);
            fx.serial = Some(clip_name(&long));
            fx.physical_slot = Some(clip_name(&long));
            for n in 0..(MAX_HISTORY + 3) {
                let mut r = rec(
                    vec![fx.clone()],
                    Outcome::Unrecovered,
                    &[
                        (RungName::FunctionReset, true, false),
                        (RungName::BusReset, true, false),
                        (RungName::HostRebind, true, false),
                        (RungName::RemoveRescan, true, false),
                    ],
                );
                r.message = Some(long.clone());
                r.ms = u64::MAX / 4;
                apply_resets(
                    &mut f,
                    &[r],
                    true,
                    1000 + i as u64 * 100 + n as u64,
                    Some(&"b".repeat(64)),
                );
            }
        }
        for p in Phase::ALL {
            apply_phase(&mut f, p, Duration::from_secs(1), false, u64::MAX / 4);
        }
        assert_eq!(f.models.len(), MAX_MODELS);
        assert_eq!(f.slots.len(), MAX_SLOTS);
        assert!(f.slots.iter().all(|s| s.history.len() == MAX_HISTORY));
        assert!(f
            .slots
            .iter()
            .all(|s| s.last_failure.as_ref().unwrap().chars().count() == MAX_TEXT));
        // The newest are kept.
        let newest = f.slots.iter().map(|s| s.last_reset).max().unwrap();
        assert_eq!(
            newest,
            1000 + (MAX_SLOTS as u64 + 39) * 100 + MAX_HISTORY as u64 + 2
        );
        let bytes = serde_json::to_vec_pretty(&f).unwrap();
        assert!(bytes.len() < MAX_FILE_BYTES, "{} bytes", bytes.len());
        // What was written reads back (validate keeps it as it is).
        let mut back: MemoryFile = serde_json::from_slice(&bytes).unwrap();
        validate(&mut back).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn reprobes_from_the_top_now_and_then() {
        let k = key(0x10de, 0x2786);
        let mut f = MemoryFile::default();
        apply_resets(
            &mut f,
            &[rec(
                vec![facts("0000:01:00.0", &k)],
                Outcome::Reset,
                &[
                    (RungName::FunctionReset, true, false),
                    (RungName::BusReset, true, true),
                ],
            )],
            true,
            1,
            None,
        );
        for n in 0..REPROBE_AFTER {
            let mem = Memory {
                file: f.clone(),
                ..Memory::default()
            };
            assert_eq!(
                mem.start_rung(std::slice::from_ref(&k)).map(|x| x.0),
                Some(RungName::BusReset),
                "{n}"
            );
            let mut r = rec(
                vec![facts("0000:01:00.0", &k)],
                Outcome::Reset,
                &[(RungName::BusReset, true, true)],
            );
            r.start = Some(RungName::BusReset);
            apply_resets(&mut f, &[r], true, 2 + n as u64, None);
        }
        let mem = Memory {
            file: f.clone(),
            ..Memory::default()
        };
        assert_eq!(
            mem.start_rung(std::slice::from_ref(&k)),
            None,
            "the whole ladder again"
        );
        apply_resets(
            &mut f,
            &[rec(
                vec![facts("0000:01:00.0", &k)],
                Outcome::Reset,
                &[
                    (RungName::FunctionReset, true, false),
                    (RungName::BusReset, true, true),
                ],
            )],
            true,
            100,
            None,
        );
        let mem = Memory {
            file: f,
            ..Memory::default()
        };
        assert_eq!(mem.start_rung(&[k]).map(|x| x.0), Some(RungName::BusReset));
    }

    #[test]
    fn phases_count_and_sum() {
        let mut f = MemoryFile::default();
        apply_phase(
            &mut f,
            Phase::PostStop,
            Duration::from_millis(250),
            true,
            10,
        );
        apply_phase(
            &mut f,
            Phase::PreStart,
            Duration::from_millis(120),
            true,
            11,
        );
        apply_phase(
            &mut f,
            Phase::PostStop,
            Duration::from_millis(50),
            false,
            12,
        );
        assert_eq!(f.phases[0].phase, Phase::PreStart);
        let p = &f.phases[1];
        assert_eq!(
            (p.count, p.failures, p.sum_ms, p.last_ms, p.last_ok),
            (2, 1, 300, 50, false)
        );
        assert_eq!(Phase::from_hook("post-start"), Some(Phase::PostStart));
        assert_eq!(Phase::from_hook("cleanup"), None);
        assert_eq!(Phase::from_hook("pre-migrate"), None);
    }
}
