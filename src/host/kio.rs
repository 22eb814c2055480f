//! Kernel I/O that may never return, bounded by a child process, and the process-wide hard
//! deadline with its watchdog.
//!
//! A sysfs write such as a vfio-pci `unbind` can sleep uninterruptibly in the kernel for as
//! long as another process holds the device (`vfio_unregister_group_dev`), and a `bind`,
//! a `driver_override` read (Linux 6.1) or a `config` read can wait behind it. Doing that on a
//! helper thread bounds the caller's wait but not the process: exit_group waits for every
//! thread, so the hook would never be reaped and the pipes Proxmox waits on would stay open.
//! Here the operation runs in a helper child that owns nothing of ours (0-2 on /dev/null,
//! every other descriptor closed except its two pipes); on timeout the caller closes its ends
//! of those pipes and returns ETIMEDOUT, and the helper is left behind to finish in the kernel
//! on its own time. Not a re-exec of /proc/self/exe (an exec and a start-up per helper), and,
//! on x86_64, not a fork either: the helper shares our address space (clone with CLONE_VM, on
//! a stack of its own, see `start_helper`), so starting one copies no page tables and makes
//! none of our pages copy-on-write; it runs only raw system calls on buffers of its own stack,
//! with every signal blocked (`server_main`, `sys`). Elsewhere it is forked.
//!
//! A new process costs far more than the op it guards (a `driver_override` write is
//! microseconds; a fork of pt-hook is hundreds of microseconds on hardware and milliseconds
//! under emulation), and a phase makes dozens of these ops, so a helper is not started per op.
//! A helper loops: it reads a request (`[u8 op][u32 path length][path][u32 n]`, then for a write the `n`
//! bytes) from its request pipe into stack buffers, does one open + read of at most `n` bytes
//! or one open + one write(2), and writes `[i32 errno (0: done)][u32 length][bytes]` on its
//! report pipe; it exits when the request pipe reaches end of file (we exited or left it).
//! Idle helpers wait in a pool: an op takes one (or starts one when none is idle: another
//! thread's op, possibly stuck in the kernel, is using every helper there is), waits for the
//! report with poll(2) until its timeout, and puts the helper back. So a phase starts one helper
//! per op it ran at the same time (parallel steps of a batch, slots reset in parallel), not one
//! per op. On timeout the helper is left behind like any stuck child (its pipes closed, its pid
//! kept for `reap`) and the next op takes another.
//!
//! Children are reaped by pid only (`waitpid(pid, WNOHANG)` before every bounded op), never
//! with `waitpid(-1)`, and SIGCHLD keeps its default disposition, so the `Command` children
//! elsewhere (modprobe, systemctl, user hooks) keep their exit statuses.

#[cfg(test)]
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
#[cfg(test)]
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a bounded read without its own timeout (`Host::read` of `driver_override`,
/// `read_bytes` of `config`) waits, unless a phase set another (`[timeouts] step`); the hard
/// deadline caps it as well.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// A bounded op started when the hard deadline has (nearly) passed still gets this long, so
/// that a rollback's writes the kernel does at once land; the watchdog bounds the rest.
pub const MIN_WAIT: Duration = Duration::from_millis(5);
/// The watchdog ends the process this long after the hard deadline.
pub const WATCHDOG_GRACE: Duration = Duration::from_millis(500);
/// Most bytes a bounded read returns (`read`: one page, a sysfs attribute's limit).
pub const MAX_BOUNDED_READ: usize = 64 * 1024;
const TEXT_READ_MAX: usize = 4096;
/// Status a child reports for a short write.
const SHORT_WRITE: i32 = i32::MIN;
/// Longest path the reader child takes, with its NUL (PATH_MAX: open(2) takes no longer).
const READ_PATH_MAX: usize = libc::PATH_MAX as usize;
/// A request to a helper child: `[u8 op][u32 path length]`, the path, `[u32 n]` (bytes to
/// read at most, or to write), then for a write the `n` bytes.
const REQ_HDR: usize = 9;
const OP_READ: u8 = 0;
const OP_WRITE: u8 = 1;
/// Most bytes a bounded write takes.
pub const MAX_BOUNDED_WRITE: usize = 64 * 1024;
const REQ_MAX: usize = REQ_HDR + READ_PATH_MAX + MAX_BOUNDED_WRITE;
/// Idle helpers kept for later ops (one per op that ran at the same time, up to this many).
const POOL_MAX: usize = 16;
/// A report of the reader child: `[i32 status][u32 length]`, then the bytes.
const REPORT_HDR: usize = 8;

struct Deadline {
    at: Option<Instant>,
    read_timeout: Duration,
}

static DEADLINE: Mutex<Deadline> = Mutex::new(Deadline {
    at: None,
    read_timeout: DEFAULT_READ_TIMEOUT,
});
/// Children that timed out (or had not exited yet when their report arrived).
static PENDING: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sets the process-wide hard deadline to `phase_timeout` from now: no bounded op waits beyond
/// it (`cap`), reads without a timeout wait at most `read_timeout`, and the watchdog writes
/// one line naming `phase` to stderr and ends the process with `_exit(1)` if it is still
/// running `WATCHDOG_GRACE` after the deadline (stuck in logic, a wait that is not bounded).
/// The write-ahead state makes that like a crash: `pt-hook cleanup` recovers. Calling it again
/// replaces the deadline and the watchdog.
///
/// The watchdog is the process's real-time interval timer (`setitimer(ITIMER_REAL)`) and a
/// SIGALRM handler that only calls write(2) and _exit(2), both async-signal-safe: no thread to
/// start on every phase. Children do not inherit the timer (fork and the helpers' clone start
/// without one; exec resets the handler).
pub fn arm_phase_deadline(phase: &str, phase_timeout: Duration, read_timeout: Duration) {
    let at = Instant::now() + phase_timeout;
    {
        let mut d = lock(&DEADLINE);
        d.at = Some(at);
        d.read_timeout = read_timeout;
    }
    let msg = format!(
        "pt-hook: {}: still running {} after the phase deadline ({}): exiting now; the state in /run/pt-hook is kept, run `pt-hook cleanup`\n",
        crate::log::escape_controls(phase),
        humantime::format_duration(WATCHDOG_GRACE),
        humantime::format_duration(phase_timeout)
    )
    .into_bytes();
    // The message lives as long as the process (a phase arms once or twice): the handler
    // may read it at any moment.
    let msg: &'static Vec<u8> = Box::leak(Box::new(msg));
    WATCHDOG_MSG.store((msg as *const Vec<u8>).cast_mut(), Ordering::SeqCst);
    let fire = phase_timeout.saturating_add(WATCHDOG_GRACE);
    // SAFETY: sigaction installs a handler that is async-signal-safe (`on_watchdog`), with
    // every signal blocked while it runs; setitimer only arms this process's timer. Both take
    // pointers to values we own for the duration of the call.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_watchdog as extern "C" fn(libc::c_int) as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigfillset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut());
        let it = libc::itimerval {
            it_interval: libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
            it_value: libc::timeval {
                tv_sec: fire.as_secs().min(i32::MAX as u64) as libc::time_t,
                // Never 0 with 0 seconds (that would disarm it).
                tv_usec: fire.subsec_micros().max(u32::from(fire.as_secs() == 0))
                    as libc::suseconds_t,
            },
        };
        libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut());
    }
}

/// The watchdog's line (a leaked `Vec`; null until armed).
static WATCHDOG_MSG: std::sync::atomic::AtomicPtr<Vec<u8>> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// SIGALRM: the phase outlived its deadline and the grace. Only write(2) and _exit(2).
extern "C" fn on_watchdog(_sig: libc::c_int) {
    let m = WATCHDOG_MSG.load(Ordering::SeqCst);
    // SAFETY: `m` is null or a leaked Vec that is never freed or changed; write(2) of its
    // bytes, then _exit(2): no unwinding, no atexit handlers, no locks taken.
    unsafe {
        if let Some(v) = m.as_ref() {
            libc::write(2, v.as_ptr().cast(), v.len());
        }
        libc::_exit(1);
    }
}

/// `timeout`, but no later than the hard deadline (at least `MIN_WAIT`).
pub fn cap(timeout: Duration) -> Duration {
    let at = lock(&DEADLINE).at;
    cap_at(at, Instant::now(), timeout)
}

fn cap_at(at: Option<Instant>, now: Instant, timeout: Duration) -> Duration {
    match at {
        Some(at) => timeout
            .min(at.saturating_duration_since(now))
            .max(MIN_WAIT.min(timeout)),
        None => timeout,
    }
}

/// The wait for a bounded read that has no timeout of its own.
pub fn read_timeout() -> Duration {
    let t = lock(&DEADLINE).read_timeout;
    cap(t)
}

/// Reaps the children that have exited since (by pid; never `waitpid(-1)`).
pub fn reap() {
    let mut p = lock(&PENDING);
    p.retain(|&pid| {
        let mut st = 0;
        // SAFETY: waitpid on a child this module forked; WNOHANG never blocks.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid {
            free_stack(pid);
        }
        r == 0
    });
}

/// Whether a child is still pending (timed out and not yet reaped).
#[cfg(test)]
fn is_pending(pid: libc::pid_t) -> bool {
    reap();
    lock(&PENDING).contains(&pid)
}

fn devnull() -> io::Result<libc::c_int> {
    static NULL: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(f) = NULL.get() {
        return Ok(f.as_raw_fd());
    }
    let f: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into();
    Ok(NULL.get_or_init(|| f).as_raw_fd())
}

#[cfg(test)]
fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

/// The upper bound for the close loop when close_range(2) is missing (Linux < 5.9).
fn max_fd() -> libc::c_int {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) };
    if n <= 0 {
        1024
    } else {
        n.min(1 << 16) as libc::c_int
    }
}

/// A helper child and our ends of its pipes (both non-blocking).
struct Server {
    pid: libc::pid_t,
    req: OwnedFd,
    report: OwnedFd,
}

/// Helper children ready for a request (see the module doc), and (tests) how many it forked.
struct Pool {
    idle: Mutex<Vec<Server>>,
    #[cfg(test)]
    forks: AtomicU64,
}

/// The process's helpers.
static POOL: Pool = Pool::new();

#[cfg(test)]
thread_local! {
    /// Helpers forked by this thread (tests running alongside fork too).
    static MY_FORKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// What a helper is asked to do: read at most this many bytes, or write these.
#[derive(Clone, Copy)]
enum Op<'a> {
    Read(usize),
    Write(&'a [u8]),
}

impl Pool {
    const fn new() -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            #[cfg(test)]
            forks: AtomicU64::new(0),
        }
    }

    /// Reads at most `max` (at most `MAX_BOUNDED_READ`) bytes of `path` in a helper, waiting
    /// at most `timeout`. Gives the pid of the helper that did it (0: none) with the result.
    fn read(
        &self,
        path: &Path,
        max: usize,
        timeout: Duration,
    ) -> (libc::pid_t, io::Result<Vec<u8>>) {
        self.run(path, Op::Read(max.min(MAX_BOUNDED_READ)), timeout)
    }

    /// One open + write(2) of `data` (at most `MAX_BOUNDED_WRITE` bytes) to `path` in a helper,
    /// waiting at most `timeout`.
    fn write(&self, path: &Path, data: &[u8], timeout: Duration) -> (libc::pid_t, io::Result<()>) {
        let (pid, r) = self.run(path, Op::Write(data), timeout);
        (pid, r.map(drop))
    }

    /// One request to an idle helper (or a new one), waiting until `timeout`: the helper goes
    /// back to the pool when it answered, and is left behind when it did not (still in the
    /// kernel) or is of no further use.
    fn run(&self, path: &Path, op: Op, timeout: Duration) -> (libc::pid_t, io::Result<Vec<u8>>) {
        let deadline = Instant::now() + timeout;
        let p = path.as_os_str().as_bytes();
        if p.contains(&0) {
            return (
                0,
                Err(io::Error::new(io::ErrorKind::InvalidInput, "NUL in path")),
            );
        }
        if p.len() >= READ_PATH_MAX {
            return (0, Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG)));
        }
        let (kind, n, data, max) = match op {
            Op::Read(max) => (OP_READ, max, &[][..], max),
            Op::Write(d) => (OP_WRITE, d.len(), d, 0),
        };
        if kind == OP_WRITE && n > MAX_BOUNDED_WRITE {
            return (0, Err(io::Error::from_raw_os_error(libc::EINVAL)));
        }
        reap();
        let mut req = Vec::with_capacity(REQ_HDR + p.len() + data.len());
        req.push(kind);
        req.extend_from_slice(&(p.len() as u32).to_ne_bytes());
        req.extend_from_slice(p);
        req.extend_from_slice(&(n as u32).to_ne_bytes());
        req.extend_from_slice(data);
        let mut retried = false;
        loop {
            let idle = lock(&self.idle).pop();
            let s = match idle {
                Some(s) => s,
                None => match self.spawn() {
                    Ok(s) => s,
                    Err(e) => return (0, Err(e)),
                },
            };
            let pid = s.pid;
            match send(s.req.as_raw_fd(), &req) {
                Ok(()) => {}
                // The helper ended while idle (killed): once more with another one.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) && !retried => {
                    s.abandon();
                    retried = true;
                    continue;
                }
                Err(e) => {
                    s.abandon();
                    return (pid, Err(e));
                }
            }
            return match s.receive(deadline, max) {
                Ok(r) => {
                    let mut g = lock(&self.idle);
                    if g.len() < POOL_MAX {
                        g.push(s);
                    } else {
                        drop(g);
                        s.abandon();
                    }
                    (pid, r)
                }
                Err(e) => {
                    s.abandon();
                    (pid, Err(e))
                }
            };
        }
    }

    /// Forks a helper; everything it needs is prepared here. The one place a child of
    /// pt-hook's bounded I/O is set up (`server_main`).
    fn spawn(&self) -> io::Result<Server> {
        let null = devnull()?;
        let maxfd = max_fd();
        let (req_rx, req_tx) = pipe_cloexec()?;
        let (rep_rx, rep_tx) = pipe_cloexec()?;
        // The child's ends clear of 0-4, where it puts /dev/null and the two pipes.
        let req_rx = at_least(req_rx, 5)?;
        let rep_tx = at_least(rep_tx, 5)?;
        set_nonblock(&req_tx)?;
        set_nonblock(&rep_rx)?;
        let (a, b) = (req_rx.as_raw_fd(), rep_tx.as_raw_fd());
        let pid = start_helper(ChildArgs {
            null,
            req: a,
            report: b,
            maxfd,
        })?;
        #[cfg(test)]
        {
            self.forks.fetch_add(1, Ordering::SeqCst);
            MY_FORKS.with(|c| c.set(c.get() + 1));
        }
        drop(req_rx);
        drop(rep_tx);
        Ok(Server {
            pid,
            req: req_tx,
            report: rep_rx,
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let idle = std::mem::take(self.idle.get_mut().unwrap_or_else(|p| p.into_inner()));
        for s in idle {
            s.abandon();
        }
    }
}

impl Server {
    /// The report on one request, waiting until `deadline`: Err when the helper is of no
    /// further use (ETIMEDOUT, it ended, a report that makes no sense), else the op's result.
    fn receive(&self, deadline: Instant, max: usize) -> io::Result<io::Result<Vec<u8>>> {
        let mut v = vec![0u8; REPORT_HDR + max];
        let mut have = 0;
        let fd = self.report.as_raw_fd();
        loop {
            if have >= REPORT_HDR {
                let len = u32::from_ne_bytes([v[4], v[5], v[6], v[7]]) as usize;
                if len > max || have > REPORT_HDR + len {
                    return Err(io::Error::other("the helper child sent a bad report"));
                }
                if have == REPORT_HDR + len {
                    let status = i32::from_ne_bytes([v[0], v[1], v[2], v[3]]);
                    if status == SHORT_WRITE {
                        return Ok(Err(io::Error::new(io::ErrorKind::WriteZero, "short write")));
                    }
                    if status != 0 {
                        return Ok(Err(io::Error::from_raw_os_error(status)));
                    }
                    v.truncate(have);
                    v.drain(..REPORT_HDR);
                    return Ok(Ok(v));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
            let mut p = libc::pollfd {
                fd,
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
                if left.is_zero() {
                    return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
                }
                continue;
            }
            // SAFETY: read into the rest of a buffer we own, of the given length.
            let n = unsafe { libc::read(fd, v.as_mut_ptr().add(have).cast(), v.len() - have) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN)) {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::Error::other(
                    "the bounded I/O child ended without a report",
                ));
            }
            have += n as usize;
        }
    }

    /// Closes our ends (the helper ends at end of file once it returns from the kernel);
    /// reaps it if it is done, else keeps its pid for `reap`.
    fn abandon(self) {
        let pid = self.pid;
        drop(self.req);
        drop(self.report);
        let mut st = 0;
        // SAFETY: waitpid on our own child; WNOHANG never blocks.
        match unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) } {
            0 => lock(&PENDING).push(pid),
            r if r == pid => free_stack(pid),
            _ => {}
        }
    }
}

/// What a helper starts with (see `server_main`).
#[repr(C)]
#[derive(Clone, Copy)]
struct ChildArgs {
    null: libc::c_int,
    req: libc::c_int,
    report: libc::c_int,
    maxfd: libc::c_int,
}

/// The stack a helper runs on: its buffers (`REQ_MAX` + a report) and a margin.
#[cfg(target_arch = "x86_64")]
const HELPER_STACK: usize = 512 * 1024;

/// The stacks of helpers that share our memory, by pid: unmapped once the helper is reaped
/// (never while it may still run on it).
#[cfg(target_arch = "x86_64")]
static STACKS: Mutex<Vec<(libc::pid_t, usize)>> = Mutex::new(Vec::new());

fn free_stack(pid: libc::pid_t) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut g = lock(&STACKS);
        if let Some(i) = g.iter().position(|(p, _)| *p == pid) {
            let (_, base) = g.swap_remove(i);
            // SAFETY: the mapping `start_helper` made for this helper, which has exited.
            unsafe { libc::munmap(base as *mut libc::c_void, HELPER_STACK) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = pid;
}

/// Starts a helper running `server_main`. On x86_64 it shares our memory (clone with
/// CLONE_VM, like the first half of posix_spawn) on a stack of its own: no page tables are
/// copied and none of our pages becomes copy-on-write, which under emulation is most of a
/// fork's cost, paid again by every thread that writes memory afterwards. It has its own
/// descriptor table (a copy, which it closes down to its pipes) and signal handlers, runs
/// with every signal blocked and makes only raw system calls (`sys`), so it touches no
/// thread-local of ours (errno included) and no memory but its stack; when we exit, it
/// keeps the address space alive until it finishes on its own time. Elsewhere: fork.
fn start_helper(args: ChildArgs) -> io::Result<libc::pid_t> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: a fresh private mapping; its lowest page becomes the guard page.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                HELPER_STACK,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the first page of the mapping just made.
        unsafe { libc::mprotect(base, 4096, libc::PROT_NONE) };
        // The arguments at the top of the child's stack (16-byte aligned), the stack below.
        let top = (base as usize + HELPER_STACK - 64) & !15;
        // SAFETY: `top` is inside the mapping, aligned, with room for ChildArgs.
        unsafe { std::ptr::write(top as *mut ChildArgs, args) };
        // SAFETY: the child runs `helper_entry` on its own stack and only makes raw system
        // calls (see above); glibc's clone wrapper switches stacks and touches nothing else.
        let pid = unsafe {
            libc::clone(
                helper_entry,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::SIGCHLD,
                top as *mut libc::c_void,
            )
        };
        if pid < 0 {
            let e = io::Error::last_os_error();
            // SAFETY: no child uses the mapping.
            unsafe { libc::munmap(base, HELPER_STACK) };
            return Err(e);
        }
        lock(&STACKS).push((pid, base as usize));
        Ok(pid)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: the child runs only async-signal-safe system calls on its stack and ends
        // with _exit; the parent only records the pid.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: see above; this never returns.
            unsafe { server_main(args) }
        }
        Ok(pid)
    }
}

#[cfg(target_arch = "x86_64")]
extern "C" fn helper_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the ChildArgs `start_helper` wrote on this helper's own stack.
    unsafe { server_main(std::ptr::read(arg as *const ChildArgs)) }
}

/// The system calls of a helper. On x86_64 the helper shares our memory, so these are raw
/// `syscall` instructions that return -errno and never touch errno (a thread-local of the
/// thread that started the helper); elsewhere (a forked helper) libc's wrappers.
mod sys {
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn call(n: libc::c_long, a: usize, b: usize, c: usize, d: usize) -> isize {
        let r: isize;
        // SAFETY: the caller passes a valid system call; the kernel clobbers rcx and r11.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") n as isize => r,
                in("rdi") a,
                in("rsi") b,
                in("rdx") c,
                in("r10") d,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack)
            );
        }
        r
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn ret(r: isize) -> isize {
        if r < 0 {
            // SAFETY: errno of this (forked, single-threaded) helper.
            -(unsafe { *libc::__errno_location() } as isize)
        } else {
            r
        }
    }

    /// read(2): bytes or -errno.
    pub unsafe fn read(fd: i32, buf: *mut u8, n: usize) -> isize {
        #[cfg(target_arch = "x86_64")]
        return unsafe { call(libc::SYS_read, fd as usize, buf as usize, n, 0) };
        #[cfg(not(target_arch = "x86_64"))]
        return ret(unsafe { libc::read(fd, buf.cast(), n) });
    }

    /// write(2): bytes or -errno.
    pub unsafe fn write(fd: i32, buf: *const u8, n: usize) -> isize {
        #[cfg(target_arch = "x86_64")]
        return unsafe { call(libc::SYS_write, fd as usize, buf as usize, n, 0) };
        #[cfg(not(target_arch = "x86_64"))]
        return ret(unsafe { libc::write(fd, buf.cast(), n) });
    }

    /// open(2) of a NUL-terminated path: a descriptor or -errno.
    pub unsafe fn open(path: *const u8, flags: i32) -> isize {
        #[cfg(target_arch = "x86_64")]
        return unsafe {
            call(
                libc::SYS_openat,
                libc::AT_FDCWD as isize as usize,
                path as usize,
                flags as usize,
                0,
            )
        };
        #[cfg(not(target_arch = "x86_64"))]
        return ret(unsafe { libc::open(path.cast(), flags) } as isize);
    }

    pub unsafe fn close(fd: i32) {
        #[cfg(target_arch = "x86_64")]
        unsafe {
            call(libc::SYS_close, fd as usize, 0, 0, 0);
        }
        #[cfg(not(target_arch = "x86_64"))]
        unsafe {
            libc::close(fd);
        }
    }

    pub unsafe fn dup2(from: i32, to: i32) {
        #[cfg(target_arch = "x86_64")]
        unsafe {
            call(libc::SYS_dup2, from as usize, to as usize, 0, 0);
        }
        #[cfg(not(target_arch = "x86_64"))]
        unsafe {
            libc::dup2(from, to);
        }
    }

    /// close_range(from, ~0, 0): 0 or -errno.
    pub unsafe fn close_from(from: u32) -> isize {
        #[cfg(target_arch = "x86_64")]
        return unsafe {
            call(
                libc::SYS_close_range,
                from as usize,
                u32::MAX as usize,
                0,
                0,
            )
        };
        #[cfg(not(target_arch = "x86_64"))]
        return ret(unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32) } as isize);
    }

    /// Blocks every signal that can be blocked: no handler of ours runs in a helper.
    pub unsafe fn block_signals() {
        let all: u64 = !0;
        #[cfg(target_arch = "x86_64")]
        unsafe {
            call(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK as usize,
                &all as *const u64 as usize,
                0,
                8,
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &all as *const u64,
                0usize,
                8usize,
            );
        }
    }

    pub unsafe fn exit(code: i32) -> ! {
        #[cfg(target_arch = "x86_64")]
        unsafe {
            call(libc::SYS_exit_group, code as usize, 0, 0, 0);
        }
        // SAFETY: exit_group does not return; this is only reached off x86_64.
        unsafe { libc::_exit(code) }
    }
}

/// A helper: 0-2 on /dev/null, the request pipe on 3, the report pipe on 4, nothing else of
/// ours; then one report per request (one open + read, or one open + one write(2)) until the
/// request pipe ends. Stack buffers and `sys` calls only.
unsafe fn server_main(args: ChildArgs) -> ! {
    let ChildArgs {
        null,
        req,
        report,
        maxfd,
    } = args;
    // SAFETY (the whole body): raw system calls on descriptors and stack buffers of this
    // helper.
    unsafe {
        sys::block_signals();
        for fd in 0..3 {
            sys::dup2(null, fd);
        }
        // Both are at 5 or above: neither overwrites the other.
        sys::dup2(req, 3);
        sys::dup2(report, 4);
        if sys::close_from(5) != 0 {
            for fd in 5..maxfd {
                sys::close(fd);
            }
        }
        // Not zeroed (138 KB of stores, and every page of both touched, at each helper's
        // start): only the bytes a read(2) filled are ever read back.
        let mut rq_buf = std::mem::MaybeUninit::<[u8; REQ_MAX]>::uninit();
        let mut out_buf = std::mem::MaybeUninit::<[u8; REPORT_HDR + MAX_BOUNDED_READ]>::uninit();
        let rq: *mut u8 = rq_buf.as_mut_ptr().cast();
        let out: *mut u8 = out_buf.as_mut_ptr().cast();
        let at = |i: usize| *rq.add(i);
        let word = |i: usize| u32::from_ne_bytes([at(i), at(i + 1), at(i + 2), at(i + 3)]) as usize;
        loop {
            // The request (see REQ_HDR): the header, then the path and n, then a write's bytes.
            let mut have = 0usize;
            let mut need = 5usize;
            let mut stage = 0;
            loop {
                if stage == 0 && have >= 5 {
                    let plen = word(1);
                    if plen == 0 || plen >= READ_PATH_MAX {
                        sys::exit(1);
                    }
                    need = REQ_HDR + plen;
                    stage = 1;
                }
                if stage == 1 && have >= need {
                    let m = need - 4;
                    let n = word(m);
                    if at(0) == OP_WRITE {
                        if n > MAX_BOUNDED_WRITE {
                            sys::exit(1);
                        }
                        need += n;
                    }
                    stage = 2;
                }
                if stage == 2 && have >= need {
                    break;
                }
                let r = sys::read(3, rq.add(have), REQ_MAX - have);
                if r == 0 {
                    sys::exit(0);
                }
                if r < 0 {
                    if r == -(libc::EINTR as isize) {
                        continue;
                    }
                    sys::exit(0);
                }
                have += r as usize;
            }
            if have != need {
                sys::exit(1);
            }
            let write = at(0) == OP_WRITE;
            let plen = word(1);
            let m = 5 + plen;
            let n = word(m);
            *rq.add(m) = 0;
            let mut status: i32 = 0;
            let mut got: usize = 0;
            let data = out.add(REPORT_HDR);
            let flags = if write {
                libc::O_WRONLY
            } else {
                libc::O_RDONLY
            };
            let fd = sys::open(rq.add(5), flags | libc::O_CLOEXEC | libc::O_NOCTTY);
            if fd < 0 {
                status = -fd as i32;
            } else if write {
                let r = sys::write(fd as i32, rq.add(m + 4), n);
                if r < 0 {
                    status = -r as i32;
                } else if r as usize != n {
                    status = SHORT_WRITE;
                }
                sys::close(fd as i32);
            } else {
                (got, status) = read_all(fd as i32, data, n.min(MAX_BOUNDED_READ));
                sys::close(fd as i32);
            }
            if status != 0 {
                got = 0;
            }
            std::ptr::copy_nonoverlapping(status.to_ne_bytes().as_ptr(), out, 4);
            std::ptr::copy_nonoverlapping((got as u32).to_ne_bytes().as_ptr(), out.add(4), 4);
            let total = REPORT_HDR + got;
            let mut off = 0;
            while off < total {
                let r = sys::write(4, out.add(off), total - off);
                if r == -(libc::EINTR as isize) {
                    continue;
                }
                if r <= 0 {
                    // Nobody reads the reports any more.
                    sys::exit(0);
                }
                off += r as usize;
            }
        }
    }
}

/// A helper's read of a whole attribute: (bytes, errno or 0), with `sys` calls.
unsafe fn read_all(fd: i32, buf: *mut u8, len: usize) -> (usize, i32) {
    let mut got = 0usize;
    while got < len {
        // SAFETY: buf + got .. buf + len is inside the caller's buffer.
        let r = unsafe { sys::read(fd, buf.add(got), len - got) };
        if r < 0 {
            if r == -(libc::EINTR as isize) {
                continue;
            }
            return (got, -r as i32);
        }
        if r == 0 {
            break;
        }
        got += r as usize;
    }
    (got, 0)
}

/// A pipe, both ends close-on-exec: (read end, write end).
fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors from pipe2, owned from here on.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `fd`, moved to a number of at least `min` (close-on-exec) if it is below.
fn at_least(fd: OwnedFd, min: libc::c_int) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= min {
        return Ok(fd);
    }
    // SAFETY: fcntl on a descriptor we own; the result is a new descriptor we own.
    let d = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if d < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: d is a new descriptor owned from here on.
    Ok(unsafe { OwnedFd::from_raw_fd(d) })
}

fn set_nonblock(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let r = unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if fl < 0 {
            fl
        } else {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK)
        }
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes all of `buf` to a pipe whose reader may be gone: EPIPE, never SIGPIPE (the read-only
/// commands run with SIGPIPE at its default, which would end pt-hook). SIGPIPE is blocked on
/// this thread for the write and the one the write raised, if any, is taken before unblocking.
fn send(fd: libc::c_int, buf: &[u8]) -> io::Result<()> {
    // SAFETY: signal-set calls on sets we own, write(2) of a buffer we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        let mut off = 0;
        let mut err = None;
        while off < buf.len() {
            let r = libc::write(fd, buf.as_ptr().add(off).cast(), buf.len() - off);
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                err = Some(e);
                break;
            }
            off += r as usize;
        }
        if err.as_ref().and_then(|e| e.raw_os_error()) == Some(libc::EPIPE) {
            let zero = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            libc::sigtimedwait(&set, std::ptr::null_mut(), &zero);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        err.map_or(Ok(()), Err)
    }
}

/// Device directories with an op still blocked in the kernel, and that op's child: the
/// kernel holds the device's lock, so another op on an attribute there would block too. Until
/// that child has exited, such ops fail at once instead of each waiting out its own timeout
/// (`status` on a host with an unbind stuck under a vfio holder reads several files per
/// device).
static STUCK: Mutex<Vec<(std::path::PathBuf, libc::pid_t)>> = Mutex::new(Vec::new());

fn device_dir(path: &Path) -> Option<&Path> {
    path.parent().filter(|d| {
        d.to_str()
            .is_some_and(|s| s.contains("/sys/bus/pci/devices/") || s.contains("/sys/devices/"))
    })
}

fn refuse_if_stuck(path: &Path) -> io::Result<()> {
    let Some(d) = device_dir(path) else {
        return Ok(());
    };
    reap();
    let pending = lock(&PENDING).clone();
    let mut g = lock(&STUCK);
    g.retain(|(_, pid)| pending.contains(pid));
    if g.iter().any(|(s, _)| s == d) {
        return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
    }
    Ok(())
}

fn note_stuck<T>(path: &Path, pid: libc::pid_t, r: &io::Result<T>) {
    if let (Err(e), Some(d)) = (r, device_dir(path)) {
        if e.raw_os_error() == Some(libc::ETIMEDOUT) {
            lock(&STUCK).push((d.to_path_buf(), pid));
        }
    }
}

/// One open + write(2) of `data` to `path` in a helper child, waiting at most `timeout`
/// (capped by the hard deadline).
pub fn write(path: &Path, data: &[u8], timeout: Duration) -> io::Result<()> {
    refuse_if_stuck(path)?;
    let timeout = cap(timeout);
    let (pid, r) = POOL.write(path, data, timeout);
    note_stuck(path, pid, &r);
    r
}

/// Reads at most `max` bytes (at most `MAX_BOUNDED_READ`) of `path` in a helper child,
/// waiting at most `timeout` (capped by the hard deadline).
pub fn read(path: &Path, max: usize, timeout: Duration) -> io::Result<Vec<u8>> {
    refuse_if_stuck(path)?;
    let timeout = cap(timeout);
    let (pid, r) = POOL.read(path, max, timeout);
    note_stuck(path, pid, &r);
    r
}

/// Like `read`, as text of at most one page.
pub fn read_text(path: &Path, timeout: Duration) -> io::Result<String> {
    let v = read(path, TEXT_READ_MAX, timeout)?;
    String::from_utf8(v).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Whether a host path names an attribute whose read can block in the kernel: a PCI
/// device's `driver_override` (device lock, Linux 6.1) or `config` (config access held by a
/// reset).
pub fn read_can_block(rel: &str) -> bool {
    rel.starts_with("sys/") && (rel.ends_with("/driver_override") || rel.ends_with("/config"))
}

/// Reads `fd` into `buf` until end of file, `len` bytes or an error, retrying EINTR: (bytes
/// read, errno or 0). Raw libc calls only, so a forked child may use it before it exits (the
/// pmxcfs walker in `tree`).
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes and `fd` an open descriptor.
pub(super) unsafe fn read_raw(fd: i32, buf: *mut u8, len: usize) -> (usize, i32) {
    let mut got = 0usize;
    while got < len {
        // SAFETY: buf + got .. buf + len is inside the caller's buffer.
        let r = libc::read(fd, buf.add(got).cast(), len - got);
        if r < 0 {
            let e = *libc::__errno_location();
            if e == libc::EINTR {
                continue;
            }
            return (got, e);
        }
        if r == 0 {
            break;
        }
        got += r as usize;
    }
    (got, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::real::RealHost;
    use crate::host::Host;
    use std::sync::Arc;

    fn mkfifo(p: &Path) {
        let c = cstr(p).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    /// Opens the FIFO's other end so a child blocked in open(2) finishes and exits.
    fn release_fifo(p: &Path, read_side: bool) {
        use std::os::unix::fs::OpenOptionsExt;
        let mut o = std::fs::OpenOptions::new();
        if read_side {
            o.read(true);
        } else {
            // O_RDWR on a FIFO never blocks; the blocked reader's open then returns.
            o.read(true).write(true);
        }
        let f = o.custom_flags(libc::O_NONBLOCK).open(p).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        drop(f);
    }

    fn fd_links(pid: libc::pid_t) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| {
                        let t = std::fs::read_link(e.path())
                            .map(|t| t.display().to_string())
                            .unwrap_or_default();
                        (e.file_name().to_string_lossy().into_owned(), t)
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn wait_reaped(pid: libc::pid_t) {
        let t = Instant::now();
        while is_pending(pid) {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "child {pid} never ended"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Once an op on a device is blocked, the next op on that device fails at once rather than
    /// waiting out its own timeout; after the blocked child ended, ops run again.
    #[test]
    fn a_device_with_a_blocked_op_fails_fast_until_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("sys/bus/pci/devices/0000:07:00.0");
        std::fs::create_dir_all(&dev).unwrap();
        let fifo = dev.join("driver_override");
        mkfifo(&fifo);
        std::fs::write(dev.join("config"), b"\x36\x1b").unwrap();
        let t = Instant::now();
        let e = read(&fifo, 64, Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ETIMEDOUT));
        assert!(t.elapsed() >= Duration::from_millis(200));
        // Another attribute of the same device: refused at once.
        let t = Instant::now();
        let e = read(&dev.join("config"), 64, Duration::from_secs(2)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ETIMEDOUT));
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "{:?}",
            t.elapsed()
        );
        // Another device is not affected.
        let other = dir.path().join("sys/bus/pci/devices/0000:08:00.0");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("config"), b"ok").unwrap();
        assert_eq!(
            read(&other.join("config"), 64, Duration::from_secs(2)).unwrap(),
            b"ok"
        );
        // The blocked child returns: the device works again.
        release_fifo(&fifo, false);
        let t = Instant::now();
        loop {
            match read(&dev.join("config"), 64, Duration::from_secs(2)) {
                Ok(v) => {
                    assert_eq!(v, b"\x36\x1b");
                    break;
                }
                Err(_) if t.elapsed() < Duration::from_secs(5) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("device still refused after its child ended: {e}"),
            }
        }
    }

    /// A helper left behind by a write blocked in open(2) holds /dev/null on 0-2 and its two
    /// pipes, nothing else: not a pipe the test made without CLOEXEC, not the test's
    /// stdout/stderr; it is not waited for, and our ends of its pipes are closed.
    #[test]
    fn a_helper_shares_our_memory_blocks_every_signal_and_its_stack_goes_when_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let pool = Pool::new();
        let (pid, e) = pool.write(&fifo, b"1", Duration::from_millis(200));
        assert_eq!(e.unwrap_err().raw_os_error(), Some(libc::ETIMEDOUT));
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap()
        };
        // Every signal but SIGKILL and SIGSTOP (which cannot be blocked) is blocked.
        let blocked = field("SigBlk:");
        for sig in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGPIPE,
            libc::SIGUSR1,
        ] {
            assert_ne!(blocked & (1 << (sig - 1)), 0, "signal {sig}: {blocked:x}");
        }
        #[cfg(target_arch = "x86_64")]
        {
            // One address space: the helper's mm is ours (same /proc/PID/maps), and its stack
            // is a mapping of ours until it is reaped.
            let maps = |p: u32| std::fs::read_to_string(format!("/proc/{p}/maps")).unwrap();
            let base = lock(&STACKS)
                .iter()
                .find(|(p, _)| *p == pid)
                .map(|(_, b)| *b)
                .expect("the helper's stack is recorded");
            let start = format!("{base:x}-");
            assert!(maps(std::process::id()).contains(&start));
            assert!(maps(pid as u32).contains(&start));
            release_fifo(&fifo, true);
            wait_reaped(pid);
            // Reaped: its stack is given back (another test's mapping may take the address
            // at once, so the record is what is checked).
            assert!(!lock(&STACKS).iter().any(|(p, _)| *p == pid));
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            release_fifo(&fifo, true);
            wait_reaped(pid);
        }
    }

    #[test]
    fn blocked_child_holds_no_descriptor_of_the_parent() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let attr = dir.path().join("attr");
        std::fs::write(&attr, "").unwrap();
        let mut p = [0; 2];
        // SAFETY: plain pipe(2): inheritable descriptors, as a naive fork would keep them.
        assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
        let mine = link(p[1]);
        let pool = Pool::new();
        let (pid, r) = pool.write(&attr, b"1", Duration::from_secs(2));
        r.unwrap();
        assert_eq!(std::fs::read_to_string(&attr).unwrap(), "1");
        let (spid, req, report) = server_links(&pool);
        assert_eq!(spid, pid);
        let want = reader_fds(&req, &report);
        assert_eq!(fd_links(pid), want, "test pipe is {mine}");
        // The same helper takes the next write, which blocks in open(2) (no reader).
        let t = Instant::now();
        let (bpid, e) = pool.write(&fifo, b"1", Duration::from_millis(200));
        assert_eq!(bpid, pid);
        assert_eq!(e.unwrap_err().raw_os_error(), Some(libc::ETIMEDOUT));
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        // Left behind, still blocked: not waited for, not in the pool any more.
        assert!(lock(&pool.idle).is_empty());
        assert!(is_pending(pid));
        assert_eq!(fd_links(pid), want);
        assert!(!fd_links(pid).iter().any(|(_, t)| *t == mine));
        let ours: Vec<String> = fd_links(std::process::id() as libc::pid_t)
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        assert!(!ours.contains(&req) && !ours.contains(&report), "{ours:?}");
        release_fifo(&fifo, true);
        wait_reaped(pid);
        // SAFETY: closing the two descriptors pipe(2) gave us.
        unsafe {
            libc::close(p[0]);
            libc::close(p[1]);
        }
    }

    #[test]
    fn real_host_write_bounded_times_out_on_a_fifo_without_reader() {
        let dir = tempfile::tempdir().unwrap();
        mkfifo(&dir.path().join("reset"));
        let h = Arc::new(RealHost::new(dir.path()));
        let t = Instant::now();
        let e = h
            .write_bounded("reset", "1", Duration::from_millis(300))
            .unwrap_err();
        let el = t.elapsed();
        assert_eq!(e.raw_os_error(), Some(libc::ETIMEDOUT), "{e}");
        assert!(
            el >= Duration::from_millis(300) && el < Duration::from_millis(400),
            "{el:?}"
        );
        release_fifo(&dir.path().join("reset"), true);
    }

    #[test]
    fn real_host_write_bounded_writes_and_reports_errno() {
        let dir = tempfile::tempdir().unwrap();
        let h = Arc::new(RealHost::new(dir.path()));
        std::fs::write(dir.path().join("attr"), "").unwrap();
        Arc::clone(&h)
            .write_bounded("attr", "0000:01:00.0", Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("attr")).unwrap(),
            "0000:01:00.0"
        );
        std::fs::create_dir(dir.path().join("dir")).unwrap();
        std::os::unix::fs::symlink("/dev/full", dir.path().join("full")).unwrap();
        for (rel, errno) in [
            ("dir", libc::EISDIR),
            ("missing", libc::ENOENT),
            ("full", libc::ENOSPC),
        ] {
            let e = Arc::clone(&h)
                .write_bounded(rel, "1", Duration::from_secs(5))
                .unwrap_err();
            assert_eq!(e.raw_os_error(), Some(errno), "{rel}: {e}");
        }
    }

    #[test]
    fn bounded_reads_return_the_bytes_errno_or_etimedout() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("sys/bus/pci/devices/0000:01:00.0");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("driver_override"), "vfio-pci\n").unwrap();
        let cfg: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        std::fs::write(d.join("config"), &cfg).unwrap();
        let h = Arc::new(RealHost::new(dir.path()));
        let rel = "sys/bus/pci/devices/0000:01:00.0";
        assert!(read_can_block(&format!("{rel}/driver_override")));
        assert!(read_can_block(&format!("{rel}/config")));
        assert!(!read_can_block(&format!("{rel}/vendor")));
        assert!(!read_can_block("etc/pve/qemu-server/100.conf"));
        assert_eq!(
            h.read(&format!("{rel}/driver_override")).unwrap(),
            "vfio-pci\n"
        );
        assert_eq!(h.read_bytes(&format!("{rel}/config"), 4096).unwrap(), cfg);
        assert_eq!(
            h.read_bytes(&format!("{rel}/config"), 64).unwrap(),
            cfg[..64]
        );
        let e = h.read(&format!("{rel}/nothing")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        let e = h.read_bytes("sys/config", 16).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let t = Instant::now();
        let e = Arc::clone(&h)
            .read_bounded("fifo", Duration::from_millis(200))
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ETIMEDOUT));
        assert!(t.elapsed() < Duration::from_millis(1500));
        release_fifo(&fifo, false);
    }

    #[test]
    fn the_hard_deadline_caps_every_wait() {
        let now = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(cap_at(None, now, s(60)), s(60));
        assert_eq!(cap_at(Some(now + s(2)), now, s(60)), s(2));
        assert_eq!(cap_at(Some(now + s(90)), now, s(60)), s(60));
        assert_eq!(cap_at(Some(now), now, s(60)), MIN_WAIT);
        assert_eq!(cap_at(Some(now), now + s(5), s(60)), MIN_WAIT);
        assert_eq!(
            cap_at(Some(now), now, Duration::from_millis(1)),
            Duration::from_millis(1)
        );
    }

    fn link(fd: libc::c_int) -> String {
        std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .display()
            .to_string()
    }

    /// Our ends of the pipes of the helper that goes next, as /proc names them
    /// (`pipe:[inode]`), and its pid.
    fn server_links(r: &Pool) -> (libc::pid_t, String, String) {
        let g = lock(&r.idle);
        let s = g.last().expect("an idle helper");
        (s.pid, link(s.req.as_raw_fd()), link(s.report.as_raw_fd()))
    }

    fn reader_fds(req: &str, report: &str) -> Vec<(String, String)> {
        vec![
            ("0".into(), "/dev/null".into()),
            ("1".into(), "/dev/null".into()),
            ("2".into(), "/dev/null".into()),
            ("3".into(), req.into()),
            ("4".into(), report.into()),
        ]
    }

    /// 200 reads and 200 writes one after another, one fork: every op is served by the same
    /// helper child, which ends when its request pipe is closed.
    #[test]
    fn reads_share_one_reader_child() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("driver_override");
        std::fs::write(&p, "vfio-pci\n").unwrap();
        let w = dir.path().join("unbind");
        std::fs::write(&w, "").unwrap();
        let r = Pool::new();
        let mut pids = std::collections::BTreeSet::new();
        for i in 0..200 {
            let (pid, v) = r.read(&p, 4096, Duration::from_secs(2));
            assert_eq!(v.unwrap(), b"vfio-pci\n");
            pids.insert(pid);
            let data = format!("0000:{i:02x}:00.0");
            let (pid, v) = r.write(&w, data.as_bytes(), Duration::from_secs(2));
            v.unwrap();
            assert_eq!(std::fs::read_to_string(&w).unwrap(), data);
            pids.insert(pid);
        }
        assert_eq!(r.forks.load(Ordering::SeqCst), 1);
        assert_eq!(pids.len(), 1, "{pids:?}");
        let pid = *pids.first().unwrap();
        assert!(pid > 0 && Path::new(&format!("/proc/{pid}")).exists());
        drop(r);
        wait_reaped(pid);
    }

    /// The process-wide path (`read`, as `RealHost::read`/`read_bytes` take it) goes through
    /// the reader child too: not a fork per read. (Other tests in this process may abandon the
    /// shared reader or read alongside: a few forks, not 200.)
    #[test]
    fn bounded_reads_do_not_fork_per_read() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("sys/bus/pci/devices/0000:02:00.0");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("config"), b"\x86\x80").unwrap();
        let h = Arc::new(RealHost::new(dir.path()));
        let forks = || MY_FORKS.with(|c| c.get());
        let before = forks();
        for _ in 0..200 {
            assert_eq!(
                h.read_bytes("sys/bus/pci/devices/0000:02:00.0/config", 64)
                    .unwrap(),
                b"\x86\x80"
            );
        }
        let n = forks() - before;
        assert!(n < 50, "{n} forks for 200 reads");
    }

    /// A read blocked in the kernel (open(2) of a FIFO without writer) leaves the reader child
    /// behind after its timeout; it holds nothing of ours, our ends of its pipes are closed,
    /// and the next read gets a fresh reader at once.
    #[test]
    fn a_blocked_read_leaves_the_reader_behind_and_the_next_read_forks_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let ok = dir.path().join("ok");
        std::fs::write(&ok, "ok\n").unwrap();
        let mut tp = [0; 2];
        // SAFETY: plain pipe(2): inheritable descriptors, as a naive fork would keep them.
        assert_eq!(unsafe { libc::pipe(tp.as_mut_ptr()) }, 0);
        let mine = link(tp[1]);
        let r = Pool::new();
        let (pid1, v) = r.read(&ok, 64, Duration::from_secs(2));
        assert_eq!(v.unwrap(), b"ok\n");
        let (spid, req, report) = server_links(&r);
        assert_eq!(spid, pid1);
        let want = reader_fds(&req, &report);
        assert_eq!(fd_links(pid1), want, "test pipe is {mine}");

        let t = Instant::now();
        let (pid, e) = r.read(&fifo, 64, Duration::from_millis(200));
        let el = t.elapsed();
        assert_eq!(pid, pid1);
        assert_eq!(e.unwrap_err().raw_os_error(), Some(libc::ETIMEDOUT));
        assert!(
            el >= Duration::from_millis(200) && el < Duration::from_millis(350),
            "{el:?}"
        );
        assert!(lock(&r.idle).is_empty());
        assert!(is_pending(pid1));
        // Still blocked in open(2): its descriptors are the same five, none of ours.
        assert_eq!(fd_links(pid1), want);
        // Our ends of its pipes are closed.
        let ours: Vec<String> = fd_links(std::process::id() as libc::pid_t)
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        assert!(!ours.contains(&req) && !ours.contains(&report), "{ours:?}");

        let t = Instant::now();
        let (pid2, v) = r.read(&ok, 64, Duration::from_secs(2));
        let el = t.elapsed();
        assert_eq!(v.unwrap(), b"ok\n");
        assert_ne!(pid2, pid1);
        assert!(el < Duration::from_millis(1000), "{el:?}");
        assert_eq!(r.forks.load(Ordering::SeqCst), 2);
        let (_, req2, report2) = server_links(&r);
        assert_eq!(fd_links(pid2), reader_fds(&req2, &report2));

        release_fifo(&fifo, false);
        wait_reaped(pid1);
        drop(r);
        wait_reaped(pid2);
        // SAFETY: closing the two descriptors pipe(2) gave us.
        unsafe {
            libc::close(tp[0]);
            libc::close(tp[1]);
        }
    }

    /// While one thread's read is blocked in a helper, another thread's read does not wait
    /// behind it: it gets a helper of its own, which then stays for later ops.
    #[test]
    fn a_read_does_not_wait_behind_another_threads_blocked_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let ok = dir.path().join("ok");
        std::fs::write(&ok, "ok").unwrap();
        let r = Pool::new();
        std::thread::scope(|sc| {
            let blocked = sc.spawn(|| r.read(&fifo, 64, Duration::from_millis(400)));
            let t = Instant::now();
            // Forked under the lock, by the blocked read (the lock is not touched here).
            while r.forks.load(Ordering::SeqCst) == 0 {
                assert!(
                    t.elapsed() < Duration::from_secs(2),
                    "the reader never started"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            let t = Instant::now();
            let (_, v) = r.read(&ok, 64, Duration::from_secs(2));
            assert_eq!(v.unwrap(), b"ok");
            assert!(
                t.elapsed() < Duration::from_millis(1000),
                "{:?}",
                t.elapsed()
            );
            let (_, e) = blocked.join().unwrap();
            assert_eq!(e.unwrap_err().raw_os_error(), Some(libc::ETIMEDOUT));
            assert_eq!(r.forks.load(Ordering::SeqCst), 2);
            // The blocked one was left behind; the other is idle, ready for the next op.
            assert_eq!(lock(&r.idle).len(), 1);
            let (_, v) = r.read(&ok, 64, Duration::from_secs(2));
            assert_eq!(v.unwrap(), b"ok");
            assert_eq!(r.forks.load(Ordering::SeqCst), 2);
        });
        release_fifo(&fifo, false);
    }

    /// The reader child reports a failed open or read by its errno, exactly, and truncates a
    /// read at `max` (and `MAX_BOUNDED_READ`); none of that costs a fork.
    #[test]
    fn the_reader_reports_errno_exactly_and_truncates_at_max() {
        let dir = tempfile::tempdir().unwrap();
        let r = Pool::new();
        let s = Duration::from_secs(2);
        let errno = |p: &Path| r.read(p, 64, s).1.unwrap_err().raw_os_error();
        assert_eq!(errno(&dir.path().join("missing")), Some(libc::ENOENT));
        assert_eq!(errno(&dir.path().join("missing/x")), Some(libc::ENOENT));
        // open(2) of a directory for reading works; read(2) fails.
        assert_eq!(errno(dir.path()), Some(libc::EISDIR));
        let noperm = dir.path().join("noperm");
        std::fs::write(&noperm, "x").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&noperm, std::fs::Permissions::from_mode(0o000)).unwrap();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        // Root reads a mode-0 file; sysfs refuses to open a write-only attribute for reading.
        let eacces = if root {
            Path::new("/sys/bus/pci/rescan")
        } else {
            &noperm
        };
        if eacces.exists() {
            assert_eq!(errno(eacces), Some(libc::EACCES), "{}", eacces.display());
        } else {
            eprintln!("no EACCES case here: running as root without /sys/bus/pci/rescan");
        }
        let long = dir.path().join("a".repeat(READ_PATH_MAX));
        assert_eq!(errno(&long), Some(libc::ENAMETOOLONG));
        let big: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        let p = dir.path().join("big");
        std::fs::write(&p, &big).unwrap();
        for max in [0, 1, 100, 4096, 65_535, MAX_BOUNDED_READ] {
            assert_eq!(r.read(&p, max, s).1.unwrap(), big[..max], "max {max}");
        }
        assert_eq!(r.read(&p, 1 << 20, s).1.unwrap(), big[..MAX_BOUNDED_READ]);
        std::fs::write(&p, "short").unwrap();
        assert_eq!(r.read(&p, 4096, s).1.unwrap(), b"short");
        assert_eq!(r.forks.load(Ordering::SeqCst), 1);
    }

    /// Ops from 8 threads at once: at most one helper per thread, each then serving that
    /// thread's later ops (and any other's), not a fork per op.
    #[test]
    fn parallel_ops_fork_one_helper_each_not_one_per_op() {
        let dir = tempfile::tempdir().unwrap();
        let r = Pool::new();
        std::thread::scope(|sc| {
            for t in 0..8 {
                let (r, dir) = (&r, dir.path());
                sc.spawn(move || {
                    let p = dir.join(format!("attr{t}"));
                    std::fs::write(&p, "").unwrap();
                    for i in 0..50 {
                        let data = format!("{t}:{i}");
                        r.write(&p, data.as_bytes(), Duration::from_secs(5))
                            .1
                            .unwrap();
                        let (_, v) = r.read(&p, 64, Duration::from_secs(5));
                        assert_eq!(v.unwrap(), data.as_bytes());
                    }
                });
            }
        });
        let forks = r.forks.load(Ordering::SeqCst);
        assert!(
            (1..=8).contains(&forks),
            "{forks} forks for 800 ops from 8 threads"
        );
        assert_eq!(lock(&r.idle).len() as u64, forks);
    }

    /// A reader child that died while idle (killed) is replaced on the next read, which
    /// still succeeds; pt-hook gets EPIPE, not SIGPIPE.
    #[test]
    fn a_dead_reader_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("attr");
        std::fs::write(&p, "1").unwrap();
        let r = Pool::new();
        let (pid1, v) = r.read(&p, 64, Duration::from_secs(2));
        assert_eq!(v.unwrap(), b"1");
        // SAFETY: signalling and reaping our own child.
        unsafe {
            assert_eq!(libc::kill(pid1, libc::SIGKILL), 0);
            let mut st = 0;
            assert_eq!(libc::waitpid(pid1, &mut st, 0), pid1);
        }
        let (pid2, v) = r.read(&p, 64, Duration::from_secs(2));
        assert_eq!(v.unwrap(), b"1");
        assert_ne!(pid1, pid2);
        assert_eq!(r.forks.load(Ordering::SeqCst), 2);
    }

    /// Cost of one bounded write/read (child process) against the direct call, on tmpfs:
    /// `cargo test --release --target x86_64-unknown-linux-gnu kio_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn kio_cost() {
        let base = if Path::new("/dev/shm").is_dir() {
            tempfile::tempdir_in("/dev/shm").unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        std::fs::write(base.path().join("attr"), "").unwrap();
        let h = Arc::new(RealHost::new(base.path()));
        let n = 1000;
        let per = |f: &mut dyn FnMut()| {
            for _ in 0..50 {
                f();
            }
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        };
        let p = base.path().join("attr");
        let direct_w = per(&mut || h.write("attr", "1").unwrap());
        let bounded_w = per(&mut || {
            Arc::clone(&h)
                .write_bounded("attr", "1", Duration::from_secs(5))
                .unwrap()
        });
        let direct_r = per(&mut || {
            std::fs::read(&p).unwrap();
        });
        let bounded_r = per(&mut || {
            read(&p, 4096, Duration::from_secs(5)).unwrap();
        });
        let thread_w = per(&mut || {
            let h2 = Arc::clone(&h);
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || tx.send(h2.write("attr", "1")));
            rx.recv().unwrap().unwrap();
        });
        eprintln!(
            "per op over {n}: write direct {direct_w:.1} us, thread {thread_w:.1} us, helper child {bounded_w:.1} us; read direct {direct_r:.1} us, helper child {bounded_r:.1} us"
        );
    }
}
