//! Vendor, device and class names from the system's pci.ids (the file lspci reads), read
//! through the host layer and only when a command prints names. The file is read once, up to
//! a bound, and only the ids asked for are kept.

use std::collections::{BTreeMap, BTreeSet};

use crate::host::Host;

/// Where Debian (pciutils), Fedora/Arch (hwdata) and older systems keep the file.
pub const PCI_IDS: [&str; 3] = [
    "usr/share/misc/pci.ids",
    "usr/share/hwdata/pci.ids",
    "usr/share/pci.ids",
];

/// pci.ids is about 1.4 MB today; a file larger than this is not read.
pub const MAX_BYTES: usize = 8 << 20;

#[derive(Debug, Default, Clone)]
pub struct Names {
    /// The file the names came from (for messages), if one was read.
    pub source: Option<String>,
    vendors: BTreeMap<u16, String>,
    devices: BTreeMap<(u16, u16), String>,
    classes: BTreeMap<u8, String>,
    subclasses: BTreeMap<(u8, u8), String>,
}

impl Names {
    pub fn vendor(&self, v: u16) -> Option<&str> {
        self.vendors.get(&v).map(String::as_str)
    }
    pub fn device(&self, v: u16, d: u16) -> Option<&str> {
        self.devices.get(&(v, d)).map(String::as_str)
    }
    /// The most specific class name: the subclass ("VGA compatible controller"), else the
    /// base class ("Display controller"), from pci.ids or, without it, a built-in table.
    pub fn class(&self, class: u32) -> String {
        let base = (class >> 16) as u8;
        let sub = (class >> 8) as u8;
        if let Some(n) = self.subclasses.get(&(base, sub)) {
            return n.clone();
        }
        if let Some(n) = self.classes.get(&base) {
            return n.clone();
        }
        builtin_class(class).to_string()
    }
    /// "NVIDIA Corporation AD104 [GeForce RTX 4070]", or None when neither is known.
    pub fn describe(&self, v: u16, d: u16) -> Option<String> {
        match (self.vendor(v), self.device(v, d)) {
            (Some(a), Some(b)) => Some(format!("{a} {b}")),
            (Some(a), None) => Some(format!("{a} device {d:04x}")),
            _ => None,
        }
    }
}

/// Class names as pci.ids spells them (PCI Code and ID Assignment spec), for hosts without
/// the file: the subclasses pt-hook's users meet, else the base class.
pub fn builtin_class(class: u32) -> &'static str {
    match (class >> 16, (class >> 8) & 0xff) {
        (0x00, _) => "Unclassified device",
        (0x01, 0x00) => "SCSI storage controller",
        (0x01, 0x01) => "IDE interface",
        (0x01, 0x04) => "RAID bus controller",
        (0x01, 0x06) => "SATA controller",
        (0x01, 0x07) => "Serial Attached SCSI controller",
        (0x01, 0x08) => "Non-Volatile memory controller",
        (0x01, _) => "Mass storage controller",
        (0x02, 0x00) => "Ethernet controller",
        (0x02, _) => "Network controller",
        (0x03, 0x00) => "VGA compatible controller",
        (0x03, 0x02) => "3D controller",
        (0x03, _) => "Display controller",
        (0x04, 0x01) => "Multimedia audio controller",
        (0x04, 0x03) => "Audio device",
        (0x04, _) => "Multimedia controller",
        (0x05, _) => "Memory controller",
        (0x06, 0x00) => "Host bridge",
        (0x06, 0x01) => "ISA bridge",
        (0x06, 0x04) => "PCI bridge",
        (0x06, _) => "Bridge",
        (0x07, _) => "Communication controller",
        (0x08, 0x06) => "IOMMU",
        (0x08, _) => "Generic system peripheral",
        (0x09, _) => "Input device controller",
        (0x0a, _) => "Docking station",
        (0x0b, _) => "Processor",
        (0x0c, 0x03) => "USB controller",
        (0x0c, 0x05) => "SMBus",
        (0x0c, _) => "Serial bus controller",
        (0x0d, _) => "Wireless controller",
        (0x0e, _) => "Intelligent controller",
        (0x0f, _) => "Satellite communications controller",
        (0x10, _) => "Encryption controller",
        (0x11, _) => "Signal processing controller",
        (0x12, _) => "Processing accelerators",
        (0x13, _) => "Non-Essential Instrumentation",
        (0x40, _) => "Coprocessor",
        (0xff, _) => "Unassigned class",
        _ => "Unknown class",
    }
}

/// Parses pci.ids text, keeping only the vendors/devices in `want` (all classes: they are few).
pub fn parse(text: &str, want: &BTreeSet<(u16, u16)>) -> Names {
    let want_vendors: BTreeSet<u16> = want.iter().map(|(v, _)| *v).collect();
    let mut n = Names::default();
    // The vendor (or class) the current indented lines belong to.
    let mut vendor: Option<u16> = None;
    let mut class: Option<u8> = None;
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("C ") {
            // "C 03  Display controller"
            vendor = None;
            class = None;
            if let Some((id, name)) = split_id(rest, 2) {
                let c = id as u8;
                class = Some(c);
                n.classes.insert(c, name.to_string());
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix('\t') {
            if rest.starts_with('\t') {
                continue; // subsystem or prog-if lines
            }
            if let Some(v) = vendor {
                if let Some((id, name)) = split_id(rest, 4) {
                    if want.contains(&(v, id as u16)) {
                        n.devices.insert((v, id as u16), name.to_string());
                    }
                }
            } else if let Some(c) = class {
                if let Some((id, name)) = split_id(rest, 2) {
                    n.subclasses.insert((c, id as u8), name.to_string());
                }
            }
            continue;
        }
        // "10de  NVIDIA Corporation"; other top-level lists (device classes excepted) end
        // the vendor part.
        class = None;
        vendor = split_id(line, 4).and_then(|(id, name)| {
            let v = id as u16;
            if want_vendors.contains(&v) {
                n.vendors.insert(v, name.to_string());
                Some(v)
            } else {
                // Still a vendor: its devices are skipped without a lookup.
                None
            }
        });
    }
    n
}

/// "10de  NVIDIA Corporation" → (0x10de, "NVIDIA Corporation") when the id has `digits` hex
/// digits followed by two spaces.
fn split_id(s: &str, digits: usize) -> Option<(u32, &str)> {
    let id = s.get(..digits)?;
    let name = s.get(digits..)?.strip_prefix("  ")?.trim();
    if !id.bytes().all(|b| b.is_ascii_hexdigit()) || name.is_empty() {
        return None;
    }
    Some((u32::from_str_radix(id, 16).ok()?, name))
}

/// Names for the given ids from the first pci.ids found on the host. A missing, unreadable,
/// oversized or non-UTF-8 file gives no names (the built-in class table still applies).
pub fn load(host: &dyn Host, want: &BTreeSet<(u16, u16)>) -> Names {
    for rel in PCI_IDS {
        if !host.exists(rel) {
            continue;
        }
        let Ok(bytes) = host.read_bytes(rel, MAX_BYTES + 1) else {
            continue;
        };
        if bytes.len() > MAX_BYTES {
            continue;
        }
        // pci.ids is UTF-8 today; older copies had Latin-1 names: keep what decodes.
        let text = String::from_utf8_lossy(&bytes);
        let mut n = parse(&text, want);
        n.source = Some(host.display(rel));
        return n;
    }
    Names::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_class_names_follow_pci_ids() {
        assert_eq!(builtin_class(0x060000), "Host bridge");
        assert_eq!(builtin_class(0x060400), "PCI bridge");
        assert_eq!(builtin_class(0x068000), "Bridge");
        assert_eq!(builtin_class(0xff0000), "Unassigned class");
        assert_eq!(builtin_class(0x000000), "Unclassified device");
        assert_eq!(builtin_class(0x030200), "3D controller");
        assert_eq!(builtin_class(0x140000), "Unknown class");
    }

    const SAMPLE: &str = "# pci.ids sample\n\
1002  Advanced Micro Devices, Inc. [AMD/ATI]\n\
\t687f  Vega 10 XL/XT [Radeon RX Vega 56/64]\n\
\t\t1002 0b36  RX Vega64\n\
10de  NVIDIA Corporation\n\
\t2786  AD104 [GeForce RTX 4070]\n\
\t22bc  AD104 High Definition Audio Controller\n\
8086  Intel Corporation\n\
\t15f3  Ethernet Controller I225-V\n\
\n\
# List of known device classes\n\
C 02  Network controller\n\
\t00  Ethernet controller\n\
C 03  Display controller\n\
\t00  VGA compatible controller\n\
\t\t00  VGA controller\n\
C 04  Multimedia controller\n\
\t03  Audio device\n";

    #[test]
    fn only_wanted_ids_are_kept() {
        let want: BTreeSet<(u16, u16)> = [(0x10de, 0x2786), (0x8086, 0x9999)].into();
        let n = parse(SAMPLE, &want);
        assert_eq!(n.vendor(0x10de), Some("NVIDIA Corporation"));
        assert_eq!(n.device(0x10de, 0x2786), Some("AD104 [GeForce RTX 4070]"));
        assert_eq!(n.device(0x10de, 0x22bc), None, "not asked for");
        assert_eq!(n.vendor(0x1002), None, "not asked for");
        assert_eq!(
            n.describe(0x8086, 0x9999).as_deref(),
            Some("Intel Corporation device 9999")
        );
        assert_eq!(n.describe(0x1af4, 0x1041), None);
        assert_eq!(n.class(0x030000), "VGA compatible controller");
        assert_eq!(n.class(0x040300), "Audio device");
        // A subclass pci.ids lacks falls back to its base class name.
        assert_eq!(n.class(0x0380ff), "Display controller");
        // No such class in the file: the built-in table.
        assert_eq!(n.class(0x010802), "Non-Volatile memory controller");
    }

    #[test]
    fn subsystem_lines_do_not_leak() {
        let want: BTreeSet<(u16, u16)> = [(0x1002, 0x0b36), (0x1002, 0x687f)].into();
        let n = parse(SAMPLE, &want);
        assert_eq!(n.device(0x1002, 0x0b36), None);
        assert_eq!(
            n.device(0x1002, 0x687f),
            Some("Vega 10 XL/XT [Radeon RX Vega 56/64]")
        );
    }

    #[test]
    fn loads_from_the_first_file_and_bounds_size() {
        let s = crate::host::sim::SimHost::new();
        let want: BTreeSet<(u16, u16)> = [(0x10de, 0x2786)].into();
        assert!(load(&s, &want).source.is_none());
        let dir = s.root_dir().join("usr/share/hwdata");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pci.ids"), SAMPLE).unwrap();
        let n = load(&s, &want);
        assert!(n
            .source
            .as_deref()
            .unwrap()
            .ends_with("usr/share/hwdata/pci.ids"));
        assert_eq!(n.device(0x10de, 0x2786), Some("AD104 [GeForce RTX 4070]"));
        let big = "#\n".repeat(MAX_BYTES / 2 + 1);
        std::fs::write(dir.join("pci.ids"), big).unwrap();
        assert!(load(&s, &want).source.is_none());
    }
}
