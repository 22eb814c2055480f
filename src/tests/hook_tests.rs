//! Behaviour tests on the simulated kernel for libvirt mode and user hooks (hooks.d).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cmd::libvirt::{self, LibvirtArgs};
use crate::engine::state::{self, Domain, VmKey};
use crate::error::Result;
use crate::host::sim::{Fault, FaultPoint, OpKind, SimHost};
use crate::host::Host;
use crate::parse::config::Config;
use crate::tests::test_support::{self, T};

const NVME: &str = "0000:02:00.0";
const NVME2: &str = "0000:03:00.0";
const UUID: &str = "4dea22b3-1d52-d8f3-2516-782e98ab3fa0";

fn xml(name: &str, addrs: &[(u8, u8, u8)]) -> String {
    let mut devs = String::new();
    for (bus, slot, func) in addrs {
        devs.push_str(&format!(
            "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='{bus:#04x}' slot='{slot:#04x}' function='{func:#x}'/></source></hostdev>"
        ));
    }
    format!("<domain type='kvm'><name>{name}</name><uuid>{UUID}</uuid><devices>{devs}</devices></domain>")
}

impl T {
    /// gpu_host with only VM 100 (02:00.0, no machine line).
    fn vm100() -> T {
        T::build(
            SimHost::gpu_host(),
            &[(100, "hostpci0: 02:00.0\n")],
            test_support::timeouts(),
        )
    }
    fn root(&self) -> PathBuf {
        self.sim.root_dir().to_path_buf()
    }
    fn libvirt(&self, dry_run: bool, name: &str, op: &str, sub: &str, xml: &str) -> Result<()> {
        let cfg = self.cfg.clone();
        let load = move |_: &dyn Host| -> Result<Config> { Ok(cfg.clone()) };
        let args = LibvirtArgs {
            domain: name.into(),
            operation: op.into(),
            sub_operation: sub.into(),
            extra: Some("-".into()),
        };
        libvirt::command(
            Arc::clone(&self.sim) as Arc<dyn Host>,
            &load,
            dry_run,
            &self.log,
            &args,
            &mut xml.as_bytes(),
            false,
        )
    }
    fn libvirt_state(&self) -> bool {
        self.sim.exists(&format!("run/pt-hook/libvirt-{UUID}.json"))
    }
    /// A hook script in hooks.d/<phase>/<name> that appends a line to <root>/hooks.log.
    fn hook(&self, phase: &str, name: &str, body: &str) -> PathBuf {
        let dir = self.root().join("etc/pt-hook/hooks.d").join(phase);
        std::fs::create_dir_all(&dir).unwrap();
        for d in ["etc/pt-hook", "etc/pt-hook/hooks.d"] {
            std::fs::set_permissions(self.root().join(d), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        let log = self.root().join("hooks.log");
        let p = dir.join(name);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\necho \"{name} $1 $2 [$PT_HOOK_VMID|$PT_HOOK_PHASE|$PT_HOOK_DEVICES|$PT_HOOK_KIND|$PT_HOOK_LIBVIRT_UUID|${{PT_HOOK_ROLLBACK:-0}}]\" >> {}\n{body}\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }
    fn hook_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.root().join("hooks.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

#[test]
fn libvirt_prepare_and_release_cycle_keyed_by_uuid() {
    let t = T::vm100();
    let before = t.devices();
    let x = xml("web 01", &[(2, 0, 0)]);
    t.libvirt(false, "web 01", "prepare", "begin", &x).unwrap();
    assert_eq!(t.sim.driver_of(NVME).as_deref(), Some("vfio-pci"));
    assert!(t.libvirt_state());
    // The state names the domain; its file name is the UUID only.
    let key = VmKey::Libvirt(Domain {
        uuid: UUID.into(),
        name: "web 01".into(),
    });
    let st = state::load(t.sim.as_ref(), &key).unwrap().unwrap();
    assert_eq!(st.domain.as_ref().unwrap().name, "web 01");
    assert_eq!(st.vmid, 0);
    // A Proxmox VM with the same device is refused, naming the domain.
    let e = crate::engine::phase::pve(&t.ctx(), 100, "pre-start").unwrap_err();
    assert!(
        e.to_string()
            .contains("in use by libvirt domain \"web 01\""),
        "{e}"
    );
    // Operations pt-hook does not act on change nothing.
    t.libvirt(false, "web 01", "started", "begin", &x).unwrap();
    t.libvirt(false, "web 01", "stopped", "end", &x).unwrap();
    assert_eq!(t.sim.driver_of(NVME).as_deref(), Some("vfio-pci"));
    t.libvirt(false, "web 01", "release", "end", &x).unwrap();
    assert_eq!(t.devices(), before);
    assert!(!t.libvirt_state());
    // A second release is a no-op.
    t.libvirt(false, "web 01", "release", "end", &x).unwrap();
}

#[test]
fn libvirt_dry_run_resolves_and_changes_nothing() {
    let t = T::vm100();
    let before = t.devices();
    let x = xml("vm", &[(2, 0, 0), (3, 0, 0)]);
    t.libvirt(true, "vm", "prepare", "begin", &x).unwrap();
    assert_eq!(t.devices(), before);
    assert!(!t.libvirt_state());
    assert!(
        !t.sim.ops().iter().any(|o| o.kind == OpKind::Write),
        "{:?}",
        t.sim.ops()
    );
}

#[test]
fn libvirt_bad_input_touches_nothing() {
    let t = T::vm100();
    let before = t.devices();
    // A function that does not exist.
    let e = t
        .libvirt(false, "vm", "prepare", "begin", &xml("vm", &[(9, 0, 0)]))
        .unwrap_err();
    assert_eq!(e.exit_code(), 2, "{e}");
    assert!(e.to_string().contains("0000:09:00.0"), "{e}");
    // Name mismatch, malformed XML, empty stdin.
    for (name, x) in [
        ("other", xml("vm", &[(2, 0, 0)])),
        ("vm", "<domain><name>vm</name>".to_string()),
        ("vm", String::new()),
    ] {
        let e = t.libvirt(false, name, "prepare", "begin", &x).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
    }
    assert_eq!(t.devices(), before);
    assert!(t.sim.ops().iter().all(|o| o.kind != OpKind::Write));
}

#[test]
fn cleanup_restores_libvirt_state_unless_the_domain_runs() {
    let t = T::vm100();
    let before = t.devices();
    let x = xml("vm", &[(2, 0, 0)]);
    t.libvirt(false, "vm", "prepare", "begin", &x).unwrap();
    // A QEMU process with -uuid UUID: the domain runs, cleanup leaves it alone.
    let p = t.root().join("proc/4242");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(
        p.join("cmdline"),
        format!("/usr/bin/qemu-system-x86_64\0-name\0guest=vm\0-uuid\0{UUID}\0"),
    )
    .unwrap();
    assert_eq!(
        crate::engine::state::domain_running(t.sim.as_ref(), UUID),
        Some(4242)
    );
    crate::engine::phase::cleanup(&t.ctx(), None).unwrap();
    assert!(t.libvirt_state());
    std::fs::remove_dir_all(&p).unwrap();
    crate::engine::phase::cleanup(&t.ctx(), None).unwrap();
    assert!(!t.libvirt_state());
    assert_eq!(t.devices(), before);
}

#[test]
fn user_hooks_run_in_order_with_args_and_env_around_the_device_steps() {
    let t = T::vm100();
    let before = t.devices();
    t.hook("pre-start", "20-second", "");
    t.hook("pre-start", "10-first", "");
    t.hook("post-stop", "50-after", "");
    t.hook("post-start", "10-started", "");
    // Skipped: hidden, backup, packaging leftovers, not executable, directory.
    t.hook("pre-start", ".hidden", "exit 1");
    t.hook("pre-start", "30-x.dpkg-old", "exit 1");
    t.hook("pre-start", "40-y~", "exit 1");
    let p = t.hook("pre-start", "50-noexec", "exit 1");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::create_dir_all(t.root().join("etc/pt-hook/hooks.d/pre-start/60-dir")).unwrap();
    let ctx = t.ctx();
    crate::engine::phase::pve(&ctx, 100, "pre-start").unwrap();
    assert_eq!(t.sim.driver_of(NVME).as_deref(), Some("vfio-pci"));
    crate::engine::phase::pve(&ctx, 100, "post-start").unwrap();
    crate::engine::phase::pve(&ctx, 100, "pre-stop").unwrap();
    crate::engine::phase::pve(&ctx, 100, "post-stop").unwrap();
    assert_eq!(t.devices(), before);
    assert_eq!(
        t.hook_log(),
        [
            "10-first 100 pre-start [100|pre-start|0000:02:00.0|pve||0]",
            "20-second 100 pre-start [100|pre-start|0000:02:00.0|pve||0]",
            "10-started 100 post-start [100|post-start|0000:02:00.0|pve||0]",
            "50-after 100 post-stop [100|post-stop|0000:02:00.0|pve||0]",
        ]
    );
    // The first pre-start hook ran before any device write, the post-stop hook after the
    // last one.
    let ops = t.sim.ops();
    let first_hook = ops
        .iter()
        .position(|o| o.path.ends_with("10-first"))
        .unwrap();
    let first_write = ops.iter().position(|o| o.kind == OpKind::Write).unwrap();
    assert!(first_hook < first_write);
    let after = ops
        .iter()
        .position(|o| o.path.ends_with("50-after"))
        .unwrap();
    let last_write = ops.iter().rposition(|o| o.kind == OpKind::Write).unwrap();
    assert!(after > last_write);
}

#[test]
fn libvirt_hooks_get_the_domain_name_and_uuid() {
    let t = T::vm100();
    t.hook("pre-start", "10-a", "");
    t.hook("post-stop", "10-b", "");
    let x = xml("db", &[(3, 0, 0)]);
    t.libvirt(false, "db", "prepare", "begin", &x).unwrap();
    t.libvirt(false, "db", "release", "end", &x).unwrap();
    assert_eq!(
        t.hook_log(),
        [
            format!("10-a db pre-start [db|pre-start|{NVME2}|libvirt|{UUID}|0]"),
            format!("10-b db post-stop [db|post-stop|{NVME2}|libvirt|{UUID}|0]"),
        ]
    );
}

#[test]
fn failing_pre_start_hook_aborts_before_any_device_change_and_undoes_earlier_hooks() {
    let t = T::vm100();
    let before = t.devices();
    t.hook("pre-start", "10-ok", "");
    t.hook(
        "pre-start",
        "20-fails",
        "echo 'no hugepages left' >&2; exit 3",
    );
    t.hook("pre-start", "30-never", "");
    t.hook("post-stop", "10-undo", "");
    let e = crate::engine::phase::pve(&t.ctx(), 100, "pre-start").unwrap_err();
    assert_eq!(e.exit_code(), 1);
    let m = e.to_string();
    assert!(
        m.contains("20-fails") && m.contains("exit code 3") && m.contains("no hugepages left"),
        "{m}"
    );
    assert_eq!(t.devices(), before);
    assert!(!t.sim.exists("run/pt-hook/vm-100.json"));
    assert!(t.sim.ops().iter().all(|o| o.kind != OpKind::Write));
    assert_eq!(
        t.hook_log(),
        [
            "10-ok 100 pre-start [100|pre-start|0000:02:00.0|pve||0]",
            "20-fails 100 pre-start [100|pre-start|0000:02:00.0|pve||0]",
            "10-undo 100 post-stop [100|post-stop|0000:02:00.0|pve||1]",
        ]
    );
}

#[test]
fn failing_device_step_after_hooks_rolls_back_devices_and_runs_post_stop_hooks() {
    let t = T::vm100();
    let before = t.devices();
    t.hook("pre-start", "10-ok", "");
    t.hook("post-stop", "10-undo", "");
    t.sim
        .inject(FaultPoint::write_suffix("/driver_override", Fault::Errno(libc::EIO)).nth(1));
    let e = crate::engine::phase::pve(&t.ctx(), 100, "pre-start").unwrap_err();
    assert_eq!(e.exit_code(), 1, "{e}");
    assert_eq!(t.devices(), before);
    assert!(!t.sim.exists("run/pt-hook/vm-100.json"));
    assert_eq!(t.hook_log().len(), 2);
    assert!(t.hook_log()[1].ends_with("|1]"), "{:?}", t.hook_log());
}

#[test]
fn untrusted_or_badly_named_hooks_are_refused_naming_the_file() {
    let t = T::vm100();
    let before = t.devices();
    let p = t.hook("pre-start", "10-open", "");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o757)).unwrap();
    let e = crate::engine::phase::pve(&t.ctx(), 100, "pre-start").unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(
        e.to_string().contains("10-open") && e.to_string().contains("writable by others"),
        "{e}"
    );
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A group-writable post-stop directory stops the start too.
    let d = t.root().join("etc/pt-hook/hooks.d/post-stop");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o775)).unwrap();
    let e = crate::engine::phase::pve(&t.ctx(), 100, "pre-start").unwrap_err();
    assert!(
        e.to_string().contains("post-stop") && e.to_string().contains("writable by group"),
        "{e}"
    );
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(d.join("bad name"), "#!/bin/sh\n").unwrap();
    let e = crate::engine::phase::pve(&t.ctx(), 100, "pre-start").unwrap_err();
    assert!(e.to_string().contains("bad name"), "{e}");
    assert!(t.hook_log().is_empty());
    assert_eq!(t.devices(), before);
}

#[test]
fn hanging_hook_is_killed_with_its_process_group_at_the_deadline() {
    let mut t = T::vm100();
    t.cfg.timeouts.hook = Duration::from_millis(600);
    let pidfile = t.root().join("bg.pid");
    t.hook(
        "pre-start",
        "10-hangs",
        &format!("sleep 60 & echo $! > {}\nsleep 60", pidfile.display()),
    );
    let start = Instant::now();
    let e = crate::engine::phase::pve(&t.ctx(), 100, "pre-start").unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(e.to_string().contains("no exit after 600ms"), "{e}");
    assert_eq!(t.sim.driver_of(NVME).as_deref(), Some("nvme"));
    // The background child went with the group (gone, or a zombie waiting for init).
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    let dead = crate::host::poll_until(Duration::from_secs(3), || {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => Some(()),
            Ok(s) if s.contains(") Z ") => Some(()),
            Ok(_) => None,
        }
    });
    assert!(dead.is_some(), "background child {pid} still runs");
}

#[test]
fn cleanup_runs_the_post_stop_hooks_of_what_it_restores() {
    let t = T::vm100();
    let before = t.devices();
    t.hook("post-stop", "10-undo", "");
    crate::engine::phase::pve(&t.ctx(), 100, "pre-start").unwrap();
    crate::engine::phase::cleanup(&t.ctx(), None).unwrap();
    assert_eq!(t.devices(), before);
    assert_eq!(
        t.hook_log(),
        ["10-undo 100 post-stop [100|post-stop|0000:02:00.0|pve||0]"]
    );
    // Nothing left: a second cleanup runs no hook.
    crate::engine::phase::cleanup(&t.ctx(), None).unwrap();
    assert_eq!(t.hook_log().len(), 1);
}

#[test]
fn dry_run_lists_hooks_without_running_them() {
    let t = T::vm100();
    let before = t.devices();
    t.hook("pre-start", "10-a", "");
    crate::engine::phase::pve(&t.ctx_dry(true), 100, "pre-start").unwrap();
    assert!(t.hook_log().is_empty());
    assert_eq!(t.devices(), before);
    // Neither a device write nor a hook run.
    assert!(t.sim.ops().is_empty(), "{:?}", t.sim.ops());
}
