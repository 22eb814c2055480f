//! Which files pt-hook believes: it runs as root and acts on what it reads, so a config file
//! (and every directory above it) must be root's and not writable by group or others. Files
//! on the pmxcfs mount are held to what pmxcfs itself guarantees (`Trust::Pmxcfs`).

use crate::error::{Error, Result};
use crate::host::Host;

pub const MAX_FILE_BYTES: usize = 1 << 20;

/// Refuses a file that someone other than root (or the current user) owns, or that group or
/// others can write: pt-hook runs as root and acts on what it reads.
pub fn check_trusted(host: &dyn Host, rel: &str) -> Result<()> {
    trusted_entry(host, rel, false)?;
    // Every directory above it too: whoever can write one of them can swap the file. A
    // sticky directory (/tmp) is fine: others cannot rename or delete root's entries in it.
    let mut dir = std::path::Path::new(rel).parent();
    while let Some(d) = dir {
        trusted_entry(host, d.to_str().unwrap_or(""), true)?;
        dir = d.parent();
    }
    Ok(())
}

fn trusted_entry(host: &dyn Host, rel: &str, is_dir: bool) -> Result<()> {
    let (uid, mode) = host
        .stat_owner_mode(rel)
        .map_err(|e| Error::host("config", "stat", host.display(rel), e))?;
    check_owner_mode(
        &host.display(rel),
        uid,
        mode,
        is_dir,
        host.euid(),
        Trust::Local,
    )
}

/// Which rule an owner and mode are held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// A normal filesystem: owned by root (or by pt-hook's own uid), not writable by group or
    /// others (a sticky directory may be).
    Local,
    /// Below the pmxcfs mount: pmxcfs reports every entry as root's and never writable by
    /// group or others (files 0640, 0440 without quorum; directories 0755/0555; 0600/0700
    /// under priv/; group www-data), and refuses chmod and chown. Anything else did not come
    /// from pmxcfs.
    Pmxcfs,
}

/// The owner and mode rule for one file or directory (`path` only names it in messages).
pub fn check_owner_mode(
    path: &str,
    uid: u32,
    mode: u32,
    is_dir: bool,
    euid: u32,
    trust: Trust,
) -> Result<()> {
    let what = if is_dir { "directory " } else { "" };
    if trust == Trust::Pmxcfs {
        if uid != 0 || mode & 0o022 != 0 {
            return Err(Error::Config(format!(
                "{what}{path}: refusing: owner uid {uid}, mode {:o} is not what pmxcfs reports (root, never writable by group or others), so /etc/pve is not the cluster filesystem it is mounted as; check `findmnt /etc/pve` and `systemctl status pve-cluster`",
                mode & 0o7777
            )));
        }
        return Ok(());
    }
    if uid != 0 && uid != euid {
        return Err(Error::Config(format!(
            "{what}{path}: refusing: owned by uid {uid}, not root; run chown root: on it"
        )));
    }
    let sticky_dir = is_dir && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky_dir {
        return Err(Error::Config(format!(
            "{what}{path}: refusing: writable by {} (mode {:o}); run chmod go-w on it",
            if mode & 0o002 != 0 { "others" } else { "group" },
            mode & 0o7777
        )));
    }
    Ok(())
}

/// Reads a trusted text file of bounded size.
pub fn read_trusted(host: &dyn Host, rel: &str) -> Result<String> {
    check_trusted(host, rel)?;
    read_bounded(host, rel)
}

/// Reads a text file of at most `MAX_FILE_BYTES`, refusing larger ones.
pub fn read_bounded(host: &dyn Host, rel: &str) -> Result<String> {
    let bytes = host
        .read_bytes(rel, MAX_FILE_BYTES + 1)
        .map_err(|e| Error::host("config", "reading", host.display(rel), e))?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(Error::Config(format!(
            "{}: refusing: larger than {} bytes",
            host.display(rel),
            MAX_FILE_BYTES
        )));
    }
    String::from_utf8(bytes)
        .map_err(|_| Error::Config(format!("{}: not valid UTF-8", host.display(rel))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: u32 = libc::S_IFREG;
    const DIR: u32 = libc::S_IFDIR;

    /// What pmxcfs reports (cfs-plug-memdb.c gives 0666/0777 with quorum, 0444/0555 without;
    /// pmxcfs.c's getattr masks files to 0750 and directories to 0755, 0700 under priv/, and
    /// sets the group to www-data) passes; nothing writable by group or others does.
    #[test]
    fn pmxcfs_rule_takes_what_pmxcfs_reports_and_nothing_weaker() {
        for (mode, dir) in [
            (FILE | 0o640, false),
            (FILE | 0o440, false),
            (FILE | 0o600, false),
            (DIR | 0o755, true),
            (DIR | 0o555, true),
            (DIR | 0o700, true),
        ] {
            check_owner_mode("/etc/pve/x", 0, mode, dir, 0, Trust::Pmxcfs)
                .unwrap_or_else(|e| panic!("{mode:o}: {e}"));
        }
        for (uid, mode, dir) in [
            (0, FILE | 0o660, false),
            (0, FILE | 0o642, false),
            (0, DIR | 0o775, true),
            (0, DIR | 0o1777, true),
            (1000, FILE | 0o640, false),
        ] {
            let e = check_owner_mode("/etc/pve/x", uid, mode, dir, 1000, Trust::Pmxcfs)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("not what pmxcfs reports") && !e.contains("chmod"),
                "{e}"
            );
        }
        // The normal rule: the sticky directory and pt-hook's own uid are fine there.
        check_owner_mode("/tmp", 0, DIR | 0o1777, true, 0, Trust::Local).unwrap();
        check_owner_mode("/x", 1000, FILE | 0o644, false, 1000, Trust::Local).unwrap();
        let e = check_owner_mode("/x", 0, FILE | 0o664, false, 0, Trust::Local).unwrap_err();
        assert!(e.to_string().contains("chmod go-w"), "{e}");
    }
}
