//! The only place host paths are built. Every component that comes from input is a validated
//! type (`Bdf`), a name checked by `safe_name`, or a constant.

use crate::pci::Bdf;

pub const PCI_DEVICES: &str = "sys/bus/pci/devices";
pub const PCI_DRIVERS: &str = "sys/bus/pci/drivers";
pub const PCI_DRIVERS_PROBE: &str = "sys/bus/pci/drivers_probe";
pub const PCI_RESCAN: &str = "sys/bus/pci/rescan";
pub const IOMMU_GROUPS: &str = "sys/kernel/iommu_groups";
pub const VTCONSOLE: &str = "sys/class/vtconsole";
pub const PLATFORM_DRIVERS: &str = "sys/bus/platform/drivers";
pub const SYS_MODULE: &str = "sys/module";
pub const RUN_DIR: &str = "run/pt-hook";
pub const LOCK_DIR: &str = "run/pt-hook/lock";
pub const RESERVATIONS: &str = "run/qemu-server/pci-id-reservations";
pub const MAPPING_PCI: &str = "etc/pve/mapping/pci.cfg";
pub const DEFAULT_CONFIG: &str = "etc/pt-hook/pt-hook.toml";
pub const QUIRKS_DIR: &str = "etc/pt-hook/quirks.d";
pub const HOOKS_DIR: &str = "etc/pt-hook/hooks.d";
/// Where pmxcfs is mounted on a Proxmox node.
pub const PVE_DIR: &str = "etc/pve";
/// The cluster-wide config: pt-hook.toml and quirks.d/ in pmxcfs.
pub const CLUSTER_DIR: &str = "etc/pve/pt-hook";
/// The copy of the cluster-wide config last read (used when /etc/pve cannot be read).
pub const CLUSTER_CACHE: &str = "var/lib/pt-hook/cluster-config.json";
/// What each VM's PCI addresses held at its last good start (survives reboots: not /run).
pub const IDENTITY_DIR: &str = "var/lib/pt-hook/identity";
/// The reset memory and device health (`engine::health`; survives reboots: not /run).
pub const HEALTH_FILE: &str = "var/lib/pt-hook/health.json";
/// Where a damaged health file is moved before a new one is started.
pub const HEALTH_CORRUPT: &str = "var/lib/pt-hook/health.json.corrupt";
/// flock(2) taken by every writer of the health file (and of the metrics file).
pub const HEALTH_LOCK: &str = "var/lib/pt-hook/health.lock";
/// Physical slots the platform names (`<slot>/address` is "DDDD:BB:DD").
pub const PCI_SLOTS: &str = "sys/bus/pci/slots";
/// This boot's id: a "needs a host reboot" mark holds until it changes.
pub const BOOT_ID: &str = "proc/sys/kernel/random/boot_id";

/// Files pt-hook may touch in a PCI device directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevFile {
    Vendor,
    Device,
    SubsystemVendor,
    SubsystemDevice,
    Class,
    Driver,
    DriverOverride,
    IommuGroup,
    Reset,
    ResetMethod,
    ResetSubordinate,
    BootVga,
    Config,
    Remove,
    D3coldAllowed,
    PowerControl,
    CurrentLinkSpeed,
    CurrentLinkWidth,
    Drm,
}

impl DevFile {
    pub fn name(self) -> &'static str {
        match self {
            DevFile::Vendor => "vendor",
            DevFile::Device => "device",
            DevFile::SubsystemVendor => "subsystem_vendor",
            DevFile::SubsystemDevice => "subsystem_device",
            DevFile::Class => "class",
            DevFile::Driver => "driver",
            DevFile::DriverOverride => "driver_override",
            DevFile::IommuGroup => "iommu_group",
            DevFile::Reset => "reset",
            DevFile::ResetMethod => "reset_method",
            DevFile::ResetSubordinate => "reset_subordinate",
            DevFile::BootVga => "boot_vga",
            DevFile::Config => "config",
            DevFile::Remove => "remove",
            DevFile::D3coldAllowed => "d3cold_allowed",
            DevFile::PowerControl => "power/control",
            DevFile::CurrentLinkSpeed => "current_link_speed",
            DevFile::CurrentLinkWidth => "current_link_width",
            DevFile::Drm => "drm",
        }
    }
}

pub fn dev_dir(bdf: &Bdf) -> String {
    format!("{PCI_DEVICES}/{bdf}")
}

pub fn dev(bdf: &Bdf, f: DevFile) -> String {
    format!("{PCI_DEVICES}/{bdf}/{}", f.name())
}

/// A kernel driver, module or unit name: the only characters such names use.
pub fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b':'))
        && !name.contains("..")
        && !name.starts_with('-')
}

pub fn driver_dir(driver: &str) -> Option<String> {
    safe_name(driver).then(|| format!("{PCI_DRIVERS}/{driver}"))
}

pub fn driver_file(driver: &str, file: &str) -> Option<String> {
    safe_name(driver).then(|| format!("{PCI_DRIVERS}/{driver}/{file}"))
}

pub fn module_dir(module: &str) -> Option<String> {
    safe_name(module).then(|| format!("{SYS_MODULE}/{}", module_name(module)))
}

pub fn iommu_group_devices(group: u32) -> String {
    format!("{IOMMU_GROUPS}/{group}/devices")
}

pub fn state_file(vmid: u32) -> String {
    format!("{RUN_DIR}/vm-{vmid}.json")
}

/// `uuid` must come from `crate::parse::libvirt::parse_uuid` (hex digits and dashes only).
pub fn libvirt_state_file(uuid: &str) -> String {
    debug_assert!(uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'));
    format!("{RUN_DIR}/libvirt-{uuid}.json")
}

pub fn identity_file(vmid: u32) -> String {
    format!("{IDENTITY_DIR}/vm-{vmid}.json")
}

/// `uuid` must come from `crate::parse::libvirt::parse_uuid` (hex digits and dashes only).
pub fn libvirt_identity_file(uuid: &str) -> String {
    debug_assert!(uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'));
    format!("{IDENTITY_DIR}/libvirt-{uuid}.json")
}

/// The directory holding a PCI function's NVMe controllers (`nvme0`, ...).
pub fn nvme_dir(bdf: &Bdf) -> String {
    format!("{PCI_DEVICES}/{bdf}/nvme")
}

/// An NVMe controller's `serial`; None unless `ctrl` is "nvme" followed by digits.
pub fn nvme_serial(bdf: &Bdf, ctrl: &str) -> Option<String> {
    let ok = ctrl
        .strip_prefix("nvme")
        .is_some_and(|n| !n.is_empty() && n.len() <= 6 && n.bytes().all(|b| b.is_ascii_digit()));
    ok.then(|| format!("{PCI_DEVICES}/{bdf}/nvme/{ctrl}/serial"))
}

/// A physical slot's `address`; None unless `slot` is a safe name.
pub fn pci_slot_address(slot: &str) -> Option<String> {
    safe_name(slot).then(|| format!("{PCI_SLOTS}/{slot}/address"))
}

pub fn lock_file(bdf: &Bdf) -> String {
    format!("{LOCK_DIR}/{bdf}.lock")
}

/// A kernel module's canonical name: modprobe and the kernel treat `-` and `_` alike and
/// `/sys/module` shows `_` (`vfio-pci` is `vfio_pci`).
pub fn module_name(name: &str) -> String {
    name.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_paths() {
        assert!(safe_name("vfio-pci"));
        assert!(safe_name("snd_hda_intel"));
        assert!(safe_name("display-manager.service"));
        for bad in ["", "..", "a/b", "../x", "a b", "-rf", "x\n", "a..b"] {
            assert!(!safe_name(bad), "{bad:?}");
        }
        assert_eq!(driver_dir("../../etc"), None);
    }
}
