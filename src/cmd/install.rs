//! `pt-hook install`: links the installed binary where Proxmox looks for hookscripts (a
//! `snippets` directory of a storage from /etc/pve/storage.cfg), or where libvirt looks for
//! hooks (`/etc/libvirt/hooks/qemu.d/`). Always a symlink, never a copy in user storage;
//! running it again is a no-op; anything else already at the link's place is left alone and
//! reported.

use crate::error::{Error, Result};
use crate::host::Host;
use crate::parse::config::{check_trusted, read_bounded};

pub const STORAGE_CFG: &str = "etc/pve/storage.cfg";
pub const LIBVIRT_HOOKS_DIR: &str = "etc/libvirt/hooks/qemu.d";
pub const LINK_NAME: &str = "pt-hook";

#[derive(clap::Args, Debug, Clone)]
pub struct InstallArgs {
    /// Proxmox storage for the hookscript link: a directory storage whose content includes
    /// `snippets` (its `path` in /etc/pve/storage.cfg + /snippets/pt-hook).
    #[arg(long, default_value = "local", value_name = "STORAGE")]
    pub storage: String,
    /// The installed pt-hook the link points to (absolute; root-owned, not group/other
    /// writable).
    #[arg(long, default_value = "/usr/sbin/pt-hook", value_name = "PATH")]
    pub binary: String,
    /// Link it as a libvirt hook instead: /etc/libvirt/hooks/qemu.d/pt-hook (libvirt 6.5 or later).
    #[arg(long)]
    pub libvirt: bool,
    /// VM id for the printed `qm set` line.
    #[arg(long, value_name = "VMID")]
    pub vmid: Option<String>,
}

/// One storage section of storage.cfg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    pub id: String,
    pub kind: String,
    pub path: Option<String>,
    pub content: Vec<String>,
    pub shared: bool,
    pub disabled: bool,
    pub line: usize,
}

fn valid_storage_id(s: &str) -> bool {
    // Proxmox: [a-z][a-z0-9\-\_\.]*[a-z0-9]
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphabetic()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Parses /etc/pve/storage.cfg: `type: id` headers, indented `key value` properties,
/// `#` comments. Errors name the file and line.
pub fn parse_storage_cfg(text: &str, file: &str) -> Result<Vec<Storage>> {
    let mut out: Vec<Storage> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim_end();
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if !line.starts_with([' ', '\t']) {
            let (kind, id) = line.split_once(':').ok_or_else(|| {
                Error::Config(format!("{file}:{n}: expected `type: id`, found {line:?}"))
            })?;
            let (kind, id) = (kind.trim(), id.trim());
            if !valid_storage_id(id) || !kind.bytes().all(|c| c.is_ascii_alphanumeric()) {
                return Err(Error::Config(format!(
                    "{file}:{n}: invalid storage section {line:?}"
                )));
            }
            out.push(Storage {
                id: id.to_string(),
                kind: kind.to_string(),
                path: None,
                content: Vec::new(),
                shared: false,
                disabled: false,
                line: n,
            });
            continue;
        }
        let Some(cur) = out.last_mut() else {
            return Err(Error::Config(format!(
                "{file}:{n}: property before any storage section"
            )));
        };
        let body = line.trim();
        let (key, value) = match body.split_once([' ', '\t']) {
            Some((k, v)) => (k, v.trim()),
            None => (body, "1"),
        };
        match key {
            "path" => cur.path = Some(value.to_string()),
            "content" => {
                cur.content = value
                    .split(',')
                    .map(|c| c.trim().to_string())
                    .filter(|c| !c.is_empty())
                    .collect()
            }
            "shared" => cur.shared = value == "1",
            "disable" => cur.disabled = value == "1",
            _ => {}
        }
    }
    Ok(out)
}

impl Storage {
    /// The storage's directory: `path`, or the default mount point of network storages.
    pub fn dir(&self) -> Option<String> {
        self.path.clone().or_else(|| {
            matches!(self.kind.as_str(), "nfs" | "cifs" | "cephfs" | "glusterfs")
                .then(|| format!("/mnt/pve/{}", self.id))
        })
    }

    /// [`Storage::dir`] as a host-relative path, checked (absolute, no `.`/`..`); `file` is
    /// storage.cfg as shown in errors.
    pub fn dir_rel(&self, file: &str) -> Result<Option<String>> {
        self.dir()
            .map(|d| {
                rel_of(
                    &d,
                    &format!("{file}:{}: storage {} path", self.line, self.id),
                )
                .map_err(|e| Error::Config(e.to_string()))
            })
            .transpose()
    }
}

/// Reads and parses /etc/pve/storage.cfg (trusted, bounded). `Ok(None)` when the file does
/// not exist; otherwise the storages and the file's name as shown in messages.
pub fn read_storage_cfg(host: &dyn Host) -> Result<Option<(String, Vec<Storage>)>> {
    if !host.exists(STORAGE_CFG) {
        return Ok(None);
    }
    let file = host.display(STORAGE_CFG);
    let all = parse_storage_cfg(&read_bounded(host, STORAGE_CFG)?, &file)?;
    Ok(Some((file, all)))
}

/// An absolute path without `..`, `.` or empty components, as a host-relative path.
fn rel_of(p: &str, what: &str) -> Result<String> {
    let p = if p.len() > 1 {
        p.trim_end_matches('/')
    } else {
        p
    };
    let ok = p.starts_with('/')
        && !p.contains('\0')
        && p.trim_start_matches('/')
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if !ok || p == "/" {
        return Err(Error::Usage(format!(
            "{what} {p:?}: expected an absolute path without '.' or '..' components"
        )));
    }
    Ok(p.trim_start_matches('/').to_string())
}

/// Creates `link_rel` → `target` unless it is already there. Refuses anything else at that
/// place.
fn ensure_link(host: &dyn Host, dry_run: bool, link_rel: &str, target: &str) -> Result<bool> {
    let shown = host.display(link_rel);
    match host.link_target(link_rel) {
        Ok(t) if t == target => return Ok(false),
        Ok(t) => {
            return Err(Error::Failed(format!(
                "{shown}: already a link to {t}, not {target}: refusing to replace it (remove it first if it is an old pt-hook)"
            )))
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            return Err(Error::Failed(format!(
                "{shown}: a file that is not pt-hook's link is there: refusing to overwrite it (pt-hook is linked, never copied, into storage)"
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::host("install", "reading link", shown, e)),
    }
    let dir = link_rel.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    if !host.exists(dir) {
        if dry_run {
            println!("dry-run: create directory {}", host.display(dir));
        } else {
            host.create_dir_all(dir)
                .map_err(|e| Error::host("install", "creating", host.display(dir), e))?;
        }
    }
    if dry_run {
        println!("dry-run: link {shown} -> {target}");
        return Ok(true);
    }
    host.symlink(target, link_rel)
        .map_err(|e| Error::host("install", "creating link", shown, e))?;
    Ok(true)
}

fn check_binary(host: &dyn Host, binary: &str) -> Result<()> {
    let rel = rel_of(binary, "--binary")?;
    if !host.exists(&rel) {
        return Err(Error::Usage(format!(
            "{}: no such file; install the binary first (install -m 0755 pt-hook {binary}) or pass --binary",
            host.display(&rel)
        )));
    }
    check_trusted(host, &rel)?;
    let (_, mode) = host
        .stat_owner_mode(&rel)
        .map_err(|e| Error::host("install", "stat", host.display(&rel), e))?;
    if mode & 0o170000 != 0o100000 || mode & 0o100 == 0 {
        return Err(Error::Usage(format!(
            "{}: not an executable file",
            host.display(&rel)
        )));
    }
    Ok(())
}

pub fn command(
    host: &dyn Host,
    dry_run: bool,
    a: &InstallArgs,
    log: &crate::log::Logger,
) -> Result<()> {
    check_binary(host, &a.binary)?;
    if a.libvirt {
        let link = format!("{LIBVIRT_HOOKS_DIR}/{LINK_NAME}");
        let made = ensure_link(host, dry_run, &link, &a.binary)?;
        report(host, made, dry_run, &link, &a.binary);
        println!("Restart libvirtd (or virtqemud) so it sees the new hook.");
        return Ok(());
    }
    let vmid = match &a.vmid {
        Some(v) => crate::parse::pve::parse_vmid(v)?.to_string(),
        None => "<VMID>".to_string(),
    };
    if !valid_storage_id(&a.storage) {
        return Err(Error::Usage(format!("invalid storage id {:?}", a.storage)));
    }
    let Some((file, all)) = read_storage_cfg(host)? else {
        return Err(Error::Config(format!(
            "{}: not found; is this a Proxmox VE node? (for libvirt use --libvirt)",
            host.display(STORAGE_CFG)
        )));
    };
    let with_snippets: Vec<&str> = all
        .iter()
        .filter(|s| s.dir().is_some() && s.content.iter().any(|c| c == "snippets"))
        .map(|s| s.id.as_str())
        .collect();
    let hint = if with_snippets.is_empty() {
        "no storage has snippets content".to_string()
    } else {
        format!("storages with snippets: {}", with_snippets.join(", "))
    };
    let st = all
        .iter()
        .find(|s| s.id == a.storage)
        .ok_or_else(|| Error::Config(format!("{file}: no storage {:?} ({hint})", a.storage)))?;
    let dir_rel = st.dir_rel(&file)?.ok_or_else(|| {
        Error::Config(format!(
            "{file}:{}: storage {} is of type {} and has no directory; hookscripts need a directory storage with snippets content ({hint})",
            st.line, st.id, st.kind
        ))
    })?;
    if !st.content.iter().any(|c| c == "snippets") {
        return Err(Error::Config(format!(
            "{file}:{}: storage {} does not allow snippets (content {}); enable it with: pvesm set {} --content {}",
            st.line,
            st.id,
            if st.content.is_empty() { "(none)".to_string() } else { st.content.join(",") },
            st.id,
            st.content.iter().map(String::as_str).chain(["snippets"]).collect::<Vec<_>>().join(",")
        )));
    }
    if st.disabled {
        return Err(Error::Config(format!(
            "{file}:{}: storage {} is disabled",
            st.line, st.id
        )));
    }
    if !host.exists(&dir_rel) {
        return Err(Error::Config(format!(
            "storage {}: its directory {} does not exist (not mounted?)",
            st.id,
            host.display(&dir_rel)
        )));
    }
    if st.shared || matches!(st.kind.as_str(), "nfs" | "cifs" | "cephfs" | "glusterfs") {
        log.warn(&format!(
            "storage {} is shared: every node that runs these VMs needs pt-hook at {}",
            st.id, a.binary
        ));
    }
    let link = format!("{dir_rel}/snippets/{LINK_NAME}");
    let made = ensure_link(host, dry_run, &link, &a.binary)?;
    report(host, made, dry_run, &link, &a.binary);
    println!("Attach it to a VM:");
    println!(
        "  qm set {vmid} --hookscript {}:snippets/{LINK_NAME}",
        st.id
    );
    Ok(())
}

fn report(host: &dyn Host, made: bool, dry_run: bool, link: &str, target: &str) {
    let shown = host.display(link);
    if !made {
        println!("already installed: {shown} -> {target}");
    } else if !dry_run {
        println!("linked {shown} -> {target}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "\
# comment
dir: local
\tpath /var/lib/vz
\tcontent iso,vztmpl,backup,snippets

lvmthin: local-lvm
\tthinpool data
\tvgname pve
\tcontent rootdir,images

nfs: nas
\texport /srv/pve
\tserver 10.0.0.2
\tcontent images,snippets
\tdisable
";

    #[test]
    fn parses_storage_cfg() {
        let s = parse_storage_cfg(CFG, "storage.cfg").unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].id, "local");
        assert_eq!(s[0].dir().as_deref(), Some("/var/lib/vz"));
        assert!(s[0].content.contains(&"snippets".to_string()));
        assert_eq!(s[1].dir(), None);
        assert_eq!(s[2].dir().as_deref(), Some("/mnt/pve/nas"));
        assert!(s[2].disabled);
        assert_eq!(s[2].line, 11);
        let e = parse_storage_cfg("\tpath /x\n", "f").unwrap_err();
        assert!(e.to_string().starts_with("f:1:"), "{e}");
        let e = parse_storage_cfg("dir local\n", "f").unwrap_err();
        assert!(e.to_string().contains("f:1"), "{e}");
        let e = parse_storage_cfg("dir: ../x\n", "f").unwrap_err();
        assert!(e.to_string().contains("invalid storage"), "{e}");
    }

    #[test]
    fn paths_are_checked() {
        assert_eq!(rel_of("/var/lib/vz", "p").unwrap(), "var/lib/vz");
        for bad in ["var/lib", "/", "/a/../b", "/a//b", "/a/./b", ""] {
            assert!(rel_of(bad, "p").is_err(), "{bad}");
        }
    }
}
