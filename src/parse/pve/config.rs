//! `/etc/pve/qemu-server/VMID.conf`, as `PVE::QemuServer::parse_vm_config` reads it.
//!
//! Only the current configuration counts: the part before the first `[section]` header
//! (`[PENDING]`, `[special:cloudinit]`, `[special:fleecing]`, `[snapname]`, or any other
//! bracketed name). qemu-server applies `[PENDING]` changes before it runs the pre-start
//! hook, so at pre-start the current section is what will start.

use serde::Serialize;

use super::hostpci::{hostpci_index, parse_hostpci, HostPci};
use super::{check_size, parse_bool, ParseError};

/// One `key: value` line of the current section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigLine {
    pub key: String,
    pub value: String,
    /// 1-based.
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmConfig {
    pub vmid: u32,
    /// Every `key: value` of the current section, in file order (hostpci lines included).
    pub options: Vec<ConfigLine>,
    /// Parsed `hostpciN`, ordered by N.
    pub hostpci: Vec<HostPci>,
    /// Names of the sections after the current one, in file order (`PENDING`,
    /// `special:cloudinit`, snapshot names …). Informational; their content is not parsed.
    pub sections: Vec<String>,
}

impl VmConfig {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|o| o.key == key)
            .map(|o| o.value.as_str())
    }

    /// `template: 1`: Proxmox starts templates only for backups, without hostpci devices.
    pub fn is_template(&self) -> bool {
        self.get("template").and_then(parse_bool).unwrap_or(false)
    }

    /// `lock: backup|migrate|…`, if set.
    pub fn lock(&self) -> Option<&str> {
        self.get("lock")
    }

    /// Whether a `[PENDING]` section follows (changes not applied yet).
    pub fn has_pending(&self) -> bool {
        self.sections
            .iter()
            .any(|s| s.eq_ignore_ascii_case("PENDING"))
    }
}

/// A section header as qemu-server recognises one: `[` … `]` with no `]` inside, optional
/// trailing whitespace. Returns the name.
fn section_header(line: &str) -> Option<&str> {
    let inner = line.trim_end().strip_prefix('[')?.strip_suffix(']')?;
    if inner.contains(']') {
        return None;
    }
    Some(inner)
}

/// `^([a-z][a-z_\-]*\d*):\s*(.*?)\s*$` — qemu-server's key syntax.
fn split_key_value(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.split_once(':')?;
    let letters_end = key
        .bytes()
        .position(|b| !(b.is_ascii_lowercase() || b == b'_' || b == b'-'))
        .unwrap_or(key.len());
    let (head, digits) = key.split_at(letters_end);
    let key_ok = head.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && digits.bytes().all(|b| b.is_ascii_digit());
    if !key_ok {
        return None;
    }
    Some((key, value.trim()))
}

/// Shortens a line for an error message without cutting a UTF-8 character.
fn excerpt(line: &str) -> String {
    const MAX: usize = 80;
    if line.chars().count() <= MAX {
        format!("{line:?}")
    } else {
        let s: String = line.chars().take(MAX).collect();
        format!("{s:?}…")
    }
}

/// Parses a VM config. `file` is only used in error messages.
///
/// Errors: a line of the current section that is not `key: value` (or a `#` comment, or
/// blank); a key given twice; a `hostpci*` key other than hostpci0..15; a hostpci value
/// Proxmox would refuse. Sections after the current one are not checked (Proxmox itself
/// tolerates duplicate and unknown sections there).
pub fn parse_vm_config(text: &str, file: &str, vmid: u32) -> Result<VmConfig, ParseError> {
    check_size(text, file)?;
    let mut cfg = VmConfig {
        vmid,
        options: Vec::new(),
        hostpci: Vec::new(),
        sections: Vec::new(),
    };
    let mut in_current = true;

    for (i, raw) in text.split('\n').enumerate() {
        let lineno = i + 1;
        if let Some(name) = section_header(raw) {
            in_current = false;
            cfg.sections.push(name.to_string());
            continue;
        }
        if !in_current {
            continue;
        }
        if raw.trim().is_empty() || raw.starts_with('#') {
            continue;
        }
        let Some((key, value)) = split_key_value(raw) else {
            return Err(ParseError::new(
                file,
                lineno,
                format!("not a 'key: value' line: {}", excerpt(raw)),
            ));
        };
        if key == "description" {
            // Proxmox concatenates description lines; nothing here depends on them.
            continue;
        }
        if let Some(prev) = cfg.options.iter().find(|o| o.key == key) {
            return Err(ParseError::new(
                file,
                lineno,
                format!("{key}: duplicate key (first on line {})", prev.line),
            ));
        }
        if let Some(idx) = hostpci_index(key) {
            let idx = idx.map_err(|m| ParseError::new(file, lineno, m))?;
            let mut d = parse_hostpci(idx, value)
                .map_err(|m| ParseError::new(file, lineno, format!("{key}: {m}")))?;
            d.line = lineno;
            cfg.hostpci.push(d);
        }
        cfg.options.push(ConfigLine {
            key: key.to_string(),
            value: value.to_string(),
            line: lineno,
        });
    }
    cfg.hostpci.sort_by_key(|d| d.index);
    Ok(cfg)
}

/// The config path relative to the root directory (no leading slash). On an incoming
/// migration (`PVE_MIGRATED_FROM` non-empty) the config still lives under the source node.
pub fn vm_config_path(vmid: u32, migrated_from: Option<&str>) -> Result<String, String> {
    match migrated_from {
        None | Some("") => Ok(format!("etc/pve/qemu-server/{vmid}.conf")),
        Some(node) => {
            if !valid_node_name(node) {
                return Err(format!(
                    "PVE_MIGRATED_FROM={node:?} is not a node name (letters, digits, '-', '.')"
                ));
            }
            Ok(format!("etc/pve/nodes/{node}/qemu-server/{vmid}.conf"))
        }
    }
}

/// A host name: letters, digits, '-' and '.', starting with a letter or digit (so never
/// "." or ".."), at most 253 bytes.
pub fn valid_node_name(node: &str) -> bool {
    !node.is_empty()
        && node.len() <= 253
        && node
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::pve::hostpci::HostSource;

    const FILE: &str = "/etc/pve/qemu-server/100.conf";

    #[test]
    fn basic_and_hostpci_order() {
        let text = "# a description\n#\nbios: ovmf\nhostpci4: 00:1f.1,pcie=1\n\nhostpci0: f0:02.0\nmachine: q35\n";
        let c = parse_vm_config(text, FILE, 100).unwrap();
        assert_eq!(c.vmid, 100);
        assert_eq!(c.get("bios"), Some("ovmf"));
        assert_eq!(c.get("machine"), Some("q35"));
        assert_eq!(c.get("nothing"), None);
        let idx: Vec<u8> = c.hostpci.iter().map(|d| d.index).collect();
        assert_eq!(idx, [0, 4]);
        assert_eq!(c.hostpci[0].line, 6);
        assert_eq!(c.hostpci[1].line, 4);
        assert!(c.hostpci[1].pcie);
        assert_eq!(c.options.len(), 4);
        assert!(!c.is_template() && c.lock().is_none() && !c.has_pending());
    }

    #[test]
    fn sections_end_the_current_config() {
        let text = "hostpci0: 01:00.0\nmemory: 512\n\n[PENDING]\nhostpci1: 02:00.0\nmemory: 1024\n\
                    [special:cloudinit]\nname: x\n[snap1]\nhostpci0: 03:00.0\nhostpci0: dup\n\
                    [special:unknown]\n[:3]\ncat: nya~\n";
        let c = parse_vm_config(text, FILE, 100).unwrap();
        assert_eq!(c.hostpci.len(), 1);
        assert_eq!(c.get("memory"), Some("512"));
        assert_eq!(
            c.sections,
            [
                "PENDING",
                "special:cloudinit",
                "snap1",
                "special:unknown",
                ":3"
            ]
        );
        assert!(c.has_pending());
    }

    #[test]
    fn whitespace_and_crlf() {
        let c = parse_vm_config("memory:512\r\nname:   vm1   \r\n", FILE, 1).unwrap();
        assert_eq!(c.get("memory"), Some("512"));
        assert_eq!(c.get("name"), Some("vm1"));
    }

    #[test]
    fn template_and_lock() {
        let c = parse_vm_config("template: 1\nlock: backup\n", FILE, 1).unwrap();
        assert!(c.is_template());
        assert_eq!(c.lock(), Some("backup"));
    }

    #[test]
    fn hostpci_error_names_file_line_and_key() {
        let text = "a: 1\nb: 2\nc: 3\nd: 4\ne: 5\nf: 6\nhostpci0: zz:00.0\n";
        let e = parse_vm_config(text, FILE, 100).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/pve/qemu-server/100.conf:7: hostpci0: invalid PCI address \"zz:00.0\": bus must be 2 hex digits"
        );
    }

    #[test]
    fn errors() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "memory: 1\nmemory: 2\n",
                2,
                "memory: duplicate key (first on line 1)",
            ),
            (
                "memory: 1\nthis is junk\n",
                2,
                "not a 'key: value' line: \"this is junk\"",
            ),
            ("Memory: 1\n", 1, "not a 'key: value'"),
            (" memory: 1\n", 1, "not a 'key: value'"),
            ("1memory: 1\n", 1, "not a 'key: value'"),
            ("net0x: 1\n", 1, "not a 'key: value'"),
            ("[unterminated\n", 1, "not a 'key: value'"),
            (
                "hostpci16: 01:00.0\n",
                1,
                "hostpci16: not a valid hostpci key",
            ),
            ("hostpci0: 01:00.0\nhostpci0: 02:00.0\n", 2, "duplicate key"),
            (
                "hostpci2: mapping=a,host=01:00.0\n",
                1,
                "hostpci2: cannot set both",
            ),
        ];
        for (text, line, want) in cases {
            let e = parse_vm_config(text, FILE, 100).unwrap_err();
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.message.contains(want), "{text:?}: got {e}, want {want:?}");
        }
    }

    #[test]
    fn empty_value_is_kept_and_description_key_tolerated() {
        let c = parse_vm_config("tags:\ndescription: a\ndescription: b\n", FILE, 1).unwrap();
        assert_eq!(c.get("tags"), Some(""));
        assert_eq!(c.get("description"), None);
    }

    #[test]
    fn error_excerpt_is_char_safe() {
        let line = "é".repeat(200);
        let e = parse_vm_config(&line, FILE, 1).unwrap_err();
        assert!(e.message.ends_with('…'));
    }

    #[test]
    fn mapping_source() {
        let c = parse_vm_config("hostpci0: mapping=someNic\n", FILE, 1).unwrap();
        assert_eq!(c.hostpci[0].source, HostSource::Mapping("someNic".into()));
    }

    #[test]
    fn config_paths() {
        assert_eq!(
            vm_config_path(100, None).unwrap(),
            "etc/pve/qemu-server/100.conf"
        );
        assert_eq!(
            vm_config_path(100, Some("")).unwrap(),
            "etc/pve/qemu-server/100.conf"
        );
        assert_eq!(
            vm_config_path(101, Some("pve-2.lab")).unwrap(),
            "etc/pve/nodes/pve-2.lab/qemu-server/101.conf"
        );
        for bad in ["..", ".", "a/b", "../etc", "pve 1", "-x", "pve\n", "é"] {
            assert!(vm_config_path(1, Some(bad)).is_err(), "{bad:?}");
        }
    }
}
