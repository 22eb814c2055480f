//! libvirt mode: the same binary as `/etc/libvirt/hooks/qemu` (or a file in
//! `/etc/libvirt/hooks/qemu.d/`). libvirt runs it as `qemu <domain> <operation> <sub-operation>
//! <extra>` with the domain XML on stdin; `pt-hook libvirt <domain> <operation> <sub-operation>
//! [<extra>]` is the same by hand.
//!
//! `prepare begin` is pre-start and `release end` is post-stop for the domain's
//! `<hostdev mode='subsystem' type='pci'>` functions (and the rest of their IOMMU groups);
//! every other operation is logged and accepted. State is keyed by the domain's UUID
//! (`/run/pt-hook/libvirt-<uuid>.json`): domain names may hold almost any character and are
//! never part of a path. Nothing is printed on stdout, which libvirt reads back as XML for
//! some operations (migrate, restore).

use std::ffi::OsStr;
use std::io::{IsTerminal, Read};
use std::path::Path;

use crate::engine::ctx::Ctx;
use crate::engine::lifecycle;
use crate::engine::state::{Domain, VmKey};
use crate::error::{Error, Result};
use crate::host::Host;

use crate::parse::libvirt::{check_name, parse_domain, read_xml, MAX_XML_BYTES};

#[derive(clap::Args, Debug, Clone)]
pub struct LibvirtArgs {
    /// The domain name (must match `<name>` in the XML on stdin).
    pub domain: String,
    /// libvirt's operation: prepare, start, started, stopped, release, migrate, restore, ...
    pub operation: String,
    /// libvirt's sub-operation: begin or end (`-` when none).
    pub sub_operation: String,
    /// libvirt's extra argument (`-` when none); ignored.
    pub extra: Option<String>,
}

/// What the hook does for an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    PreStart,
    PostStop,
}

pub fn action(operation: &str, sub_operation: &str) -> Option<Action> {
    match (operation, sub_operation) {
        ("prepare", "begin") => Some(Action::PreStart),
        ("release", "end") => Some(Action::PostStop),
        _ => None,
    }
}

/// Whether the binary was started as a libvirt hook: named `qemu` in a `hooks` directory, or
/// any name inside `qemu.d` (libvirt ≥ 6.5 runs every file there with the same arguments).
pub fn invoked_as_hook(argv0: &OsStr) -> bool {
    let p = Path::new(argv0);
    let name = p.file_name().and_then(|n| n.to_str());
    let parent = p
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str());
    matches!(
        (name, parent),
        (Some("qemu"), Some("hooks")) | (Some(_), Some("qemu.d"))
    )
}

/// Turns `qemu DOMAIN OP SUB EXTRA` into `pt-hook libvirt DOMAIN OP SUB EXTRA` when the
/// binary runs as a libvirt hook; other command lines are returned unchanged.
pub fn rewrite_args(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    match args.first() {
        Some(a0) if invoked_as_hook(a0) => {
            let mut v = Vec::with_capacity(args.len() + 1);
            v.push(a0.clone());
            v.push("libvirt".into());
            // `--` so a domain named like an option stays a domain.
            v.push("--".into());
            v.extend(args.into_iter().skip(1));
            v
        }
        _ => args,
    }
}

/// `pt-hook libvirt ...`: reads stdin only for the operations it acts on (and drains it,
/// bounded, for the others so libvirt never writes into a closed pipe).
pub fn command(
    host: std::sync::Arc<dyn Host>,
    load_cfg: &dyn Fn(&dyn Host) -> Result<crate::parse::config::Config>,
    dry_run: bool,
    log: &crate::log::Logger,
    args: &LibvirtArgs,
    stdin: &mut dyn Read,
    stdin_is_tty: bool,
) -> Result<()> {
    check_name(&args.domain)?;
    let Some(act) = action(&args.operation, &args.sub_operation) else {
        if !stdin_is_tty {
            let _ = std::io::copy(&mut stdin.take(MAX_XML_BYTES as u64), &mut std::io::sink());
        }
        log.info(&format!(
            "operation {} {}: nothing to do",
            args.operation, args.sub_operation
        ));
        return Ok(());
    };
    if stdin_is_tty {
        return Err(Error::Usage(
            "expects the domain XML on stdin (libvirt passes it); by hand: pt-hook libvirt DOMAIN prepare begin - < domain.xml".into(),
        ));
    }
    let xml = read_xml(stdin)?;
    let dom = parse_domain(&xml, "domain XML (stdin)")?;
    if dom.name != args.domain {
        return Err(Error::Usage(format!(
            "domain argument {:?} does not match <name>{}</name> in the XML on stdin",
            args.domain, dom.name
        )));
    }
    let cfg = load_cfg(&*host)?;
    for w in &cfg.origin.warnings {
        log.warn(w);
    }
    let ctx = Ctx {
        node: host.node_name(),
        host,
        cfg: &cfg,
        log,
        dry_run,
        prewalk: crate::engine::guard::PreWalk::none(),
    };
    let key = VmKey::Libvirt(Domain {
        uuid: dom.uuid.clone(),
        name: dom.name.clone(),
    });
    let phase = match act {
        Action::PreStart => crate::engine::health::Phase::PreStart,
        Action::PostStop => crate::engine::health::Phase::PostStop,
    };
    crate::engine::metrics::timed(&ctx, phase, || match act {
        Action::PreStart => {
            for (b, origin) in &dom.hostdevs {
                log.info(&format!("{origin}: {b}"));
            }
            if dry_run {
                println!(
                    "dry-run: {key}: {} PCI hostdev(s): {}",
                    dom.hostdevs.len(),
                    dom.hostdevs
                        .iter()
                        .map(|(b, o)| format!("{b} [{o}]"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            let replan = || lifecycle::plan_bdfs(&ctx, &key, &dom.hostdevs);
            let r = replan().and_then(|p| crate::engine::phase::pre_start(&ctx, &key, p, &replan));
            crate::engine::fleet::publish_after(&ctx, "pre-start");
            r
        }
        Action::PostStop => {
            let r = crate::engine::phase::post_stop(&ctx, &key);
            crate::engine::fleet::publish_after(&ctx, "post-stop");
            r
        }
    })
}

/// The stdin handle and whether it is a terminal.
pub fn stdin() -> (std::io::Stdin, bool) {
    let s = std::io::stdin();
    let tty = s.is_terminal();
    (s, tty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::libvirt::parse_uuid;

    const XML: &str = r#"<domain type='kvm' id='3'>
  <name>win11 gaming</name>
  <uuid>4DEA22B3-1D52-D8F3-2516-782E98AB3FA0</uuid>
  <devices>
    <disk type='file' device='disk'><source file='/x.qcow2'/></disk>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <driver name='vfio'/>
      <source>
        <address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
      </source>
      <address type='pci' domain='0x0000' bus='0x06' slot='0x00' function='0x0'/>
    </hostdev>
    <hostdev mode='subsystem' type='pci' managed='no'>
      <source><address bus='2' slot='0' function='1'/></source>
    </hostdev>
    <hostdev mode='subsystem' type='usb'>
      <source><vendor id='0x046d'/><product id='0xc52b'/></source>
    </hostdev>
  </devices>
</domain>"#;

    #[test]
    fn takes_pci_hostdevs_name_and_uuid() {
        let d = parse_domain(XML, "t").unwrap();
        assert_eq!(d.name, "win11 gaming");
        assert_eq!(d.uuid, "4dea22b3-1d52-d8f3-2516-782e98ab3fa0");
        let b: Vec<String> = d.hostdevs.iter().map(|(b, _)| b.to_string()).collect();
        // The guest-side <address> of the hostdev is not the host function.
        assert_eq!(b, ["0000:01:00.0", "0000:02:00.1"]);
        assert!(d.hostdevs[0].1.contains("managed"), "{:?}", d.hostdevs[0]);
        assert!(d.hostdevs[0].1.contains("line 6"), "{:?}", d.hostdevs[0]);
    }

    #[test]
    fn refuses_malformed_and_hostile_xml() {
        let cases: &[(&str, &str)] = &[
            ("", "malformed XML"),
            ("<domain><name>a</name>", "malformed XML"),
            ("<domain><name>a</name><uuid>x</uuid></domain>", "not a UUID"),
            ("<dom/>", "expected <domain>"),
            ("<domain><uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid></domain>", "no <name>"),
            ("<domain><name>a</name><name>b</name></domain>", "second <name>"),
            ("<domain><name>a/b</name><uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid></domain>", "no '/'"),
            (
                "<!DOCTYPE d [<!ENTITY a 'aaaa'><!ENTITY b '&a;&a;&a;'>]><domain><name>&b;</name></domain>",
                "malformed XML",
            ),
        ];
        for (xml, want) in cases {
            let e = parse_domain(xml, "stdin").unwrap_err();
            assert!(e.to_string().contains(want), "{xml}: {e}");
            assert_eq!(e.exit_code(), 2);
        }
        let base = |addr: &str| {
            format!("<domain><name>a</name><uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid><devices><hostdev mode='subsystem' type='pci'><source>{addr}</source></hostdev></devices></domain>")
        };
        for (addr, want) in [
            ("", "no <address>"),
            ("<address bus='0x01' slot='0x00'/>", "no function="),
            (
                "<address bus='0x100' slot='0' function='0'/>",
                "bus='0x100'",
            ),
            ("<address bus='1' slot='0x20' function='0'/>", "slot='0x20'"),
            ("<address bus='1' slot='0' function='8'/>", "function='8'"),
            ("<address bus='zz' slot='0' function='0'/>", "bus='zz'"),
            ("<address bus='-1' slot='0' function='0'/>", "bus='-1'"),
            (
                "<address bus='1' slot='0' function='0'/><address bus='2' slot='0' function='0'/>",
                "two <address>",
            ),
        ] {
            let e = parse_domain(&base(addr), "stdin").unwrap_err();
            assert!(e.to_string().contains(want), "{addr}: {e}");
        }
        // Octal as libvirt's strtoul(base 0) reads it.
        let d = parse_domain(&base("<address bus='010' slot='0' function='0'/>"), "s").unwrap();
        assert_eq!(d.hostdevs[0].0.bus, 8);
    }

    #[test]
    fn never_panics_on_truncated_or_mangled_input() {
        // Every prefix and single-byte mangling of a real domain XML: errors, no panics.
        for i in 0..XML.len() {
            if XML.is_char_boundary(i) {
                let _ = parse_domain(&XML[..i], "t");
            }
        }
        let bytes = XML.as_bytes();
        for i in (0..bytes.len()).step_by(3) {
            for c in [b'<', b'>', b'\'', b'&', 0u8, b'x'] {
                let mut v = bytes.to_vec();
                v[i] = c;
                if let Ok(s) = std::str::from_utf8(&v) {
                    let _ = parse_domain(s, "t");
                }
            }
        }
        // Random documents from XML's own alphabet (a fixed xorshift seed: reproducible).
        let alphabet: Vec<char> = "<>/='\"&;!?[]- abcdemnostuvxy0123456789\n#x:"
            .chars()
            .collect();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..5000 {
            let mut doc = String::from("<domain><name>a</name>");
            for _ in 0..(seed % 120) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                doc.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            let _ = parse_domain(&doc, "t");
        }
        let deep = "<a>".repeat(5000) + &"</a>".repeat(5000);
        assert!(parse_domain(&deep, "t").is_err());
    }

    #[test]
    fn names_uuids_and_argv0() {
        assert!(check_name("web-01").is_ok());
        assert!(check_name("ünïcode name").is_ok());
        for bad in ["", "a/b", "../x", "a\nb", &"x".repeat(600)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_uuid("4dea22b3-1d52-d8f3-2516-782e98ab3fa0").as_deref(),
            Some("4dea22b3-1d52-d8f3-2516-782e98ab3fa0")
        );
        for bad in [
            "",
            "4dea22b31d52d8f32516782e98ab3fa0",
            "4dea22b3-1d52-d8f3-2516-782e98ab3fa",
            "../../../../../../etc/passwd-aaaaaaa",
            "4dea22b3-1d52-d8f3-2516-782e98ab3fag",
        ] {
            assert_eq!(parse_uuid(bad), None, "{bad}");
        }
        assert!(invoked_as_hook(OsStr::new("/etc/libvirt/hooks/qemu")));
        assert!(invoked_as_hook(OsStr::new(
            "/etc/libvirt/hooks/qemu.d/pt-hook"
        )));
        assert!(!invoked_as_hook(OsStr::new("/usr/sbin/pt-hook")));
        assert!(!invoked_as_hook(OsStr::new("qemu")));
        assert!(!invoked_as_hook(OsStr::new("/usr/bin/qemu")));
        let a = rewrite_args(
            ["/etc/libvirt/hooks/qemu", "-x", "prepare", "begin", "-"]
                .iter()
                .map(Into::into)
                .collect(),
        );
        assert_eq!(
            a,
            [
                "/etc/libvirt/hooks/qemu",
                "libvirt",
                "--",
                "-x",
                "prepare",
                "begin",
                "-"
            ]
        );
        assert_eq!(action("prepare", "begin"), Some(Action::PreStart));
        assert_eq!(action("release", "end"), Some(Action::PostStop));
        assert_eq!(action("started", "begin"), None);
    }

    #[test]
    fn read_xml_is_bounded() {
        let big = vec![b' '; MAX_XML_BYTES + 10];
        let e = read_xml(&mut &big[..]).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
        assert!(read_xml(&mut &b""[..]).is_err());
        assert!(read_xml(&mut &[0xffu8, 0xfe][..]).is_err());
        assert_eq!(read_xml(&mut XML.as_bytes()).unwrap(), XML);
    }
}
