//! Simulated kernel: an in-memory model of Linux PCI sysfs (docs/kernel.md) that the behaviour
//! tests run pt-hook against. Everything under `sys/` lives in memory; every other path is
//! a real file under a private temp root (VM configs, /run state, locks), plus a synthesized
//! `proc/modules`.
//!
//! The model follows the kernel where it matters to pt-hook: errnos of every write, the
//! matching rules of bind/drivers_probe/driver_override/new_id, reset method probing (`bus`
//! is unsupported on a function that shares its bus, decided when the list is (re)probed),
//! remove/rescan with fresh state, module load/unload binding, the fbcon/framebuffer life
//! cycle, and the device lock (an op on a device waits while a slow or hung reset holds it).
//! Faults can be injected before any op. Nothing here sleeps unless a test asks for it.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::real::RealHost;
use super::{CmdOutput, Host, LockGuard};
use crate::pci::{Bdf, PciId};

/// Kernel release shown in modprobe messages.
const KVER: &str = "6.8.12-4-pve";
/// Reset method names in the kernel's default priority order.
pub use crate::pci::RESET_METHODS as RESET_METHOD_NAMES;
/// How long a hung op blocks unless `release_hangs` is called first.
const DEFAULT_HANG_LIMIT: Duration = Duration::from_secs(10);

fn err(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn norm_module(name: &str) -> String {
    name.replace('-', "_")
}

fn method_name(name: &str) -> Option<&'static str> {
    RESET_METHOD_NAMES.iter().copied().find(|m| *m == name)
}

fn methods(list: &[&str]) -> Vec<&'static str> {
    list.iter()
        .map(|m| method_name(m).unwrap_or_else(|| panic!("unknown reset method {m:?}")))
        .collect()
}

/// sysfs_streq: a single trailing newline is ignored.
fn strip_nl(s: &str) -> &str {
    s.strip_suffix('\n').unwrap_or(s)
}

/// kstrtoul(buf, 0): optional '+', 0x hex / 0 octal / decimal, one trailing newline.
fn kstrtoul(s: &str) -> Option<u64> {
    let s = strip_nl(s);
    let s = s.strip_prefix('+').unwrap_or(s);
    let (digits, radix) = crate::pci::split_base0(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// simple_strtoul(buf, NULL, 0) as vtconsole `bind` uses it: leading digits, garbage is 0.
fn simple_strtoul(s: &str) -> u64 {
    let s = s.trim_start();
    let (body, radix) = if let Some(h) = s.strip_prefix("0x") {
        (h, 16)
    } else {
        (s, 10)
    };
    let digits: String = body.chars().take_while(|c| c.is_digit(radix)).collect();
    u64::from_str_radix(&digits, radix).unwrap_or(0)
}

fn unit_name(u: &str) -> String {
    const TYPES: [&str; 11] = [
        "service",
        "socket",
        "target",
        "timer",
        "mount",
        "path",
        "scope",
        "slice",
        "device",
        "swap",
        "automount",
    ];
    match u.rsplit_once('.') {
        Some((_, t)) if TYPES.contains(&t) => u.to_string(),
        _ => format!("{u}.service"),
    }
}

fn is_sys(rel: &str) -> bool {
    rel == "sys" || rel.starts_with("sys/")
}

/// Anything that names a PCI function in test code: `"0000:01:00.0"`, a `Bdf`, a `&Bdf`.
/// Strings that do not parse panic (test setup only).
pub trait AsBdf {
    fn as_bdf(&self) -> Bdf;
}
impl AsBdf for Bdf {
    fn as_bdf(&self) -> Bdf {
        *self
    }
}
impl AsBdf for &Bdf {
    fn as_bdf(&self) -> Bdf {
        **self
    }
}
impl AsBdf for &str {
    fn as_bdf(&self) -> Bdf {
        Bdf::parse(self).unwrap_or_else(|e| panic!("{e}"))
    }
}
impl AsBdf for String {
    fn as_bdf(&self) -> Bdf {
        self.as_str().as_bdf()
    }
}
impl AsBdf for &String {
    fn as_bdf(&self) -> Bdf {
        self.as_str().as_bdf()
    }
}

/// What one reset method does when the kernel tries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResetBehaviour {
    /// Works; also clears a wedge and retrains the link to its maximum.
    Ok,
    /// ENOTTY: the kernel moves on to the next method.
    Enotty,
    /// EINVAL: stops the ladder.
    Einval,
    /// Any other errno: stops the ladder.
    Errno(i32),
    /// Reports success, but the function is gone afterwards: config reads 0xff….
    Wedge,
    /// Reports success and changes nothing: a wedged function stays wedged (the AMD reset
    /// bug: FLR and bus reset "work" but only a device-specific reset or the host driver's
    /// probe brings the card back).
    Ineffective,
    /// Reports success; the link comes back at this width.
    NarrowLink(u8),
    /// Never returns: the write blocks (device lock held) until `release_hangs` or the hang
    /// limit (10 s), then fails with ETIMEDOUT. Use with `write_with_deadline`.
    Hang,
    /// Works after this long (device lock held meanwhile, other devices unaffected).
    Slow(Duration),
    /// Works once this many resets (of any devices) have been in progress at the same time,
    /// or at the hang limit (device lock held meanwhile): resets that run in parallel meet,
    /// serialised ones each wait out the limit. `reset_spans` shows which it was.
    Together(usize),
}

/// PCIe link state (`current_link_*`, `max_link_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub cur_speed: String,
    pub cur_width: u8,
    pub max_speed: String,
    pub max_width: u8,
}

impl Link {
    pub fn new(speed: &str, width: u8) -> Link {
        Link {
            cur_speed: speed.to_string(),
            cur_width: width,
            max_speed: speed.to_string(),
            max_width: width,
        }
    }
}

/// A PCI function as enumerated (builder). `reset_methods` is what the hardware supports and
/// what enumeration listed; the `reset`/`reset_method` files exist only if it is non-empty.
#[derive(Clone, Debug)]
pub struct SimDevice {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    pub subsystem_vendor: u16,
    pub subsystem_device: u16,
    /// The bridge (root port) above; None = on a root bus (bus reset impossible).
    pub parent: Option<Bdf>,
    pub is_bridge: bool,
    pub iommu_group: Option<u32>,
    pub boot_vga: Option<bool>,
    pub reset_methods: Vec<&'static str>,
    pub reset_method: Vec<&'static str>,
    pub reset_behaviour: BTreeMap<&'static str, ResetBehaviour>,
    /// None: no ACPI, no file.
    pub d3cold_allowed: Option<bool>,
    pub power_control: String,
    /// None: conventional PCI, no link files.
    pub link: Option<Link>,
    /// 256 bytes of config space; None builds it from the ids.
    pub config: Option<Vec<u8>>,
    pub driver: Option<String>,
    pub driver_override: Option<String>,
    /// Bridges: the 6.12+ `reset_subordinate` file.
    pub reset_subordinate: bool,
    /// Bridges: a persistent errno for `reset_subordinate` (EAGAIN, ENOTTY).
    pub subordinate_errno: Option<i32>,
    /// PCI_DEV_FLAGS_NO_BUS_RESET (quirk / vendor-reset).
    pub no_bus_reset: bool,
    /// Probe result per driver name (e.g. EAGAIN for a deferred probe).
    pub probe_errors: BTreeMap<String, i32>,
    /// A PCIe Device Serial Number capability at 0x100 (config space is then 4096 bytes).
    pub dsn: Option<u64>,
    /// An NVMe controller's serial: `nvme/nvme0/serial` while the nvme driver is bound.
    pub nvme_serial: Option<String>,
}

impl SimDevice {
    pub fn new(bdf: impl AsBdf, vendor: u16, device: u16, class: u32) -> SimDevice {
        SimDevice {
            bdf: bdf.as_bdf(),
            vendor,
            device,
            class,
            subsystem_vendor: vendor,
            subsystem_device: device,
            parent: None,
            is_bridge: false,
            iommu_group: None,
            boot_vga: None,
            reset_methods: Vec::new(),
            reset_method: Vec::new(),
            reset_behaviour: BTreeMap::new(),
            d3cold_allowed: Some(true),
            power_control: "on".to_string(),
            link: None,
            config: None,
            driver: None,
            driver_override: None,
            reset_subordinate: false,
            subordinate_errno: None,
            no_bus_reset: false,
            probe_errors: BTreeMap::new(),
            dsn: None,
            nvme_serial: None,
        }
    }

    /// A PCIe root port (QEMU pcie-root-port 1b36:000c) bound to pcieport, with
    /// `reset_subordinate`.
    pub fn bridge(bdf: impl AsBdf) -> SimDevice {
        let mut d = SimDevice::new(bdf, 0x1b36, 0x000c, 0x060400);
        d.is_bridge = true;
        d.reset_subordinate = true;
        d.driver = Some("pcieport".to_string());
        d.link = Some(Link::new("16.0 GT/s PCIe", 16));
        d
    }

    pub fn subsystem(mut self, vendor: u16, device: u16) -> Self {
        self.subsystem_vendor = vendor;
        self.subsystem_device = device;
        self
    }
    pub fn parent(mut self, bridge: impl AsBdf) -> Self {
        self.parent = Some(bridge.as_bdf());
        self
    }
    pub fn group(mut self, group: u32) -> Self {
        self.iommu_group = Some(group);
        self
    }
    pub fn boot_vga(mut self, on: bool) -> Self {
        self.boot_vga = Some(on);
        self
    }
    /// Supported methods, also the current list. Panics on an unknown name.
    pub fn reset_methods(mut self, list: &[&str]) -> Self {
        self.reset_methods = methods(list);
        self.reset_method = self.reset_methods.clone();
        self
    }
    /// The current `reset_method` list only (call after `reset_methods`).
    pub fn current_reset_method(mut self, list: &[&str]) -> Self {
        self.reset_method = methods(list);
        self
    }
    pub fn reset_behaviour(mut self, method: &str, b: ResetBehaviour) -> Self {
        let m = method_name(method).unwrap_or_else(|| panic!("unknown reset method {method:?}"));
        self.reset_behaviour.insert(m, b);
        self
    }
    pub fn d3cold(mut self, allowed: Option<bool>) -> Self {
        self.d3cold_allowed = allowed;
        self
    }
    pub fn power_control(mut self, v: &str) -> Self {
        self.power_control = v.to_string();
        self
    }
    /// Current and max link.
    pub fn link(mut self, speed: &str, width: u8) -> Self {
        self.link = Some(Link::new(speed, width));
        self
    }
    pub fn no_link(mut self) -> Self {
        self.link = None;
        self
    }
    /// A Device Serial Number extended capability (the only one, at 0x100).
    pub fn serial_number(mut self, dsn: u64) -> Self {
        self.dsn = Some(dsn);
        self
    }
    /// The serial an NVMe controller reports (`nvme/nvme0/serial`, space-padded like the
    /// kernel's) while the nvme driver is bound.
    pub fn nvme_serial(mut self, serial: &str) -> Self {
        self.nvme_serial = Some(serial.to_string());
        self
    }
    pub fn config(mut self, bytes: Vec<u8>) -> Self {
        self.config = Some(bytes);
        self
    }
    pub fn driver(mut self, name: &str) -> Self {
        self.driver = Some(name.to_string());
        self
    }
    pub fn unbound(mut self) -> Self {
        self.driver = None;
        self
    }
    pub fn driver_override(mut self, name: &str) -> Self {
        self.driver_override = Some(name.to_string());
        self
    }
    pub fn with_reset_subordinate(mut self, on: bool) -> Self {
        self.reset_subordinate = on;
        self
    }
    pub fn subordinate_error(mut self, errno: i32) -> Self {
        self.subordinate_errno = Some(errno);
        self
    }
    pub fn no_bus_reset(mut self) -> Self {
        self.no_bus_reset = true;
        self
    }
    pub fn probe_error(mut self, driver: &str, errno: i32) -> Self {
        self.probe_errors.insert(driver.to_string(), errno);
        self
    }

    fn build_config(&self) -> Vec<u8> {
        let mut c = vec![0u8; 256];
        c[0..2].copy_from_slice(&self.vendor.to_le_bytes());
        c[2..4].copy_from_slice(&self.device.to_le_bytes());
        c[9] = (self.class & 0xff) as u8;
        c[10] = ((self.class >> 8) & 0xff) as u8;
        c[11] = ((self.class >> 16) & 0xff) as u8;
        c[0x0e] = u8::from(self.is_bridge);
        if !self.is_bridge {
            c[0x2c..0x2e].copy_from_slice(&self.subsystem_vendor.to_le_bytes());
            c[0x2e..0x30].copy_from_slice(&self.subsystem_device.to_le_bytes());
        }
        if let Some(dsn) = self.dsn {
            // Extended config space: DSN capability (id 0x0003, version 1, no next).
            c.resize(4096, 0);
            c[0x100..0x104].copy_from_slice(&0x0001_0003u32.to_le_bytes());
            c[0x104..0x108].copy_from_slice(&(dsn as u32).to_le_bytes());
            c[0x108..0x10c].copy_from_slice(&((dsn >> 32) as u32).to_le_bytes());
        }
        c
    }
}

/// A PCI driver (builder). By default it lives in a module named like the driver (`-` → `_`)
/// that is loaded.
#[derive(Clone, Debug)]
pub struct SimDriver {
    pub name: String,
    /// None: built into the kernel (always registered, cannot be unloaded).
    pub module: Option<String>,
    pub ids: Vec<PciId>,
    /// (class, mask) matches.
    pub classes: Vec<(u32, u32)>,
    pub loaded: bool,
    /// Registers a framebuffer (DRM with fbdev) for each device it is bound to.
    pub provides_fb: bool,
    /// Unbinding hangs while fbcon is bound (nvidia with modeset=1).
    pub unbind_hangs_with_console: bool,
    /// The module is not installed: modprobe fails "not found".
    pub unavailable: bool,
    /// Its probe resets the card (amdgpu's MODE1/MODE2 reset): binding it clears a wedge.
    /// Other host drivers fail to probe a wedged function (EIO); vfio-pci binds anyway.
    pub resets_on_probe: bool,
}

impl SimDriver {
    pub fn new(name: &str) -> SimDriver {
        SimDriver {
            name: name.to_string(),
            module: Some(norm_module(name)),
            ids: Vec::new(),
            classes: Vec::new(),
            loaded: true,
            provides_fb: false,
            unbind_hangs_with_console: false,
            unavailable: false,
            resets_on_probe: false,
        }
    }
    pub fn resets_on_probe(mut self) -> Self {
        self.resets_on_probe = true;
        self
    }
    pub fn module(mut self, module: &str) -> Self {
        self.module = Some(norm_module(module));
        self
    }
    pub fn builtin(mut self) -> Self {
        self.module = None;
        self
    }
    pub fn id(mut self, vendor: u16, device: u16) -> Self {
        self.ids.push(PciId { vendor, device });
        self
    }
    pub fn ids(mut self, ids: &[(u16, u16)]) -> Self {
        self.ids
            .extend(ids.iter().map(|&(vendor, device)| PciId { vendor, device }));
        self
    }
    /// Matches this exact 24-bit class.
    pub fn class(self, class: u32) -> Self {
        self.class_mask(class, 0xff_ffff)
    }
    pub fn class_mask(mut self, class: u32, mask: u32) -> Self {
        self.classes.push((class, mask));
        self
    }
    pub fn loaded(mut self, on: bool) -> Self {
        self.loaded = on;
        self
    }
    pub fn unloaded(self) -> Self {
        self.loaded(false)
    }
    pub fn provides_fb(mut self) -> Self {
        self.provides_fb = true;
        self
    }
    pub fn unbind_hangs_with_console(mut self) -> Self {
        self.unbind_hangs_with_console = true;
        self
    }
    pub fn unavailable(mut self) -> Self {
        self.unavailable = true;
        self
    }
}

/// A kernel module parameter under sys/module/M/parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModParam {
    pub default: String,
    pub writable: bool,
}

/// A kernel module (builder); drivers' modules are created implicitly, this is for modules
/// without a PCI driver (nvidia_drm, nvidia_modeset) or with parameters / dependencies.
#[derive(Clone, Debug)]
pub struct SimModule {
    pub name: String,
    pub loaded: bool,
    pub available: bool,
    /// Refcount held by userspace: `modprobe -r` fails "is in use".
    pub in_use: bool,
    /// `modprobe -r` hangs (returns ETIMEDOUT after the caller's timeout).
    pub unload_hangs: bool,
    /// Loaded first by modprobe; a loaded module holds its dependencies.
    pub depends: Vec<String>,
    pub params: BTreeMap<String, ModParam>,
}

impl SimModule {
    pub fn new(name: &str) -> SimModule {
        SimModule {
            name: norm_module(name),
            loaded: true,
            available: true,
            in_use: false,
            unload_hangs: false,
            depends: Vec::new(),
            params: BTreeMap::new(),
        }
    }
    pub fn loaded(mut self, on: bool) -> Self {
        self.loaded = on;
        self
    }
    pub fn unavailable(mut self) -> Self {
        self.available = false;
        self
    }
    pub fn in_use(mut self) -> Self {
        self.in_use = true;
        self
    }
    pub fn unload_hangs(mut self) -> Self {
        self.unload_hangs = true;
        self
    }
    pub fn depends(mut self, deps: &[&str]) -> Self {
        self.depends.extend(deps.iter().map(|d| norm_module(d)));
        self
    }
    pub fn param(mut self, name: &str, default: &str, writable: bool) -> Self {
        self.params.insert(
            name.to_string(),
            ModParam {
                default: default.to_string(),
                writable,
            },
        );
        self
    }
}

/// What `systemctl start|stop` does for a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitOutcome {
    Ok,
    /// Exit 1, "Job for … failed".
    Fail,
    /// Never finishes: ETIMEDOUT after the caller's timeout.
    Hang,
}

/// Which path (or, for `Run`, which argument string) a fault applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    Any,
    Exact(String),
    Suffix(String),
    Contains(String),
    /// A write of exactly `data` (trailing newline ignored) to `path`: one device's write to a
    /// file all devices share (`drivers/*/unbind`, `drivers_probe`), whatever order parallel
    /// steps write in. Reads and runs never match.
    ExactWrite {
        path: String,
        data: String,
    },
}

impl PathMatch {
    fn matches(&self, s: &str) -> bool {
        self.matches_op(s, None)
    }

    /// `data`: what a write writes (None: not a write).
    fn matches_op(&self, s: &str, data: Option<&str>) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::ExactWrite { path, data: want } => {
                s == path && data.is_some_and(|d| strip_nl(d) == strip_nl(want))
            }
            PathMatch::Exact(p) => s == p,
            PathMatch::Suffix(p) => s.ends_with(p.as_str()),
            PathMatch::Contains(p) => s.contains(p.as_str()),
        }
    }
}

/// The kind of op a fault applies to. Read covers read, read_bytes, link_name and list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultOp {
    Write,
    Read,
    /// A program run; the path match is applied to the arguments joined with spaces.
    Run(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The op fails with this errno (for Run: spawning fails with it).
    Errno(i32),
    /// Blocks (holding the device lock when the op names a device) until `release_hangs`
    /// or the hang limit (~10 s), then ETIMEDOUT. Run ops block for their timeout.
    Hang,
    /// The device (and anything below it) disappears right before the op, which then runs.
    /// A later rescan brings it back.
    Vanish(Bdf),
    /// Writes and runs report success and do nothing (reads are unaffected).
    SilentNoop,
    /// Run only: the program exits with this code and stderr (writes: EIO).
    Exit(i32, String),
    /// Sleeps, then the op runs normally.
    Delay(Duration),
}

impl Fault {
    pub fn vanish(bdf: impl AsBdf) -> Fault {
        Fault::Vanish(bdf.as_bdf())
    }
}

/// One injected fault. `nth` (1-based) fires only on the nth matching op; without it, on
/// every matching op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultPoint {
    pub path: PathMatch,
    pub op: FaultOp,
    pub nth: Option<usize>,
    pub fault: Fault,
}

impl FaultPoint {
    pub fn write(path: &str, fault: Fault) -> FaultPoint {
        FaultPoint {
            path: PathMatch::Exact(path.to_string()),
            op: FaultOp::Write,
            nth: None,
            fault,
        }
    }
    pub fn write_suffix(suffix: &str, fault: Fault) -> FaultPoint {
        FaultPoint {
            path: PathMatch::Suffix(suffix.to_string()),
            op: FaultOp::Write,
            nth: None,
            fault,
        }
    }
    pub fn read(path: &str, fault: Fault) -> FaultPoint {
        FaultPoint {
            path: PathMatch::Exact(path.to_string()),
            op: FaultOp::Read,
            nth: None,
            fault,
        }
    }
    pub fn read_suffix(suffix: &str, fault: Fault) -> FaultPoint {
        FaultPoint {
            path: PathMatch::Suffix(suffix.to_string()),
            op: FaultOp::Read,
            nth: None,
            fault,
        }
    }
    /// Every run of `prog`; narrow with `args_contain`.
    pub fn run(prog: &str, fault: Fault) -> FaultPoint {
        FaultPoint {
            path: PathMatch::Any,
            op: FaultOp::Run(prog.to_string()),
            nth: None,
            fault,
        }
    }
    pub fn args_contain(mut self, s: &str) -> Self {
        self.path = PathMatch::Contains(s.to_string());
        self
    }
    pub fn nth(mut self, n: usize) -> Self {
        self.nth = Some(n);
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Write,
    Run,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// Still blocked (a hang).
    Pending,
    Ok,
    Err(i32),
    /// A run that finished with this exit code.
    Exit(Option<i32>),
}

/// One logged write or run. For runs, `path` is the program and `data` the arguments
/// joined with spaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub kind: OpKind,
    pub path: String,
    pub data: String,
    pub result: OpResult,
}

/// Per-device host state a rollback must restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevState {
    pub present: bool,
    pub driver: Option<String>,
    pub driver_override: Option<String>,
    /// As read from `reset_method`, without the newline.
    pub reset_method: String,
    pub d3cold_allowed: Option<bool>,
    pub power_control: String,
}

/// Host state for "equal to the starting state" assertions.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Every device ever added, removed ones with `present: false`.
    pub devices: BTreeMap<Bdf, DevState>,
    pub modules: BTreeSet<String>,
    /// vtconN → bound.
    pub vtcon_binds: BTreeMap<String, bool>,
    pub active_units: BTreeSet<String>,
    /// Ids added through `new_id` or the `ids=` parameter, per driver (non-empty only).
    pub dynamic_ids: BTreeMap<String, Vec<PciId>>,
}

impl Snapshot {
    pub fn device(&self, bdf: impl AsBdf) -> Option<&DevState> {
        self.devices.get(&bdf.as_bdf())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    File,
    Dir,
    /// Canonical target path.
    Link(String),
}

type Tree = BTreeMap<String, Node>;

fn put(t: &mut Tree, path: &str, node: Node) {
    for (i, _) in path.match_indices('/') {
        t.entry(path[..i].to_string()).or_insert(Node::Dir);
    }
    t.insert(path.to_string(), node);
}

fn resolve(tree: &Tree, rel: &str, follow_last: bool) -> String {
    let comps: Vec<&str> = rel
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let mut cur = String::new();
    for (i, c) in comps.iter().enumerate() {
        if *c == ".." {
            match cur.rfind('/') {
                Some(p) => cur.truncate(p),
                None => cur.clear(),
            }
            continue;
        }
        if !cur.is_empty() {
            cur.push('/');
        }
        cur.push_str(c);
        if i + 1 < comps.len() || follow_last {
            if let Some(Node::Link(t)) = tree.get(&cur) {
                cur = t.clone();
            }
        }
    }
    cur
}

/// The relative symlink text from directory `from` to `to` (both canonical).
fn relative(from: &str, to: &str) -> String {
    let f: Vec<&str> = from.split('/').filter(|c| !c.is_empty()).collect();
    let t: Vec<&str> = to.split('/').filter(|c| !c.is_empty()).collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<&str> = vec![".."; f.len() - common];
    parts.extend(&t[common..]);
    parts.join("/")
}

fn children(tree: &Tree, dir: &str) -> Vec<String> {
    let prefix = format!("{dir}/");
    let mut out = BTreeSet::new();
    for k in tree
        .range(prefix.clone()..)
        .map(|(k, _)| k)
        .take_while(|k| k.starts_with(&prefix))
    {
        if let Some(first) = k[prefix.len()..].split('/').next() {
            out.insert(first.to_string());
        }
    }
    out.into_iter().collect()
}

struct Dev {
    /// Live state (driver, override, reset list, power, link, behaviours).
    s: SimDevice,
    /// As added: the fresh state a rescan restores.
    init: SimDevice,
    present: bool,
    wedged: bool,
    reset_files: bool,
    config: Vec<u8>,
}

struct Drv {
    spec: SimDriver,
    dynids: Vec<PciId>,
}

struct Module {
    spec: SimModule,
    values: BTreeMap<String, String>,
}

struct Unit {
    active: bool,
    holds: Vec<String>,
    start: UnitOutcome,
    stop: UnitOutcome,
}

struct FirmwareFb {
    driver: String,
    present: bool,
    bound: bool,
}

struct FaultState {
    point: FaultPoint,
    seen: usize,
    spent: bool,
}

enum OpClass<'a> {
    Write,
    Read,
    Run(&'a str),
}

enum ModErr {
    Msg(String),
    Hang,
}

struct State {
    devices: BTreeMap<Bdf, Dev>,
    /// Registration order matters for probing.
    drivers: Vec<Drv>,
    modules: BTreeMap<String, Module>,
    units: BTreeMap<String, Unit>,
    systemd: bool,
    iommu: Option<String>,
    fbcon_bound: bool,
    had_fb: bool,
    firmware_fb: Option<FirmwareFb>,
    faults: Vec<FaultState>,
    ops: Vec<Op>,
    busy: BTreeSet<Bdf>,
    hang_gen: u64,
    hang_limit: Duration,
    /// Resets in progress now, the most at once so far, and when each one ran.
    resetting: usize,
    reset_peak: usize,
    reset_spans: Vec<(Bdf, Instant, Instant)>,
    /// sysfs nodes beside the PCI model (block/net/drm class devices, dm holders...).
    extras: Vec<Extra>,
    /// Device nodes processes hold open (what /proc/*/fd would show).
    open_nodes: Vec<super::OpenNode>,
    addrs4: Vec<super::Ipv4Addr>,
    /// LXC containers `pct` knows: id → (running, the holds its processes have while it runs).
    containers: BTreeMap<u32, SimContainer>,
}

/// A sysfs node beside the PCI model. With `when`, it exists only while that device is
/// present and bound to that driver (a namespace exists while nvme is bound).
#[derive(Clone, Debug)]
struct Extra {
    when: Option<(Bdf, String)>,
    path: String,
    node: Node,
    content: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct SimContainer {
    pub running: bool,
    pub holds: Vec<super::OpenNode>,
    /// `pct shutdown` fails with this exit code (the container refuses to stop).
    pub refuse_stop: Option<i32>,
}

impl State {
    fn new() -> State {
        State {
            devices: BTreeMap::new(),
            drivers: Vec::new(),
            modules: BTreeMap::new(),
            units: BTreeMap::new(),
            systemd: false,
            iommu: Some("dmar0".to_string()),
            fbcon_bound: false,
            had_fb: false,
            firmware_fb: None,
            faults: Vec::new(),
            ops: Vec::new(),
            busy: BTreeSet::new(),
            hang_gen: 0,
            hang_limit: DEFAULT_HANG_LIMIT,
            resetting: 0,
            reset_peak: 0,
            reset_spans: Vec::new(),
            extras: Vec::new(),
            open_nodes: Vec::new(),
            addrs4: Vec::new(),
            containers: BTreeMap::new(),
        }
    }

    fn extra_live(&self, e: &Extra) -> bool {
        match &e.when {
            None => true,
            Some((b, drv)) => self
                .devices
                .get(b)
                .is_some_and(|d| d.present && d.s.driver.as_deref() == Some(drv.as_str())),
        }
    }

    // ---- lookups ----

    fn dev(&self, bdf: Bdf) -> io::Result<&Dev> {
        self.devices
            .get(&bdf)
            .filter(|d| d.present)
            .ok_or_else(|| err(libc::ENODEV))
    }

    fn dev_mut(&mut self, bdf: Bdf) -> io::Result<&mut Dev> {
        self.devices
            .get_mut(&bdf)
            .filter(|d| d.present)
            .ok_or_else(|| err(libc::ENODEV))
    }

    fn present(&self, bdf: Bdf) -> bool {
        self.devices.get(&bdf).is_some_and(|d| d.present)
    }

    fn drv_idx(&self, name: &str) -> Option<usize> {
        self.drivers.iter().position(|d| d.spec.name == name)
    }

    fn module_loaded(&self, m: &str) -> bool {
        self.modules.get(m).is_some_and(|x| x.spec.loaded)
    }

    fn drv_loaded(&self, d: &Drv) -> bool {
        d.spec
            .module
            .as_deref()
            .is_none_or(|m| self.module_loaded(m))
    }

    fn driver_provides_fb(&self, name: &str) -> bool {
        self.drivers
            .iter()
            .any(|d| d.spec.name == name && d.spec.provides_fb)
    }

    fn fb_exists(&self) -> bool {
        self.firmware_fb.as_ref().is_some_and(|f| f.bound)
            || self.devices.values().any(|d| {
                d.present
                    && d.s
                        .driver
                        .as_deref()
                        .is_some_and(|x| self.driver_provides_fb(x))
            })
    }

    /// fbcon takes over whenever a framebuffer appears and goes away with the last one.
    fn settle(&mut self) {
        let now = self.fb_exists();
        if now && !self.had_fb {
            self.fbcon_bound = true;
        }
        if !now {
            self.fbcon_bound = false;
        }
        self.had_fb = now;
    }

    fn ensure_driver(&mut self, name: &str) {
        if self.drv_idx(name).is_none() {
            self.add_driver(SimDriver::new(name));
        }
    }

    fn add_driver(&mut self, spec: SimDriver) {
        if let Some(m) = &spec.module {
            let module = self.modules.entry(m.clone()).or_insert_with(|| Module {
                spec: SimModule::new(m).loaded(spec.loaded),
                values: BTreeMap::new(),
            });
            if spec.unavailable {
                module.spec.available = false;
            }
        }
        match self.drv_idx(&spec.name) {
            Some(i) => self.drivers[i].spec = spec,
            None => self.drivers.push(Drv {
                spec,
                dynids: Vec::new(),
            }),
        }
    }

    fn add_module(&mut self, spec: SimModule) {
        let values = spec
            .params
            .iter()
            .map(|(k, p)| (k.clone(), p.default.clone()))
            .collect();
        self.modules
            .insert(spec.name.clone(), Module { spec, values });
    }

    fn module_in_use(&self, m: &str) -> bool {
        self.modules.get(m).is_some_and(|x| x.spec.in_use)
            || self
                .units
                .values()
                .any(|u| u.active && u.holds.iter().any(|h| h == m))
            || self
                .modules
                .values()
                .any(|o| o.spec.loaded && o.spec.depends.iter().any(|d| d == m))
    }

    // ---- matching and binding ----

    fn matches(&self, i: usize, bdf: Bdf) -> bool {
        let (Some(drv), Some(dev)) = (self.drivers.get(i), self.devices.get(&bdf)) else {
            return false;
        };
        if !dev.present {
            return false;
        }
        if let Some(o) = &dev.s.driver_override {
            return *o == drv.spec.name;
        }
        let id = PciId {
            vendor: dev.s.vendor,
            device: dev.s.device,
        };
        drv.dynids.contains(&id)
            || drv.spec.ids.contains(&id)
            || drv
                .spec
                .classes
                .iter()
                .any(|&(c, m)| dev.s.class & m == c & m)
    }

    /// really_probe: the device is unbound and matches.
    fn probe(&mut self, i: usize, bdf: Bdf) -> Result<(), i32> {
        let name = self.drivers[i].spec.name.clone();
        let dev = self.dev(bdf).map_err(|e| errno_of(&e))?;
        if let Some(&e) = dev.s.probe_errors.get(&name) {
            return Err(e);
        }
        if name == "vfio-pci" && dev.s.is_bridge {
            return Err(libc::EINVAL);
        }
        let wedged = dev.wedged;
        let boot_vga = dev.s.boot_vga == Some(true);
        if wedged {
            if self.drivers[i].spec.resets_on_probe {
                if let Some(d) = self.devices.get_mut(&bdf) {
                    reset_effect(d, &ResetBehaviour::Ok);
                }
            } else if name != "vfio-pci" {
                return Err(libc::EIO);
            }
        }
        if boot_vga {
            // aperture removal: the firmware framebuffer is unregistered for good.
            let mut gone = false;
            if let Some(fw) = self.firmware_fb.as_mut() {
                if fw.present {
                    fw.present = false;
                    fw.bound = false;
                    gone = true;
                }
            }
            if gone && !self.fb_exists() {
                self.fbcon_bound = false;
                self.had_fb = false;
            }
        }
        if let Some(d) = self.devices.get_mut(&bdf) {
            set_bound(d, Some(name));
        }
        Ok(())
    }

    /// device_attach: first matching driver (registration order) whose probe succeeds.
    fn attach_device(&mut self, bdf: Bdf) {
        if self.dev(bdf).map_or(true, |d| d.s.driver.is_some()) {
            return;
        }
        for i in 0..self.drivers.len() {
            if self.drv_loaded(&self.drivers[i])
                && self.matches(i, bdf)
                && self.probe(i, bdf).is_ok()
            {
                return;
            }
        }
    }

    /// driver_attach: the driver grabs every unbound device it matches.
    fn driver_attach(&mut self, i: usize) {
        let bdfs: Vec<Bdf> = self
            .devices
            .iter()
            .filter(|(_, d)| d.present && d.s.driver.is_none())
            .map(|(b, _)| *b)
            .collect();
        for b in bdfs {
            if self.matches(i, b) {
                let _ = self.probe(i, b);
            }
        }
    }

    fn detach(&mut self, bdf: Bdf) {
        if let Some(d) = self.devices.get_mut(&bdf) {
            set_bound(d, None);
        }
    }

    fn unbind_would_hang(&self, bdf: Bdf) -> bool {
        let Some(drv) = self.devices.get(&bdf).and_then(|d| d.s.driver.as_deref()) else {
            return false;
        };
        self.fbcon_bound
            && self.drivers.iter().any(|d| {
                d.spec.name == drv && d.spec.unbind_hangs_with_console && d.spec.provides_fb
            })
    }

    // ---- topology ----

    fn below(&self, bdf: Bdf) -> Vec<Bdf> {
        let mut out: Vec<Bdf> = Vec::new();
        let mut frontier = vec![bdf];
        while let Some(p) = frontier.pop() {
            for (k, d) in &self.devices {
                if d.present && d.s.parent == Some(p) && !out.contains(k) {
                    out.push(*k);
                    frontier.push(*k);
                }
            }
        }
        out.sort();
        out
    }

    fn remove_device(&mut self, bdf: Bdf) {
        if !self.present(bdf) {
            return;
        }
        let mut victims = self.below(bdf);
        victims.push(bdf);
        for v in victims {
            if let Some(d) = self.devices.get_mut(&v) {
                d.s.driver = None;
                d.present = false;
            }
        }
    }

    /// pci_parent_bus_reset(probe): not on a root bus, not a bridge, alone on its bus.
    fn bus_reset_possible(&self, bdf: Bdf) -> bool {
        let Some(d) = self.devices.get(&bdf) else {
            return false;
        };
        if d.s.parent.is_none() || d.s.is_bridge || d.s.no_bus_reset {
            return false;
        }
        !self
            .devices
            .iter()
            .any(|(k, o)| *k != bdf && o.present && k.domain == bdf.domain && k.bus == bdf.bus)
    }

    /// pci_init_reset_methods: the supported methods, probed now.
    fn probe_methods(&self, bdf: Bdf) -> Vec<&'static str> {
        let Some(d) = self.devices.get(&bdf) else {
            return Vec::new();
        };
        d.s.reset_methods
            .iter()
            .copied()
            .filter(|m| *m != "bus" || self.bus_reset_possible(bdf))
            .filter(|m| *m != "device_specific" || self.module_loaded("vendor_reset"))
            .collect()
    }

    fn rescan(&mut self) {
        let mut found = Vec::new();
        loop {
            let next = self
                .devices
                .iter()
                .find(|(_, d)| {
                    !d.present && !d.wedged && d.s.parent.is_none_or(|p| self.present(p))
                })
                .map(|(b, _)| *b);
            let Some(b) = next else { break };
            let methods = self.probe_methods(b);
            let d = self.devices.get_mut(&b).expect("device");
            d.s.driver = None;
            d.s.driver_override = None;
            d.reset_files = !methods.is_empty();
            d.s.reset_method = methods;
            d.s.d3cold_allowed = d.init.d3cold_allowed;
            d.s.power_control = d.init.power_control.clone();
            d.present = true;
            found.push(b);
        }
        for b in found {
            self.attach_device(b);
        }
    }

    // ---- modules ----

    fn load_module(
        &mut self,
        name: &str,
        params: &[(String, String)],
        depth: u32,
    ) -> Result<(), String> {
        let key = norm_module(name);
        let not_found =
            format!("modprobe: FATAL: Module {name} not found in directory /lib/modules/{KVER}\n");
        let Some(m) = self.modules.get(&key) else {
            if self
                .drivers
                .iter()
                .any(|d| d.spec.module.is_none() && norm_module(&d.spec.name) == key)
            {
                return Ok(()); // builtin
            }
            return Err(not_found);
        };
        if !m.spec.available || depth > 16 {
            return Err(not_found);
        }
        if m.spec.loaded {
            return Ok(());
        }
        for dep in m.spec.depends.clone() {
            self.load_module(&dep, &[], depth + 1)?;
        }
        let m = self.modules.get_mut(&key).expect("module");
        m.spec.loaded = true;
        m.values = m
            .spec
            .params
            .iter()
            .map(|(k, p)| (k.clone(), p.default.clone()))
            .collect();
        for (k, v) in params {
            if m.spec.params.contains_key(k) {
                m.values.insert(k.clone(), v.clone());
            }
        }
        let ids: Vec<PciId> = params
            .iter()
            .filter(|(k, _)| k == "ids")
            .flat_map(|(_, v)| v.split(','))
            .filter_map(|s| {
                let mut it = s.split(':');
                PciId::parse(&format!("{}:{}", it.next()?, it.next()?))
            })
            .collect();
        let names: Vec<String> = self
            .drivers
            .iter()
            .filter(|d| d.spec.module.as_deref() == Some(key.as_str()))
            .map(|d| d.spec.name.clone())
            .collect();
        for n in &names {
            if let Some(i) = self.drv_idx(n) {
                let mut d = self.drivers.remove(i);
                d.dynids = ids.clone();
                self.drivers.push(d);
            }
        }
        for n in &names {
            if let Some(i) = self.drv_idx(n) {
                self.driver_attach(i);
            }
        }
        Ok(())
    }

    fn unload_module(&mut self, name: &str, first_time: bool) -> Result<(), ModErr> {
        let key = norm_module(name);
        let Some(m) = self.modules.get(&key) else {
            if self
                .drivers
                .iter()
                .any(|d| d.spec.module.is_none() && norm_module(&d.spec.name) == key)
            {
                return Err(ModErr::Msg(format!(
                    "modprobe: FATAL: Module {key} is builtin.\n"
                )));
            }
            return Err(ModErr::Msg(format!(
                "modprobe: FATAL: Module {key} not found.\n"
            )));
        };
        if !m.spec.loaded {
            // kmod: silent success unless --first-time.
            return if first_time {
                Err(ModErr::Msg(format!(
                    "modprobe: FATAL: Module {key} is not in kernel.\n"
                )))
            } else {
                Ok(())
            };
        }
        if self.module_in_use(&key) {
            return Err(ModErr::Msg(format!(
                "modprobe: FATAL: Module {key} is in use.\n"
            )));
        }
        let unload_hangs = m.spec.unload_hangs;
        let deps = m.spec.depends.clone();
        let drivers: Vec<String> = self
            .drivers
            .iter()
            .filter(|d| d.spec.module.as_deref() == Some(key.as_str()))
            .map(|d| d.spec.name.clone())
            .collect();
        let bound: Vec<Bdf> = self
            .devices
            .iter()
            .filter(|(_, d)| d.present && d.s.driver.as_ref().is_some_and(|x| drivers.contains(x)))
            .map(|(b, _)| *b)
            .collect();
        if unload_hangs || bound.iter().any(|b| self.unbind_would_hang(*b)) {
            return Err(ModErr::Hang);
        }
        for b in bound {
            self.detach(b);
        }
        for d in self.drivers.iter_mut() {
            if drivers.contains(&d.spec.name) {
                d.dynids.clear();
            }
        }
        if let Some(m) = self.modules.get_mut(&key) {
            m.spec.loaded = false;
        }
        // modprobe -r also removes dependencies nothing else uses.
        for dep in deps {
            if self.module_loaded(&dep) && !self.module_in_use(&dep) {
                let _ = self.unload_module(&dep, false);
            }
        }
        Ok(())
    }

    fn proc_modules(&self) -> String {
        let mut s = String::new();
        for (name, m) in &self.modules {
            if !m.spec.loaded {
                continue;
            }
            let holders: Vec<&str> = self
                .modules
                .iter()
                .filter(|(_, o)| o.spec.loaded && o.spec.depends.contains(name))
                .map(|(n, _)| n.as_str())
                .collect();
            let refcnt = self.refcnt(name);
            let deps = if holders.is_empty() {
                "-".to_string()
            } else {
                holders.iter().map(|h| format!("{h},")).collect()
            };
            s.push_str(&format!(
                "{name} 16384 {refcnt} {deps} Live 0x0000000000000000\n"
            ));
        }
        s
    }

    fn refcnt(&self, name: &str) -> usize {
        let holders = self
            .modules
            .values()
            .filter(|o| o.spec.loaded && o.spec.depends.iter().any(|d| d == name))
            .count();
        let units = self
            .units
            .values()
            .filter(|u| u.active && u.holds.iter().any(|h| h == name))
            .count();
        let user = usize::from(self.modules.get(name).is_some_and(|m| m.spec.in_use));
        holders + units + user
    }

    // ---- the sysfs tree ----

    fn tree(&self) -> Tree {
        let mut t = Tree::new();
        for d in [
            "sys/bus/pci/devices",
            "sys/bus/pci/drivers",
            "sys/bus/pci/slots",
            "sys/kernel/iommu_groups",
            "sys/class/iommu",
            "sys/class/vtconsole",
            "sys/module",
            "sys/bus/platform/drivers",
            "sys/bus/platform/devices",
        ] {
            put(&mut t, d, Node::Dir);
        }
        put(&mut t, "sys/bus/pci/drivers_probe", Node::File);
        put(&mut t, "sys/bus/pci/rescan", Node::File);
        for (bdf, d) in &self.devices {
            if !d.present {
                continue;
            }
            let base = format!("sys/bus/pci/devices/{bdf}");
            put(&mut t, &base, Node::Dir);
            for f in [
                "vendor",
                "device",
                "subsystem_vendor",
                "subsystem_device",
                "class",
                "config",
                "remove",
                "rescan",
                "enable",
                "driver_override",
                "power/control",
            ] {
                put(&mut t, &format!("{base}/{f}"), Node::File);
            }
            if let Some(x) = &d.s.driver {
                put(
                    &mut t,
                    &format!("{base}/driver"),
                    Node::Link(format!("sys/bus/pci/drivers/{x}")),
                );
                if x == "nvme" && d.s.nvme_serial.is_some() {
                    put(&mut t, &format!("{base}/nvme/nvme0/serial"), Node::File);
                }
                if self.driver_provides_fb(x) {
                    put(&mut t, &format!("{base}/drm/card0"), Node::Dir);
                    put(&mut t, &format!("{base}/graphics/fb0"), Node::Dir);
                }
            }
            if let (Some(_), Some(g)) = (&self.iommu, d.s.iommu_group) {
                put(
                    &mut t,
                    &format!("{base}/iommu_group"),
                    Node::Link(format!("sys/kernel/iommu_groups/{g}")),
                );
                put(
                    &mut t,
                    &format!("sys/kernel/iommu_groups/{g}/devices/{bdf}"),
                    Node::Link(base.clone()),
                );
                put(
                    &mut t,
                    &format!("sys/kernel/iommu_groups/{g}/type"),
                    Node::File,
                );
            }
            if d.reset_files {
                put(&mut t, &format!("{base}/reset"), Node::File);
                put(&mut t, &format!("{base}/reset_method"), Node::File);
            }
            if d.s.is_bridge && d.s.reset_subordinate {
                put(&mut t, &format!("{base}/reset_subordinate"), Node::File);
            }
            if d.s.boot_vga.is_some() {
                put(&mut t, &format!("{base}/boot_vga"), Node::File);
            }
            if d.s.d3cold_allowed.is_some() {
                put(&mut t, &format!("{base}/d3cold_allowed"), Node::File);
            }
            if d.s.link.is_some() {
                for f in [
                    "current_link_speed",
                    "current_link_width",
                    "max_link_speed",
                    "max_link_width",
                ] {
                    put(&mut t, &format!("{base}/{f}"), Node::File);
                }
            }
        }
        for drv in &self.drivers {
            if !self.drv_loaded(drv) {
                continue;
            }
            let base = format!("sys/bus/pci/drivers/{}", drv.spec.name);
            for f in ["bind", "unbind", "new_id", "remove_id", "uevent"] {
                put(&mut t, &format!("{base}/{f}"), Node::File);
            }
            if let Some(m) = &drv.spec.module {
                put(
                    &mut t,
                    &format!("{base}/module"),
                    Node::Link(format!("sys/module/{m}")),
                );
            }
            for (bdf, d) in &self.devices {
                if d.present && d.s.driver.as_deref() == Some(drv.spec.name.as_str()) {
                    put(
                        &mut t,
                        &format!("{base}/{bdf}"),
                        Node::Link(format!("sys/bus/pci/devices/{bdf}")),
                    );
                }
            }
        }
        if let Some(unit) = &self.iommu {
            put(
                &mut t,
                &format!("sys/class/iommu/{unit}/devices"),
                Node::Dir,
            );
        }
        for f in ["name", "bind"] {
            put(
                &mut t,
                &format!("sys/class/vtconsole/vtcon0/{f}"),
                Node::File,
            );
            if self.fb_exists() {
                put(
                    &mut t,
                    &format!("sys/class/vtconsole/vtcon1/{f}"),
                    Node::File,
                );
            }
        }
        for (name, m) in &self.modules {
            if !m.spec.loaded {
                continue;
            }
            let base = format!("sys/module/{name}");
            put(&mut t, &format!("{base}/refcnt"), Node::File);
            put(&mut t, &format!("{base}/initstate"), Node::File);
            put(&mut t, &format!("{base}/holders"), Node::Dir);
            for (h, o) in &self.modules {
                if o.spec.loaded && o.spec.depends.contains(name) {
                    put(
                        &mut t,
                        &format!("{base}/holders/{h}"),
                        Node::Link(format!("sys/module/{h}")),
                    );
                }
            }
            for p in m.spec.params.keys() {
                put(&mut t, &format!("{base}/parameters/{p}"), Node::File);
            }
        }
        if let Some(fw) = &self.firmware_fb {
            let base = format!("sys/bus/platform/drivers/{}", fw.driver);
            for f in ["bind", "unbind", "uevent"] {
                put(&mut t, &format!("{base}/{f}"), Node::File);
            }
            let dev = format!("sys/bus/platform/devices/{}.0", fw.driver);
            if fw.present {
                put(&mut t, &dev, Node::Dir);
            }
            if fw.bound {
                put(&mut t, &format!("{base}/{}.0", fw.driver), Node::Link(dev));
            }
        }
        for e in &self.extras {
            if self.extra_live(e) {
                put(&mut t, &e.path, e.node.clone());
            }
        }
        t
    }

    fn sys_read(&self, rel: &str) -> io::Result<Vec<u8>> {
        let tree = self.tree();
        let canon = resolve(&tree, rel, true);
        match tree.get(&canon) {
            Some(Node::File) => {}
            Some(_) => return Err(err(libc::EISDIR)),
            None => return Err(err(libc::ENOENT)),
        }
        if let Some(e) = self
            .extras
            .iter()
            .rev()
            .find(|e| e.path == canon && e.content.is_some() && self.extra_live(e))
        {
            return Ok(e.content.clone().unwrap_or_default().into_bytes());
        }
        let parts: Vec<&str> = canon.split('/').collect();
        let text = match parts.as_slice() {
            ["sys", "bus", "pci", "devices", b, rest @ ..] => {
                let bdf = Bdf::parse(b).map_err(|_| err(libc::ENOENT))?;
                let d = self.dev(bdf).map_err(|_| err(libc::ENOENT))?;
                let s = &d.s;
                let link = s.link.as_ref();
                match rest.join("/").as_str() {
                    "vendor" => format!("0x{:04x}", s.vendor),
                    "device" => format!("0x{:04x}", s.device),
                    "subsystem_vendor" => format!("0x{:04x}", s.subsystem_vendor),
                    "subsystem_device" => format!("0x{:04x}", s.subsystem_device),
                    "class" => format!("0x{:06x}", s.class),
                    "config" => {
                        return Ok(if d.wedged {
                            vec![0xff; d.config.len()]
                        } else {
                            d.config.clone()
                        })
                    }
                    "driver_override" => {
                        s.driver_override.as_deref().unwrap_or("(null)").to_string()
                    }
                    "reset_method" => s.reset_method.join(" "),
                    "boot_vga" => u8::from(s.boot_vga == Some(true)).to_string(),
                    "d3cold_allowed" => u8::from(s.d3cold_allowed == Some(true)).to_string(),
                    "power/control" => s.power_control.clone(),
                    "enable" => u8::from(s.driver.is_some()).to_string(),
                    "current_link_speed" => link.map(|l| l.cur_speed.clone()).unwrap_or_default(),
                    "current_link_width" => {
                        link.map(|l| l.cur_width.to_string()).unwrap_or_default()
                    }
                    "max_link_speed" => link.map(|l| l.max_speed.clone()).unwrap_or_default(),
                    "max_link_width" => link.map(|l| l.max_width.to_string()).unwrap_or_default(),
                    "nvme/nvme0/serial" => {
                        format!("{:<20}", s.nvme_serial.as_deref().unwrap_or(""))
                    }
                    _ => return Err(err(libc::EACCES)),
                }
            }
            ["sys", "kernel", "iommu_groups", _, "type"] => "DMA".to_string(),
            ["sys", "class", "vtconsole", v, f] => match (*v, *f) {
                ("vtcon0", "name") => "(S) dummy device".to_string(),
                ("vtcon1", "name") => "(M) frame buffer device".to_string(),
                ("vtcon0", "bind") => u8::from(!self.fbcon_bound).to_string(),
                ("vtcon1", "bind") => u8::from(self.fbcon_bound).to_string(),
                _ => return Err(err(libc::EACCES)),
            },
            ["sys", "module", m, "refcnt"] => self.refcnt(m).to_string(),
            ["sys", "module", _, "initstate"] => "live".to_string(),
            ["sys", "module", m, "parameters", p] => self
                .modules
                .get(*m)
                .and_then(|x| x.values.get(*p))
                .cloned()
                .unwrap_or_default(),
            _ => return Err(err(libc::EACCES)),
        };
        Ok(format!("{text}\n").into_bytes())
    }

    // ---- simple writes (no device lock) ----

    fn write_reset_method(&mut self, bdf: Bdf, data: &str) -> io::Result<()> {
        self.dev(bdf)?;
        let list = if strip_nl(data).is_empty() {
            Vec::new()
        } else if strip_nl(data) == "default" {
            self.probe_methods(bdf)
        } else {
            let mut list = Vec::new();
            for name in data.split(' ') {
                let name = name.trim();
                if name.is_empty() {
                    continue;
                }
                let m = method_name(name).ok_or_else(|| err(libc::EINVAL))?;
                let supported = self.dev(bdf)?.s.reset_methods.contains(&m)
                    && (m != "bus" || self.bus_reset_possible(bdf))
                    && (m != "device_specific" || self.module_loaded("vendor_reset"));
                if !supported {
                    return Err(err(libc::EINVAL));
                }
                list.push(m);
            }
            list
        };
        self.dev_mut(bdf)?.s.reset_method = list;
        Ok(())
    }

    fn vtcon_bind(&mut self, vtcon: &str, data: &str) -> io::Result<()> {
        let on = simple_strtoul(data) != 0;
        match vtcon {
            "vtcon1" => self.fbcon_bound = on,
            // Binding the dummy console makes it take over from fbcon; unbinding the default
            // console does nothing (and still reports success).
            "vtcon0" if on => self.fbcon_bound = false,
            _ => {}
        }
        Ok(())
    }

    fn param_write(&mut self, m: &str, p: &str, data: &str) -> io::Result<()> {
        let module = self.modules.get_mut(m).ok_or_else(|| err(libc::ENOENT))?;
        if !module.spec.params.get(p).is_some_and(|x| x.writable) {
            return Err(err(libc::EACCES));
        }
        module
            .values
            .insert(p.to_string(), strip_nl(data).to_string());
        Ok(())
    }

    fn platform_write(&mut self, driver: &str, f: &str, data: &str) -> io::Result<()> {
        let fw = self
            .firmware_fb
            .as_mut()
            .filter(|fw| fw.driver == driver)
            .ok_or_else(|| err(libc::ENOENT))?;
        let name = strip_nl(data);
        let expected = format!("{}.0", fw.driver);
        match f {
            "unbind" => {
                if !fw.bound || name != expected {
                    return Err(err(libc::ENODEV));
                }
                fw.bound = false;
                Ok(())
            }
            "bind" => {
                if !fw.present || name != expected {
                    return Err(err(libc::ENODEV));
                }
                if fw.bound {
                    return Err(err(libc::EBUSY));
                }
                fw.bound = true;
                Ok(())
            }
            "uevent" => Ok(()),
            _ => Err(err(libc::EACCES)),
        }
    }

    /// `sys/bus/pci/devices/B` is a symlink into the device tree:
    /// `../../../devices/pci0000:00/0000:00:1c.0/0000:01:00.0`.
    fn device_node(&self, canon: &str) -> Option<String> {
        let b = canon.strip_prefix("sys/bus/pci/devices/")?;
        let bdf = Bdf::parse(b).ok()?;
        self.dev(bdf).ok()?;
        let mut chain = vec![bdf];
        while let Some(p) = self.devices.get(chain.last()?).and_then(|d| d.s.parent) {
            if chain.contains(&p) || chain.len() > 32 {
                break;
            }
            chain.push(p);
        }
        let top = chain.last()?;
        let mut t = format!("../../../devices/pci{:04x}:{:02x}", top.domain, top.bus);
        for b in chain.iter().rev() {
            t.push_str(&format!("/{b}"));
        }
        Some(t)
    }

    fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for (bdf, d) in &self.devices {
            s.devices.insert(
                *bdf,
                DevState {
                    present: d.present,
                    driver: d.s.driver.clone(),
                    driver_override: d.s.driver_override.clone(),
                    reset_method: d.s.reset_method.join(" "),
                    d3cold_allowed: d.s.d3cold_allowed,
                    power_control: d.s.power_control.clone(),
                },
            );
        }
        s.modules = self
            .modules
            .iter()
            .filter(|(_, m)| m.spec.loaded)
            .map(|(n, _)| n.clone())
            .collect();
        s.vtcon_binds.insert("vtcon0".into(), !self.fbcon_bound);
        if self.fb_exists() {
            s.vtcon_binds.insert("vtcon1".into(), self.fbcon_bound);
        }
        s.active_units = self
            .units
            .iter()
            .filter(|(_, u)| u.active)
            .map(|(n, _)| n.clone())
            .collect();
        for d in &self.drivers {
            if !d.dynids.is_empty() {
                s.dynamic_ids.insert(d.spec.name.clone(), d.dynids.clone());
            }
        }
        s
    }
}

/// The simulated host. Share it as `Arc<SimHost>` (or `Arc<dyn Host>`).
pub struct SimHost {
    state: Mutex<State>,
    cv: Condvar,
    real: RealHost,
    root: PathBuf,
    /// The node name (`set_node_name`; default: as a real host finds it).
    node: Mutex<Option<String>>,
}

impl Default for SimHost {
    fn default() -> Self {
        SimHost::new()
    }
}

impl Drop for SimHost {
    fn drop(&mut self) {
        self.release_hangs();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn out(code: i32, stdout: &str, stderr: &str) -> CmdOutput {
    CmdOutput {
        code: Some(code),
        stdout: stdout.to_string(),
        stderr: stderr.to_string(),
    }
}

/// A device's driver becomes `driver` (a probe, a remove): vfio-pci allows runtime PM when it
/// binds (vfio_pci_core_register_device: power/control reads "auto") and forbids it when it
/// lets go ("on", whatever power/control read before).
fn set_bound(d: &mut Dev, driver: Option<String>) {
    if driver.as_deref() == Some("vfio-pci") {
        d.s.power_control = "auto".to_string();
    } else if d.s.driver.as_deref() == Some("vfio-pci") {
        d.s.power_control = "on".to_string();
    }
    d.s.driver = driver;
}

/// Effects of one reset on one device.
fn reset_effect(d: &mut Dev, b: &ResetBehaviour) {
    match b {
        ResetBehaviour::Ok | ResetBehaviour::Slow(_) | ResetBehaviour::Together(_) => {
            d.wedged = false;
            if let Some(l) = d.s.link.as_mut() {
                l.cur_width = l.max_width;
                l.cur_speed = l.max_speed.clone();
            }
        }
        ResetBehaviour::Wedge => d.wedged = true,
        ResetBehaviour::NarrowLink(w) => {
            d.wedged = false;
            if let Some(l) = d.s.link.as_mut() {
                l.cur_width = *w;
            }
        }
        _ => {}
    }
}

impl SimHost {
    /// An empty host: no devices, no drivers, IOMMU on (dmar0), no systemd, no framebuffer.
    pub fn new() -> SimHost {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("pt-hook-sim-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("creating the simulated host's root");
        SimHost {
            state: Mutex::new(State::new()),
            cv: Condvar::new(),
            real: RealHost::new(root.clone()),
            root,
            node: Mutex::new(None),
        }
    }

    /// This simulated host's node name (several sharing one /etc/pve: a cluster).
    pub fn set_node_name(&self, name: &str) {
        *self.node.lock().unwrap_or_else(|p| p.into_inner()) = Some(name.to_string());
    }

    /// The QEMU q35 test bed: root ports 00:1c.0-4, std VGA + ich9 HDA (group 1), two nvme,
    /// virtio-net, e1000e; bochs-drm with fbcon on vtcon1; vfio-pci installed, not loaded.
    pub fn gpu_host() -> SimHost {
        let s = SimHost::new();
        s.set_systemd(true);
        s.add_driver(SimDriver::new("pcieport").builtin().class(0x060400));
        s.add_driver(
            SimDriver::new("bochs-drm")
                .module("bochs")
                .id(0x1234, 0x1111)
                .provides_fb(),
        );
        s.add_driver(SimDriver::new("snd_hda_intel").id(0x8086, 0x293e));
        s.add_driver(SimDriver::new("nvme").class(0x010802));
        s.add_driver(
            SimDriver::new("virtio-pci")
                .module("virtio_pci")
                .ids(&[(0x1af4, 0x1041), (0x1af4, 0x1000)]),
        );
        s.add_driver(SimDriver::new("e1000e").id(0x8086, 0x10d3));
        s.add_module(
            SimModule::new("vfio_pci")
                .loaded(false)
                .param("ids", "", false)
                .param("disable_vga", "N", false)
                .param("disable_idle_d3", "N", true)
                .param("nointxmask", "N", false)
                .param("enable_sriov", "N", false)
                .param("disable_denylist", "N", false),
        );
        s.add_driver(SimDriver::new("vfio-pci").module("vfio_pci").unloaded());
        for (i, port) in [
            "0000:00:1c.0",
            "0000:00:1c.1",
            "0000:00:1c.2",
            "0000:00:1c.3",
            "0000:00:1c.4",
        ]
        .iter()
        .enumerate()
        {
            s.add_device(SimDevice::bridge(*port).group(6 + i as u32));
        }
        s.add_device(
            SimDevice::new("0000:01:00.0", 0x1234, 0x1111, 0x030000)
                .subsystem(0x1af4, 0x1100)
                .parent("0000:00:1c.0")
                .group(1)
                .boot_vga(true)
                .reset_methods(&["bus"])
                .link("16.0 GT/s PCIe", 16)
                .driver("bochs-drm"),
        );
        s.add_device(
            SimDevice::new("0000:01:00.1", 0x8086, 0x293e, 0x040300)
                .subsystem(0x1af4, 0x1100)
                .parent("0000:00:1c.0")
                .group(1)
                .link("16.0 GT/s PCIe", 16)
                .driver("snd_hda_intel"),
        );
        for (bdf, port, group) in [
            ("0000:02:00.0", "0000:00:1c.1", 2),
            ("0000:03:00.0", "0000:00:1c.2", 3),
        ] {
            s.add_device(
                SimDevice::new(bdf, 0x1b36, 0x0010, 0x010802)
                    .subsystem(0x1af4, 0x1100)
                    .parent(port)
                    .group(group)
                    .reset_methods(&["flr", "bus"])
                    .link("8.0 GT/s PCIe", 4)
                    .driver("nvme"),
            );
        }
        s.add_device(
            SimDevice::new("0000:04:00.0", 0x1af4, 0x1041, 0x020000)
                .subsystem(0x1af4, 0x1100)
                .parent("0000:00:1c.3")
                .group(4)
                .reset_methods(&["flr", "pm", "bus"])
                .link("2.5 GT/s PCIe", 1)
                .driver("virtio-pci"),
        );
        // [seen] bus reset of the e1000e failed with ENOTTY.
        s.add_device(
            SimDevice::new("0000:05:00.0", 0x8086, 0x10d3, 0x020000)
                .subsystem(0x8086, 0x0000)
                .parent("0000:00:1c.4")
                .group(5)
                .reset_methods(&["pm", "bus"])
                .reset_behaviour("bus", ResetBehaviour::Enotty)
                .link("2.5 GT/s PCIe", 1)
                .driver("e1000e"),
        );
        s
    }

    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut g = self.st();
        let r = f(&mut g);
        g.settle();
        r
    }

    // ---- setup ----

    /// Adds (or replaces) a device as enumerated. Its driver, if unknown, is registered as a
    /// plain loaded module driver with no ids.
    pub fn add_device(&self, spec: SimDevice) {
        self.with(|s| {
            if let Some(x) = spec.driver.clone() {
                s.ensure_driver(&x);
            }
            let config = spec.config.clone().unwrap_or_else(|| spec.build_config());
            let reset_files = !spec.reset_methods.is_empty();
            s.devices.insert(
                spec.bdf,
                Dev {
                    s: spec.clone(),
                    init: spec,
                    present: true,
                    wedged: false,
                    reset_files,
                    config,
                },
            );
        })
    }

    /// Registers (or redefines) a driver; creates its module entry if needed. Does not probe.
    pub fn add_driver(&self, spec: SimDriver) {
        self.with(|s| s.add_driver(spec))
    }

    pub fn add_module(&self, spec: SimModule) {
        self.with(|s| s.add_module(spec))
    }

    /// Adds a systemd unit ("gdm" means "gdm.service") and turns systemd on.
    /// A sysfs file with `content` (e.g. "sys/class/block/dm-0/dm/name").
    pub fn add_sys_file(&self, path: &str, content: &str) {
        self.with(|st| {
            st.extras.push(Extra {
                when: None,
                path: path.to_string(),
                node: Node::File,
                content: Some(content.to_string()),
            })
        });
    }

    /// A sysfs symlink `path` → canonical `target` ("sys/class/block/dm-0/holders/...").
    pub fn add_sys_link(&self, path: &str, target: &str) {
        self.with(|st| {
            st.extras.push(Extra {
                when: None,
                path: path.to_string(),
                node: Node::Link(target.to_string()),
                content: None,
            })
        });
    }

    /// A class device below a PCI function that exists while the function is bound to
    /// `driver`: `sub` is its place under the device ("nvme/nvme0/nvme0n1"), its name the
    /// last component, `dev` its major:minor. Adds `sys/class/CLASS/NAME` → it.
    pub fn add_child(
        &self,
        bdf: impl AsBdf,
        driver: &str,
        sub: &str,
        class: &str,
        dev: Option<&str>,
    ) {
        let bdf = bdf.as_bdf();
        let path = format!("sys/bus/pci/devices/{bdf}/{sub}");
        let name = sub.rsplit('/').next().unwrap_or(sub).to_string();
        let when = Some((bdf, driver.to_string()));
        self.with(|st| {
            st.extras.push(Extra {
                when: when.clone(),
                path: path.clone(),
                node: Node::Dir,
                content: None,
            });
            if let Some(d) = dev {
                st.extras.push(Extra {
                    when: when.clone(),
                    path: format!("{path}/dev"),
                    node: Node::File,
                    content: Some(format!("{d}\n")),
                });
            }
            st.extras.push(Extra {
                when,
                path: format!("sys/class/{class}/{name}"),
                node: Node::Link(path),
                content: None,
            });
        });
    }

    /// Process `pid` (`comm`, cgroup path) holds the node open: /proc/PID/{comm,cgroup}
    /// exist from now on.
    pub fn hold(
        &self,
        pid: u32,
        comm: &str,
        cgroup: &str,
        node: &str,
        rdev: Option<(u32, u32)>,
        block: bool,
    ) {
        self.add_process(pid, comm, cgroup);
        self.with(|st| {
            st.open_nodes.push(super::OpenNode {
                pid,
                path: node.to_string(),
                rdev,
                block,
                vfio_syspath: None,
            })
        });
    }

    /// Process `pid` holds a vfio device fd (`syspath` as a 6.x kernel shows it in fdinfo).
    pub fn hold_vfio_fd(&self, pid: u32, comm: &str, cgroup: &str, syspath: Option<&str>) {
        self.add_process(pid, comm, cgroup);
        self.with(|st| {
            st.open_nodes.push(super::OpenNode {
                pid,
                path: "anon_inode:[vfio-device]".into(),
                rdev: None,
                block: false,
                vfio_syspath: syspath.map(str::to_string),
            })
        });
    }

    /// /proc/PID with comm and cgroup (a live process).
    pub fn add_process(&self, pid: u32, comm: &str, cgroup: &str) {
        let dir = self.root.join(format!("proc/{pid}"));
        std::fs::create_dir_all(&dir).expect("sim proc dir");
        std::fs::write(dir.join("comm"), format!("{comm}\n")).expect("sim comm");
        std::fs::write(dir.join("cgroup"), format!("0::{cgroup}\n")).expect("sim cgroup");
    }

    /// The process closes everything and exits.
    pub fn exit_process(&self, pid: u32) {
        self.with(|st| st.open_nodes.retain(|n| n.pid != pid));
        let _ = std::fs::remove_dir_all(self.root.join(format!("proc/{pid}")));
    }

    pub fn set_ipv4_addrs(&self, addrs: &[(&str, &str, u8)]) {
        let v = addrs
            .iter()
            .map(|(i, a, p)| super::Ipv4Addr {
                iface: i.to_string(),
                addr: a.parse().expect("test address"),
                prefix: *p,
            })
            .collect();
        self.with(|st| st.addrs4 = v);
    }

    /// A container `pct` manages; `holds` are its processes' open nodes while it runs.
    pub fn add_container(&self, ctid: u32, running: bool, holds: Vec<super::OpenNode>) {
        for h in &holds {
            self.add_process(h.pid, "ct-proc", &format!("/lxc/{ctid}/ns/init.scope"));
        }
        self.with(|st| {
            if running {
                st.open_nodes.extend(holds.iter().cloned());
            }
            st.containers.insert(
                ctid,
                SimContainer {
                    running,
                    holds,
                    refuse_stop: None,
                },
            );
        });
    }

    pub fn set_container_refuses_stop(&self, ctid: u32, code: Option<i32>) {
        self.with(|st| {
            if let Some(c) = st.containers.get_mut(&ctid) {
                c.refuse_stop = code;
            }
        });
    }

    pub fn container_running(&self, ctid: u32) -> bool {
        self.st().containers.get(&ctid).is_some_and(|c| c.running)
    }

    pub fn add_unit(&self, name: &str, active: bool) {
        let _ = std::fs::create_dir_all(self.root.join("run/systemd/system"));
        self.with(|s| {
            s.systemd = true;
            s.units.insert(
                unit_name(name),
                Unit {
                    active,
                    holds: Vec::new(),
                    start: UnitOutcome::Ok,
                    stop: UnitOutcome::Ok,
                },
            );
        })
    }

    /// While the unit is active the module is in use (nvidia-persistenced holds nvidia).
    pub fn unit_holds(&self, unit: &str, module: &str) {
        self.with(|s| {
            if let Some(u) = s.units.get_mut(&unit_name(unit)) {
                u.holds.push(norm_module(module));
            }
        })
    }

    /// What `systemctl <verb> unit` does; verb "start" (also restart) or "stop".
    pub fn set_unit_outcome(&self, unit: &str, verb: &str, outcome: UnitOutcome) {
        self.with(|s| {
            if let Some(u) = s.units.get_mut(&unit_name(unit)) {
                if verb == "stop" {
                    u.stop = outcome;
                } else {
                    u.start = outcome;
                }
            }
        })
    }

    /// Without systemd, `systemctl` does not exist (ENOENT).
    /// systemd on: `systemctl` runs, and run/systemd/system exists (how pt-hook, like
    /// sd_booted(3), tells a systemd host).
    pub fn set_systemd(&self, on: bool) {
        let dir = self.root.join("run/systemd/system");
        if on {
            let _ = std::fs::create_dir_all(&dir);
        } else {
            let _ = std::fs::remove_dir(&dir);
        }
        self.with(|s| s.systemd = on)
    }

    /// The IOMMU unit under sys/class/iommu ("dmar0", "ivhd0"), or None for IOMMU off
    /// (no groups, no iommu_group links).
    pub fn set_iommu(&self, unit: Option<&str>) {
        self.with(|s| s.iommu = unit.map(str::to_string))
    }

    /// A firmware framebuffer platform device ("efi-framebuffer", "simple-framebuffer",
    /// "vesa-framebuffer"), bound to its driver. It disappears for good once any driver
    /// binds the boot_vga device.
    pub fn set_firmware_fb(&self, driver: Option<&str>) {
        self.with(|s| {
            s.firmware_fb = driver.map(|d| FirmwareFb {
                driver: d.to_string(),
                present: true,
                bound: true,
            })
        })
    }

    /// Binds/unbinds fbcon directly (only meaningful while a framebuffer exists).
    pub fn set_fbcon(&self, bound: bool) {
        self.with(|s| s.fbcon_bound = bound && s.fb_exists())
    }

    /// Sets the bound driver without probing (raw test setup).
    pub fn set_driver(&self, bdf: impl AsBdf, driver: Option<&str>) {
        let bdf = bdf.as_bdf();
        self.with(|s| {
            if let Some(x) = driver {
                s.ensure_driver(x);
            }
            if let Some(d) = s.devices.get_mut(&bdf) {
                // As a bind or unbind would have left it.
                set_bound(d, driver.map(str::to_string));
            }
        })
    }

    pub fn set_driver_override(&self, bdf: impl AsBdf, value: Option<&str>) {
        let bdf = bdf.as_bdf();
        self.with(|s| {
            if let Some(d) = s.devices.get_mut(&bdf) {
                d.s.driver_override = value.map(str::to_string);
            }
        })
    }

    /// Config space reads 0xff… until `unwedge` or a working reset.
    pub fn wedge(&self, bdf: impl AsBdf) {
        let bdf = bdf.as_bdf();
        self.with(|s| {
            if let Some(d) = s.devices.get_mut(&bdf) {
                d.wedged = true;
            }
        })
    }

    pub fn unwedge(&self, bdf: impl AsBdf) {
        let bdf = bdf.as_bdf();
        self.with(|s| {
            if let Some(d) = s.devices.get_mut(&bdf) {
                d.wedged = false;
            }
        })
    }

    /// The vendor id in config space (0x0001 = still initialising, 0xffff = gone); the
    /// `vendor` file keeps the enumerated value like the kernel's cache.
    pub fn set_config_vendor(&self, bdf: impl AsBdf, vendor: u16) {
        let bdf = bdf.as_bdf();
        self.with(|s| {
            if let Some(d) = s.devices.get_mut(&bdf) {
                d.config[0..2].copy_from_slice(&vendor.to_le_bytes());
            }
        })
    }

    pub fn set_reset_behaviour(&self, bdf: impl AsBdf, method: &str, b: ResetBehaviour) {
        let bdf = bdf.as_bdf();
        let m = method_name(method).unwrap_or_else(|| panic!("unknown reset method {method:?}"));
        self.with(|s| {
            if let Some(d) = s.devices.get_mut(&bdf) {
                d.s.reset_behaviour.insert(m, b);
            }
        })
    }

    pub fn set_probe_error(&self, bdf: impl AsBdf, driver: &str, errno: Option<i32>) {
        let bdf = bdf.as_bdf();
        self.with(|s| {
            if let Some(d) = s.devices.get_mut(&bdf) {
                match errno {
                    Some(e) => d.s.probe_errors.insert(driver.to_string(), e),
                    None => d.s.probe_errors.remove(driver),
                };
            }
        })
    }

    pub fn set_subordinate_error(&self, bridge: impl AsBdf, errno: Option<i32>) {
        let bdf = bridge.as_bdf();
        self.with(|s| {
            if let Some(d) = s.devices.get_mut(&bdf) {
                d.s.subordinate_errno = errno;
            }
        })
    }

    pub fn set_no_bus_reset(&self, bdf: impl AsBdf, on: bool) {
        let bdf = bdf.as_bdf();
        self.with(|s| {
            if let Some(d) = s.devices.get_mut(&bdf) {
                d.s.no_bus_reset = on;
            }
        })
    }

    fn module_mut(&self, name: &str, f: impl FnOnce(&mut SimModule)) {
        self.with(|s| {
            if let Some(m) = s.modules.get_mut(&norm_module(name)) {
                f(&mut m.spec);
            }
        })
    }

    pub fn set_module_in_use(&self, name: &str, on: bool) {
        self.module_mut(name, |m| m.in_use = on)
    }
    pub fn set_module_available(&self, name: &str, on: bool) {
        self.module_mut(name, |m| m.available = on)
    }
    pub fn set_module_unload_hangs(&self, name: &str, on: bool) {
        self.module_mut(name, |m| m.unload_hangs = on)
    }
    /// Raw: marks a module loaded/unloaded without binding or unbinding anything.
    pub fn set_module_loaded(&self, name: &str, on: bool) {
        self.module_mut(name, |m| m.loaded = on)
    }

    /// Surprise removal (no driver notification beyond unbinding); a rescan brings it back.
    pub fn vanish(&self, bdf: impl AsBdf) {
        let bdf = bdf.as_bdf();
        self.with(|s| s.remove_device(bdf))
    }

    pub fn inject(&self, point: FaultPoint) {
        self.with(|s| {
            s.faults.push(FaultState {
                point,
                seen: 0,
                spent: false,
            })
        })
    }

    pub fn clear_faults(&self) {
        self.with(|s| s.faults.clear())
    }

    /// How long a hang blocks when nobody releases it (default 10 s).
    pub fn set_hang_limit(&self, limit: Duration) {
        self.with(|s| s.hang_limit = limit)
    }

    /// Wakes every op blocked in a hang (they fail with ETIMEDOUT, releasing device locks).
    pub fn release_hangs(&self) {
        self.with(|s| s.hang_gen += 1);
        self.cv.notify_all();
    }

    // ---- observation ----

    pub fn ops(&self) -> Vec<Op> {
        self.st().ops.clone()
    }

    pub fn clear_ops(&self) {
        self.st().ops.clear()
    }

    /// Every reset that returned, in order of its end: the device and when it began and
    /// ended in the simulated kernel.
    pub fn reset_spans(&self) -> Vec<(Bdf, Instant, Instant)> {
        self.st().reset_spans.clone()
    }

    /// Number of `write` calls (any path).
    pub fn write_count(&self) -> usize {
        self.st()
            .ops
            .iter()
            .filter(|o| o.kind == OpKind::Write)
            .count()
    }

    /// Data of every write whose path ends with `suffix`, in order.
    pub fn writes_to(&self, suffix: &str) -> Vec<String> {
        self.st()
            .ops
            .iter()
            .filter(|o| o.kind == OpKind::Write && o.path.ends_with(suffix))
            .map(|o| o.data.clone())
            .collect()
    }

    pub fn snapshot(&self) -> Snapshot {
        self.st().snapshot()
    }

    pub fn driver_of(&self, bdf: impl AsBdf) -> Option<String> {
        let bdf = bdf.as_bdf();
        self.st()
            .devices
            .get(&bdf)
            .filter(|d| d.present)
            .and_then(|d| d.s.driver.clone())
    }

    pub fn is_present(&self, bdf: impl AsBdf) -> bool {
        self.st().present(bdf.as_bdf())
    }

    pub fn is_wedged(&self, bdf: impl AsBdf) -> bool {
        let bdf = bdf.as_bdf();
        self.st().devices.get(&bdf).is_some_and(|d| d.wedged)
    }

    pub fn link_width(&self, bdf: impl AsBdf) -> Option<u8> {
        let bdf = bdf.as_bdf();
        self.st()
            .devices
            .get(&bdf)
            .and_then(|d| d.s.link.as_ref().map(|l| l.cur_width))
    }

    pub fn fbcon_bound(&self) -> bool {
        self.st().fbcon_bound
    }

    pub fn framebuffer_exists(&self) -> bool {
        self.st().fb_exists()
    }

    pub fn firmware_fb_present(&self) -> bool {
        self.st().firmware_fb.as_ref().is_some_and(|f| f.present)
    }

    pub fn module_loaded(&self, name: &str) -> bool {
        self.st().module_loaded(&norm_module(name))
    }

    pub fn unit_active(&self, name: &str) -> bool {
        self.st()
            .units
            .get(&unit_name(name))
            .is_some_and(|u| u.active)
    }

    // ---- op plumbing ----

    fn log(&self, kind: OpKind, path: &str, data: String) -> usize {
        let mut g = self.st();
        g.ops.push(Op {
            kind,
            path: path.to_string(),
            data,
            result: OpResult::Pending,
        });
        g.ops.len() - 1
    }

    fn finish(&self, idx: usize, result: OpResult) {
        let mut g = self.st();
        g.settle();
        if let Some(op) = g.ops.get_mut(idx) {
            op.result = result;
        }
    }

    fn take_fault(&self, class: OpClass<'_>, subject: &str) -> Option<Fault> {
        self.take_fault_data(class, subject, None)
    }

    /// `take_fault` for a write of `data` (`PathMatch::ExactWrite` looks at it).
    fn take_fault_data(
        &self,
        class: OpClass<'_>,
        subject: &str,
        data: Option<&str>,
    ) -> Option<Fault> {
        let mut g = self.st();
        let mut fired = None;
        for f in g.faults.iter_mut() {
            let kind_ok = match (&f.point.op, &class) {
                (FaultOp::Write, OpClass::Write) | (FaultOp::Read, OpClass::Read) => true,
                (FaultOp::Run(p), OpClass::Run(q)) => p == q,
                _ => false,
            };
            if f.spent || !kind_ok || !f.point.path.matches_op(subject, data) {
                continue;
            }
            f.seen += 1;
            let fire = match f.point.nth {
                Some(n) if f.seen == n => {
                    f.spent = true;
                    true
                }
                Some(_) => false,
                None => true,
            };
            if fire && fired.is_none() {
                fired = Some(f.point.fault.clone());
            }
        }
        fired
    }

    fn wait_not_busy<'a>(
        &'a self,
        g: MutexGuard<'a, State>,
        bdfs: &[Bdf],
    ) -> MutexGuard<'a, State> {
        let limit = g.hang_limit;
        match self
            .cv
            .wait_timeout_while(g, limit, |s| bdfs.iter().any(|b| s.busy.contains(b)))
        {
            Ok((g, _)) => g,
            Err(e) => e.into_inner().0,
        }
    }

    fn hang_wait<'a>(&'a self, g: MutexGuard<'a, State>, limit: Duration) -> MutexGuard<'a, State> {
        let gen = g.hang_gen;
        match self.cv.wait_timeout_while(g, limit, |s| s.hang_gen == gen) {
            Ok((g, _)) => g,
            Err(e) => e.into_inner().0,
        }
    }

    /// Blocks like a write stuck in the kernel, holding the device lock of `busy`.
    fn hang_op(&self, busy: Option<Bdf>) -> io::Error {
        let mut g = self.st();
        if let Some(b) = busy {
            g.busy.insert(b);
        }
        let limit = g.hang_limit;
        let mut g = self.hang_wait(g, limit);
        if let Some(b) = busy {
            g.busy.remove(&b);
        }
        drop(g);
        self.cv.notify_all();
        err(libc::ETIMEDOUT)
    }

    /// A helper program that never finishes: killed at the caller's deadline.
    fn run_timeout(&self, timeout: Duration) -> io::Error {
        let g = self.st();
        let limit = timeout.min(g.hang_limit);
        drop(self.hang_wait(g, limit));
        err(libc::ETIMEDOUT)
    }

    /// The device whose lock a write to `rel` takes.
    fn op_device(rel: &str, data: &str) -> Option<Bdf> {
        let parts: Vec<&str> = rel.split('/').collect();
        match parts.as_slice() {
            ["sys", "bus", "pci", "devices", b, ..] => Bdf::parse(b).ok(),
            ["sys", "bus", "pci", "drivers", _, "bind" | "unbind"]
            | ["sys", "bus", "pci", "drivers_probe"] => Bdf::parse(strip_nl(data)).ok(),
            _ => None,
        }
    }

    fn read_fault(&self, rel: &str) -> io::Result<()> {
        match self.take_fault(OpClass::Read, rel) {
            Some(Fault::Errno(e)) => Err(err(e)),
            Some(Fault::Exit(..)) => Err(err(libc::EIO)),
            Some(Fault::Hang) => Err(self.hang_op(None)),
            Some(Fault::Vanish(b)) => {
                self.vanish(b);
                Ok(())
            }
            Some(Fault::Delay(d)) => {
                std::thread::sleep(d);
                Ok(())
            }
            Some(Fault::SilentNoop) | None => Ok(()),
        }
    }

    fn do_write(&self, rel: &str, data: &str) -> io::Result<()> {
        match self.take_fault_data(OpClass::Write, rel, Some(data)) {
            Some(Fault::Errno(e)) => return Err(err(e)),
            Some(Fault::Exit(..)) => return Err(err(libc::EIO)),
            Some(Fault::SilentNoop) => return Ok(()),
            Some(Fault::Hang) => return Err(self.hang_op(Self::op_device(rel, data))),
            Some(Fault::Vanish(b)) => self.vanish(b),
            Some(Fault::Delay(d)) => std::thread::sleep(d),
            None => {}
        }
        if !is_sys(rel) {
            return self.real.write(rel, data);
        }
        self.sys_write(self.st(), rel, data)
    }

    fn sys_write<'a>(
        &'a self,
        mut g: MutexGuard<'a, State>,
        rel: &str,
        data: &str,
    ) -> io::Result<()> {
        let tree = g.tree();
        let canon = resolve(&tree, rel, true);
        match tree.get(&canon) {
            Some(Node::File) => {}
            Some(_) => return Err(err(libc::EISDIR)),
            None => return Err(err(libc::ENOENT)),
        }
        drop(tree);
        let parts: Vec<&str> = canon.split('/').collect();
        match parts.as_slice() {
            ["sys", "bus", "pci", "devices", b, rest @ ..] => {
                let bdf = Bdf::parse(b).map_err(|_| err(libc::ENOENT))?;
                self.dev_write(g, bdf, &rest.join("/"), data)
            }
            ["sys", "bus", "pci", "drivers", x, f] => self.driver_write(g, x, f, data),
            ["sys", "bus", "pci", "drivers_probe"] => {
                let bdf = Bdf::parse(strip_nl(data)).map_err(|_| err(libc::ENODEV))?;
                g.dev(bdf)?;
                let mut g = self.wait_not_busy(g, &[bdf]);
                g.dev(bdf)?;
                g.attach_device(bdf);
                Ok(())
            }
            ["sys", "bus", "pci", "rescan"] => match kstrtoul(data) {
                None => Err(err(libc::EINVAL)),
                Some(0) => Ok(()),
                Some(_) => {
                    g.rescan();
                    Ok(())
                }
            },
            ["sys", "class", "vtconsole", v, "bind"] => g.vtcon_bind(v, data),
            ["sys", "module", m, "parameters", p] => g.param_write(m, p, data),
            ["sys", "bus", "platform", "drivers", d, f] => g.platform_write(d, f, data),
            ["sys", "bus", "pci", "drivers", ..] | ["sys", "bus", "pci", "devices", ..] => {
                Err(err(libc::EACCES))
            }
            _ => Err(err(libc::EACCES)),
        }
    }

    fn dev_write<'a>(
        &'a self,
        mut g: MutexGuard<'a, State>,
        bdf: Bdf,
        file: &str,
        data: &str,
    ) -> io::Result<()> {
        match file {
            "driver_override" => {
                if data.len() >= 4095 {
                    return Err(err(libc::EINVAL));
                }
                let mut g = self.wait_not_busy(g, &[bdf]);
                let v = data.split('\n').next().unwrap_or("");
                g.dev_mut(bdf)?.s.driver_override = (!v.is_empty()).then(|| v.to_string());
                Ok(())
            }
            "reset_method" => g.write_reset_method(bdf, data),
            "reset" => self.reset(g, bdf, data),
            "reset_subordinate" => self.reset_subordinate(g, bdf, data),
            "remove" => {
                let v = kstrtoul(data).ok_or_else(|| err(libc::EINVAL))?;
                if v != 0 {
                    let mut g = self.wait_not_busy(g, &[bdf]);
                    g.remove_device(bdf);
                }
                Ok(())
            }
            "rescan" => {
                if kstrtoul(data).ok_or_else(|| err(libc::EINVAL))? != 0 {
                    g.rescan();
                }
                Ok(())
            }
            "d3cold_allowed" => {
                let v = kstrtoul(data).ok_or_else(|| err(libc::EINVAL))?;
                g.dev_mut(bdf)?.s.d3cold_allowed = Some(v != 0);
                Ok(())
            }
            "power/control" => {
                let v = strip_nl(data);
                if v != "on" && v != "auto" {
                    return Err(err(libc::EINVAL));
                }
                let mut g = self.wait_not_busy(g, &[bdf]);
                g.dev_mut(bdf)?.s.power_control = v.to_string();
                Ok(())
            }
            _ => Err(err(libc::EACCES)),
        }
    }

    fn driver_write<'a>(
        &'a self,
        mut g: MutexGuard<'a, State>,
        driver: &str,
        file: &str,
        data: &str,
    ) -> io::Result<()> {
        let i = g.drv_idx(driver).ok_or_else(|| err(libc::ENOENT))?;
        match file {
            "bind" => {
                let bdf = Bdf::parse(strip_nl(data)).map_err(|_| err(libc::ENODEV))?;
                if !g.matches(i, bdf) {
                    return Err(err(libc::ENODEV));
                }
                let mut g = self.wait_not_busy(g, &[bdf]);
                if g.dev(bdf)?.s.driver.is_some() {
                    return Err(err(libc::EBUSY));
                }
                let i = g.drv_idx(driver).ok_or_else(|| err(libc::ENODEV))?;
                g.probe(i, bdf).map_err(err)
            }
            "unbind" => {
                let bdf = Bdf::parse(strip_nl(data)).map_err(|_| err(libc::ENODEV))?;
                let bound_here = |s: &State| {
                    s.dev(bdf)
                        .is_ok_and(|d| d.s.driver.as_deref() == Some(driver))
                };
                if !bound_here(&g) {
                    return Err(err(libc::ENODEV));
                }
                let mut g = self.wait_not_busy(g, &[bdf]);
                if !bound_here(&g) {
                    return Err(err(libc::ENODEV));
                }
                if g.unbind_would_hang(bdf) {
                    drop(g);
                    return Err(self.hang_op(Some(bdf)));
                }
                g.detach(bdf);
                Ok(())
            }
            "new_id" => {
                let id = parse_id_fields(data)?;
                let d = &g.drivers[i];
                if d.dynids.contains(&id) || d.spec.ids.contains(&id) {
                    return Err(err(libc::EEXIST));
                }
                g.drivers[i].dynids.push(id);
                g.driver_attach(i);
                Ok(())
            }
            "remove_id" => {
                let id = parse_id_fields(data)?;
                let d = &mut g.drivers[i];
                let before = d.dynids.len();
                d.dynids.retain(|x| *x != id);
                if d.dynids.len() == before {
                    return Err(err(libc::ENODEV));
                }
                Ok(())
            }
            "uevent" => Ok(()),
            _ => Err(err(libc::EACCES)),
        }
    }

    fn reset<'a>(&'a self, g: MutexGuard<'a, State>, bdf: Bdf, data: &str) -> io::Result<()> {
        if kstrtoul(data) != Some(1) {
            return Err(err(libc::EINVAL));
        }
        let g = self.wait_not_busy(g, &[bdf]);
        let list = g.dev(bdf)?.s.reset_method.clone();
        for m in list {
            if m == "bus" && !g.bus_reset_possible(bdf) {
                continue;
            }
            let b = g
                .dev(bdf)?
                .s
                .reset_behaviour
                .get(m)
                .cloned()
                .unwrap_or(ResetBehaviour::Ok);
            match b {
                ResetBehaviour::Enotty => continue,
                ResetBehaviour::Einval => return Err(err(libc::EINVAL)),
                ResetBehaviour::Errno(e) => return Err(err(e)),
                b => return self.apply_resets(g, &[bdf], vec![(bdf, b)]),
            }
        }
        Err(err(libc::ENOTTY))
    }

    fn reset_subordinate<'a>(
        &'a self,
        g: MutexGuard<'a, State>,
        bridge: Bdf,
        data: &str,
    ) -> io::Result<()> {
        let v = kstrtoul(data).ok_or_else(|| err(libc::EINVAL))?;
        if v == 0 {
            return Ok(());
        }
        let br = g.dev(bridge)?;
        if let Some(e) = br.s.subordinate_errno {
            return Err(err(e));
        }
        let below = g.below(bridge);
        if br.s.no_bus_reset || below.iter().any(|b| g.devices[b].s.no_bus_reset) {
            return Err(err(libc::ENOTTY));
        }
        let mut locked = below.clone();
        locked.push(bridge);
        if locked.iter().any(|b| g.busy.contains(b)) {
            return Err(err(libc::EAGAIN));
        }
        let effects = below
            .iter()
            .map(|b| {
                let e = g.devices[b]
                    .s
                    .reset_behaviour
                    .get("bus")
                    .cloned()
                    .unwrap_or(ResetBehaviour::Ok);
                (*b, e)
            })
            .collect();
        self.apply_resets(g, &locked, effects)
    }

    /// Runs resets: slow and hung ones hold the device locks of `locked` with the state
    /// mutex released, so other devices proceed in parallel.
    fn apply_resets<'a>(
        &'a self,
        mut g: MutexGuard<'a, State>,
        locked: &[Bdf],
        effects: Vec<(Bdf, ResetBehaviour)>,
    ) -> io::Result<()> {
        let hang = effects.iter().any(|(_, b)| *b == ResetBehaviour::Hang);
        let slow = effects
            .iter()
            .filter_map(|(_, b)| match b {
                ResetBehaviour::Slow(d) => Some(*d),
                _ => None,
            })
            .max()
            .unwrap_or_default();
        let together = effects
            .iter()
            .filter_map(|(_, b)| match b {
                ResetBehaviour::Together(n) => Some(*n),
                _ => None,
            })
            .max();
        let start = Instant::now();
        if hang || !slow.is_zero() || together.is_some() {
            for b in locked {
                g.busy.insert(*b);
            }
            if hang {
                let limit = g.hang_limit;
                g = self.hang_wait(g, limit);
            } else if let Some(n) = together {
                g.resetting += 1;
                g.reset_peak = g.reset_peak.max(g.resetting);
                self.cv.notify_all();
                let limit = g.hang_limit;
                g = match self.cv.wait_timeout_while(g, limit, |s| s.reset_peak < n) {
                    Ok((g, _)) => g,
                    Err(e) => e.into_inner().0,
                };
                g.resetting -= 1;
            } else {
                drop(g);
                std::thread::sleep(slow);
                g = self.st();
            }
            for b in locked {
                g.busy.remove(b);
            }
            self.cv.notify_all();
            if hang {
                return Err(err(libc::ETIMEDOUT));
            }
        }
        let end = Instant::now();
        for (b, _) in &effects {
            g.reset_spans.push((*b, start, end));
        }
        for (b, e) in effects {
            if let Some(d) = g.devices.get_mut(&b).filter(|d| d.present) {
                reset_effect(d, &e);
            }
        }
        Ok(())
    }

    // ---- programs ----

    fn modprobe(&self, args: &[&str], timeout: Duration) -> io::Result<CmdOutput> {
        let mut remove = false;
        let mut all = false;
        let mut quiet = false;
        let mut first_time = false;
        let mut names = Vec::new();
        for a in args {
            if let Some(long) = a.strip_prefix("--") {
                match long {
                    "remove" => remove = true,
                    "all" => all = true,
                    "quiet" => quiet = true,
                    "first-time" => first_time = true,
                    _ => {}
                }
            } else if let Some(short) = a.strip_prefix('-') {
                remove |= short.contains('r');
                all |= short.contains('a');
                quiet |= short.contains('q');
            } else {
                names.push(*a);
            }
        }
        let fail = |msg: &str| out(1, "", if quiet { "" } else { msg });
        if names.is_empty() {
            return Ok(fail("modprobe: ERROR: missing parameters. See -h.\n"));
        }
        let mut g = self.st();
        if remove {
            // Every name is tried; the exit code says whether any failed.
            let mut errors = String::new();
            for n in &names {
                match g.unload_module(n, first_time) {
                    Ok(()) => {}
                    Err(ModErr::Msg(m)) => errors.push_str(&m),
                    Err(ModErr::Hang) => {
                        drop(g);
                        return Err(self.run_timeout(timeout));
                    }
                }
            }
            return Ok(if errors.is_empty() {
                out(0, "", "")
            } else {
                fail(&errors)
            });
        }
        let (mods, params): (Vec<&str>, Vec<(String, String)>) = if all {
            (names, Vec::new())
        } else {
            let params = names[1..]
                .iter()
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (vec![names[0]], params)
        };
        for m in mods {
            if let Err(msg) = g.load_module(m, &params, 0) {
                return Ok(fail(&msg));
            }
        }
        Ok(out(0, "", ""))
    }

    /// Proxmox's `pct status|shutdown|stop|start CTID`: stopping a container ends its
    /// processes (their holds go), starting it brings them back.
    fn pct(&self, args: &[&str]) -> io::Result<CmdOutput> {
        let (Some(verb), Some(id)) = (
            args.first(),
            args.get(1).and_then(|a| a.parse::<u32>().ok()),
        ) else {
            return Ok(out(255, "", "usage: pct <command> <vmid>"));
        };
        let mut g = self.st();
        let Some(c) = g.containers.get(&id).cloned() else {
            return Ok(out(
                2,
                "",
                &format!("Configuration file 'nodes/pve1/lxc/{id}.conf' does not exist"),
            ));
        };
        match *verb {
            "status" => Ok(out(
                0,
                if c.running {
                    "status: running\n"
                } else {
                    "status: stopped\n"
                },
                "",
            )),
            "shutdown" | "stop" => {
                if let (Some(code), "shutdown") = (c.refuse_stop, *verb) {
                    return Ok(out(code, "", "container did not stop in time"));
                }
                let pids: Vec<u32> = c.holds.iter().map(|h| h.pid).collect();
                g.open_nodes.retain(|n| !pids.contains(&n.pid));
                if let Some(c) = g.containers.get_mut(&id) {
                    c.running = false;
                }
                Ok(out(0, "", ""))
            }
            "start" => {
                if !c.running {
                    g.open_nodes.extend(c.holds.iter().cloned());
                    if let Some(c) = g.containers.get_mut(&id) {
                        c.running = true;
                    }
                }
                Ok(out(0, "", ""))
            }
            _ => Ok(out(255, "", "unknown command")),
        }
    }

    fn systemctl(&self, args: &[&str], timeout: Duration) -> io::Result<CmdOutput> {
        let mut g = self.st();
        if !g.systemd {
            return Err(err(libc::ENOENT));
        }
        let quiet = args.iter().any(|a| *a == "-q" || *a == "--quiet");
        let words: Vec<&str> = args
            .iter()
            .copied()
            .filter(|a| !a.starts_with('-'))
            .collect();
        let Some((verb, units)) = words.split_first() else {
            return Ok(out(1, "", "Too few arguments.\n"));
        };
        let units: Vec<String> = units.iter().map(|u| unit_name(u)).collect();
        match *verb {
            "is-active" => {
                if units.is_empty() {
                    return Ok(out(1, "", "Too few arguments.\n"));
                }
                let mut stdout = String::new();
                let mut any = false;
                for u in &units {
                    let a = g.units.get(u).is_some_and(|x| x.active);
                    any |= a;
                    stdout.push_str(if a { "active\n" } else { "inactive\n" });
                }
                if quiet {
                    stdout.clear();
                }
                Ok(out(if any { 0 } else { 3 }, &stdout, ""))
            }
            "start" | "stop" | "restart" => {
                if units.is_empty() {
                    return Ok(out(1, "", "Too few arguments.\n"));
                }
                for u in &units {
                    let Some(unit) = g.units.get_mut(u) else {
                        let why = if *verb == "stop" {
                            "not loaded"
                        } else {
                            "not found"
                        };
                        return Ok(out(
                            5,
                            "",
                            &format!("Failed to {verb} {u}: Unit {u} {why}.\n"),
                        ));
                    };
                    let outcome = if *verb == "stop" {
                        unit.stop
                    } else {
                        unit.start
                    };
                    match outcome {
                        UnitOutcome::Ok => {
                            unit.active = *verb != "stop";
                            if *verb == "stop" {
                                // The unit's processes end: their open nodes go. The unit
                                // may be an alias (display-manager.service → gdm.service).
                                let id = std::fs::read_link(
                                    self.root.join(format!("etc/systemd/system/{u}")),
                                )
                                .ok()
                                .and_then(|t| t.file_name()?.to_str().map(str::to_string))
                                .unwrap_or_else(|| u.clone());
                                let root = self.root.clone();
                                g.open_nodes.retain(|n| {
                                    let cg = std::fs::read_to_string(
                                        root.join(format!("proc/{}/cgroup", n.pid)),
                                    )
                                    .unwrap_or_default();
                                    !cg.trim_end().ends_with(&format!("/{id}"))
                                });
                            }
                        }
                        UnitOutcome::Fail => {
                            return Ok(out(
                                1,
                                "",
                                &format!(
                                    "Job for {u} failed because the control process exited with error code.\n\
                                     See \"systemctl status {u}\" and \"journalctl -xeu {u}\" for details.\n"
                                ),
                            ))
                        }
                        UnitOutcome::Hang => {
                            drop(g);
                            return Err(self.run_timeout(timeout));
                        }
                    }
                }
                Ok(out(0, "", ""))
            }
            _ => Ok(out(1, "", &format!("Unknown command verb '{verb}'.\n"))),
        }
    }

    fn do_run(&self, prog: &str, args: &[&str], timeout: Duration) -> io::Result<CmdOutput> {
        match self.take_fault(OpClass::Run(prog), &args.join(" ")) {
            Some(Fault::Errno(e)) => return Err(err(e)),
            Some(Fault::Exit(code, stderr)) => return Ok(out(code, "", &stderr)),
            Some(Fault::SilentNoop) => return Ok(out(0, "", "")),
            Some(Fault::Hang) => return Err(self.run_timeout(timeout)),
            Some(Fault::Vanish(b)) => self.vanish(b),
            Some(Fault::Delay(d)) => std::thread::sleep(d),
            None => {}
        }
        match prog {
            "modprobe" => self.modprobe(args, timeout),
            "systemctl" => self.systemctl(args, timeout),
            "pct" => self.pct(args),
            "zpool" => match std::fs::read_to_string(self.root.join("sim/zpool-status")) {
                Ok(t) => Ok(out(0, &t, "")),
                Err(_) => Err(err(libc::ENOENT)),
            },
            _ => Err(err(libc::ENOENT)),
        }
    }
}

/// new_id / remove_id: "vvvv dddd [...]", hex, at least two fields.
fn parse_id_fields(data: &str) -> io::Result<PciId> {
    let mut it = data.split_whitespace();
    let mut field = || -> io::Result<u16> {
        let f = it.next().ok_or_else(|| err(libc::EINVAL))?;
        let f = f.strip_prefix("0x").unwrap_or(f);
        u16::from_str_radix(f, 16).map_err(|_| err(libc::EINVAL))
    };
    let vendor = field()?;
    let device = field()?;
    Ok(PciId { vendor, device })
}

impl Host for SimHost {
    fn open_nodes(&self, want: &super::NodeQuery) -> io::Result<Vec<super::OpenNode>> {
        Ok(self
            .st()
            .open_nodes
            .iter()
            .filter(|n| want.matches(n))
            .cloned()
            .collect())
    }

    fn ipv4_addrs(&self) -> io::Result<Vec<super::Ipv4Addr>> {
        Ok(self.st().addrs4.clone())
    }

    fn read(&self, rel: &str) -> io::Result<String> {
        self.read_fault(rel)?;
        if rel == "proc/modules" {
            return Ok(self.st().proc_modules());
        }
        if !is_sys(rel) {
            return self.real.read(rel);
        }
        let bytes = self.st().sys_read(rel)?;
        String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    fn read_bytes(&self, rel: &str, max: usize) -> io::Result<Vec<u8>> {
        self.read_fault(rel)?;
        let mut bytes = if rel == "proc/modules" {
            self.st().proc_modules().into_bytes()
        } else if !is_sys(rel) {
            return self.real.read_bytes(rel, max);
        } else {
            self.st().sys_read(rel)?
        };
        bytes.truncate(max);
        Ok(bytes)
    }

    fn write(&self, rel: &str, data: &str) -> io::Result<()> {
        let idx = self.log(OpKind::Write, rel, data.to_string());
        let r = self.do_write(rel, data);
        let res = match &r {
            Ok(()) => OpResult::Ok,
            Err(e) => OpResult::Err(errno_of(e)),
        };
        self.finish(idx, res);
        r
    }

    fn link_name(&self, rel: &str) -> io::Result<String> {
        self.read_fault(rel)?;
        if !is_sys(rel) {
            return self.real.link_name(rel);
        }
        let g = self.st();
        let tree = g.tree();
        let canon = resolve(&tree, rel, false);
        match tree.get(&canon) {
            Some(Node::Link(t)) => Ok(t.rsplit('/').next().unwrap_or_default().to_string()),
            Some(_) => g
                .device_node(&canon)
                .map(|t| t.rsplit('/').next().unwrap_or_default().to_string())
                .ok_or_else(|| err(libc::EINVAL)),
            None => Err(err(libc::ENOENT)),
        }
    }

    fn link_target(&self, rel: &str) -> io::Result<String> {
        self.read_fault(rel)?;
        if !is_sys(rel) {
            return self.real.link_target(rel);
        }
        let g = self.st();
        let tree = g.tree();
        let canon = resolve(&tree, rel, false);
        match tree.get(&canon) {
            Some(Node::Link(t)) => {
                let from = canon.rsplit_once('/').map_or("", |(d, _)| d);
                Ok(relative(from, t))
            }
            Some(_) => g.device_node(&canon).ok_or_else(|| err(libc::EINVAL)),
            None => Err(err(libc::ENOENT)),
        }
    }

    fn list(&self, rel: &str) -> io::Result<Vec<String>> {
        self.read_fault(rel)?;
        if !is_sys(rel) {
            return self.real.list(rel);
        }
        let g = self.st();
        let tree = g.tree();
        let canon = resolve(&tree, rel, true);
        match tree.get(&canon) {
            Some(Node::Dir) => Ok(children(&tree, &canon)),
            Some(_) => Err(err(libc::ENOTDIR)),
            None if canon == "sys" => Ok(children(&tree, "sys")),
            None => Err(err(libc::ENOENT)),
        }
    }

    fn exists(&self, rel: &str) -> bool {
        if rel == "proc/modules" {
            return true;
        }
        if !is_sys(rel) {
            return self.real.exists(rel);
        }
        let g = self.st();
        let tree = g.tree();
        let canon = resolve(&tree, rel, false);
        canon == "sys" || tree.contains_key(&canon)
    }

    fn write_atomic(&self, rel: &str, data: &[u8]) -> io::Result<()> {
        self.real.write_atomic(rel, data)
    }

    fn replace_file(&self, rel: &str, data: &[u8]) -> io::Result<()> {
        match self.take_fault(OpClass::Write, rel) {
            Some(Fault::Errno(e)) => return Err(err(e)),
            Some(Fault::Hang) => return Err(self.hang_op(None)),
            _ => {}
        }
        self.real.replace_file(rel, data)
    }

    fn remove_file(&self, rel: &str) -> io::Result<()> {
        self.real.remove_file(rel)
    }

    fn write_atomic_mode(&self, rel: &str, data: &[u8], mode: u32) -> io::Result<()> {
        if is_sys(rel) {
            return Err(err(libc::EPERM));
        }
        self.real.write_atomic_mode(rel, data, mode)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        if is_sys(from) || is_sys(to) {
            return Err(err(libc::EPERM));
        }
        self.real.rename(from, to)
    }

    fn stat_owner_mode(&self, rel: &str) -> io::Result<(u32, u32)> {
        self.real.stat_owner_mode(rel)
    }

    /// Through the simulated accessors, so read faults apply (the simulated kernel has no
    /// hanging filesystem; `RealHost`'s bounded walk has its own tests).
    fn snapshot(
        &self,
        rel: &str,
        depth: u32,
        max_file: usize,
        timeout: Duration,
    ) -> io::Result<Vec<super::TreeEntry>> {
        let _ = timeout;
        Ok(super::snapshot_direct(self, rel, depth, max_file))
    }

    fn node_name(&self) -> String {
        let n = self.node.lock().unwrap_or_else(|p| p.into_inner()).clone();
        n.unwrap_or_else(super::node_name)
    }

    fn run(&self, prog: &str, args: &[&str], timeout: Duration) -> io::Result<CmdOutput> {
        let idx = self.log(OpKind::Run, prog, args.join(" "));
        let r = self.do_run(prog, args, timeout);
        let res = match &r {
            Ok(o) => OpResult::Exit(o.code),
            Err(e) => OpResult::Err(errno_of(e)),
        };
        self.finish(idx, res);
        r
    }

    fn run_file(
        &self,
        rel: &str,
        args: &[&str],
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> io::Result<CmdOutput> {
        // User hooks are real files under the private root: run them for real.
        let idx = self.log(OpKind::Run, rel, args.join(" "));
        let r = self.real.run_file(rel, args, env, timeout);
        let res = match &r {
            Ok(o) => OpResult::Exit(o.code),
            Err(e) => OpResult::Err(errno_of(e)),
        };
        self.finish(idx, res);
        r
    }

    fn symlink(&self, target: &str, rel: &str) -> io::Result<()> {
        if is_sys(rel) {
            return Err(err(libc::EPERM));
        }
        self.real.symlink(target, rel)
    }

    fn create_dir_all(&self, rel: &str) -> io::Result<()> {
        if is_sys(rel) {
            return Err(err(libc::EPERM));
        }
        self.real.create_dir_all(rel)
    }

    fn lock(&self, rel: &str, timeout: Duration) -> io::Result<Box<dyn LockGuard>> {
        self.real.lock(rel, timeout)
    }

    fn display(&self, rel: &str) -> String {
        self.root.join(rel).display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::write_with_deadline;
    use std::sync::Arc;
    use std::time::Instant;

    const VGA: &str = "0000:01:00.0";
    const AUDIO: &str = "0000:01:00.1";
    const NVME: &str = "0000:02:00.0";
    const NVME2: &str = "0000:03:00.0";
    const VIRTIO: &str = "0000:04:00.0";
    const E1000E: &str = "0000:05:00.0";
    const T: Duration = Duration::from_secs(5);

    fn dev(b: &str, f: &str) -> String {
        format!("sys/bus/pci/devices/{b}/{f}")
    }

    fn errno(r: io::Result<()>) -> Option<i32> {
        r.err().and_then(|e| e.raw_os_error())
    }

    fn rd(s: &SimHost, p: &str) -> String {
        s.read(p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    #[test]
    fn preset_reads_like_sysfs() {
        let s = SimHost::gpu_host();
        assert_eq!(rd(&s, &dev(VGA, "vendor")), "0x1234\n");
        assert_eq!(rd(&s, &dev(VGA, "class")), "0x030000\n");
        assert_eq!(rd(&s, &dev(VGA, "boot_vga")), "1\n");
        assert_eq!(rd(&s, &dev(VGA, "reset_method")), "bus\n");
        assert_eq!(rd(&s, &dev(NVME, "reset_method")), "flr bus\n");
        assert_eq!(rd(&s, &dev(VIRTIO, "reset_method")), "flr pm bus\n");
        assert_eq!(rd(&s, &dev(NVME, "driver_override")), "(null)\n");
        assert_eq!(rd(&s, &dev(VGA, "current_link_speed")), "16.0 GT/s PCIe\n");
        assert_eq!(rd(&s, &dev(VGA, "current_link_width")), "16\n");
        assert_eq!(rd(&s, &dev(NVME, "d3cold_allowed")), "1\n");
        assert_eq!(rd(&s, &dev(NVME, "power/control")), "on\n");
        assert!(!s.exists(&dev(AUDIO, "reset")));
        assert!(!s.exists(&dev(AUDIO, "reset_method")));
        assert!(s.exists(&dev(VGA, "reset")));
        assert!(!s.exists(&dev(NVME, "boot_vga")));
        assert!(s.exists(&dev("0000:00:1c.0", "reset_subordinate")));
        assert_eq!(s.link_name(&dev(VGA, "driver")).unwrap(), "bochs-drm");
        assert_eq!(s.link_name(&dev(AUDIO, "iommu_group")).unwrap(), "1");
        assert_eq!(
            s.list("sys/kernel/iommu_groups/1/devices").unwrap(),
            vec![VGA, AUDIO]
        );
        assert_eq!(s.list("sys/bus/pci/devices").unwrap().len(), 11);
        let drivers = s.list("sys/bus/pci/drivers").unwrap();
        assert!(drivers.contains(&"nvme".to_string()));
        assert!(!drivers.contains(&"vfio-pci".to_string()));
        assert!(!s.exists("sys/module/vfio_pci"));
        assert!(s.exists("sys/module/nvme"));
        assert!(s.exists("sys/class/iommu/dmar0"));
        let nvme_dir = s.list("sys/bus/pci/drivers/nvme").unwrap();
        for f in [NVME, NVME2, "bind", "unbind", "new_id", "module"] {
            assert!(nvme_dir.contains(&f.to_string()), "{f}");
        }
        assert_eq!(
            s.link_name("sys/bus/pci/drivers/nvme/module").unwrap(),
            "nvme"
        );
        assert_eq!(
            s.link_name(&format!("{}/module", dev(NVME, "driver")))
                .unwrap(),
            "nvme"
        );
        let cfg = s.read_bytes(&dev(NVME, "config"), 4).unwrap();
        assert_eq!(cfg, vec![0x36, 0x1b, 0x10, 0x00]);
        assert_eq!(s.read_bytes(&dev(NVME, "config"), 4096).unwrap().len(), 256);
        assert_eq!(
            s.link_target(&format!("sys/bus/pci/devices/{VGA}"))
                .unwrap(),
            "../../../devices/pci0000:00/0000:00:1c.0/0000:01:00.0"
        );
        assert_eq!(
            rd(&s, "sys/class/vtconsole/vtcon1/name"),
            "(M) frame buffer device\n"
        );
        assert_eq!(rd(&s, "sys/class/vtconsole/vtcon1/bind"), "1\n");
        assert_eq!(rd(&s, "sys/class/vtconsole/vtcon0/bind"), "0\n");
        assert_eq!(
            s.read(&dev(NVME, "reset")).unwrap_err().raw_os_error(),
            Some(libc::EACCES)
        );
        assert_eq!(
            errno(s.write(&dev(NVME, "vendor"), "0x1")),
            Some(libc::EACCES)
        );
        assert_eq!(
            errno(s.write(&dev("0000:09:00.0", "reset"), "1")),
            Some(libc::ENOENT)
        );
    }

    #[test]
    fn unbind_override_probe_round_trip() {
        let s = SimHost::gpu_host();
        let start = s.snapshot();
        s.write("sys/bus/pci/drivers/nvme/unbind", NVME).unwrap();
        assert!(!s.exists(&dev(NVME, "driver")));
        s.write(&dev(NVME, "driver_override"), "vfio-pci\n")
            .unwrap();
        assert_eq!(rd(&s, &dev(NVME, "driver_override")), "vfio-pci\n");
        // vfio-pci not loaded: probing finds nothing, and says nothing.
        s.write("sys/bus/pci/drivers_probe", NVME).unwrap();
        assert_eq!(s.driver_of(NVME), None);
        let o = s.run("modprobe", &["vfio-pci"], T).unwrap();
        assert!(o.success());
        assert!(s.exists("sys/module/vfio_pci"));
        // Loading binds the overridden device, and only it.
        assert_eq!(s.link_name(&dev(NVME, "driver")).unwrap(), "vfio-pci");
        assert_eq!(s.driver_of(NVME2).as_deref(), Some("nvme"));
        // Back.
        s.write("sys/bus/pci/drivers/vfio-pci/unbind", NVME)
            .unwrap();
        s.write(&dev(NVME, "driver_override"), "\n").unwrap();
        assert_eq!(rd(&s, &dev(NVME, "driver_override")), "(null)\n");
        s.write("sys/bus/pci/drivers_probe", NVME).unwrap();
        assert_eq!(s.driver_of(NVME).as_deref(), Some("nvme"));
        assert_ne!(s.snapshot(), start);
        assert!(s.run("modprobe", &["-r", "vfio_pci"], T).unwrap().success());
        assert_eq!(s.snapshot(), start);
        assert_eq!(s.write_count(), 6);
        let ops = s.ops();
        assert_eq!(ops.len(), 8);
        assert_eq!(ops[0].path, "sys/bus/pci/drivers/nvme/unbind");
        assert_eq!(ops[0].result, OpResult::Ok);
        assert_eq!(ops[3].kind, OpKind::Run);
        assert_eq!(ops[3].result, OpResult::Exit(Some(0)));
        assert_eq!(s.writes_to("/driver_override"), vec!["vfio-pci\n", "\n"]);
    }

    #[test]
    fn bind_errors() {
        let s = SimHost::gpu_host();
        // Already bound, driver matches → EBUSY.
        assert_eq!(
            errno(s.write("sys/bus/pci/drivers/nvme/bind", NVME)),
            Some(libc::EBUSY)
        );
        // Driver does not match the device → ENODEV (even though it is bound elsewhere).
        assert_eq!(
            errno(s.write("sys/bus/pci/drivers/e1000e/bind", NVME)),
            Some(libc::ENODEV)
        );
        // Unbind from a driver it is not bound to → ENODEV; unknown device → ENODEV.
        assert_eq!(
            errno(s.write("sys/bus/pci/drivers/e1000e/unbind", NVME)),
            Some(libc::ENODEV)
        );
        assert_eq!(
            errno(s.write("sys/bus/pci/drivers/nvme/unbind", "0000:09:00.0")),
            Some(libc::ENODEV)
        );
        // An override naming another driver makes the id table irrelevant.
        s.write("sys/bus/pci/drivers/nvme/unbind", NVME).unwrap();
        s.write(&dev(NVME, "driver_override"), "vfio-pci").unwrap();
        assert_eq!(
            errno(s.write("sys/bus/pci/drivers/nvme/bind", NVME)),
            Some(libc::ENODEV)
        );
        // vfio-pci is not loaded: no bind file at all.
        assert_eq!(
            errno(s.write("sys/bus/pci/drivers/vfio-pci/bind", NVME)),
            Some(libc::ENOENT)
        );
        s.run("modprobe", &["vfio_pci"], T).unwrap();
        s.write("sys/bus/pci/drivers/vfio-pci/unbind", NVME)
            .unwrap();
        // A deferred probe comes back as EAGAIN and leaves the device unbound.
        s.set_probe_error(NVME, "vfio-pci", Some(libc::EAGAIN));
        assert_eq!(
            errno(s.write("sys/bus/pci/drivers/vfio-pci/bind", NVME)),
            Some(libc::EAGAIN)
        );
        assert_eq!(s.driver_of(NVME), None);
        s.set_probe_error(NVME, "vfio-pci", None);
        s.write("sys/bus/pci/drivers/vfio-pci/bind", NVME).unwrap();
        assert_eq!(s.driver_of(NVME).as_deref(), Some("vfio-pci"));
        // vfio-pci refuses bridges.
        s.write("sys/bus/pci/drivers/pcieport/unbind", "0000:00:1c.4")
            .unwrap();
        s.write(&dev("0000:00:1c.4", "driver_override"), "vfio-pci")
            .unwrap();
        assert_eq!(
            errno(s.write("sys/bus/pci/drivers/vfio-pci/bind", "0000:00:1c.4")),
            Some(libc::EINVAL)
        );
        // drivers_probe on a bound device is a no-op; on an unknown one ENODEV.
        s.write("sys/bus/pci/drivers_probe", NVME2).unwrap();
        assert_eq!(
            errno(s.write("sys/bus/pci/drivers_probe", "0000:09:00.0")),
            Some(libc::ENODEV)
        );
    }

    #[test]
    fn new_id_grabs_matching_devices() {
        let s = SimHost::gpu_host();
        s.run("modprobe", &["vfio-pci"], T).unwrap();
        s.write("sys/bus/pci/drivers/nvme/unbind", NVME).unwrap();
        s.write("sys/bus/pci/drivers/vfio-pci/new_id", "1b36 0010")
            .unwrap();
        assert_eq!(s.driver_of(NVME).as_deref(), Some("vfio-pci"));
        assert_eq!(s.driver_of(NVME2).as_deref(), Some("nvme"));
        assert_eq!(
            errno(s.write("sys/bus/pci/drivers/vfio-pci/new_id", "1b36 0010")),
            Some(libc::EEXIST)
        );
        assert_eq!(
            errno(s.write("sys/bus/pci/drivers/vfio-pci/new_id", "1b36")),
            Some(libc::EINVAL)
        );
        assert_eq!(s.snapshot().dynamic_ids["vfio-pci"].len(), 1);
        s.write("sys/bus/pci/drivers/vfio-pci/remove_id", "1b36 0010")
            .unwrap();
        assert!(s.snapshot().dynamic_ids.is_empty());
        assert_eq!(
            errno(s.write("sys/bus/pci/drivers/vfio-pci/remove_id", "1b36 0010")),
            Some(libc::ENODEV)
        );
    }

    #[test]
    fn reset_method_einval_keeps_old_list() {
        let s = SimHost::gpu_host();
        for bad in ["bogus", "acpi", "flr bogus", "flr acpi"] {
            assert_eq!(
                errno(s.write(&dev(NVME, "reset_method"), bad)),
                Some(libc::EINVAL),
                "{bad}"
            );
            assert_eq!(rd(&s, &dev(NVME, "reset_method")), "flr bus\n");
        }
        s.write(&dev(VIRTIO, "reset_method"), "pm\n").unwrap();
        assert_eq!(rd(&s, &dev(VIRTIO, "reset_method")), "pm\n");
        s.write(&dev(VIRTIO, "reset_method"), "bus  flr").unwrap();
        assert_eq!(rd(&s, &dev(VIRTIO, "reset_method")), "bus flr\n");
        s.write(&dev(VIRTIO, "reset_method"), "default").unwrap();
        assert_eq!(rd(&s, &dev(VIRTIO, "reset_method")), "flr pm bus\n");
    }

    #[test]
    fn reset_enotty_when_emptied() {
        let s = SimHost::gpu_host();
        s.write(&dev(NVME, "reset"), "1").unwrap();
        s.write(&dev(NVME, "reset_method"), "").unwrap();
        assert_eq!(rd(&s, &dev(NVME, "reset_method")), "\n");
        assert!(s.exists(&dev(NVME, "reset")));
        assert_eq!(errno(s.write(&dev(NVME, "reset"), "1")), Some(libc::ENOTTY));
        for bad in ["0", "2", "yes", ""] {
            assert_eq!(
                errno(s.write(&dev(NVME, "reset"), bad)),
                Some(libc::EINVAL),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn reset_ladder_follows_method_order() {
        let s = SimHost::gpu_host();
        // ENOTTY from flr moves on to bus; another error stops.
        s.set_reset_behaviour(NVME, "flr", ResetBehaviour::Enotty);
        s.write(&dev(NVME, "reset"), "1\n").unwrap();
        s.set_reset_behaviour(NVME, "flr", ResetBehaviour::Errno(libc::EIO));
        assert_eq!(errno(s.write(&dev(NVME, "reset"), "1")), Some(libc::EIO));
        // e1000e: pm works, bus alone fails ENOTTY as on the test bed.
        s.write(&dev(E1000E, "reset"), "1").unwrap();
        s.write(&dev(E1000E, "reset_method"), "bus").unwrap();
        assert_eq!(
            errno(s.write(&dev(E1000E, "reset"), "1")),
            Some(libc::ENOTTY)
        );
        // A wedging FLR "succeeds"; config reads 0xff until a working reset.
        s.set_reset_behaviour(NVME2, "flr", ResetBehaviour::Wedge);
        s.write(&dev(NVME2, "reset"), "1").unwrap();
        assert_eq!(
            s.read_bytes(&dev(NVME2, "config"), 4).unwrap(),
            vec![0xff; 4]
        );
        assert_eq!(rd(&s, &dev(NVME2, "vendor")), "0x1b36\n");
        s.write(&dev(NVME2, "reset_method"), "bus").unwrap();
        s.write(&dev(NVME2, "reset"), "1").unwrap();
        assert_eq!(
            s.read_bytes(&dev(NVME2, "config"), 2).unwrap(),
            vec![0x36, 0x1b]
        );
        // A narrowed link shows in current_link_width, max stays.
        s.set_reset_behaviour(VGA, "bus", ResetBehaviour::NarrowLink(8));
        s.write("sys/bus/pci/drivers/snd_hda_intel/unbind", AUDIO)
            .unwrap();
        s.write(&dev("0000:00:1c.0", "reset_subordinate"), "1")
            .unwrap();
        assert_eq!(rd(&s, &dev(VGA, "current_link_width")), "8\n");
        assert_eq!(rd(&s, &dev(VGA, "max_link_width")), "16\n");
    }

    #[test]
    fn bus_reset_refused_on_multifunction() {
        let s = SimHost::gpu_host();
        // Listed at enumeration, refused at reset time: the audio function shares the bus.
        assert_eq!(errno(s.write(&dev(VGA, "reset"), "1")), Some(libc::ENOTTY));
        assert_eq!(
            errno(s.write(&dev(VGA, "reset_method"), "bus")),
            Some(libc::EINVAL)
        );
        assert_eq!(rd(&s, &dev(VGA, "reset_method")), "bus\n");
        // Re-probing drops bus for the same reason.
        s.write(&dev(VGA, "reset_method"), "default").unwrap();
        assert_eq!(rd(&s, &dev(VGA, "reset_method")), "\n");
        // The bridge can still reset both at once.
        s.write(&dev("0000:00:1c.0", "reset_subordinate"), "1")
            .unwrap();
        // A single-function device behind its own port takes bus.
        s.write(&dev(NVME, "reset_method"), "bus").unwrap();
        s.write(&dev(NVME, "reset"), "1").unwrap();
        // Blocked bus reset and a busy bus lock.
        s.set_no_bus_reset(VGA, true);
        assert_eq!(
            errno(s.write(&dev("0000:00:1c.0", "reset_subordinate"), "1")),
            Some(libc::ENOTTY)
        );
        s.set_subordinate_error("0000:00:1c.1", Some(libc::EAGAIN));
        assert_eq!(
            errno(s.write(&dev("0000:00:1c.1", "reset_subordinate"), "1")),
            Some(libc::EAGAIN)
        );
        let old = SimHost::gpu_host();
        old.add_device(
            SimDevice::bridge("0000:00:1c.0")
                .group(6)
                .with_reset_subordinate(false),
        );
        assert!(!old.exists(&dev("0000:00:1c.0", "reset_subordinate")));
    }

    #[test]
    fn rescan_after_remove_gives_fresh_state() {
        let s = SimHost::gpu_host();
        s.write(&dev(NVME, "driver_override"), "vfio-pci").unwrap();
        s.write(&dev(NVME, "reset_method"), "flr").unwrap();
        s.write(&dev(NVME, "power/control"), "auto").unwrap();
        s.write(&dev(NVME, "remove"), "1").unwrap();
        assert!(!s.exists(&format!("sys/bus/pci/devices/{NVME}")));
        assert!(!s.exists("sys/bus/pci/drivers/nvme/0000:02:00.0"));
        assert_eq!(errno(s.write(&dev(NVME, "reset"), "1")), Some(libc::ENOENT));
        assert!(!s.snapshot().device(NVME).unwrap().present);
        s.write("sys/bus/pci/rescan", "1\n").unwrap();
        assert_eq!(rd(&s, &dev(NVME, "driver_override")), "(null)\n");
        assert_eq!(rd(&s, &dev(NVME, "reset_method")), "flr bus\n");
        assert_eq!(rd(&s, &dev(NVME, "power/control")), "on\n");
        assert_eq!(s.driver_of(NVME).as_deref(), Some("nvme"));
        // Removing a bridge takes its children along; rescan brings both.
        s.write(&dev("0000:00:1c.0", "remove"), "1").unwrap();
        assert!(!s.is_present(VGA) && !s.is_present(AUDIO));
        assert!(!s.framebuffer_exists());
        assert!(!s.exists("sys/class/vtconsole/vtcon1"));
        s.write("sys/bus/pci/rescan", "1").unwrap();
        assert_eq!(s.driver_of(VGA).as_deref(), Some("bochs-drm"));
        assert_eq!(s.driver_of(AUDIO).as_deref(), Some("snd_hda_intel"));
        assert_eq!(rd(&s, &dev(VGA, "reset_method")), "bus\n");
        assert!(s.fbcon_bound());
        // Function 0 re-enumerated alone sees its sibling: no bus, so no reset files.
        s.write(&dev(VGA, "remove"), "1").unwrap();
        s.write("sys/bus/pci/rescan", "1").unwrap();
        assert!(!s.exists(&dev(VGA, "reset")));
        // A wedged function is not found again.
        s.wedge(NVME2);
        s.write(&dev(NVME2, "remove"), "1").unwrap();
        s.write("sys/bus/pci/rescan", "1").unwrap();
        assert!(!s.is_present(NVME2));
    }

    #[test]
    fn modprobe_and_modules() {
        let s = SimHost::gpu_host();
        s.write(&dev(NVME, "driver_override"), "vfio-pci").unwrap();
        s.write(&dev(VIRTIO, "driver_override"), "vfio-pci")
            .unwrap();
        s.write("sys/bus/pci/drivers/nvme/unbind", NVME).unwrap();
        // Still bound devices are not taken.
        s.run("modprobe", &["vfio-pci", "disable_vga=1"], T)
            .unwrap();
        assert_eq!(s.driver_of(NVME).as_deref(), Some("vfio-pci"));
        assert_eq!(s.driver_of(VIRTIO).as_deref(), Some("virtio-pci"));
        assert_eq!(rd(&s, "sys/module/vfio_pci/parameters/disable_vga"), "1\n");
        s.write("sys/module/vfio_pci/parameters/disable_idle_d3", "Y")
            .unwrap();
        assert_eq!(
            errno(s.write("sys/module/vfio_pci/parameters/disable_vga", "0")),
            Some(libc::EACCES)
        );
        assert!(s
            .read("proc/modules")
            .unwrap()
            .contains("vfio_pci 16384 0 - Live"));
        // In use → exit 1.
        s.set_module_in_use("vfio_pci", true);
        let o = s.run("modprobe", &["-r", "vfio-pci"], T).unwrap();
        assert_eq!(o.code, Some(1));
        assert!(o.stderr.contains("is in use"), "{}", o.stderr);
        s.set_module_in_use("vfio_pci", false);
        // Unload unbinds.
        assert!(s.run("modprobe", &["-r", "vfio_pci"], T).unwrap().success());
        assert_eq!(s.driver_of(NVME), None);
        assert!(s.run("modprobe", &["-r", "vfio_pci"], T).unwrap().success());
        // -r goes on past a failure and reports it.
        let o = s.run("modprobe", &["-r", "nosuch", "e1000e"], T).unwrap();
        assert_eq!(o.code, Some(1));
        assert!(o.stderr.contains("Module nosuch not found"));
        assert_eq!(s.driver_of(E1000E), None);
        s.run("modprobe", &["e1000e"], T).unwrap();
        assert_eq!(s.driver_of(E1000E).as_deref(), Some("e1000e"));
        // Not installed.
        s.set_module_available("vfio_pci", false);
        let o = s.run("modprobe", &["vfio-pci"], T).unwrap();
        assert_eq!(o.code, Some(1));
        assert!(o.stderr.contains("FATAL: Module vfio-pci not found"));
        // Builtin.
        let o = s.run("modprobe", &["-r", "pcieport"], T).unwrap();
        assert!(o.stderr.contains("builtin"));
        // Hanging unload: ETIMEDOUT after the caller's timeout.
        s.set_module_unload_hangs("e1000e", true);
        let t0 = Instant::now();
        let e = s
            .run("modprobe", &["-r", "e1000e"], Duration::from_millis(50))
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ETIMEDOUT));
        assert!(t0.elapsed() >= Duration::from_millis(50));
        assert_eq!(s.driver_of(E1000E).as_deref(), Some("e1000e"));
        // Unknown program.
        assert_eq!(
            s.run("nvidia-smi", &[], T).unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
    }

    #[test]
    fn nvidia_stack_unloads_in_order() {
        let s = SimHost::gpu_host();
        s.add_module(SimModule::new("nvidia"));
        s.add_module(SimModule::new("nvidia_modeset").depends(&["nvidia"]));
        s.add_module(SimModule::new("nvidia_uvm").depends(&["nvidia"]));
        s.add_module(SimModule::new("nvidia_drm").depends(&["nvidia_modeset"]));
        s.add_unit("nvidia-persistenced", true);
        s.unit_holds("nvidia-persistenced", "nvidia");
        let o = s.run("modprobe", &["-r", "nvidia"], T).unwrap();
        assert!(o.stderr.contains("nvidia is in use"));
        assert_eq!(rd(&s, "sys/module/nvidia/refcnt"), "3\n");
        assert_eq!(
            s.list("sys/module/nvidia/holders").unwrap(),
            vec!["nvidia_modeset", "nvidia_uvm"]
        );
        assert_eq!(
            s.run("systemctl", &["stop", "nvidia-persistenced"], T)
                .unwrap()
                .code,
            Some(0)
        );
        // nvidia_modeset goes with nvidia_drm (unused dependency); naming it again is fine.
        let o = s
            .run(
                "modprobe",
                &["-r", "nvidia_drm", "nvidia_modeset", "nvidia_uvm", "nvidia"],
                T,
            )
            .unwrap();
        assert_eq!(o.code, Some(0), "{}", o.stderr);
        assert!(!s.module_loaded("nvidia_drm") && !s.module_loaded("nvidia_modeset"));
        assert!(!s.module_loaded("nvidia"));
        let o = s
            .run("modprobe", &["-r", "--first-time", "nvidia"], T)
            .unwrap();
        assert!(o.stderr.contains("is not in kernel"));
        // Loading pulls dependencies in.
        s.run("modprobe", &["nvidia_drm"], T).unwrap();
        assert!(s.module_loaded("nvidia") && s.module_loaded("nvidia_modeset"));
    }

    #[test]
    fn systemctl_units() {
        let s = SimHost::new();
        assert_eq!(
            s.run("systemctl", &["is-active", "gdm"], T)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENOENT)
        );
        s.add_unit("gdm", true);
        let o = s
            .run("systemctl", &["is-active", "gdm.service"], T)
            .unwrap();
        assert_eq!((o.code, o.stdout.as_str()), (Some(0), "active\n"));
        assert!(s.run("systemctl", &["stop", "gdm"], T).unwrap().success());
        let o = s.run("systemctl", &["is-active", "gdm"], T).unwrap();
        assert_eq!((o.code, o.stdout.as_str()), (Some(3), "inactive\n"));
        let o = s
            .run("systemctl", &["is-active", "--quiet", "gdm"], T)
            .unwrap();
        assert_eq!((o.code, o.stdout.as_str()), (Some(3), ""));
        s.set_unit_outcome("gdm", "start", UnitOutcome::Fail);
        assert_eq!(
            s.run("systemctl", &["start", "gdm"], T).unwrap().code,
            Some(1)
        );
        assert!(!s.unit_active("gdm"));
        s.set_unit_outcome("gdm", "start", UnitOutcome::Hang);
        let e = s
            .run("systemctl", &["start", "gdm"], Duration::from_millis(20))
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ETIMEDOUT));
        assert_eq!(
            s.run("systemctl", &["stop", "nope"], T).unwrap().code,
            Some(5)
        );
    }

    #[test]
    fn console_follows_framebuffers() {
        let s = SimHost::gpu_host();
        assert!(s.fbcon_bound());
        // Unbinding fbcon; reading back tells the truth.
        s.write("sys/class/vtconsole/vtcon1/bind", "0").unwrap();
        assert_eq!(rd(&s, "sys/class/vtconsole/vtcon1/bind"), "0\n");
        assert_eq!(rd(&s, "sys/class/vtconsole/vtcon0/bind"), "1\n");
        // The DRM driver goes: no framebuffer, no vtcon1.
        s.write("sys/bus/pci/drivers/bochs-drm/unbind", VGA)
            .unwrap();
        assert!(!s.exists("sys/class/vtconsole/vtcon1"));
        assert!(!s.exists(&dev(VGA, "drm")));
        // Back: fbcon takes over again on its own.
        s.write("sys/bus/pci/drivers/bochs-drm/bind", VGA).unwrap();
        assert_eq!(rd(&s, "sys/class/vtconsole/vtcon1/bind"), "1\n");
        assert!(s.exists(&dev(VGA, "drm")));

        // A firmware framebuffer is removed for good once anything binds the boot GPU.
        let s = SimHost::gpu_host();
        s.set_driver(VGA, None);
        s.set_firmware_fb(Some("efi-framebuffer"));
        assert!(s.fbcon_bound());
        assert!(s.exists("sys/bus/platform/drivers/efi-framebuffer/efi-framebuffer.0"));
        s.write(
            "sys/bus/platform/drivers/efi-framebuffer/unbind",
            "efi-framebuffer.0",
        )
        .unwrap();
        assert!(!s.framebuffer_exists());
        assert_eq!(
            errno(s.write(
                "sys/bus/platform/drivers/efi-framebuffer/unbind",
                "efi-framebuffer.0"
            )),
            Some(libc::ENODEV)
        );
        s.write(
            "sys/bus/platform/drivers/efi-framebuffer/bind",
            "efi-framebuffer.0",
        )
        .unwrap();
        assert!(s.fbcon_bound());
        s.run("modprobe", &["vfio-pci"], T).unwrap();
        s.write(&dev(VGA, "driver_override"), "vfio-pci").unwrap();
        s.write("sys/bus/pci/drivers_probe", VGA).unwrap();
        assert_eq!(s.driver_of(VGA).as_deref(), Some("vfio-pci"));
        assert!(!s.firmware_fb_present());
        assert!(!s.exists("sys/bus/platform/devices/efi-framebuffer.0"));
        assert!(!s.exists("sys/class/vtconsole/vtcon1"));
        // After the VM: the real driver brings the console back, not efifb.
        s.write("sys/bus/pci/drivers/vfio-pci/unbind", VGA).unwrap();
        s.write(&dev(VGA, "driver_override"), "").unwrap();
        s.write("sys/bus/pci/drivers_probe", VGA).unwrap();
        assert_eq!(s.driver_of(VGA).as_deref(), Some("bochs-drm"));
        assert!(s.fbcon_bound());
        assert!(!s.firmware_fb_present());
    }

    #[test]
    fn unbind_hangs_while_console_bound() {
        let s = Arc::new(SimHost::gpu_host());
        s.add_driver(
            SimDriver::new("bochs-drm")
                .module("bochs")
                .id(0x1234, 0x1111)
                .provides_fb()
                .unbind_hangs_with_console(),
        );
        let h: Arc<dyn Host> = s.clone();
        let unbind = "sys/bus/pci/drivers/bochs-drm/unbind";
        let r = write_with_deadline(&h, unbind, VGA, Duration::from_millis(50));
        assert_eq!(errno(r), Some(libc::ETIMEDOUT));
        s.release_hangs();
        s.write("sys/class/vtconsole/vtcon1/bind", "0").unwrap();
        s.write(unbind, VGA).unwrap();
        assert_eq!(s.driver_of(VGA), None);
    }

    #[test]
    fn fault_errno_and_nth() {
        let s = SimHost::gpu_host();
        s.inject(FaultPoint::write_suffix("/driver_override", Fault::Errno(libc::EBUSY)).nth(2));
        s.write(&dev(NVME, "driver_override"), "vfio-pci").unwrap();
        assert_eq!(
            errno(s.write(&dev(NVME2, "driver_override"), "vfio-pci")),
            Some(libc::EBUSY)
        );
        assert_eq!(rd(&s, &dev(NVME2, "driver_override")), "(null)\n");
        s.write(&dev(NVME2, "driver_override"), "vfio-pci").unwrap();
        assert_eq!(s.ops()[1].result, OpResult::Err(libc::EBUSY));

        s.inject(FaultPoint::read(
            &dev(VGA, "config"),
            Fault::Errno(libc::EIO),
        ));
        assert!(s.read_bytes(&dev(VGA, "config"), 4).is_err());
        s.inject(FaultPoint::run("modprobe", Fault::Exit(1, "boom\n".into())).args_contain("vfio"));
        assert_eq!(s.run("modprobe", &["vfio-pci"], T).unwrap().code, Some(1));
        assert!(!s.module_loaded("vfio_pci"));
        assert!(s.run("modprobe", &["-r", "e1000e"], T).unwrap().success());
        s.clear_faults();
        assert!(s.run("modprobe", &["vfio-pci"], T).unwrap().success());
    }

    #[test]
    fn fault_silent_noop_on_vtcon() {
        let s = SimHost::gpu_host();
        s.inject(FaultPoint::write_suffix("vtcon1/bind", Fault::SilentNoop));
        s.write("sys/class/vtconsole/vtcon1/bind", "0").unwrap();
        assert_eq!(rd(&s, "sys/class/vtconsole/vtcon1/bind"), "1\n");
        assert!(s.fbcon_bound());
    }

    #[test]
    fn fault_vanish_before_op() {
        let s = SimHost::gpu_host();
        s.inject(FaultPoint::write_suffix("/unbind", Fault::vanish(NVME)));
        assert_eq!(
            errno(s.write("sys/bus/pci/drivers/nvme/unbind", NVME)),
            Some(libc::ENODEV)
        );
        assert!(!s.is_present(NVME));
        assert!(!s
            .list("sys/kernel/iommu_groups")
            .unwrap()
            .contains(&"2".into()));
        s.write("sys/bus/pci/rescan", "1").unwrap();
        assert_eq!(s.driver_of(NVME).as_deref(), Some("nvme"));
    }

    #[test]
    fn fault_hang_with_deadline() {
        let s = Arc::new(SimHost::gpu_host());
        s.inject(FaultPoint::write(&dev(NVME, "reset"), Fault::Hang));
        let h: Arc<dyn Host> = s.clone();
        let t0 = Instant::now();
        let r = write_with_deadline(&h, &dev(NVME, "reset"), "1", Duration::from_millis(100));
        assert_eq!(errno(r), Some(libc::ETIMEDOUT));
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert_eq!(s.ops()[0].result, OpResult::Pending);
        // The hung reset holds the device lock: power/control blocks too, other devices don't.
        let r = write_with_deadline(
            &h,
            &dev(NVME, "power/control"),
            "on",
            Duration::from_millis(50),
        );
        assert_eq!(errno(r), Some(libc::ETIMEDOUT));
        s.write(&dev(NVME2, "power/control"), "auto").unwrap();
        s.release_hangs();
        assert!(poll(|| s.ops()[0].result == OpResult::Err(libc::ETIMEDOUT)));
        assert!(poll(|| s.ops()[1].result == OpResult::Ok));
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    fn poll(mut f: impl FnMut() -> bool) -> bool {
        crate::host::poll_until(Duration::from_secs(3), || f().then_some(())).is_some()
    }

    #[test]
    fn reset_behaviour_hang_and_slow() {
        let s = Arc::new(SimHost::gpu_host());
        s.set_reset_behaviour(NVME, "flr", ResetBehaviour::Hang);
        let h: Arc<dyn Host> = s.clone();
        let r = write_with_deadline(&h, &dev(NVME, "reset"), "1", Duration::from_millis(50));
        assert_eq!(errno(r), Some(libc::ETIMEDOUT));
        // The bus lock is taken: the port answers EAGAIN.
        assert_eq!(
            errno(s.write(&dev("0000:00:1c.1", "reset_subordinate"), "1")),
            Some(libc::EAGAIN)
        );
        s.release_hangs();
        // Slow resets of different devices run in parallel.
        s.set_reset_behaviour(
            NVME2,
            "flr",
            ResetBehaviour::Slow(Duration::from_millis(200)),
        );
        s.set_reset_behaviour(
            VIRTIO,
            "flr",
            ResetBehaviour::Slow(Duration::from_millis(200)),
        );
        let t0 = Instant::now();
        let a = {
            let s = s.clone();
            std::thread::spawn(move || s.write(&dev(NVME2, "reset"), "1"))
        };
        s.write(&dev(VIRTIO, "reset"), "1").unwrap();
        a.join().unwrap().unwrap();
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_millis(390),
            "{took:?}"
        );
    }

    #[test]
    fn snapshot_equality() {
        let s = SimHost::gpu_host();
        s.add_unit("display-manager", true);
        let start = s.snapshot();
        assert_eq!(start, s.snapshot());
        s.write(&dev(NVME, "d3cold_allowed"), "0").unwrap();
        assert_ne!(s.snapshot(), start);
        assert_eq!(
            s.snapshot().device(NVME).unwrap().d3cold_allowed,
            Some(false)
        );
        s.write(&dev(NVME, "d3cold_allowed"), "1").unwrap();
        s.write("sys/class/vtconsole/vtcon1/bind", "0").unwrap();
        assert_ne!(s.snapshot(), start);
        s.write("sys/class/vtconsole/vtcon1/bind", "1").unwrap();
        s.run("systemctl", &["stop", "display-manager"], T).unwrap();
        assert_ne!(s.snapshot(), start);
        s.run("systemctl", &["start", "display-manager.service"], T)
            .unwrap();
        assert_eq!(s.snapshot(), start);
        assert_eq!(
            errno(s.write(&dev(NVME, "power/control"), "off")),
            Some(libc::EINVAL)
        );
        assert_eq!(s.snapshot(), start);
    }

    #[test]
    fn other_paths_are_real_files() {
        let s = SimHost::gpu_host();
        s.write_atomic("etc/pve/qemu-server/100.conf", b"hostpci0: 0000:01:00\n")
            .unwrap();
        assert!(s.root_dir().join("etc/pve/qemu-server/100.conf").is_file());
        assert_eq!(
            s.read("etc/pve/qemu-server/100.conf").unwrap(),
            "hostpci0: 0000:01:00\n"
        );
        assert_eq!(s.list("etc/pve/qemu-server").unwrap(), vec!["100.conf"]);
        let _g = s.lock("run/pt-hook/lock/x.lock", T).unwrap();
        s.remove_file("etc/pve/qemu-server/100.conf").unwrap();
        assert!(!s.exists("etc/pve/qemu-server/100.conf"));
        let root = s.root_dir().to_path_buf();
        drop(_g);
        drop(s);
        assert!(!root.exists());
    }

    #[test]
    fn iommu_off_hides_groups() {
        let s = SimHost::gpu_host();
        s.set_iommu(None);
        assert!(!s.exists(&dev(VGA, "iommu_group")));
        assert!(s.list("sys/kernel/iommu_groups").unwrap().is_empty());
        assert!(!s.exists("sys/class/iommu/dmar0"));
    }
}
