//! PCI addresses and ids. A `Bdf` is validated before it can ever become a path component.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// A full PCI function address `DDDD:BB:DD.F`, always canonical lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Bdf {
    pub domain: u16,
    pub bus: u8,
    pub dev: u8,
    pub func: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid PCI address {input:?}: {why}")]
pub struct BdfError {
    pub input: String,
    pub why: &'static str,
}

/// The input as shown in an error: at most 40 characters, so a hostile argument does not
/// flood the log.
fn echo(input: &str) -> String {
    if input.chars().count() <= 40 {
        input.to_string()
    } else {
        let head: String = input.chars().take(40).collect();
        format!("{head}... ({} bytes)", input.len())
    }
}

fn hex_field(s: &str, max_len: usize, input: &str, what: &'static str) -> Result<u32, BdfError> {
    if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BdfError {
            input: echo(input),
            why: what,
        });
    }
    u32::from_str_radix(s, 16).map_err(|_| BdfError {
        input: echo(input),
        why: what,
    })
}

/// A device address that may lack its function: `[DDDD:]BB:DD[.F]` as Proxmox writes it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PciAddr {
    pub domain: u16,
    pub bus: u8,
    pub dev: u8,
    /// None means "every function of the device".
    pub func: Option<u8>,
}

impl PciAddr {
    pub fn parse(input: &str) -> Result<PciAddr, BdfError> {
        let err = |why| BdfError {
            input: echo(input),
            why,
        };
        if input.is_empty() {
            return Err(err("empty address"));
        }
        if input.len() > 12 {
            return Err(err("too long"));
        }
        let (rest, func) = match input.split_once('.') {
            Some((r, f)) => {
                let f = hex_field(f, 1, input, "function must be one digit 0-7")?;
                if f > 7 {
                    return Err(err("function must be one digit 0-7"));
                }
                (r, Some(f as u8))
            }
            None => (input, None),
        };
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, dev) = match parts.as_slice() {
            [b, d] => (0u32, *b, *d),
            [dom, b, d] => (
                hex_field(dom, 4, input, "domain must be 4 hex digits")?,
                *b,
                *d,
            ),
            _ => return Err(err("expected [DDDD:]BB:DD[.F]")),
        };
        let bus = hex_field(bus, 2, input, "bus must be 2 hex digits")?;
        let dev = hex_field(dev, 2, input, "device must be 2 hex digits")?;
        Ok(PciAddr {
            domain: domain as u16,
            bus: bus as u8,
            dev: dev as u8,
            func,
        })
    }

    pub fn matches(&self, b: &Bdf) -> bool {
        self.domain == b.domain
            && self.bus == b.bus
            && self.dev == b.dev
            && self.func.is_none_or(|f| f == b.func)
    }
}

impl fmt::Display for PciAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}", self.domain, self.bus, self.dev)?;
        if let Some(func) = self.func {
            write!(f, ".{func:x}")?;
        }
        Ok(())
    }
}

impl Bdf {
    /// Parses `DDDD:BB:DD.F` (or `BB:DD.F`, domain 0). Anything else, including path-like
    /// input, is refused.
    pub fn parse(input: &str) -> Result<Bdf, BdfError> {
        let a = PciAddr::parse(input)?;
        match a.func {
            Some(func) => Ok(Bdf {
                domain: a.domain,
                bus: a.bus,
                dev: a.dev,
                func,
            }),
            None => Err(BdfError {
                input: echo(input),
                why: "function missing (expected DDDD:BB:DD.F)",
            }),
        }
    }

    /// The slot this function lives in: functions of one slot are reset together.
    pub fn slot(&self) -> (u16, u8, u8) {
        (self.domain, self.bus, self.dev)
    }
}

impl FromStr for Bdf {
    type Err = BdfError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Bdf::parse(s)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Through `pad`, so `{:<13}` and friends line up tables.
        f.pad(&format!(
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.dev, self.func
        ))
    }
}

impl Serialize for Bdf {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Bdf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Bdf::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `vvvv:dddd` vendor/device pair.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct PciId {
    pub vendor: u16,
    pub device: u16,
}

impl PciId {
    pub fn parse(s: &str) -> Option<PciId> {
        let (v, d) = s.split_once(':')?;
        let v = v.trim_start_matches("0x");
        let d = d.trim_start_matches("0x");
        if v.len() != 4 || d.len() != 4 {
            return None;
        }
        Some(PciId {
            vendor: u16::from_str_radix(v, 16).ok()?,
            device: u16::from_str_radix(d, 16).ok()?,
        })
    }
}

impl fmt::Display for PciId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:04x}", self.vendor, self.device)
    }
}

/// Parses a sysfs hex file value such as `0x10de` or `0x030000`.
pub fn parse_sysfs_hex(s: &str) -> Option<u32> {
    let t = s.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    u32::from_str_radix(t, 16).ok()
}

/// The digits and radix of a number in C's base-0 syntax (strtoul/kstrtoul with base 0):
/// `0x`/`0X` hex, a leading `0` octal, otherwise decimal. The digits are not checked.
pub fn split_base0(s: &str) -> (&str, u32) {
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    }
}

pub const CLASS_BRIDGE_PCI: u32 = 0x0604;

/// Reset method names the kernel knows, in its default priority order.
pub const RESET_METHODS: [&str; 7] = [
    "device_specific",
    "acpi",
    "flr",
    "af_flr",
    "pm",
    "bus",
    "cxl_bus",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_display_honours_width() {
        let b = Bdf::parse("0000:01:00.0").unwrap();
        assert_eq!(format!("[{b:<14}]"), "[0000:01:00.0  ]");
        assert_eq!(format!("[{b:>13}]"), "[ 0000:01:00.0]");
        assert_eq!(format!("{b}"), "0000:01:00.0");
    }

    #[test]
    fn base0_prefixes() {
        assert_eq!(split_base0("0x1f"), ("1f", 16));
        assert_eq!(split_base0("0XA"), ("A", 16));
        assert_eq!(split_base0("010"), ("10", 8));
        assert_eq!(split_base0("0"), ("0", 10));
        assert_eq!(split_base0("12"), ("12", 10));
        assert_eq!(split_base0(""), ("", 10));
        assert_eq!(split_base0("0x"), ("", 16));
    }

    #[test]
    fn parses_full_and_short_bdf() {
        let b = Bdf::parse("0000:01:00.1").unwrap();
        assert_eq!(b.to_string(), "0000:01:00.1");
        assert_eq!(Bdf::parse("01:00.1").unwrap(), b);
        assert_eq!(
            Bdf::parse("1234:f0:43.1").unwrap().to_string(),
            "1234:f0:43.1"
        );
    }

    #[test]
    fn refuses_path_like_and_malformed() {
        for bad in [
            "",
            "../../etc",
            "0000:01:00.0/..",
            "0000:01:00.8",
            "0000:001:00.0",
            "00000:01:00.0",
            "0000:01:00",
            "0000:01:00.0 ",
            "0000:0g:00.0",
            "0000:01:00.0\n",
            "a:b:c:d.0",
        ] {
            assert!(Bdf::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn prefix_matches_all_functions() {
        let a = PciAddr::parse("f0:43").unwrap();
        assert!(a.func.is_none());
        assert!(a.matches(&Bdf::parse("0000:f0:43.1").unwrap()));
        assert!(!a.matches(&Bdf::parse("1234:f0:43.1").unwrap()));
        let a = PciAddr::parse("1234:f0:43").unwrap();
        assert!(a.matches(&Bdf::parse("1234:f0:43.1").unwrap()));
    }

    #[test]
    fn ids() {
        assert_eq!(
            PciId::parse("10de:2b85"),
            Some(PciId {
                vendor: 0x10de,
                device: 0x2b85
            })
        );
        assert_eq!(PciId::parse("10de:2b8"), None);
        assert_eq!(parse_sysfs_hex("0x030000\n"), Some(0x030000));
    }
}
