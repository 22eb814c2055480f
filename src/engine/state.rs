//! /run/pt-hook/vm-VMID.json: what a VM's pre-start changed, written atomically before each
//! change it describes (write-ahead), so post-stop, `cleanup` and the next pre-start can
//! always put the host back from pt-hook's own record, never from the (editable) VM config.

use serde::{Deserialize, Serialize};

use crate::engine::plan::Step;
use crate::error::{Error, Result};
use crate::host::{paths, Host};
use crate::pci::Bdf;
use crate::sysfs::device::DeviceInfo;

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
    /// Set for a libvirt domain (then `vmid` is 0, never a Proxmox VM id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<Domain>,
}

/// A libvirt domain: keyed by its UUID (the name is only shown).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Domain {
    /// Lowercase 8-4-4-4-12 hex, validated by `crate::parse::libvirt::parse_uuid`.
    pub uuid: String,
    pub name: String,
}

/// Whose state a file is: a Proxmox VM (numeric id) or a libvirt domain (UUID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmKey {
    Pve(u32),
    Libvirt(Domain),
}

impl std::fmt::Display for VmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmKey::Pve(v) => write!(f, "VM {v}"),
            VmKey::Libvirt(d) => write!(f, "libvirt domain {:?} ({})", d.name, d.uuid),
        }
    }
}

impl VmKey {
    pub fn state_file(&self) -> String {
        match self {
            VmKey::Pve(v) => paths::state_file(*v),
            VmKey::Libvirt(d) => paths::libvirt_state_file(&d.uuid),
        }
    }
    /// The command that restores this VM's devices by hand.
    pub fn cleanup_hint(&self) -> String {
        match self {
            VmKey::Pve(v) => format!("pt-hook cleanup {v}"),
            VmKey::Libvirt(_) => "pt-hook cleanup".to_string(),
        }
    }
    /// The Proxmox VM id for per-VM config (`[vm.N]`); 0 (defaults) for libvirt.
    pub fn vmid(&self) -> u32 {
        match self {
            VmKey::Pve(v) => *v,
            VmKey::Libvirt(_) => 0,
        }
    }
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
            domain: None,
        }
    }

    pub fn for_key(key: &VmKey, devices: Vec<DeviceRecord>) -> VmState {
        let mut st = VmState::new(key.vmid(), devices);
        if let VmKey::Libvirt(d) = key {
            st.domain = Some(d.clone());
        }
        st
    }

    pub fn key(&self) -> VmKey {
        match &self.domain {
            Some(d) => VmKey::Libvirt(d.clone()),
            None => VmKey::Pve(self.vmid),
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
    let key = st.key();
    let rel = key.state_file();
    let data = serde_json::to_vec_pretty(st).map_err(|e| Error::Failed(e.to_string()))?;
    host.write_atomic(&rel, &data)
        .map_err(|e| Error::host(&key, "writing", host.display(&rel), e))
}

pub fn load(host: &dyn Host, key: &VmKey) -> Result<Option<VmState>> {
    let rel = key.state_file();
    if !host.exists(&rel) {
        return Ok(None);
    }
    let text = host
        .read(&rel)
        .map_err(|e| Error::host(key, "reading", host.display(&rel), e))?;
    let st: VmState = serde_json::from_str(&text).map_err(|e| {
        Error::Failed(format!(
            "{}: state file is damaged ({e}); move it away and check the devices by hand",
            host.display(&rel)
        ))
    })?;
    let same = match (key, &st.domain) {
        (VmKey::Pve(v), None) => st.vmid == *v,
        (VmKey::Libvirt(d), Some(sd)) => sd.uuid == d.uuid,
        _ => false,
    };
    if !same {
        return Err(Error::Failed(format!(
            "{}: state file names {} instead of {key}",
            host.display(&rel),
            st.key()
        )));
    }
    Ok(Some(st))
}

pub fn remove(host: &dyn Host, key: &VmKey) -> Result<()> {
    let rel = key.state_file();
    match host.remove_file(&rel) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::host(key, "removing", host.display(&rel), e)),
    }
}

/// Every state file's key: Proxmox VMs (by id) then libvirt domains. A libvirt state file
/// that cannot be read is skipped here (`load` reports it when it is used).
pub fn list(host: &dyn Host) -> Vec<VmKey> {
    let mut keys: Vec<VmKey> = pve_vmids(host).into_iter().map(VmKey::Pve).collect();
    for n in host.list(paths::RUN_DIR).unwrap_or_default() {
        let Some(uuid) = n
            .strip_prefix("libvirt-")
            .and_then(|r| r.strip_suffix(".json"))
        else {
            continue;
        };
        let Some(uuid) = crate::parse::libvirt::parse_uuid(uuid) else {
            continue;
        };
        let probe = VmKey::Libvirt(Domain {
            uuid,
            name: String::new(),
        });
        if let Ok(Some(st)) = load(host, &probe) {
            keys.push(st.key());
        }
    }
    keys
}

/// The other VM or domain whose state holds `bdf`, if any. A damaged state file of another
/// VM or domain counts as unknown, not as free.
pub fn owner_of(host: &dyn Host, bdf: &Bdf, except: &VmKey) -> Option<VmKey> {
    Others::load(host, except).owner_of(bdf)
}

/// Every other VM's or domain's state, read once: asked for many functions, the state files
/// are listed and parsed one time (the guard asks per function).
pub struct Others {
    states: Vec<(VmKey, Option<VmState>)>,
}

impl Others {
    /// The state of every VM or domain but `except`; `None` for a file that could not be
    /// read or parsed (it may hold anything).
    pub fn load(host: &dyn Host, except: &VmKey) -> Others {
        let same = |a: &VmKey, b: &VmKey| match (a, b) {
            (VmKey::Pve(x), VmKey::Pve(y)) => x == y,
            (VmKey::Libvirt(x), VmKey::Libvirt(y)) => x.uuid == y.uuid,
            _ => false,
        };
        let mut states = Vec::new();
        for k in list(host) {
            if same(&k, except) {
                continue;
            }
            match load(host, &k) {
                Ok(Some(st)) => states.push((k, Some(st))),
                Ok(None) => {}
                // Unreadable or damaged: it may hold the device; refusing is the safe answer.
                Err(_) => states.push((k, None)),
            }
        }
        Others { states }
    }

    /// The states that could be read.
    pub fn readable(&self) -> impl Iterator<Item = &VmState> {
        self.states.iter().filter_map(|(_, st)| st.as_ref())
    }

    /// The first of them whose state holds `bdf` (or that could not be read).
    pub fn owner_of(&self, bdf: &Bdf) -> Option<VmKey> {
        self.states
            .iter()
            .find(|(_, st)| st.as_ref().is_none_or(|st| st.owns(bdf)))
            .map(|(k, _)| k.clone())
    }
}

/// Whether the VM or domain is running: Proxmox's pid file, or for libvirt a QEMU process
/// whose command line carries `-uuid UUID`.
pub fn running(host: &dyn Host, key: &VmKey) -> Option<u32> {
    match key {
        VmKey::Pve(v) => vm_running(host, *v),
        VmKey::Libvirt(d) => domain_running(host, &d.uuid),
    }
}

/// Proxmox VM ids that have a state file.
fn pve_vmids(host: &dyn Host) -> Vec<u32> {
    let mut v: Vec<u32> = host
        .list(paths::RUN_DIR)
        .unwrap_or_default()
        .iter()
        .filter_map(|n| n.strip_prefix("vm-")?.strip_suffix(".json")?.parse().ok())
        .collect();
    v.sort();
    v
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

/// Whether a QEMU process runs with `-uuid UUID` on its command line (how libvirt starts it).
pub fn domain_running(host: &dyn Host, uuid: &str) -> Option<u32> {
    for p in host.list("proc").unwrap_or_default() {
        let Ok(pid) = p.parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = host.read_bytes(&format!("proc/{pid}/cmdline"), 1 << 16) else {
            continue;
        };
        let mut args = cmdline.split(|b| *b == 0);
        while let Some(a) = args.next() {
            if a == b"-uuid" {
                if let Some(v) = args.next() {
                    if v.eq_ignore_ascii_case(uuid.as_bytes()) {
                        return Some(pid);
                    }
                }
            }
        }
    }
    None
}
