//! `hostpciN` values: the property string qemu-server's `PVE::QemuServer::PCI` parses.
//!
//! `hostpci0: 0000:01:00,pcie=1,x-vga=1` — comma-separated `key=value` items; one item
//! without `=` is the default key `host`. Addresses are `[DDDD:]BB:DD[.F]`; without a
//! function the address means every function of the device (see [`PciAddr`]).

use serde::Serialize;

use crate::pci::PciAddr;

use super::{parse_bool, ser_display_vec};

/// hostpci0 … hostpci15 (`$MAX_HOSTPCI_DEVICES` in qemu-server).
pub const MAX_HOSTPCI: u8 = 16;

/// Where the device(s) of one hostpci entry come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostSource {
    /// `host=A;B;…`: all listed addresses together (one multifunction device), in order.
    Host(#[serde(serialize_with = "ser_display_vec")] Vec<PciAddr>),
    /// `mapping=NAME`: resolved through /etc/pve/mapping/pci.cfg on this node.
    Mapping(String),
}

/// `driver=`: whether Proxmox binds vfio-pci (default) or leaves the current driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverMode {
    #[default]
    Vfio,
    Keep,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostPci {
    /// N of `hostpciN`.
    pub index: u8,
    /// 1-based line in the VM config; 0 when parsed on its own.
    pub line: usize,
    pub source: HostSource,
    pub pcie: bool,
    pub x_vga: bool,
    /// Default true.
    pub rombar: bool,
    pub romfile: Option<String>,
    /// Mediated device type: Proxmox creates an mdev instead of passing the function.
    pub mdev: Option<String>,
    pub legacy_igd: bool,
    pub driver: DriverMode,
    pub vendor_id: Option<String>,
    pub device_id: Option<String>,
    pub sub_vendor_id: Option<String>,
    pub sub_device_id: Option<String>,
    /// Keys Proxmox does not know (it would refuse them); kept so callers can warn.
    pub other: Vec<(String, String)>,
}

impl HostPci {
    /// `hostpciN`.
    pub fn key(&self) -> String {
        format!("hostpci{}", self.index)
    }

    /// Whether Proxmox binds (and resets) the device itself: not for `driver=keep` nor mdev.
    pub fn proxmox_binds_vfio(&self) -> bool {
        self.driver == DriverMode::Vfio && self.mdev.is_none()
    }
}

/// The index N of a `hostpciN` key: Some(Ok(N)) for hostpci0..hostpci15, Some(Err) for any
/// other key starting with `hostpci`, None for unrelated keys.
pub fn hostpci_index(key: &str) -> Option<Result<u8, String>> {
    let digits = key.strip_prefix("hostpci")?;
    let bad = || {
        Err(format!(
            "{key}: not a valid hostpci key (hostpci0 to hostpci{} exist)",
            MAX_HOSTPCI - 1
        ))
    };
    if digits.is_empty()
        || digits.len() > 2
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return Some(bad());
    }
    match digits.parse::<u8>() {
        Ok(n) if n < MAX_HOSTPCI => Some(Ok(n)),
        _ => Some(bad()),
    }
}

/// A mapping id as Proxmox's `pve-configid` allows (it also requires two characters at least).
pub fn valid_mapping_name(name: &str) -> bool {
    let mut b = name.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic())
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

fn hex_id(key: &str, v: &str) -> Result<String, String> {
    let ok =
        v.len() == 6 && v.starts_with("0x") && v.bytes().skip(2).all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(v.to_string())
    } else {
        Err(format!("{key}: {v:?} is not a hex id like 0x10de"))
    }
}

fn boolean(key: &str, v: &str) -> Result<bool, String> {
    parse_bool(v)
        .ok_or_else(|| format!("{key}: {v:?} is not a boolean (1/on/yes/true or 0/off/no/false)"))
}

/// Parses the value of `hostpciN`. Errors are messages without the key (the caller adds
/// `hostpciN:` and the file position).
pub fn parse_hostpci(index: u8, value: &str) -> Result<HostPci, String> {
    let mut seen: Vec<&str> = Vec::new();
    let mut host: Option<Vec<PciAddr>> = None;
    let mut mapping: Option<String> = None;
    let mut d = HostPci {
        index,
        line: 0,
        source: HostSource::Mapping(String::new()),
        pcie: false,
        x_vga: false,
        rombar: true,
        romfile: None,
        mdev: None,
        legacy_igd: false,
        driver: DriverMode::Vfio,
        vendor_id: None,
        device_id: None,
        sub_vendor_id: None,
        sub_device_id: None,
        other: Vec::new(),
    };

    for part in value.split(',') {
        // Proxmox skips empty items ("a,,b").
        if part.trim().is_empty() {
            continue;
        }
        let (key, v) = match part.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => ("host", part.trim()),
        };
        if key.is_empty() {
            return Err(format!("missing key in {part:?}"));
        }
        if v.is_empty() {
            return Err(format!("{key}: empty value"));
        }
        if seen.contains(&key) {
            return Err(format!("duplicate key {key:?}"));
        }
        seen.push(key);
        match key {
            "host" => {
                let addrs = v
                    .split(';')
                    .map(|a| PciAddr::parse(a.trim()).map_err(|e| e.to_string()))
                    .collect::<Result<Vec<_>, _>>()?;
                host = Some(addrs);
            }
            "mapping" => {
                if !valid_mapping_name(v) {
                    return Err(format!(
                        "mapping: {v:?} is not a valid mapping name (a letter, then letters, digits, '_' or '-')"
                    ));
                }
                mapping = Some(v.to_string());
            }
            "pcie" => d.pcie = boolean(key, v)?,
            "x-vga" => d.x_vga = boolean(key, v)?,
            "rombar" => d.rombar = boolean(key, v)?,
            "legacy-igd" => d.legacy_igd = boolean(key, v)?,
            "romfile" => {
                if v.contains(';') {
                    return Err(format!("romfile: {v:?} must not contain ';'"));
                }
                d.romfile = Some(v.to_string());
            }
            "mdev" => {
                // Proxmox's pattern [^/\.:]+ ; the type becomes part of a sysfs path.
                if v.contains(['/', '.', ':']) || v.chars().any(char::is_control) {
                    return Err(format!("mdev: {v:?} must not contain '/', '.' or ':'"));
                }
                d.mdev = Some(v.to_string());
            }
            "driver" => {
                d.driver = match v {
                    "vfio" => DriverMode::Vfio,
                    "keep" => DriverMode::Keep,
                    _ => return Err(format!("driver: {v:?} is neither vfio nor keep")),
                }
            }
            "vendor-id" => d.vendor_id = Some(hex_id(key, v)?),
            "device-id" => d.device_id = Some(hex_id(key, v)?),
            "sub-vendor-id" => d.sub_vendor_id = Some(hex_id(key, v)?),
            "sub-device-id" => d.sub_device_id = Some(hex_id(key, v)?),
            _ => d.other.push((key.to_string(), v.to_string())),
        }
    }

    d.source = match (host, mapping) {
        (Some(_), Some(_)) => return Err("cannot set both 'host' and 'mapping'".to_string()),
        (Some(h), None) => HostSource::Host(h),
        (None, Some(m)) => HostSource::Mapping(m),
        (None, None) => return Err("either 'host' or 'mapping' must be set".to_string()),
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(d: &HostPci) -> Vec<String> {
        match &d.source {
            HostSource::Host(a) => a.iter().map(|a| a.to_string()).collect(),
            HostSource::Mapping(m) => panic!("mapping {m}"),
        }
    }

    #[test]
    fn bare_value_is_host() {
        let d = parse_hostpci(0, "0f:12.0").unwrap();
        assert_eq!(addrs(&d), ["0000:0f:12.0"]);
        assert!(d.rombar && !d.pcie && !d.x_vga && d.driver == DriverMode::Vfio);
        assert!(d.proxmox_binds_vfio());
    }

    #[test]
    fn bare_value_may_come_after_options() {
        let d = parse_hostpci(1, "pcie=1,01:00.0").unwrap();
        assert_eq!(addrs(&d), ["0000:01:00.0"]);
        assert!(d.pcie);
    }

    #[test]
    fn prefix_and_domain_and_multiple() {
        let d = parse_hostpci(0, "f0:13").unwrap();
        assert_eq!(addrs(&d), ["0000:f0:13"]);
        let d = parse_hostpci(1, "host=1234:f0:13;0000:01:00.1").unwrap();
        assert_eq!(addrs(&d), ["1234:f0:13", "0000:01:00.1"]);
    }

    #[test]
    fn all_options() {
        let d = parse_hostpci(
            3,
            "0000:01:00,pcie=on,x-vga=yes,rombar=0,romfile=vbios.rom,legacy-igd=false,driver=keep,\
             vendor-id=0x1234,device-id=0x5678,sub-vendor-id=0x2233,sub-device-id=0x0000",
        )
        .unwrap();
        assert!(d.pcie && d.x_vga && !d.rombar && !d.legacy_igd);
        assert_eq!(d.romfile.as_deref(), Some("vbios.rom"));
        assert_eq!(d.driver, DriverMode::Keep);
        assert!(!d.proxmox_binds_vfio());
        assert_eq!(d.vendor_id.as_deref(), Some("0x1234"));
        assert_eq!(d.device_id.as_deref(), Some("0x5678"));
        assert_eq!(d.sub_vendor_id.as_deref(), Some("0x2233"));
        assert_eq!(d.sub_device_id.as_deref(), Some("0x0000"));
        assert!(d.other.is_empty());
        assert_eq!(d.key(), "hostpci3");
    }

    #[test]
    fn mapping_and_mdev() {
        let d = parse_hostpci(1, "mapping=someGpu,mdev=some-model").unwrap();
        assert_eq!(d.source, HostSource::Mapping("someGpu".into()));
        assert_eq!(d.mdev.as_deref(), Some("some-model"));
        assert!(!d.proxmox_binds_vfio());
    }

    #[test]
    fn unknown_keys_are_kept() {
        let d = parse_hostpci(0, "01:00.0,frobnicate=7").unwrap();
        assert_eq!(d.other, vec![("frobnicate".to_string(), "7".to_string())]);
    }

    #[test]
    fn empty_items_are_skipped() {
        let d = parse_hostpci(0, "01:00.0,,pcie=1,").unwrap();
        assert!(d.pcie);
    }

    #[test]
    fn errors() {
        let cases: &[(&str, &str)] = &[
            (
                "zz:00.0",
                "invalid PCI address \"zz:00.0\": bus must be 2 hex digits",
            ),
            ("01:00.0,02:00.0", "duplicate key \"host\""),
            ("host=01:00.0,01:00.1", "duplicate key \"host\""),
            ("01:00.0,pcie=1,pcie=0", "duplicate key \"pcie\""),
            ("01:00.0,mapping=x1", "cannot set both 'host' and 'mapping'"),
            ("pcie=1", "either 'host' or 'mapping' must be set"),
            ("", "either 'host' or 'mapping' must be set"),
            ("01:00.0,pcie=2", "pcie: \"2\" is not a boolean"),
            (
                "01:00.0,driver=nvidia",
                "driver: \"nvidia\" is neither vfio nor keep",
            ),
            ("mapping=1abc", "is not a valid mapping name"),
            ("mapping=a/b", "is not a valid mapping name"),
            ("01:00.0,mdev=../x", "mdev:"),
            ("01:00.0,vendor-id=1234", "vendor-id:"),
            ("01:00.0,vendor-id=0x12345", "vendor-id:"),
            ("01:00.0,=1", "missing key"),
            ("01:00.0,pcie=", "pcie: empty value"),
            ("01:00.0;", "empty address"),
            ("01:00.0,romfile=a;b", "romfile:"),
        ];
        for (input, want) in cases {
            let e = parse_hostpci(0, input).unwrap_err();
            assert!(e.contains(want), "{input:?}: got {e:?}, want {want:?}");
        }
    }

    #[test]
    fn index_keys() {
        assert_eq!(hostpci_index("hostpci0"), Some(Ok(0)));
        assert_eq!(hostpci_index("hostpci15"), Some(Ok(15)));
        for bad in [
            "hostpci16",
            "hostpci",
            "hostpci01",
            "hostpci99",
            "hostpci-1",
            "hostpcix",
        ] {
            assert!(matches!(hostpci_index(bad), Some(Err(_))), "{bad}");
        }
        assert_eq!(hostpci_index("net0"), None);
    }

    #[test]
    fn serializes_addresses_as_strings() {
        let d = parse_hostpci(0, "01:00,driver=keep").unwrap();
        let j = serde_json::to_value(&d).unwrap();
        assert_eq!(j["source"]["host"][0], "0000:01:00");
        assert_eq!(j["driver"], "keep");
        let d = parse_hostpci(0, "mapping=someNic").unwrap();
        let j = serde_json::to_value(&d).unwrap();
        assert_eq!(j["source"]["mapping"], "someNic");
    }
}
