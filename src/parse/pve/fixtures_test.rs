//! The parsers against the configs of qemu-server's own test suite (copied to
//! tests/fixtures/proxmox/): for every cfg2cmd/*.conf, the host functions we derive from the
//! hostpci lines must be exactly the `vfio-pci,host=` devices of Proxmox's expected QEMU
//! command line (*.conf.cmd), in order.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::pci::Bdf;

use super::config::{parse_vm_config, VmConfig};
use super::hostpci::HostSource;
use super::mapping::{choose_entry, parse_mapping_file, MappingFile};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/proxmox");

/// The host device list qemu-server's cfg2cmd tests mock (lspci order).
const MOCK_DEVICES: &[&str] = &[
    "0000:00:43.1",
    "0000:00:f4.0",
    "0000:00:ff.1",
    "0000:0f:f2.0",
    "0000:d0:13.0",
    "0000:d0:15.1",
    "0000:d0:15.2",
    "0000:d0:17.0",
    "0000:f0:42.0",
    "0000:f0:43.0",
    "0000:f0:43.1",
    "1234:f0:43.1",
    "0000:01:00.4",
    "0000:01:00.5",
    "0000:01:00.6",
    "0000:07:10.0",
    "0000:07:10.1",
    "0000:07:10.4",
];
const NODE: &str = "localhost";

fn host_devices() -> Vec<Bdf> {
    let mut v: Vec<Bdf> = MOCK_DEVICES
        .iter()
        .map(|s| Bdf::parse(s).unwrap())
        .collect();
    v.sort();
    v
}

fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(Path::new(FIXTURES).join(dir))
        .unwrap_or_else(|e| panic!("{FIXTURES}/{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(ext))
        .collect();
    v.sort();
    v
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn mappings() -> MappingFile {
    let p = Path::new(FIXTURES).join("mapping/pci.cfg");
    let f = parse_mapping_file(&read(&p), &p.display().to_string()).unwrap();
    assert!(f.warnings.is_empty(), "{:?}", f.warnings);
    f
}

/// `-device 'vfio-pci,host=X,...'` → X, in command-line order.
fn expected_hosts(cmd: &str) -> Vec<String> {
    cmd.lines()
        .filter_map(|l| l.trim().strip_prefix("-device 'vfio-pci,"))
        .filter_map(|rest| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix("host="))
                .map(str::to_string)
        })
        .collect()
}

/// What Proxmox passes through for this config: hostpci in index order; a prefix expands to
/// every matching function; a mapping takes its first entry not used by an earlier hostpci;
/// mdev devices are skipped (they appear as sysfsdev); templates pass nothing.
fn derived_hosts(cfg: &VmConfig, maps: &MappingFile, devices: &[Bdf]) -> Vec<String> {
    if cfg.is_template() {
        return Vec::new();
    }
    let expand = |addrs: &[crate::pci::PciAddr]| -> Vec<Bdf> {
        addrs
            .iter()
            .flat_map(|a| {
                let found: Vec<Bdf> = devices.iter().copied().filter(|b| a.matches(b)).collect();
                assert!(!found.is_empty(), "no PCI device found for {a}");
                found
            })
            .collect()
    };
    let mut used: Vec<(Bdf, String)> = Vec::new();
    let mut out = Vec::new();
    for d in &cfg.hostpci {
        if d.mdev.is_some() {
            continue;
        }
        let bdfs = match &d.source {
            HostSource::Host(addrs) => expand(addrs),
            HostSource::Mapping(name) => {
                let m = maps
                    .get(name)
                    .unwrap_or_else(|| panic!("no mapping {name}"));
                let used_ref = &used;
                let e = choose_entry(m, NODE, &|e| {
                    expand(&e.paths).iter().find_map(|b| {
                        used_ref
                            .iter()
                            .find(|(u, _)| u == b)
                            .map(|(_, by)| format!("used by {by}"))
                    })
                })
                .unwrap();
                expand(&e.paths)
            }
        };
        for b in bdfs {
            assert!(
                !used.iter().any(|(u, _)| *u == b),
                "{b} assigned more than once"
            );
            used.push((b, d.key()));
            out.push(b.to_string());
        }
    }
    out
}

#[test]
fn cfg2cmd_hostpci_expansion_matches_proxmox() {
    let maps = mappings();
    let devices = host_devices();
    let confs = files("cfg2cmd", "conf");
    assert!(confs.len() >= 8, "fixtures missing: {confs:?}");
    let mut checked_devices = 0;
    for conf in &confs {
        let name = conf.display().to_string();
        let cfg = parse_vm_config(&read(conf), &name, 8006).unwrap_or_else(|e| panic!("{e}"));
        assert!(!cfg.hostpci.is_empty(), "{name}: no hostpci parsed");
        let cmd = read(&PathBuf::from(format!("{name}.cmd")));
        let want = expected_hosts(&cmd);
        let got = derived_hosts(&cfg, &maps, &devices);
        assert_eq!(got, want, "{name}");
        checked_devices += want.len();
    }
    assert_eq!(checked_devices, 23, "devices compared");
}

#[test]
fn mapping_fixture_second_user_of_a_mapping_takes_the_next_entry() {
    let p = Path::new(FIXTURES).join("cfg2cmd/q35-linux-hostpci-mapping.conf");
    let cfg = parse_vm_config(&read(&p), "mapping.conf", 8006).unwrap();
    let got = derived_hosts(&cfg, &mappings(), &host_devices());
    assert_eq!(got, ["0000:07:10.0", "0000:07:10.1"]);
    assert_eq!(cfg.hostpci[1].mdev.as_deref(), Some("some-model"));
    let gpu = mappings();
    let gpu = gpu.get("someGpu").unwrap();
    assert!(gpu.mdev);
    assert_eq!(gpu.maps.len(), 3);
}

#[test]
fn template_fixture_passes_no_device() {
    let p = Path::new(FIXTURES).join("cfg2cmd/q35-linux-hostpci-template.conf");
    let cfg = parse_vm_config(&read(&p), "template.conf", 8006).unwrap();
    assert!(cfg.is_template());
    assert_eq!(cfg.hostpci.len(), 6);
    let cmd = read(&PathBuf::from(format!("{}.cmd", p.display())));
    assert!(!cmd.contains("vfio-pci"));
}

#[test]
fn driver_keep_and_overrides_fixtures() {
    use super::hostpci::DriverMode;
    let p = Path::new(FIXTURES).join("cfg2cmd/q35-linux-hostpci-driver-keep.conf");
    let cfg = parse_vm_config(&read(&p), "keep.conf", 8006).unwrap();
    let drivers: Vec<(u8, DriverMode)> = cfg.hostpci.iter().map(|d| (d.index, d.driver)).collect();
    assert_eq!(drivers[0], (0, DriverMode::Keep));
    assert!(drivers[1..].iter().all(|(_, m)| *m == DriverMode::Vfio));
    assert!(!cfg.hostpci[4].rombar);

    let p = Path::new(FIXTURES).join("cfg2cmd/q35-linux-hostpci-x-pci-overrides.conf");
    let cfg = parse_vm_config(&read(&p), "overrides.conf", 8006).unwrap();
    let d = &cfg.hostpci[0];
    assert_eq!(d.vendor_id.as_deref(), Some("0x1234"));
    assert_eq!(d.sub_device_id.as_deref(), Some("0x0000"));
    assert!(d.other.is_empty());
}

/// parse-config-input: only the current section counts; what follows (pending, special,
/// snapshot, duplicate and unknown sections) is listed but never read.
#[test]
fn parse_config_inputs() {
    // (file, key, value in the current section, sections that follow)
    let cases: &[(&str, &str, &str, &[&str])] = &[
        (
            "cloudinit-snapshot.conf",
            "ipconfig0",
            "ip6=dhcp",
            &["special:cloudinit", "cloudinit"],
        ),
        (
            "duplicate-sections.conf",
            "name",
            "deb122",
            &[
                "PENDING",
                "PENDING",
                "special:cloudinit",
                "special:cloudinit",
                "foo",
                "foo",
            ],
        ),
        ("fleecing-section.conf", "numa", "0", &["special:fleecing"]),
        ("locked.conf", "lock", "backup", &[]),
        ("plain.conf", "tags", "foo bar", &[]),
        ("regular-vm-efi.conf", "boot", "order=scsi0;ide2;net0", &[]),
        (
            "sections.conf",
            "ipconfig0",
            "ip6=dhcp",
            &["PENDING", "special:cloudinit", "foo"],
        ),
        (
            "snapshots.conf",
            "parent",
            "win19_5_2_plus_stuff",
            &[
                "machine_version_5_1",
                "machine_version_5_1_with_virtio",
                "ovmf_machine_version_5_1",
                "ovmf_machine_version_5_1_virtio",
                "static-network",
                "win19_5_2",
                "win19_5_2_plus_stuff",
            ],
        ),
        (
            "unknown-sections.conf",
            "name",
            "deb1223",
            &[
                "special:unknown123",
                "PENDING",
                "special:unknown124",
                "special:cloudinit",
                "special:unknown125",
                "foo",
                ":3",
            ],
        ),
        ("verify-snapshot.conf", "numa", "0", &["snap"]),
    ];
    let found: BTreeSet<String> = files("parse-config-input", "conf")
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = cases.iter().map(|c| c.0.to_string()).collect();
    assert_eq!(
        found, listed,
        "a fixture without expectations, or a missing one"
    );

    for (file, key, value, sections) in cases {
        let p = Path::new(FIXTURES).join("parse-config-input").join(file);
        let cfg = parse_vm_config(&read(&p), file, 120).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.get(key), Some(*value), "{file}: {key}");
        let s: Vec<&str> = cfg.sections.iter().map(String::as_str).collect();
        assert_eq!(&s, sections, "{file}");
        assert!(cfg.hostpci.is_empty());
        // Keys that exist only in a later section must not leak into the current one.
        assert_eq!(cfg.get("snaptime"), None, "{file}");
        if s.contains(&"PENDING") {
            assert_eq!(cfg.get("bios"), None, "{file}: [PENDING] leaked");
        }
    }
    // The snapshot's own keys do not leak in either.
    let p = Path::new(FIXTURES).join("parse-config-input/snapshots.conf");
    let cfg = parse_vm_config(&read(&p), "snapshots.conf", 111).unwrap();
    assert_eq!(cfg.get("machine"), Some("pc-i440fx-9.1"));
    assert_eq!(cfg.get("efidisk0"), None);
    let p = Path::new(FIXTURES).join("parse-config-input/sections.conf");
    let cfg = parse_vm_config(&read(&p), "sections.conf", 120).unwrap();
    assert!(cfg.has_pending());
}

/// Tiny deterministic generator, so the robustness test needs no crate.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Every parser on truncated, spliced and random input: errors are fine, panics are not.
#[test]
fn parsers_never_panic() {
    use super::hostpci::parse_hostpci;
    use super::mapping::{parse_map_entry, parse_reservations};

    let mut corpus: Vec<String> = Vec::new();
    for dir in ["cfg2cmd", "parse-config-input"] {
        for p in files(dir, "conf") {
            corpus.push(read(&p));
        }
    }
    corpus.push(read(&Path::new(FIXTURES).join("mapping/pci.cfg")));

    let alphabet: Vec<char> = "hostpci0123456789abcdef:;,=.[]#\t\n\r mapnodeidpathé€\u{0}\u{7f}x-_"
        .chars()
        .collect();
    let mut rng = Lcg(42);
    for _ in 0..3000 {
        let len = (rng.next() % 120) as usize;
        let s: String = (0..len)
            .map(|_| alphabet[(rng.next() as usize) % alphabet.len()])
            .collect();
        corpus.push(s);
    }

    let run = |s: &str| {
        let _ = parse_vm_config(s, "f", 1);
        let _ = parse_mapping_file(s, "f");
        let _ = parse_reservations(s);
        for line in s.lines().take(50) {
            let _ = parse_hostpci(0, line);
            let _ = parse_map_entry(line, 1);
            if let Some((_, v)) = line.split_once(": ") {
                let _ = parse_hostpci(0, v);
            }
        }
    };
    for text in &corpus {
        run(text);
        // Prefixes at every 5th char boundary.
        for (i, _) in text.char_indices().step_by(5) {
            run(&text[..i]);
        }
    }
}
