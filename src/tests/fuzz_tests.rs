//! A self-contained mutation fuzzer (cargo-fuzz needs a nightly toolchain) for every parser of
//! untrusted text: VM configs, hostpci values, pci.cfg, the reservation file, pt-hook.toml,
//! quirk files and libvirt domain XML. Seeds: tests/fixtures/proxmox, src/quirks.toml and hand-made lines. Each target
//! runs for PT_HOOK_FUZZ_SECS seconds (default 1; `tests/fuzz.sh` runs longer), mutating seeds
//! (byte flips, inserts, deletes, duplication, splices between seeds, dictionary tokens) and
//! catching panics. A panicking input is written to target/fuzz-crashes/ and fails the test.
//!
//! To add a target: add an entry to `targets()` with its seeds and a closure calling the
//! parser (the libvirt domain XML parser, src/libvirt.rs, is one).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

type Parse = fn(&str);

struct Target {
    name: &'static str,
    seeds: Vec<String>,
    parse: Parse,
}

fn fixtures(dir: &str, filter: fn(&Path) -> bool) -> Vec<String> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut v = Vec::new();
    let mut stack = vec![base];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if filter(&p) {
                if let Ok(t) = std::fs::read_to_string(&p) {
                    v.push(t);
                }
            }
        }
    }
    v
}

fn vm_config_seeds() -> Vec<String> {
    let mut v = fixtures("tests/fixtures/proxmox", |p| {
        p.extension().is_some_and(|e| e == "conf")
    });
    v.push("hostpci0: 0000:01:00,pcie=1,x-vga=1\nhostpci1: mapping=fastnvme\nmachine: q35\n[snap]\nhostpci0: 02:00.0\n".into());
    v
}

fn hostpci_seeds() -> Vec<String> {
    let mut v: Vec<String> = vm_config_seeds()
        .iter()
        .flat_map(|t| t.lines().map(str::to_string).collect::<Vec<_>>())
        .filter_map(|l| {
            l.strip_prefix("hostpci")
                .and_then(|r| r.split_once(": "))
                .map(|(_, v)| v.to_string())
        })
        .collect();
    v.extend(
        [
            "0000:01:00.0;0000:01:00.1,pcie=1,rombar=0,romfile=x.rom",
            "mapping=gpu,mdev=nvidia-35,x-vga=1",
            "01:00,driver=keep,legacy-igd=1,device-id=0x1234,vendor-id=0x10de",
        ]
        .map(String::from),
    );
    v
}

fn mapping_seeds() -> Vec<String> {
    let mut v = fixtures("tests/fixtures/proxmox/mapping", |_| true);
    v.push("fastnvme\n\tmap id=144d:a808,iommugroup=13,node=pve1,path=0000:02:00.0\n\tmap id=144d:a808,node=pve2,path=0000:07:00.0;0000:07:00.1,subsystem-id=1:2\n\tdescription x\n\tmdev 1\n\tlive-migration-capable 0\n".into());
    v
}

fn reservation_seeds() -> Vec<String> {
    vec![
        "{\"0000:01:00.0\":{\"vmid\":100,\"time\":1700000000},\"0000:02:00.0\":{\"vmid\":101,\"pid\":1234}}".into(),
        "{}".into(),
    ]
}

fn toml_seeds() -> Vec<String> {
    vec![
        "[timeouts]\nstep = \"5s\"\nflr_timeout = \"250ms\"\nphase_timeout = \"2m\"\n[vm.100]\nconsole_handoff = \"on\"\nunits = [\"gdm.service\"]\nreset_on_stop = false\n".into(),
        "[[quirk]]\nname = \"local\"\nmatch = [\"10de:2b85\"]\nreset_method = [\"bus\"]\n".into(),
    ]
}

fn quirk_seeds() -> Vec<String> {
    vec![
        include_str!("../engine/quirks.toml").to_string(),
        "[[quirk]]\nname = \"x\"\nmatch = [\"1002:687f\"]\nreset_method_remove = [\"flr\"]\n"
            .into(),
    ]
}

fn libvirt_seeds() -> Vec<String> {
    vec![
        "<domain type='kvm' id='3'>\n  <name>win11 gaming</name>\n  <uuid>4DEA22B3-1D52-D8F3-2516-782E98AB3FA0</uuid>\n  <devices>\n    <disk type='file' device='disk'><source file='/x.qcow2'/></disk>\n    <hostdev mode='subsystem' type='pci' managed='yes'>\n      <driver name='vfio'/>\n      <source>\n        <address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>\n      </source>\n      <address type='pci' domain='0x0000' bus='0x06' slot='0x00' function='0x0'/>\n    </hostdev>\n    <hostdev mode='subsystem' type='pci' managed='no'>\n      <source><address bus='2' slot='0' function='1'/></source>\n    </hostdev>\n    <hostdev mode='subsystem' type='usb'>\n      <source><vendor id='0x046d'/><product id='0xc52b'/></source>\n    </hostdev>\n  </devices>\n</domain>".into(),
        "<?xml version='1.0'?>\n<!-- c -->\n<domain type='kvm'><name>a&amp;b</name><uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid><devices><hostdev type='pci'><source><address domain='0x0000' bus='0xff' slot='0x1f' function='0x7'/></source></hostdev></devices><![CDATA[x]]></domain>".into(),
    ]
}

fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "vm-config",
            seeds: vm_config_seeds(),
            parse: |t| {
                let _ = crate::parse::pve::config::parse_vm_config(t, "fuzz.conf", 100);
            },
        },
        Target {
            name: "hostpci",
            seeds: hostpci_seeds(),
            parse: |t| {
                let _ = crate::parse::pve::hostpci::parse_hostpci(0, t);
            },
        },
        Target {
            name: "pci.cfg",
            seeds: mapping_seeds(),
            parse: |t| {
                if let Ok(f) = crate::parse::pve::mapping::parse_mapping_file(t, "pci.cfg") {
                    for m in &f.mappings {
                        let _ = crate::parse::pve::mapping::choose_entry(m, "pve1", &|_| None);
                    }
                }
            },
        },
        Target {
            name: "reservations",
            seeds: reservation_seeds(),
            parse: |t| {
                let _ = crate::parse::pve::mapping::parse_reservations(t);
            },
        },
        Target {
            name: "pt-hook.toml",
            seeds: toml_seeds(),
            parse: |t| {
                let _ = crate::parse::config::parse(t, "pt-hook.toml");
            },
        },
        Target {
            name: "quirks",
            seeds: quirk_seeds(),
            parse: |t| {
                let _ = crate::engine::quirks::parse_file(t, "quirk.toml");
            },
        },
        Target {
            name: "libvirt-xml",
            seeds: libvirt_seeds(),
            parse: |t| {
                let _ = crate::parse::libvirt::parse_domain(t, "domain.xml");
            },
        },
    ]
}

/// xorshift64*: deterministic per target, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const TOKENS: &[&str] = &[
    ":",
    ",",
    ";",
    "=",
    "\n",
    "\t",
    " ",
    "[",
    "]",
    "\"",
    "'",
    "#",
    ".",
    "/",
    "..",
    "../",
    "0000:",
    "01:00",
    ".0",
    ".7",
    "ffff:ff:1f.7",
    "hostpci0: ",
    "hostpci99: ",
    "mapping=",
    "pcie=1",
    "x-vga=1",
    "driver=keep",
    "rombar=",
    "map ",
    "id=",
    "node=",
    "path=",
    "iommugroup=",
    "subsystem-id=",
    "[vm.100]",
    "[timeouts]",
    "[[quirk]]",
    "name = ",
    "match = [",
    "\"5s\"",
    "= 18446744073709551616",
    "\u{0}",
    "\u{202e}",
    "é",
    "\u{fffd}",
    "\r\n",
    "{",
    "}",
    "\"vmid\":",
    "9999999999",
    "-1",
    "0x",
    "\\",
    "\"\"\"",
    "[PENDING]",
    "[special:cloudinit]",
    "snaptime: ",
];

fn mutate(rng: &mut Rng, seeds: &[String], input: &mut Vec<u8>) {
    let rounds = 1 + rng.below(8);
    for _ in 0..rounds {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            2 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                input.drain(a..b);
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let chunk: Vec<u8> = input[a..b].to_vec();
                let at = rng.below(input.len() + 1);
                let max = if rng.below(50) == 0 { 2000 } else { 3 };
                let times = 1 + rng.below(max);
                for _ in 0..times {
                    input.splice(at..at, chunk.iter().copied());
                }
            }
            4 => {
                let s = seeds[rng.below(seeds.len())].as_bytes();
                if !s.is_empty() {
                    let a = rng.below(s.len());
                    let b = (a + 1 + rng.below(200)).min(s.len());
                    let at = rng.below(input.len() + 1);
                    input.splice(at..at, s[a..b].iter().copied());
                }
            }
            5 if len > 0 => {
                // Replace a run of digits / hex with an extreme number.
                let i = rng.below(len);
                let n = [
                    "0",
                    "7",
                    "8",
                    "ff",
                    "fff",
                    "100",
                    "4294967296",
                    "999999999999",
                ][rng.below(8)];
                input.splice(i..(i + 1).min(len), n.bytes());
            }
            6 if len > 0 => {
                // Cut at a line boundary.
                let i = rng.below(len);
                input.truncate(i);
            }
            _ => {
                let t = TOKENS[rng.below(TOKENS.len())];
                let at = rng.below(input.len() + 1);
                input.splice(at..at, t.bytes());
            }
        }
    }
    input.truncate(1 << 16);
}

struct Stats {
    execs: u64,
    panics: u64,
    first_panic: Option<PathBuf>,
}

fn fuzz(t: &Target, dur: Duration, seed: u64) -> Stats {
    let mut rng = Rng(seed | 1);
    let mut st = Stats {
        execs: 0,
        panics: 0,
        first_panic: None,
    };
    let mut corpus: Vec<String> = t.seeds.clone();
    if corpus.is_empty() {
        corpus.push(String::new());
    }
    let start = Instant::now();
    // The seeds themselves first.
    let mut queue: Vec<String> = corpus.clone();
    loop {
        let text = match queue.pop() {
            Some(s) => s,
            None => {
                if start.elapsed() >= dur {
                    break;
                }
                let mut b = corpus[rng.below(corpus.len())].clone().into_bytes();
                mutate(&mut rng, &corpus, &mut b);
                String::from_utf8_lossy(&b).into_owned()
            }
        };
        let parse = t.parse;
        let r = catch_unwind(AssertUnwindSafe(|| parse(&text)));
        st.execs += 1;
        if r.is_err() {
            st.panics += 1;
            if st.first_panic.is_none() {
                let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-crashes");
                let _ = std::fs::create_dir_all(&dir);
                let p = dir.join(format!("{}-{}.txt", t.name, st.execs));
                let _ = std::fs::write(&p, &text);
                st.first_panic = Some(p);
            }
        } else if st.execs % 97 == 0 && corpus.len() < 512 {
            // Keep some mutants as new seeds so mutations compound.
            corpus.push(text);
        }
    }
    st
}

#[test]
fn fuzz_parsers_do_not_panic() {
    let secs: f64 = std::env::var("PT_HOOK_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let only = std::env::var("PT_HOOK_FUZZ_TARGET").ok();
    // Quiet panics: a caught panic would otherwise print a message per input.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut report = Vec::new();
    let mut failed = Vec::new();
    for (i, t) in targets().iter().enumerate() {
        if only.as_deref().is_some_and(|o| o != t.name) {
            continue;
        }
        assert!(!t.seeds.is_empty(), "{}: no seeds", t.name);
        let s = fuzz(
            t,
            Duration::from_secs_f64(secs),
            0x9e37_79b9_7f4a_7c15 ^ i as u64,
        );
        let line = format!(
            "fuzz {}: {} executions in {secs} s, {} panics{}",
            t.name,
            s.execs,
            s.panics,
            s.first_panic
                .as_ref()
                .map(|p| format!(" (first input: {})", p.display()))
                .unwrap_or_default()
        );
        if s.panics > 0 {
            failed.push(line.clone());
        }
        report.push(line);
    }
    std::panic::set_hook(hook);
    for l in &report {
        eprintln!("{l}");
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
