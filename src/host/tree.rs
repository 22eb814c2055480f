//! A bounded snapshot of a small directory tree on a filesystem that may hang: pmxcfs
//! (/etc/pve). When pmxcfs (a FUSE daemon) is stuck, every stat, readdir and read below
//! /etc/pve waits for it, and once the daemon has taken the request the wait is
//! uninterruptible: a thread cannot bound it (the process could not exit while the thread
//! sleeps, `host::kio` explains why). So the whole walk (stat of every component from the
//! root down, the listing, the file contents) runs in one child process and is sent back on a
//! pipe, and the caller waits for it with a deadline. The child is forked twice (the middle
//! process exits at once) so that a grandchild stuck in the kernel is reparented to init and
//! never needs reaping; it holds nothing of ours (0-2 on /dev/null, only its report pipe), and
//! like `kio`'s children it runs only system calls on memory prepared before the fork: no
//! allocation, no locks.
//!
//! Each entry is stat'ed the way `Host::stat_owner_mode` does (links followed, a link owned by
//! another user counts as that user's), and a regular file is read through the descriptor it
//! was checked on: what is checked is what is read. A FIFO is opened too (that open can block
//! like a hung pmxcfs read, which is how the tests model one) and then reported as not a
//! regular file; devices and sockets are never opened.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::TreeEntry;

/// Most entries a snapshot holds (pmxcfs's own limit on a directory is far above what
/// /etc/pve/pt-hook needs).
pub const MAX_ENTRIES: usize = 1024;
/// Most bytes of the whole report (file contents included).
pub const MAX_REPORT: usize = 4 << 20;

const END: u32 = u32::MAX;
const F_DATA: u8 = 1;
const F_TRUNCATED: u8 = 2;
/// The report did not fit (too many entries or bytes).
const OVERFLOW: u32 = u32::MAX - 1;

struct Out {
    buf: *mut u8,
    cap: usize,
    len: usize,
    entries: usize,
    overflow: bool,
}

impl Out {
    unsafe fn put(&mut self, b: &[u8]) -> bool {
        if self.overflow || self.len + b.len() > self.cap {
            self.overflow = true;
            return false;
        }
        std::ptr::copy_nonoverlapping(b.as_ptr(), self.buf.add(self.len), b.len());
        self.len += b.len();
        true
    }

    /// `[u32 rel_len][rel][u32 uid][u32 mode][i32 errno][u8 flags]`; the data follows
    /// (`[u32 len][bytes]`) when flags has `F_DATA`.
    unsafe fn head(&mut self, rel: &[u8], uid: u32, mode: u32, errno: i32, flags: u8) {
        self.entries += 1;
        if self.entries > MAX_ENTRIES {
            self.overflow = true;
            return;
        }
        self.put(&(rel.len() as u32).to_ne_bytes());
        self.put(rel);
        self.put(&uid.to_ne_bytes());
        self.put(&mode.to_ne_bytes());
        self.put(&errno.to_ne_bytes());
        self.put(&[flags]);
    }
}

unsafe fn errno() -> i32 {
    *libc::__errno_location()
}

/// The path built up during the walk (relative to the root), on the stack.
struct PathBuf {
    b: [u8; 4096],
    len: usize,
}

impl PathBuf {
    /// Appends "/name" (or "name" at the root); false when it does not fit.
    fn push(&mut self, name: &[u8]) -> bool {
        let extra = name.len() + usize::from(self.len > 0);
        if self.len + extra > self.b.len() {
            return false;
        }
        if self.len > 0 {
            self.b[self.len] = b'/';
            self.len += 1;
        }
        self.b[self.len..self.len + name.len()].copy_from_slice(name);
        self.len += name.len();
        true
    }
    fn truncate(&mut self, len: usize) {
        self.len = len;
    }
    fn get(&self) -> &[u8] {
        &self.b[..self.len]
    }
}

/// Owner and mode as `stat_owner_mode` gives them (the owner is the link's when a link not
/// owned by root names the entry; then the third value is true).
unsafe fn stat_at(dir: libc::c_int, name: *const libc::c_char) -> Result<(u32, u32, bool), i32> {
    let mut l: libc::stat = std::mem::zeroed();
    if libc::fstatat(dir, name, &mut l, libc::AT_SYMLINK_NOFOLLOW) != 0 {
        return Err(errno());
    }
    let mut s: libc::stat = std::mem::zeroed();
    if libc::fstatat(dir, name, &mut s, 0) != 0 {
        return Err(errno());
    }
    let is_link = l.st_mode & libc::S_IFMT == libc::S_IFLNK;
    if is_link && l.st_uid != 0 {
        Ok((l.st_uid, s.st_mode, true))
    } else {
        Ok((s.st_uid, s.st_mode, false))
    }
}

/// One entry named `name` in the directory `dir` (its path is in `p`): a record, and below a
/// directory (while `depth` > 0) its entries.
unsafe fn entry(
    out: &mut Out,
    p: &mut PathBuf,
    dir: libc::c_int,
    name: *const libc::c_char,
    depth: u32,
    max_file: usize,
) {
    let (uid, mode, by_link) = match stat_at(dir, name) {
        Ok(v) => v,
        Err(e) => return out.head(p.get(), 0, 0, e, 0),
    };
    let kind = mode & libc::S_IFMT;
    if kind == libc::S_IFDIR {
        if depth == 0 {
            return out.head(p.get(), uid, mode, 0, 0);
        }
        let fd = libc::openat(
            dir,
            name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return out.head(p.get(), uid, mode, errno(), 0);
        }
        out.head(p.get(), uid, mode, 0, 0);
        list(out, p, fd, depth - 1, max_file);
        libc::close(fd);
        return;
    }
    if kind != libc::S_IFREG && kind != libc::S_IFIFO {
        return out.head(p.get(), uid, mode, 0, 0);
    }
    let fd = libc::openat(dir, name, libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY);
    if fd < 0 {
        return out.head(p.get(), uid, mode, errno(), 0);
    }
    // What was opened is what is reported (and read).
    let mut s: libc::stat = std::mem::zeroed();
    if libc::fstat(fd, &mut s) != 0 {
        out.head(p.get(), uid, mode, errno(), 0);
        libc::close(fd);
        return;
    }
    let uid = if by_link { uid } else { s.st_uid };
    if s.st_mode & libc::S_IFMT != libc::S_IFREG {
        out.head(p.get(), uid, s.st_mode, 0, 0);
        libc::close(fd);
        return;
    }
    // Read up to max_file + 1 bytes straight into the report after a length placeholder.
    let rec_start = out.len;
    out.head(p.get(), uid, s.st_mode, 0, F_DATA);
    if out.overflow {
        libc::close(fd);
        return;
    }
    let flags_at = out.len - 1;
    let len_at = out.len;
    if !out.put(&0u32.to_ne_bytes()) {
        libc::close(fd);
        return;
    }
    let room = out.cap - out.len;
    let want = (max_file + 1).min(room);
    let (mut n, err) = super::kio::read_raw(fd, out.buf.add(out.len), want);
    libc::close(fd);
    if err != 0 {
        // Rewrite the record as an error without data.
        out.len = rec_start;
        out.entries -= 1;
        return out.head(p.get(), uid, s.st_mode, err, 0);
    }
    if n > max_file {
        *out.buf.add(flags_at) = F_DATA | F_TRUNCATED;
        n = max_file;
    } else if n == want && want < max_file + 1 {
        out.overflow = true;
    }
    std::ptr::copy_nonoverlapping((n as u32).to_ne_bytes().as_ptr(), out.buf.add(len_at), 4);
    out.len += n;
}

/// The entries of the open directory `fd` (path in `p`), in the order the kernel gives them.
unsafe fn list(out: &mut Out, p: &mut PathBuf, fd: libc::c_int, depth: u32, max_file: usize) {
    let mut buf = [0u8; 8192];
    loop {
        let n = libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len());
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return out.head(p.get(), 0, 0, errno(), 0);
        }
        if n == 0 {
            return;
        }
        let mut off = 0usize;
        while off < n as usize {
            // linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name (NUL-terminated).
            let base = buf.as_ptr().add(off);
            let reclen = u16::from_ne_bytes([*base.add(16), *base.add(17)]) as usize;
            let name = base.add(19) as *const libc::c_char;
            let nlen = libc::strlen(name);
            let bytes = std::slice::from_raw_parts(name as *const u8, nlen);
            off += reclen.max(1);
            if bytes == b"." || bytes == b".." {
                continue;
            }
            let keep = p.len;
            if p.push(bytes) {
                entry(out, p, fd, name, depth, max_file);
            } else {
                out.overflow = true;
            }
            p.truncate(keep);
            if out.overflow {
                return;
            }
        }
    }
}

/// The walk: the root, each component of `comps` (the last one with its tree), then `END`.
unsafe fn walk(
    out: &mut Out,
    root: *const libc::c_char,
    comps: &[CString],
    depth: u32,
    max_file: usize,
) {
    let mut p = PathBuf {
        b: [0; 4096],
        len: 0,
    };
    let rootfd = libc::open(root, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC);
    if rootfd < 0 {
        out.head(b"", 0, 0, errno(), 0);
        return;
    }
    let mut s: libc::stat = std::mem::zeroed();
    if libc::fstat(rootfd, &mut s) != 0 {
        out.head(b"", 0, 0, errno(), 0);
        return;
    }
    out.head(b"", s.st_uid, s.st_mode, 0, 0);
    if comps.is_empty() {
        if depth > 0 {
            list(out, &mut p, rootfd, depth - 1, max_file);
        }
        return;
    }
    let mut dir = rootfd;
    for (i, c) in comps.iter().enumerate() {
        if !p.push(c.as_bytes()) {
            out.overflow = true;
            return;
        }
        if i + 1 == comps.len() {
            entry(out, &mut p, dir, c.as_ptr(), depth, max_file);
            return;
        }
        let (uid, mode, _) = match stat_at(dir, c.as_ptr()) {
            Ok(v) => v,
            Err(e) => return out.head(p.get(), 0, 0, e, 0),
        };
        if mode & libc::S_IFMT != libc::S_IFDIR {
            return out.head(p.get(), uid, mode, libc::ENOTDIR, 0);
        }
        let fd = libc::openat(
            dir,
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return out.head(p.get(), uid, mode, errno(), 0);
        }
        out.head(p.get(), uid, mode, 0, 0);
        dir = fd;
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn child_main(
    null: libc::c_int,
    report: libc::c_int,
    maxfd: libc::c_int,
    root: *const libc::c_char,
    comps: &[CString],
    depth: u32,
    max_file: usize,
    buf: *mut u8,
    cap: usize,
) -> ! {
    // The middle process exits at once; the grandchild does the work, reparented to init.
    let pid = libc::fork();
    if pid != 0 {
        libc::_exit(0);
    }
    for fd in 0..3 {
        libc::dup2(null, fd);
    }
    if report != 3 {
        libc::dup2(report, 3);
    }
    if libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) != 0 {
        for fd in 4..maxfd {
            libc::close(fd);
        }
    }
    let mut out = Out {
        buf,
        cap: cap - 4,
        len: 0,
        entries: 0,
        overflow: false,
    };
    walk(&mut out, root, comps, depth, max_file);
    let end = if out.overflow { OVERFLOW } else { END };
    std::ptr::copy_nonoverlapping(end.to_ne_bytes().as_ptr(), buf.add(out.len), 4);
    let total = out.len + 4;
    let mut off = 0;
    while off < total {
        let r = libc::write(3, buf.add(off).cast(), total - off);
        if r < 0 && errno() == libc::EINTR {
            continue;
        }
        if r <= 0 {
            break;
        }
        off += r as usize;
    }
    libc::_exit(0)
}

fn devnull() -> io::Result<OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into())
}

/// `root`/`rel` and what is below it (see `Host::snapshot`), walked in a child process and
/// waited for at most `timeout` (ETIMEDOUT; the child is left to finish in the kernel).
pub fn snapshot(
    root: &Path,
    rel: &str,
    depth: u32,
    max_file: usize,
    timeout: Duration,
) -> io::Result<Vec<TreeEntry>> {
    let croot = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    let mut comps = Vec::new();
    for c in rel.split('/').filter(|c| !c.is_empty()) {
        if c == "." || c == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "relative component",
            ));
        }
        comps.push(
            CString::new(c)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?,
        );
    }
    let null = devnull()?;
    // SAFETY: sysconf has no preconditions.
    let maxfd = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) }.clamp(64, 1 << 16) as libc::c_int;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors from pipe2, owned from here on.
    let (rx, mut tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    if tx.as_raw_fd() < 3 {
        // SAFETY: fcntl on a descriptor we own; the result is a new descriptor we own.
        let d = unsafe { libc::fcntl(tx.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
        if d < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: d is a new descriptor owned from here on.
        tx = unsafe { OwnedFd::from_raw_fd(d) };
    }
    let cap = MAX_REPORT.min(max_file.saturating_mul(8) + (64 << 10));
    let mut buf: Vec<u8> = vec![0u8; cap];
    // SAFETY: the child and grandchild run only system calls on memory prepared above and
    // end with _exit; the parent waits for the middle process, which exits at once.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above; never returns.
        unsafe {
            child_main(
                null.as_raw_fd(),
                tx.as_raw_fd(),
                maxfd,
                croot.as_ptr(),
                &comps,
                depth,
                max_file,
                buf.as_mut_ptr(),
                cap,
            )
        }
    }
    drop(tx);
    let mut st = 0;
    // SAFETY: waitpid on our own child, which only forks and exits.
    while unsafe { libc::waitpid(pid, &mut st, 0) } < 0
        && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
    {}
    let got = read_report(&rx, timeout, cap)?;
    decode(&got)
}

/// Everything the child writes, until end of file or the deadline.
fn read_report(rx: &OwnedFd, timeout: Duration, cap: usize) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::with_capacity(4096);
    let mut buf = [0u8; 16384];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
        }
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        let mut p = libc::pollfd {
            fd: rx.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one descriptor we own.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            continue;
        }
        // SAFETY: read into a stack buffer of the given length.
        let n = unsafe { libc::read(rx.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN)) {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(got);
        }
        if got.len() + n as usize > cap {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        }
        got.extend_from_slice(&buf[..n as usize]);
    }
}

fn decode(b: &[u8]) -> io::Result<Vec<TreeEntry>> {
    let bad = || io::Error::other("the snapshot child ended without a complete report");
    let mut v = Vec::new();
    let mut i = 0usize;
    let u32_at = |i: usize| -> Option<u32> {
        b.get(i..i + 4)
            .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
    };
    loop {
        let n = u32_at(i).ok_or_else(bad)?;
        if n == END {
            break;
        }
        if n == OVERFLOW {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        }
        let n = n as usize;
        i += 4;
        let rel = b.get(i..i + n).ok_or_else(bad)?;
        i += n;
        let uid = u32_at(i).ok_or_else(bad)?;
        let mode = u32_at(i + 4).ok_or_else(bad)?;
        let errno = u32_at(i + 8).ok_or_else(bad)? as i32;
        let flags = *b.get(i + 12).ok_or_else(bad)?;
        i += 13;
        let mut data = None;
        if flags & F_DATA != 0 {
            let len = u32_at(i).ok_or_else(bad)? as usize;
            i += 4;
            data = Some(b.get(i..i + len).ok_or_else(bad)?.to_vec());
            i += len;
        }
        v.push(TreeEntry {
            rel: String::from_utf8_lossy(rel).into_owned(),
            uid,
            mode,
            errno,
            data,
            truncated: flags & F_TRUNCATED != 0,
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::real::RealHost;
    use crate::host::Host;
    use std::os::unix::fs::PermissionsExt;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir_all(p.join("etc/pve/pt-hook/quirks.d/deeper")).unwrap();
        std::fs::write(p.join("etc/pve/pt-hook/pt-hook.toml"), "[timeouts]\n").unwrap();
        std::fs::write(p.join("etc/pve/pt-hook/quirks.d/a.toml"), "x = 1\n").unwrap();
        std::fs::write(p.join("etc/pve/pt-hook/quirks.d/deeper/b.toml"), "y").unwrap();
        std::fs::write(p.join("etc/pve/pt-hook/big"), vec![b'z'; 100]).unwrap();
        std::fs::set_permissions(
            p.join("etc/pve/pt-hook/pt-hook.toml"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        d
    }

    fn sorted(mut v: Vec<TreeEntry>) -> Vec<TreeEntry> {
        v.sort_by(|a, b| a.rel.cmp(&b.rel));
        v
    }

    /// The child's walk reports what the direct walk through the host's accessors does.
    #[test]
    fn child_walk_matches_the_direct_walk() {
        let d = tree();
        let h = RealHost::new(d.path());
        for depth in [0, 1, 2] {
            let child = snapshot(
                d.path(),
                "etc/pve/pt-hook",
                depth,
                50,
                Duration::from_secs(5),
            )
            .unwrap();
            let direct = crate::host::snapshot_direct(&h, "etc/pve/pt-hook", depth, 50);
            assert_eq!(sorted(child), sorted(direct), "depth {depth}");
        }
        let v = snapshot(d.path(), "etc/pve/pt-hook", 2, 50, Duration::from_secs(5)).unwrap();
        let get = |rel: &str| v.iter().find(|e| e.rel == rel).unwrap();
        let cfg = get("etc/pve/pt-hook/pt-hook.toml");
        assert_eq!(cfg.data.as_deref(), Some(&b"[timeouts]\n"[..]));
        assert_eq!(cfg.mode & 0o7777, 0o640);
        let big = get("etc/pve/pt-hook/big");
        assert!(big.truncated && big.data.as_ref().unwrap().len() == 50);
        assert!(get("etc/pve/pt-hook/quirks.d/deeper").is_dir());
        assert!(
            !v.iter().any(|e| e.rel.ends_with("b.toml")),
            "depth 2 stops there"
        );
        assert_eq!(v[0].rel, "");
    }

    #[test]
    fn a_missing_component_ends_the_walk_with_its_errno() {
        let d = tree();
        let v = snapshot(
            d.path(),
            "etc/pve/nothing/here",
            2,
            50,
            Duration::from_secs(5),
        )
        .unwrap();
        let rels: Vec<&str> = v.iter().map(|e| e.rel.as_str()).collect();
        assert_eq!(rels, ["", "etc", "etc/pve", "etc/pve/nothing"]);
        assert_eq!(v[3].errno, libc::ENOENT);
        let v = snapshot(
            d.path(),
            "etc/pve/pt-hook/pt-hook.toml/x",
            0,
            50,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(v.last().unwrap().errno, libc::ENOTDIR);
    }

    /// A link planted by a user counts as that user's, as `stat_owner_mode` says.
    #[test]
    fn a_link_owned_by_a_user_is_the_users() {
        let d = tree();
        let link = d.path().join("etc/pve/pt-hook/quirks.d/l.toml");
        std::os::unix::fs::symlink("a.toml", &link).unwrap();
        std::os::unix::fs::lchown(&link, Some(1000), None).unwrap();
        let v = snapshot(d.path(), "etc/pve/pt-hook", 2, 50, Duration::from_secs(5)).unwrap();
        let e = v.iter().find(|e| e.rel.ends_with("l.toml")).unwrap();
        assert_eq!(e.uid, 1000);
        let h = RealHost::new(d.path());
        assert_eq!(
            h.stat_owner_mode("etc/pve/pt-hook/quirks.d/l.toml")
                .unwrap()
                .0,
            1000
        );
    }

    /// The bounded-read primitive: a walk that blocks (the open of a FIFO with no writer, as
    /// a read waits for a hung pmxcfs) gives ETIMEDOUT at the deadline, and the caller goes on.
    #[test]
    fn a_walk_that_blocks_times_out() {
        let d = tree();
        let fifo = d.path().join("etc/pve/pt-hook/quirks.d/f.toml");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // A pipe of ours: the walker left behind must not hold its write end (it keeps only
        // /dev/null and its report pipe), or a hook's stdout could stay open behind it.
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors we then own.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh descriptors, owned from here on.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let e = snapshot(
            d.path(),
            "etc/pve/pt-hook",
            2,
            50,
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ETIMEDOUT));
        drop(w);
        let mut p = libc::pollfd {
            fd: r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // End of file (POLLHUP) as soon as no process holds the write end; other tests'
        // children hold it only until their exec (close-on-exec).
        // SAFETY: poll on one descriptor we own.
        let n = unsafe { libc::poll(&mut p, 1, 5000) };
        assert!(
            n == 1 && p.revents & libc::POLLHUP != 0,
            "write end still held: {n} {:x}",
            p.revents
        );
        // Release the walker still blocked in open(2).
        use std::os::unix::fs::OpenOptionsExt;
        let w = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        drop(w);
    }

    #[test]
    fn too_many_entries_is_efbig() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("d")).unwrap();
        for i in 0..(MAX_ENTRIES + 5) {
            std::fs::write(d.path().join(format!("d/f{i}")), "").unwrap();
        }
        let e = snapshot(d.path(), "d", 1, 10, Duration::from_secs(10)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EFBIG));
    }
}
