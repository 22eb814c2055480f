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
    fn exists(&self, rel: &str) -> bool;
    /// Creates a regular file atomically (write temp + rename), creating parents, mode 0600.
    fn write_atomic(&self, rel: &str, data: &[u8]) -> io::Result<()>;
    fn remove_file(&self, rel: &str) -> io::Result<()>;
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
}

impl NodeQuery {
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.rdevs.is_empty() && !self.vfio_fds
    }

    /// Whether an open node (as the host found it) is one asked for (the simulator's filter;
    /// the real walk decides per fd before it stats).
    #[cfg(test)]
    pub fn matches(&self, n: &OpenNode) -> bool {
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

fn node_name() -> String {
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
