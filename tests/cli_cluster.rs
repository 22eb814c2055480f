//! The cluster-wide config through the real binary: three fake nodes (tests/fakehost.sh's
//! example host) whose etc/pve is one shared directory, node names from PT_HOOK_NODE.
//! `quirks`, `doctor` and the fallback to the cached copy when /etc/pve blocks.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pt-hook")
}

struct Nodes {
    _dir: tempfile::TempDir,
    shared: PathBuf,
    roots: Vec<(String, PathBuf)>,
}

fn nodes(names: &[&str]) -> Nodes {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("pve");
    let mut roots = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let root = dir.path().join(n);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakehost.sh");
        let st = Command::new("bash")
            .arg(&script)
            .arg("example")
            .arg(&root)
            .status()
            .unwrap();
        assert!(st.success(), "fakehost.sh failed");
        let pve = root.join("etc/pve");
        if i == 0 {
            std::fs::rename(&pve, &shared).unwrap();
        } else {
            std::fs::remove_dir_all(&pve).unwrap();
        }
        std::os::unix::fs::symlink(&shared, &pve).unwrap();
        roots.push((n.to_string(), root));
    }
    Nodes {
        _dir: dir,
        shared,
        roots,
    }
}

fn run(n: &Nodes, i: usize, args: &[&str]) -> Output {
    let (name, root) = &n.roots[i];
    Command::new(bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .env("PT_HOOK_NODE", name)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(o)))
}

fn put(p: &Path, body: &str, mode: u32) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn profile<'a>(v: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    v["quirks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == name)
}

const CLUSTER: &str = r#"
[[quirk]]
name = "site-nvme"
vendor = "144d"
devices = ["a808"]
reset_method = ["flr"]

[[node.pve2.quirk]]
name = "site-nvme"
vendor = "144d"
devices = ["a808"]
reset_method = ["bus"]
"#;

#[test]
fn nodes_share_the_cluster_file_and_keep_their_sections() {
    let n = nodes(&["pve1", "pve2", "pve3"]);
    put(&n.shared.join("pt-hook/pt-hook.toml"), CLUSTER, 0o640);
    // pve3 overrides the profile locally.
    put(
        &n.roots[2].1.join("etc/pt-hook/pt-hook.toml"),
        "[[quirk]]\nname = \"site-nvme\"\nvendor = \"144d\"\ndevices = [\"a808\"]\nreset_method = [\"bus\", \"flr\"]\n",
        0o644,
    );
    let want = [
        ("flr", "/etc/pve/pt-hook/pt-hook.toml"),
        ("bus", "/etc/pve/pt-hook/pt-hook.toml [node.pve2]"),
        ("bus flr", "/etc/pt-hook/pt-hook.toml"),
    ];
    for (i, (methods, source)) in want.iter().enumerate() {
        let o = run(&n, i, &["quirks", "--json"]);
        assert!(o.status.success(), "{}", text(&o));
        let v = json(&o);
        let p = profile(&v, "site-nvme").unwrap_or_else(|| panic!("{v}"));
        let got: Vec<&str> = p["reset_method"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        assert_eq!(got.join(" "), *methods, "node {i}");
        assert!(
            p["source"].as_str().unwrap().ends_with(source),
            "node {i}: {}",
            p["source"]
        );
    }
    // doctor names the files and their kinds.
    let v = json(&run(&n, 2, &["doctor", "--json"]));
    let files: Vec<(String, String)> = v["config"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files[0].0.ends_with("/etc/pve/pt-hook/pt-hook.toml") && files[0].1 == "cluster");
    assert!(files[1].0.ends_with("/etc/pt-hook/pt-hook.toml") && files[1].1 == "local");
    assert_eq!(v["config"]["node"], "pve3");
    assert_eq!(v["config"]["cluster"], "live");

    // A bad cluster file is a doctor finding (FAIL, exit 1) and a refusal elsewhere (exit 2).
    put(
        &n.shared.join("pt-hook/pt-hook.toml"),
        "[node.pve2.timeouts]\nflr_timeout = \"soon\"\n",
        0o640,
    );
    let o = run(&n, 0, &["doctor", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v = json(&o);
    let c = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "config.files")
        .unwrap();
    assert_eq!(c["status"], "fail");
    assert!(
        c["message"].as_str().unwrap().contains("[node.pve2]"),
        "{c}"
    );
    let o = run(&n, 0, &["plan", "101"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// A node whose pmxcfs blocks: after one good read (saved by a command that changes the
/// host, here `cleanup`), the config comes from the copy and every command says so.
#[test]
fn a_blocking_pve_falls_back_to_the_last_good_copy() {
    let n = nodes(&["pve1", "pve2"]);
    put(&n.shared.join("pt-hook/pt-hook.toml"), CLUSTER, 0o640);
    let root = n.roots[1].1.clone();
    put(
        &root.join("proc/self/mountinfo"),
        &format!(
            "44 22 0:40 / {} rw,nosuid,nodev,relatime shared:24 - fuse /dev/fuse rw,user_id=0,group_id=0,default_permissions,allow_other\n",
            root.join("etc/pve").display()
        ),
        0o444,
    );
    let o = run(&n, 1, &["cleanup"]);
    assert!(o.status.success(), "{}", text(&o));
    let cache = root.join("var/lib/pt-hook/cluster-config.json");
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // The mount is found for a relative --root too (mountinfo paths are absolute).
    let o = Command::new(bin())
        .current_dir(root.parent().unwrap())
        .args(["--root", "pve2", "doctor", "--json"])
        .env("PT_HOOK_NODE", "pve2")
        .output()
        .unwrap();
    let v = json(&o);
    let c = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "config.cluster")
        .unwrap();
    assert!(
        c["message"].as_str().unwrap().contains("read from pmxcfs"),
        "{c}"
    );
    // `plan` and `status` read only: no copy for pve1.
    assert!(run(&n, 0, &["quirks"]).status.success());
    assert!(!n.roots[0]
        .1
        .join("var/lib/pt-hook/cluster-config.json")
        .exists());

    // pmxcfs hangs: a FIFO where the file was blocks the walk the way a hung daemon does.
    let f = n.shared.join("pt-hook/pt-hook.toml");
    std::fs::remove_file(&f).unwrap();
    let c = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let o = run(&n, 1, &["quirks", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        t.contains("did not finish within 2s") && t.contains("using the copy read at"),
        "{t}"
    );
    let v = json(&o);
    assert_eq!(
        profile(&v, "site-nvme").unwrap()["reset_method"][0],
        "bus",
        "the copy has pve2's section"
    );
    let v = json(&run(&n, 1, &["doctor", "--json"]));
    assert_eq!(v["config"]["cluster"], "cached");
    assert_eq!(v["config"]["files"][0]["kind"], "cached");
    let c = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "config.cluster")
        .unwrap();
    assert_eq!(c["status"], "warn");
    // Release the walkers still blocked on the FIFO.
    use std::os::unix::fs::OpenOptionsExt;
    let w = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&f)
        .unwrap();
    drop(w);
}

#[test]
fn help_names_the_cluster_config() {
    let o = Command::new(bin()).arg("--help").output().unwrap();
    let t = text(&o);
    assert!(
        t.contains("/etc/pve/pt-hook/pt-hook.toml") && t.contains("[node.NAME]"),
        "{t}"
    );
}

/// Only a good read is kept: a cluster file whose profile is invalid fails the command that
/// would save it (exit 2, naming file and profile) and leaves no copy behind.
#[test]
fn a_bad_cluster_profile_is_refused_and_not_cached() {
    let n = nodes(&["pve1"]);
    put(
        &n.shared.join("pt-hook/pt-hook.toml"),
        "[[quirk]]\nname = \"x\"\nvendor = \"144d\"\ndevices = [\"a808\"]\nreset_method = [\"warp\"]\n",
        0o640,
    );
    let o = run(&n, 0, &["cleanup"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("pt-hook.toml") && t.contains("warp"), "{t}");
    assert!(!n.roots[0]
        .1
        .join("var/lib/pt-hook/cluster-config.json")
        .exists());
}
