//! Reliability tests that run the real binary as separate processes against fake host trees
//! (`--root`): races between two hooks, device locks held by live and dead processes, the
//! phase deadline with a write that never returns (a FIFO standing in for a sysfs file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pt-hook");
const NIC: &str = "0000:03:00.0";

/// Builds a fake host with tests/fakehost.sh: `body` runs after `fh_root "$ROOT"`.
fn fakehost(body: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakehost.sh");
    let script = format!("set -e; source \"$FHLIB\"; fh_root \"$ROOT\"\n{body}\n");
    let st = Command::new("bash")
        .arg("-c")
        .arg(script)
        .env("FHLIB", lib)
        .env("ROOT", dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    dir
}

/// Two VMs (100, 101) that both pass through 03:00.0, which is on `driver`.
fn shared_nic_host(driver: &str) -> tempfile::TempDir {
    let extra = if driver == "vfio-pci" {
        " override=vfio-pci"
    } else {
        ""
    };
    fakehost(&format!(
        "fh_driver vfio-pci vfio_pci\n\
         fh_bridge 0000:00:1c.0 3\n\
         fh_dev {NIC} 8086 15f3 020000 {driver} 14 0000:00:1c.0 reset=flr,pm,bus{extra}\n\
         printf 'machine: q35\\nhostpci0: 03:00.0\\n' > \"$FH/etc/pve/qemu-server/100.conf\"\n\
         printf 'machine: q35\\nhostpci0: 03:00.0\\n' > \"$FH/etc/pve/qemu-server/101.conf\""
    ))
}

fn write_config(root: &Path, text: &str) {
    std::fs::create_dir_all(root.join("etc/pt-hook")).unwrap();
    std::fs::write(root.join("etc/pt-hook/pt-hook.toml"), text).unwrap();
}

fn cmd(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--root").arg(root).args(args);
    c.env_remove("PT_HOOK_ROOT").env("PT_HOOK_NODE", "pve1");
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

struct Run {
    code: i32,
    out: String,
    elapsed: Duration,
}

fn run(root: &Path, args: &[&str]) -> Run {
    let t = Instant::now();
    let o = cmd(root, args).output().unwrap();
    finish(o, t.elapsed())
}

fn finish(o: Output, elapsed: Duration) -> Run {
    Run {
        code: o.status.code().unwrap_or(-1),
        out: format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        elapsed,
    }
}

/// driver / driver_override / reset_method of every device in the tree.
fn snapshot(root: &Path) -> BTreeMap<String, (String, String, String)> {
    let devs = root.join("sys/bus/pci/devices");
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(devs).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let drv = std::fs::read_link(p.join("driver"))
            .map(|t| t.file_name().unwrap().to_string_lossy().to_string())
            .unwrap_or_else(|_| "none".into());
        let rd = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_else(|_| "-".into());
        m.insert(name, (drv, rd("driver_override"), rd("reset_method")));
    }
    m
}

fn state_file(root: &Path, vm: u32) -> PathBuf {
    root.join(format!("run/pt-hook/vm-{vm}.json"))
}

fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn kill9(child: &mut Child) {
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let _ = child.wait();
}

/// Two hooks for two VMs that share a device, started at the same moment as separate
/// processes: exactly one wins, the other exits 1 naming the winner; the winner's state names
/// the device, the loser has none, and the host tree is what the winner made it. Both start
/// orders, many iterations (PT_HOOK_RACE_ITERS, default 40 per order).
#[test]
fn two_hooks_racing_for_one_device_exactly_one_wins() {
    let iters: usize = std::env::var("PT_HOOK_RACE_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let host = shared_nic_host("vfio-pci");
    let root = host.path();
    let before = snapshot(root);
    let mut wins = BTreeMap::from([(100u32, 0usize), (101u32, 0usize)]);
    for i in 0..2 * iters {
        let order: [u32; 2] = if i % 2 == 0 { [100, 101] } else { [101, 100] };
        // Two threads released by one barrier spawn the two hooks; the second thread starts
        // its spawn slightly later (`order` decides which VM that is) only by scheduling.
        let barrier = std::sync::Barrier::new(2);
        let (ra, rb) = std::thread::scope(|s| {
            let go = |vm: u32| {
                let barrier = &barrier;
                move || {
                    barrier.wait();
                    let t = Instant::now();
                    let o = cmd(root, &[&vm.to_string(), "pre-start"]).output().unwrap();
                    finish(o, t.elapsed())
                }
            };
            let a = s.spawn(go(order[0]));
            let b = s.spawn(go(order[1]));
            (a.join().unwrap(), b.join().unwrap())
        });
        let (winner, loser, rl) = match (ra.code, rb.code) {
            (0, 1) => (order[0], order[1], &rb),
            (1, 0) => (order[1], order[0], &ra),
            _ => panic!(
                "iteration {i}: exits {} and {}:\n{}\n{}",
                ra.code, rb.code, ra.out, rb.out
            ),
        };
        assert!(
            rl.out.contains(&format!("in use by VM {winner}")) && rl.out.contains(NIC),
            "iteration {i}: loser's message: {}",
            rl.out
        );
        let st: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(state_file(root, winner)).unwrap())
                .unwrap();
        assert_eq!(st["vmid"], winner);
        assert_eq!(st["phase"], "prepared");
        assert_eq!(st["devices"][0]["original"]["bdf"], NIC);
        assert!(!state_file(root, loser).exists(), "iteration {i}");
        assert_eq!(snapshot(root), before, "iteration {i}");
        *wins.get_mut(&winner).unwrap() += 1;
        let r = run(root, &[&winner.to_string(), "post-stop"]);
        assert_eq!(r.code, 0, "{}", r.out);
        assert!(!state_file(root, winner).exists());
    }
    eprintln!(
        "race: {} iterations, exactly one winner each time (VM 100 won {}, VM 101 won {})",
        2 * iters,
        wins[&100],
        wins[&101]
    );
}

/// A pre-start that blocks in a write that never returns holds the device lock: a second hook
/// waits for lock_timeout and then fails naming the holder's pid and what it runs. When the
/// holder is killed (SIGKILL: no cleanup of its own), the kernel drops the flock, the next hook
/// does not wait, and it finds the dead holder's state; cleanup restores the host.
#[test]
fn device_lock_live_holder_is_waited_for_then_named_dead_holder_is_recovered() {
    let host = shared_nic_host("igc");
    let root = host.path();
    let before = snapshot(root);
    let unbind = root.join("sys/bus/pci/drivers/igc/unbind");
    std::fs::remove_file(&unbind).unwrap();
    nix_mkfifo(&unbind);
    write_config(
        root,
        "[timeouts]\nstep = \"60s\"\nphase_timeout = \"60s\"\nlock_timeout = \"1s\"\n",
    );
    let mut holder = cmd(root, &["100", "pre-start"]).spawn().unwrap();
    let lock = root.join(format!("run/pt-hook/lock/{NIC}.lock"));
    let want = format!("pid {} (pt-hook 100 pre-start)", holder.id());
    poll(Duration::from_secs(10), || {
        std::fs::read_to_string(&lock)
            .ok()
            .filter(|s| s.contains(&want))
    })
    .expect("the holder names itself in the lock file");

    // Live holder: waited for (lock_timeout 1 s), then refused naming it.
    let r = run(root, &["101", "pre-start"]);
    assert_eq!(r.code, 1, "{}", r.out);
    assert!(r.out.contains(&want), "{}", r.out);
    assert!(r.out.contains(NIC) && r.out.contains(".lock"), "{}", r.out);
    assert!(
        r.elapsed >= Duration::from_millis(950) && r.elapsed < Duration::from_secs(5),
        "{:?}",
        r.elapsed
    );
    assert!(holder.try_wait().unwrap().is_none(), "holder still alive");

    // Dead holder: the lock is free at once; its state (written ahead) names VM 100.
    kill9(&mut holder);
    assert!(lock.exists(), "the lock file stays; only the flock goes");
    assert!(state_file(root, 100).exists());
    let r = run(root, &["101", "pre-start"]);
    assert_eq!(r.code, 1, "{}", r.out);
    assert!(r.out.contains("in use by VM 100"), "{}", r.out);
    assert!(r.elapsed < Duration::from_millis(900), "{:?}", r.elapsed);

    // The kernel "recovers" (the write can complete again); cleanup restores the host. The
    // blocked write the holder left behind (a child process) completes into the FIFO.
    drain_fifo(&unbind);
    std::fs::remove_file(&unbind).unwrap();
    std::fs::write(&unbind, "").unwrap();
    let r = run(root, &["cleanup", "100"]);
    assert_eq!(r.code, 0, "{}", r.out);
    assert!(!state_file(root, 100).exists());
    assert_eq!(snapshot(root), before);
    let lockt = std::fs::read_to_string(&lock).unwrap();
    assert!(lockt.contains("cleanup 100"), "{lockt}");
}

fn nix_mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let r = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(r, 0, "mkfifo {}", p.display());
}

/// The phase deadline bounds a write that never returns: pre-start gives up at
/// phase_timeout (not the 60 s step budget), rolls back what it did and says so, exit 1, and
/// keeps the state because the write may still complete; cleanup finishes later.
#[test]
fn phase_deadline_bounds_a_write_that_never_returns() {
    let host = shared_nic_host("igc");
    let root = host.path();
    let before = snapshot(root);
    let unbind = root.join("sys/bus/pci/drivers/igc/unbind");
    std::fs::remove_file(&unbind).unwrap();
    nix_mkfifo(&unbind);
    write_config(root, "[timeouts]\nstep = \"60s\"\nphase_timeout = \"2s\"\n");
    let r = run(root, &["100", "pre-start"]);
    assert_eq!(r.code, 1, "{}", r.out);
    assert!(
        r.elapsed >= Duration::from_millis(1900) && r.elapsed < Duration::from_secs(4),
        "{:?}",
        r.elapsed
    );
    assert!(r.out.contains("ETIMEDOUT"), "{}", r.out);
    assert!(r.out.contains(&unbind.display().to_string()), "{}", r.out);
    // The undo ran, but the timed-out write may still land in the kernel: the state stays
    // (phase rollback-pending) and the message says to run cleanup.
    assert!(r.out.contains("rolled back"), "{}", r.out);
    assert!(r.out.contains("pt-hook cleanup 100"), "{}", r.out);
    assert_eq!(snapshot(root), before);
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state_file(root, 100)).unwrap()).unwrap();
    assert_eq!(st["phase"], "rollback-pending");
    drain_fifo(&unbind);
    std::fs::remove_file(&unbind).unwrap();
    std::fs::write(&unbind, "").unwrap();
    let r = run(root, &["cleanup"]);
    assert_eq!(r.code, 0, "{}", r.out);
    assert!(!state_file(root, 100).exists());
    assert_eq!(snapshot(root), before);
}

/// What a caller like Proxmox sees of a run: the exit, and when each output pipe reached EOF
/// (Proxmox waits for both). Gives up (None) at `limit`.
struct Bounded {
    code: Option<i32>,
    exited: Option<Duration>,
    eof: [Option<Duration>; 2],
    out: String,
}

fn run_watched(mut c: Command, limit: Duration) -> Bounded {
    use std::io::Read;
    let t = Instant::now();
    let mut child = c.spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let streams: [Box<dyn Read + Send>; 2] = [
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stderr.take().unwrap()),
    ];
    for (i, mut s) in streams.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = s.read_to_end(&mut v);
            let _ = tx.send((i, v, t.elapsed()));
        });
    }
    let status = poll(limit, || child.try_wait().unwrap());
    let exited = status.map(|_| t.elapsed());
    let mut eof = [None, None];
    let mut out = [Vec::new(), Vec::new()];
    for _ in 0..2 {
        match rx.recv_timeout(limit.saturating_sub(t.elapsed())) {
            Ok((i, v, at)) => {
                eof[i] = Some(at);
                out[i] = v;
            }
            Err(_) => break,
        }
    }
    if status.is_none() {
        kill9(&mut child);
    }
    Bounded {
        code: status.and_then(|s| s.code()),
        exited,
        eof,
        out: format!(
            "{}{}",
            String::from_utf8_lossy(&out[0]),
            String::from_utf8_lossy(&out[1])
        ),
    }
}

/// Lets whatever is blocked opening a FIFO for writing go on (the child pt-hook left behind).
fn drain_fifo(p: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)
    {
        std::thread::sleep(Duration::from_millis(100));
        drop(f);
    }
}

/// A reset whose sysfs write never returns (a FIFO without a reader as `reset`): pt-hook gives
/// up at the phase deadline, exits non-zero naming the device, the file and ETIMEDOUT, and
/// both of its output pipes reach EOF within phase_timeout + 1 s, although the blocked write
/// is still pending (in a child that holds none of pt-hook's pipes).
#[test]
fn a_reset_blocked_in_the_kernel_still_exits_and_closes_its_pipes() {
    let host = shared_nic_host("vfio-pci");
    let root = host.path();
    let reset = root.join(format!("sys/bus/pci/devices/{NIC}/reset"));
    std::fs::remove_file(&reset).unwrap();
    nix_mkfifo(&reset);
    write_config(
        root,
        "[timeouts]\nstep = \"60s\"\nflr_timeout = \"60s\"\nphase_timeout = \"1s\"\n",
    );
    let limit = Duration::from_secs(2);
    let r = run_watched(cmd(root, &["reset", NIC]), limit + Duration::from_secs(3));
    drain_fifo(&reset);
    let exited = r.exited.expect("pt-hook exited");
    assert!(exited < limit, "exited after {exited:?}: {}", r.out);
    assert!(
        matches!(r.code, Some(c) if c != 0),
        "{:?}: {}",
        r.code,
        r.out
    );
    for (i, e) in r.eof.iter().enumerate() {
        let e = e.unwrap_or_else(|| panic!("pipe {} never reached EOF: {}", i + 1, r.out));
        assert!(e < limit, "pipe {} reached EOF after {e:?}", i + 1);
    }
    assert!(r.out.contains(NIC), "{}", r.out);
    assert!(r.out.contains(&reset.display().to_string()), "{}", r.out);
    assert!(r.out.contains("ETIMEDOUT"), "{}", r.out);
}

/// The watchdog: a pre-start still running half a second after phase_timeout (here a user
/// hook allowed longer than the phase) is ended with one line naming the phase, exit 1, and
/// its pipes close.
#[test]
fn the_watchdog_ends_a_phase_that_outlives_its_deadline() {
    use std::os::unix::fs::PermissionsExt;
    let host = shared_nic_host("igc");
    let root = host.path();
    let dir = root.join("etc/pt-hook/hooks.d/pre-start");
    std::fs::create_dir_all(&dir).unwrap();
    let hook = dir.join("10-slow");
    std::fs::write(&hook, "#!/bin/sh\nexec sleep 4\n").unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    write_config(
        root,
        "[timeouts]\nphase_timeout = \"1s\"\nhook_timeout = \"20s\"\n",
    );
    let limit = Duration::from_millis(2500);
    let r = run_watched(cmd(root, &["100", "pre-start"]), Duration::from_secs(8));
    let exited = r.exited.expect("pt-hook exited");
    assert_eq!(r.code, Some(1), "{}", r.out);
    assert!(
        exited >= Duration::from_millis(1400) && exited < limit,
        "exited after {exited:?}: {}",
        r.out
    );
    for (i, e) in r.eof.iter().enumerate() {
        let e = e.unwrap_or_else(|| panic!("pipe {} never reached EOF: {}", i + 1, r.out));
        assert!(e < limit, "pipe {} reached EOF after {e:?}", i + 1);
    }
    assert!(
        r.out.contains("VM 100 pre-start: still running"),
        "{}",
        r.out
    );
}
