//! The fleet view and doctor's cluster checks on fake Proxmox nodes that share one /etc/pve
//! tree, as the built binary runs them. Each node is its own `--root` (its own sysfs, /run and
//! /proc); their `etc/pve/{nodes,mapping,ha,.members}` are links into one shared directory,
//! and `etc/pve/qemu-server` links to `nodes/<node>/qemu-server`, the way pmxcfs shows it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_pt-hook");

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("stdout is not JSON ({e}): {}\n{}", self.stdout, self.stderr)
        })
    }
    fn text(&self) -> String {
        format!(
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn pt_hook(root: &Path, node: &str, args: &[&str]) -> Run {
    let out = Command::new(BIN)
        .arg("--root")
        .arg(root)
        .args(args)
        .env("PT_HOOK_NODE", node)
        .env_remove("PT_HOOK_ROOT")
        .env_remove("PVE_MIGRATED_FROM")
        .output()
        .expect("running pt-hook");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs a bash snippet with tests/fakehost.sh sourced.
fn fakehost(script: &str) {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakehost.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(". '{}'; set -e; {script}", lib.display()))
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "fakehost: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        script
    );
}

struct Cluster {
    _tmp: tempfile::TempDir,
    shared: PathBuf,
    base: PathBuf,
}

impl Cluster {
    fn root(&self, node: &str) -> PathBuf {
        self.base.join(node)
    }
    fn inventory(&self, node: &str) -> PathBuf {
        self.shared.join("nodes").join(node).join("pt-hook.json")
    }
}

const MEMBERS: &str = "{\n\"nodename\": \"pve1\",\n\"version\": 9,\n\"cluster\": { \"name\": \"lab\", \"version\": 4, \"nodes\": 4, \"quorate\": 1 },\n\"nodelist\": {\n  \"pve1\": { \"id\": 1, \"online\": 1, \"ip\": \"10.0.0.1\"},\n  \"pve2\": { \"id\": 2, \"online\": 1, \"ip\": \"10.0.0.2\"},\n  \"pve3\": { \"id\": 3, \"online\": 0},\n  \"pve4\": { \"id\": 4, \"online\": 1, \"ip\": \"10.0.0.4\"}\n  }\n}\n";

const PCI_CFG: &str = "rtx4070\n\tmap node=pve1,path=0000:01:00,id=10de:2786\n\tmap node=pve2,path=0000:41:00,id=10de:2786\n\tmap node=pve3,path=0000:01:00,id=10de:2786\n\tmap node=pve4,path=0000:01:00,id=10de:2786\n\na4000\n\tmap node=pve1,path=0000:02:00.0,id=10de:2786\n\tmap node=pve3,path=0000:01:00.0,id=10de:24b0\n\tmap node=pve4,path=0000:02:00.0,id=10de:2786\n";

/// pve1: two RTX 4070 (01:00 on vfio-pci for running VM 100, 02:00 free on nvidia) and a NIC;
/// pve2: one RTX 4070 at 41:00 (free); pve4: RTX 4070 at 01:00 and 02:00. pve3 is offline
/// with a two-day-old report; its 01:00 is an RTX 4070 too.
fn cluster() -> Cluster {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    let shared = base.join("pmxcfs");
    for n in ["pve1", "pve2", "pve3", "pve4"] {
        fs::create_dir_all(shared.join("nodes").join(n).join("qemu-server")).unwrap();
    }
    fs::create_dir_all(shared.join("mapping")).unwrap();
    fs::create_dir_all(shared.join("ha")).unwrap();
    fs::write(shared.join("mapping/pci.cfg"), PCI_CFG).unwrap();
    fs::write(shared.join(".members"), MEMBERS).unwrap();
    let s = shared.display();
    for (node, devs) in [
        (
            "pve1",
            "fh_dev 0000:01:00.0 10de 2786 030000 vfio-pci 12 - override=vfio-pci; \
             fh_dev 0000:01:00.1 10de 22bc 040300 vfio-pci 12 - override=vfio-pci; \
             fh_dev 0000:02:00.0 10de 2786 030000 nvidia 13 -; \
             fh_dev 0000:03:00.0 8086 15f3 020000 igc 14 -",
        ),
        ("pve2", "fh_dev 0000:41:00.0 10de 2786 030000 nvidia 30 -"),
        (
            "pve4",
            "fh_dev 0000:01:00.0 10de 2786 030000 nvidia 12 -; \
             fh_dev 0000:02:00.0 10de 2786 030000 nvidia 13 -",
        ),
    ] {
        let r = base.join(node);
        fakehost(&format!(
            "fh_root '{r}'; fh_pci_ids; {devs}; rm -rf '{r}/etc/pve'; mkdir -p '{r}/etc/pve'; \
             for x in nodes mapping ha .members; do ln -s '{s}/'$x '{r}/etc/pve/'$x; done; \
             ln -s nodes/{node}/qemu-server '{r}/etc/pve/qemu-server'",
            r = r.display()
        ));
    }
    // VM 100 runs on pve1 (Proxmox's pid file names a live process).
    let p1 = base.join("pve1");
    fs::write(
        shared.join("nodes/pve1/qemu-server/100.conf"),
        "machine: q35\nhostpci0: mapping=rtx4070,pcie=1\n",
    )
    .unwrap();
    fs::create_dir_all(p1.join("run/qemu-server")).unwrap();
    fs::write(p1.join("run/qemu-server/100.pid"), "4242\n").unwrap();
    fs::create_dir_all(p1.join("proc/4242")).unwrap();
    // pve3's last report, two days old.
    let old = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 2 * 86400;
    fs::write(
        shared.join("nodes/pve3/pt-hook.json"),
        format!(
            "{{\"version\":1,\"node\":\"pve3\",\"reported\":{old},\"phase\":\"post-stop\",\"pt_hook\":\"0.1.0\",\"devices\":[{{\"bdf\":\"0000:01:00.0\",\"id\":\"10de:2786\",\"class\":\"030000\",\"name\":\"NVIDIA Corporation AD104 [GeForce RTX 4070]\",\"driver\":\"nvidia\",\"mappings\":[\"rtx4070\"]}}]}}\n"
        ),
    )
    .unwrap();
    Cluster {
        _tmp: tmp,
        shared,
        base,
    }
}

fn node<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no node {name}: {doc:#}"))
}

fn device<'a>(n: &'a Value, bdf: &str) -> &'a Value {
    n["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["bdf"] == bdf)
        .unwrap_or_else(|| panic!("no device {bdf}: {n:#}"))
}

#[test]
fn status_cluster_over_three_nodes_with_one_stale() {
    let c = cluster();
    // pve2 publishes on request; pve1 after a hook phase (through its bounded child).
    let r = pt_hook(&c.root("pve2"), "pve2", &["publish"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(r.stdout.contains("published 1 device(s)"), "{}", r.text());
    let r = pt_hook(&c.root("pve1"), "pve1", &["100", "post-stop"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(!r.stderr.contains("inventory"), "{}", r.text());
    let inv: Value = serde_json::from_slice(&fs::read(c.inventory("pve1")).unwrap()).unwrap();
    assert_eq!(inv["phase"], "post-stop");
    assert_eq!(inv["node"], "pve1");
    let gpu = device(&inv, "0000:01:00.0");
    assert_eq!(gpu["owner"], "100");
    assert_eq!(gpu["running"], true, "{inv:#}");
    assert_eq!(gpu["mappings"], serde_json::json!(["rtx4070"]));
    assert_eq!(gpu["name"], "NVIDIA Corporation AD104 [GeForce RTX 4070]");
    // The NIC is nobody's passthrough device: not published.
    assert!(!inv.to_string().contains("0000:03:00.0"), "{inv:#}");

    // pve4 has not published yet.
    let r = pt_hook(&c.root("pve1"), "pve1", &["status", "--cluster", "--json"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let doc = r.json();
    assert_eq!(doc["cluster"], "lab");
    assert_eq!(doc["nodes"].as_array().unwrap().len(), 4, "{doc:#}");
    let n1 = node(&doc, "pve1");
    assert_eq!(n1["local"], true);
    assert_eq!(device(n1, "0000:01:00.0")["state"], "held");
    assert_eq!(device(n1, "0000:02:00.0")["state"], "free");
    let n2 = node(&doc, "pve2");
    assert_eq!(n2["online"], true);
    assert_eq!(n2["stale"], false);
    assert!(n2["age_seconds"].as_u64().unwrap() < 3600, "{n2:#}");
    assert_eq!(device(n2, "0000:41:00.0")["state"], "free");
    let n3 = node(&doc, "pve3");
    assert_eq!(n3["online"], false);
    assert_eq!(n3["stale"], true);
    assert!(n3["age_seconds"].as_u64().unwrap() >= 2 * 86400, "{n3:#}");
    // Down: shown as of its last report, never as free.
    assert_eq!(device(n3, "0000:01:00.0")["state"], "stale");
    let n4 = node(&doc, "pve4");
    assert!(
        n4["error"].as_str().unwrap().contains("not published"),
        "{n4:#}"
    );
    assert_eq!(n4["devices"], Value::Null);

    let r = pt_hook(&c.root("pve1"), "pve1", &["status", "--cluster"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let line3 = r
        .stdout
        .lines()
        .find(|l| l.starts_with("pve3 "))
        .unwrap_or_else(|| panic!("{}", r.text()));
    assert!(line3.contains("STALE") && line3.contains("2d"), "{line3}");
    assert!(
        r.stdout.contains("pve3: offline in /etc/pve/.members"),
        "{}",
        r.text()
    );
    assert!(r.stdout.contains("cluster lab (quorate)"), "{}", r.text());
}

#[test]
fn free_device_lookup() {
    let c = cluster();
    assert_eq!(pt_hook(&c.root("pve2"), "pve2", &["publish"]).code, 0);
    // By model: pve1's second card and pve2's; pve3's is unknown (offline), pve1's first held.
    let r = pt_hook(
        &c.root("pve1"),
        "pve1",
        &["status", "--cluster", "--free", "10de:2786", "--json"],
    );
    assert_eq!(r.code, 0, "{}", r.text());
    let m = &r.json()["models"][0];
    assert_eq!(m["id"], "10de:2786");
    let free: Vec<&str> = m["free"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(free, ["pve1 0000:02:00.0", "pve2 0000:41:00.0"], "{m:#}");
    assert_eq!(m["held"][0], "pve1 0000:01:00.0 by VM 100");
    assert_eq!(m["unknown"][0], "pve3 0000:01:00.0 (node offline)");
    // By mapping: only what the mapping names.
    let r = pt_hook(
        &c.root("pve1"),
        "pve1",
        &["status", "--cluster", "--free", "mapping=rtx4070"],
    );
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        r.stdout.contains("where a free mapping=rtx4070 is:"),
        "{}",
        r.text()
    );
    assert!(r.stdout.contains("free: pve2 0000:41:00.0"), "{}", r.text());
    assert!(!r.stdout.contains("pve1 0000:02:00.0"), "{}", r.text());
    // By name words.
    let r = pt_hook(
        &c.root("pve1"),
        "pve1",
        &["status", "--cluster", "--free", "rtx 4070"],
    );
    assert_eq!(r.code, 0, "{}", r.text());
    // None free (the audio function of the held card): exit 1, saying so.
    let r = pt_hook(
        &c.root("pve1"),
        "pve1",
        &["status", "--cluster", "--free", "10de:22bc"],
    );
    assert_eq!(r.code, 1, "{}", r.text());
    assert!(r.stderr.contains("no free device matches"), "{}", r.text());
    let r = pt_hook(&c.root("pve1"), "pve1", &["status", "--free", "x"]);
    assert_eq!(r.code, 2, "--free needs --cluster: {}", r.text());
}

#[test]
fn corrupt_and_hostile_peer_files_are_reported_per_node() {
    let c = cluster();
    fs::write(
        c.inventory("pve4"),
        "{\"version\":1,\"node\":\"pve4\",\"devi",
    )
    .unwrap();
    fs::write(
        c.inventory("pve2"),
        format!(
            "{{\"version\":1,\"node\":\"pve2\",\"pad\":\"{}\"}}",
            "x".repeat(200_000)
        ),
    )
    .unwrap();
    fs::create_dir_all(c.shared.join("nodes/bad name")).unwrap();
    let r = pt_hook(&c.root("pve1"), "pve1", &["status", "--cluster", "--json"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let doc = r.json();
    assert!(
        node(&doc, "pve4")["error"]
            .as_str()
            .unwrap()
            .contains("corrupt"),
        "{doc:#}"
    );
    assert!(
        node(&doc, "pve2")["error"]
            .as_str()
            .unwrap()
            .contains("larger than"),
        "{doc:#}"
    );
    // The rest of the view is intact.
    assert_eq!(device(node(&doc, "pve1"), "0000:02:00.0")["state"], "free");
    assert_eq!(doc["skipped"], serde_json::json!(["bad name"]));
}

#[test]
fn publishing_never_holds_a_phase() {
    let c = cluster();
    let p1 = c.root("pve1");
    // A read that never returns (what a hung pmxcfs does): another VM's config is a FIFO
    // nobody writes. The phase gives the publish child up and still succeeds.
    let fifo = c.shared.join("nodes/pve1/qemu-server/999.conf");
    let cs = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(cs.as_ptr(), 0o600) }, 0);
    let r = pt_hook(&p1, "pve1", &["100", "post-stop"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        r.stderr.contains("gave up after")
            && r.stderr
                .contains("the publisher was killed, the phase goes on"),
        "{}",
        r.text()
    );
    assert!(!c.inventory("pve1").exists());
    fs::remove_file(&fifo).unwrap();

    // Quorum lost: /etc/pve/nodes/pve1 does not take writes (an immutable directory here:
    // root writes through a mode). One warning; the phase succeeds; the old file stays.
    assert_eq!(pt_hook(&p1, "pve1", &["publish"]).code, 0);
    let before = fs::read(c.inventory("pve1")).unwrap();
    let dir = c.shared.join("nodes/pve1");
    let chattr = |flag: &str| {
        let o = Command::new("chattr")
            .arg(flag)
            .arg(&dir)
            .output()
            .expect("chattr");
        assert!(
            o.status.success(),
            "chattr {flag} (e2fsprogs, a file system with the immutable flag): {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    chattr("+i");
    let r = pt_hook(&p1, "pve1", &["100", "post-stop"]);
    let r2 = pt_hook(&p1, "pve1", &["publish"]);
    chattr("-i");
    assert_eq!(r.code, 0, "{}", r.text());
    assert_eq!(
        r.stderr.matches("read-only").count(),
        1,
        "one warning: {}",
        r.text()
    );
    assert!(r.stderr.contains("the last one stays"), "{}", r.text());
    assert!(!r.stderr.contains("publish: error"), "{}", r.text());
    assert_eq!(fs::read(c.inventory("pve1")).unwrap(), before);
    assert_eq!(
        r2.code,
        1,
        "an explicit publish says it failed: {}",
        r2.text()
    );

    // Not a Proxmox node (no /etc/pve): nothing, not even a word.
    let plain = c.base.join("plain");
    fakehost(&format!(
        "fh_root '{p}'; rm -rf '{p}/etc/pve'",
        p = plain.display()
    ));
    let r = pt_hook(&plain, "plain", &["100", "post-stop"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(!r.stderr.contains("inventory"), "{}", r.text());
    // /etc/pve without this node's directory (pmxcfs not mounted): the child skips quietly.
    fs::create_dir_all(plain.join("etc/pve")).unwrap();
    let r = pt_hook(&plain, "plain", &["100", "post-stop"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(!r.stderr.contains("inventory"), "{}", r.text());
    let r = pt_hook(&plain, "plain", &["publish"]);
    assert!(r.stdout.contains("not published"), "{}", r.text());
    // The same where mountinfo shows /etc/pve is no mount (a plain directory cannot hang): the
    // phase looks itself and starts no publish child (one fork and exec less per phase).
    fs::create_dir_all(plain.join("proc/self")).unwrap();
    fs::write(
        plain.join("proc/self/mountinfo"),
        "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n",
    )
    .unwrap();
    let r = pt_hook(&plain, "plain", &["-v", "100", "post-stop"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        r.stderr
            .contains("not published: /etc/pve is a plain directory"),
        "{}",
        r.text()
    );
    // With the node's directory there, it publishes as before.
    fs::create_dir_all(plain.join("etc/pve/nodes/plain")).unwrap();
    let r = pt_hook(&plain, "plain", &["-v", "100", "post-stop"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        plain.join("etc/pve/nodes/plain/pt-hook.json").exists(),
        "{}",
        r.text()
    );
}

fn checks(doc: &Value, vm: u64) -> Vec<(&str, &str, &str, &str)> {
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["vm"].as_u64() == Some(vm) && c["id"].as_str().unwrap().starts_with("vm.cluster")
        })
        .map(|c| {
            (
                c["id"].as_str().unwrap(),
                c["status"].as_str().unwrap(),
                c["message"].as_str().unwrap(),
                c["fix"].as_str().unwrap_or(""),
            )
        })
        .collect()
}

#[test]
fn doctor_ha_findings() {
    let c = cluster();
    assert_eq!(pt_hook(&c.root("pve2"), "pve2", &["publish"]).code, 0);
    assert_eq!(pt_hook(&c.root("pve4"), "pve4", &["publish"]).code, 0);
    let q = c.shared.join("nodes/pve1/qemu-server");
    // 100: HA in a restricted group whose nodes the mapping covers with one model: clean.
    // 101: HA without a group, a raw address. 102: HA rule (strict) on pve1, pve2, pve3 with a
    // mapping that lacks pve2 and has another model on pve3. 103: no HA, raw address, in a
    // four-node cluster.
    fs::write(
        q.join("101.conf"),
        "machine: q35\nhostpci0: 02:00,pcie=1,x-vga=1\n",
    )
    .unwrap();
    fs::write(
        q.join("102.conf"),
        "machine: q35\nhostpci0: mapping=a4000,pcie=1\n",
    )
    .unwrap();
    fs::write(q.join("103.conf"), "machine: q35\nhostpci0: 0000:02:00.0\n").unwrap();
    fs::write(
        c.shared.join("ha/resources.cfg"),
        "vm: 100\n\tgroup gpu\n\tstate started\n\nvm: 101\n\tstate started\n\nvm: 102\n\tstate started\n",
    )
    .unwrap();
    fs::write(
        c.shared.join("ha/groups.cfg"),
        "group: gpu\n\tnodes pve1:2,pve2,pve3\n\trestricted 1\n",
    )
    .unwrap();
    fs::write(
        c.shared.join("ha/rules.cfg"),
        "node-affinity: gpu-a4000\n\tresources vm:102\n\tnodes pve1,pve2,pve3\n\tstrict 1\n",
    )
    .unwrap();
    let r = pt_hook(&c.root("pve1"), "pve1", &["doctor", "--json"]);
    let doc = r.json();

    let v100 = checks(&doc, 100);
    assert_eq!(v100.len(), 1, "{v100:?}");
    assert_eq!(v100[0].0, "vm.cluster");
    assert_eq!(v100[0].1, "pass");
    assert!(v100[0].2.contains("restricted group gpu"), "{v100:?}");

    let v101 = checks(&doc, 101);
    assert_eq!(v101.len(), 1, "{v101:?}");
    assert_eq!(v101[0].0, "vm.cluster.raw-address");
    assert_eq!(v101[0].1, "warn");
    assert!(
        v101[0].2.contains("HA resource without a group"),
        "{v101:?}"
    );
    assert!(
        v101[0]
            .3
            .contains("map node=pve1,path=0000:02:00,id=10de:2786")
            && v101[0]
                .3
                .contains("qm set 101 --hostpci0 mapping=NAME,pcie=1,x-vga=1"),
        "{v101:?}"
    );

    let v102 = checks(&doc, 102);
    let ids: Vec<&str> = v102.iter().map(|c| c.0).collect();
    assert_eq!(
        ids,
        ["vm.cluster.mapping-node", "vm.cluster.mapping-model"],
        "{v102:?}"
    );
    assert!(v102[0].2.contains("no entry for node pve2"), "{v102:?}");
    assert!(
        v102[0].2.contains("strict node-affinity rule gpu-a4000"),
        "{v102:?}"
    );
    // pve2's published inventory names a free card of the model to map.
    assert!(
        v102[0]
            .3
            .contains("pve2 reports a free 10de:2786 at 0000:41:00.0"),
        "{v102:?}"
    );
    assert!(
        v102[1].2.contains("maps to 10de:24b0 on pve3") && v102[1].2.contains("10de:2786 on pve1"),
        "{v102:?}"
    );
    // pve4 is outside the strict rule: not checked.
    assert!(!v102.iter().any(|c| c.2.contains("pve4")), "{v102:?}");

    let v103 = checks(&doc, 103);
    assert_eq!(v103.len(), 1, "{v103:?}");
    assert_eq!(v103[0].0, "vm.cluster.raw-address");
    assert!(v103[0].2.contains("not an HA resource"), "{v103:?}");
    assert!(v103[0].2.contains("refuses to migrate"), "{v103:?}");

    // A mapping entry that names another card than the node reports: pve4's 02:00.0 is a
    // 10de:2786, so point the a4000 entry's id elsewhere and see it caught... via the
    // inventory: make pve4's card at 01:00 a different model.
    fs::write(
        c.shared.join("mapping/pci.cfg"),
        PCI_CFG.replace(
            "map node=pve4,path=0000:01:00,id=10de:2786",
            "map node=pve4,path=0000:02:00,id=10de:2786",
        ),
    )
    .unwrap();
    fakehost(&format!(
        "FH='{}'; rm -rf \"$FH/sys/devices/pci0000:00/0000:02:00.0\" \"$FH/sys/bus/pci/devices/0000:02:00.0\"; \
         fh_dev 0000:02:00.0 10de 2684 030000 nvidia 13 -",
        c.root("pve4").display()
    ));
    assert_eq!(pt_hook(&c.root("pve4"), "pve4", &["publish"]).code, 0);
    // 100 is in group gpu (pve1-3); widen it so pve4 counts.
    fs::write(
        c.shared.join("ha/groups.cfg"),
        "group: gpu\n\tnodes pve1:2,pve2,pve3,pve4\n\trestricted 1\n",
    )
    .unwrap();
    let doc = pt_hook(&c.root("pve1"), "pve1", &["doctor", "100", "--json"]).json();
    let v100 = checks(&doc, 100);
    assert_eq!(v100.len(), 1, "{v100:?}");
    assert_eq!(v100[0].0, "vm.cluster.mapping-model");
    assert!(
        v100[0].2.contains("which holds a 10de:2684 there"),
        "{v100:?}"
    );
}
