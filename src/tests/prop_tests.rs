//! Property tests for the grammars pt-hook parses from files it does not control: PCI
//! addresses (sysfs, hostpciN, libvirt), `hostpciN` property strings, pci.cfg mappings and
//! pci.ids. Each property builds valid input from its parts and checks the parser gives the
//! parts back; arbitrary input must give a result or an error, never a panic. (The longer
//! coverage-free fuzzer is src/fuzz_tests.rs / tests/fuzz.sh.)

use std::collections::BTreeSet;

use proptest::prelude::*;

use crate::parse::pve::hostpci::{parse_hostpci, HostSource};
use crate::parse::pve::mapping::parse_mappings;
use crate::pci::{Bdf, PciAddr, PciId};

fn bdf() -> impl Strategy<Value = Bdf> {
    (any::<u16>(), any::<u8>(), 0u8..32, 0u8..8).prop_map(|(domain, bus, dev, func)| Bdf {
        domain,
        bus,
        dev,
        func,
    })
}

fn addr() -> impl Strategy<Value = PciAddr> {
    (
        any::<u16>(),
        any::<u8>(),
        0u8..32,
        proptest::option::of(0u8..8),
    )
        .prop_map(|(domain, bus, dev, func)| PciAddr {
            domain,
            bus,
            dev,
            func,
        })
}

/// A name the way pci.ids and Proxmox write them: printable, no tabs or newlines.
fn label() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9 ./\\[\\]()+-]{0,30}[A-Za-z0-9\\])]"
}

proptest! {
    #[test]
    fn bdf_round_trips_in_any_case(b in bdf(), upper in any::<bool>()) {
        let s = b.to_string();
        let s = if upper { s.to_uppercase() } else { s };
        prop_assert_eq!(Bdf::parse(&s).unwrap(), b);
    }

    #[test]
    fn bdf_never_panics(s in "\\PC{0,40}") {
        let _ = Bdf::parse(&s);
        let _ = PciAddr::parse(&s);
        let _ = PciId::parse(&s);
    }

    #[test]
    fn pci_addr_round_trips_with_and_without_domain(a in addr(), with_domain in any::<bool>()) {
        let full = a.to_string();
        prop_assert_eq!(PciAddr::parse(&full).unwrap(), a);
        if with_domain || a.domain != 0 {
            return Ok(());
        }
        // Proxmox's short form: the domain 0000 left out.
        let short = full.strip_prefix("0000:").unwrap();
        prop_assert_eq!(PciAddr::parse(short).unwrap(), a);
    }

    #[test]
    fn hostpci_gives_back_its_addresses_and_flags(
        addrs in proptest::collection::vec(addr(), 1..4),
        pcie in any::<bool>(),
        x_vga in any::<bool>(),
        rombar in any::<bool>(),
        keyed in any::<bool>(),
    ) {
        let list = addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(";");
        let mut v = if keyed { format!("host={list}") } else { list };
        v.push_str(&format!(",pcie={},x-vga={},rombar={}", pcie as u8, x_vga as u8, rombar as u8));
        let h = parse_hostpci(3, &v).unwrap();
        prop_assert_eq!(h.index, 3);
        prop_assert_eq!(h.source, HostSource::Host(addrs));
        prop_assert_eq!((h.pcie, h.x_vga, h.rombar), (pcie, x_vga, rombar));
    }

    #[test]
    fn hostpci_mapping_names(name in "[A-Za-z][A-Za-z0-9_-]{0,20}") {
        let h = parse_hostpci(0, &format!("mapping={name},pcie=1")).unwrap();
        prop_assert_eq!(h.source, HostSource::Mapping(name));
    }

    #[test]
    fn hostpci_never_panics(s in "\\PC{0,80}", n in 0u8..20) {
        let _ = parse_hostpci(n, &s);
    }

    #[test]
    fn mappings_give_back_nodes_paths_and_ids(
        name in "[A-Za-z][A-Za-z0-9_-]{0,20}",
        entries in proptest::collection::vec(
            ("[a-z][a-z0-9-]{0,12}", proptest::collection::vec(bdf(), 1..3), any::<u16>(), any::<u16>()),
            1..4,
        ),
    ) {
        let mut text = format!("{name}\n");
        for (node, paths, v, d) in &entries {
            let p = paths.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(";");
            text.push_str(&format!("\tmap id={v:04x}:{d:04x},node={node},path={p}\n"));
        }
        text.push_str("\tdescription a mapping\n");
        let all = parse_mappings(&text, "pci.cfg").unwrap();
        prop_assert_eq!(all.len(), 1);
        let m = &all[0];
        prop_assert_eq!(&m.name, &name);
        prop_assert_eq!(m.maps.len(), entries.len());
        for (e, (node, paths, v, d)) in m.maps.iter().zip(&entries) {
            prop_assert_eq!(&e.node, node);
            prop_assert_eq!((e.id.vendor, e.id.device), (*v, *d));
            let want: Vec<PciAddr> = paths
                .iter()
                .map(|b| PciAddr { domain: b.domain, bus: b.bus, dev: b.dev, func: Some(b.func) })
                .collect();
            prop_assert_eq!(&e.paths, &want);
        }
    }

    #[test]
    fn mappings_never_panic(s in "(\\PC{0,40}\n?){0,6}") {
        let _ = parse_mappings(&s, "pci.cfg");
    }

    #[test]
    fn pci_ids_names_what_it_lists(
        vendors in proptest::collection::btree_map(
            any::<u16>(),
            (label(), proptest::collection::btree_map(any::<u16>(), label(), 0..4)),
            1..5,
        ),
    ) {
        let mut text = String::from("# pci.ids\n");
        let mut want = BTreeSet::new();
        for (v, (vname, devs)) in &vendors {
            text.push_str(&format!("{v:04x}  {vname}\n"));
            for (d, dname) in devs {
                text.push_str(&format!("\t{d:04x}  {dname}\n\t\t1234 5678  a subsystem\n"));
                want.insert((*v, *d));
            }
        }
        text.push_str("C 03  Display controller\n\t00  VGA compatible controller\n");
        let n = crate::sysfs::pciids::parse(&text, &want);
        for (v, (vname, devs)) in &vendors {
            if devs.is_empty() {
                continue;
            }
            prop_assert_eq!(n.vendor(*v), Some(vname.as_str()));
            for (d, dname) in devs {
                prop_assert_eq!(n.device(*v, *d), Some(dname.as_str()));
            }
        }
        prop_assert_eq!(n.class(0x030000), "VGA compatible controller");
    }

    #[test]
    fn pci_ids_never_panics(s in "(\\PC{0,40}\n?){0,8}", v in any::<u16>(), d in any::<u16>()) {
        let want = BTreeSet::from([(v, d)]);
        let n = crate::sysfs::pciids::parse(&s, &want);
        let _ = n.describe(v, d);
        let _ = n.class(u32::from(v) << 8);
    }
}
