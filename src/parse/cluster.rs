//! The cluster-wide config in pmxcfs: `/etc/pve/pt-hook/pt-hook.toml` and
//! `/etc/pve/pt-hook/quirks.d/*.toml`, read without ever blocking on pmxcfs, checked with the
//! rule that fits where they are, and cached for when /etc/pve cannot be read.
//!
//! **Where /etc/pve stands** comes from the host's mountinfo (the line whose mount point is
//! `<root>/etc/pve`), never from /etc/pve itself, which is what may hang:
//! - pmxcfs (`fuse`, source `/dev/fuse`, `user_id=0`): a node of a cluster, or a standalone
//!   Proxmox node (pmxcfs runs there too). Entries from /etc/pve down are held to what pmxcfs
//!   reports (`Trust::Pmxcfs`), those above it to the normal rule.
//! - not mounted: a host without Proxmox, a test root, or a node whose pmxcfs is down. The
//!   directory, if there is one, is a plain one and gets the normal rule throughout. When the
//!   cache says the last read was from pmxcfs, pmxcfs is down (the mount point is then an
//!   empty directory) and the cache is used with a warning.
//! - another mount (another FUSE daemon, NFS...): its owners and modes prove nothing; a
//!   `pt-hook/` directory on it is refused.
//!
//! **Reading** is one bounded snapshot (`Host::snapshot`: a child process, `READ_TIMEOUT`) of
//! /etc/pve/pt-hook and everything down to quirks.d's files. Quorum loss leaves pmxcfs
//! readable (files 0440, directories 0555), which the checks accept.
//!
//! **What counts as having no cluster config**: /etc/pve or /etc/pve/pt-hook does not exist
//! on a readable /etc/pve (pmxcfs answering, or a plain directory). That is silent and drops
//! the cache. **What falls back to the cache** (with a warning naming why): the snapshot timed
//! out or failed, a file in it could not be read, or pmxcfs is not mounted while the cache
//! came from it. Without a cache, the same cases warn and go on with the local config only.
//! A cluster file that is refused (owner, mode, another mount, too large) or malformed is an
//! error (exit 2), as a local one is: that is the operator's to fix, not pmxcfs trouble.
//!
//! **The cache** (`/var/lib/pt-hook/cluster-config.json`, mode 0600 through
//! `Host::write_atomic`) holds the files of the last good read (trusted and parsed), when they
//! were read and whether from pmxcfs. It is rewritten only when that changes, and only by the
//! commands that change the host (`update_cache`); plan, status, doctor and quirks only read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::host::{paths, Host, TreeEntry};
use crate::parse::trust::{check_owner_mode, read_trusted, Trust, MAX_FILE_BYTES};

/// How long the whole read of /etc/pve/pt-hook may take. pmxcfs answers from memory in
/// microseconds; a read still waiting after this is a hung or overloaded pmxcfs.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// What happened to the cluster part of the config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ClusterState {
    /// There is no /etc/pve/pt-hook (or no /etc/pve).
    #[default]
    None,
    /// Read from /etc/pve now (`pmxcfs`: from the pmxcfs mount, else a plain directory).
    Live { pmxcfs: bool },
    /// Could not be read (`why`); the copy cached at `saved` (Unix seconds) is used.
    Cached { why: String, saved: u64 },
    /// Could not be read (`why`) and there is no cache: only the local config is used.
    Unavailable { why: String },
}

impl ClusterState {
    pub fn name(&self) -> &'static str {
        match self {
            ClusterState::None => "none",
            ClusterState::Live { .. } => "live",
            ClusterState::Cached { .. } => "cached",
            ClusterState::Unavailable { .. } => "unavailable",
        }
    }
}

/// What the cache needs after a load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CacheAction {
    #[default]
    Keep,
    /// A good read that differs from the cache.
    Save(Cache),
    /// /etc/pve/pt-hook is gone: so goes its copy.
    Remove,
}

/// The cached copy of the cluster config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    pub version: u32,
    /// When it was read (Unix seconds).
    pub saved: u64,
    /// Read from the pmxcfs mount (else a plain /etc/pve directory).
    pub pmxcfs: bool,
    /// Host paths relative to the root ("etc/pve/pt-hook/pt-hook.toml") and their text.
    pub files: Vec<CachedFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachedFile {
    pub path: String,
    pub text: String,
}

/// The cluster part of a config load.
#[derive(Debug, Clone, Default)]
pub struct ClusterRead {
    pub state: ClusterState,
    /// pt-hook.toml (name for messages, text).
    pub config: Option<(String, String)>,
    /// quirks.d/*.toml in name order.
    pub quirks: Vec<(String, String)>,
    pub warnings: Vec<String>,
    pub cache: CacheAction,
}

/// Where /etc/pve stands (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PveMount {
    Pmxcfs,
    NotMounted,
    Other(crate::host::Mount),
}

pub fn pve_mount(host: &dyn Host) -> PveMount {
    match crate::host::mount_at(host, paths::PVE_DIR) {
        Ok(Some(m)) if m.is_pmxcfs() => PveMount::Pmxcfs,
        Ok(Some(m)) => PveMount::Other(m),
        // No mountinfo (a hand-made fake root): nothing is mounted there.
        Ok(None) | Err(_) => PveMount::NotMounted,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// "2026-12-02 01:10:00 UTC".
pub fn fmt_time(secs: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(secs);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.replace('T', " ").replace('Z', " UTC")
}

/// The cache, if there is a usable one; a damaged or untrusted one is a warning and unused.
fn load_cache(host: &dyn Host, warnings: &mut Vec<String>) -> Option<Cache> {
    if !host.exists(paths::CLUSTER_CACHE) {
        return None;
    }
    let shown = host.display(paths::CLUSTER_CACHE);
    let text = match read_trusted(host, paths::CLUSTER_CACHE) {
        Ok(t) => t,
        Err(e) => {
            warnings.push(format!(
                "cluster config cache: {e}; not using it (the next start with /etc/pve readable rewrites it)"
            ));
            return None;
        }
    };
    match serde_json::from_str::<Cache>(&text) {
        Ok(c) if c.version == 1 && c.files.iter().all(|f| cache_path_ok(&f.path)) => Some(c),
        Ok(_) | Err(_) => {
            warnings.push(format!(
                "cluster config cache {shown} is damaged; not using it (the next start with /etc/pve readable rewrites it)"
            ));
            None
        }
    }
}

/// A cached file name as `read` writes them.
fn cache_path_ok(p: &str) -> bool {
    let Some(rest) = p
        .strip_prefix(paths::CLUSTER_DIR)
        .and_then(|r| r.strip_prefix('/'))
    else {
        return false;
    };
    // Only shown in messages, never opened.
    rest == "pt-hook.toml"
        || rest
            .strip_prefix("quirks.d/")
            .is_some_and(|f| f.ends_with(".toml") && !f.contains('/'))
}

const HINT: &str = "check `systemctl status pve-cluster` and `pvecm status`";

/// The cluster part: `why` it could not be read, so the cache (or nothing).
fn fallback(
    host: &dyn Host,
    why: String,
    cache: Option<Cache>,
    mut warnings: Vec<String>,
) -> ClusterRead {
    match cache {
        Some(c) => {
            warnings.push(format!(
                "cluster config: {why}; using the copy read at {} (cached in {}); {HINT}",
                fmt_time(c.saved),
                host.display(paths::CLUSTER_CACHE)
            ));
            let mut r = from_files(host, &c.files);
            r.state = ClusterState::Cached {
                why,
                saved: c.saved,
            };
            r.warnings = warnings;
            r
        }
        None => {
            warnings.push(format!(
                "cluster config: {why}; there is no cached copy, so only the local config ({}) is used; {HINT}",
                host.display("etc/pt-hook")
            ));
            ClusterRead {
                state: ClusterState::Unavailable { why },
                warnings,
                ..ClusterRead::default()
            }
        }
    }
}

fn from_files(host: &dyn Host, files: &[CachedFile]) -> ClusterRead {
    let mut r = ClusterRead::default();
    let cfg = format!("{}/pt-hook.toml", paths::CLUSTER_DIR);
    for f in files {
        let item = (host.display(&f.path), f.text.clone());
        if f.path == cfg {
            r.config = Some(item);
        } else {
            r.quirks.push(item);
        }
    }
    r.quirks.sort();
    r
}

fn errno_of(e: &std::io::Error) -> String {
    crate::error::errno_text(e)
}

fn errno_num(n: i32) -> String {
    crate::error::errno_text(&std::io::Error::from_raw_os_error(n))
}

/// Reads the cluster part of the config (see the module doc).
pub fn read(host: &dyn Host) -> Result<ClusterRead> {
    let mut warnings = Vec::new();
    let cache = load_cache(host, &mut warnings);
    let mount = pve_mount(host);
    let pve = host.display(paths::PVE_DIR);
    if mount == PveMount::NotMounted && cache.as_ref().is_some_and(|c| c.pmxcfs) {
        return Ok(fallback(
            host,
            format!("pmxcfs is not mounted at {pve}, and it was when the config was last read"),
            cache,
            warnings,
        ));
    }
    let dir = paths::CLUSTER_DIR;
    // A plain directory cannot hang (and only root can put a FIFO there, which the direct
    // walk does not open): no child process for it. Anything mounted at /etc/pve can.
    let walked = if mount == PveMount::NotMounted {
        Ok(crate::host::snapshot_direct(host, dir, 2, MAX_FILE_BYTES))
    } else {
        host.snapshot(dir, 2, MAX_FILE_BYTES, READ_TIMEOUT)
    };
    let entries = match walked {
        Ok(v) => v,
        Err(e) if e.raw_os_error() == Some(libc::ETIMEDOUT) => {
            return Ok(fallback(
                host,
                format!(
                    "reading {} did not finish within {} (pmxcfs not responding?)",
                    host.display(dir),
                    humantime::format_duration(READ_TIMEOUT)
                ),
                cache,
                warnings,
            ))
        }
        Err(e) => {
            return Ok(fallback(
                host,
                format!("reading {} failed: {}", host.display(dir), errno_of(&e)),
                cache,
                warnings,
            ))
        }
    };
    // The components down to /etc/pve/pt-hook: a missing one is "no cluster config".
    let comps = ["", "etc", paths::PVE_DIR, dir];
    for c in comps {
        let Some(e) = entries.iter().find(|e| e.rel == c) else {
            // The walk ended above it (an error there, handled below).
            break;
        };
        if e.errno == libc::ENOENT {
            return Ok(ClusterRead {
                state: ClusterState::None,
                warnings,
                cache: if cache.is_some() {
                    CacheAction::Remove
                } else {
                    CacheAction::Keep
                },
                ..ClusterRead::default()
            });
        }
        if e.errno != 0 {
            return Ok(fallback(
                host,
                format!("reading {} failed: {}", host.display(c), errno_num(e.errno)),
                cache,
                warnings,
            ));
        }
    }
    if let PveMount::Other(m) = &mount {
        return Err(Error::Config(format!(
            "{}: refusing: {pve} is a {} mount of {} ({}), not pmxcfs (fuse from /dev/fuse, user_id=0), so the owners and modes it shows prove nothing; remove {} or unmount what is on {pve}",
            host.display(dir),
            m.fstype,
            m.source,
            m.super_opts,
            host.display(dir)
        )));
    }
    let pmxcfs = mount == PveMount::Pmxcfs;
    let euid = host.euid();
    let check = |e: &TreeEntry| -> Result<()> {
        let below_mount = e.rel == paths::PVE_DIR || e.rel.starts_with("etc/pve/");
        let trust = if pmxcfs && below_mount {
            Trust::Pmxcfs
        } else {
            Trust::Local
        };
        check_owner_mode(
            &host.display(&e.rel),
            e.uid,
            e.mode,
            e.is_dir(),
            euid,
            trust,
        )
    };
    for c in comps {
        if let Some(e) = entries.iter().find(|e| e.rel == c) {
            check(e)?;
        }
    }
    let cfg_rel = format!("{dir}/pt-hook.toml");
    let qdir = format!("{dir}/quirks.d");
    let mut files: Vec<CachedFile> = Vec::new();
    let mut wanted: Vec<&TreeEntry> = entries
        .iter()
        .filter(|e| {
            e.rel == cfg_rel
                || e.rel == qdir
                || e.rel
                    .strip_prefix(&qdir)
                    .and_then(|r| r.strip_prefix('/'))
                    .is_some_and(|f| f.ends_with(".toml") && !f.contains('/'))
        })
        .collect();
    wanted.sort_by(|a, b| a.rel.cmp(&b.rel));
    // quirks.d first: a file is trusted only below a trusted directory.
    wanted.sort_by_key(|e| e.rel != qdir);
    for e in wanted {
        let shown = host.display(&e.rel);
        if e.errno != 0 {
            return Ok(fallback(
                host,
                format!("reading {shown} failed: {}", errno_num(e.errno)),
                cache,
                warnings,
            ));
        }
        check(e)?;
        if e.rel == qdir {
            if !e.is_dir() {
                return Err(Error::Config(format!("{shown}: refusing: not a directory")));
            }
            continue;
        }
        let Some(data) = &e.data else {
            return Err(Error::Config(format!(
                "{shown}: refusing: not a regular file"
            )));
        };
        if e.truncated {
            return Err(Error::Config(format!(
                "{shown}: refusing: larger than {MAX_FILE_BYTES} bytes"
            )));
        }
        let text = String::from_utf8(data.clone())
            .map_err(|_| Error::Config(format!("{shown}: not valid UTF-8")))?;
        files.push(CachedFile {
            path: e.rel.clone(),
            text,
        });
    }
    let mut r = from_files(host, &files);
    r.state = ClusterState::Live { pmxcfs };
    r.warnings = warnings;
    let same = cache
        .as_ref()
        .is_some_and(|c| c.pmxcfs == pmxcfs && c.files == files);
    r.cache = if same {
        CacheAction::Keep
    } else {
        CacheAction::Save(Cache {
            version: 1,
            saved: now(),
            pmxcfs,
            files,
        })
    };
    Ok(r)
}

/// Brings the cache in line with a load whose config was good (the caller parsed it): writes
/// the new copy (atomically, root-only) or removes a stale one. Err: what went wrong, for a
/// warning (a cache that cannot be written costs only the fallback).
pub fn update_cache(host: &dyn Host, action: &CacheAction) -> std::result::Result<(), String> {
    let shown = host.display(paths::CLUSTER_CACHE);
    match action {
        CacheAction::Keep => Ok(()),
        CacheAction::Save(c) => {
            let json = serde_json::to_vec_pretty(c).map_err(|e| e.to_string())?;
            host.write_atomic(paths::CLUSTER_CACHE, &json)
                .map_err(|e| format!("writing the cluster config cache {shown}: {}", errno_of(&e)))
        }
        CacheAction::Remove => match host.remove_file(paths::CLUSTER_CACHE) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!(
                "removing the cluster config cache {shown}: {}",
                errno_of(&e)
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_paths_are_only_the_cluster_files() {
        assert!(cache_path_ok("etc/pve/pt-hook/pt-hook.toml"));
        assert!(cache_path_ok("etc/pve/pt-hook/quirks.d/10-a.toml"));
        for bad in [
            "etc/pt-hook/pt-hook.toml",
            "etc/pve/pt-hook/quirks.d/../../x.toml",
            "etc/pve/pt-hook/quirks.d/a/b.toml",
            "etc/pve/pt-hook/other.toml",
            "etc/pve/pt-hookx/pt-hook.toml",
        ] {
            assert!(!cache_path_ok(bad), "{bad}");
        }
    }

    #[test]
    fn times_read_as_utc() {
        assert_eq!(fmt_time(0), "1970-01-01 00:00:00 UTC");
    }
}
