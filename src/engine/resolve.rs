//! VM config → the PCI functions pt-hook prepares: hostpci addresses and prefixes, mappings
//! for this node, and every other non-bridge member of their IOMMU groups.

use std::collections::BTreeSet;

use crate::engine::state;
use crate::error::{Error, Result};
use crate::host::{paths, Host};
use crate::parse::config::read_bounded;
use crate::parse::pve::config::{parse_vm_config, vm_config_path, VmConfig};
use crate::parse::pve::hostpci::{DriverMode, HostSource};
use crate::parse::pve::mapping::{
    choose_entry, parse_mapping_file, parse_reservations, MappingFile,
};
use crate::pci::{Bdf, PciAddr};
use crate::sysfs::device::{self, DeviceInfo};

#[derive(Debug, Clone)]
pub struct Resolved {
    pub info: DeviceInfo,
    pub origin: String,
    pub keep: bool,
}

pub fn load_vm_config(host: &dyn Host, vmid: u32) -> Result<VmConfig> {
    let migrated = std::env::var("PVE_MIGRATED_FROM").ok();
    let rel = vm_config_path(vmid, migrated.as_deref().filter(|s| !s.is_empty()))
        .map_err(Error::Config)?;
    if !host.exists(&rel) {
        return Err(Error::Config(format!(
            "VM {vmid}: no config at {}",
            host.display(&rel)
        )));
    }
    let text = read_bounded(host, &rel)?;
    parse_vm_config(&text, &host.display(&rel), vmid).map_err(|e| Error::Config(e.to_string()))
}

fn expand(host: &dyn Host, all: &[Bdf], addr: &PciAddr, what: &str) -> Result<Vec<Bdf>> {
    let v: Vec<Bdf> = all.iter().filter(|b| addr.matches(b)).copied().collect();
    if v.is_empty() {
        return Err(Error::Config(format!(
            "{what}: PCI device {addr} does not exist on this host ({})",
            host.display(paths::PCI_DEVICES)
        )));
    }
    Ok(v)
}

fn load_mappings(host: &dyn Host) -> Result<MappingFile> {
    let rel = paths::MAPPING_PCI;
    if !host.exists(rel) {
        return Ok(MappingFile {
            mappings: Vec::new(),
            warnings: Vec::new(),
        });
    }
    let text = read_bounded(host, rel)?;
    parse_mapping_file(&text, &host.display(rel)).map_err(|e| Error::Config(e.to_string()))
}

/// The lines of pci.cfg that were skipped (as Proxmox skips them) and concern mapping `name`:
/// appended to "not found" / "no entry" errors so the operator sees file and line.
fn skipped_lines(f: &MappingFile, name: &str) -> String {
    let tag = format!("'{name}'");
    let w: Vec<String> = f
        .warnings
        .iter()
        .filter(|w| w.message.contains(&tag))
        .map(|w| w.to_string())
        .collect();
    if w.is_empty() {
        String::new()
    } else {
        format!(" (skipped: {})", w.join("; "))
    }
}

/// The functions a VM config's hostpci lines name by address that pt-hook moves (not
/// `driver=keep`, not mdev), in the order `resolve` lists them, before anything is read about
/// them: what the guard can scan beside `resolve`. None when a line names a mapping (its
/// entry is chosen by what `resolve` reads). `all`: `device::list_all`. An address that
/// matches nothing is left to `resolve` to report.
pub fn named_functions(cfg: &VmConfig, all: &[Bdf]) -> Option<Vec<Bdf>> {
    let mut seen: BTreeSet<Bdf> = BTreeSet::new();
    let mut out = Vec::new();
    for hp in &cfg.hostpci {
        let keep = hp.driver == DriverMode::Keep || hp.mdev.is_some();
        let HostSource::Host(addrs) = &hp.source else {
            return None;
        };
        for a in addrs {
            for b in all.iter().filter(|b| a.matches(b)) {
                if seen.insert(*b) && !keep {
                    out.push(*b);
                }
            }
        }
    }
    Some(out)
}

/// Resolves a VM's devices. Errors here are configuration errors (exit 2): nothing has been
/// touched yet.
pub fn resolve(
    host: &dyn Host,
    cfg: &VmConfig,
    node: &str,
    log: &crate::log::Logger,
) -> Result<Vec<Resolved>> {
    resolve_listed(host, cfg, node, log, device::list_all(host))
}

/// `resolve` with the host's functions already listed (`all`: `device::list_all`).
pub fn resolve_listed(
    host: &dyn Host,
    cfg: &VmConfig,
    node: &str,
    log: &crate::log::Logger,
    all: Vec<Bdf>,
) -> Result<Vec<Resolved>> {
    let mut out: Vec<Resolved> = Vec::new();
    let mut seen: BTreeSet<Bdf> = BTreeSet::new();
    let mut mappings: Option<MappingFile> = None;
    // The functions in order, with where they came from: (function, origin, keep, line).
    let mut want: Vec<(Bdf, String, bool, String)> = Vec::new();
    let reservations = host
        .read(paths::RESERVATIONS)
        .map(|t| parse_reservations(&t))
        .unwrap_or_default();

    for hp in &cfg.hostpci {
        let what = format!("{}: hostpci{}", cfg_file(host, cfg.vmid), hp.index);
        let keep = hp.driver == DriverMode::Keep || hp.mdev.is_some();
        let (bdfs, origin) = match &hp.source {
            HostSource::Host(addrs) => {
                let mut v = Vec::new();
                for a in addrs {
                    v.extend(expand(host, &all, a, &what)?);
                }
                (v, format!("hostpci{}", hp.index))
            }
            HostSource::Mapping(name) => {
                if mappings.is_none() {
                    mappings = Some(load_mappings(host)?);
                }
                let mf = mappings.as_ref().expect("loaded above");
                let m = mf
                    .mappings
                    .iter()
                    .find(|m| &m.name == name)
                    .ok_or_else(|| {
                        Error::Config(format!(
                            "{what}: mapping {name} not found in {}{}",
                            host.display(paths::MAPPING_PCI),
                            skipped_lines(mf, name)
                        ))
                    })?;
                let vmid = cfg.vmid;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let taken = |e: &crate::parse::pve::mapping::MapEntry| -> Option<String> {
                    for p in &e.paths {
                        for r in &reservations {
                            if !p.matches(&r.bdf) {
                                continue;
                            }
                            if let Some(why) = r.blocks(vmid, now, &|v| state::vm_running(host, v))
                            {
                                return Some(format!("{}: {why}", r.bdf));
                            }
                        }
                        for b in all.iter().filter(|b| p.matches(b)) {
                            if seen.contains(b) {
                                return Some(format!("{b} already used by this VM"));
                            }
                            if let Some(o) = state::owner_of(host, b, &state::VmKey::Pve(vmid)) {
                                return Some(format!("{b} in use by {o}"));
                            }
                        }
                    }
                    None
                };
                let e = choose_entry(m, node, &taken).map_err(|e| {
                    Error::Config(format!("{what}: {e}{}", skipped_lines(mf, name)))
                })?;
                let mut v = Vec::new();
                for p in &e.paths {
                    let funcs = expand(host, &all, p, &what)?;
                    // Proxmox checks the id once per path item: its first function.
                    if let Some(info) = funcs.first().and_then(|b| device::read_device(host, b)) {
                        if info.vendor != e.id.vendor || info.device != e.id.device {
                            return Err(Error::Config(format!(
                                "{what}: mapping {name} expects {} at {}, found {:04x}:{:04x}",
                                e.id, info.bdf, info.vendor, info.device
                            )));
                        }
                    }
                    v.extend(funcs);
                }
                log.info(&format!(
                    "hostpci{}: mapping {name} on node {node} -> {}",
                    hp.index,
                    v.iter()
                        .map(|b| b.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                ));
                (v, format!("hostpci{} (mapping {name})", hp.index))
            }
        };
        for b in bdfs {
            if seen.insert(b) {
                want.push((b, origin.clone(), keep, what.clone()));
            }
        }
    }
    // Each function's sysfs attributes, the functions side by side (a bounded read of
    // driver_override each, a round trip to a helper).
    let infos = read_devices(host, &want.iter().map(|w| w.0).collect::<Vec<_>>());
    for ((b, origin, keep, what), info) in want.into_iter().zip(infos) {
        let info = info.ok_or_else(|| {
            Error::Config(format!("{what}: PCI device {b} vanished while reading it"))
        })?;
        if info.is_bridge() {
            return Err(Error::Config(format!(
                "{what}: {b} is a PCI bridge; bridges cannot be passed through"
            )));
        }
        out.push(Resolved { info, origin, keep });
    }

    add_group_members(host, &mut out, &mut seen);
    Ok(out)
}

/// `device::read_device` of each of `bdfs`, on a thread each (one alone: on this one).
fn read_devices(host: &dyn Host, bdfs: &[Bdf]) -> Vec<Option<device::DeviceInfo>> {
    crate::host::side_by_side(bdfs, |b| device::read_device(host, b))
}

/// An explicit list of functions (libvirt `<hostdev>`s), each with where it came from. Every
/// function must exist and not be a bridge; the rest of their IOMMU groups is added as for
/// a Proxmox VM. Errors are configuration errors (exit 2): nothing has been touched yet.
pub fn resolve_bdfs(host: &dyn Host, bdfs: &[(Bdf, String)]) -> Result<Vec<Resolved>> {
    let mut out: Vec<Resolved> = Vec::new();
    let mut seen: BTreeSet<Bdf> = BTreeSet::new();
    let want: Vec<&(Bdf, String)> = bdfs.iter().filter(|(b, _)| seen.insert(*b)).collect();
    let infos = read_devices(host, &want.iter().map(|(b, _)| *b).collect::<Vec<_>>());
    for ((b, origin), info) in want.into_iter().zip(infos) {
        let info = info.ok_or_else(|| {
            Error::Config(format!(
                "{origin}: PCI device {b} does not exist on this host ({})",
                host.display(&paths::dev_dir(b))
            ))
        })?;
        if info.is_bridge() {
            return Err(Error::Config(format!(
                "{origin}: {b} is a PCI bridge; bridges cannot be passed through"
            )));
        }
        out.push(Resolved {
            info,
            origin: origin.clone(),
            keep: false,
        });
    }
    add_group_members(host, &mut out, &mut seen);
    Ok(out)
}

/// The whole IOMMU group goes to vfio-pci (as Proxmox and libvirt do): record and prepare
/// every other non-bridge member.
fn add_group_members(host: &dyn Host, out: &mut Vec<Resolved>, seen: &mut BTreeSet<Bdf>) {
    let mut extra = Vec::new();
    for r in out.iter().filter(|r| !r.keep) {
        let Some(g) = r.info.iommu_group else {
            continue;
        };
        for m in device::group_members(host, g) {
            if seen.contains(&m) {
                continue;
            }
            let Some(info) = device::read_device(host, &m) else {
                continue;
            };
            if info.is_bridge() {
                continue;
            }
            seen.insert(m);
            extra.push(Resolved {
                info,
                origin: format!("IOMMU group {g} (with {})", r.info.bdf),
                keep: false,
            });
        }
    }
    out.extend(extra);
}

fn cfg_file(_host: &dyn Host, vmid: u32) -> String {
    format!("VM {vmid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bdf {
        Bdf::parse(s).unwrap()
    }

    #[test]
    fn named_functions_follow_the_hostpci_lines_without_keep_or_mappings() {
        let all = vec![
            b("0000:01:00.0"),
            b("0000:01:00.1"),
            b("0000:02:00.0"),
            b("0000:03:00.0"),
        ];
        let cfg = parse_vm_config(
            "hostpci0: 0000:02:00.0\nhostpci1: 01:00\nhostpci2: 0000:03:00.0,driver=keep\nhostpci3: 0000:02:00.0\n",
            "100.conf",
            100,
        )
        .unwrap();
        // In resolve's order, each once; driver=keep left out; a function named twice counts
        // where it was first named.
        assert_eq!(
            named_functions(&cfg, &all),
            Some(vec![
                b("0000:02:00.0"),
                b("0000:01:00.0"),
                b("0000:01:00.1")
            ])
        );
        let mapped = parse_vm_config(
            "hostpci0: 0000:02:00.0\nhostpci1: mapping=gpu\n",
            "101.conf",
            101,
        )
        .unwrap();
        assert_eq!(named_functions(&mapped, &all), None);
        // An address that matches nothing names nothing (resolve reports it).
        let none = parse_vm_config("hostpci0: 0000:09:00.0\n", "102.conf", 102).unwrap();
        assert_eq!(named_functions(&none, &all), Some(vec![]));
    }
}
