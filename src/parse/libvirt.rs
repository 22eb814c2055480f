//! libvirt's text: the domain XML on a hook's stdin, domain names and UUIDs.

use std::io::Read;

use crate::error::{Error, Result};
use crate::parse::config::MAX_FILE_BYTES;
use crate::pci::Bdf;

/// The largest domain XML accepted on stdin.
pub const MAX_XML_BYTES: usize = MAX_FILE_BYTES;
/// Elements + attributes + text nodes: a real domain has a few hundred.
const MAX_XML_NODES: u32 = 100_000;
/// libvirt itself caps nothing, but a longer name is not a real domain.
const MAX_NAME_BYTES: usize = 512;

/// A canonical UUID (8-4-4-4-12 hex digits), lowercased; None for anything else.
pub fn parse_uuid(s: &str) -> Option<String> {
    let s = s.trim();
    if s.len() != 36 {
        return None;
    }
    for (i, b) in s.bytes().enumerate() {
        let dash = matches!(i, 8 | 13 | 18 | 23);
        if dash != (b == b'-') || (!dash && !b.is_ascii_hexdigit()) {
            return None;
        }
    }
    Some(s.to_ascii_lowercase())
}

/// A domain name as shown in messages and handed to user hooks: never a path component.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(Error::Usage(format!(
            "invalid libvirt domain name {name:?}: must be 1 to {MAX_NAME_BYTES} bytes"
        )));
    }
    if name.contains('/') || name.chars().any(|c| c.is_control()) {
        return Err(Error::Usage(format!(
            "invalid libvirt domain name {name:?}: no '/' or control characters"
        )));
    }
    Ok(())
}

/// What pt-hook takes from a domain's XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainXml {
    pub name: String,
    pub uuid: String,
    /// PCI functions with where they come from ("hostdev 1 (managed)").
    pub hostdevs: Vec<(Bdf, String)>,
}

/// libvirt's number syntax for address attributes (base 0 of strtoul: 0x hex, leading 0
/// octal, decimal).
fn parse_num(s: &str) -> Option<u32> {
    let (digits, radix) = crate::pci::split_base0(s.trim());
    if digits.is_empty() || digits.len() > 8 || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(digits, radix).ok()
}

fn line_col(doc: &roxmltree::Document, node: roxmltree::Node) -> String {
    let p = doc.text_pos_at(node.range().start);
    format!("line {}", p.row)
}

/// Parses a domain XML: `<domain>` with one `<name>` and one `<uuid>`, and every
/// `<devices><hostdev mode='subsystem' type='pci'><source><address .../>`. DTDs (and so
/// entity expansion) are refused; malformed XML is an error naming line and column.
pub fn parse_domain(xml: &str, what: &str) -> Result<DomainXml> {
    let opts = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_XML_NODES,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(xml, opts)
        .map_err(|e| Error::Config(format!("{what}: malformed XML: {e}")))?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" || root.tag_name().namespace().is_some() {
        return Err(Error::Config(format!(
            "{what}: root element is <{}>, expected <domain>",
            root.tag_name().name()
        )));
    }
    let single = |tag: &str| -> Result<String> {
        let mut it = root.children().filter(|n| n.has_tag_name(tag));
        let n = it
            .next()
            .ok_or_else(|| Error::Config(format!("{what}: <domain> has no <{tag}>")))?;
        if let Some(n2) = it.next() {
            return Err(Error::Config(format!(
                "{what}: {}: a second <{tag}> in <domain>",
                line_col(&doc, n2)
            )));
        }
        if n.children().any(|c| c.is_element()) {
            return Err(Error::Config(format!(
                "{what}: {}: <{tag}> must hold text only",
                line_col(&doc, n)
            )));
        }
        Ok(n.text().unwrap_or("").trim().to_string())
    };
    let name = single("name")?;
    check_name(&name).map_err(|e| Error::Config(format!("{what}: <name>: {e}")))?;
    let uuid_text = single("uuid")?;
    let uuid = parse_uuid(&uuid_text).ok_or_else(|| {
        Error::Config(format!(
            "{what}: <uuid> {uuid_text:?} is not a UUID (8-4-4-4-12 hex digits)"
        ))
    })?;
    let mut hostdevs = Vec::new();
    let mut index = 0usize;
    for devices in root.children().filter(|n| n.has_tag_name("devices")) {
        for hd in devices.children().filter(|n| n.has_tag_name("hostdev")) {
            if hd.attribute("mode") != Some("subsystem") || hd.attribute("type") != Some("pci") {
                continue;
            }
            let at = line_col(&doc, hd);
            let here = format!("{what}: {at}: <hostdev type='pci'>");
            let mut sources = hd.children().filter(|n| n.has_tag_name("source"));
            let source = sources
                .next()
                .ok_or_else(|| Error::Config(format!("{here} has no <source>")))?;
            if sources.next().is_some() {
                return Err(Error::Config(format!("{here} has two <source> elements")));
            }
            let mut addrs = source.children().filter(|n| n.has_tag_name("address"));
            let addr = addrs
                .next()
                .ok_or_else(|| Error::Config(format!("{here}: <source> has no <address>")))?;
            if addrs.next().is_some() {
                return Err(Error::Config(format!(
                    "{here}: <source> has two <address> elements"
                )));
            }
            let field = |attr: &str, max: u32, required: bool| -> Result<u32> {
                match addr.attribute(attr) {
                    None if !required => Ok(0),
                    None => Err(Error::Config(format!(
                        "{here}: <address> has no {attr}="
                    ))),
                    Some(v) => parse_num(v).filter(|n| *n <= max).ok_or_else(|| {
                        Error::Config(format!(
                            "{here}: <address {attr}='{v}'>: expected a number up to {max:#x} (like 0x{:0w$x})",
                            0,
                            w = if max > 0xff { 4 } else { 2 }
                        ))
                    }),
                }
            };
            let bdf = Bdf {
                domain: field("domain", 0xffff, false)? as u16,
                bus: field("bus", 0xff, true)? as u8,
                dev: field("slot", 0x1f, true)? as u8,
                func: field("function", 7, true)? as u8,
            };
            let managed = hd.attribute("managed") == Some("yes");
            hostdevs.push((
                bdf,
                format!(
                    "hostdev {index}{} ({at})",
                    if managed { ", managed" } else { "" }
                ),
            ));
            index += 1;
        }
    }
    Ok(DomainXml {
        name,
        uuid,
        hostdevs,
    })
}

/// Reads the domain XML from `input`, refusing more than `MAX_XML_BYTES`.
pub fn read_xml(input: &mut dyn Read) -> Result<String> {
    let mut buf = Vec::new();
    input
        .take(MAX_XML_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| {
            Error::Usage(format!(
                "reading the domain XML from stdin: {}",
                crate::host::errno_text(&e)
            ))
        })?;
    if buf.len() > MAX_XML_BYTES {
        return Err(Error::Usage(format!(
            "domain XML on stdin is larger than {MAX_XML_BYTES} bytes: refusing it"
        )));
    }
    if buf.is_empty() {
        return Err(Error::Usage(
            "no domain XML on stdin (libvirt passes it; by hand: pt-hook libvirt DOMAIN prepare begin - < domain.xml)".into(),
        ));
    }
    String::from_utf8(buf).map_err(|_| Error::Usage("domain XML on stdin is not UTF-8".into()))
}
