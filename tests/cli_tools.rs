//! The built binary on fake host trees: `install`, libvirt mode (explicit and as
//! /etc/libvirt/hooks/qemu), `--help` of every command, the Debian package and the example
//! hooks.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_pt-hook");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run_in(root: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = Command::new(BIN);
    c.arg("--root").arg(root).args(args);
    c.env_remove("PT_HOOK_ROOT").env("PT_HOOK_NODE", "pve1");
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    if let Some(s) = stdin {
        use std::io::Write;
        // pt-hook stops reading an oversized document: a broken pipe here is expected.
        let _ = child.stdin.take().unwrap().write_all(s.as_bytes());
    }
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A fake Proxmox node: storage.cfg and an installed binary.
fn pve_root() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    fs::create_dir_all(r.join("etc/pve")).unwrap();
    fs::create_dir_all(r.join("usr/sbin")).unwrap();
    fs::create_dir_all(r.join("var/lib/vz")).unwrap();
    fs::create_dir_all(r.join("mnt/pve/nas")).unwrap();
    fs::write(
        r.join("etc/pve/storage.cfg"),
        "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup,snippets\n\n\
         lvmthin: local-lvm\n\tthinpool data\n\tvgname pve\n\tcontent rootdir,images\n\n\
         dir: isos\n\tpath /srv/iso\n\tcontent iso\n\n\
         nfs: nas\n\texport /pve\n\tserver 10.0.0.2\n\tpath /mnt/pve/nas\n\tcontent snippets\n\tshared 1\n",
    )
    .unwrap();
    fs::copy(BIN, r.join("usr/sbin/pt-hook")).unwrap();
    fs::set_permissions(
        r.join("usr/sbin/pt-hook"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    t
}

/// Every path under `dir` with its kind and content/target: a tree fingerprint.
fn tree(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            if m.file_type().is_symlink() {
                v.push(format!("{rel} -> {}", fs::read_link(&p).unwrap().display()));
            } else if m.is_dir() {
                v.push(format!("{rel}/"));
                stack.push(p);
            } else {
                v.push(format!(
                    "{rel} {:?} {:o}",
                    fs::read(&p).unwrap(),
                    m.permissions().mode()
                ));
            }
        }
    }
    v.sort();
    v
}

#[test]
fn install_links_the_snippet_idempotently_and_prints_qm_set() {
    let t = pve_root();
    let r = t.path();
    let before = tree(r);
    let o = run_in(r, &["--dry-run", "install"], None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("dry-run: link"), "{}", text(&o));
    assert_eq!(tree(r), before, "dry-run changed the tree");

    let o = run_in(r, &["install", "--vmid", "100"], None);
    assert!(o.status.success(), "{}", text(&o));
    let link = r.join("var/lib/vz/snippets/pt-hook");
    assert_eq!(
        fs::read_link(&link).unwrap(),
        Path::new("/usr/sbin/pt-hook")
    );
    assert!(
        text(&o).contains("qm set 100 --hookscript local:snippets/pt-hook"),
        "{}",
        text(&o)
    );
    let o = run_in(r, &["install"], None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("already installed"), "{}", text(&o));

    // A shared storage: linked, with a warning about the other nodes.
    let o = run_in(r, &["install", "--storage", "nas"], None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("shared"), "{}", text(&o));
    assert!(text(&o).contains("--hookscript nas:snippets/pt-hook"));
}

#[test]
fn install_refuses_foreign_files_and_unusable_storages() {
    let t = pve_root();
    let r = t.path();
    let snip = r.join("var/lib/vz/snippets");
    fs::create_dir_all(&snip).unwrap();
    // A copy (regular file) is left alone.
    fs::write(snip.join("pt-hook"), "a copy").unwrap();
    let o = run_in(r, &["install"], None);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("refusing to overwrite"), "{}", text(&o));
    assert_eq!(fs::read(snip.join("pt-hook")).unwrap(), b"a copy");
    // A link somewhere else too.
    fs::remove_file(snip.join("pt-hook")).unwrap();
    std::os::unix::fs::symlink("/usr/local/sbin/pt-hook", snip.join("pt-hook")).unwrap();
    let o = run_in(r, &["install"], None);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("/usr/local/sbin/pt-hook"), "{}", text(&o));
    assert_eq!(
        fs::read_link(snip.join("pt-hook")).unwrap(),
        Path::new("/usr/local/sbin/pt-hook")
    );
    for (args, want) in [
        (
            vec!["install", "--storage", "isos"],
            "does not allow snippets",
        ),
        (
            vec!["install", "--storage", "local-lvm"],
            "has no directory",
        ),
        (
            vec!["install", "--storage", "nope"],
            "storages with snippets: local, nas",
        ),
        (vec!["install", "--storage", "../x"], "invalid storage id"),
        (
            vec!["install", "--binary", "/usr/bin/none"],
            "install the binary first",
        ),
        (vec!["install", "--binary", "relative"], "absolute path"),
        (vec!["install", "--vmid", "12"], "VM ids start at 100"),
    ] {
        let o = run_in(r, &args, None);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(want), "{args:?}: {}", text(&o));
    }
    // A binary others can write is not linked into a root hook.
    fs::set_permissions(
        r.join("usr/sbin/pt-hook"),
        fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let o = run_in(r, &["install", "--libvirt"], None);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("writable by others"), "{}", text(&o));
    // No storage.cfg: not a Proxmox node.
    fs::set_permissions(
        r.join("usr/sbin/pt-hook"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    fs::remove_file(r.join("etc/pve/storage.cfg")).unwrap();
    let o = run_in(r, &["install"], None);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("is this a Proxmox VE node"),
        "{}",
        text(&o)
    );
    // libvirt: a link in qemu.d.
    let o = run_in(r, &["install", "--libvirt"], None);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        fs::read_link(r.join("etc/libvirt/hooks/qemu.d/pt-hook")).unwrap(),
        Path::new("/usr/sbin/pt-hook")
    );
}

const DOMAIN_XML: &str = "<domain type='kvm'>\n  <name>win11</name>\n  <uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>\n  <devices>\n    <hostdev mode='subsystem' type='pci' managed='yes'>\n      <source>\n        <address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>\n      </source>\n    </hostdev>\n  </devices>\n</domain>\n";

fn example_host() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(repo().join("contrib/example-host/."))
        .arg(t.path())
        .status()
        .unwrap();
    assert!(st.success());
    t
}

#[test]
fn libvirt_dry_run_resolves_the_hostdev_and_changes_nothing() {
    let t = example_host();
    let r = t.path();
    let before = tree(r);
    let o = run_in(
        r,
        &["--dry-run", "libvirt", "win11", "prepare", "begin", "-"],
        Some(DOMAIN_XML),
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    // The hostdev, the other function of its IOMMU group, and the steps.
    assert!(out.contains("1 PCI hostdev(s): 0000:01:00.0"), "{out}");
    assert!(
        out.contains("write \"vfio-pci\" to") && out.contains("0000:01:00.1/driver_override"),
        "{out}"
    );
    assert!(
        out.contains("libvirt-4dea22b3-1d52-d8f3-2516-782e98ab3fa0.json"),
        "{out}"
    );
    assert_eq!(tree(r), before, "dry-run changed the tree");
    // No step claims success for a write it did not make.
    assert!(!out.contains(": ok ("), "{out}");
    // Bad input: exit 2, nothing touched.
    for (args, xml, want) in [
        (
            vec!["libvirt", "other", "prepare", "begin", "-"],
            DOMAIN_XML.to_string(),
            "does not match",
        ),
        (
            vec!["libvirt", "win11", "prepare", "begin", "-"],
            "<domain>".to_string(),
            "malformed XML",
        ),
        (
            vec!["libvirt", "win11", "prepare", "begin", "-"],
            DOMAIN_XML.replace("bus='0x01'", "bus='0x3f'"),
            "0000:3f:00.0 does not exist",
        ),
        (
            vec!["libvirt", "win11", "prepare", "begin", "-"],
            " ".repeat(2 << 20),
            "larger than",
        ),
    ] {
        let o = run_in(r, &args, Some(&xml));
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(want), "{args:?}: {}", text(&o));
    }
    assert_eq!(tree(r), before);
}

#[test]
fn runs_as_libvirt_qemu_hook_by_its_name() {
    let t = example_host();
    let r = t.path();
    let hooks = r.join("etc/libvirt/hooks");
    fs::create_dir_all(hooks.join("qemu.d")).unwrap();
    std::os::unix::fs::symlink(BIN, hooks.join("qemu")).unwrap();
    std::os::unix::fs::symlink(BIN, hooks.join("qemu.d/pt-hook")).unwrap();
    let before = tree(&r.join("sys"));
    for exe in [hooks.join("qemu"), hooks.join("qemu.d/pt-hook")] {
        let run = |args: &[&str], xml: &str| {
            let mut c = Command::new(&exe);
            c.args(args)
                .env("PT_HOOK_ROOT", r)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut ch = c.spawn().unwrap();
            use std::io::Write;
            // A usage error exits before reading stdin: a broken pipe is fine.
            let _ = ch.stdin.take().unwrap().write_all(xml.as_bytes());
            ch.wait_with_output().unwrap()
        };
        // Operations pt-hook does not act on: accepted, stdout stays empty (libvirt reads
        // it as XML for migrate/restore).
        for op in [
            ["migrate", "begin"],
            ["started", "begin"],
            ["stopped", "end"],
        ] {
            let o = run(&["win11", op[0], op[1], "-"], DOMAIN_XML);
            assert!(o.status.success(), "{op:?}: {}", text(&o));
            assert!(o.stdout.is_empty(), "{op:?}: {}", text(&o));
        }
        // prepare with a wrong domain argument: the hook argument parsing is libvirt's.
        let o = run(&["other", "prepare", "begin", "-"], DOMAIN_XML);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        // A domain name that looks like an option is a name.
        let o = run(&["--dry-run", "prepare", "begin", "-"], DOMAIN_XML);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(
            text(&o).contains("\"--dry-run\" does not match"),
            "{}",
            text(&o)
        );
        // Two arguments that look like a Proxmox hook call are still libvirt's (the fast
        // path for `pt-hook VMID PHASE` must not take them): a usage error, nothing touched.
        let o = run(&["102", "pre-start"], DOMAIN_XML);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("<SUB_OPERATION>"), "{}", text(&o));
        // release without state: nothing to restore.
        let o = run(&["win11", "release", "end", "-"], DOMAIN_XML);
        assert!(o.status.success(), "{}", text(&o));
    }
    assert_eq!(tree(&r.join("sys")), before);
}

/// The example host after "a card was added": VM 100's hostpci0 address held an Intel NIC
/// at its last start and now holds the RTX 4070.
fn drifted_host() -> tempfile::TempDir {
    let t = example_host();
    let dir = t.path().join("var/lib/pt-hook/identity");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("vm-100.json"),
        r#"{"version":1,"vmid":100,"recorded":1736939109,"functions":[
 {"origin":"hostpci0","bdf":"0000:01:00.0","id":"8086:15f3","subsystem":"8086:0000","class":"020000"},
 {"origin":"hostpci0","bdf":"0000:01:00.1","id":"10de:22bc","subsystem":"10de:0000","class":"040300"}]}"#,
    )
    .unwrap();
    t
}

#[test]
fn plan_shows_address_drift_and_accept_takes_the_new_device() {
    let t = drifted_host();
    let r = t.path();
    let refusal = "hostpci0 0000:01:00.0 was 8086:15f3 Ethernet controller at VM 100's last start, now it is 10de:2786 VGA compatible controller: PCI addresses moved; fix hostpci0 in ";
    let before = tree(r);
    let o = run_in(r, &["plan", "100"], None);
    let out = text(&o);
    // plan exits as pre-start would: 1, with the same refusal.
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("address drift: pre-start refuses (exit 1):"),
        "{out}"
    );
    assert!(out.contains(refusal), "{out}");
    assert!(
        out.contains("etc/pve/qemu-server/100.conf (or use a PCI mapping), or if you replaced the card on purpose run `pt-hook accept 100`"),
        "{out}"
    );
    let o = run_in(r, &["plan", "100", "--json"], None);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let drift = v["drift"].as_array().unwrap();
    assert_eq!(drift.len(), 1, "{v}");
    assert_eq!(drift[0]["bdf"], "0000:01:00.0");
    assert_eq!(drift[0]["was"]["id"], "8086:15f3");
    assert_eq!(drift[0]["now"]["id"], "10de:2786");
    assert_eq!(drift[0]["accept"], "pt-hook accept 100");
    // The hook refuses the start (exit 1) and touches nothing.
    let o = run_in(r, &["100", "pre-start"], None);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains(refusal), "{}", text(&o));
    // status marks the device and prints the line; --json has the field.
    let o = run_in(r, &["status"], None);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("0000:01:00.0") && l.contains("[DRIFT]")),
        "{out}"
    );
    assert!(out.contains(&format!("DRIFT: {refusal}")), "{out}");
    let o = run_in(r, &["status", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let dev = |b: &str| {
        v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["bdf"] == b)
            .unwrap()
            .clone()
    };
    assert!(dev("0000:01:00.0")["drift"][0]
        .as_str()
        .unwrap()
        .starts_with(refusal));
    assert_eq!(dev("0000:01:00.1")["drift"], serde_json::json!([]));
    // doctor fails the VM with the same words and the accept command as the fix.
    let o = run_in(r, &["doctor", "100", "--json"], None);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let c = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "vm.identity")
        .unwrap()
        .clone();
    assert_eq!(c["status"], "fail");
    assert!(c["message"].as_str().unwrap().starts_with(refusal), "{c}");
    assert!(
        c["fix"].as_str().unwrap().contains("pt-hook accept 100"),
        "{c}"
    );
    // Only the reset memory changed: it counts the refused pre-start as a failed phase.
    let health = fs::read_to_string(r.join("var/lib/pt-hook/health.json")).unwrap();
    assert!(
        health.contains("\"phase\": \"pre-start\"") && health.contains("\"last_ok\": false"),
        "{health}"
    );
    let not_health = |t: Vec<String>| -> Vec<String> {
        t.into_iter()
            .filter(|l| !l.starts_with("var/lib/pt-hook/health."))
            .collect()
    };
    assert_eq!(
        not_health(tree(r)),
        not_health(before),
        "plan, a refused start, status and doctor wrote something"
    );

    // accept --dry-run prints old -> new and writes nothing.
    let before = tree(r);
    let o = run_in(r, &["--dry-run", "accept", "100"], None);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("dry-run: would accept hostpci0 0000:01:00.0: 8086:15f3 Ethernet controller -> 10de:2786 VGA compatible controller"),
        "{out}"
    );
    assert_eq!(tree(r), before, "dry-run changed the tree");
    let o = run_in(r, &["accept", "100"], None);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("accepted hostpci0 0000:01:00.0: 8086:15f3 Ethernet controller -> 10de:2786 VGA compatible controller"),
        "{out}"
    );
    assert!(
        out.contains("var/lib/pt-hook/identity/vm-100.json"),
        "{out}"
    );
    let o = run_in(r, &["plan", "100"], None);
    assert!(!text(&o).contains("address drift"), "{}", text(&o));
    let o = run_in(r, &["plan", "100", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["drift"], serde_json::json!([]));
    let o = run_in(r, &["accept", "100"], None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("nothing to accept"), "{}", text(&o));

    // Nothing remembered: exit 0, says so. Bad input: exit 2.
    let after = tree(r);
    let o = run_in(r, &["accept", "101"], None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("no remembered PCI identity"),
        "{}",
        text(&o)
    );
    for args in [
        vec!["accept"],
        vec!["accept", "abc"],
        vec!["accept", "99"],
        vec!["accept", "--libvirt-uuid", "../../etc/passwd"],
        vec![
            "accept",
            "100",
            "--libvirt-uuid",
            "4dea22b3-1d52-d8f3-2516-782e98ab3fa0",
        ],
    ] {
        let o = run_in(r, &args, None);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
    }
    let o = run_in(
        r,
        &[
            "accept",
            "--libvirt-uuid",
            "4DEA22B3-1d52-d8f3-2516-782e98ab3fa0",
        ],
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("nothing to accept"), "{}", text(&o));
    assert_eq!(tree(r), after);
}

#[test]
fn every_command_answers_help() {
    let o = Command::new(BIN).arg("--help").output().unwrap();
    assert!(o.status.success());
    let main = String::from_utf8_lossy(&o.stdout).to_string();
    for cmd in [
        "plan", "cleanup", "reset", "status", "quirks", "doctor", "libvirt", "install", "accept",
    ] {
        assert!(main.contains(cmd), "--help lacks {cmd}");
        let o = Command::new(BIN).args([cmd, "--help"]).output().unwrap();
        assert!(o.status.success(), "{cmd} --help: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("Usage: pt-hook"),
            "{cmd}"
        );
    }
}

#[test]
fn deb_package_builds_offline_with_everything_in_it() {
    let out = tempfile::tempdir().unwrap();
    let o = Command::new("bash")
        .arg(repo().join("contrib/deb/build.sh"))
        .args(["--binary", BIN, "--out"])
        // The test binary is a debug build with debug info: xz would take most of a minute.
        .env("PT_HOOK_DEB_COMPRESS", "gzip")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let deb = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(
        deb.ends_with("_amd64.deb") && Path::new(&deb).exists(),
        "{deb}"
    );
    let info = Command::new("dpkg-deb")
        .args(["-I", &deb])
        .output()
        .unwrap();
    assert!(info.status.success(), "{}", text(&info));
    let info = String::from_utf8_lossy(&info.stdout).to_string();
    for want in [
        "Package: pt-hook",
        "Architecture: amd64",
        "postinst",
        "postrm",
        "conffiles",
    ] {
        assert!(info.contains(want), "dpkg-deb -I lacks {want}:\n{info}");
    }
    let list = Command::new("dpkg-deb")
        .args(["-c", &deb])
        .output()
        .unwrap();
    assert!(list.status.success());
    let list = String::from_utf8_lossy(&list.stdout).to_string();
    for want in [
        "./usr/sbin/pt-hook",
        "./lib/systemd/system/pt-hook-cleanup.service",
        "./usr/lib/tmpfiles.d/pt-hook.conf",
        "./usr/share/man/man8/pt-hook.8.gz",
        "./usr/share/man/man8/pt-hook-install.8.gz",
        "./usr/share/man/man8/pt-hook-libvirt.8.gz",
        "./usr/share/man/man8/pt-hook-doctor.8.gz",
        "./usr/share/bash-completion/completions/pt-hook",
        "./usr/share/zsh/vendor-completions/_pt-hook",
        "./usr/share/fish/vendor_completions.d/pt-hook.fish",
        "./etc/pt-hook/pt-hook.toml",
        "./etc/pt-hook/hooks.d/pre-start/",
        "./usr/share/doc/pt-hook/examples/hooks/pre-start/10-log-devices",
        "./usr/share/man/man5/pt-hook.toml.5.gz",
        "./usr/share/doc/pt-hook/copyright",
        "./usr/share/doc/pt-hook/changelog.gz",
        "./usr/share/doc/pt-hook/README.md.gz",
        "./usr/share/lintian/overrides/pt-hook",
    ] {
        assert!(list.contains(want), "dpkg-deb -c lacks {want}:\n{list}");
    }
    // Owned by root, the binary executable.
    let bin_line = list
        .lines()
        .find(|l| l.ends_with("./usr/sbin/pt-hook"))
        .unwrap();
    assert!(bin_line.starts_with("-rwxr-xr-x root/root"), "{bin_line}");
    // The packaged binary runs.
    let x = out.path().join("x");
    let st = Command::new("dpkg-deb")
        .args(["-x", &deb])
        .arg(&x)
        .status()
        .unwrap();
    assert!(st.success());
    let v = Command::new(x.join("usr/sbin/pt-hook"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&v.stdout).starts_with("pt-hook "),
        "{}",
        text(&v)
    );
}

#[test]
fn example_hooks_are_valid_sh_and_executable() {
    let mut n = 0;
    for phase in ["pre-start", "post-stop"] {
        for e in fs::read_dir(repo().join("hooks").join(phase)).unwrap() {
            let p = e.unwrap().path();
            let m = fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(m & 0o777, 0o755, "{}", p.display());
            let o = Command::new("sh").arg("-n").arg(&p).output().unwrap();
            assert!(o.status.success(), "{}: {}", p.display(), text(&o));
            n += 1;
        }
    }
    assert!(n >= 6);
}

#[test]
fn usage_errors_say_how_to_fix() {
    let t = example_host();
    let r = t.path();
    // Arguments swapped.
    let o = run_in(r, &["pre-start", "100"], None);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("try `pt-hook 100 pre-start`"),
        "{}",
        text(&o)
    );
    // --dry-run on a command that only reads.
    for cmd in [&["status"][..], &["plan", "102"], &["doctor"], &["quirks"]] {
        let mut args = vec!["--dry-run"];
        args.extend_from_slice(cmd);
        let o = run_in(r, &args, None);
        assert_eq!(o.status.code(), Some(2), "{cmd:?}: {}", text(&o));
        assert!(text(&o).contains("only reads"), "{}", text(&o));
    }
    // A mapping without an entry for this node names the nodes that have one.
    let o = Command::new(BIN)
        .args(["--root"])
        .arg(r)
        .args(["plan", "100"])
        .env("PT_HOOK_NODE", "elsewhere")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let e = text(&o);
    assert!(e.contains("no entry for node elsewhere"), "{e}");
    assert!(e.contains("entries for pve1"), "{e}");
    assert!(e.contains("PT_HOOK_NODE="), "{e}");
}

/// Every path under `dir` (links as their target, files with their content and mode),
/// without the `.keep` files git needs for empty directories.
fn snapshot(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            if rel.ends_with(".keep") {
                continue;
            }
            if m.file_type().is_symlink() {
                out.push(format!("{rel} -> {}", fs::read_link(&p).unwrap().display()));
            } else if m.is_dir() {
                out.push(format!("{rel}/"));
                stack.push(p);
            } else {
                out.push(format!(
                    "{rel} {:o} {:?}",
                    m.permissions().mode() & 0o777,
                    fs::read(&p).unwrap()
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn example_host_is_what_fakehost_builds_and_install_works_on_it() {
    let t = tempfile::tempdir().unwrap();
    let gen = t.path().join("h");
    let st = Command::new("bash")
        .arg(repo().join("tests/fakehost.sh"))
        .arg("example")
        .arg(&gen)
        .status()
        .unwrap();
    assert!(st.success());
    let (want, have) = (
        snapshot(&gen),
        snapshot(&repo().join("contrib/example-host")),
    );
    let missing: Vec<_> = want.iter().filter(|l| !have.contains(l)).collect();
    let extra: Vec<_> = have.iter().filter(|l| !want.contains(l)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "contrib/example-host differs from `bash tests/fakehost.sh example DIR` \
         (regenerate it and add .keep files to empty directories):\n\
         missing: {missing:?}\nextra: {extra:?}"
    );
    let h = example_host();
    let o = run_in(h.path(), &["install"], None);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        fs::read_link(h.path().join("var/lib/vz/snippets/pt-hook")).unwrap(),
        Path::new("/usr/sbin/pt-hook")
    );
    assert!(text(&o).contains("qm set <VMID> --hookscript local:snippets/pt-hook"));
}
