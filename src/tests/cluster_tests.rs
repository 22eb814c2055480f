//! The cluster-wide config on fake multi-node hosts: several simulated hosts whose etc/pve is
//! one shared directory (as pmxcfs gives every node the same tree), each with its own node
//! name and its own /etc/pt-hook. Precedence per key and per node, trust on pmxcfs and on a
//! plain directory, quorum loss, and the cached copy when /etc/pve cannot be read.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::engine::lifecycle;
use crate::host::sim::{Fault, FaultPoint, SimHost};
use crate::host::Host;
use crate::parse::cluster::{self, CacheAction, ClusterState};
use crate::parse::config::{self, Config, FileKind, Handoff};
use crate::tests::test_support::T;

const WWW_DATA: u32 = 33;

struct Cluster {
    shared: tempfile::TempDir,
    nodes: Vec<Arc<SimHost>>,
}

impl Cluster {
    /// `names` as simulated hosts (gpu_host), their etc/pve a link to one shared directory.
    fn new(names: &[&str]) -> Cluster {
        let shared = tempfile::tempdir().unwrap();
        std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let nodes = names
            .iter()
            .map(|n| {
                let sim = SimHost::gpu_host();
                sim.set_node_name(n);
                let etc = sim.root_dir().join("etc");
                std::fs::create_dir_all(&etc).unwrap();
                std::os::unix::fs::symlink(shared.path(), etc.join("pve")).unwrap();
                Arc::new(sim)
            })
            .collect();
        Cluster { shared, nodes }
    }

    fn pve(&self, rel: &str) -> PathBuf {
        self.shared.path().join(rel)
    }

    fn node(&self, i: usize) -> &SimHost {
        &self.nodes[i]
    }
}

/// Writes a file (parents 0755), mode `mode`, owner root and group `gid`.
fn put(p: &Path, text: &str, mode: u32, gid: u32) {
    let dir = p.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    std::os::unix::fs::chown(p, Some(0), Some(gid)).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Declares in the host's mountinfo what is mounted at its etc/pve: the line pmxcfs makes
/// (`/dev/fuse on /etc/pve type fuse (rw,nosuid,nodev,relatime,user_id=0,group_id=0,
/// default_permissions,allow_other)`), or another (`fstype source super-options`), or none.
fn mount_pve(h: &SimHost, mount: Option<(&str, &str, &str)>) {
    let mut text = String::from("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n");
    if let Some((fstype, source, opts)) = mount {
        text.push_str(&format!(
            "45 22 0:42 / {} rw,nosuid,nodev,relatime shared:25 - {fstype} {source} {opts}\n",
            h.display("etc/pve").replace(' ', "\\040")
        ));
    }
    put(&h.root_dir().join("proc/self/mountinfo"), &text, 0o444, 0);
}

const PMXCFS: Option<(&str, &str, &str)> = Some((
    "fuse",
    "/dev/fuse",
    "rw,user_id=0,group_id=0,default_permissions,allow_other",
));

fn local(h: &SimHost, rel: &str, text: &str) {
    put(&h.root_dir().join(rel), text, 0o644, 0);
}

fn load(h: &SimHost) -> crate::error::Result<Config> {
    config::load(h, None)
}

fn ok(h: &SimHost) -> Config {
    load(h).unwrap_or_else(|e| panic!("{e}"))
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Every level of the order, one key each: built-in < cluster file < cluster [node.THIS] <
/// local file < local [node.THIS]; tables merge per key, lists are replaced whole, another
/// node's section is ignored.
#[test]
fn precedence_per_key_and_per_node() {
    let c = Cluster::new(&["pve1", "pve2", "pve3"]);
    put(
        &c.pve("pt-hook/pt-hook.toml"),
        r#"
[timeouts]
step = "11s"
driver_bind = "6s"
flr_timeout = "7s"
lock_timeout = "12s"
[vm.100]
console_handoff = "off"
units = ["a.service"]
[node.pve2.timeouts]
driver_bind = "16s"
flr_timeout = "17s"
lock_timeout = "18s"
[node.pve2.vm.100]
reset_on_stop = false
[node.pve3.vm.100]
console_handoff = "on"
"#,
        0o640,
        WWW_DATA,
    );
    local(
        c.node(1),
        "etc/pt-hook/pt-hook.toml",
        r#"
[timeouts]
flr_timeout = "27s"
lock_timeout = "28s"
[vm.100]
units = ["b.service"]
[node.pve2.timeouts]
lock_timeout = "38s"
[node.pve1.timeouts]
lock_timeout = "99s"
"#,
    );

    let d = crate::parse::config::Timeouts::default();
    // pve1: the cluster file only (pve2's sections and pve2's local file are not its own).
    let p1 = ok(c.node(0));
    let t = &p1.timeouts;
    assert_eq!(
        (t.step, t.driver_bind, t.flr, t.lock, t.bus_reset),
        (secs(11), secs(6), secs(7), secs(12), d.bus_reset)
    );
    let v = p1.vm(100);
    assert_eq!(v.console_handoff, Handoff::Off);
    assert_eq!(v.units, ["a.service"]);
    assert_eq!(v.reset_on_stop, None);
    assert_eq!(p1.origin.node, "pve1");
    assert_eq!(p1.origin.cluster, ClusterState::Live { pmxcfs: false });

    // pve2: every level.
    let p2 = ok(c.node(1));
    let t = &p2.timeouts;
    assert_eq!(t.step, secs(11), "cluster file");
    assert_eq!(t.driver_bind, secs(16), "cluster [node.pve2]");
    assert_eq!(t.flr, secs(27), "local file over cluster [node.pve2]");
    assert_eq!(t.lock, secs(38), "local [node.pve2]");
    assert_eq!(t.bus_reset, d.bus_reset, "built-in");
    let v = p2.vm(100);
    assert_eq!(
        v.console_handoff,
        Handoff::Off,
        "per [vm.N] key: from the cluster"
    );
    assert_eq!(v.units, ["b.service"], "a list is replaced whole");
    assert_eq!(v.reset_on_stop, Some(false), "cluster [node.pve2.vm.100]");
    let kinds: Vec<(String, FileKind)> = p2
        .origin
        .files
        .iter()
        .map(|f| (f.path.clone(), f.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            (
                c.node(1).display("etc/pve/pt-hook/pt-hook.toml"),
                FileKind::Cluster
            ),
            (
                c.node(1).display("etc/pt-hook/pt-hook.toml"),
                FileKind::Local
            ),
        ]
    );

    // pve3: its own cluster section.
    let p3 = ok(c.node(2));
    assert_eq!(p3.vm(100).console_handoff, Handoff::On);
    assert_eq!(p3.timeouts.lock, secs(12));
}

/// Quirk profiles by name: built-in < cluster quirks.d < cluster [[quirk]] < cluster
/// [node.THIS] < local quirks.d < local [[quirk]] < local [node.THIS].
#[test]
fn quirks_by_name_across_levels() {
    let c = Cluster::new(&["pve1", "pve2"]);
    let q = |name: &str, method: &str| {
        format!("name = \"{name}\"\nvendor = \"144d\"\ndevices = [\"a808\"]\nreset_method = [\"{method}\"]\n")
    };
    put(
        &c.pve("pt-hook/quirks.d/10-site.toml"),
        &format!("[[quirk]]\n{}[[quirk]]\n{}", q("a", "flr"), q("b", "flr")),
        0o640,
        WWW_DATA,
    );
    put(
        &c.pve("pt-hook/pt-hook.toml"),
        &format!(
            "[[quirk]]\n{}[[quirk]]\n{}[[node.pve2.quirk]]\n{}",
            q("b", "bus"),
            q("c", "flr"),
            q("c", "bus")
        ),
        0o640,
        WWW_DATA,
    );
    local(
        c.node(1),
        "etc/pt-hook/quirks.d/10-local.toml",
        &format!("[[quirk]]\n{}", q("d", "flr")),
    );
    local(
        c.node(1),
        "etc/pt-hook/pt-hook.toml",
        &format!(
            "[[quirk]]\n{}[[quirk]]\n{}[[node.pve2.quirk]]\n{}",
            q("a", "bus"),
            q("d", "bus"),
            q("e", "bus")
        ),
    );
    let get = |h: &SimHost, name: &str| -> (String, String) {
        let cfg = ok(h);
        let all = crate::engine::quirks::load_all(h, &cfg).unwrap();
        let p = crate::engine::quirks::by_name(&all, name)
            .unwrap_or_else(|| panic!("no profile {name}"))
            .clone();
        (p.reset_method.join(" "), p.source)
    };
    let (n1, n2) = (c.node(0), c.node(1));
    let cluster_file = n2.display("etc/pve/pt-hook/pt-hook.toml");
    let local_file = n2.display("etc/pt-hook/pt-hook.toml");
    // pve1: the cluster's levels only.
    assert_eq!(get(n1, "a").0, "flr");
    assert_eq!(
        get(n1, "b").0,
        "bus",
        "cluster [[quirk]] over cluster quirks.d"
    );
    assert_eq!(get(n1, "c").0, "flr", "pve2's section is not pve1's");
    // pve2: every level.
    assert_eq!(get(n2, "a"), ("bus".into(), local_file.clone()));
    assert_eq!(get(n2, "b"), ("bus".into(), cluster_file.clone()));
    assert_eq!(
        get(n2, "c"),
        ("bus".into(), format!("{cluster_file} [node.pve2]"))
    );
    assert_eq!(get(n2, "d"), ("bus".into(), local_file.clone()));
    assert_eq!(
        get(n2, "e"),
        ("bus".into(), format!("{local_file} [node.pve2]"))
    );
}

/// Every node section is checked, whichever node reads the file: a typo for another node
/// fails here too, naming the file and the section.
#[test]
fn node_sections_are_checked_on_every_node() {
    let c = Cluster::new(&["pve1"]);
    let f = c.pve("pt-hook/pt-hook.toml");
    for (body, want) in [
        (
            "[node.pve9.timeouts]\nflr_timeout = \"soon\"\n",
            "[node.pve9]",
        ),
        ("[node.pve9.bogus]\nx = 1\n", "bogus"),
        ("[node.\"pve 9\".timeouts]\n", "not a node name"),
        (
            "[node.pve9.node.pve1.timeouts]\n",
            "cannot hold node sections",
        ),
    ] {
        put(&f, body, 0o640, WWW_DATA);
        let e = load(c.node(0)).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let m = e.to_string();
        assert!(
            m.contains("pt-hook.toml") && m.contains(want),
            "{body}: {m}"
        );
    }
}

/// A plain /etc/pve (no pmxcfs mounted: a test root, a node without it) gets the normal
/// rule: a group-writable file or directory is refused with the fix.
#[test]
fn plain_directory_refuses_group_writable_files() {
    let c = Cluster::new(&["pve1"]);
    let f = c.pve("pt-hook/pt-hook.toml");
    put(&f, "[timeouts]\nstep = \"3s\"\n", 0o664, 0);
    let m = load(c.node(0)).unwrap_err().to_string();
    assert!(
        m.contains(&c.node(0).display("etc/pve/pt-hook/pt-hook.toml"))
            && m.contains("writable by group")
            && m.contains("chmod go-w"),
        "{m}"
    );
    chmod(&f, 0o644);
    chmod(&c.pve("pt-hook"), 0o775);
    let m = load(c.node(0)).unwrap_err().to_string();
    assert!(m.contains("directory") && m.contains("pt-hook"), "{m}");
    chmod(&c.pve("pt-hook"), 0o755);
    assert_eq!(ok(c.node(0)).timeouts.step, secs(3));
}

/// pmxcfs's own shape (root, group www-data, files 0640, directories 0755) on the pmxcfs
/// mount is accepted; the same tree under another FUSE mount at /etc/pve is refused (its
/// daemon makes up owners and modes); on pmxcfs, an owner pmxcfs never reports is refused.
#[test]
fn pmxcfs_modes_are_trusted_only_on_the_pmxcfs_mount() {
    let c = Cluster::new(&["pve1"]);
    let h = c.node(0);
    put(
        &c.pve("pt-hook/pt-hook.toml"),
        "[timeouts]\nstep = \"3s\"\n",
        0o640,
        WWW_DATA,
    );
    put(
        &c.pve("pt-hook/quirks.d/a.toml"),
        "[[quirk]]\nname = \"x\"\nvendor = \"144d\"\ndevices = [\"a808\"]\n",
        0o640,
        WWW_DATA,
    );
    std::os::unix::fs::chown(c.pve("pt-hook"), Some(0), Some(WWW_DATA)).unwrap();
    mount_pve(h, PMXCFS);
    let cfg = ok(h);
    assert_eq!(cfg.timeouts.step, secs(3));
    assert_eq!(cfg.origin.cluster, ClusterState::Live { pmxcfs: true });
    assert!(cfg.origin.warnings.is_empty(), "{:?}", cfg.origin.warnings);

    for other in [
        ("fuse", "/dev/fuse", "rw,user_id=1000,group_id=1000"),
        (
            "fuse.sshfs",
            "root@pve2:/etc/pve",
            "rw,user_id=0,group_id=0",
        ),
        ("nfs4", "nas:/pve", "rw,vers=4.2"),
    ] {
        mount_pve(h, Some(other));
        let m = load(h).unwrap_err().to_string();
        assert!(
            m.contains("not pmxcfs") && m.contains(other.0) && m.contains("refusing"),
            "{other:?}: {m}"
        );
    }

    mount_pve(h, PMXCFS);
    std::os::unix::fs::chown(c.pve("pt-hook/quirks.d/a.toml"), Some(1000), None).unwrap();
    let m = load(h).unwrap_err().to_string();
    assert!(
        m.contains("a.toml") && m.contains("not what pmxcfs reports") && !m.contains("chmod"),
        "{m}"
    );
}

/// Quorum lost: pmxcfs turns /etc/pve read-only (files 0440, directories 0555). The config
/// still loads from it, and a pre-start in the simulator succeeds with the cluster's [vm.N]
/// options; the cache goes to /var/lib/pt-hook, never to /etc/pve.
#[test]
fn quorum_lost_read_only_pve_still_starts_vms() {
    let c = Cluster::new(&["pve1"]);
    put(
        &c.pve("pt-hook/pt-hook.toml"),
        "[vm.100]\nconsole_handoff = \"off\"\nreset_on_stop = false\n",
        0o440,
        WWW_DATA,
    );
    let t = T::build(
        SimHost::gpu_host(),
        crate::tests::test_support::GPU_HOST_VMS,
        crate::tests::test_support::timeouts(),
    );
    // The harness's host as node pve1 of the cluster above (its VM configs moved along).
    let etc_pve = t.sim.root_dir().join("etc/pve");
    let qs = c.pve("qemu-server");
    std::fs::rename(etc_pve.join("qemu-server"), &qs).unwrap();
    std::fs::remove_dir_all(&etc_pve).unwrap();
    std::os::unix::fs::symlink(c.shared.path(), &etc_pve).unwrap();
    t.sim.set_node_name("pve1");
    for f in std::fs::read_dir(&qs).unwrap() {
        chmod(&f.unwrap().path(), 0o440);
    }
    for d in [c.pve("pt-hook"), qs.clone(), c.shared.path().to_path_buf()] {
        chmod(&d, 0o555);
    }
    mount_pve(&t.sim, PMXCFS);
    let mut t = t;
    let mut cfg = load(&t.sim).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.origin.cluster, ClusterState::Live { pmxcfs: true });
    assert!(matches!(cfg.origin.cache, CacheAction::Save(_)));
    cluster::update_cache(&*t.sim, &cfg.origin.cache).unwrap();
    cfg.timeouts = crate::tests::test_support::timeouts();
    assert_eq!(cfg.vm(100).reset_on_stop, Some(false));
    t.cfg = cfg;
    lifecycle::pre_start(&t.ctx(), 100).unwrap_or_else(|e| panic!("{e}"));
    let s = t.sim.snapshot();
    for b in ["0000:02:00.0", "0000:04:00.0"] {
        assert_eq!(
            s.device(b).unwrap().driver.as_deref(),
            Some("vfio-pci"),
            "{b}"
        );
    }
    let (_, mode) = t
        .sim
        .stat_owner_mode(crate::host::paths::CLUSTER_CACHE)
        .unwrap();
    assert_eq!(mode & 0o777, 0o600);
    lifecycle::post_stop(&t.ctx(), 100, false).unwrap_or_else(|e| panic!("{e}"));
    // Writable again for the temp dir's removal.
    for d in [c.pve("pt-hook"), qs, c.shared.path().to_path_buf()] {
        chmod(&d, 0o755);
    }
}

/// The cached copy: written after a good read (root-only), used with a warning naming why
/// when pmxcfs is not mounted any more or a file cannot be read, dropped when the cluster
/// config is gone; without a cache the same cases warn and use the local config only.
#[test]
fn cached_copy_covers_pmxcfs_trouble() {
    let c = Cluster::new(&["pve1"]);
    let h = c.node(0);
    let f = c.pve("pt-hook/pt-hook.toml");
    put(&f, "[timeouts]\nstep = \"3s\"\n", 0o640, WWW_DATA);
    local(
        h,
        "etc/pt-hook/pt-hook.toml",
        "[timeouts]\nlock_timeout = \"4s\"\n",
    );
    mount_pve(h, PMXCFS);

    // No cache yet and the file unreadable: local config only, with a warning.
    h.inject(FaultPoint::read(
        "etc/pve/pt-hook/pt-hook.toml",
        Fault::Errno(libc::EIO),
    ));
    let cfg = ok(h);
    assert!(matches!(
        cfg.origin.cluster,
        ClusterState::Unavailable { .. }
    ));
    assert_eq!(cfg.timeouts.step, config::Timeouts::default().step);
    assert_eq!(cfg.timeouts.lock, secs(4));
    let w = cfg.origin.warnings.join("\n");
    assert!(w.contains("EIO") && w.contains("no cached copy"), "{w}");
    h.clear_faults();

    // A good read: saved once, then unchanged.
    let cfg = ok(h);
    let CacheAction::Save(saved) = &cfg.origin.cache else {
        panic!("{:?}", cfg.origin.cache)
    };
    assert!(saved.pmxcfs);
    cluster::update_cache(h, &cfg.origin.cache).unwrap();
    let (uid, mode) = h
        .stat_owner_mode(crate::host::paths::CLUSTER_CACHE)
        .unwrap();
    assert_eq!((uid, mode & 0o777), (0, 0o600));
    assert_eq!(ok(h).origin.cache, CacheAction::Keep);

    // Unreadable: the copy, with a warning naming the errno.
    h.inject(FaultPoint::read(
        "etc/pve/pt-hook/pt-hook.toml",
        Fault::Errno(libc::EIO),
    ));
    let cfg = ok(h);
    assert!(matches!(cfg.origin.cluster, ClusterState::Cached { .. }));
    assert_eq!((cfg.timeouts.step, cfg.timeouts.lock), (secs(3), secs(4)));
    assert_eq!(cfg.origin.files[0].kind, FileKind::Cached);
    let w = cfg.origin.warnings.join("\n");
    assert!(
        w.contains("EIO") && w.contains("using the copy read at"),
        "{w}"
    );
    h.clear_faults();

    // pmxcfs down: /etc/pve is an empty directory, not mounted; the cache came from pmxcfs.
    std::fs::rename(c.pve("pt-hook"), c.pve("pt-hook.away")).unwrap();
    mount_pve(h, None);
    let cfg = ok(h);
    assert_eq!(cfg.timeouts.step, secs(3));
    let w = cfg.origin.warnings.join("\n");
    assert!(w.contains("pmxcfs is not mounted"), "{w}");

    // pmxcfs back, the cluster config deleted: no config, no warning, the copy goes.
    mount_pve(h, PMXCFS);
    let cfg = ok(h);
    assert_eq!(cfg.origin.cluster, ClusterState::None);
    assert!(cfg.origin.warnings.is_empty(), "{:?}", cfg.origin.warnings);
    assert_eq!(cfg.timeouts.step, config::Timeouts::default().step);
    assert_eq!(cfg.origin.cache, CacheAction::Remove);
    cluster::update_cache(h, &cfg.origin.cache).unwrap();
    assert!(!h.exists(crate::host::paths::CLUSTER_CACHE));

    // A damaged cache is a warning and unused.
    std::fs::rename(c.pve("pt-hook.away"), c.pve("pt-hook")).unwrap();
    put(
        &h.root_dir().join(crate::host::paths::CLUSTER_CACHE),
        "{not json",
        0o600,
        0,
    );
    h.inject(FaultPoint::read(
        "etc/pve/pt-hook/pt-hook.toml",
        Fault::Errno(libc::EIO),
    ));
    let w = ok(h).origin.warnings.join("\n");
    assert!(w.contains("damaged") && w.contains("no cached copy"), "{w}");
    h.clear_faults();
    // So is one others can write.
    put(
        &h.root_dir().join(crate::host::paths::CLUSTER_CACHE),
        "{}",
        0o666,
        0,
    );
    let w = ok(h).origin.warnings.join("\n");
    assert!(
        w.contains("cluster-config.json") && w.contains("writable"),
        "{w}"
    );
}

/// A standalone node (pmxcfs mounted, no /etc/pve/pt-hook) and a host without Proxmox (no
/// /etc/pve): no cluster config and no warning.
#[test]
fn standalone_and_non_proxmox_hosts_do_not_warn() {
    let c = Cluster::new(&["pve1"]);
    mount_pve(c.node(0), PMXCFS);
    let cfg = ok(c.node(0));
    assert_eq!(cfg.origin.cluster, ClusterState::None);
    assert!(cfg.origin.warnings.is_empty());
    assert_eq!(cfg.origin.cache, CacheAction::Keep);
    let bare = SimHost::new();
    let cfg = ok(&bare);
    assert_eq!(cfg.origin.cluster, ClusterState::None);
    assert!(cfg.origin.warnings.is_empty() && cfg.origin.files.is_empty());
}

/// A read of /etc/pve that blocks (here a FIFO where pt-hook.toml should be: its open waits
/// for a writer, as a read from a hung pmxcfs waits for the daemon) ends at the deadline and
/// falls back to the cache, through the real host's bounded walk.
#[test]
fn blocking_read_falls_back_to_the_cache() {
    let root = tempfile::tempdir().unwrap();
    let h = crate::host::real::RealHost::new(root.path());
    let dir = root.path().join("etc/pve/pt-hook");
    std::fs::create_dir_all(&dir).unwrap();
    for d in ["etc", "etc/pve", "etc/pve/pt-hook"] {
        chmod(&root.path().join(d), 0o755);
    }
    chmod(root.path(), 0o755);
    put(
        &root.path().join("proc/self/mountinfo"),
        &format!(
            "45 22 0:42 / {} rw - fuse /dev/fuse rw,user_id=0,group_id=0,default_permissions,allow_other\n",
            h.display("etc/pve")
        ),
        0o444,
        0,
    );
    put(
        &dir.join("pt-hook.toml"),
        "[timeouts]\nstep = \"3s\"\n",
        0o640,
        WWW_DATA,
    );
    let cfg = config::load(&h, None).unwrap_or_else(|e| panic!("{e}"));
    cluster::update_cache(&h, &cfg.origin.cache).unwrap();
    std::fs::remove_file(dir.join("pt-hook.toml")).unwrap();
    let fifo = std::ffi::CString::new(dir.join("pt-hook.toml").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let cfg = config::load(&h, None).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(cfg.origin.cluster, ClusterState::Cached { .. }));
    assert_eq!(cfg.timeouts.step, secs(3));
    let w = cfg.origin.warnings.join("\n");
    assert!(w.contains("did not finish within 2s"), "{w}");
    // Let the walker blocked on the FIFO finish.
    use std::os::unix::fs::OpenOptionsExt;
    let _w = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(dir.join("pt-hook.toml"))
        .unwrap();
}

/// The README's example of a cluster file is one pt-hook accepts.
#[test]
fn readme_cluster_example_parses() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme
        .find("# /etc/pve/pt-hook/pt-hook.toml\n")
        .expect("the README has the cluster example");
    let body = &readme[start..];
    let body = &body[..body.find("```").unwrap()];
    let c = Cluster::new(&["pve3"]);
    put(&c.pve("pt-hook/pt-hook.toml"), body, 0o640, WWW_DATA);
    let cfg = ok(c.node(0));
    assert_eq!(cfg.vm(100).console_handoff, Handoff::Off);
    let all = crate::engine::quirks::load_all(c.node(0), &cfg).unwrap();
    assert!(crate::engine::quirks::by_name(&all, "pve3-card").is_some());
}
