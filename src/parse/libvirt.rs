//! libvirt's text: domain UUIDs.

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
