//! The rooted host layer. Every access to host files and every helper program goes through a
//! `Host`: `RealHost` for a real (or fake, `--root`) tree, `sim::SimHost` for the simulated
//! kernel used by the behaviour tests. Paths given to a `Host` are relative to its root
//! ("sys/bus/pci/devices/0000:01:00.0/driver"); they are built only by `paths` from validated
//! values.

pub mod kio;
pub mod paths;
pub mod real;
#[cfg(test)]
pub mod sim;
pub mod tree;

pub use crate::error::errno_text;

use std::io;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Result of a helper program (modprobe, systemctl).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

pub trait Host: Send + Sync + 'static {
    /// The node name PCI mappings are matched against: `PT_HOOK_NODE`, else the short host
    /// name (`uname -n` up to the first dot).
    fn node_name(&self) -> String {
        node_name()
    }
    /// The effective uid: trusted files must be owned by root or by it.
    fn euid(&self) -> u32 {
        nix::unistd::geteuid().as_raw()
    }
    /// Reads a whole (small) file as text.
    fn read(&self, rel: &str) -> io::Result<String>;
    /// Reads at most `max` bytes (config space).
    fn read_bytes(&self, rel: &str, max: usize) -> io::Result<Vec<u8>>;
    /// One write(2) of `data` to an existing file (sysfs attribute semantics).
    fn write(&self, rel: &str, data: &str) -> io::Result<()>;
    /// `write` that may block in the kernel (unbind, bind, reset, remove): gives up waiting
    /// after `timeout` (capped by the hard deadline, `kio::cap`) with ETIMEDOUT. This default
    /// runs `write` on a helper thread (enough for the simulated kernel); `RealHost` runs it in
    /// a child process, since a thread blocked in the kernel keeps the whole process alive.
    fn write_bounded(self: Arc<Self>, rel: &str, data: &str, timeout: Duration) -> io::Result<()> {
        let timeout = kio::cap(timeout);
        let (tx, rx) = mpsc::channel();
        let (rel, data) = (rel.to_string(), data.to_string());
        std::thread::Builder::new()
            .name("sysfs-write".into())
            .spawn(move || {
                let _ = tx.send(self.write(&rel, &data));
            })?;
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(_) => Err(io::Error::from_raw_os_error(libc::ETIMEDOUT)),
        }
    }
    /// `read` that may block in the kernel, given up after `timeout` (capped by the hard
    /// deadline) with ETIMEDOUT. Default: a helper thread, like `write_bounded`. (`RealHost`
    /// bounds its reads of the attributes that can block without being asked: `kio`.)
    #[allow(dead_code)]
    fn read_bounded(self: Arc<Self>, rel: &str, timeout: Duration) -> io::Result<String> {
        let timeout = kio::cap(timeout);
        let (tx, rx) = mpsc::channel();
        let rel = rel.to_string();
        std::thread::Builder::new()
            .name("sysfs-read".into())
            .spawn(move || {
                let _ = tx.send(self.read(&rel));
            })?;
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(_) => Err(io::Error::from_raw_os_error(libc::ETIMEDOUT)),
        }
    }
    /// The last path component of a symlink's target (`driver` → "vfio-pci").
    fn link_name(&self, rel: &str) -> io::Result<String>;
    /// The whole target of a symlink (a device node's place in the PCI tree).
    fn link_target(&self, rel: &str) -> io::Result<String> {
        let _ = rel;
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }
    /// Names in a directory, sorted.
    fn list(&self, rel: &str) -> io::Result<Vec<String>>;
    /// Names in a directory that `keep` accepts, sorted, each with its symlink target (None:
    /// not a symlink, or it could not be read); the others are not read. One directory walk
    /// instead of a path lookup per entry.
    fn list_links_where(
        &self,
        rel: &str,
        keep: &dyn Fn(&str) -> bool,
    ) -> io::Result<Vec<(String, Option<String>)>> {
        Ok(self
            .list(rel)?
            .into_iter()
            .filter(|n| keep(n))
            .map(|n| {
                let t = self.link_target(&format!("{rel}/{n}")).ok();
                (n, t)
            })
            .collect())
    }
    fn exists(&self, rel: &str) -> bool;
    /// Creates a regular file atomically (write temp + rename), creating parents, mode 0600.
    fn write_atomic(&self, rel: &str, data: &[u8]) -> io::Result<()>;
    /// Replaces a file in an existing directory atomically (a temporary file
    /// `NAME.tmp.PID` beside it, renamed over it), without fsync and without creating the
    /// directory: for pmxcfs, which stores every write synchronously and where the directory
    /// must already exist. Default: `write_atomic`.
    fn replace_file(&self, rel: &str, data: &[u8]) -> io::Result<()> {
        self.write_atomic(rel, data)
    }
    fn remove_file(&self, rel: &str) -> io::Result<()>;
    /// `write_atomic` with the file's mode given (0644 for a file another service reads) and
    /// a temporary name of its own per call (`NAME.tmp.PID.N`, created with O_EXCL and
    /// O_NOFOLLOW: never through a link someone planted), fsync'd before the rename; the
    /// directory must exist and is not fsync'd (a crash leaves the previous complete file).
    fn write_atomic_mode(&self, rel: &str, data: &[u8], mode: u32) -> io::Result<()> {
        let _ = (rel, data, mode);
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }
    /// rename(2) of one file to another name (moving a damaged file aside).
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let _ = (from, to);
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }
    /// Owner uid and mode of a file (for refusing files others can write).
    fn stat_owner_mode(&self, rel: &str) -> io::Result<(u32, u32)>;
    /// Runs a program (never through a shell) with a deadline. `prog` is a bare name looked up
    /// in the host's sbin/bin dirs.
    fn run(&self, prog: &str, args: &[&str], timeout: Duration) -> io::Result<CmdOutput>;
    /// Runs an executable file under the host's root (a user hook) directly, never through a
    /// shell, with exactly `env` as its environment, stdin from /dev/null, in its own process
    /// group; the whole group is killed at the deadline (then ETIMEDOUT).
    fn run_file(
        &self,
        rel: &str,
        args: &[&str],
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> io::Result<CmdOutput> {
        let _ = (rel, args, env, timeout);
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }
    /// Runs pt-hook itself again (`pt-hook --root ROOT ARGS`) as a child with stdin on
    /// /dev/null and its output captured, waits at most `timeout`, then kills it and gives
    /// ETIMEDOUT (without waiting for it to die). ENOSYS where that is not possible (the
    /// simulated kernel): the caller does the work itself.
    fn run_self(&self, args: &[&str], timeout: Duration) -> io::Result<CmdOutput> {
        let _ = (args, timeout);
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }
    /// Creates a symlink `rel` → `target` (the target is stored as given); EEXIST when
    /// anything is at `rel`.
    fn symlink(&self, target: &str, rel: &str) -> io::Result<()> {
        let _ = (target, rel);
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }
    /// Creates a directory and its missing parents (mode 0755).
    fn create_dir_all(&self, rel: &str) -> io::Result<()> {
        let _ = rel;
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }
    /// Takes an exclusive flock on a lock file; the lock lives as long as the returned guard.
    fn lock(&self, rel: &str, timeout: Duration) -> io::Result<Box<dyn LockGuard>>;
    /// Absolute path for messages.
    fn display(&self, rel: &str) -> String;
    /// The open files of every process (but this one) that are one of the nodes `want`
    /// asks for (by path or by major:minor), or vfio device fds when it asks for those: what
    /// lsof and fuser read from /proc/*/fd. The host guard's only source for "which process
    /// holds this device".
    fn open_nodes(&self, want: &NodeQuery) -> io::Result<Vec<OpenNode>> {
        let _ = want;
        Ok(Vec::new())
    }
    /// IPv4 addresses per interface (getifaddrs): /proc has no file that lists them.
    fn ipv4_addrs(&self) -> io::Result<Vec<Ipv4Addr>> {
        Ok(Vec::new())
    }
    /// A snapshot of `rel` on a filesystem whose every access may hang (pmxcfs): an entry for
    /// the root (""), for each component of `rel` (owner and mode as `stat_owner_mode` gives
    /// them), and when `rel` is a directory for what is below it down to `depth` levels, with
    /// the contents of each regular file (at most `max_file` bytes; `truncated` beyond). A
    /// component that cannot be reached ends the walk with its errno. The whole walk is given
    /// up after `timeout` (ETIMEDOUT). `RealHost` runs it in a child process (`tree`); this
    /// default walks directly (a tree that cannot block: the simulated kernel's).
    fn snapshot(
        &self,
        rel: &str,
        depth: u32,
        max_file: usize,
        timeout: Duration,
    ) -> io::Result<Vec<TreeEntry>> {
        let _ = timeout;
        Ok(snapshot_direct(self, rel, depth, max_file))
    }
}

/// One entry of `Host::snapshot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// Relative to the host root: "" (the root), "etc", "etc/pve/pt-hook/pt-hook.toml".
    pub rel: String,
    pub uid: u32,
    /// st_mode, file type bits included.
    pub mode: u32,
    /// 0, or why the entry could not be stat'ed, opened or read.
    pub errno: i32,
    /// A regular file's contents (at most the asked maximum).
    pub data: Option<Vec<u8>>,
    /// The file is larger than the asked maximum.
    pub truncated: bool,
}

impl TreeEntry {
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// `Host::snapshot` through the plain accessors, without a deadline.
pub(crate) fn snapshot_direct<H: Host + ?Sized>(
    host: &H,
    rel: &str,
    depth: u32,
    max_file: usize,
) -> Vec<TreeEntry> {
    fn one<H: Host + ?Sized>(host: &H, rel: &str, max_file: usize) -> TreeEntry {
        let mut e = TreeEntry {
            rel: rel.to_string(),
            uid: 0,
            mode: 0,
            errno: 0,
            data: None,
            truncated: false,
        };
        match host.stat_owner_mode(rel) {
            Ok((uid, mode)) => {
                e.uid = uid;
                e.mode = mode;
                if mode & libc::S_IFMT == libc::S_IFREG {
                    match host.read_bytes(rel, max_file + 1) {
                        Ok(mut d) => {
                            e.truncated = d.len() > max_file;
                            d.truncate(max_file);
                            e.data = Some(d);
                        }
                        Err(err) => e.errno = err.raw_os_error().unwrap_or(libc::EIO),
                    }
                }
            }
            Err(err) => e.errno = err.raw_os_error().unwrap_or(libc::EIO),
        }
        e
    }
    fn below<H: Host + ?Sized>(
        host: &H,
        dir: &str,
        depth: u32,
        max_file: usize,
        out: &mut Vec<TreeEntry>,
    ) {
        for name in host.list(dir).unwrap_or_default() {
            let rel = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            let e = one(host, &rel, max_file);
            let recurse = e.errno == 0 && e.is_dir() && depth > 1;
            out.push(e);
            if recurse {
                below(host, &rel, depth - 1, max_file, out);
            }
        }
    }
    let mut out = vec![one(host, "", max_file)];
    let mut at = String::new();
    for c in rel.split('/').filter(|c| !c.is_empty()) {
        if !at.is_empty() {
            at.push('/');
        }
        at.push_str(c);
        let e = one(host, &at, max_file);
        let go_on = e.errno == 0 && e.is_dir();
        out.push(e);
        if !go_on {
            return out;
        }
    }
    if depth > 0 {
        below(host, &at, depth, max_file, &mut out);
    }
    out
}

/// One line of /proc/self/mountinfo, the fields pt-hook decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted (octal escapes undone).
    pub point: String,
    pub fstype: String,
    pub source: String,
    /// The superblock options ("rw,user_id=0,group_id=0,default_permissions,allow_other").
    pub super_opts: String,
}

impl Mount {
    /// Whether this is Proxmox's cluster filesystem as pmxcfs mounts it: a FUSE mount (type
    /// `fuse`, no subtype, source `/dev/fuse`: pmxcfs calls libfuse's fuse_mount without a
    /// fsname or subtype) whose daemon runs as root (`user_id=0`). A FUSE daemon makes up
    /// every owner and mode it reports, so those are only as good as who runs it.
    pub fn is_pmxcfs(&self) -> bool {
        self.fstype == "fuse"
            && self.source == "/dev/fuse"
            && self.super_opts.split(',').any(|o| o == "user_id=0")
    }
}

/// mountinfo's octal escapes (`\040` for a space) undone.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount whose mount point is exactly `abs` in `mountinfo` (the last one: it is the one on
/// top), or None.
pub fn mount_at_in(mountinfo: &str, abs: &str) -> Option<Mount> {
    let mut found = None;
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.len() < 5 || f.len() < sep + 4 {
            continue;
        }
        let point = unescape_mount(f[4]);
        if point != abs {
            continue;
        }
        found = Some(Mount {
            point,
            fstype: f[sep + 1].to_string(),
            source: unescape_mount(f[sep + 2]),
            super_opts: f[sep + 3].to_string(),
        });
    }
    found
}

/// The mount at the host path `rel` as the host's `proc/self/mountinfo` shows it (its mount
/// point is `host.display(rel)`, made absolute: `/etc/pve` on a real node, `<root>/etc/pve`
/// under a fake root, whose own mountinfo declares its mounts; no `..` or links resolved). Reading mountinfo never touches the mounted
/// filesystem. Err when mountinfo cannot be read.
pub fn mount_at(host: &dyn Host, rel: &str) -> io::Result<Option<Mount>> {
    let text = host.read("proc/self/mountinfo")?;
    // mountinfo has absolute paths; a relative --root is taken from the working directory.
    let mut at = std::path::PathBuf::from(host.display(rel));
    if at.is_relative() {
        at = std::env::current_dir()?.join(at);
    }
    Ok(mount_at_in(&text, &at.to_string_lossy()))
}

/// What `Host::open_nodes` looks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeQuery {
    /// Node paths ("/dev/nvme0n1", "/dev/vfio/8"): matched by the fd's link text, no stat.
    pub paths: std::collections::BTreeSet<String>,
    /// major:minor of character and block nodes: matched for any other device-node fd (a
    /// node inside a container's /dev has another path but the same number).
    pub rdevs: std::collections::BTreeSet<(u32, u32)>,
    /// Also every `anon_inode:[vfio-device]` fd, and every vfio group fd (`/dev/vfio/N`: the
    /// groups a device fd's owner has open tell which group the device fd belongs to).
    pub vfio_fds: bool,
    /// Every fd that can be one of the above for any query (every node under a /dev, with
    /// its number, and every vfio fd): a walk made before the query is known, filtered with
    /// `matches` afterwards (the guard walks /proc while it reads the class tables).
    pub all: bool,
}

impl NodeQuery {
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.rdevs.is_empty() && !self.vfio_fds && !self.all
    }

    /// Whether an open node (as the host found it) is one asked for: the filter of an `all`
    /// walk and the simulator's (the real walk decides per fd before it stats).
    pub fn matches(&self, n: &OpenNode) -> bool {
        if self.all {
            return true;
        }
        self.paths.contains(&n.path)
            || n.rdev.is_some_and(|r| self.rdevs.contains(&r))
            || (self.vfio_fds && (n.path == VFIO_DEVICE_FD || is_vfio_group_path(&n.path)))
    }
}

/// "/dev/vfio/8": a vfio group node.
pub fn is_vfio_group_path(p: &str) -> bool {
    p.strip_prefix("/dev/vfio/")
        .is_some_and(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()))
}

/// The link text of a vfio device fd.
pub const VFIO_DEVICE_FD: &str = "anon_inode:[vfio-device]";

/// One open device node of a process (see `Host::open_nodes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenNode {
    pub pid: u32,
    /// The fd's link text: "/dev/nvme0n1", "/dev/vfio/8", "anon_inode:[vfio-device]".
    pub path: String,
    /// major:minor of a character or block node.
    pub rdev: Option<(u32, u32)>,
    pub block: bool,
    /// For a vfio device fd: the device's sysfs path, where the kernel shows it in fdinfo
    /// (`vfio-device-syspath:`).
    pub vfio_syspath: Option<String>,
}

/// An IPv4 address on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Addr {
    pub iface: String,
    pub addr: std::net::Ipv4Addr,
    pub prefix: u8,
}

pub trait LockGuard: Send {}

/// Runs a write that can block in the kernel (unbind, reset, remove) through
/// `Host::write_bounded` and gives up waiting after `timeout` (or at the hard deadline). A
/// timed-out write is left to finish in the kernel (on `RealHost`, in a child process that
/// holds none of the hook's files); the caller reports ETIMEDOUT and moves on, so the hook
/// itself always returns and exits.
pub fn write_with_deadline(
    host: &Arc<dyn Host>,
    rel: &str,
    data: &str,
    timeout: Duration,
) -> io::Result<()> {
    Arc::clone(host).write_bounded(rel, data, timeout)
}

/// `d`, cut to what is left until `deadline` (at least 1 ms): a step's own budget within the
/// phase's.
pub fn within(d: Duration, deadline: Instant) -> Duration {
    d.min(deadline.saturating_duration_since(Instant::now()))
        .max(Duration::from_millis(1))
}

/// `f` of each item, the items side by side, in their order: the first on this thread, each
/// other one on a thread of its own (a thread start is a dozen system calls: none for one item).
/// A panic in any of them goes on in the caller.
pub fn side_by_side<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    side_by_side_caught(items, f)
        .into_iter()
        .map(|r| r.unwrap_or_else(|p| std::panic::resume_unwind(p)))
        .collect()
}

/// `side_by_side`, each item's panic caught (`Err`) instead of going on in the caller.
pub fn side_by_side_caught<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> R + Sync,
) -> Vec<std::thread::Result<R>> {
    let Some((first, rest)) = items.split_first() else {
        return Vec::new();
    };
    std::thread::scope(|s| {
        let f = &f;
        let hs: Vec<_> = rest.iter().map(|i| s.spawn(move || f(i))).collect();
        let mut out = Vec::with_capacity(items.len());
        out.push(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
            || f(first),
        )));
        out.extend(hs.into_iter().map(|h| h.join()));
        out
    })
}

/// Polls `check` until it returns Some or the deadline passes. The interval starts at 1 ms and
/// doubles up to 50 ms, like the kernel's own readiness polls.
pub fn poll_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    // retry runs `check`, sleeps the next delay, runs it again...: the delays double from 1 ms
    // up to 50 ms, each cut to the time left, and end at the deadline, after which `check`
    // has run one last time.
    let delays = retry::delay::Exponential::from_millis(1)
        .map(|d| d.min(Duration::from_millis(50)))
        .map_while(move |d| {
            let left = timeout.checked_sub(start.elapsed())?;
            (!left.is_zero()).then(|| d.min(left))
        });
    retry::retry(delays, || check().ok_or(())).ok()
}

pub(crate) fn node_name() -> String {
    if let Ok(n) = std::env::var("PT_HOOK_NODE") {
        if !n.is_empty() {
            return n;
        }
    }
    nix::sys::utsname::uname()
        .ok()
        .and_then(|u| u.nodename().to_str().map(|s| s.to_string()))
        .map(|n| n.split('.').next().unwrap_or("").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The line a Proxmox node has for pmxcfs (`mount` shows it as `/dev/fuse on /etc/pve
    /// type fuse (rw,nosuid,nodev,relatime,user_id=0,group_id=0,default_permissions,
    /// allow_other)`), among others.
    const NODE: &str = "\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/mapper/pve-root rw,errors=remount-ro
35 22 0:30 / /var/lib/lxcfs rw,nosuid,nodev,relatime shared:17 - fuse.lxcfs lxcfs rw,user_id=0,group_id=0,allow_other
44 22 0:40 / /etc/pve rw,nosuid,nodev,relatime shared:24 - fuse /dev/fuse rw,user_id=0,group_id=0,default_permissions,allow_other
50 22 0:45 / /mnt/my\\040share rw,relatime shared:30 - fuse.sshfs me@nas:/x rw,user_id=1000,group_id=1000
";

    #[test]
    fn finds_pmxcfs_in_mountinfo() {
        let m = mount_at_in(NODE, "/etc/pve").unwrap();
        assert_eq!(
            (m.fstype.as_str(), m.source.as_str()),
            ("fuse", "/dev/fuse")
        );
        assert!(m.is_pmxcfs());
        assert!(mount_at_in(NODE, "/etc").is_none());
        assert!(mount_at_in(NODE, "/etc/pve/nodes").is_none());
        assert!(!mount_at_in(NODE, "/var/lib/lxcfs").unwrap().is_pmxcfs());
        let s = mount_at_in(NODE, "/mnt/my share").unwrap();
        assert_eq!(s.source, "me@nas:/x");
        assert!(!s.is_pmxcfs());
        // A FUSE daemon of another user at /etc/pve is not pmxcfs, nor is one on top of it
        // that hides it (the last line for a mount point is the one in effect).
        let user = NODE.replace(
            "rw,user_id=0,group_id=0,default_permissions",
            "rw,user_id=1000,group_id=1000,default_permissions",
        );
        assert!(!mount_at_in(&user, "/etc/pve").unwrap().is_pmxcfs());
        let over = format!("{NODE}60 44 0:50 / /etc/pve rw - tmpfs tmpfs rw\n");
        assert_eq!(mount_at_in(&over, "/etc/pve").unwrap().fstype, "tmpfs");
        assert!(mount_at_in("garbage\n\n1 2 3\n", "/etc/pve").is_none());
    }
}
