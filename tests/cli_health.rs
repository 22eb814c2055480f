//! The built binary's `status` on the example host with a reset memory: the HEALTH lines and
//! the NEEDS-REBOOT flag, `status --json`'s `health`, `status --prometheus`, and a damaged
//! memory file (a warning naming it, never an error).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_pt-hook");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run_in(root: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("PT_HOOK_ROOT")
        .env("PT_HOOK_NODE", "pve1")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

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

/// The RTX 4070 at 01:00.0 (10de:2786, subsystem 10de:0000) was left broken by its last
/// reset; the memory says its model recovers at the bus reset.
const MEMORY: &str = r#"{
  "version": 1,
  "models": [
    { "id": "10de:2786", "subsystem": "10de:0000", "rung": "bus-reset", "updated": 1796170000,
      "resets": 4, "unrecovered": 1, "since_probe": 1,
      "rungs": [ { "rung": "function-reset", "ok": 0, "failed": 1, "last_ms": 310, "sum_ms": 310 },
                 { "rung": "bus-reset", "ok": 4, "failed": 1, "last_ms": 220, "sum_ms": 1010 } ] }
  ],
  "slots": [
    { "bdf": "0000:01:00.0", "id": "10de:2786", "subsystem": "10de:0000", "physical_slot": "pcie \"x16\"",
      "last_reset": 1796170000, "last_outcome": "unrecovered", "last_rung": null, "last_ms": 5120,
      "resets": 5, "failures": 1, "consecutive_failures": 1, "needs_reboot": true,
      "last_failure": "0000:01:00.0 did not recover",
      "history": [ { "at": 1796170000, "outcome": "unrecovered", "ms": 5120, "start": "bus-reset",
                     "rungs": [ { "rung": "bus-reset", "ran": true, "ok": false, "ms": 220 } ] } ] },
    { "bdf": "0000:02:00.0", "id": "8086:15f3", "last_reset": 1796160000, "last_outcome": "reset",
      "last_rung": "function-reset", "last_ms": 90, "resets": 1, "history": [] }
  ],
  "phases": [
    { "phase": "post-stop", "count": 3, "failures": 1, "sum_ms": 900, "last_ms": 250,
      "last_at": 1796170000, "last_ok": false }
  ]
}
"#;

#[test]
fn status_shows_device_health_and_metrics() {
    let t = example_host();
    let r = t.path();
    fs::create_dir_all(r.join("var/lib/pt-hook")).unwrap();
    fs::write(r.join("var/lib/pt-hook/health.json"), MEMORY).unwrap();

    let o = run_in(r, &["status"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("HEALTH: 0000:01:00.0 10de:2786: last reset 2026-12-02T00:06:40Z: did NOT recover, 5120 ms; 5 resets, 1 failure; ladder starts at bus-reset; physical slot pcie \"x16\"; NEEDS A HOST REBOOT (0000:01:00.0 did not recover)"),
        "{out}"
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("0000:01:00.0 "))
        .unwrap();
    assert!(line.contains("[NEEDS-REBOOT]"), "{line}");
    // 02:00.0 holds another card than the memory's (8086:15f3): no health for it.
    assert!(!out.contains("HEALTH: 0000:02:00.0"), "{out}");

    let o = run_in(r, &["status", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let dev = |b: &str| {
        j["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["bdf"] == b)
            .unwrap()
            .clone()
    };
    let h = &dev("0000:01:00.0")["health"];
    assert_eq!(h["needs_reboot"], true, "{h}");
    assert_eq!(h["ladder_starts_at"], "bus-reset");
    assert_eq!(h["last_outcome"], "unrecovered");
    assert_eq!(h["failures"], 1);
    assert_eq!(h["last_reset_time"], "2026-12-02T00:06:40Z");
    assert!(dev("0000:02:00.0")["health"].is_null());

    let o = run_in(r, &["status", "--prometheus"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", text(&o));
    for want in [
        "# HELP pt_hook_resets_total ",
        "# TYPE pt_hook_resets_total counter\n",
        "pt_hook_resets_total{model=\"10de:2786\",subsystem=\"10de:0000\",rung=\"bus-reset\"} 4\n",
        "pt_hook_reset_rung_failures_total{model=\"10de:2786\",subsystem=\"10de:0000\",rung=\"function-reset\"} 1\n",
        "pt_hook_reset_rung_duration_seconds_sum{model=\"10de:2786\",subsystem=\"10de:0000\",rung=\"bus-reset\"} 1.01\n",
        "pt_hook_reset_rung_duration_seconds_count{model=\"10de:2786\",subsystem=\"10de:0000\",rung=\"bus-reset\"} 5\n",
        "pt_hook_reset_failures_total{model=\"10de:2786\",subsystem=\"10de:0000\"} 1\n",
        "pt_hook_device_needs_reboot{bdf=\"0000:01:00.0\",model=\"10de:2786\",slot=\"pcie \\\"x16\\\"\"} 1\n",
        "# TYPE pt_hook_phase_duration_seconds summary\n",
        "pt_hook_phase_duration_seconds_sum{phase=\"post-stop\"} 0.9\n",
        "pt_hook_phase_duration_seconds_count{phase=\"post-stop\"} 3\n",
        "pt_hook_phase_last_duration_seconds{phase=\"post-stop\"} 0.25\n",
        "pt_hook_phase_failures_total{phase=\"post-stop\"} 1\n",
        "# TYPE pt_hook_devices gauge\n",
        "pt_hook_devices{owner=\"host\",vm=\"\"} ",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    // --json and --prometheus are two answers to one question.
    let o = run_in(r, &["status", "--json", "--prometheus"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // A damaged memory: a warning naming the file, status still works, nothing is written.
    fs::write(r.join("var/lib/pt-hook/health.json"), "{ not json").unwrap();
    let o = run_in(r, &["status"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning: reset memory ")
            && err.contains("var/lib/pt-hook/health.json: key must be a string at line 1"),
        "{out}"
    );
    assert!(!out.contains("HEALTH:"), "{out}");
    assert_eq!(
        fs::read_to_string(r.join("var/lib/pt-hook/health.json")).unwrap(),
        "{ not json"
    );
}
