//! doctor's cluster checks: a VM that HA may recover on another node, or that can be
//! migrated (a cluster of more than one node), needs its devices on every node it can run on.
//! A raw `hostpciN` address names a device of this node only (Proxmox refuses to migrate a VM
//! with one, and HA's recovery on another node fails or takes whatever sits at that address
//! there); a PCI mapping must have an entry for every such node, of the same model.
//!
//! Where the VM can run: a PVE 9 `node-affinity` rule naming it (strict: only its nodes;
//! otherwise every node, its nodes first), else its HA group (restricted: only the group's
//! nodes; otherwise every node), else every node of the cluster (`/etc/pve/.members`, or
//! corosync.conf's nodelist). A VM that is not an HA resource on a standalone node (or a
//! one-node cluster) is not checked.

use super::*;
use crate::engine::fleet;
use crate::parse::pve::ha::{self, NodePrio};
use crate::parse::pve::mapping::{parse_mapping_file, PciMapping};
use crate::parse::pve::members::{corosync_node_names, parse_members};

/// The nodes a VM can run on, and why.
struct Placement {
    nodes: Vec<String>,
    why: String,
    ha: bool,
}

fn names(v: &[NodePrio]) -> Vec<String> {
    v.iter().map(|n| n.node.clone()).collect()
}

fn union(mut a: Vec<String>, b: &[String]) -> Vec<String> {
    for n in b {
        if !a.contains(n) {
            a.push(n.clone());
        }
    }
    a
}

/// The cluster's nodes: `.members`, else corosync.conf.
fn cluster_nodes(host: &dyn Host) -> Vec<String> {
    let from_members = read_bounded(host, "etc/pve/.members")
        .ok()
        .and_then(|t| parse_members(&t, ".members").ok())
        .map(|m| m.nodes.into_iter().map(|n| n.name).collect::<Vec<_>>())
        .unwrap_or_default();
    if !from_members.is_empty() {
        return from_members;
    }
    read_bounded(host, "etc/pve/corosync.conf")
        .map(|t| corosync_node_names(&t))
        .unwrap_or_default()
}

fn placement(host: &dyn Host, vmid: u32, this: &str) -> Option<Placement> {
    let all = union(vec![this.to_string()], &cluster_nodes(host));
    let resource = read_bounded(host, "etc/pve/ha/resources.cfg")
        .ok()
        .and_then(|t| ha::parse_resources(&t, "resources.cfg").ok())
        .and_then(|(r, _)| r.into_iter().find(|r| r.kind == "vm" && r.vmid == vmid))
        .filter(|r| r.managed());
    let Some(res) = resource else {
        return (all.len() > 1).then(|| Placement {
            why: format!(
                "not an HA resource, but it can be migrated to any node of the cluster ({})",
                all.join(", ")
            ),
            nodes: all,
            ha: false,
        });
    };
    let sid = res.sid();
    let rule = read_bounded(host, "etc/pve/ha/rules.cfg")
        .ok()
        .and_then(|t| ha::parse_rules(&t, "rules.cfg").ok())
        .and_then(|(r, _)| {
            r.into_iter()
                .find(|r| !r.disabled && r.resources.contains(&sid))
        });
    if let Some(r) = rule {
        let own = names(&r.nodes);
        return Some(if r.strict {
            Placement {
                why: format!(
                    "HA resource, strict node-affinity rule {}: {}",
                    r.name,
                    own.join(", ")
                ),
                nodes: own,
                ha: true,
            }
        } else {
            Placement {
                why: format!(
                    "HA resource, node-affinity rule {} (not strict: any node when {} are down)",
                    r.name,
                    own.join(", ")
                ),
                nodes: union(own, &all),
                ha: true,
            }
        });
    }
    let group = res.group.as_ref().and_then(|g| {
        read_bounded(host, "etc/pve/ha/groups.cfg")
            .ok()
            .and_then(|t| ha::parse_groups(&t, "groups.cfg").ok())
            .and_then(|(gs, _)| gs.into_iter().find(|x| &x.name == g))
    });
    Some(match group {
        Some(g) if g.restricted => Placement {
            why: format!(
                "HA resource, restricted group {}: {}",
                g.name,
                names(&g.nodes).join(", ")
            ),
            nodes: names(&g.nodes),
            ha: true,
        },
        Some(g) => Placement {
            why: format!(
                "HA resource, group {} (not restricted: any node when {} are down)",
                g.name,
                names(&g.nodes).join(", ")
            ),
            nodes: union(names(&g.nodes), &all),
            ha: true,
        },
        None => Placement {
            why: format!(
                "HA resource without a group or node-affinity rule: any node of the cluster ({})",
                all.join(", ")
            ),
            nodes: all,
            ha: true,
        },
    })
}

/// A hostpci value with its `host=`/bare address removed: the options to keep.
fn other_options(raw: &str) -> String {
    raw.split(',')
        .enumerate()
        .filter(|(i, p)| !(p.starts_with("host=") || (*i == 0 && !p.contains('='))))
        .map(|(_, p)| p)
        .collect::<Vec<_>>()
        .join(",")
}

impl Doctor<'_> {
    pub(super) fn vm_cluster(&mut self, vmid: u32, cfg: &VmConfig) {
        let this = self.host.node_name();
        let Some(place) = placement(self.host, vmid, &this) else {
            return;
        };
        let others: Vec<&String> = place.nodes.iter().filter(|n| **n != this).collect();
        let mapping_file = read_bounded(self.host, paths::MAPPING_PCI)
            .ok()
            .and_then(|t| parse_mapping_file(&t, "pci.cfg").ok());
        let before = self.checks.len();
        for hp in &cfg.hostpci {
            let key = hp.key();
            match &hp.source {
                HostSource::Host(addrs) => {
                    let addr = addrs
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(";");
                    let id = addrs
                        .first()
                        .and_then(|a| self.devices.values().find(|d| a.matches(&d.bdf)))
                        .map(|d| format!("{}:{}", d.vendor_hex(), d.device_hex()))
                        .unwrap_or_else(|| "VVVV:DDDD".into());
                    let path = &addr;
                    let rest = other_options(cfg.get(&key).unwrap_or(""));
                    let what = if place.ha {
                        "HA recovers the VM on another node when this one fails"
                    } else {
                        "Proxmox refuses to migrate a VM with raw PCI addresses (local resources)"
                    };
                    self.add_vm(
                        vmid,
                        None,
                        "vm.cluster.raw-address",
                        Status::Warn,
                        format!(
                            "{key} passes the raw address {addr}, a device of this node only ({}); {what}, and on {} that address is another device or none",
                            place.why,
                            if others.is_empty() { "other nodes".to_string() } else { others.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ") }
                        ),
                        Some(format!(
                            "create a PCI resource mapping with an entry for every node (Datacenter → Resource Mappings → Add, or in /etc/pve/mapping/pci.cfg a section NAME with `map node={this},path={path},id={id}` and one such line per node), then `qm set {vmid} --{key} mapping=NAME{}{rest}`",
                            if rest.is_empty() { "" } else { "," }
                        )),
                    );
                }
                HostSource::Mapping(name) => {
                    let Some(m) = mapping_file.as_ref().and_then(|f| f.get(name)) else {
                        // vm.devices reports a mapping that does not exist.
                        continue;
                    };
                    self.mapping_coverage(vmid, &key, m, &place, &this);
                }
            }
        }
        if self.checks.len() == before {
            self.add_vm(
                vmid,
                None,
                "vm.cluster",
                Status::Pass,
                format!(
                    "{}: every hostpci is a mapping with an entry of the same model on each of them",
                    place.why
                ),
                None,
            );
        }
    }

    fn mapping_coverage(
        &mut self,
        vmid: u32,
        key: &str,
        m: &PciMapping,
        place: &Placement,
        this: &str,
    ) {
        // The model the VM runs with: this node's entry, else the mapping's first.
        let Some(reference) = m
            .entries_for(this)
            .next()
            .or_else(|| m.maps.first())
            .map(|e| e.id)
        else {
            return;
        };
        let ref_at = if m.entries_for(this).next().is_some() {
            format!("on {this}")
        } else {
            "in its first entry".to_string()
        };
        for node in &place.nodes {
            let peer = if node == this {
                None
            } else {
                fleet::read_inventory(self.host, node).ok().flatten()
            };
            let entries: Vec<_> = m.entries_for(node).collect();
            if entries.is_empty() {
                let hint = peer
                    .as_ref()
                    .and_then(|inv| {
                        inv.devices
                            .iter()
                            .find(|d| d.id == reference.to_string() && d.free())
                    })
                    .map(|d| {
                        format!(
                            "; {node} reports a free {reference} at {} (its pt-hook inventory)",
                            d.bdf
                        )
                    })
                    .unwrap_or_default();
                self.add_vm(
                    vmid,
                    None,
                    "vm.cluster.mapping-node",
                    Status::Warn,
                    format!(
                        "{key}: mapping {} has no entry for node {node} ({}): the VM cannot start there",
                        m.name, place.why
                    ),
                    Some(format!(
                        "add an entry for {node} to mapping {} (Datacenter → Resource Mappings → {} → Add, or `map node={node},path=DDDD:BB:DD.F,id={reference}` in /etc/pve/mapping/pci.cfg){hint}",
                        m.name, m.name
                    )),
                );
                continue;
            }
            for e in entries {
                if e.id != reference {
                    self.add_vm(
                        vmid,
                        None,
                        "vm.cluster.mapping-model",
                        Status::Warn,
                        format!(
                            "{key}: mapping {} maps to {} on {node} (line {}) but to {reference} {ref_at}: after a move the VM gets another model",
                            m.name, e.id, e.line
                        ),
                        Some(format!(
                            "point {node}'s entry of {} at a {reference} device, or use one mapping per model",
                            m.name
                        )),
                    );
                    continue;
                }
                // What the node itself reports at that address.
                let Some(inv) = &peer else { continue };
                let Some(first) = e.paths.first() else {
                    continue;
                };
                if let Some(d) = inv
                    .devices
                    .iter()
                    .find(|d| first.matches(&d.bdf) && (first.func.is_some() || d.bdf.func == 0))
                {
                    if d.id != e.id.to_string() {
                        self.add_vm(
                            vmid,
                            None,
                            "vm.cluster.mapping-model",
                            Status::Warn,
                            format!(
                                "{key}: mapping {} names {} on {node}, which holds a {} there (its pt-hook inventory), not the {} the entry says: Proxmox refuses to start the VM there",
                                m.name, e.path_string(), d.id, e.id
                            ),
                            Some(format!(
                                "fix {node}'s entry of {} (path or id) in Datacenter → Resource Mappings",
                                m.name
                            )),
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::sim::SimHost;

    fn put(s: &SimHost, rel: &str, text: &str) {
        let p = s.root_dir().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    const MEMBERS: &str = "{\"nodename\":\"pve1\",\"version\":1,\"cluster\":{\"name\":\"c\",\"version\":1,\"nodes\":3,\"quorate\":1},\"nodelist\":{\"pve1\":{\"id\":1,\"online\":1},\"pve2\":{\"id\":2,\"online\":1},\"pve3\":{\"id\":3,\"online\":0}}}";

    #[test]
    fn where_a_vm_can_run() {
        let s = SimHost::new();
        // Standalone, not HA: not checked at all.
        assert!(placement(&s, 100, "pve1").is_none());
        // HA on a standalone node: this node only.
        put(&s, "etc/pve/ha/resources.cfg", "vm: 100\n\tgroup loose\n\nvm: 101\n\tgroup tight\n\nvm: 102\n\nvm: 103\n\tstate ignored\n\nct: 104\n");
        assert_eq!(placement(&s, 102, "pve1").unwrap().nodes, ["pve1"]);
        put(&s, "etc/pve/.members", MEMBERS);
        put(
            &s,
            "etc/pve/ha/groups.cfg",
            "group: loose\n\tnodes pve2\n\ngroup: tight\n\tnodes pve1,pve2\n\trestricted 1\n",
        );
        let p = placement(&s, 100, "pve1").unwrap();
        assert!(p.ha && p.why.contains("not restricted"), "{}", p.why);
        assert_eq!(p.nodes, ["pve2", "pve1", "pve3"]);
        assert_eq!(placement(&s, 101, "pve1").unwrap().nodes, ["pve1", "pve2"]);
        // No group: any node. Ignored: like no HA (a cluster of three: may migrate).
        assert_eq!(
            placement(&s, 102, "pve1").unwrap().nodes,
            ["pve1", "pve2", "pve3"]
        );
        let p = placement(&s, 103, "pve1").unwrap();
        assert!(!p.ha && p.why.contains("not an HA resource"), "{}", p.why);
        // A container with that id is not the VM.
        assert!(!placement(&s, 104, "pve1").unwrap().ha);
        // PVE 9 rules win over groups; a disabled rule does not count.
        put(&s, "etc/pve/ha/rules.cfg", "node-affinity: r1\n\tresources vm:101\n\tnodes pve3\n\tstrict 1\n\nnode-affinity: r2\n\tresources vm:100\n\tnodes pve3\n\nnode-affinity: off\n\tresources vm:102\n\tnodes pve2\n\tstrict 1\n\tdisable\n");
        let p = placement(&s, 101, "pve1").unwrap();
        assert_eq!(p.nodes, ["pve3"]);
        assert!(p.why.contains("strict node-affinity rule r1"), "{}", p.why);
        assert_eq!(
            placement(&s, 100, "pve1").unwrap().nodes,
            ["pve3", "pve1", "pve2"]
        );
        assert_eq!(
            placement(&s, 102, "pve1").unwrap().nodes,
            ["pve1", "pve2", "pve3"]
        );
    }

    #[test]
    fn corosync_when_members_has_no_nodelist() {
        let s = SimHost::new();
        put(
            &s,
            "etc/pve/.members",
            "{\"nodename\":\"pve1\",\"version\":0}",
        );
        put(
            &s,
            "etc/pve/corosync.conf",
            "nodelist {\n  node {\n    name: pve1\n  }\n  node {\n    name: pve2\n  }\n}\n",
        );
        assert_eq!(placement(&s, 100, "pve1").unwrap().nodes, ["pve1", "pve2"]);
    }

    #[test]
    fn options_kept_in_the_fix() {
        assert_eq!(other_options("01:00,pcie=1,x-vga=1"), "pcie=1,x-vga=1");
        assert_eq!(other_options("host=01:00.0;02:00.0,rombar=0"), "rombar=0");
        assert_eq!(other_options("0000:01:00.0"), "");
    }
}
