//! The per-device facts `status` shows and the fleet inventory publishes, computed here once:
//! the device as sysfs shows it, its IOMMU group, its quirk profile, who owns it (pt-hook's
//! state first, then the Proxmox VM configs) and the PCI mappings that name it on this node.

use std::collections::BTreeMap;

use crate::engine::quirks::{self, Profile};
use crate::engine::state::{self, VmKey};
use crate::host::Host;
use crate::parse::pve::hostpci::HostSource;
use crate::pci::Bdf;
use crate::sysfs::device::{self, DeviceInfo};

/// Where an owner comes from: pt-hook's state (it holds the device for a running or starting
/// VM or domain) or a Proxmox VM config that names it.
pub type OwnerSource = &'static str;

/// One PCI function with what pt-hook knows about it.
#[derive(Debug, Clone)]
pub struct DeviceRow {
    pub dev: DeviceInfo,
    /// The whole IOMMU group, this function included.
    pub members: Vec<Bdf>,
    pub quirk: Option<String>,
    pub owner: Option<(VmKey, OwnerSource)>,
    /// PCI mappings (`/etc/pve/mapping/pci.cfg`) with an entry for this node that names it.
    pub mappings: Vec<String>,
}

/// An owner as `status` shows it: the Proxmox VM id, or `libvirt:NAME` (control characters
/// escaped: the name comes from a state file).
pub fn owner_label(key: &VmKey) -> String {
    match key {
        VmKey::Pve(v) => v.to_string(),
        VmKey::Libvirt(d) => format!("libvirt:{}", crate::log::escape_controls(&d.name)),
    }
}

/// Owners and mapping names of every function in `all`: running state first (Proxmox VMs and
/// libvirt domains), then Proxmox VM configs (host addresses, and mappings for this node:
/// alternatives all count as the VM's).
#[allow(clippy::type_complexity)]
fn owners_and_mappings(
    host: &dyn Host,
    node: &str,
    all: &[Bdf],
) -> (
    BTreeMap<Bdf, (VmKey, OwnerSource)>,
    BTreeMap<Bdf, Vec<String>>,
) {
    let mut m = BTreeMap::new();
    for key in state::list(host) {
        if let Ok(Some(st)) = state::load(host, &key) {
            for b in st.bdfs() {
                m.insert(b, (key.clone(), "state"));
            }
        }
    }
    let mappings = crate::parse::config::read_bounded(host, crate::host::paths::MAPPING_PCI)
        .ok()
        .and_then(|t| crate::parse::pve::mapping::parse_mappings(&t, "pci.cfg").ok())
        .unwrap_or_default();
    let mut named: BTreeMap<Bdf, Vec<String>> = BTreeMap::new();
    for pm in &mappings {
        for e in pm.entries_for(node) {
            for a in &e.paths {
                for b in all.iter().filter(|b| a.matches(b)) {
                    let v = named.entry(*b).or_default();
                    if !v.contains(&pm.name) {
                        v.push(pm.name.clone());
                    }
                }
            }
        }
    }
    let dir = "etc/pve/qemu-server";
    for f in host.list(dir).unwrap_or_default() {
        let Some(id) = f.strip_suffix(".conf").and_then(|v| v.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(text) = crate::parse::config::read_bounded(host, &format!("{dir}/{f}")) else {
            continue;
        };
        let Ok(cfg) = crate::parse::pve::config::parse_vm_config(&text, &f, id) else {
            continue;
        };
        for hp in &cfg.hostpci {
            let addrs: Vec<crate::pci::PciAddr> = match &hp.source {
                HostSource::Host(addrs) => addrs.clone(),
                HostSource::Mapping(name) => mappings
                    .iter()
                    .filter(|pm| &pm.name == name)
                    .flat_map(|pm| pm.entries_for(node))
                    .flat_map(|e| e.paths.iter().copied())
                    .collect(),
            };
            for a in &addrs {
                for b in all.iter().filter(|b| a.matches(b)) {
                    m.entry(*b).or_insert((VmKey::Pve(id), "config"));
                }
            }
        }
    }
    (m, named)
}

/// What a caller of [`rows_where`] sees of a device before it is read in full.
pub struct Glance<'a> {
    pub class: u32,
    pub driver: Option<&'a str>,
    pub owned: bool,
    pub mapped: bool,
}

impl Glance<'_> {
    pub fn is_bridge(&self) -> bool {
        self.class >> 8 == 0x0604
    }
    pub fn is_display(&self) -> bool {
        self.class >> 16 == 0x03
    }
}

/// Every PCI function on the host, in address order, with its facts; `node` is the name PCI
/// mappings are matched against.
pub fn rows(host: &dyn Host, node: &str, profiles: &[Profile]) -> Vec<DeviceRow> {
    rows_where(host, node, profiles, &|_| true)
}

/// Like [`rows`], for the functions `keep` wants: it sees the class, driver and whether a VM
/// or mapping names the function, and the rest is read only for those it keeps (a host has
/// dozens of functions the fleet inventory leaves out).
pub fn rows_where(
    host: &dyn Host,
    node: &str,
    profiles: &[Profile],
    keep: &dyn Fn(&Glance) -> bool,
) -> Vec<DeviceRow> {
    let all = device::list_all(host);
    let (mut owners, mut named) = owners_and_mappings(host, node, &all);
    let mut out = Vec::new();
    for b in &all {
        let driver = device::driver_of(host, b);
        let glance = Glance {
            class: device::class_of(host, b).unwrap_or(0),
            driver: driver.as_deref(),
            owned: owners.contains_key(b),
            mapped: named.contains_key(b),
        };
        if !keep(&glance) {
            continue;
        }
        let Some(d) = device::read_device(host, b) else {
            continue;
        };
        let members: Vec<Bdf> = d
            .iommu_group
            .map(|g| device::group_members(host, g))
            .unwrap_or_default();
        let quirk = quirks::find(profiles, &d).map(|p| p.name.clone());
        out.push(DeviceRow {
            owner: owners.remove(b),
            mappings: named.remove(b).unwrap_or_default(),
            dev: d,
            members,
            quirk,
        });
    }
    out
}
