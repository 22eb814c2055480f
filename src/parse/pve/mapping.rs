//! `/etc/pve/mapping/pci.cfg` (`PVE::Mapping::PCI`, a `PVE::SectionConfig`) and qemu-server's
//! `/run/qemu-server/pci-id-reservations`, plus the choice Proxmox makes between the entries
//! of a mapping.
//!
//! ```text
//! fastnvme
//!     map node=pve1,path=0000:06:00.0,id=144d:a808,iommugroup=16
//!     map node=pve2,path=0000:07:00.0;0000:07:00.1,id=144d:a808
//!     description Fast NVMe
//! ```
//! (the real file indents with a tab).
//!
//! The parser is as lenient as Proxmox's: what Proxmox ignores with a warning (a malformed
//! `map` entry, a stray line, a section with an invalid name) is ignored here too and
//! reported in [`MappingFile::warnings`], so pt-hook predicts the same device. Only an
//! oversized file is an error.

use serde::Serialize;

use crate::pci::{Bdf, PciAddr, PciId};

use super::hostpci::valid_mapping_name;
use super::{check_size, parse_bool, ser_display, ser_display_vec, ParseError, MAX_CONFIG_BYTES};

/// One `map` line: the device(s) a mapping stands for on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapEntry {
    pub node: String,
    /// `path=` split at `;`: the functions passed together. An address without function is
    /// the whole device. The domain is always written out in pci.cfg.
    #[serde(serialize_with = "ser_display_vec")]
    pub paths: Vec<PciAddr>,
    /// Expected vendor:device of the (first) function.
    #[serde(serialize_with = "ser_display")]
    pub id: PciId,
    pub subsystem_id: Option<String>,
    pub iommugroup: Option<u32>,
    pub description: Option<String>,
    /// Keys this parser does not know (a newer Proxmox may); kept, and warned about.
    pub other: Vec<(String, String)>,
    /// 1-based line in pci.cfg.
    pub line: usize,
}

impl MapEntry {
    /// Paths as Proxmox writes them, `;`-separated (for messages).
    pub fn path_string(&self) -> String {
        self.paths
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(";")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PciMapping {
    pub name: String,
    /// Valid `map` entries, in file order. Several entries for one node are alternatives.
    pub maps: Vec<MapEntry>,
    pub description: Option<String>,
    /// `mdev 1`: the devices provide mediated devices.
    pub mdev: bool,
    /// `live-migration-capable 1`.
    pub live_migration_capable: bool,
    /// Other section keys, kept verbatim.
    pub other: Vec<(String, String)>,
    /// 1-based line of the section header.
    pub line: usize,
}

impl PciMapping {
    /// The entries for `node` (the short host name), in file order.
    pub fn entries_for<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a MapEntry> + 'a {
        self.maps.iter().filter(move |e| e.node == node)
    }
}

/// The parsed file with what was skipped on the way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MappingFile {
    pub mappings: Vec<PciMapping>,
    /// Lines and entries Proxmox would skip (with a warning) and so were skipped here.
    pub warnings: Vec<ParseError>,
}

impl MappingFile {
    pub fn get(&self, name: &str) -> Option<&PciMapping> {
        self.mappings.iter().find(|m| m.name == name)
    }
}

/// Parses pci.cfg and drops the warnings; see [`parse_mapping_file`] to log them.
pub fn parse_mappings(text: &str, file: &str) -> Result<Vec<PciMapping>, ParseError> {
    parse_mapping_file(text, file).map(|f| f.mappings)
}

/// Parses pci.cfg like `PVE::SectionConfig::parse_config`: a section is a name alone on a
/// line, followed by indented `key value` lines up to the next empty line; lines whose
/// first non-blank character is `#` are skipped anywhere (they do not end a section).
pub fn parse_mapping_file(text: &str, file: &str) -> Result<MappingFile, ParseError> {
    check_size(text, file)?;
    let mut out = MappingFile {
        mappings: Vec::new(),
        warnings: Vec::new(),
    };
    let warn = |line: usize, msg: String| ParseError::new(file, line, msg);
    let mut warnings = Vec::new();

    let mut lines = text
        .split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.trim_start().starts_with('#'))
        .peekable();

    while let Some((lineno, line)) = lines.next() {
        if line.is_empty() {
            continue;
        }
        // Header: `^(\S+)\s*$`.
        let name = line.trim_end();
        let is_header = !line.starts_with(char::is_whitespace)
            && !name.is_empty()
            && !name.contains(char::is_whitespace);
        if !is_header {
            warnings.push(warn(
                lineno,
                format!("ignored line outside a section: {}", q(line)),
            ));
            continue;
        }
        let valid_name = valid_mapping_name(name);
        if !valid_name {
            warnings.push(warn(
                lineno,
                format!("skipped section {}: not a valid mapping name", q(name)),
            ));
        }
        let mut m = PciMapping {
            name: name.to_string(),
            maps: Vec::new(),
            description: None,
            mdev: false,
            live_migration_capable: false,
            other: Vec::new(),
            line: lineno,
        };
        let mut seen: Vec<String> = Vec::new();
        // Section body: up to the next empty line.
        while let Some((ln, body)) = lines.next_if(|(_, l)| !l.is_empty()) {
            if !valid_name {
                continue;
            }
            let Some((key, value)) = split_body_line(body) else {
                warnings.push(warn(
                    ln,
                    format!("section '{}': ignored line {}", m.name, q(body)),
                ));
                continue;
            };
            if key != "map" {
                if seen.iter().any(|k| k == key) {
                    warnings.push(warn(
                        ln,
                        format!("section '{}': duplicate key '{key}' ignored", m.name),
                    ));
                    continue;
                }
                seen.push(key.to_string());
            }
            match key {
                "map" => match parse_map_entry(value, ln) {
                    Ok(e) => {
                        for (k, _) in &e.other {
                            warnings.push(warn(
                                ln,
                                format!("section '{}': map: unknown key '{k}' kept", m.name),
                            ));
                        }
                        m.maps.push(e);
                    }
                    Err(msg) => warnings.push(warn(
                        ln,
                        format!("section '{}': map entry skipped: {msg}", m.name),
                    )),
                },
                "description" => m.description = Some(value.to_string()),
                "mdev" | "live-migration-capable" => match parse_bool(value) {
                    Some(b) if key == "mdev" => m.mdev = b,
                    Some(b) => m.live_migration_capable = b,
                    None => warnings.push(warn(
                        ln,
                        format!("section '{}': {key}: {} is not a boolean", m.name, q(value)),
                    )),
                },
                _ => m.other.push((key.to_string(), value.to_string())),
            }
        }
        if !valid_name {
            continue;
        }
        if let Some(pos) = out.mappings.iter().position(|x| x.name == m.name) {
            // SectionConfig stores sections by id: the later one wins.
            warnings.push(warn(
                lineno,
                format!(
                    "section '{}' defined again (first on line {}); the later one is used",
                    m.name, out.mappings[pos].line
                ),
            ));
            out.mappings.remove(pos);
        }
        out.mappings.push(m);
    }
    out.warnings = warnings;
    Ok(out)
}

/// Quotes a line for a message, shortened without cutting a character.
fn q(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        format!("{:?}…", s.chars().take(MAX).collect::<String>())
    }
}

/// `^\s+(\S+)(\s+(.*\S))?\s*$`: an indented key, then an optional value.
fn split_body_line(line: &str) -> Option<(&str, &str)> {
    if !line.starts_with(char::is_whitespace) {
        return None;
    }
    let t = line.trim();
    if t.is_empty() {
        return None;
    }
    match t.split_once(char::is_whitespace) {
        Some((k, v)) => Some((k, v.trim())),
        None => Some((t, "")),
    }
}

fn valid_hex_pair(v: &str) -> bool {
    v.len() == 9
        && v.as_bytes().get(4) == Some(&b':')
        && v.bytes()
            .enumerate()
            .all(|(i, b)| i == 4 || b.is_ascii_hexdigit())
}

/// Parses one `map` property string: `node=…,path=…,id=…[,subsystem-id=…][,iommugroup=N]
/// [,description=…]`.
pub fn parse_map_entry(value: &str, line: usize) -> Result<MapEntry, String> {
    let mut node = None;
    let mut paths = None;
    let mut id = None;
    let mut e = MapEntry {
        node: String::new(),
        paths: Vec::new(),
        id: PciId {
            vendor: 0,
            device: 0,
        },
        subsystem_id: None,
        iommugroup: None,
        description: None,
        other: Vec::new(),
        line,
    };
    let mut seen: Vec<&str> = Vec::new();
    for part in value.split(',') {
        if part.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!("{} has no key (expected key=value)", q(part)));
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || v.is_empty() {
            return Err(format!("{} is not key=value", q(part)));
        }
        if seen.contains(&k) {
            return Err(format!("duplicate key '{k}'"));
        }
        seen.push(k);
        match k {
            "node" => {
                if !super::config::valid_node_name(v) {
                    return Err(format!("node: {} is not a node name", q(v)));
                }
                node = Some(v.to_string());
            }
            "path" => {
                let mut list = Vec::new();
                for p in v.split(';') {
                    let p = p.trim();
                    // The domain is required here (Proxmox's pattern has no optional part).
                    if p.split('.').next().map(|s| s.matches(':').count()) != Some(2) {
                        return Err(format!("path: {} needs the domain (DDDD:BB:DD[.F])", q(p)));
                    }
                    list.push(PciAddr::parse(p).map_err(|e| format!("path: {e}"))?);
                }
                paths = Some(list);
            }
            "id" => {
                if !valid_hex_pair(v) {
                    return Err(format!("id: {} is not vendor:device", q(v)));
                }
                id = PciId::parse(v);
            }
            "subsystem-id" => {
                if !valid_hex_pair(v) {
                    return Err(format!("subsystem-id: {} is not vendor:device", q(v)));
                }
                e.subsystem_id = Some(v.to_ascii_lowercase());
            }
            "iommugroup" => {
                e.iommugroup = Some(
                    v.parse::<u32>()
                        .map_err(|_| format!("iommugroup: {} is not a number", q(v)))?,
                );
            }
            "description" => e.description = Some(v.to_string()),
            _ => e.other.push((k.to_string(), v.to_string())),
        }
    }
    e.node = node.ok_or("node is missing")?;
    e.paths = paths.ok_or("path is missing")?;
    e.id = id.ok_or("id is missing")?;
    Ok(e)
}

/// Picks the entry of `m` Proxmox will use on `node`: the first entry for the node that
/// `taken` does not object to. `taken` returns why an entry cannot be used (reserved by or
/// in use by another VM, already given to an earlier hostpciN of this VM …), or None.
///
/// Not for `mdev` mappings: Proxmox chooses those when it creates the mediated device.
/// With a single entry Proxmox does not look for an alternative and fails the start if it
/// is taken; the error here says the same thing earlier.
pub fn choose_entry<'a>(
    m: &'a PciMapping,
    node: &str,
    taken: &dyn Fn(&MapEntry) -> Option<String>,
) -> Result<&'a MapEntry, String> {
    let mut reasons = Vec::new();
    for e in m.maps.iter().filter(|e| e.node == node) {
        match taken(e) {
            None => return Ok(e),
            Some(why) => reasons.push(format!("{}: {why}", e.path_string())),
        }
    }
    if reasons.is_empty() {
        let mut nodes: Vec<&str> = Vec::new();
        for e in &m.maps {
            if !nodes.contains(&e.node.as_str()) {
                nodes.push(&e.node);
            }
        }
        let has = if nodes.is_empty() {
            "it has no valid entry at all".to_string()
        } else {
            format!("it has entries for {}", nodes.join(", "))
        };
        Err(format!(
            "mapping {} has no entry for node {node} ({has}); this node's name is the short \
             host name, or PT_HOOK_NODE if set (e.g. PT_HOOK_NODE={} pt-hook plan VMID), or \
             add this node's paths to the mapping (Datacenter > Resource Mappings)",
            m.name,
            nodes.first().copied().unwrap_or("pve1")
        ))
    } else {
        Err(format!(
            "mapping {} has no free entry on node {node} ({})",
            m.name,
            reasons.join("; ")
        ))
    }
}

/// How a reservation in /run/qemu-server/pci-id-reservations is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReservationHolder {
    /// `time:T`: a start in progress; valid while now < T (Unix seconds).
    Time(u64),
    /// `pid:P`: held by the running QEMU process P of the VM.
    Pid(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Reservation {
    pub bdf: Bdf,
    pub vmid: u32,
    pub holder: ReservationHolder,
}

impl Reservation {
    /// Whether this reservation keeps `vmid` from using the device, by the rule of
    /// qemu-server's `reserve_pci_usage`: another VM's `time:` reservation still in the
    /// future, or another VM's `pid:` reservation whose process is that VM's running QEMU.
    /// `running_pid(vmid)` returns the PID of the VM's QEMU if it runs. Returns the reason.
    pub fn blocks(
        &self,
        vmid: u32,
        now: u64,
        running_pid: &dyn Fn(u32) -> Option<u32>,
    ) -> Option<String> {
        if self.vmid == vmid {
            return None;
        }
        match self.holder {
            ReservationHolder::Time(t) if t > now => {
                Some(format!("reserved for VM {} (starting)", self.vmid))
            }
            ReservationHolder::Pid(p) if running_pid(self.vmid) == Some(p) => {
                Some(format!("in use by running VM {}", self.vmid))
            }
            _ => None,
        }
    }
}

/// Parses /run/qemu-server/pci-id-reservations: lines `BDF VMID time:T` or `BDF VMID pid:P`.
/// Lines that do not parse are skipped (so does qemu-server); input past
/// [`MAX_CONFIG_BYTES`] is ignored.
pub fn parse_reservations(text: &str) -> Vec<Reservation> {
    let mut out = Vec::new();
    let mut consumed = 0usize;
    for line in text.split('\n') {
        consumed += line.len() + 1;
        if consumed > MAX_CONFIG_BYTES + 1 {
            break;
        }
        let mut f = line.split_ascii_whitespace();
        let (Some(addr), Some(vmid), Some(hold), None) = (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let Ok(bdf) = Bdf::parse(addr) else { continue };
        let Some(vmid) = parse_decimal::<u32>(vmid) else {
            continue;
        };
        let holder = match hold.split_once(':') {
            Some(("time", t)) => match parse_decimal::<u64>(t) {
                Some(t) => ReservationHolder::Time(t),
                None => continue,
            },
            Some(("pid", p)) => match parse_decimal::<u32>(p) {
                Some(p) => ReservationHolder::Pid(p),
                None => continue,
            },
            _ => continue,
        };
        out.push(Reservation { bdf, vmid, holder });
    }
    out
}

/// Digits only (no sign, no spaces), as Proxmox's `\d+`.
fn parse_decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/pve/mapping/pci.cfg";

    const SAMPLE: &str = "\
# comment before
fastnvme
\tmap node=pve1,path=0000:06:00.0,id=144d:a808,iommugroup=16
\t# comment inside does not end the section
\tmap node=pve2,path=0000:07:00.0;0000:07:00.1,id=144d:A808,subsystem-id=144D:A801
\tdescription Fast NVMe
\tmdev 0

gpu
    map id=10de:2231,iommugroup=1,node=pve1,path=0000:01:00
    mdev 1
    live-migration-capable 1
";

    #[test]
    fn parses_sections() {
        let f = parse_mapping_file(SAMPLE, FILE).unwrap();
        assert!(f.warnings.is_empty(), "{:?}", f.warnings);
        assert_eq!(f.mappings.len(), 2);
        let n = f.get("fastnvme").unwrap();
        assert_eq!(n.line, 2);
        assert_eq!(n.description.as_deref(), Some("Fast NVMe"));
        assert!(!n.mdev);
        assert_eq!(n.maps.len(), 2);
        assert_eq!(n.maps[0].node, "pve1");
        assert_eq!(n.maps[0].path_string(), "0000:06:00.0");
        assert_eq!(n.maps[0].id.to_string(), "144d:a808");
        assert_eq!(n.maps[0].iommugroup, Some(16));
        assert_eq!(n.maps[0].line, 3);
        assert_eq!(n.maps[1].path_string(), "0000:07:00.0;0000:07:00.1");
        assert_eq!(n.maps[1].id.to_string(), "144d:a808");
        assert_eq!(n.maps[1].subsystem_id.as_deref(), Some("144d:a801"));
        let g = f.get("gpu").unwrap();
        assert!(g.mdev && g.live_migration_capable);
        assert_eq!(g.maps[0].paths[0].func, None);
    }

    #[test]
    fn lenient_like_proxmox() {
        let text = "\
\tstray indented line
1bad
\tmap node=pve1,path=0000:01:00.0,id=1234:5678

ok
\tmap node=pve1,path=01:00.0,id=1234:5678
\tmap node=pve1,path=0000:02:00.0
\tmap node=pve1,path=0000:03:00.0,id=1234:5678,future-key=1
\tmap path=0000:04:00.0,id=1234:5678
\tmap node=pve1,path=0000:zz:00.0,id=1234:5678
\tmap node=pve1,path=0000:05:00.0,id=1234:5678,iommugroup=-1
\tdescription one
\tdescription two
\tmdev maybe
\tcustom-key some value
";
        let f = parse_mapping_file(text, FILE).unwrap();
        assert_eq!(f.mappings.len(), 1);
        let m = f.get("ok").unwrap();
        assert_eq!(m.maps.len(), 1);
        assert_eq!(m.maps[0].path_string(), "0000:03:00.0");
        assert_eq!(m.maps[0].other, vec![("future-key".into(), "1".into())]);
        assert_eq!(m.description.as_deref(), Some("one"));
        assert!(!m.mdev);
        assert_eq!(m.other, vec![("custom-key".into(), "some value".into())]);
        let lines: Vec<usize> = f.warnings.iter().map(|w| w.line).collect();
        assert_eq!(lines, [1, 2, 6, 7, 8, 9, 10, 11, 13, 14]);
        let all = f
            .warnings
            .iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            all.contains(
                "pci.cfg:6: section 'ok': map entry skipped: path: \"01:00.0\" needs the domain"
            ),
            "{all}"
        );
        assert!(all.contains("id is missing"), "{all}");
        assert!(all.contains("node is missing"), "{all}");
        assert!(all.contains("bus must be 2 hex digits"), "{all}");
        assert!(all.contains("iommugroup"), "{all}");
    }

    #[test]
    fn later_duplicate_section_wins() {
        let text = "a1\n\tmap node=n,path=0000:01:00.0,id=1234:5678\n\na1\n\tmap node=n,path=0000:02:00.0,id=1234:5678\n";
        let f = parse_mapping_file(text, FILE).unwrap();
        assert_eq!(f.mappings.len(), 1);
        assert_eq!(f.mappings[0].maps[0].path_string(), "0000:02:00.0");
        assert_eq!(f.warnings.len(), 1);
    }

    #[test]
    fn too_large_is_an_error() {
        let big = "x\n".repeat(MAX_CONFIG_BYTES);
        assert!(parse_mappings(&big, FILE).is_err());
    }

    fn nic() -> PciMapping {
        let text = "someNic\n\
\tmap id=8086:1520,iommugroup=2,node=localhost,path=0000:07:10.0\n\
\tmap id=8086:1520,iommugroup=2,node=other,path=0000:08:10.0\n\
\tmap id=8086:1520,iommugroup=2,node=localhost,path=0000:07:10.1\n";
        parse_mappings(text, FILE).unwrap().remove(0)
    }

    #[test]
    fn choose_first_free_entry_for_node() {
        let m = nic();
        let e = choose_entry(&m, "localhost", &|_| None).unwrap();
        assert_eq!(e.path_string(), "0000:07:10.0");
        let e = choose_entry(&m, "localhost", &|e| {
            (e.path_string() == "0000:07:10.0").then(|| "reserved by VM 101".to_string())
        })
        .unwrap();
        assert_eq!(e.path_string(), "0000:07:10.1");
        let e = choose_entry(&m, "other", &|_| None).unwrap();
        assert_eq!(e.path_string(), "0000:08:10.0");
    }

    #[test]
    fn choose_errors() {
        let m = nic();
        assert_eq!(
            choose_entry(&m, "pve3", &|_| None).unwrap_err(),
            "mapping someNic has no entry for node pve3 (it has entries for localhost, other); this \
             node's name is the short host name, or PT_HOOK_NODE if set (e.g. \
             PT_HOOK_NODE=localhost pt-hook plan VMID), or add this node's paths to the \
             mapping (Datacenter > Resource Mappings)"
        );
        let e = choose_entry(&m, "localhost", &|e| {
            Some(format!("used by VM {}", e.line * 100))
        })
        .unwrap_err();
        assert_eq!(
            e,
            "mapping someNic has no free entry on node localhost \
             (0000:07:10.0: used by VM 200; 0000:07:10.1: used by VM 400)"
        );
    }

    #[test]
    fn reservations() {
        let text = "0000:07:10.0 101 time:1700000000\n\
                    0000:07:10.1 102 pid:4242\n\
                    garbage\n\
                    0000:07:10.2 abc pid:1\n\
                    0000:07:10.3 103 pid:-1\n\
                    0000:07:10.4 103 when:5\n\
                    0000:07:10 103 pid:5\n\
                    0000:07:10.5 103 pid:5 extra\n\
                    \n\
                    07:10.6 104 pid:99999999999\n\
                    01:00.0 105 time:5";
        let r = parse_reservations(text);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].bdf.to_string(), "0000:07:10.0");
        assert_eq!(r[0].vmid, 101);
        assert_eq!(r[0].holder, ReservationHolder::Time(1_700_000_000));
        assert_eq!(r[1].holder, ReservationHolder::Pid(4242));
        assert_eq!(r[2].bdf.to_string(), "0000:01:00.0");

        let running = |vmid: u32| (vmid == 102).then_some(4242);
        // time reservation of another VM: blocks until it expires
        assert!(r[0].blocks(200, 1_699_999_999, &running).is_some());
        assert!(r[0].blocks(200, 1_700_000_000, &running).is_none());
        // own reservation never blocks
        assert!(r[0].blocks(101, 0, &running).is_none());
        // pid reservation: blocks only while that VM runs with that pid
        assert_eq!(
            r[1].blocks(200, 0, &running).as_deref(),
            Some("in use by running VM 102")
        );
        assert!(r[1].blocks(200, 0, &|_| Some(1)).is_none());
        assert!(r[1].blocks(200, 0, &|_| None).is_none());
    }
}
