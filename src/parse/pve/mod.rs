//! Proxmox VE configuration: VM configs (`/etc/pve/qemu-server/VMID.conf`), their `hostpciN`
//! values, PCI resource mappings (`/etc/pve/mapping/pci.cfg`) and qemu-server's PCI
//! reservations (`/run/qemu-server/pci-id-reservations`).
//!
//! Everything here is pure text → data: callers read the files (through the host layer) and
//! pass the text in. No parser panics on any input.

// Part of the parsers' API is used only by tests and by later operator tools (doctor).
#![allow(dead_code)]

pub mod config;
pub mod ha;
pub mod hostpci;
pub mod mapping;
pub mod members;

#[cfg(test)]
mod fixtures_test;

use std::fmt;

use serde::Serialize;

/// Files larger than this are refused: a real VM config or pci.cfg is a few KiB.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// A problem in a configuration file, with its place: `FILE:LINE: message`.
/// `line` is 1-based; 0 means the whole file (e.g. it is too large).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{file}{}: {message}", LineSuffix(*.line))]
pub struct ParseError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl ParseError {
    pub fn new(file: &str, line: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            file: file.to_string(),
            line,
            message: message.into(),
        }
    }
}

struct LineSuffix(usize);

impl fmt::Display for LineSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 > 0 {
            write!(f, ":{}", self.0)
        } else {
            Ok(())
        }
    }
}

/// Refuses input above [`MAX_CONFIG_BYTES`].
pub(crate) fn check_size(text: &str, file: &str) -> Result<(), ParseError> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ParseError::new(
            file,
            0,
            format!(
                "file is {} bytes, more than the {} bytes pt-hook accepts",
                text.len(),
                MAX_CONFIG_BYTES
            ),
        ));
    }
    Ok(())
}

/// Proxmox booleans (`PVE::JSONSchema::parse_boolean`): 1/on/yes/true, 0/off/no/false,
/// case-insensitive.
pub(crate) fn parse_bool(v: &str) -> Option<bool> {
    const TRUE: [&str; 4] = ["1", "on", "yes", "true"];
    const FALSE: [&str; 4] = ["0", "off", "no", "false"];
    if TRUE.iter().any(|t| t.eq_ignore_ascii_case(v)) {
        Some(true)
    } else if FALSE.iter().any(|t| t.eq_ignore_ascii_case(v)) {
        Some(false)
    } else {
        None
    }
}

/// Serializes addresses through their Display form (`PciAddr` has no `Serialize` of its own).
pub(crate) fn ser_display_vec<T: fmt::Display, S: serde::Serializer>(
    v: &[T],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|x| x.to_string()))
}

pub(crate) fn ser_display<T: fmt::Display, S: serde::Serializer>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A Proxmox VM id as given on a command line: digits only, 100 or more.
pub fn parse_vmid(s: &str) -> crate::error::Result<u32> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(crate::error::Error::Usage(format!(
            "invalid VM id {s:?}: expected a number such as 100"
        )));
    }
    let n: u32 = s
        .parse()
        .map_err(|_| crate::error::Error::Usage(format!("invalid VM id {s:?}")))?;
    if n < 100 {
        return Err(crate::error::Error::Usage(format!(
            "invalid VM id {s:?}: Proxmox VM ids start at 100"
        )));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_error_display_names_file_and_line() {
        let e = ParseError::new("/etc/pve/qemu-server/100.conf", 7, "hostpci0: bad");
        assert_eq!(
            e.to_string(),
            "/etc/pve/qemu-server/100.conf:7: hostpci0: bad"
        );
        let e = ParseError::new("/etc/pve/mapping/pci.cfg", 0, "too large");
        assert_eq!(e.to_string(), "/etc/pve/mapping/pci.cfg: too large");
    }

    #[test]
    fn booleans_like_proxmox() {
        for t in ["1", "on", "yes", "true", "TRUE", "Yes"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["0", "off", "no", "false", "OFF"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        for bad in ["", "2", "y", "enable", "truee", " 1"] {
            assert_eq!(parse_bool(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn size_limit() {
        let big = "a".repeat(MAX_CONFIG_BYTES + 1);
        let e = check_size(&big, "f").unwrap_err();
        assert_eq!(e.line, 0);
        assert!(check_size(&big[..MAX_CONFIG_BYTES], "f").is_ok());
    }
}
