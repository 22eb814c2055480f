//! /run/pt-hook/vm-VMID.json: what a VM's pre-start changed, written atomically before each
//! change it describes (write-ahead), so post-stop, `cleanup` and the next pre-start can
//! always put the host back from pt-hook's own record, never from the (editable) VM config.

use serde::{Deserialize, Serialize};

use crate::device::DeviceInfo;
use crate::error::{Error, Result};
use crate::host::{paths, Host};
use crate::pci::Bdf;
use crate::plan::Step;

pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceRecord {
    /// The device as it was before pt-hook touched it.
    pub original: DeviceInfo,
    pub origin: String,
    pub quirk: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmState {
    pub version: u32,
    pub vmid: u32,
    /// The pt-hook process that wrote it last.
    pub pid: u32,
    /// Seconds since the epoch of the pre-start.
    pub created: u64,
    /// "pre-start" while it runs, "prepared" once done, "post-stop" while restoring.
    pub phase: String,
    pub devices: Vec<DeviceRecord>,
    /// Every step begun, in order; recorded before the step runs.
    pub journal: Vec<Step>,
    /// Devices whose reset failed at post-stop and were left on vfio-pci.
    #[serde(default)]
    pub unrecovered: Vec<Bdf>,
}

impl VmState {
    pub fn new(vmid: u32, devices: Vec<DeviceRecord>) -> VmState {
        VmState {
            version: STATE_VERSION,
            vmid,
            pid: std::process::id(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            phase: "pre-start".into(),
            devices,
            journal: Vec::new(),
            unrecovered: Vec::new(),
        }
    }

    pub fn owns(&self, bdf: &Bdf) -> bool {
        self.devices.iter().any(|d| d.original.bdf == *bdf)
    }

    pub fn bdfs(&self) -> Vec<Bdf> {
        self.devices.iter().map(|d| d.original.bdf).collect()
    }
}

pub fn save(host: &dyn Host, st: &VmState) -> Result<()> {
    let rel = paths::state_file(st.vmid);
    let data = serde_json::to_vec_pretty(st).map_err(|e| Error::Failed(e.to_string()))?;
    host.write_atomic(&rel, &data)
        .map_err(|e| Error::host(format!("VM {}", st.vmid), "writing", host.display(&rel), e))
}

pub fn load(host: &dyn Host, vmid: u32) -> Result<Option<VmState>> {
    let rel = paths::state_file(vmid);
    if !host.exists(&rel) {
        return Ok(None);
    }
    let text = host
        .read(&rel)
        .map_err(|e| Error::host(format!("VM {vmid}"), "reading", host.display(&rel), e))?;
    let st: VmState = serde_json::from_str(&text).map_err(|e| {
        Error::Failed(format!(
            "{}: state file is damaged ({e}); move it away and check the devices by hand",
            host.display(&rel)
        ))
    })?;
    if st.vmid != vmid {
        return Err(Error::Failed(format!(
            "{}: state file names VM {} instead of {vmid}",
            host.display(&rel),
            st.vmid
        )));
    }
    Ok(Some(st))
}

pub fn remove(host: &dyn Host, vmid: u32) -> Result<()> {
    let rel = paths::state_file(vmid);
    match host.remove_file(&rel) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::host(
            format!("VM {vmid}"),
            "removing",
            host.display(&rel),
            e,
        )),
    }
}

/// VM ids that have a state file.
pub fn list_vms(host: &dyn Host) -> Vec<u32> {
    let mut v: Vec<u32> = host
        .list(paths::RUN_DIR)
        .unwrap_or_default()
        .iter()
        .filter_map(|n| n.strip_prefix("vm-")?.strip_suffix(".json")?.parse().ok())
        .collect();
    v.sort();
    v
}

/// The other VM whose state holds `bdf`, if any. A damaged state file of another VM counts
/// as unknown, not as free.
pub fn owner_of(host: &dyn Host, bdf: &Bdf, except: u32) -> Option<u32> {
    for vm in list_vms(host) {
        if vm == except {
            continue;
        }
        match load(host, vm) {
            Ok(Some(st)) if st.owns(bdf) => return Some(vm),
            Ok(_) => {}
            // Unreadable or damaged: it may hold the device; refusing is the safe answer.
            Err(_) => return Some(vm),
        }
    }
    None
}

/// Whether QEMU for this VM is running (Proxmox's pid file names a live process).
pub fn vm_running(host: &dyn Host, vmid: u32) -> Option<u32> {
    let pid: i32 = host
        .read(&format!("run/qemu-server/{vmid}.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if pid <= 0 {
        return None;
    }
    let alive = host.exists(&format!("proc/{pid}"));
    alive.then_some(pid as u32)
}
