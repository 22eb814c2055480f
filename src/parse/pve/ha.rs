//! The HA manager's files in `/etc/pve/ha/` (pve-ha-manager), as far as they decide where a
//! VM may run: `resources.cfg` (which guests HA manages, and their group), `groups.cfg`
//! (node lists; `restricted` keeps a resource on them) and, since PVE 9, `rules.cfg`
//! (`node-affinity` rules; `strict` keeps a resource on the rule's nodes; PVE 9 migrates
//! every group into a rule named `ha-group-NAME` and drops `group` from the resources).
//!
//! All three are `PVE::SectionConfig` files:
//!
//! ```text
//! vm: 100
//!     group gpu
//!     state started
//!
//! group: gpu
//!     nodes pve1:2,pve2,pve3
//!     restricted 1
//!
//! node-affinity: ha-group-gpu
//!     resources vm:100,vm:101
//!     nodes pve1:2,pve2
//!     strict 1
//! ```
//! (indented with a tab). A header is `TYPE: ID` at the start of a line, the indented
//! `key [value]` lines up to the next empty line belong to it, `#` lines are skipped. A key
//! without a value is a boolean set to true (`disable` alone disables a rule). What Proxmox
//! would skip is skipped here and reported in the warnings; only an oversized file is an error.

use serde::Serialize;

use super::config::valid_node_name;
use super::{check_size, parse_bool, ParseError};

/// One section of a SectionConfig file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub kind: String,
    pub id: String,
    /// `key value` lines in file order; a key alone has an empty value.
    pub props: Vec<(String, String)>,
    /// 1-based line of the header.
    pub line: usize,
}

impl Section {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.props
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean property: absent is `default`, a key alone is true.
    fn flag(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(default),
            Some("") => Ok(true),
            Some(v) => parse_bool(v).ok_or_else(|| format!("{key}: {v:?} is not a boolean")),
        }
    }
}

/// Parses a SectionConfig file into its sections; lines outside a section and malformed
/// headers are skipped with a warning, as `PVE::SectionConfig::parse_config` does.
pub fn parse_sections(
    text: &str,
    file: &str,
) -> Result<(Vec<Section>, Vec<ParseError>), ParseError> {
    check_size(text, file)?;
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    let mut cur: Option<Section> = None;
    for (i, raw) in text.split('\n').enumerate() {
        let n = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim_start().starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            out.extend(cur.take());
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            match cur.as_mut() {
                Some(s) => {
                    let t = line.trim();
                    let (k, v) = t
                        .split_once(char::is_whitespace)
                        .map(|(k, v)| (k, v.trim()))
                        .unwrap_or((t, ""));
                    s.props.push((k.to_string(), v.to_string()));
                }
                None => warnings.push(ParseError::new(
                    file,
                    n,
                    "ignored indented line outside a section",
                )),
            }
            continue;
        }
        out.extend(cur.take());
        match line.split_once(':') {
            Some((kind, id))
                if !kind.is_empty()
                    && !kind.contains(char::is_whitespace)
                    && !id.trim().is_empty()
                    && !id.trim().contains(char::is_whitespace) =>
            {
                cur = Some(Section {
                    kind: kind.to_ascii_lowercase(),
                    id: id.trim().to_string(),
                    props: Vec::new(),
                    line: n,
                });
            }
            _ => warnings.push(ParseError::new(
                file,
                n,
                format!("ignored line: not a section header `TYPE: ID`: {line:?}"),
            )),
        }
    }
    out.extend(cur.take());
    Ok((out, warnings))
}

/// A node with an optional priority, as in `nodes pve1:2,pve2`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodePrio {
    pub node: String,
    pub priority: Option<u32>,
}

/// `PVE::Tools::split_list` of a node list, each entry `NODE[:PRIORITY]`; invalid entries
/// are left out and named in the error list.
fn node_list(v: &str) -> (Vec<NodePrio>, Vec<String>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for e in v
        .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .filter(|e| !e.is_empty())
    {
        let (node, prio) = match e.split_once(':') {
            Some((n, p)) => (n, p.parse::<u32>().ok().map(Some).unwrap_or(None)),
            None => (e, None),
        };
        let prio_ok = e
            .split_once(':')
            .is_none_or(|(_, p)| p.parse::<u32>().is_ok());
        if valid_node_name(node) && prio_ok {
            ok.push(NodePrio {
                node: node.to_string(),
                priority: prio,
            });
        } else {
            bad.push(e.to_string());
        }
    }
    (ok, bad)
}

/// `vm: 100` / `ct: 101` in resources.cfg.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HaResource {
    /// "vm" or "ct".
    pub kind: String,
    pub vmid: u32,
    /// The HA group (PVE 8 and older; PVE 9 moves it into a node-affinity rule).
    pub group: Option<String>,
    /// `started` (default), `stopped`, `disabled`, `ignored`.
    pub state: String,
    pub line: usize,
}

impl HaResource {
    /// The resource id HA rules use: "vm:100".
    pub fn sid(&self) -> String {
        format!("{}:{}", self.kind, self.vmid)
    }
    /// HA acts on it: every state but `ignored` (PVE::HA::Config treats those as unmanaged).
    pub fn managed(&self) -> bool {
        self.state != "ignored"
    }
}

/// Parses resources.cfg; sections other than `vm:`/`ct:` with a numeric id are skipped.
pub fn parse_resources(
    text: &str,
    file: &str,
) -> Result<(Vec<HaResource>, Vec<ParseError>), ParseError> {
    let (sections, mut warnings) = parse_sections(text, file)?;
    let mut out = Vec::new();
    for s in sections {
        if s.kind != "vm" && s.kind != "ct" {
            warnings.push(ParseError::new(
                file,
                s.line,
                format!("skipped resource of unknown type {:?}", s.kind),
            ));
            continue;
        }
        let Ok(vmid) = s.id.parse::<u32>() else {
            warnings.push(ParseError::new(
                file,
                s.line,
                format!("skipped {}: {:?} is not a guest id", s.kind, s.id),
            ));
            continue;
        };
        let state = match s.get("state") {
            None | Some("") | Some("enabled") => "started".to_string(),
            Some(v) => v.to_string(),
        };
        out.push(HaResource {
            kind: s.kind.clone(),
            vmid,
            group: s.get("group").filter(|g| !g.is_empty()).map(str::to_string),
            state,
            line: s.line,
        });
    }
    Ok((out, warnings))
}

/// `group: NAME` in groups.cfg.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HaGroup {
    pub name: String,
    pub nodes: Vec<NodePrio>,
    /// Resources may run only on the group's nodes (default: false, any node when all group
    /// nodes are offline).
    pub restricted: bool,
    pub line: usize,
}

pub fn parse_groups(text: &str, file: &str) -> Result<(Vec<HaGroup>, Vec<ParseError>), ParseError> {
    let (sections, mut warnings) = parse_sections(text, file)?;
    let mut out = Vec::new();
    for s in sections {
        if s.kind != "group" {
            warnings.push(ParseError::new(
                file,
                s.line,
                format!("skipped section of unknown type {:?}", s.kind),
            ));
            continue;
        }
        let (nodes, bad) = node_list(s.get("nodes").unwrap_or(""));
        for b in bad {
            warnings.push(ParseError::new(
                file,
                s.line,
                format!("group {}: skipped node entry {b:?}", s.id),
            ));
        }
        let restricted = s.flag("restricted", false).unwrap_or_else(|e| {
            warnings.push(ParseError::new(
                file,
                s.line,
                format!("group {}: {e}", s.id),
            ));
            false
        });
        out.push(HaGroup {
            name: s.id.clone(),
            nodes,
            restricted,
            line: s.line,
        });
    }
    Ok((out, warnings))
}

/// `node-affinity: NAME` in rules.cfg (other rule types, such as `resource-affinity`, say
/// nothing about nodes and are left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeAffinity {
    pub name: String,
    /// Resource ids: "vm:100".
    pub resources: Vec<String>,
    pub nodes: Vec<NodePrio>,
    /// Only these nodes (default: false, any node when none of them is available).
    pub strict: bool,
    pub disabled: bool,
    pub line: usize,
}

pub fn parse_rules(
    text: &str,
    file: &str,
) -> Result<(Vec<NodeAffinity>, Vec<ParseError>), ParseError> {
    let (sections, mut warnings) = parse_sections(text, file)?;
    let mut out = Vec::new();
    for s in sections {
        if s.kind != "node-affinity" {
            continue;
        }
        let (nodes, bad) = node_list(s.get("nodes").unwrap_or(""));
        for b in bad {
            warnings.push(ParseError::new(
                file,
                s.line,
                format!("rule {}: skipped node entry {b:?}", s.id),
            ));
        }
        let mut flag = |k: &str| {
            s.flag(k, false).unwrap_or_else(|e| {
                warnings.push(ParseError::new(file, s.line, format!("rule {}: {e}", s.id)));
                false
            })
        };
        let strict = flag("strict");
        let disabled = flag("disable");
        let resources = s
            .get("resources")
            .unwrap_or("")
            .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect();
        out.push(NodeAffinity {
            name: s.id.clone(),
            resources,
            nodes,
            strict,
            disabled,
            line: s.line,
        });
    }
    Ok((out, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The shapes pve-ha-manager writes (tab-indented, blank line between sections).
    const RESOURCES: &str = "vm: 100\n\tgroup gpu\n\tstate started\n\tmax_restart 1\n\nct: 105\n\tstate ignored\n\nvm: 101\n\tcomment no group\n\nvm: abc\n\tstate started\n";
    const GROUPS: &str = "group: gpu\n\tnodes pve1:2,pve2,pve3:1\n\tnofailback 0\n\trestricted 1\n\ngroup: loose\n\tnodes pve1\n\tcomment preferred node\n";
    // From pve-ha-manager's rules tests: `disable` alone disables; other rule types exist.
    const RULES: &str = "# generated\nnode-affinity: ha-group-gpu\n\tresources vm:100,vm:102\n\tnodes pve1:2,pve2\n\tstrict 1\n\tcomment Generated from HA group 'gpu'.\n\nnode-affinity: off\n\tresources vm:103\n\tnodes pve2\n\tdisable\n\nresource-affinity: apart\n\tresources vm:100,vm:101\n\taffinity negative\n\nnode-affinity: loose\n\tresources vm:104\n\tnodes pve3\n";

    #[test]
    fn resources() {
        let (r, w) = parse_resources(RESOURCES, "resources.cfg").unwrap();
        assert_eq!(r.len(), 3, "{r:?}");
        assert_eq!(r[0].sid(), "vm:100");
        assert_eq!(r[0].group.as_deref(), Some("gpu"));
        assert_eq!(r[0].state, "started");
        assert!(r[0].managed());
        assert_eq!(r[1].sid(), "ct:105");
        assert!(!r[1].managed());
        assert_eq!(r[2].group, None);
        assert_eq!(r[2].state, "started");
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].line, 12);
    }

    #[test]
    fn groups() {
        let (g, w) = parse_groups(GROUPS, "groups.cfg").unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].name, "gpu");
        assert!(g[0].restricted);
        assert_eq!(
            g[0].nodes,
            vec![
                NodePrio {
                    node: "pve1".into(),
                    priority: Some(2)
                },
                NodePrio {
                    node: "pve2".into(),
                    priority: None
                },
                NodePrio {
                    node: "pve3".into(),
                    priority: Some(1)
                },
            ]
        );
        assert!(!g[1].restricted);
    }

    #[test]
    fn rules() {
        let (r, w) = parse_rules(RULES, "rules.cfg").unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(r.len(), 3, "{r:?}");
        assert_eq!(r[0].name, "ha-group-gpu");
        assert_eq!(r[0].resources, vec!["vm:100", "vm:102"]);
        assert!(r[0].strict && !r[0].disabled);
        assert_eq!(r[0].nodes.len(), 2);
        assert!(r[1].disabled && !r[1].strict);
        assert_eq!(r[2].name, "loose");
        assert!(!r[2].strict);
    }

    #[test]
    fn junk_is_skipped_not_fatal() {
        let (s, w) =
            parse_sections("\tstray\nnot a header\nvm: 1\n\tstate\n\x00:\n", "x.cfg").unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].get("state"), Some(""));
        assert_eq!(w.len(), 3, "{w:?}");
        let (g, w) = parse_groups("group: g\n\tnodes ../etc,pve1:x,ok\n", "g.cfg").unwrap();
        assert_eq!(g[0].nodes.len(), 1);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(parse_sections(&"x".repeat(super::super::MAX_CONFIG_BYTES + 1), "big").is_err());
    }
}
