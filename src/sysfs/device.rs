//! What the kernel says about a PCI function, read through the host layer.

use serde::{Deserialize, Serialize};

use crate::host::paths::{self, DevFile};
use crate::host::Host;
use crate::pci::{parse_sysfs_hex, Bdf, CLASS_BRIDGE_PCI};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceInfo {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    pub subsystem_vendor: Option<u16>,
    pub subsystem_device: Option<u16>,
    pub class: u32,
    pub driver: Option<String>,
    pub driver_override: Option<String>,
    pub iommu_group: Option<u32>,
    /// None when the device has no `reset_method` file (no reset method at enumeration).
    pub reset_method: Option<String>,
    pub has_reset: bool,
    pub boot_vga: Option<bool>,
    pub d3cold_allowed: Option<String>,
    pub power_control: Option<String>,
    pub link_speed: Option<String>,
    pub link_width: Option<String>,
}

impl DeviceInfo {
    pub fn is_bridge(&self) -> bool {
        self.class >> 8 == CLASS_BRIDGE_PCI
    }
    pub fn is_display(&self) -> bool {
        self.class >> 16 == 0x03
    }
    pub fn vendor_hex(&self) -> String {
        format!("{:04x}", self.vendor)
    }
    pub fn device_hex(&self) -> String {
        format!("{:04x}", self.device)
    }
    pub fn class_hex(&self) -> String {
        format!("{:06x}", self.class)
    }
}

fn read_trim(host: &dyn Host, rel: &str) -> Option<String> {
    host.read(rel)
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
}

fn read_hex(host: &dyn Host, bdf: &Bdf, f: DevFile) -> Option<u32> {
    read_trim(host, &paths::dev(bdf, f)).and_then(|s| parse_sysfs_hex(&s))
}

/// The class code alone (one read), for choosing devices before reading them in full.
pub fn class_of(host: &dyn Host, bdf: &Bdf) -> Option<u32> {
    read_hex(host, bdf, DevFile::Class)
}

pub fn exists(host: &dyn Host, bdf: &Bdf) -> bool {
    host.exists(&paths::dev_dir(bdf))
}

pub fn driver_of(host: &dyn Host, bdf: &Bdf) -> Option<String> {
    host.link_name(&paths::dev(bdf, DevFile::Driver)).ok()
}

/// `power/control`: "on" or "auto" (None: no such file).
pub fn power_control_of(host: &dyn Host, bdf: &Bdf) -> Option<String> {
    read_trim(host, &paths::dev(bdf, DevFile::PowerControl))
}

pub fn override_of(host: &dyn Host, bdf: &Bdf) -> Option<String> {
    read_trim(host, &paths::dev(bdf, DevFile::DriverOverride))
        .filter(|s| s != "(null)" && !s.is_empty())
}

pub fn reset_method_of(host: &dyn Host, bdf: &Bdf) -> Option<String> {
    read_trim(host, &paths::dev(bdf, DevFile::ResetMethod))
}

/// What to write to `reset_method` for a list: an empty list (all methods disabled) is
/// written as a bare newline.
pub fn reset_method_data(list: &str) -> &str {
    if list.is_empty() {
        "\n"
    } else {
        list
    }
}

pub fn iommu_group_of(host: &dyn Host, bdf: &Bdf) -> Option<u32> {
    host.link_name(&paths::dev(bdf, DevFile::IommuGroup))
        .ok()
        .and_then(|g| g.parse().ok())
}

/// Reads everything pt-hook needs to know about one function. None when it does not exist.
pub fn read_device(host: &dyn Host, bdf: &Bdf) -> Option<DeviceInfo> {
    let mut info = read_for_ladder(host, bdf)?;
    info.driver_override = override_of(host, bdf);
    info.iommu_group = iommu_group_of(host, bdf);
    info.boot_vga = read_trim(host, &paths::dev(bdf, DevFile::BootVga)).map(|s| s == "1");
    info.d3cold_allowed = read_trim(host, &paths::dev(bdf, DevFile::D3coldAllowed));
    info.power_control = power_control_of(host, bdf);
    Some(info)
}

/// What the reset ladder compares and chooses by (and `pt-hook reset` checks and matches quirk
/// profiles with), read right before it: `read_device`
/// without `driver_override` (a read that can block, so a round trip to a helper process),
/// the IOMMU group, `boot_vga`, `d3cold_allowed` and `power/control`, which a reset does not
/// change and the ladder does not use (those fields are None here).
pub fn read_for_ladder(host: &dyn Host, bdf: &Bdf) -> Option<DeviceInfo> {
    if !exists(host, bdf) {
        return None;
    }
    let vendor = read_hex(host, bdf, DevFile::Vendor)? as u16;
    let device = read_hex(host, bdf, DevFile::Device)? as u16;
    Some(DeviceInfo {
        bdf: *bdf,
        vendor,
        device,
        subsystem_vendor: read_hex(host, bdf, DevFile::SubsystemVendor).map(|v| v as u16),
        subsystem_device: read_hex(host, bdf, DevFile::SubsystemDevice).map(|v| v as u16),
        class: read_hex(host, bdf, DevFile::Class).unwrap_or(0),
        driver: driver_of(host, bdf),
        driver_override: None,
        iommu_group: None,
        reset_method: reset_method_of(host, bdf),
        has_reset: host.exists(&paths::dev(bdf, DevFile::Reset)),
        boot_vga: None,
        d3cold_allowed: None,
        power_control: None,
        link_speed: link_speed_of(host, bdf),
        link_width: link_width_of(host, bdf),
    })
}

/// `current_link_speed` ("16.0 GT/s PCIe"), if the function has a link.
pub fn link_speed_of(host: &dyn Host, bdf: &Bdf) -> Option<String> {
    read_trim(host, &paths::dev(bdf, DevFile::CurrentLinkSpeed))
}

/// `current_link_width` ("16"), if the function has a link.
pub fn link_width_of(host: &dyn Host, bdf: &Bdf) -> Option<String> {
    read_trim(host, &paths::dev(bdf, DevFile::CurrentLinkWidth))
}

/// Every PCI function on the host (entries that are not valid BDFs are ignored).
pub fn list_all(host: &dyn Host) -> Vec<Bdf> {
    let mut v: Vec<Bdf> = host
        .list(paths::PCI_DEVICES)
        .unwrap_or_default()
        .iter()
        .filter_map(|n| Bdf::parse(n).ok())
        .collect();
    v.sort();
    v
}

pub fn group_members(host: &dyn Host, group: u32) -> Vec<Bdf> {
    let mut v: Vec<Bdf> = host
        .list(&paths::iommu_group_devices(group))
        .unwrap_or_default()
        .iter()
        .filter_map(|n| Bdf::parse(n).ok())
        .collect();
    v.sort();
    v
}

/// Config space health: vendor id readable and not 0xffff (gone) / 0x0001 (initialising).
pub fn config_vendor(host: &dyn Host, bdf: &Bdf) -> Option<u16> {
    let b = host.read_bytes(&paths::dev(bdf, DevFile::Config), 4).ok()?;
    vendor_in(&b)
}

/// The vendor id at the start of config space bytes (None: fewer than two).
fn vendor_in(config: &[u8]) -> Option<u16> {
    (config.len() >= 2).then(|| u16::from_le_bytes([config[0], config[1]]))
}

pub fn config_healthy(host: &dyn Host, bdf: &Bdf) -> Result<(), String> {
    vendor_healthy(config_vendor(host, bdf))
}

/// `config_healthy` of config space bytes already read (None: not readable).
pub fn config_bytes_healthy(config: Option<&[u8]>) -> Result<(), String> {
    vendor_healthy(config.and_then(vendor_in))
}

fn vendor_healthy(vendor: Option<u16>) -> Result<(), String> {
    match vendor {
        None => Err("config space not readable".into()),
        Some(0xffff) => Err("config space reads 0xffff (device gone from the bus)".into()),
        Some(0x0001) => Err("config space reads 0x0001 (device still initialising)".into()),
        Some(_) => Ok(()),
    }
}

/// The bridge above a function: the parent directory of its sysfs node, when that is a PCI
/// function itself (root port or switch port).
pub fn parent_bridge(host: &dyn Host, bdf: &Bdf) -> Option<Bdf> {
    // sys/bus/pci/devices/BDF -> ../../../devices/pci0000:00/0000:00:1c.0/0000:01:00.0
    let link = host.link_target(&paths::dev_dir(bdf)).ok()?;
    let mut comps: Vec<&str> = link.split('/').collect();
    comps.pop();
    comps.last().and_then(|p| Bdf::parse(p).ok())
}
