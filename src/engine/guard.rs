//! The host guard: who uses a PCI function. One scan answers it for every caller — `plan`,
//! `doctor`, pre-start (Proxmox and libvirt), post-stop, `reset` and `cleanup` — so they can
//! never disagree about whether a device is free.
//!
//! The kernel never refuses to unbind a driver whose device is in use: an NVMe goes away
//! under a mounted filesystem or active swap, a NIC under the host's default route, a DRM
//! card under an open fd (docs/kernel.md). So pt-hook looks first, at every place a user
//! can show up:
//! - block devices below the function (NVMe namespaces, including the multipath heads that
//!   sit under nvme-subsystem, disks under SATA/SAS/USB controllers, partitions): mountinfo
//!   (by major:minor and by source), /proc/swaps, stacked devices in `holders/`
//!   (device-mapper/LVM, md, bcache), ZFS pool members (`zpool status -P -L`);
//! - network interfaces below it, and the bridges/bonds/VLANs above them: addresses, the
//!   default route (IPv4 and IPv6), other routes, corosync links of this node;
//! - device nodes open by processes (block nodes, DRM, sound, NVMe char devices, /dev/nvidia*,
//!   /dev/vfio/GROUP and vfio cdevs, vfio device fds), with the container or VM the process
//!   belongs to (from its cgroup);
//! - Proxmox's PCI reservations of another VM that runs, and pt-hook state of another VM or
//!   libvirt domain.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;

use serde::Serialize;

use crate::engine::state::{self, VmKey};
use crate::host::{paths, Host, OpenNode};
use crate::parse::pve::mapping::{parse_reservations, ReservationHolder};
use crate::pci::Bdf;

/// Where a process runs, from its cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "kebab-case")]
pub enum Scope {
    Host,
    /// An LXC container (Proxmox CT id).
    Container(u32),
    /// A Proxmox VM's QEMU (qemu.slice/VMID.scope).
    Vm(u32),
    /// A libvirt domain (machine.slice/machine-qemu-N-NAME.scope).
    Libvirt(String),
    /// A systemd service on the host.
    Unit(String),
}

/// A process that holds a device node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
    pub scope: Scope,
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} ({})", self.pid, self.comm)?;
        match &self.scope {
            Scope::Host => Ok(()),
            Scope::Container(c) => write!(f, " in container {c}"),
            Scope::Vm(v) => write!(f, " of VM {v}"),
            Scope::Libvirt(d) => write!(f, " of libvirt domain {d}"),
            Scope::Unit(u) => write!(f, " in {u}"),
        }
    }
}

/// One user of a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Use {
    /// A filesystem on a block device below the function (`via`: the stacked device, e.g.
    /// "dm-0 (pve-root)", the filesystem really sits on).
    Mounted {
        node: String,
        via: Option<String>,
        at: String,
        fstype: String,
    },
    Swap {
        node: String,
        via: Option<String>,
    },
    /// A device-mapper/LVM, md or bcache device built on it.
    Stacked {
        node: String,
        holder: String,
    },
    Zfs {
        node: String,
        pool: String,
    },
    /// A device node (or vfio device fd) a process holds open; `block`: a block device.
    Open {
        node: String,
        process: Process,
        block: bool,
    },
    DefaultRoute {
        iface: String,
        /// The bridge/bond/VLAN above the function's interface that carries it.
        on: Option<String>,
        gateway: Option<String>,
    },
    Address {
        iface: String,
        on: Option<String>,
        addr: String,
    },
    Route {
        iface: String,
        on: Option<String>,
        dest: String,
    },
    /// A corosync link of this node: taking it breaks the cluster's quorum.
    Corosync {
        iface: String,
        on: Option<String>,
        addr: String,
    },
    /// Proxmox's reservation for another VM that runs (or is starting).
    Reserved {
        vmid: u32,
        pid: Option<u32>,
    },
    /// pt-hook's own state of another VM or libvirt domain.
    State {
        owner: String,
        file: String,
    },
}

fn on_text(iface: &str, on: &Option<String>) -> String {
    match on {
        Some(m) => format!("{iface} (through {m})"),
        None => iface.to_string(),
    }
}

impl fmt::Display for Use {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let via = |v: &Option<String>| v.as_ref().map(|v| format!(" → {v}")).unwrap_or_default();
        match self {
            Use::Mounted {
                node,
                via: v,
                at,
                fstype,
            } => write!(f, "{node}{} is mounted at {at} ({fstype})", via(v)),
            Use::Swap { node, via: v } => write!(f, "{node}{} is active swap", via(v)),
            Use::Stacked { node, holder } => write!(f, "{node} is held by {holder}"),
            Use::Zfs { node, pool } => write!(f, "{node} is in ZFS pool {pool}"),
            Use::Open { node, process, .. } => write!(f, "{node} is open by {process}"),
            Use::DefaultRoute { iface, on, gateway } => write!(
                f,
                "{} carries the default route{}",
                on_text(iface, on),
                gateway
                    .as_ref()
                    .map(|g| format!(" (via {g})"))
                    .unwrap_or_default()
            ),
            Use::Address { iface, on, addr } => {
                write!(f, "{} has the host address {addr}", on_text(iface, on))
            }
            Use::Route { iface, on, dest } => {
                write!(f, "{} carries the route to {dest}", on_text(iface, on))
            }
            Use::Corosync { iface, on, addr } => write!(
                f,
                "{} carries corosync link {addr} (taking it breaks the cluster's quorum)",
                on_text(iface, on)
            ),
            Use::Reserved { vmid, pid } => match pid {
                Some(p) => write!(
                    f,
                    "reserved by running VM {vmid} (QEMU pid {p}) in /run/qemu-server/pci-id-reservations"
                ),
                None => write!(
                    f,
                    "reserved for VM {vmid}, which is starting (/run/qemu-server/pci-id-reservations)"
                ),
            },
            Use::State { owner, file } => write!(f, "held by {owner} (pt-hook state {file})"),
        }
    }
}

/// What kind of user it is: decides what may release it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Mounted, swap, stacked, ZFS, or a block node open: never taken, whatever the config.
    Storage,
    Network,
    /// A process with a (non-block) device node open.
    Process,
    /// Another VM or domain (reservation, state).
    Vm,
}

impl Use {
    pub fn kind(&self) -> Kind {
        match self {
            Use::Mounted { .. } | Use::Swap { .. } | Use::Stacked { .. } | Use::Zfs { .. } => {
                Kind::Storage
            }
            Use::Open { process, block, .. } => {
                if *block {
                    Kind::Storage
                } else if matches!(process.scope, Scope::Vm(_) | Scope::Libvirt(_)) {
                    Kind::Vm
                } else {
                    Kind::Process
                }
            }
            Use::DefaultRoute { .. }
            | Use::Address { .. }
            | Use::Route { .. }
            | Use::Corosync { .. } => Kind::Network,
            Use::Reserved { .. } | Use::State { .. } => Kind::Vm,
        }
    }

    pub fn process(&self) -> Option<&Process> {
        match self {
            Use::Open { process, .. } => Some(process),
            _ => None,
        }
    }
}

/// The users of one function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub bdf: Bdf,
    pub uses: Vec<Use>,
}

/// Who asks: its own reservations, state and processes are not users.
#[derive(Debug, Clone, Default)]
pub struct Opts<'a> {
    pub me: Option<&'a VmKey>,
    pub node: &'a str,
    /// Its own processes are users after all: a post-stop (or cleanup) whose VM's QEMU still
    /// has a device open is a QEMU still exiting, and nothing is reset or unbound under it.
    pub own_processes_hold: bool,
}

/// The result of one scan: findings per function (only functions with users) and notes
/// about what could not be checked.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub notes: Vec<String>,
    /// What the scan cost: open device nodes of other processes it looked at (None: no
    /// process scan was needed), and its wall time.
    #[serde(skip)]
    pub nodes_seen: Option<usize>,
    #[serde(skip)]
    pub took: std::time::Duration,
}

impl Report {
    pub fn is_clear(&self) -> bool {
        self.findings.is_empty()
    }

    pub fn uses_of(&self, bdf: &Bdf) -> &[Use] {
        self.findings
            .iter()
            .find(|f| f.bdf == *bdf)
            .map(|f| f.uses.as_slice())
            .unwrap_or(&[])
    }

    /// Every (function, user) pair, in function order.
    pub fn pairs(&self) -> impl Iterator<Item = (&Bdf, &Use)> {
        self.findings
            .iter()
            .flat_map(|f| f.uses.iter().map(move |u| (&f.bdf, u)))
    }

    /// One line per user: "0000:02:00.0: /dev/nvme0n1p1 is mounted at /mnt (ext4)".
    pub fn lines(&self) -> Vec<String> {
        self.pairs().map(|(b, u)| format!("{b}: {u}")).collect()
    }
}

/// The class tables the guard reads, in the order of `Facts::class`: `block`, the classes
/// whose devices can sit below a PCI function and have a device node, `net`.
const CLASSES: [&str; 13] = [
    "block",
    "drm",
    "sound",
    "nvme",
    "nvme-generic",
    "hidraw",
    "input",
    "tty",
    "usbmisc",
    "video4linux",
    "infiniband_verbs",
    "misc",
    "net",
];

/// The long ones (dozens of entries on any host), which `Scanner::host_facts` reads on a
/// thread of their own beside the others.
const LONG_CLASSES: [&str; 3] = ["tty", "misc", "input"];

/// A tty that is never a PCI function's: the virtual consoles (`tty` and a number: the VT
/// layer owns those names), `/dev/tty`, `/dev/console` and `/dev/ptmx`. The tty table holds
/// dozens of them; the links of the rest (serial ports: `ttyS0`, `ttyUSB0`, ...) are read.
fn virtual_tty(name: &str) -> bool {
    matches!(name, "tty" | "console" | "ptmx")
        || name
            .strip_prefix("tty")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Where a class table comes in `Facts::class`.
fn class_rank(c: &str) -> usize {
    CLASSES.iter().position(|n| *n == c).unwrap_or(usize::MAX)
}

/// A class device: its sysfs path (the link target) and node.
#[derive(Debug, Clone)]
struct ClassDev {
    class: &'static str,
    name: String,
    target: String,
}

/// Host facts read once per scan.
#[derive(Default)]
struct Facts {
    class: Vec<ClassDev>,
    /// major:minor → (mount point, fstype); and source path → the same.
    mounts_by_dev: BTreeMap<String, Vec<(String, String)>>,
    mounts_by_source: BTreeMap<String, Vec<(String, String)>>,
    swaps: BTreeSet<String>,
    zfs: BTreeMap<String, String>,
    nodes: Option<Vec<OpenNode>>,
    routes4: Vec<Route4>,
    inet6: Vec<(String, String)>,
    default6: Vec<String>,
    addrs4: Vec<crate::host::Ipv4Addr>,
    corosync: Vec<String>,
}

#[derive(Debug, Clone)]
struct Route4 {
    iface: String,
    dest: std::net::Ipv4Addr,
    prefix: u8,
    gateway: std::net::Ipv4Addr,
}

fn hex4(s: &str) -> Option<std::net::Ipv4Addr> {
    let v = u32::from_str_radix(s, 16).ok()?;
    // /proc/net/route prints the address in host (little-endian) byte order.
    Some(std::net::Ipv4Addr::from(v.swap_bytes()))
}

fn parse_route4(text: &str) -> Vec<Route4> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let mask = hex4(f[7])?;
            Some(Route4 {
                iface: f[0].to_string(),
                dest: hex4(f[1])?,
                gateway: hex4(f[2])?,
                prefix: mask.to_bits().count_ones() as u8,
            })
        })
        .collect()
}

fn hex6(s: &str) -> Option<std::net::Ipv6Addr> {
    (s.len() == 32)
        .then(|| u128::from_str_radix(s, 16).ok())
        .flatten()
        .map(std::net::Ipv6Addr::from)
}

/// Global IPv6 addresses per interface (/proc/net/if_inet6; scope 00 is global).
fn parse_inet6(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 || f[3] != "00" {
                return None;
            }
            let a = hex6(f[0])?;
            let plen = u8::from_str_radix(f[2], 16).ok()?;
            Some((f[5].to_string(), format!("{a}/{plen}")))
        })
        .collect()
}

/// Interfaces with an IPv6 default route (/proc/net/ipv6_route: ::/0, not on lo).
fn parse_default6(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 || f[1] != "00" || hex6(f[0]) != Some(std::net::Ipv6Addr::UNSPECIFIED) {
                return None;
            }
            // RTF_REJECT (0x200) marks the unreachable placeholder the kernel keeps on lo.
            let flags = u32::from_str_radix(f[8], 16).unwrap_or(0);
            (f[9] != "lo" && flags & 0x200 == 0).then(|| f[9].to_string())
        })
        .collect()
}

/// mountinfo's octal escapes (\040 for a space) undone, control characters escaped.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(s.get(i + 1..i + 4).unwrap_or("x"), 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    crate::log::escape_controls(&String::from_utf8_lossy(&out))
}

type MountMaps = (
    BTreeMap<String, Vec<(String, String)>>,
    BTreeMap<String, Vec<(String, String)>>,
);

fn parse_mountinfo(text: &str) -> MountMaps {
    let mut by_dev: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut by_src: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.len() < 5 || f.len() < sep + 3 {
            continue;
        }
        let at = unescape_mount(f[4]);
        let fstype = f[sep + 1].to_string();
        by_dev
            .entry(f[2].to_string())
            .or_default()
            .push((at.clone(), fstype.clone()));
        let src = unescape_mount(f[sep + 2]);
        if src.starts_with("/dev/") {
            by_src.entry(src).or_default().push((at, fstype));
        }
    }
    (by_dev, by_src)
}

fn parse_mounts(text: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut by_src: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 3 && f[0].starts_with("/dev/") {
            by_src
                .entry(unescape_mount(f[0]))
                .or_default()
                .push((unescape_mount(f[1]), f[2].to_string()));
        }
    }
    by_src
}

fn parse_swaps(text: &str) -> BTreeSet<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(unescape_mount)
        .collect()
}

/// `zpool status -P -L`: pool name per vdev device name ("nvme0n1p3" → "rpool").
fn parse_zpool(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut pool = String::new();
    for l in text.lines() {
        let t = l.trim();
        if let Some(p) = t.strip_prefix("pool:") {
            pool = p.trim().to_string();
        } else if let Some(dev) = t
            .split_whitespace()
            .next()
            .filter(|d| d.starts_with("/dev/"))
        {
            let name = dev.rsplit('/').next().unwrap_or(dev).to_string();
            out.insert(name, pool.clone());
        }
    }
    out
}

/// The ring/link addresses of `node` in corosync.conf's nodelist.
pub fn parse_corosync(text: &str, node: &str) -> Vec<String> {
    let mut depth_names: Vec<String> = Vec::new();
    let mut cur: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for raw in text.lines() {
        let l = raw.split('#').next().unwrap_or("").trim();
        if l.is_empty() {
            continue;
        }
        if let Some(name) = l.strip_suffix('{') {
            depth_names.push(name.trim().to_string());
            if depth_names.len() == 2 && depth_names[0] == "nodelist" {
                cur.clear();
            }
            continue;
        }
        if l == "}" {
            if depth_names.len() == 2
                && depth_names[0] == "nodelist"
                && depth_names[1] == "node"
                && cur.get("name").map(String::as_str) == Some(node)
            {
                out.extend(
                    cur.iter()
                        .filter(|(k, _)| k.ends_with("_addr"))
                        .map(|(_, v)| v.clone()),
                );
            }
            depth_names.pop();
            continue;
        }
        if let Some((k, v)) = l.split_once(':') {
            if depth_names.len() == 2 {
                cur.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
    }
    out
}

/// The VM, container or service a process belongs to, from /proc/PID/cgroup.
pub fn scope_of_cgroup(text: &str) -> Scope {
    // cgroup v2 has one "0::/path" line; v1 lists one path per hierarchy.
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .or_else(|| text.lines().find_map(|l| l.splitn(3, ':').nth(2)))
        .unwrap_or("");
    for comp in path.split('/') {
        let ct = comp
            .strip_prefix("lxc.payload.")
            .or_else(|| comp.strip_prefix("lxc.monitor."));
        if let Some(id) = ct.and_then(|c| c.parse().ok()) {
            return Scope::Container(id);
        }
    }
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for w in comps.windows(2) {
        if w[0] == "lxc" {
            if let Ok(id) = w[1].parse() {
                return Scope::Container(id);
            }
        }
        if w[0] == "qemu.slice" {
            if let Some(id) = w[1].strip_suffix(".scope").and_then(|v| v.parse().ok()) {
                return Scope::Vm(id);
            }
        }
        if w[0] == "machine.slice" {
            let un = w[1].replace("\\x2d", "-");
            if let Some(rest) = un
                .strip_prefix("machine-qemu-")
                .and_then(|r| r.strip_suffix(".scope"))
            {
                let name = rest.split_once('-').map_or(rest, |(_, n)| n);
                return Scope::Libvirt(crate::log::escape_controls(name));
            }
        }
    }
    if let Some(unit) = comps
        .iter()
        .rev()
        .find(|c| c.ends_with(".service") && !c.starts_with("user@"))
    {
        if comps.first() == Some(&"system.slice") {
            return Scope::Unit(crate::log::escape_controls(unit));
        }
    }
    Scope::Host
}

fn read_trim(host: &dyn Host, rel: &str) -> Option<String> {
    host.read(rel).ok().map(|s| s.trim().to_string())
}

fn parse_rdev(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Whether a sysfs path lies below the function (the path has it as a whole component).
fn below(target: &str, bdf: &Bdf) -> bool {
    let b = bdf.to_string();
    target.split('/').any(|c| c == b)
}

struct Scanner<'a> {
    host: &'a dyn Host,
    opts: &'a Opts<'a>,
    facts: Facts,
    procs: BTreeMap<u32, Process>,
    /// Each asked function's driver, read once at the start of the scan.
    drivers: BTreeMap<Bdf, Option<String>>,
    memo: BTreeMap<Bdf, OwnNodes>,
    /// Each block device the scan looks at, read once per scan (the query and the findings
    /// both walk the same stacks).
    blocks: BTreeMap<String, BlockFacts>,
    /// Each IOMMU group's /dev/vfio/N numbers, read once per scan.
    group_devs: BTreeMap<u32, Option<(u32, u32)>>,
    /// Proxmox's PCI reservations, read once (None: not read yet).
    reservations: Option<Vec<crate::parse::pve::mapping::Reservation>>,
    others: Option<state::Others>,
}

/// A block device as `Scanner::block` read it.
#[derive(Clone)]
struct BlockFacts {
    /// `dev` ("259:0"; empty when unreadable).
    dev: String,
    /// Its device-mapper name, if it is one.
    dm: Option<String>,
    /// What is stacked on it (`Scanner::block_holders`).
    holders: Vec<String>,
}

/// What `Scanner::own_nodes` found for a function.
struct OwnNodes {
    blocks: Vec<String>,
    chars: Vec<(String, (u32, u32))>,
    group: Option<u32>,
}

impl<'a> Scanner<'a> {
    /// `drivers`: each asked function's driver, read once by `scan_with`.
    fn new(
        host: &'a dyn Host,
        opts: &'a Opts<'a>,
        notes: &mut Vec<String>,
        drivers: BTreeMap<Bdf, Option<String>>,
        classes: Option<Vec<ClassDev>>,
    ) -> Scanner<'a> {
        let host_driver = any_host_driver(&drivers);
        let mut sc = Scanner {
            host,
            opts,
            facts: Facts::default(),
            procs: BTreeMap::new(),
            drivers,
            memo: BTreeMap::new(),
            blocks: BTreeMap::new(),
            group_devs: BTreeMap::new(),
            reservations: None,
            others: None,
        };
        if host_driver {
            sc.facts = Scanner::host_facts(host, opts, notes, classes);
        }
        sc
    }

    /// The entries of class tables `classes`, each with the device it belongs to.
    fn class_devs(host: &dyn Host, classes: &[&'static str]) -> Vec<ClassDev> {
        let mut class = Vec::new();
        for &c in classes {
            let dir = format!("sys/class/{c}");
            let keep = |n: &str| !(c == "tty" && virtual_tty(n));
            for (name, link) in host.list_links_where(&dir, &keep).unwrap_or_default() {
                if !paths::safe_name(&name) {
                    continue;
                }
                // sysfs makes class entries links into the device tree; a class directory
                // with a `device` link (older layouts, hand-made hosts) points at its parent.
                let t = link
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
                    .or_else(|_| host.link_target(&format!("{dir}/{name}/device")))
                    .or_else(|e| {
                        // A virtual device (bridge, dm) as a plain directory: below nothing.
                        host.list(&format!("{dir}/{name}"))
                            .map(|_| String::new())
                            .map_err(|_| e)
                    });
                if let Ok(t) = t {
                    class.push(ClassDev {
                        class: c,
                        name,
                        target: t,
                    });
                }
            }
        }
        class
    }

    /// The class tables, mounts, swaps, ZFS pools, routes and addresses, corosync's links.
    /// The class tables (hundreds of links on a desktop-class host: tty alone has dozens) are
    /// read on two threads beside the rest.
    /// `read`: the class tables, already read (`PreWalk`).
    fn host_facts(
        host: &dyn Host,
        opts: &Opts,
        notes: &mut Vec<String>,
        read: Option<Vec<ClassDev>>,
    ) -> Facts {
        if let Some(class) = read {
            return Facts {
                class,
                ..Scanner::host_files(host, opts, notes)
            };
        }
        let (mut class, rest) = std::thread::scope(|s| {
            let (long, short): (Vec<&'static str>, Vec<&'static str>) =
                CLASSES.iter().partition(|c| LONG_CLASSES.contains(c));
            let big = s.spawn(move || Scanner::class_devs(host, &long));
            let mut class = Scanner::class_devs(host, &short);
            let rest = Scanner::host_files(host, opts, notes);
            class.extend(big.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            (class, rest)
        });
        // One table in the order of `CLASSES`.
        class.sort_by_key(|c| class_rank(c.class));
        Facts { class, ..rest }
    }

    /// Mounts, swaps, ZFS pools, routes and addresses, corosync's links (no class tables).
    fn host_files(host: &dyn Host, opts: &Opts, notes: &mut Vec<String>) -> Facts {
        let (mounts_by_dev, mounts_by_source) = match host.read("proc/self/mountinfo") {
            Ok(t) => parse_mountinfo(&t),
            // Without mountinfo (a hand-made host), /proc/mounts still names the sources.
            Err(_) => (
                BTreeMap::new(),
                host.read("proc/mounts")
                    .map(|t| parse_mounts(&t))
                    .unwrap_or_default(),
            ),
        };
        let swaps = host
            .read("proc/swaps")
            .map(|t| parse_swaps(&t))
            .unwrap_or_default();
        let mut zfs = BTreeMap::new();
        if host.exists("sys/module/zfs") {
            match host.run(
                "zpool",
                &["status", "-P", "-L"],
                std::time::Duration::from_secs(5),
            ) {
                Ok(o) if o.success() => zfs = parse_zpool(&o.stdout),
                Ok(o) => notes.push(format!(
                    "ZFS is loaded but `zpool status -P -L` failed (exit {:?}): ZFS pool members could not be checked",
                    o.code
                )),
                Err(e) => notes.push(format!(
                    "ZFS is loaded but `zpool status -P -L` could not run ({}): ZFS pool members could not be checked",
                    crate::host::errno_text(&e)
                )),
            }
        }
        let routes4 = host
            .read("proc/net/route")
            .map(|t| parse_route4(&t))
            .unwrap_or_default();
        let inet6 = host
            .read("proc/net/if_inet6")
            .map(|t| parse_inet6(&t))
            .unwrap_or_default();
        let default6 = host
            .read("proc/net/ipv6_route")
            .map(|t| parse_default6(&t))
            .unwrap_or_default();
        let addrs4 = host.ipv4_addrs().unwrap_or_default();
        let corosync = host
            .read("etc/pve/corosync.conf")
            .map(|t| parse_corosync(&t, opts.node))
            .unwrap_or_default();
        Facts {
            class: Vec::new(),
            mounts_by_dev,
            mounts_by_source,
            swaps,
            zfs,
            nodes: None,
            routes4,
            inet6,
            default6,
            addrs4,
            corosync,
        }
    }

    fn driver(&self, bdf: &Bdf) -> Option<String> {
        self.drivers.get(bdf).cloned().flatten()
    }

    /// The function's block devices and character nodes, found once per scan.
    fn own_nodes(&mut self, bdf: &Bdf) -> &OwnNodes {
        if !self.memo.contains_key(bdf) {
            let n = OwnNodes {
                blocks: self.block_devices(bdf),
                chars: self.char_nodes(bdf),
                group: crate::sysfs::device::iommu_group_of(self.host, bdf),
            };
            self.memo.insert(*bdf, n);
        }
        &self.memo[bdf]
    }

    fn nodes(&mut self) -> &[OpenNode] {
        self.facts.nodes.as_deref().unwrap_or(&[])
    }

    /// A block device's numbers, dm name and holders, read once per scan.
    fn block(&mut self, name: &str) -> BlockFacts {
        if let Some(b) = self.blocks.get(name) {
            return b.clone();
        }
        let b = BlockFacts {
            dev: read_trim(self.host, &format!("sys/class/block/{name}/dev")).unwrap_or_default(),
            dm: read_trim(self.host, &format!("sys/class/block/{name}/dm/name")),
            holders: self.block_holders(name),
        };
        self.blocks.insert(name.to_string(), b.clone());
        b
    }

    /// An IOMMU group's /dev/vfio/N numbers, read once per scan.
    fn group_dev(&mut self, g: u32) -> Option<(u32, u32)> {
        let host = self.host;
        *self.group_devs.entry(g).or_insert_with(|| {
            read_trim(host, &format!("sys/class/vfio/{g}/dev")).and_then(|d| parse_rdev(&d))
        })
    }

    /// The holders of a block device, from both sides (`holders/`, and `slaves/` of others).
    /// Only a software device (dm, md, bcache, loop, a zvol: under devices/virtual, or a plain
    /// directory on a hand-made host) stacks on others: the disks and partitions below a PCI
    /// function (most of the table) are not asked for their `slaves/`.
    fn block_holders(&self, name: &str) -> Vec<String> {
        let mut holders = self
            .host
            .list(&format!("sys/class/block/{name}/holders"))
            .unwrap_or_default();
        for c in self
            .facts
            .class
            .iter()
            .filter(|c| c.class == "block" && !c.target.contains("devices/pci"))
        {
            if !holders.contains(&c.name)
                && self
                    .host
                    .exists(&format!("sys/class/block/{}/slaves/{name}", c.name))
            {
                holders.push(c.name.clone());
            }
        }
        holders.retain(|h| paths::safe_name(h));
        holders
    }

    /// One walk of /proc/*/fd for every node any of `bdfs` has (block devices and what is
    /// stacked on them, character nodes, the vfio group): skipped when there is none.
    /// `walked`: an `all` walk made beside the class tables (None: walk now for the query).
    fn scan_processes(
        &mut self,
        bdfs: &[Bdf],
        walked: impl FnOnce() -> Option<std::io::Result<Vec<OpenNode>>>,
    ) {
        let mut q = crate::host::NodeQuery::default();
        for bdf in bdfs {
            let own = self.own_nodes(bdf);
            let (blocks, chars, group) = (own.blocks.clone(), own.chars.clone(), own.group);
            let mut todo: Vec<(String, u32)> = blocks.into_iter().map(|n| (n, 0)).collect();
            while let Some((name, depth)) = todo.pop() {
                if depth > 4 || !paths::safe_name(&name) {
                    continue;
                }
                let b = self.block(&name);
                if let Some(r) = parse_rdev(&b.dev) {
                    q.rdevs.insert(r);
                }
                q.paths.insert(format!("/dev/{name}"));
                todo.extend(b.holders.into_iter().map(|h| (h, depth + 1)));
            }
            for (node, rdev) in chars {
                q.paths.insert(node);
                q.rdevs.insert(rdev);
            }
            if let Some(g) = group {
                q.paths.insert(format!("/dev/vfio/{g}"));
                if let Some(r) = self.group_dev(g) {
                    q.rdevs.insert(r);
                }
                // Device fds name no device: wanted whenever a function may have one.
                if self.driver(bdf).as_deref() == Some(crate::engine::plan::VFIO) {
                    q.vfio_fds = true;
                }
            }
        }
        self.facts.nodes = Some(if q.is_empty() {
            Vec::new()
        } else if let Some(all) = walked() {
            all.unwrap_or_default()
                .into_iter()
                .filter(|n| q.matches(n))
                .collect()
        } else {
            self.host.open_nodes(&q).unwrap_or_default()
        });
    }

    fn process(&mut self, pid: u32) -> Process {
        if let Some(p) = self.procs.get(&pid) {
            return p.clone();
        }
        let comm = read_trim(self.host, &format!("proc/{pid}/comm"))
            .map(|c| crate::log::escape_controls(&c))
            .unwrap_or_else(|| "?".into());
        let scope = self
            .host
            .read(&format!("proc/{pid}/cgroup"))
            .map(|t| scope_of_cgroup(&t))
            .unwrap_or(Scope::Host);
        let p = Process { pid, comm, scope };
        self.procs.insert(pid, p.clone());
        p
    }

    fn own_process(&self, p: &Process) -> bool {
        if self.opts.own_processes_hold {
            return false;
        }
        match (self.opts.me, &p.scope) {
            (Some(VmKey::Pve(v)), Scope::Vm(s)) => v == s,
            (Some(VmKey::Libvirt(d)), Scope::Libvirt(n)) => d.name == *n && !n.is_empty(),
            _ => false,
        }
    }

    /// Block devices of the function: names whose sysfs path is below it, NVMe multipath
    /// heads whose paths are, and partitions of those.
    fn block_devices(&self, bdf: &Bdf) -> Vec<String> {
        let blocks: Vec<&ClassDev> = self
            .facts
            .class
            .iter()
            .filter(|c| c.class == "block")
            .collect();
        let mut names: BTreeSet<String> = blocks
            .iter()
            .filter(|c| below(&c.target, bdf))
            .map(|c| c.name.clone())
            .collect();
        // With native NVMe multipath the namespace (nvme0n1) sits under the subsystem; its
        // paths (nvme0c0n1, hidden, no /dev node) sit under the controller.
        for c in &blocks {
            if names.contains(&c.name) || !c.target.contains("nvme-subsys") {
                continue;
            }
            let paths_dir = format!("sys/class/block/{}/multipath", c.name);
            let on_us = self
                .host
                .list(&paths_dir)
                .unwrap_or_default()
                .iter()
                .any(|p| names.contains(p));
            if on_us {
                names.insert(c.name.clone());
            }
        }
        let heads: Vec<String> = names.iter().cloned().collect();
        for c in &blocks {
            if heads.iter().any(|h| c.target.split('/').any(|x| x == h)) {
                names.insert(c.name.clone());
            }
        }
        names.into_iter().collect()
    }

    fn block_label(&mut self, name: &str) -> String {
        match self.block(name).dm {
            Some(dm) if !dm.is_empty() => format!("{name} ({})", crate::log::escape_controls(&dm)),
            _ => name.to_string(),
        }
    }

    /// Users of one block device and (recursively) of what is stacked on it.
    fn block_uses(&mut self, name: &str, via: Option<String>, depth: u32, out: &mut Vec<Use>) {
        if depth > 4 || !paths::safe_name(name) {
            return;
        }
        let node = format!("/dev/{name}");
        let BlockFacts { dev, dm, holders } = self.block(name);
        let mut mounts: Vec<(String, String)> = self
            .facts
            .mounts_by_dev
            .get(&dev)
            .cloned()
            .unwrap_or_default();
        let mut sources = vec![node.clone()];
        if let Some(d) = &dm {
            sources.push(format!("/dev/mapper/{d}"));
        }
        for s in &sources {
            for m in self
                .facts
                .mounts_by_source
                .get(s)
                .cloned()
                .unwrap_or_default()
            {
                if !mounts.contains(&m) {
                    mounts.push(m);
                }
            }
        }
        // Uses of a stacked device are shown on the function's own node, through it.
        let (top, via_label) = match &via {
            Some(v) => (v.clone(), Some(self.block_label(name))),
            None => (node.clone(), None),
        };
        for (at, fstype) in mounts {
            out.push(Use::Mounted {
                node: top.clone(),
                via: via_label.clone(),
                at,
                fstype,
            });
        }
        if sources.iter().any(|s| self.facts.swaps.contains(s)) {
            out.push(Use::Swap {
                node: top.clone(),
                via: via_label.clone(),
            });
        }
        if let Some(pool) = self.facts.zfs.get(name) {
            out.push(Use::Zfs {
                node: top.clone(),
                pool: crate::log::escape_controls(pool),
            });
        }
        if let Some(rdev) = parse_rdev(&dev) {
            let holders: Vec<u32> = self
                .nodes()
                .iter()
                .filter(|n| (n.block && n.rdev == Some(rdev)) || n.path == node)
                .map(|n| n.pid)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            for pid in holders {
                let process = self.process(pid);
                out.push(Use::Open {
                    node: top.clone(),
                    process,
                    block: true,
                });
            }
        }
        for h in holders {
            let label = self.block_label(&h);
            out.push(Use::Stacked {
                node: top.clone(),
                holder: label,
            });
            let v = via.clone().unwrap_or_else(|| node.clone());
            self.block_uses(&h, Some(v), depth + 1, out);
        }
    }

    /// Character nodes of the function: (node path, major:minor).
    fn char_nodes(&self, bdf: &Bdf) -> Vec<(String, (u32, u32))> {
        let mut v = Vec::new();
        for c in self
            .facts
            .class
            .iter()
            .filter(|c| c.class != "block" && c.class != "net" && below(&c.target, bdf))
        {
            let Some(rdev) = read_trim(self.host, &format!("sys/class/{}/{}/dev", c.class, c.name))
                .and_then(|d| parse_rdev(&d))
            else {
                continue;
            };
            let node = match c.class {
                "drm" => format!("/dev/dri/{}", c.name),
                "sound" => format!("/dev/snd/{}", c.name),
                "input" => format!("/dev/input/{}", c.name),
                _ => format!("/dev/{}", c.name),
            };
            v.push((node, rdev));
        }
        // vfio cdev (iommufd): /dev/vfio/devices/vfioN.
        let vdir = format!("{}/vfio-dev", paths::dev_dir(bdf));
        for n in self.host.list(&vdir).unwrap_or_default() {
            if !paths::safe_name(&n) {
                continue;
            }
            if let Some(rdev) =
                read_trim(self.host, &format!("{vdir}/{n}/dev")).and_then(|d| parse_rdev(&d))
            {
                v.push((format!("/dev/vfio/devices/{n}"), rdev));
            }
        }
        // NVIDIA's proprietary driver: /dev/nvidiaN by the minor it reports.
        let info = format!("proc/driver/nvidia/gpus/{bdf}/information");
        if let Ok(t) = self.host.read(&info) {
            if let Some(minor) = t.lines().find_map(|l| {
                l.strip_prefix("Device Minor:")
                    .and_then(|m| m.trim().parse::<u32>().ok())
            }) {
                v.push((format!("/dev/nvidia{minor}"), (195, minor)));
                let gpus = self
                    .host
                    .list("proc/driver/nvidia/gpus")
                    .unwrap_or_default();
                if gpus.len() == 1 {
                    // The only NVIDIA GPU: the driver-wide nodes are its too.
                    v.push(("/dev/nvidiactl".into(), (195, 255)));
                    v.push(("/dev/nvidia-modeset".into(), (195, 254)));
                }
            }
        }
        v
    }

    fn node_uses(&mut self, bdf: &Bdf, out: &mut Vec<Use>) {
        let own = self.own_nodes(bdf);
        let (chars, group) = (own.chars.clone(), own.group);
        let group_dev = group.and_then(|g| self.group_dev(g));
        let on_vfio = self.driver(bdf).as_deref() == Some(crate::engine::plan::VFIO);
        let b = bdf.to_string();
        let mut hits: Vec<(String, u32)> = Vec::new();
        let mut unattributed: BTreeSet<u32> = BTreeSet::new();
        let mut group_holders: BTreeSet<u32> = BTreeSet::new();
        for n in self.nodes().to_vec() {
            if n.block {
                continue;
            }
            if let Some((node, _)) = chars
                .iter()
                .find(|(p, r)| n.rdev == Some(*r) || n.path == *p)
            {
                hits.push((node.clone(), n.pid));
                continue;
            }
            if let Some(g) = group {
                let gpath = format!("/dev/vfio/{g}");
                let by_dev = group_dev.is_some() && n.rdev == group_dev;
                // Matched by its link text (no stat was needed), or by number (another path in a
                // container).
                let by_path = n.path == gpath;
                if by_dev || by_path {
                    hits.push((gpath, n.pid));
                    group_holders.insert(n.pid);
                    continue;
                }
            }
            if n.path == crate::host::VFIO_DEVICE_FD {
                match &n.vfio_syspath {
                    Some(p) if p.rsplit('/').next() == Some(b.as_str()) => {
                        hits.push(("a vfio device fd".into(), n.pid));
                    }
                    Some(_) => {}
                    None => {
                        unattributed.insert(n.pid);
                    }
                }
            }
        }
        // A vfio device fd the kernel does not attribute (no fdinfo syspath, older kernels)
        // belongs to one of the groups its process has open; a process with no group open
        // could hold any vfio device: it counts as holding this one too.
        if on_vfio {
            for pid in unattributed {
                if group_holders.contains(&pid) {
                    continue;
                }
                let holds_other_group = self.nodes().iter().any(|n| {
                    n.pid == pid && n.path.starts_with("/dev/vfio/") && n.path != "/dev/vfio/vfio"
                });
                if !holds_other_group {
                    hits.push((
                        "a vfio device fd (the kernel does not say which device)".into(),
                        pid,
                    ));
                }
            }
        }
        let mut seen = BTreeSet::new();
        for (node, pid) in hits {
            if !seen.insert((node.clone(), pid)) {
                continue;
            }
            let process = self.process(pid);
            if self.own_process(&process) {
                continue;
            }
            out.push(Use::Open {
                node,
                process,
                block: false,
            });
        }
    }

    fn net_uses(&mut self, bdf: &Bdf, out: &mut Vec<Use>) {
        let ifaces: Vec<String> = self
            .facts
            .class
            .iter()
            .filter(|c| c.class == "net" && below(&c.target, bdf))
            .map(|c| c.name.clone())
            .collect();
        for iface in ifaces {
            // The interface itself, then every upper device (bridge, bond, VLAN, macvlan).
            let mut todo: Vec<(String, Option<String>)> = vec![(iface.clone(), None)];
            let mut seen = BTreeSet::new();
            while let Some((name, on)) = todo.pop() {
                if !seen.insert(name.clone()) || seen.len() > 16 {
                    continue;
                }
                self.iface_uses(&iface, &name, &on, out);
                for e in self
                    .host
                    .list(&format!("sys/class/net/{name}"))
                    .unwrap_or_default()
                {
                    if let Some(up) = e.strip_prefix("upper_") {
                        if paths::safe_name(up) {
                            todo.push((up.to_string(), Some(up.to_string())));
                        }
                    }
                }
                if let Ok(m) = self.host.link_name(&format!("sys/class/net/{name}/master")) {
                    if paths::safe_name(&m) {
                        todo.push((m.clone(), Some(m)));
                    }
                }
                // A bridge lists its ports under brif/.
                for c in self.facts.class.iter().filter(|c| c.class == "net") {
                    if self
                        .host
                        .exists(&format!("sys/class/net/{}/brif/{name}", c.name))
                    {
                        todo.push((c.name.clone(), Some(c.name.clone())));
                    }
                }
            }
        }
    }

    fn iface_uses(&self, iface: &str, name: &str, on: &Option<String>, out: &mut Vec<Use>) {
        let f = &self.facts;
        let mut any_addr = false;
        let default4 = f
            .routes4
            .iter()
            .find(|r| r.iface == name && r.prefix == 0 && r.dest.is_unspecified());
        if let Some(r) = default4 {
            out.push(Use::DefaultRoute {
                iface: iface.to_string(),
                on: on.clone(),
                gateway: (!r.gateway.is_unspecified()).then(|| r.gateway.to_string()),
            });
        }
        if f.default6.iter().any(|i| i == name) {
            out.push(Use::DefaultRoute {
                iface: iface.to_string(),
                on: on.clone(),
                gateway: Some("IPv6".into()),
            });
        }
        for a in f.addrs4.iter().filter(|a| a.iface == name) {
            any_addr = true;
            out.push(Use::Address {
                iface: iface.to_string(),
                on: on.clone(),
                addr: format!("{}/{}", a.addr, a.prefix),
            });
        }
        for (i, a) in &f.inet6 {
            if i == name {
                any_addr = true;
                out.push(Use::Address {
                    iface: iface.to_string(),
                    on: on.clone(),
                    addr: a.clone(),
                });
            }
        }
        let subnets: Vec<&Route4> = f
            .routes4
            .iter()
            .filter(|r| r.iface == name && r.prefix > 0)
            .collect();
        if !any_addr && default4.is_none() {
            // Without getifaddrs (a --root host) the connected routes stand for addresses.
            for r in &subnets {
                out.push(Use::Route {
                    iface: iface.to_string(),
                    on: on.clone(),
                    dest: format!("{}/{}", r.dest, r.prefix),
                });
            }
        }
        for link in &f.corosync {
            let Ok(ip) = link.parse::<std::net::IpAddr>() else {
                continue;
            };
            let here = match ip {
                std::net::IpAddr::V4(v4) => {
                    f.addrs4.iter().any(|a| a.iface == name && a.addr == v4)
                        || subnets.iter().any(|r| {
                            let mask = if r.prefix == 0 {
                                0
                            } else {
                                u32::MAX << (32 - r.prefix as u32)
                            };
                            v4.to_bits() & mask == r.dest.to_bits() & mask
                        })
                }
                std::net::IpAddr::V6(v6) => f.inet6.iter().any(|(i, a)| {
                    i == name && a.split('/').next() == Some(v6.to_string().as_str())
                }),
            };
            if here {
                out.push(Use::Corosync {
                    iface: iface.to_string(),
                    on: on.clone(),
                    addr: link.clone(),
                });
            }
        }
    }

    fn vm_uses(&mut self, bdf: &Bdf, out: &mut Vec<Use>) {
        let me_vmid = match self.opts.me {
            Some(VmKey::Pve(v)) => Some(*v),
            _ => None,
        };
        let host = self.host;
        let reservations = self.reservations.get_or_insert_with(|| {
            host.read(paths::RESERVATIONS)
                .map(|t| parse_reservations(&t))
                .unwrap_or_default()
        });
        if !reservations.is_empty() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            for r in reservations.iter() {
                if r.bdf != *bdf || Some(r.vmid) == me_vmid {
                    continue;
                }
                match r.holder {
                    ReservationHolder::Pid(p) if host.exists(&format!("proc/{p}")) => {
                        out.push(Use::Reserved {
                            vmid: r.vmid,
                            pid: Some(p),
                        })
                    }
                    ReservationHolder::Time(t) if t > now => out.push(Use::Reserved {
                        vmid: r.vmid,
                        pid: None,
                    }),
                    _ => {}
                }
            }
        }
        let probe = VmKey::Pve(u32::MAX);
        let except = self.opts.me.unwrap_or(&probe);
        let others = self
            .others
            .get_or_insert_with(|| state::Others::load(self.host, except));
        if let Some(owner) = others.owner_of(bdf) {
            out.push(Use::State {
                file: self.host.display(&owner.state_file()),
                owner: owner.to_string(),
            });
        }
    }
}

/// Whether a function has a driver of the host's (not vfio-pci, not none). Block devices,
/// character nodes of other classes and network interfaces below a function are made by
/// its host driver: without one (vfio-pci's own nodes are found without the class tables)
/// the class tables and the host's storage and network facts are not needed. A post-stop's
/// scan (every function on vfio-pci) reads only what can hold such a function: the open
/// fds, the reservations, the state files.
fn any_host_driver(drivers: &BTreeMap<Bdf, Option<String>>) -> bool {
    drivers
        .values()
        .any(|d| d.as_deref().is_some_and(|d| d != crate::engine::plan::VFIO))
}

/// Every process's fds that can be a device node of any function (`NodeQuery::all`).
fn walk_all(host: &dyn Host) -> io::Result<Vec<OpenNode>> {
    host.open_nodes(&crate::host::NodeQuery {
        all: true,
        ..Default::default()
    })
}

/// Who uses each of `bdfs` (functions without users are left out).
pub fn scan(host: &dyn Host, bdfs: &[Bdf], opts: &Opts) -> Report {
    scan_with(host, bdfs, opts, None)
}

/// A walk of every process's fds (`NodeQuery::all`) started when a hook phase (or `pt-hook
/// reset`) starts, before its config, state and devices are read: the walk is half of the
/// guard's time and needs none of them. In a pre-start and a reset (functions on host
/// drivers) the class tables are read by the same thread first, for the same reason. The phase's first scan takes them (`take`), filters the walk with
/// its own query and reads everything else then; a later scan (a wait for a holder to let go,
/// a rescan with companions) reads again. A process that opens a node between the walk and
/// the step after the scan is missed, as one that opens it between any scan and that step is;
/// a class device that appears in between is missed as well (the same window).
#[derive(Default)]
pub struct PreWalk {
    walk: std::sync::Mutex<Option<std::thread::JoinHandle<Walked>>>,
    /// pre-start: the class tables, read first by the walk's thread (the functions are on
    /// host drivers then, so the first scan needs them, before the walk).
    classes: std::sync::Mutex<Option<std::sync::mpsc::Receiver<Vec<ClassDev>>>>,
    /// When the taken walk ran (for the timing breakdown).
    ran: std::sync::Mutex<Option<(std::time::Instant, std::time::Instant)>>,
}

type Walked = (
    io::Result<Vec<OpenNode>>,
    std::time::Instant,
    std::time::Instant,
);

impl PreWalk {
    pub fn none() -> PreWalk {
        PreWalk::default()
    }

    /// `with_classes`: read the class tables too (a pre-start).
    pub fn start(host: std::sync::Arc<dyn Host>, with_classes: bool) -> PreWalk {
        // One thread: the class tables first (the scan needs them before the walk), sent as
        // soon as they are read, then the walk.
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::Builder::new()
            .name("guard-walk".into())
            .spawn(move || {
                if with_classes {
                    let _ = tx.send(Scanner::class_devs(&*host, &CLASSES));
                }
                drop(tx);
                let t = std::time::Instant::now();
                let r = walk_all(&*host);
                (r, t, std::time::Instant::now())
            })
            .ok();
        let classes = (with_classes && h.is_some()).then_some(rx);
        PreWalk {
            walk: std::sync::Mutex::new(h),
            classes: std::sync::Mutex::new(classes),
            ran: std::sync::Mutex::new(None),
        }
    }

    /// The class tables read before the walk, once.
    fn take_classes(&self) -> Option<Vec<ClassDev>> {
        let rx = self.classes.lock().ok()?.take()?;
        rx.recv().ok()
    }

    /// The walk, once (None: none was started, or it was taken).
    pub fn take(&self) -> Option<io::Result<Vec<OpenNode>>> {
        let h = self.walk.lock().ok()?.take()?;
        let (r, t0, t1) = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        if let Ok(mut g) = self.ran.lock() {
            *g = Some((t0, t1));
        }
        Some(r)
    }

    /// When the walk a scan took ran, once.
    pub fn ran(&self) -> Option<(std::time::Instant, std::time::Instant)> {
        self.ran.lock().ok()?.take()
    }

    /// Whether a walk is there to take.
    fn pending(&self) -> bool {
        self.walk.lock().is_ok_and(|g| g.is_some())
    }

    /// Leaves a walk the first scan did not need (nothing to look for) to end on its own: a
    /// later scan walks again.
    fn discard(&self) {
        if let Ok(mut g) = self.walk.lock() {
            g.take();
        }
        if let Ok(mut g) = self.classes.lock() {
            g.take();
        }
    }
}

/// `scan`, with `walked`: the phase's early walk of every process's fds (`PreWalk`), used
/// instead of walking /proc when it is still there to take, with the class tables it read
/// beside (a pre-start). The walk is taken (joined) only once the query is built from the
/// class tables, so the rest is read while it finishes.
pub fn scan_with(host: &dyn Host, bdfs: &[Bdf], opts: &Opts, walked: Option<&PreWalk>) -> Report {
    let start = std::time::Instant::now();
    let mut notes = Vec::new();
    let drivers: BTreeMap<Bdf, Option<String>> = bdfs
        .iter()
        .map(|b| (*b, crate::sysfs::device::driver_of(host, b)))
        .collect();
    // With a host driver on some function the class tables and host facts are read first,
    // and the walk of /proc (the other half of the scan's time) runs beside them, taking every
    // fd that can be a device node; the query built from the tables then filters it.
    let walked = walked.filter(|w| w.pending());
    let host_driver = any_host_driver(&drivers);
    let walk_beside = walked.is_none() && host_driver;
    let mut sc = std::thread::scope(|s| {
        let walk = walk_beside.then(|| s.spawn(|| walk_all(host)));
        let classes = host_driver
            .then(|| walked.and_then(PreWalk::take_classes))
            .flatten();
        let mut sc = Scanner::new(host, opts, &mut notes, drivers, classes);
        sc.scan_processes(bdfs, || {
            walked
                .and_then(PreWalk::take)
                .or_else(|| walk.map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p))))
        });
        sc
    });
    if let Some(w) = walked {
        w.discard();
    }
    let mut findings = Vec::new();
    let mut seen = BTreeSet::new();
    for bdf in bdfs {
        if !seen.insert(*bdf) {
            continue;
        }
        let mut uses = Vec::new();
        for name in sc.own_nodes(bdf).blocks.clone() {
            let mut u = Vec::new();
            sc.block_uses(&name, None, 0, &mut u);
            uses.extend(u);
        }
        sc.node_uses(bdf, &mut uses);
        sc.net_uses(bdf, &mut uses);
        sc.vm_uses(bdf, &mut uses);
        let mut dedup = Vec::new();
        for u in uses {
            if !dedup.contains(&u) {
                dedup.push(u);
            }
        }
        if !dedup.is_empty() {
            findings.push(Finding {
                bdf: *bdf,
                uses: dedup,
            });
        }
    }
    Report {
        findings,
        notes,
        nodes_seen: sc.facts.nodes.as_ref().map(Vec::len),
        took: start.elapsed(),
    }
}

/// Polls `scan` until nothing holds `bdfs` or `timeout` passes; returns the last report.
/// The first scan uses `walked` (see `scan_with`).
pub fn wait_free(
    host: &dyn Host,
    bdfs: &[Bdf],
    opts: &Opts,
    timeout: std::time::Duration,
    walked: Option<&PreWalk>,
) -> Report {
    let mut last = Report::default();
    let got = crate::host::poll_until(timeout, || {
        last = scan_with(host, bdfs, opts, walked);
        last.is_clear().then_some(())
    });
    if got.is_some() {
        Report::default()
    } else {
        last
    }
}

/// Polls until no process holds a device node of `bdfs` (other users are not waited for);
/// returns what still holds them at the deadline, one line each.
pub fn wait_unheld(host: &dyn Host, bdfs: &[Bdf], timeout: std::time::Duration) -> Vec<String> {
    let opts = Opts::default();
    let mut left = Vec::new();
    let got = crate::host::poll_until(timeout, || {
        let r = scan(host, bdfs, &opts);
        left = r
            .pairs()
            .filter(|(_, u)| matches!(u, Use::Open { .. }))
            .map(|(b, u)| format!("{b}: {u}"))
            .collect();
        left.is_empty().then_some(())
    });
    if got.is_some() {
        Vec::new()
    } else {
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_long_class_tables_are_class_tables() {
        assert!(LONG_CLASSES.iter().all(|c| CLASSES.contains(c)));
        let ranks: Vec<usize> = CLASSES.iter().map(|c| class_rank(c)).collect();
        assert_eq!(ranks, (0..CLASSES.len()).collect::<Vec<_>>());
    }

    #[test]
    fn only_virtual_ttys_are_skipped() {
        for n in ["tty", "tty0", "tty1", "tty63", "console", "ptmx"] {
            assert!(virtual_tty(n), "{n}");
        }
        for n in [
            "ttyS0", "ttyUSB0", "ttyACM1", "ttyAMA0", "ttyx", "tty1a", "hvc0",
        ] {
            assert!(!virtual_tty(n), "{n}");
        }
    }

    #[test]
    fn cgroup_scopes() {
        assert_eq!(
            scope_of_cgroup("0::/lxc/105/ns/system.slice/jellyfin.service\n"),
            Scope::Container(105)
        );
        assert_eq!(
            scope_of_cgroup("0::/lxc.payload.107/init.scope\n"),
            Scope::Container(107)
        );
        assert_eq!(
            scope_of_cgroup("0::/qemu.slice/101.scope\n"),
            Scope::Vm(101)
        );
        assert_eq!(
            scope_of_cgroup("0::/machine.slice/machine-qemu\\x2d3\\x2dwin\\x2d11.scope\n"),
            Scope::Libvirt("win-11".into())
        );
        assert_eq!(
            scope_of_cgroup("0::/system.slice/display-manager.service\n"),
            Scope::Unit("display-manager.service".into())
        );
        assert_eq!(
            scope_of_cgroup("0::/user.slice/user-0.slice/session-3.scope\n"),
            Scope::Host
        );
        assert_eq!(
            scope_of_cgroup("12:pids:/lxc/200\n11:cpu:/lxc/200\n"),
            Scope::Container(200)
        );
    }

    #[test]
    fn mountinfo_by_device_and_source() {
        let t = "22 1 259:1 / / rw,relatime - ext4 /dev/nvme0n1p1 rw\n\
                 30 22 259:1 /srv /mnt/bind\\040dir rw - ext4 /dev/nvme0n1p1 rw\n\
                 40 22 0:45 / /data rw - btrfs /dev/sdb1 rw\n";
        let (d, s) = parse_mountinfo(t);
        assert_eq!(
            d["259:1"],
            vec![
                ("/".to_string(), "ext4".to_string()),
                ("/mnt/bind dir".to_string(), "ext4".to_string())
            ]
        );
        assert_eq!(s["/dev/sdb1"], vec![("/data".into(), "btrfs".into())]);
    }

    #[test]
    fn routes_and_addresses() {
        let r = parse_route4(
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             vmbr0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
             vmbr0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n",
        );
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].gateway.to_string(), "192.168.2.1");
        assert_eq!(
            (r[1].dest.to_string(), r[1].prefix),
            ("192.168.2.0".into(), 24)
        );
        let six = parse_inet6(
            "fe800000000000000000000000000001 02 40 20 80 eth0\n\
             20010db8000000000000000000000001 02 40 00 80 eth0\n",
        );
        assert_eq!(six, vec![("eth0".into(), "2001:db8::1/64".into())]);
        let d6 = parse_default6(
            "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n\
             00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n",
        );
        assert_eq!(d6, vec!["eth0".to_string()]);
    }

    #[test]
    fn corosync_links_of_this_node() {
        let t = "totem {\n  version: 2\n}\nnodelist {\n  node {\n    name: pve1\n    nodeid: 1\n    ring0_addr: 10.0.0.1\n    ring1_addr: 10.1.0.1\n  }\n  node {\n    name: pve2\n    ring0_addr: 10.0.0.2\n  }\n}\n";
        assert_eq!(parse_corosync(t, "pve1"), vec!["10.0.0.1", "10.1.0.1"]);
        assert_eq!(parse_corosync(t, "pve2"), vec!["10.0.0.2"]);
        assert!(parse_corosync(t, "pve3").is_empty());
    }

    #[test]
    fn zpool_members() {
        let t = "  pool: rpool\n state: ONLINE\nconfig:\n\n\tNAME              STATE\n\trpool             ONLINE\n\t  /dev/nvme0n1p3  ONLINE       0     0     0\n";
        assert_eq!(parse_zpool(t)["nvme0n1p3"], "rpool");
    }
}
