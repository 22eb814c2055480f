//! `pt-hook doctor` and `pt-hook status` run as the built binary against fake host trees made
//! by tests/fakehost.sh (`good`: a host set up by the book; `broken`: the common mistakes).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_pt-hook");

fn build(kind: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join(kind);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakehost.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(kind)
        .arg(&root)
        .output()
        .expect("running tests/fakehost.sh");
    assert!(
        out.status.success(),
        "fakehost.sh {kind}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (tmp, root)
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

fn pt_hook(root: &Path, args: &[&str]) -> Run {
    let out = Command::new(BIN)
        .arg("--root")
        .arg(root)
        .args(args)
        .env("PT_HOOK_NODE", "pve1")
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

/// The checks with this id (and VM, when given).
fn checks<'a>(doc: &'a Value, id: &str, vm: Option<u64>) -> Vec<&'a Value> {
    doc["checks"]
        .as_array()
        .expect("checks array")
        .iter()
        .filter(|c| c["id"] == id && c["vm"].as_u64() == vm)
        .collect()
}

fn one<'a>(doc: &'a Value, id: &str, vm: Option<u64>) -> &'a Value {
    let v = checks(doc, id, vm);
    assert_eq!(v.len(), 1, "{id} vm {vm:?}: {v:?}\n{doc:#}");
    v[0]
}

fn assert_status(doc: &Value, id: &str, vm: Option<u64>, status: &str, needles: &[&str]) {
    let c = one(doc, id, vm);
    assert_eq!(c["status"], status, "{id} vm {vm:?}: {c}");
    let msg = c["message"].as_str().unwrap_or_default();
    for n in needles {
        assert!(msg.contains(n), "{id} vm {vm:?}: {msg:?} lacks {n:?}");
    }
    if status != "pass" {
        assert!(
            c["fix"].as_str().is_some_and(|f| !f.is_empty()),
            "{id} vm {vm:?} has no fix: {c}"
        );
    }
}

#[test]
fn doctor_passes_the_good_host() {
    let (_t, root) = build("good");
    let r = pt_hook(&root, &["doctor", "--json"]);
    assert_eq!(r.code, 0, "stderr: {}\nstdout: {}", r.stderr, r.stdout);
    let doc = r.json();
    let all = doc["checks"].as_array().unwrap();
    let bad: Vec<&Value> = all.iter().filter(|c| c["status"] != "pass").collect();
    assert!(bad.is_empty(), "not pass on the good host: {bad:#?}");
    // The host checks and VM 100 (VM 110 has no hostpci: not checked).
    assert_eq!(doc["vms"], serde_json::json!([100]));
    for id in [
        "iommu.enabled",
        "iommu.cmdline",
        "iommu.passthrough-mode",
        "iommu.interrupt-remapping",
        "boot.loader",
        "boot.acs-override",
        "modules.vfio",
        "modules.blacklist",
    ] {
        one(&doc, id, None);
    }
    assert_status(&doc, "iommu.enabled", None, "pass", &["dmar0"]);
    assert_status(
        &doc,
        "boot.loader",
        None,
        "pass",
        &["systemd-boot (proxmox-boot-tool)", "etc/kernel/cmdline"],
    );
    for id in [
        "vm.devices",
        "vm.iommu-group",
        "vm.machine",
        "vm.pcie",
        "vm.all-functions",
        "vm.bios",
        "vm.cpu",
        "vm.balloon",
        "vm.hookscript",
    ] {
        one(&doc, id, Some(100));
    }
    assert_eq!(
        one(&doc, "vm.iommu-group", Some(100))["device"],
        "0000:01:00.0"
    );
    assert!(checks(&doc, "vm.machine", Some(110)).is_empty());

    let text = pt_hook(&root, &["doctor"]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout.contains("PASS iommu.enabled"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("VM 100:"), "{}", text.stdout);
    assert!(text.stdout.contains("0 warn, 0 fail"), "{}", text.stdout);
}

#[test]
fn doctor_fails_the_broken_host_naming_each_finding() {
    let (_t, root) = build("broken");
    let r = pt_hook(&root, &["doctor", "--json"]);
    assert_eq!(r.code, 1, "stderr: {}\nstdout: {}", r.stderr, r.stdout);
    assert!(r.stderr.contains("check(s) failed"), "{}", r.stderr);
    let doc = r.json();
    assert_eq!(doc["vms"], serde_json::json!([100, 101, 102]));

    // No IOMMU: no units, no flags; the fix names GRUB, the bootloader this host uses.
    assert_status(&doc, "iommu.enabled", None, "fail", &["no IOMMU"]);
    let fix = one(&doc, "iommu.enabled", None)["fix"].as_str().unwrap();
    assert!(
        fix.contains("VT-d") && fix.contains("/etc/default/grub") && fix.contains("update-grub"),
        "{fix}"
    );
    assert_status(&doc, "iommu.cmdline", None, "fail", &["intel_iommu=on"]);
    assert_status(&doc, "iommu.passthrough-mode", None, "warn", &["iommu=pt"]);
    assert_status(
        &doc,
        "iommu.interrupt-remapping",
        None,
        "fail",
        &["no interrupt remapping"],
    );
    assert_status(
        &doc,
        "boot.loader",
        None,
        "pass",
        &["GRUB", "etc/default/grub"],
    );
    // The host console's own driver blacklisted; a stale vfio_virqfd line.
    assert_status(
        &doc,
        "modules.blacklist",
        None,
        "fail",
        &["i915", "0000:00:02.0", "blacklist.conf:2"],
    );
    assert_eq!(
        one(&doc, "modules.blacklist", None)["device"],
        "0000:00:02.0"
    );
    assert_status(
        &doc,
        "modules.vfio-virqfd",
        None,
        "warn",
        &["etc/modules:4", "6.2"],
    );

    // The GPU shares its group with the management NIC: named, for both VMs.
    assert_status(
        &doc,
        "vm.iommu-group",
        Some(100),
        "fail",
        &[
            "IOMMU group 12",
            "0000:03:00.0",
            "Ethernet controller",
            "igc",
            "enp3s0 (through vmbr0) carries the default route",
        ],
    );
    assert_eq!(
        one(&doc, "vm.iommu-group", Some(100))["device"],
        "0000:01:00.0"
    );
    // The guard's finding, in pre-start's words: the NIC pre-start would take along.
    assert_status(
        &doc,
        "vm.in-use",
        Some(100),
        "fail",
        &[
            "IOMMU group 12 (with 0000:01:00.0) 0000:03:00.0: enp3s0 (through vmbr0) carries the default route (via 192.168.1.1)",
        ],
    );
    // VM 101 passes only the GPU's first function: the audio function shares the group too.
    assert_status(
        &doc,
        "vm.iommu-group",
        Some(101),
        "fail",
        &["0000:01:00.1", "0000:03:00.0"],
    );
    assert_status(
        &doc,
        "vm.all-functions",
        Some(101),
        "warn",
        &["0000:01:00.1", "Audio device"],
    );

    // i440fx without pcie (VM 100): warnings naming both; pcie=1 on i440fx (VM 101): fail.
    assert_status(&doc, "vm.machine", Some(100), "warn", &["i440fx"]);
    assert_status(
        &doc,
        "vm.pcie",
        Some(100),
        "warn",
        &["hostpci0", "without pcie=1"],
    );
    assert_status(
        &doc,
        "vm.machine",
        Some(101),
        "fail",
        &["pc-i440fx-9.0", "hostpci0", "pcie=1"],
    );
    assert_status(&doc, "vm.bios", Some(100), "warn", &["seabios"]);
    assert_status(&doc, "vm.balloon", Some(100), "warn", &["ballooning"]);
    assert_status(&doc, "vm.hookscript", Some(100), "warn", &["no hookscript"]);
    assert_status(
        &doc,
        "vm.hookscript",
        Some(101),
        "fail",
        &["var/lib/vz/snippets/pt-hook", "does not exist"],
    );

    // VM 102 takes the NVMe under the root filesystem (LVM on nvme0n1p3).
    assert_status(
        &doc,
        "vm.in-use",
        Some(102),
        "fail",
        &["hostpci0 0000:02:00.0: /dev/nvme0n1p3 → dm-0 (pve-root) is mounted at / (ext4)"],
    );
    assert_status(
        &doc,
        "vm.iommu-group",
        Some(102),
        "pass",
        &["IOMMU group 13"],
    );
    assert!(checks(&doc, "vm.in-use", Some(100))
        .iter()
        .all(|c| !c["message"].as_str().unwrap_or("").contains("dm-0")));

    // Human output: one line per finding, with its fix.
    let text = pt_hook(&root, &["doctor"]);
    assert_eq!(text.code, 1);
    for needle in [
        "FAIL iommu.enabled",
        "FAIL iommu.interrupt-remapping",
        "FAIL vm.iommu-group",
        "WARN vm.machine",
        "FAIL vm.machine",
        "fix: ",
    ] {
        assert!(text.stdout.contains(needle), "{needle}: {}", text.stdout);
    }
}

#[test]
fn doctor_for_one_vm_and_bad_vmids() {
    let (_t, root) = build("broken");
    let r = pt_hook(&root, &["doctor", "101", "--json"]);
    assert_eq!(r.code, 1);
    let doc = r.json();
    assert_eq!(doc["vms"], serde_json::json!([101]));
    assert!(doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["vm"].is_null() || c["vm"] == 101));
    // The other VMs' configs still count: VM 100 passes the same GPU.
    assert_status(
        &doc,
        "vm.shared-device",
        Some(101),
        "warn",
        &["0000:01:00.0", "VM 100"],
    );
    let r = pt_hook(&root, &["doctor", "999"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("999"), "{}", r.stderr);
    let r = pt_hook(&root, &["doctor", "../x"]);
    assert_eq!(r.code, 2);
}

#[test]
fn doctor_warns_about_unsafe_interrupts_and_acs_override() {
    let (_t, root) = build("good");
    std::fs::write(
        root.join("etc/modprobe.d/iommu_unsafe_interrupts.conf"),
        "options vfio_iommu_type1 allow_unsafe_interrupts=1\n",
    )
    .unwrap();
    std::fs::write(
        root.join("proc/cmdline"),
        "BOOT_IMAGE=/boot/vmlinuz root=ZFS=rpool/ROOT/pve-1 boot=zfs intel_iommu=on iommu=pt pcie_acs_override=downstream,multifunction\n",
    )
    .unwrap();
    let r = pt_hook(&root, &["doctor", "--json"]);
    // Warnings only: exit 0.
    assert_eq!(r.code, 0, "{}", r.stdout);
    let doc = r.json();
    assert_status(
        &doc,
        "iommu.interrupt-remapping",
        None,
        "warn",
        &["allow_unsafe_interrupts", "iommu_unsafe_interrupts.conf:1"],
    );
    assert_status(
        &doc,
        "boot.acs-override",
        None,
        "warn",
        &["pcie_acs_override=downstream,multifunction"],
    );
    let fix = one(&doc, "boot.acs-override", None)["fix"]
        .as_str()
        .unwrap();
    assert!(
        fix.contains("/etc/kernel/cmdline") && fix.contains("proxmox-boot-tool refresh"),
        "{fix}"
    );
}

#[test]
fn status_json_groups_drivers_owners_and_names() {
    let (_t, root) = build("good");
    // VM 200 holds the NIC according to pt-hook's running state: state wins over configs.
    let nic = serde_json::json!({
        "bdf": "0000:03:00.0", "vendor": 0x8086, "device": 0x15f3,
        "subsystem_vendor": 0x8086, "subsystem_device": 0, "class": 0x020000,
        "driver": "igc", "driver_override": null, "iommu_group": 14,
        "reset_method": "flr pm bus", "has_reset": true, "boot_vga": null,
        "d3cold_allowed": "1", "power_control": "auto", "link_speed": null, "link_width": null
    });
    let st = serde_json::json!({
        "version": 1, "vmid": 200, "pid": 1, "created": 0, "phase": "prepared",
        "devices": [{"original": nic, "origin": "hostpci0", "quirk": null}],
        "journal": [], "unrecovered": []
    });
    std::fs::write(root.join("run/pt-hook/vm-200.json"), st.to_string()).unwrap();

    let r = pt_hook(&root, &["status", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let doc = r.json();
    assert!(doc["pci_ids"]
        .as_str()
        .unwrap()
        .ends_with("usr/share/misc/pci.ids"));
    let devs = doc["devices"].as_array().unwrap();
    let dev = |bdf: &str| -> &Value {
        devs.iter()
            .find(|d| d["bdf"] == bdf)
            .unwrap_or_else(|| panic!("{bdf} missing: {doc:#}"))
    };
    let gpu = dev("0000:01:00.0");
    assert_eq!(gpu["vendor"], "10de");
    assert_eq!(gpu["device"], "2786");
    assert_eq!(gpu["class"], "030000");
    assert_eq!(gpu["driver"], "nvidia");
    assert_eq!(gpu["iommu_group"], 12);
    assert_eq!(
        gpu["iommu_group_members"],
        serde_json::json!(["0000:01:00.0", "0000:01:00.1"])
    );
    assert_eq!(gpu["reset_methods"], serde_json::json!(["flr", "bus"]));
    assert_eq!(gpu["boot_vga"], false);
    assert_eq!(gpu["link_width"], "16");
    assert_eq!(gpu["link_speed"], "16.0 GT/s PCIe");
    assert_eq!(gpu["vm"], 100);
    assert_eq!(gpu["vm_source"], "config");
    assert_eq!(gpu["vendor_name"], "NVIDIA Corporation");
    assert_eq!(gpu["device_name"], "AD104 [GeForce RTX 4070]");
    assert_eq!(gpu["class_name"], "VGA compatible controller");
    let audio = dev("0000:01:00.1");
    assert_eq!(audio["iommu_group"], gpu["iommu_group"]);
    assert_eq!(audio["iommu_group_members"], gpu["iommu_group_members"]);
    assert_eq!(audio["driver"], "snd_hda_intel");
    assert_eq!(audio["reset_methods"], Value::Null);
    assert_eq!(audio["quirk"], "nvidia-companion");
    assert_eq!(audio["vm"], 100);
    let igpu = dev("0000:00:02.0");
    assert_eq!(igpu["boot_vga"], true);
    assert_eq!(igpu["vm"], Value::Null);
    assert_eq!(igpu["device_name"], "Raptor Lake-S GT1 [UHD Graphics 770]");
    let nic = dev("0000:03:00.0");
    assert_eq!(nic["vm"], 200);
    assert_eq!(nic["vm_source"], "state");
    assert_eq!(
        nic["iommu_group_members"],
        serde_json::json!(["0000:03:00.0"])
    );

    let text = pt_hook(&root, &["status"]);
    assert_eq!(text.code, 0);
    let line = text
        .stdout
        .lines()
        .find(|l| l.starts_with("0000:01:00.0"))
        .unwrap_or_else(|| panic!("{}", text.stdout));
    for n in [
        "nvidia",
        "01:00.1",
        "flr,bus",
        "16GT/s:x16",
        "100(config)",
        "GeForce RTX 4070",
    ] {
        assert!(line.contains(n), "{n}: {line}");
    }
    // Every header starts where its column's cells start, one field per column.
    let header = text.stdout.lines().next().unwrap();
    let starts = |l: &str| -> Vec<usize> {
        let b = l.as_bytes();
        (0..b.len())
            .filter(|&i| b[i] != b' ' && (i == 0 || (i >= 2 && &b[i - 2..i] == b"  ")))
            .collect()
    };
    let cols = starts(header);
    assert_eq!(cols.len(), 11, "{header}");
    for l in text.stdout.lines().filter(|l| l.starts_with("0000:")) {
        let mut c = starts(l);
        c.retain(|i| *i <= cols[10]);
        // GROUP is right-aligned: compare its end instead.
        assert_eq!(c.len(), 11, "{header}\n{l}");
        for k in [0, 1, 2, 3, 5, 6, 7, 8, 9, 10] {
            assert_eq!(c[k], cols[k], "column {k}:\n{header}\n{l}");
        }
        let group_end = c[4] + l[c[4]..].split(' ').next().unwrap().len();
        assert_eq!(group_end, cols[4] + "GROUP".len(), "GROUP:\n{header}\n{l}");
    }
    assert!(text.stdout.contains("[boot_vga]"), "{}", text.stdout);
}

#[test]
fn status_shows_devices_held_for_libvirt_domains() {
    let (_t, root) = build("good");
    // A libvirt domain holds the iGPU (state file keyed by UUID, name only shown).
    let igpu = serde_json::json!({
        "bdf": "0000:00:02.0", "vendor": 0x8086, "device": 0xa780,
        "subsystem_vendor": 0x8086, "subsystem_device": 0, "class": 0x030000,
        "driver": "i915", "driver_override": null, "iommu_group": 0,
        "reset_method": "flr", "has_reset": true, "boot_vga": true,
        "d3cold_allowed": "1", "power_control": "auto", "link_speed": null, "link_width": null
    });
    let uuid = "4dea22b3-1d52-d8f3-2516-782e98ab3fa0";
    let st = serde_json::json!({
        "version": 1, "vmid": 0, "pid": 1, "created": 0, "phase": "prepared",
        "devices": [{"original": igpu, "origin": "hostdev 1 (managed)", "quirk": null}],
        "journal": [], "unrecovered": [],
        "domain": {"uuid": uuid, "name": "win 11\u{1b}[2J"}
    });
    std::fs::create_dir_all(root.join("run/pt-hook")).unwrap();
    std::fs::write(
        root.join(format!("run/pt-hook/libvirt-{uuid}.json")),
        st.to_string(),
    )
    .unwrap();

    let r = pt_hook(&root, &["status", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let doc = r.json();
    let devs = doc["devices"].as_array().unwrap();
    let dev = |bdf: &str| -> &Value {
        devs.iter()
            .find(|d| d["bdf"] == bdf)
            .unwrap_or_else(|| panic!("{bdf} missing: {doc:#}"))
    };
    let igpu = dev("0000:00:02.0");
    assert_eq!(igpu["vm"], Value::Null, "not a Proxmox VM: {igpu}");
    assert_eq!(igpu["owner"], "libvirt:win 11\\u{1b}[2J");
    assert_eq!(igpu["libvirt_uuid"], uuid);
    assert_eq!(igpu["vm_source"], "state");
    // Proxmox owners keep a numeric `vm`; `owner` is the same id as a string.
    let gpu = dev("0000:01:00.0");
    assert_eq!(gpu["vm"], 100);
    assert_eq!(gpu["owner"], "100");
    assert_eq!(gpu["libvirt_uuid"], Value::Null);
    assert_eq!(gpu["vm_source"], "config");
    let nic = dev("0000:03:00.0");
    assert_eq!(nic["vm"], Value::Null);
    assert_eq!(nic["owner"], Value::Null);

    let text = pt_hook(&root, &["status"]);
    assert_eq!(text.code, 0);
    assert!(
        !text.stdout.contains('\u{1b}'),
        "raw escape in the table: {:?}",
        text.stdout
    );
    let line = text
        .stdout
        .lines()
        .find(|l| l.starts_with("0000:00:02.0"))
        .unwrap_or_else(|| panic!("{}", text.stdout));
    assert!(line.contains("libvirt:win 11\\u{1b}[2J(state)"), "{line}");
}

#[test]
fn status_without_pci_ids_uses_class_names() {
    let (_t, root) = build("broken");
    std::fs::remove_file(root.join("usr/share/misc/pci.ids")).unwrap();
    let r = pt_hook(&root, &["status", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let doc = r.json();
    assert_eq!(doc["pci_ids"], Value::Null);
    let nic = doc["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["bdf"] == "0000:03:00.0")
        .unwrap();
    assert_eq!(nic["device_name"], Value::Null);
    assert_eq!(nic["class_name"], "Ethernet controller");
    assert_eq!(nic["iommu_group"], 12);
    assert_eq!(
        nic["iommu_group_members"],
        serde_json::json!(["0000:01:00.0", "0000:01:00.1", "0000:03:00.0"])
    );
}

#[test]
fn status_owner_through_a_pci_mapping_of_this_node() {
    let (_t, root) = build("example");
    let doc = pt_hook(&root, &["status", "--json"]).json();
    let nvme = doc["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["bdf"] == "0000:02:00.0")
        .unwrap()
        .clone();
    // VM 100: hostpci1: mapping=fastnvme, whose pve1 entry is 0000:02:00.0.
    assert_eq!(nvme["vm"], 100, "{nvme}");
    assert_eq!(nvme["vm_source"], "config");
    let other = Command::new(BIN)
        .arg("--root")
        .arg(&root)
        .args(["status", "--json"])
        .env("PT_HOOK_NODE", "pve2")
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&other.stdout).unwrap();
    let nvme = doc["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["bdf"] == "0000:02:00.0")
        .unwrap();
    assert_eq!(
        nvme["vm"],
        Value::Null,
        "the mapping's pve2 entry is another path"
    );
}
