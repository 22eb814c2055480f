//! The host as files under a root directory: `/` in production, a sysfs-shaped tree in tests.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::{kio, poll_until, CmdOutput, Host, Ipv4Addr, LockGuard, NodeQuery, OpenNode};

pub struct RealHost {
    root: PathBuf,
}

impl RealHost {
    pub fn new(root: impl Into<PathBuf>) -> RealHost {
        RealHost { root: root.into() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        debug_assert!(!rel.starts_with('/'), "host paths are relative: {rel}");
        self.root.join(rel)
    }

    fn is_real_root(&self) -> bool {
        self.root == Path::new("/")
    }
}

struct FlockGuard {
    _file: nix::fcntl::Flock<fs::File>,
}
impl LockGuard for FlockGuard {}

/// "pid 1234 (pt-hook 100 pre-start)": what a lock file says about its holder.
fn holder_text() -> String {
    let mut args: Vec<String> = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--root" || a == "--config" {
            it.next();
        } else if !a.starts_with('-') && args.len() < 3 {
            args.push(a.chars().filter(|c| !c.is_control()).take(40).collect());
        }
    }
    format!("pid {} (pt-hook {})\n", std::process::id(), args.join(" "))
}

/// Output kept from a user hook (per stream); the rest is read and dropped.
const MAX_HOOK_OUTPUT: u64 = 64 * 1024;

const BIN_DIRS: [&str; 4] = ["usr/sbin", "sbin", "usr/bin", "bin"];

impl Host for RealHost {
    /// A PCI device's `driver_override` can block in the kernel (see `kio::read_can_block`):
    /// read in a child process, bounded by `kio::read_timeout()`. Everything else directly.
    fn read(&self, rel: &str) -> io::Result<String> {
        if kio::read_can_block(rel) {
            return kio::read_text(&self.path(rel), kio::read_timeout());
        }
        let v = read_file(&self.path(rel), rel.starts_with("sys/"), 1 << 20)?;
        String::from_utf8(v).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "stream did not contain valid UTF-8",
            )
        })
    }

    /// `config` (and `driver_override`) bounded like `read`.
    fn read_bytes(&self, rel: &str, max: usize) -> io::Result<Vec<u8>> {
        if kio::read_can_block(rel) {
            return kio::read(&self.path(rel), max, kio::read_timeout());
        }
        read_file(&self.path(rel), rel.starts_with("sys/"), max)
    }

    fn write(&self, rel: &str, data: &str) -> io::Result<()> {
        // sysfs attributes: no create, no truncate semantics beyond what the kernel does,
        // one write call so the kernel sees the whole value at once.
        let mut f = fs::OpenOptions::new().write(true).open(self.path(rel))?;
        let n = f.write(data.as_bytes())?;
        if n != data.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
        }
        Ok(())
    }

    /// In a child process that holds none of our descriptors (`kio`): a write blocked in the
    /// kernel cannot keep pt-hook from exiting.
    fn write_bounded(self: Arc<Self>, rel: &str, data: &str, timeout: Duration) -> io::Result<()> {
        kio::write(&self.path(rel), data.as_bytes(), timeout)
    }

    fn read_bounded(self: Arc<Self>, rel: &str, timeout: Duration) -> io::Result<String> {
        kio::read_text(&self.path(rel), timeout)
    }

    /// In a child process (`tree`): a hung pmxcfs cannot keep pt-hook waiting or alive.
    fn snapshot(
        &self,
        rel: &str,
        depth: u32,
        max_file: usize,
        timeout: Duration,
    ) -> io::Result<Vec<super::TreeEntry>> {
        super::tree::snapshot(&self.root, rel, depth, max_file, kio::cap(timeout))
    }

    fn link_name(&self, rel: &str) -> io::Result<String> {
        let t = fs::read_link(self.path(rel))?;
        t.file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "odd link"))
    }

    fn link_target(&self, rel: &str) -> io::Result<String> {
        let t = fs::read_link(self.path(rel))?;
        t.into_os_string()
            .into_string()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "odd link"))
    }

    fn list(&self, rel: &str) -> io::Result<Vec<String>> {
        let mut v: Vec<String> = RawDir::open(&self.path(rel))?
            .names()?
            .into_iter()
            .filter_map(|n| n.into_string().ok())
            .collect();
        v.sort();
        Ok(v)
    }

    /// Each entry's target by readlinkat(2) relative to the directory's descriptor.
    fn list_links_where(
        &self,
        rel: &str,
        keep: &dyn Fn(&str) -> bool,
    ) -> io::Result<Vec<(String, Option<String>)>> {
        use nix::fcntl::readlinkat;
        let d = RawDir::open(&self.path(rel))?;
        let mut v: Vec<(String, Option<String>)> = d
            .names()?
            .into_iter()
            .filter(|n| n.to_str().is_ok_and(keep))
            .filter_map(|n| {
                let t = readlinkat(Some(d.raw()), n.as_c_str())
                    .ok()
                    .and_then(|t| t.into_string().ok());
                Some((n.into_string().ok()?, t))
            })
            .collect();
        v.sort();
        Ok(v)
    }

    fn exists(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.path(rel)).is_ok()
    }

    fn write_atomic(&self, rel: &str, data: &[u8]) -> io::Result<()> {
        let p = self.path(rel);
        let tmp = p.with_extension(format!("tmp.{}", std::process::id()));
        {
            let mut f = open_in_made_dir(
                fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600),
                &tmp,
            )?;
            f.write_all(data)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &p)?;
        if let Some(dir) = p.parent() {
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    fn replace_file(&self, rel: &str, data: &[u8]) -> io::Result<()> {
        let p = self.path(rel);
        let tmp = p.with_extension(format!("tmp.{}", std::process::id()));
        let r = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .and_then(|mut f| f.write_all(data))
            .and_then(|()| fs::rename(&tmp, &p));
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        r
    }

    fn remove_file(&self, rel: &str) -> io::Result<()> {
        fs::remove_file(self.path(rel))
    }

    fn write_atomic_mode(&self, rel: &str, data: &[u8], mode: u32) -> io::Result<()> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let p = self.path(rel);
        let name = p
            .file_name()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?
            .to_string_lossy()
            .into_owned();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = p.with_file_name(format!("{name}.tmp.{}.{n}", std::process::id()));
        let r = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            // The umask must not narrow what the reader needs.
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
            f.write_all(data)?;
            f.sync_all()?;
            fs::rename(&tmp, &p)
        })();
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        // The directory is not fsync'd (2-5 ms on a loaded disk, more than the rest of the
        // write): after a crash right here the name still holds the previous, complete file.
        r
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.path(from), self.path(to))
    }

    /// Owner and mode of what the path names; a symbolic link counts as owned by whoever
    /// owns the link when that is not root (a link planted by a user is not trusted, whatever
    /// it points to).
    fn stat_owner_mode(&self, rel: &str) -> io::Result<(u32, u32)> {
        let p = self.path(rel);
        let l = fs::symlink_metadata(&p)?;
        let m = fs::metadata(&p)?;
        let uid = if l.file_type().is_symlink() && l.uid() != 0 {
            l.uid()
        } else {
            m.uid()
        };
        Ok((uid, m.mode()))
    }

    fn run(&self, prog: &str, args: &[&str], timeout: Duration) -> io::Result<CmdOutput> {
        if !self.is_real_root() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("not running {prog} on a host under --root"),
            ));
        }
        let exe = BIN_DIRS
            .iter()
            .map(|d| self.path(d).join(prog))
            .find(|p| p.exists())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("LC_ALL", "C")
            .spawn()?;
        let mut out = child.stdout.take();
        let mut err = child.stderr.take();
        let reader = std::thread::spawn(move || {
            let mut o = String::new();
            let mut e = String::new();
            if let Some(s) = out.as_mut() {
                let _ = s.read_to_string(&mut o);
            }
            if let Some(s) = err.as_mut() {
                let _ = s.read_to_string(&mut e);
            }
            (o, e)
        });
        let status = poll_until(timeout, || child.try_wait().ok().flatten());
        match status {
            Some(st) => {
                let (stdout, stderr) = reader.join().unwrap_or_default();
                Ok(CmdOutput {
                    code: st.code(),
                    stdout,
                    stderr,
                })
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(io::Error::from_raw_os_error(libc::ETIMEDOUT))
            }
        }
    }

    fn run_self(&self, args: &[&str], timeout: Duration) -> io::Result<CmdOutput> {
        use std::os::fd::AsRawFd;
        let deadline = std::time::Instant::now() + timeout;
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            return Err(io::Error::other("no pipes to the child"));
        };
        // Both pipes until end of file (the child exited, or closed them), at most until the
        // deadline: poll(2) wakes at once when the child is done.
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let (mut o_open, mut e_open) = (true, true);
        let mut buf = [0u8; 4096];
        while o_open || e_open {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                let _ = child.kill();
                let _ = child.try_wait();
                return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
            }
            let mut fds = [
                libc::pollfd {
                    fd: if o_open { out.as_raw_fd() } else { -1 },
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: if e_open { err.as_raw_fd() } else { -1 },
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            // SAFETY: poll on two descriptors we own (or -1, ignored).
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
            if r < 0 {
                let x = io::Error::last_os_error();
                if x.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                let _ = child.kill();
                return Err(x);
            }
            for (i, f) in fds.iter().enumerate() {
                if f.fd < 0 || f.revents == 0 {
                    continue;
                }
                let (src, dst, open): (&mut dyn Read, &mut Vec<u8>, &mut bool) = if i == 0 {
                    (&mut out, &mut o, &mut o_open)
                } else {
                    (&mut err, &mut e, &mut e_open)
                };
                match src.read(&mut buf) {
                    Ok(0) | Err(_) => *open = false,
                    Ok(n) if dst.len() < (64 << 10) => dst.extend_from_slice(&buf[..n]),
                    Ok(_) => {}
                }
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match poll_until(left, || child.try_wait().ok().flatten()) {
            Some(st) => Ok(CmdOutput {
                code: st.code(),
                stdout: String::from_utf8_lossy(&o).into_owned(),
                stderr: String::from_utf8_lossy(&e).into_owned(),
            }),
            None => {
                let _ = child.kill();
                let _ = child.try_wait();
                Err(io::Error::from_raw_os_error(libc::ETIMEDOUT))
            }
        }
    }

    fn run_file(
        &self,
        rel: &str,
        args: &[&str],
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> io::Result<CmdOutput> {
        use std::os::unix::process::CommandExt;
        let start = std::time::Instant::now();
        let mut cmd = Command::new(self.path(rel));
        cmd.args(args)
            .env_clear()
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn()?;
        let pgid = child.id() as i32;
        // Readers on their own threads: a hook that leaves a background process holding
        // its stdout must not keep pt-hook waiting past the deadline.
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, s) in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .enumerate()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut v = Vec::new();
                if let Some(mut s) = s {
                    let _ = s.by_ref().take(MAX_HOOK_OUTPUT).read_to_end(&mut v);
                    // Keep draining so the hook never blocks on a full pipe.
                    let _ = io::copy(&mut s, &mut io::sink());
                }
                let _ = tx.send((i, v));
            });
        }
        drop(tx);
        let status = poll_until(timeout, || child.try_wait().ok().flatten());
        let kill_group = || {
            // The process group this call created (the hook and whatever it started).
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        };
        let Some(st) = status else {
            kill_group();
            let _ = child.wait();
            return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
        };
        let mut out = [Vec::new(), Vec::new()];
        for _ in 0..2 {
            let left = timeout
                .saturating_sub(start.elapsed())
                .max(Duration::from_millis(100));
            match rx.recv_timeout(left) {
                Ok((i, v)) => out[i] = v,
                Err(_) => break,
            }
        }
        let [o, e] = out;
        Ok(CmdOutput {
            code: st.code(),
            stdout: String::from_utf8_lossy(&o).into_owned(),
            stderr: String::from_utf8_lossy(&e).into_owned(),
        })
    }

    fn symlink(&self, target: &str, rel: &str) -> io::Result<()> {
        std::os::unix::fs::symlink(target, self.path(rel))
    }

    fn create_dir_all(&self, rel: &str) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(self.path(rel))
    }

    fn lock(&self, rel: &str, timeout: Duration) -> io::Result<Box<dyn LockGuard>> {
        let p = self.path(rel);
        let f = open_in_made_dir(
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600),
            &p,
        )?;
        // nix's Flock owns the file while locked and unlocks when dropped; a failed attempt
        // hands the file back for the next one.
        use nix::fcntl::{Flock, FlockArg};
        let mut file = Some(f);
        let mut last = None;
        let got = poll_until(timeout, || {
            let f = file.take()?;
            match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => Some(locked),
                Err((f, errno)) => {
                    file = Some(f);
                    last = Some(io::Error::from(errno));
                    None
                }
            }
        });
        match got {
            Some(mut locked) => {
                // Name the holder in the file for whoever waits next. flock belongs to the open
                // file, so the kernel drops it when this process dies, however it dies; the
                // text left behind then names a dead holder and the next taker overwrites it.
                let _ = locked.set_len(0);
                let _ = locked.write_all(holder_text().as_bytes());
                Ok(Box::new(FlockGuard { _file: locked }))
            }
            None => {
                let e = last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EWOULDBLOCK));
                let mut holder = String::new();
                let _ = fs::File::open(&p).and_then(|f| f.take(512).read_to_string(&mut holder));
                let holder = holder.trim();
                Err(io::Error::new(
                    e.kind(),
                    format!(
                        "{} after {}; held by {}",
                        super::errno_text(&e),
                        humantime::format_duration(timeout),
                        if holder.is_empty() {
                            "a process that did not name itself"
                        } else {
                            holder
                        }
                    ),
                ))
            }
        }
    }

    fn display(&self, rel: &str) -> String {
        self.path(rel).display().to_string()
    }

    fn open_nodes(&self, want: &NodeQuery) -> io::Result<Vec<OpenNode>> {
        if want.is_empty() {
            return Ok(Vec::new());
        }
        let proc_dir = self.path("proc");
        let me = std::process::id();
        let pids: Vec<u32> = RawDir::open(&proc_dir)?
            .names_procfs()?
            .iter()
            .filter_map(|n| n.to_str().ok()?.parse::<u32>().ok())
            .filter(|p| *p != me)
            .collect();
        // /proc/PID/fd is walked per process; on a host with thousands of processes the walk
        // is most of the guard's cost, so it is split over a few threads, one per
        // `PIDS_PER_WORKER` processes (a thread start costs more than a few dozen stat(2)s of
        // kernel threads).
        const PIDS_PER_WORKER: usize = 256;
        let workers = cpus().min(pids.len().div_ceil(PIDS_PER_WORKER)).clamp(1, 4);
        let chunk = pids.len().div_ceil(workers).max(1);
        let counted = fd_dirs_counted(&proc_dir);
        let scan = |c: &[u32]| -> Vec<OpenNode> {
            c.iter()
                .flat_map(|p| scan_fds(&proc_dir, *p, want, counted))
                .collect()
        };
        let mut chunks = pids.chunks(chunk);
        // The calling thread walks the first chunk itself: one thread fewer to start.
        let first = chunks.next().unwrap_or(&[]);
        let mut out = Vec::new();
        std::thread::scope(|sc| {
            let hs: Vec<_> = chunks.map(|c| sc.spawn(move || scan(c))).collect();
            out.extend(scan(first));
            for h in hs {
                out.extend(h.join().unwrap_or_default());
            }
        });
        Ok(out)
    }

    fn ipv4_addrs(&self) -> io::Result<Vec<Ipv4Addr>> {
        if !self.is_real_root() {
            return Ok(Vec::new());
        }
        let mut v = Vec::new();
        for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
            let Some(addr) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) else {
                continue;
            };
            let prefix = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in())
                .map(|m| m.ip().to_bits().count_ones() as u8)
                .unwrap_or(32);
            v.push(Ipv4Addr {
                iface: ifa.interface_name.clone(),
                addr: addr.ip(),
                prefix,
            });
        }
        Ok(v)
    }
}

/// The CPUs this process may run on: one sched_getaffinity(2) (std's available_parallelism
/// also reads the cgroup files for a CPU quota: a dozen system calls on every hook phase).
fn cpus() -> usize {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; the size is that of `set`, which we own.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return 1;
    }
    // SAFETY: CPU_COUNT only reads the set filled above.
    (unsafe { libc::CPU_COUNT(&set) }).max(1) as usize
}

/// An open directory read with getdents64(2) directly: open, the reads until one returns 0,
/// close (glibc's opendir and nix's `Dir` add an fstat, fcntls and a rewinding lseek per
/// directory; the guard lists one directory per process on the host).
struct RawDir {
    fd: std::os::fd::OwnedFd,
}

impl RawDir {
    fn open(path: &Path) -> io::Result<RawDir> {
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: open(2) of a NUL-terminated path; the descriptor is owned at once.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a descriptor we just opened and nothing else owns.
        Ok(RawDir {
            fd: unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) },
        })
    }

    fn raw(&self) -> libc::c_int {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }

    /// Every name but `.` and `..`, in the order the kernel gives them.
    fn names(&self) -> io::Result<Vec<std::ffi::CString>> {
        self.read_names(false)
    }

    /// `names` of a procfs directory (`/proc`, `/proc/PID/fd`): procfs fills a getdents64
    /// buffer until it has no entry left or the next one does not fit, so a read that leaves
    /// room for a longest entry is the last one, without the read that returns 0 (the guard
    /// reads one such directory per process on the host).
    fn names_procfs(&self) -> io::Result<Vec<std::ffi::CString>> {
        self.read_names(true)
    }

    fn read_names(&self, procfs: bool) -> io::Result<Vec<std::ffi::CString>> {
        // d_ino (8), d_off (8), d_reclen (2), d_type (1), then the NUL-terminated name.
        const NAME_AT: usize = 19;
        let mut buf = vec![0u8; 8 * 1024];
        let mut out = Vec::new();
        loop {
            // SAFETY: getdents64 writes at most buf.len() bytes into buf, which we own.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    self.raw(),
                    buf.as_mut_ptr(),
                    buf.len(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            if n == 0 {
                return Ok(out);
            }
            // A longest entry: the header and a 255-byte name with its NUL, 8-byte aligned.
            const LONGEST: usize = (NAME_AT + 256).div_ceil(8) * 8;
            let last = procfs && n + LONGEST <= buf.len();
            let mut at = 0;
            while at + NAME_AT <= n {
                let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
                if reclen < NAME_AT || at + reclen > n {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "bad dirent"));
                }
                let name = &buf[at + NAME_AT..at + reclen];
                let len = name.iter().position(|b| *b == 0).unwrap_or(name.len());
                let name = &name[..len];
                if name != b"." && name != b".." {
                    if let Ok(c) = std::ffi::CString::new(name) {
                        out.push(c);
                    }
                }
                at += reclen;
            }
            if last {
                return Ok(out);
            }
        }
    }
}

/// `opts.open(path)`, making `path`'s directory first only when the open says it is missing
/// (not a mkdir and a stat before every lock and state write).
fn open_in_made_dir(opts: &fs::OpenOptions, path: &Path) -> io::Result<fs::File> {
    match opts.open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            opts.open(path)
        }
        r => r,
    }
}

/// A file's bytes (at most `max`), read with one page-sized read first. A sysfs attribute
/// (`sysfs`) is one `show()` of at most a page, returned whole by the first read when it fits:
/// a shorter read is the end, without the read that returns 0 (a third of the system calls
/// of reading an attribute, the most common thing pt-hook does). Anything else is read to its
/// end.
fn read_file(path: &Path, sysfs: bool, max: usize) -> io::Result<Vec<u8>> {
    const PAGE: usize = 4096;
    let f = fs::File::open(path)?;
    let first = PAGE.min(max);
    // The first read into a page on the stack that is not zeroed (most files here are a few
    // bytes of sysfs: a zeroed 4 KiB heap buffer per read was a tenth of a phase's
    // instructions); only what it filled is copied out.
    let mut page = std::mem::MaybeUninit::<[u8; PAGE]>::uninit();
    let n = loop {
        use std::os::fd::AsRawFd;
        // SAFETY: read(2) writes at most `first` (<= PAGE) bytes into `page`, which we own.
        let r = unsafe { libc::read(f.as_raw_fd(), page.as_mut_ptr().cast(), first) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // SAFETY: the kernel initialised the first `n` bytes.
    let mut v = unsafe { std::slice::from_raw_parts(page.as_ptr().cast::<u8>(), n) }.to_vec();
    if n == 0 || (sysfs && n < first) || n >= max {
        return Ok(v);
    }
    f.take((max - n) as u64).read_to_end(&mut v)?;
    Ok(v)
}

/// Device nodes every process has and that no PCI function provides: skipped without a
/// stat (most fds on a host are these).
fn pseudo_node(path: &str) -> bool {
    const EXACT: [&str; 16] = [
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
        "/dev/console",
        "/dev/ptmx",
        "/dev/kmsg",
        "/dev/net/tun",
        "/dev/kvm",
        "/dev/fuse",
        "/dev/vhost-net",
        "/dev/vhost-vsock",
        "/dev/vfio/vfio",
        "/dev/autofs",
    ];
    EXACT.contains(&path)
        || path.starts_with("/dev/pts/")
        || path.starts_with("/dev/shm/")
        || path.starts_with("/dev/mqueue/")
        || path.starts_with("/dev/hugepages/")
        || path
            .strip_prefix("/dev/tty")
            .is_some_and(|r| r.bytes().all(|b| b.is_ascii_digit()))
}

/// The fds of process `pid` that `want` asks for. A process that exits meanwhile simply
/// yields nothing. Every lookup is relative to the fd directory's own descriptor.
/// Whether a stat of `/proc/PID/fd` gives the process's number of open descriptors as its
/// size (Linux 6.2 and later; 0 before, and in a test tree). Our own count cannot be 0: the
/// walk holds `/proc` open.
fn fd_dirs_counted(proc_dir: &Path) -> bool {
    nix::sys::stat::stat(&proc_dir.join("self").join("fd")).is_ok_and(|st| st.st_size > 0)
}

/// `counted` (see `fd_dirs_counted`): a process without descriptors (every kernel thread,
/// most of a host's processes) costs one stat(2) instead of an open, a read and a close.
fn scan_fds(proc_dir: &Path, pid: u32, want: &NodeQuery, counted: bool) -> Vec<OpenNode> {
    use nix::fcntl::readlinkat;
    use nix::sys::stat::{fstatat, SFlag};
    let dir = proc_dir.join(pid.to_string()).join("fd");
    if counted && nix::sys::stat::stat(&dir).is_ok_and(|st| st.st_size == 0) {
        return Vec::new();
    }
    let Ok(d) = RawDir::open(&dir) else {
        return Vec::new();
    };
    let dfd = d.raw();
    let names: Vec<std::ffi::CString> = d
        .names_procfs()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.as_bytes().first().is_some_and(|b| b.is_ascii_digit()))
        .collect();
    let mut v = Vec::new();
    for name in names {
        let Ok(t) = readlinkat(Some(dfd), name.as_c_str()) else {
            continue;
        };
        let Some(text) = t.to_str() else { continue };
        if text == super::VFIO_DEVICE_FD {
            if want.vfio_fds || want.all {
                let fdinfo = proc_dir
                    .join(pid.to_string())
                    .join("fdinfo")
                    .join(std::ffi::OsStr::from_bytes(name.as_bytes()));
                let syspath = fs::read_to_string(fdinfo).ok().and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("vfio-device-syspath:"))
                        .map(|p| p.trim().to_string())
                });
                v.push(OpenNode {
                    pid,
                    path: text.to_string(),
                    rdev: None,
                    block: false,
                    vfio_syspath: syspath,
                });
            }
            continue;
        }
        let dev_node = text.starts_with('/') && text.contains("/dev/");
        if want.paths.contains(text)
            || ((want.vfio_fds || want.all) && super::is_vfio_group_path(text))
            || (want.all && dev_node && pseudo_node(text))
        {
            v.push(OpenNode {
                pid,
                path: text.to_string(),
                rdev: None,
                block: false,
                vfio_syspath: None,
            });
            continue;
        }
        // Device nodes live under a /dev (the host's, or a container's); sockets, pipes,
        // anonymous inodes and regular files are not device nodes.
        if (want.rdevs.is_empty() && !want.all) || !dev_node || pseudo_node(text) {
            continue;
        }
        let Ok(st) = fstatat(Some(dfd), name.as_c_str(), nix::fcntl::AtFlags::empty()) else {
            continue;
        };
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        let block = kind == SFlag::S_IFBLK;
        if kind != SFlag::S_IFCHR && !block {
            continue;
        }
        let rdev = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
        if want.all || want.rdevs.contains(&rdev) {
            v.push(OpenNode {
                pid,
                path: text.to_string(),
                rdev: Some(rdev),
                block,
                vfio_syspath: None,
            });
        }
    }
    v
}
