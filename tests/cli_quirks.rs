//! Quirk profiles through the real binary on a fake host (tests/fakehost.sh's example host:
//! a Vega 64 in VM 101, an RTX 5090 in VM 102): `quirks`, `plan`, and the precedence of
//! built-in < /etc/pt-hook/quirks.d/*.toml < `[[quirk]]` in pt-hook.toml.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pt-hook")
}

fn example_host() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("host");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakehost.sh");
    let st = Command::new("bash")
        .arg(&script)
        .arg("example")
        .arg(&root)
        .status()
        .unwrap();
    assert!(st.success(), "fakehost.sh failed");
    (dir, root)
}

fn run(root: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .env("PT_HOOK_NODE", "pve1")
        .output()
        .unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write_cfg(root: &Path, rel: &str, body: &str) -> PathBuf {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p
}

fn device<'a>(plan: &'a serde_json::Value, bdf: &str) -> &'a serde_json::Value {
    plan["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["bdf"] == bdf)
        .unwrap_or_else(|| panic!("{bdf} not in plan: {plan}"))
}

#[test]
fn quirks_json_lists_the_amd_and_blackwell_ids() {
    let (_d, root) = example_host();
    let v = json(&run(&root, &["quirks", "--json"]));
    let all = v["quirks"].as_array().unwrap();
    let has = |name: &str, id: &str| {
        all.iter().any(|q| {
            q["name"] == name
                && q["devices"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|d| d.as_str().unwrap().contains(id))
        })
    };
    assert!(has("amd-vega10", "687f"));
    assert!(has("amd-polaris10", "67df"));
    assert!(has("amd-navi1x", "731f"));
    assert!(has("amd-rdna-host-rebind", "73bf"));
    assert!(has("nvidia-blackwell", "2b85"));
    assert!(has("nvidia-blackwell", "2bb1"));
}

#[test]
fn plan_for_vega10_puts_device_specific_first_and_reports_vendor_reset() {
    let (_d, root) = example_host();
    let p = json(&run(&root, &["plan", "101", "--json"]));
    let vega = device(&p, "0000:04:00.0");
    assert_eq!(vega["quirk"], "amd-vega10");
    let rm = vega["reset_method"].as_str().unwrap();
    assert!(rm.starts_with("device_specific"), "{rm}");
    let warned = p["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w.as_str().unwrap().contains("vendor_reset"));
    assert!(warned, "{p}");
    // ... and pre-start would load it first.
    let human = text(&run(&root, &["plan", "101"]));
    assert!(human.contains("load module vendor_reset"), "{human}");

    // With the module loaded, the warning goes away.
    std::fs::create_dir_all(root.join("sys/module/vendor_reset")).unwrap();
    let p = json(&run(&root, &["plan", "101", "--json"]));
    assert!(
        !p["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("vendor_reset")),
        "{p}"
    );
}

#[test]
fn plan_for_rtx5090_names_blackwell_and_plans_no_flr() {
    let (_d, root) = example_host();
    let p = json(&run(&root, &["plan", "102", "--json"]));
    for bdf in ["0000:05:00.0", "0000:05:00.1"] {
        let d = device(&p, bdf);
        assert_eq!(d["quirk"], "nvidia-blackwell", "{d}");
    }
    let gpu = device(&p, "0000:05:00.0");
    let rm = gpu["reset_method"].as_str().unwrap();
    assert!(!rm.split_whitespace().any(|m| m == "flr"), "{rm}");
    assert!(rm.split_whitespace().any(|m| m == "bus"), "{rm}");
}

#[test]
fn quirks_for_a_bdf_explains_the_device() {
    let (_d, root) = example_host();
    let o = run(&root, &["quirks", "0000:04:00.0"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("amd-vega10"), "{t}");
    assert!(t.contains("device_specific"), "{t}");
    assert!(t.contains("vendor_reset"), "{t}");
    let o = run(&root, &["quirks", "0000:01:00.0"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("0000:01:00.0") && t.contains("10de:2786"), "{t}");
    let t = text(&run(&root, &["quirks", "10de:2b85"]));
    assert!(t.contains("nvidia-blackwell"), "{t}");
    // Bad targets are usage errors.
    for bad in ["0000:01:00.0/../..", "zzzz:1234", "", "0000:09:00.0"] {
        let o = run(&root, &["quirks", bad]);
        assert_ne!(o.status.code(), Some(0), "{bad:?}: {}", text(&o));
    }
}

#[test]
fn user_profiles_override_built_ins_in_order() {
    let (_d, root) = example_host();
    // quirks.d replaces the built-in Vega 10 profile by name...
    write_cfg(
        &root,
        "etc/pt-hook/quirks.d/10-vega.toml",
        "[[quirk]]\nname = \"amd-vega10\"\ndescription = \"site: bus reset only\"\nvendor = \"1002\"\ndevices = [\"687f\"]\nreset_method = [\"bus\"]\nreset_method_only = true\n",
    );
    let p = json(&run(&root, &["plan", "101", "--json"]));
    let vega = device(&p, "0000:04:00.0");
    assert_eq!(vega["quirk"], "amd-vega10");
    assert_eq!(vega["reset_method"], "bus");
    let t = text(&run(&root, &["quirks", "0000:04:00.0"]));
    assert!(t.contains("10-vega.toml"), "source named: {t}");

    // ... a later quirks.d file replaces the earlier one, and adds a new profile...
    write_cfg(
        &root,
        "etc/pt-hook/quirks.d/20-more.toml",
        "[[quirk]]\nname = \"amd-vega10\"\nvendor = \"1002\"\ndevices = [\"687f\"]\nreset_method = [\"flr\"]\nreset_method_only = true\n\n[[quirk]]\nname = \"site-nvme\"\nvendor = \"144d\"\ndevices = [\"a800-a80f\"]\npower_control = \"on\"\n",
    );
    let p = json(&run(&root, &["plan", "101", "--json"]));
    assert_eq!(device(&p, "0000:04:00.0")["reset_method"], "flr");
    let p = json(&run(&root, &["plan", "100", "--json"]));
    assert_eq!(device(&p, "0000:02:00.0")["quirk"], "site-nvme");

    // ... and [[quirk]] in pt-hook.toml wins over quirks.d.
    write_cfg(
        &root,
        "etc/pt-hook/pt-hook.toml",
        "[[quirk]]\nname = \"amd-vega10\"\nvendor = \"1002\"\ndevices = [\"687f\"]\nreset_method = [\"device_specific\", \"bus\"]\nreset_method_only = true\n",
    );
    let p = json(&run(&root, &["plan", "101", "--json"]));
    assert_eq!(
        device(&p, "0000:04:00.0")["reset_method"],
        "device_specific bus"
    );
}

#[test]
fn malformed_or_unsafe_quirk_files_are_refused_naming_file_and_line() {
    let (_d, root) = example_host();
    let f = write_cfg(
        &root,
        "etc/pt-hook/quirks.d/bad.toml",
        "[[quirk]]\nname = \"x\"\nvendor = \"1002\"\ndevices = [\"687f\"\n",
    );
    let o = run(&root, &["plan", "101"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("bad.toml:"), "{t}");

    std::fs::write(
        &f,
        "[[quirk]]\nname = \"x\"\nvendor = \"1002\"\ndevices = [\"687f\"]\nreset_method = [\"warp\"]\n",
    )
    .unwrap();
    let t = text(&run(&root, &["quirks"]));
    assert!(t.contains("bad.toml") && t.contains("warp"), "{t}");

    // Group-writable: refused, saying which file and why.
    std::fs::write(
        &f,
        "[[quirk]]\nname = \"x\"\nvendor = \"1002\"\ndevices = [\"687f\"]\n",
    )
    .unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o664)).unwrap();
    let o = run(&root, &["plan", "101"]);
    assert_ne!(o.status.code(), Some(0));
    let t = text(&o);
    assert!(t.contains("bad.toml") && t.contains("writable"), "{t}");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(run(&root, &["plan", "101"]).status.code(), Some(0));
}

#[test]
fn unsafe_directories_and_planted_links_are_refused() {
    let (_d, root) = example_host();
    let f = write_cfg(
        &root,
        "etc/pt-hook/quirks.d/site.toml",
        "[[quirk]]\nname = \"site\"\nvendor = \"144d\"\ndevices = [\"a808\"]\n",
    );
    assert_eq!(run(&root, &["quirks"]).status.code(), Some(0));
    // A group-writable quirks.d: someone else could swap the file.
    let dir = root.join("etc/pt-hook/quirks.d");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775)).unwrap();
    let o = run(&root, &["quirks"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("directory") && t.contains("quirks.d") && t.contains("group"),
        "{t}"
    );
    // Sticky and world-writable (like /tmp) is fine for root's own files.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let o = run(&root, &["quirks"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A symbolic link planted by another user, pointing at a root-owned file.
    std::fs::remove_file(&f).unwrap();
    let target = root.join("etc/pt-hook/real.toml");
    std::fs::write(
        &target,
        "[[quirk]]\nname = \"site\"\nvendor = \"144d\"\ndevices = [\"a808\"]\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(&target, &f).unwrap();
    assert_eq!(
        run(&root, &["quirks"]).status.code(),
        Some(0),
        "root's own link"
    );
    std::os::unix::fs::lchown(&f, Some(65534), Some(65534)).unwrap();
    let o = run(&root, &["quirks"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("site.toml") && t.contains("uid 65534"), "{t}");
}
