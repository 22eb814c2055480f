//! Hostile or broken input, through the real binary against the example fake host: every case
//! exits 2 with a message naming what is wrong (file, line, why) and leaves every file of the
//! host tree as it was.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_pt-hook");

fn example_host() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakehost.sh"))
        .arg("example")
        .arg(dir.path().join("h"))
        .status()
        .unwrap();
    assert!(st.success());
    dir
}

/// Every file, symlink and directory below `root` with its content / target / mode.
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, p: &Path, m: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path.strip_prefix(base).unwrap().display().to_string();
            let md = std::fs::symlink_metadata(&path).unwrap();
            if md.file_type().is_symlink() {
                m.insert(
                    rel,
                    format!("-> {}", std::fs::read_link(&path).unwrap().display()),
                );
            } else if md.is_dir() {
                m.insert(rel, format!("dir {:o} {}", md.mode(), md.uid()));
                walk(base, &path, m);
            } else {
                let c = std::fs::read(&path).unwrap();
                m.insert(
                    rel,
                    format!(
                        "{:o} {} {}",
                        md.mode(),
                        md.uid(),
                        String::from_utf8_lossy(&c)
                    ),
                );
            }
        }
    }
    let mut m = BTreeMap::new();
    walk(root, root, &mut m);
    m
}

fn run(root: &Path, args: &[&str]) -> (i32, String) {
    let o = Command::new(BIN)
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("PT_HOOK_ROOT")
        .env("PT_HOOK_NODE", "pve1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Runs `args`, expects exit 2 with every `needles` in the output and the tree untouched
/// (apart from what `setup` changed before).
fn refused(root: &Path, args: &[&str], needles: &[&str]) {
    let before = tree(root);
    let (code, out) = run(root, args);
    assert_eq!(code, 2, "{args:?}: {out}");
    for n in needles {
        assert!(out.contains(n), "{args:?}: output lacks {n:?}: {out}");
    }
    assert!(
        out.len() < 2000,
        "{args:?}: output floods: {} bytes",
        out.len()
    );
    assert_eq!(tree(root), before, "{args:?} changed the host tree");
}

#[test]
fn path_like_and_malformed_bdfs_are_refused_exit_2() {
    let d = example_host();
    let root = &d.path().join("h");
    let long = "0".repeat(5000);
    let cases: Vec<&str> = vec![
        "../",
        "/",
        "0000:01:00.0/../..",
        "../../../etc/passwd",
        "",
        "ü",
        "0000:01:00.0\u{202e}",
        &long,
        "0000:01:00.0\n",
        "0000:01:00.0 ",
        "0000:01:00.8",
        "0000:01:00",
        "10000:01:00.0",
        "0000:01:00.0\0",
    ];
    let mut n = 0;
    for b in &cases {
        if b.contains('\0') {
            continue; // cannot be an argv string
        }
        refused(root, &["reset", b], &["invalid PCI address"]);
        refused(
            root,
            &["reset", "0000:02:00.0", b],
            &["invalid PCI address"],
        );
        refused(root, &["quirks", b], &["invalid PCI address"]);
        n += 3;
    }
    eprintln!("hostile BDFs: {n} cases refused with exit 2");
}

#[test]
fn non_numeric_vm_ids_are_refused_exit_2() {
    let d = example_host();
    let root = &d.path().join("h");
    for v in [
        "abc",
        "1e3",
        "100/../101",
        "../100",
        "99",
        "1234567890",
        "",
        "１００",
        "100 ",
        "0x64",
        "+100",
    ] {
        refused(root, &[v, "pre-start"], &["invalid VM id"]);
        refused(root, &[v, "post-stop"], &["invalid VM id"]);
        refused(root, &["plan", v], &["invalid VM id"]);
        refused(root, &["cleanup", v], &["invalid VM id"]);
    }
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::chown(p, Some(uid), None).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// pt-hook.toml and quirk files that someone else could have written are refused, naming the
/// file and why. Runs as root in CI, so the file can be given to nobody (uid 65534).
#[test]
fn untrusted_config_and_quirk_files_are_refused_naming_file_and_reason() {
    if !nix_is_root() {
        panic!("this test needs root (chown to another user)");
    }
    let d = example_host();
    let root = &d.path().join("h");
    let cfg = root.join("etc/pt-hook/pt-hook.toml");
    std::fs::create_dir_all(root.join("etc/pt-hook/quirks.d")).unwrap();
    std::fs::write(&cfg, "[timeouts]\nstep = \"5s\"\n").unwrap();
    let quirk = root.join("etc/pt-hook/quirks.d/local.toml");
    let cfg_s = cfg.display().to_string();
    let quirk_s = quirk.display().to_string();
    for (file, name) in [(&cfg, &cfg_s), (&quirk, &quirk_s)] {
        if file == &quirk {
            std::fs::remove_file(&cfg).unwrap();
            std::fs::write(&quirk, "").unwrap();
        }
        chmod(file, 0o644);
        chown(file, 65534);
        refused(root, &["plan", "100"], &[name, "owned by uid 65534"]);
        refused(root, &["100", "pre-start"], &[name, "owned by uid 65534"]);
        chown(file, 0);
        chmod(file, 0o664);
        refused(root, &["plan", "100"], &[name, "writable by group"]);
        chmod(file, 0o646);
        refused(root, &["100", "pre-start"], &[name, "writable by others"]);
        chmod(file, 0o644);
        let (code, out) = run(root, &["plan", "100"]);
        assert_eq!(code, 0, "{out}");
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn malformed_toml_names_file_and_line() {
    let d = example_host();
    let root = &d.path().join("h");
    let cfg = root.join("etc/pt-hook/pt-hook.toml");
    std::fs::create_dir_all(root.join("etc/pt-hook/quirks.d")).unwrap();
    std::fs::write(&cfg, "[timeouts]\nstep = \"5s\"\nflr_timeout = \n").unwrap();
    refused(
        root,
        &["100", "pre-start"],
        &[&format!("{}:3:", cfg.display())],
    );
    std::fs::write(&cfg, "[timeouts]\nstep = \"often\"\n").unwrap();
    refused(
        root,
        &["plan", "100"],
        &[&cfg.display().to_string(), "step"],
    );
    std::fs::write(&cfg, "[vm.100]\nunits = [\"../../bin/x\"]\n").unwrap();
    refused(root, &["plan", "100"], &["unit name"]);
    std::fs::remove_file(&cfg).unwrap();
    let q = root.join("etc/pt-hook/quirks.d/bad.toml");
    std::fs::write(&q, "[[quirk]]\nname = \"x\"\n\nmatch = [\n").unwrap();
    refused(root, &["plan", "100"], &[&format!("{}:", q.display())]);
}

#[test]
fn malformed_vm_config_and_mapping_lines_name_file_and_line() {
    let d = example_host();
    let root = &d.path().join("h");
    let conf = root.join("etc/pve/qemu-server/101.conf");
    let conf_s = conf.display().to_string();
    for (body, line, why) in [
        (
            "machine: q35\nmemory: 1\nhostpci0: 04:00.0,rombar=2\n",
            3,
            "rombar",
        ),
        (
            "machine: q35\nhostpci0: 04:00.0;../..\n",
            2,
            "invalid PCI address",
        ),
        ("machine: q35\nhostpci0: mapping=../x\n", 2, "mapping"),
        ("machine: q35\nhostpci0: zz:00.0\n", 2, "hostpci0"),
        ("machine: q35\n\nhostpci0: /dev/sda\n", 3, "hostpci0"),
    ] {
        std::fs::write(&conf, body).unwrap();
        refused(
            root,
            &["101", "pre-start"],
            &[&format!("{conf_s}:{line}:"), why],
        );
        refused(root, &["plan", "101"], &[&format!("{conf_s}:{line}:"), why]);
    }
    // pci.cfg: a map line Proxmox would skip; the error for the mapping shows file and line.
    let map = root.join("etc/pve/mapping/pci.cfg");
    std::fs::write(
        &map,
        "fastnvme\n\tmap id=144d:a808,node=pve1,path=0000:02:00.0/../..\n",
    )
    .unwrap();
    refused(
        root,
        &["100", "pre-start"],
        &[&format!("{}:2:", map.display()), "fastnvme"],
    );
}

#[test]
fn oversize_files_are_refused() {
    let d = example_host();
    let root = &d.path().join("h");
    let big = "#".repeat((1 << 20) + 1);
    let conf = root.join("etc/pve/qemu-server/101.conf");
    std::fs::write(&conf, &big).unwrap();
    refused(
        root,
        &["101", "pre-start"],
        &[&conf.display().to_string(), "larger than"],
    );
    let map = root.join("etc/pve/mapping/pci.cfg");
    std::fs::write(&map, &big).unwrap();
    refused(
        root,
        &["100", "pre-start"],
        &[&map.display().to_string(), "larger than"],
    );
    let cfg = root.join("etc/pt-hook/pt-hook.toml");
    std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
    std::fs::write(&cfg, &big).unwrap();
    refused(
        root,
        &["plan", "102"],
        &[&cfg.display().to_string(), "larger than"],
    );
}

/// pt-hook never builds a shell command: processes are spawned only in the host layer
/// (`run(prog, args)` and user hook files, argv, no shell), and no source file names a shell.
#[test]
fn no_shell_strings_in_the_source() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut spawns = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            // Test-only modules write shell scripts as fixtures (user hooks); they never run
            // in pt-hook itself.
            if p.to_string_lossy().ends_with("_tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let l = line.trim();
                // Inline test modules (fixtures) end the production code of a file.
                if l == "#[cfg(test)]"
                    && lines
                        .get(i + 1)
                        .is_some_and(|n| n.trim_start().starts_with("mod "))
                {
                    break;
                }
                if l.starts_with("//") {
                    continue;
                }
                for bad in [
                    "\"sh\"",
                    "\"-c\"",
                    "/bin/sh",
                    "\"bash\"",
                    "libc::system",
                    "popen(",
                ] {
                    assert!(!l.contains(bad), "{}:{}: {l}", p.display(), i + 1);
                }
                if l.contains("Command::new(") {
                    spawns.push(format!("{}:{}", p.display(), i + 1));
                }
            }
        }
    }
    // helper programs (modprobe, systemctl) and user hook files, both as argv
    assert!(!spawns.is_empty());
    assert!(
        spawns.iter().all(|s| s.contains("host/real.rs")),
        "process spawns outside the host layer: {spawns:?}"
    );
}

#[test]
fn unknown_hook_phases_are_logged_with_control_characters_escaped() {
    let d = example_host();
    let root = &d.path().join("h");
    let before = tree(root);
    let phase = "evil\nVM 100 post-stop: forged\r\u{1b}[2J\u{202e}";
    let (code, out) = run(root, &["100", phase]);
    assert_eq!(code, 0, "unknown phases are accepted: {out}");
    // Every line is pt-hook's own: no forged line, no terminal escape, no bidi override.
    assert!(
        !out.chars().any(|c| c != '\n' && c.is_control()) && !out.contains('\u{202e}'),
        "raw control characters in {out:?}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.iter().all(|l| l.starts_with("pt-hook: ")),
        "{lines:?}"
    );
    let escaped = r"evil\nVM 100 post-stop: forged\r\u{1b}[2J\u{202e}";
    assert!(
        lines.iter().any(|l| l
            .starts_with(&format!("pt-hook: VM 100 {escaped}: unknown phase \""))
            && l.contains(escaped)),
        "{lines:?}"
    );
    assert_eq!(tree(root), before, "an unknown phase changed the host tree");
}
