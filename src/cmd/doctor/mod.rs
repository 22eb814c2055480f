//! `pt-hook doctor`: the checks operators do by hand before passthrough works (IOMMU, interrupt
//! remapping, bootloader, vfio modules, blacklists, IOMMU group isolation, VM config, quirks),
//! each with pass/warn/fail and a fix. Reads only, through the host layer, so `--root` fake
//! hosts and the simulated kernel work the same as a real host.
//!
//! Without a VM id: the host checks and every VM config that has hostpci entries (templates
//! excepted). With a VM id: the host checks and that VM.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::engine::quirks::{self, Profile};
use crate::error::{Error, Result};
use crate::host::{paths, Host};
use crate::parse::config::{read_bounded, Config, FileKind};
use crate::parse::pve::config::{parse_vm_config, VmConfig};
use crate::parse::pve::hostpci::HostSource;
use crate::pci::{Bdf, PciId};
use crate::sysfs::device::{self, DeviceInfo};
use crate::sysfs::pciids::{self, Names};

mod cluster;
mod host;
mod vm;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub id: &'static str,
    pub status: Status,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<Bdf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The VMs that were checked (besides the host).
    pub vms: Vec<u32>,
    /// Where the config came from (`config.*` checks say the same in words).
    pub config: ConfigReport,
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigReport {
    /// Every file used, lowest precedence first, with its kind (cluster, cached, local,
    /// explicit).
    pub files: Vec<crate::parse::config::UsedFile>,
    /// The node whose `[node.NAME]` sections applied.
    pub node: String,
    /// none, live, cached or unavailable.
    pub cluster: &'static str,
}

impl Report {
    pub fn count(&self, s: Status) -> usize {
        self.checks.iter().filter(|c| c.status == s).count()
    }
    pub fn failed(&self) -> bool {
        self.count(Status::Fail) > 0
    }
}

/// Where this host's kernel command line is set.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Loader {
    /// /etc/kernel/cmdline; `managed` when proxmox-boot-tool keeps the ESPs.
    SystemdBoot {
        managed: bool,
    },
    /// /etc/default/grub; `managed` when proxmox-boot-tool keeps the ESPs.
    Grub {
        managed: bool,
    },
    Unknown,
}

impl Loader {
    fn detect(host: &dyn Host) -> Loader {
        let managed = host.exists("etc/kernel/proxmox-boot-uuids");
        if host.exists("etc/kernel/cmdline") && (managed || !host.exists("etc/default/grub")) {
            Loader::SystemdBoot { managed }
        } else if host.exists("etc/default/grub") {
            Loader::Grub { managed }
        } else {
            Loader::Unknown
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Loader::SystemdBoot { managed: true } => "systemd-boot (proxmox-boot-tool)",
            Loader::SystemdBoot { managed: false } => "systemd-boot",
            Loader::Grub { managed: true } => "GRUB (proxmox-boot-tool)",
            Loader::Grub { managed: false } => "GRUB",
            Loader::Unknown => "an unknown bootloader",
        }
    }

    /// How to add a kernel flag on this host.
    fn add_flag(&self, flag: &str) -> String {
        match self {
            Loader::SystemdBoot { .. } => format!(
                "add {flag} to the single line in /etc/kernel/cmdline (keep root=... and boot=...), run proxmox-boot-tool refresh and reboot"
            ),
            Loader::Grub { managed } => format!(
                "add {flag} to GRUB_CMDLINE_LINUX_DEFAULT in /etc/default/grub, run {} and reboot",
                if *managed { "proxmox-boot-tool refresh" } else { "update-grub" }
            ),
            Loader::Unknown => format!(
                "add {flag} to the kernel command line of your bootloader (/etc/kernel/cmdline + proxmox-boot-tool refresh for systemd-boot, /etc/default/grub + update-grub for GRUB) and reboot"
            ),
        }
    }

    fn remove_flag(&self, flag: &str) -> String {
        match self {
            Loader::SystemdBoot { .. } => format!(
                "remove {flag} from /etc/kernel/cmdline, run proxmox-boot-tool refresh and reboot"
            ),
            Loader::Grub { managed } => {
                format!(
                "remove {flag} from GRUB_CMDLINE_LINUX* in /etc/default/grub, run {} and reboot",
                if *managed { "proxmox-boot-tool refresh" } else { "update-grub" }
            )
            }
            Loader::Unknown => format!("remove {flag} from the kernel command line and reboot"),
        }
    }
}

/// One line of a config file, for messages ("/etc/modprobe.d/x.conf:3").
#[derive(Debug, Clone)]
struct Line {
    file: String,
    line: usize,
    text: String,
}

impl Line {
    fn at(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

/// Lines of every `*.conf` in a directory plus optional single files, comments stripped.
fn config_lines(host: &dyn Host, files: &[&str], dir: &str) -> Vec<Line> {
    let mut rels: Vec<String> = files.iter().map(|f| f.to_string()).collect();
    for f in host.list(dir).unwrap_or_default() {
        if f.ends_with(".conf") {
            rels.push(format!("{dir}/{f}"));
        }
    }
    let mut out = Vec::new();
    for rel in rels {
        if !host.exists(&rel) {
            continue;
        }
        let Ok(text) = read_bounded(host, &rel) else {
            continue;
        };
        for (i, l) in text.lines().enumerate() {
            let t = l.split('#').next().unwrap_or("").trim();
            if !t.is_empty() {
                out.push(Line {
                    file: host.display(&rel),
                    line: i + 1,
                    text: t.to_string(),
                });
            }
        }
    }
    out
}

fn read_trim(host: &dyn Host, rel: &str) -> Option<String> {
    host.read(rel).ok().map(|s| s.trim().to_string())
}

/// "6.8.12-4-pve" → (6, 8).
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// Host drivers of console GPUs, by vendor: blacklisting one of these while the host console
/// runs on that vendor's GPU leaves the host without a display.
fn console_drivers(vendor: u16) -> &'static [&'static str] {
    match vendor {
        0x8086 => &["i915", "xe"],
        0x1002 => &["amdgpu", "radeon"],
        0x10de => &["nouveau", "nvidia", "nvidia_drm", "nvidia-drm", "nvidiafb"],
        0x1a03 => &["ast"],
        0x102b => &["mgag200"],
        0x1234 => &["bochs", "bochs-drm", "bochs_drm"],
        _ => &[],
    }
}

struct VmEntry {
    vmid: u32,
    cfg: std::result::Result<VmConfig, String>,
}

struct Doctor<'a> {
    host: &'a dyn Host,
    checks: Vec<Check>,
    cmdline: Vec<String>,
    boot: Loader,
    devices: BTreeMap<Bdf, DeviceInfo>,
    names: Names,
    profiles: Vec<Profile>,
    modprobe: Vec<Line>,
    modules_load: Vec<Line>,
    vms: Vec<VmEntry>,
    kernel: Option<String>,
    iommu_units: Vec<String>,
    /// pre-start's own plan for a VM: its refusals are doctor's `vm.in-use` findings, word
    /// for word (the host guard decides both).
    planner: &'a dyn Fn(u32) -> Result<crate::engine::lifecycle::VmPlan>,
}

fn config_check(id: &'static str, status: Status, message: String, fix: Option<String>) -> Check {
    Check {
        id,
        status,
        message,
        fix,
        device: None,
        vm: None,
    }
}

impl<'a> Doctor<'a> {
    /// Which files the config came from (the same load as every other command's) and what
    /// went wrong with the cluster part.
    fn check_config(&mut self, cfg: &Config) {
        use crate::parse::cluster::{fmt_time, ClusterState};
        let o = &cfg.origin;
        if let Some(e) = &o.load_error {
            self.add(
                "config.files",
                Status::Fail,
                e.clone(),
                Some("fix the file named; until then every pt-hook command but doctor refuses to run (exit 2), so VMs with passthrough do not start".into()),
            );
            return;
        }
        let files: Vec<String> = o
            .files
            .iter()
            .map(|f| {
                let kind = match f.kind {
                    FileKind::Cluster => "cluster",
                    FileKind::Cached => "cluster, cached copy",
                    FileKind::Local => "local",
                    FileKind::Explicit => "--config",
                };
                format!("{} ({kind})", f.path)
            })
            .collect();
        let msg = if files.is_empty() {
            "no config files: built-in defaults".to_string()
        } else {
            format!(
                "config from {}{}",
                files.join(", "),
                if o.node.is_empty() {
                    String::new()
                } else {
                    format!("; [node.{}] sections apply to this node", o.node)
                }
            )
        };
        self.add("config.files", Status::Pass, msg, None);
        let hint = "check `systemctl status pve-cluster` and `pvecm status`; pt-hook goes on with the copy (or the local config) meanwhile".to_string();
        match &o.cluster {
            ClusterState::None => self.add(
                "config.cluster",
                Status::Pass,
                format!(
                    "no cluster-wide config ({} does not exist)",
                    self.host.display(paths::CLUSTER_DIR)
                ),
                None,
            ),
            ClusterState::Live { pmxcfs: true } => self.add(
                "config.cluster",
                Status::Pass,
                format!(
                    "cluster-wide config read from pmxcfs ({})",
                    self.host.display(paths::CLUSTER_DIR)
                ),
                None,
            ),
            ClusterState::Live { pmxcfs: false } => self.add(
                "config.cluster",
                Status::Pass,
                format!(
                    "{} read as plain files: {} is not a pmxcfs mount",
                    self.host.display(paths::CLUSTER_DIR),
                    self.host.display(paths::PVE_DIR)
                ),
                None,
            ),
            ClusterState::Cached { why, saved } => self.add(
                "config.cluster",
                Status::Warn,
                format!(
                    "cluster-wide config: {why}; using the copy read at {}",
                    fmt_time(*saved)
                ),
                Some(hint),
            ),
            ClusterState::Unavailable { why } => self.add(
                "config.cluster",
                Status::Warn,
                format!(
                    "cluster-wide config: {why}; no cached copy, only the local config is used"
                ),
                Some(hint),
            ),
        }
        // Warnings of the load besides the cluster state's own (a damaged cache).
        for w in &o.warnings {
            if !w.starts_with("cluster config: ") {
                self.add("config.cache", Status::Warn, w.clone(), None);
            }
        }
    }

    fn add(&mut self, id: &'static str, status: Status, message: String, fix: Option<String>) {
        self.checks.push(Check {
            id,
            status,
            message,
            fix,
            device: None,
            vm: None,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn add_vm(
        &mut self,
        vm: u32,
        device: Option<Bdf>,
        id: &'static str,
        status: Status,
        message: String,
        fix: Option<String>,
    ) {
        self.checks.push(Check {
            id,
            status,
            message,
            fix,
            device,
            vm: Some(vm),
        });
    }

    fn has_flag(&self, prefix: &str) -> Option<&str> {
        self.cmdline
            .iter()
            .find(|t| t.as_str() == prefix || t.starts_with(&format!("{prefix}=")))
            .map(String::as_str)
    }

    /// "0000:03:00.0 (Ethernet controller Intel Corporation I225-V, driver igc)".
    fn label(&self, b: &Bdf) -> String {
        match self.devices.get(b) {
            None => b.to_string(),
            Some(d) => {
                let mut s = format!("{b} ({}", self.names.class(d.class));
                if let Some(n) = self.names.describe(d.vendor, d.device) {
                    s.push_str(": ");
                    s.push_str(&n);
                } else {
                    s.push_str(&format!(" {}:{}", d.vendor_hex(), d.device_hex()));
                }
                s.push_str(&format!(
                    ", driver {})",
                    d.driver.as_deref().unwrap_or("none")
                ));
                s
            }
        }
    }
}

/// The last PCI function in a sysfs device path
/// ("../../devices/pci0000:00/0000:00:1d.0/0000:02:00.0/nvme/nvme0/nvme0n1/nvme0n1p3").
fn load_vms(host: &dyn Host) -> Vec<VmEntry> {
    let dir = "etc/pve/qemu-server";
    let mut v = Vec::new();
    for f in host.list(dir).unwrap_or_default() {
        let Some(id) = f.strip_suffix(".conf").and_then(|v| v.parse::<u32>().ok()) else {
            continue;
        };
        let rel = format!("{dir}/{f}");
        let cfg = read_bounded(host, &rel)
            .map_err(|e| e.to_string())
            .and_then(|t| parse_vm_config(&t, &host.display(&rel), id).map_err(|e| e.to_string()));
        v.push(VmEntry { vmid: id, cfg });
    }
    v.sort_by_key(|e| e.vmid);
    v
}

/// Runs every check. `vmid`: only that VM (its config must exist).
pub fn run(
    host: &dyn Host,
    cfg: &Config,
    vmid: Option<u32>,
    planner: &dyn Fn(u32) -> Result<crate::engine::lifecycle::VmPlan>,
) -> Result<Report> {
    let mut devices = BTreeMap::new();
    for b in device::list_all(host) {
        if let Some(d) = device::read_device(host, &b) {
            devices.insert(b, d);
        }
    }
    let want = devices.values().map(|d| (d.vendor, d.device)).collect();
    let vms = load_vms(host);
    if let Some(id) = vmid {
        if !vms.iter().any(|v| v.vmid == id) {
            return Err(Error::Config(format!(
                "VM {id}: no config at {}",
                host.display(&format!("etc/pve/qemu-server/{id}.conf"))
            )));
        }
    }
    let mut checks = Vec::new();
    let profiles = match quirks::load_all(host, cfg) {
        Ok(p) => p,
        Err(e) => {
            checks.push(config_check(
                "config.quirks",
                Status::Fail,
                e.to_string(),
                Some("fix the file and line named; until then pre-start refuses to start VMs with passthrough (exit 2)".into()),
            ));
            quirks::builtin()
        }
    };
    let mut d = Doctor {
        host,
        checks,
        cmdline: read_trim(host, "proc/cmdline")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        boot: Loader::detect(host),
        names: pciids::load(host, &want),
        devices,
        profiles,
        modprobe: config_lines(host, &[], "etc/modprobe.d"),
        modules_load: config_lines(host, &["etc/modules"], "etc/modules-load.d"),
        vms,
        kernel: read_trim(host, "proc/sys/kernel/osrelease"),
        iommu_units: host.list("sys/class/iommu").unwrap_or_default(),
        planner,
    };
    d.check_config(cfg);
    d.check_iommu();
    d.check_interrupt_remapping();
    d.check_boot();
    d.check_modules();
    d.check_vfio_ids();
    d.check_blacklists();
    let mut checked = Vec::new();
    for i in 0..d.vms.len() {
        if vmid.is_some_and(|id| id != d.vms[i].vmid) {
            continue;
        }
        let relevant = match &d.vms[i].cfg {
            Ok(c) => !c.hostpci.is_empty() && !c.is_template(),
            // A broken config is reported when asked for, or when it mentions hostpci.
            Err(e) => vmid.is_some() || e.contains("hostpci"),
        };
        if vmid.is_some() || relevant {
            checked.push(d.vms[i].vmid);
            d.check_vm(i);
        }
    }
    Ok(Report {
        vms: checked,
        config: ConfigReport {
            files: cfg.origin.files.clone(),
            node: cfg.origin.node.clone(),
            cluster: cfg.origin.cluster.name(),
        },
        checks: d.checks,
    })
}

pub fn print(r: &Report) {
    let width = r.checks.iter().map(|c| c.id.len()).max().unwrap_or(10);
    let mut section: Option<Option<u32>> = None;
    for c in &r.checks {
        if section != Some(c.vm) {
            section = Some(c.vm);
            match c.vm {
                None => println!("host:"),
                Some(v) => println!("VM {v}:"),
            }
        }
        println!("  {} {:<width$}  {}", c.status.label(), c.id, c.message);
        if let Some(f) = &c.fix {
            if c.status != Status::Pass {
                println!("       {:<width$}  fix: {f}", "");
            }
        }
    }
    if r.vms.is_empty() {
        println!("no VM with hostpci entries found (host checks only)");
    }
    println!(
        "{} checks: {} pass, {} warn, {} fail",
        r.checks.len(),
        r.count(Status::Pass),
        r.count(Status::Warn),
        r.count(Status::Fail)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::sim::{SimDevice, SimHost, SimModule};

    fn write(s: &SimHost, rel: &str, text: &str) {
        let p = s.root_dir().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn find<'a>(r: &'a Report, id: &str, vm: Option<u32>) -> Vec<&'a Check> {
        r.checks
            .iter()
            .filter(|c| c.id == id && c.vm == vm)
            .collect()
    }

    fn status(r: &Report, id: &str, vm: Option<u32>) -> Status {
        let v = find(r, id, vm);
        assert_eq!(v.len(), 1, "{id} {vm:?}: {:#?}", r.checks);
        v[0].status
    }

    fn doctor(s: &SimHost) -> Report {
        run(s, &Config::default(), None, &|_| {
            Err(Error::Usage("no planner in these tests".into()))
        })
        .unwrap()
    }

    /// The q35 test bed's devices with a Vega 64 (vendor-reset family) in its own group.
    fn host_with_vega() -> SimHost {
        let s = SimHost::gpu_host();
        s.add_device(SimDevice::bridge("0000:00:1d.0").group(20));
        s.add_device(
            SimDevice::new("0000:06:00.0", 0x1002, 0x687f, 0x030000)
                .parent("0000:00:1d.0")
                .group(21)
                .reset_methods(&["flr", "bus"])
                .driver("amdgpu"),
        );
        s.add_device(
            SimDevice::new("0000:06:00.1", 0x1002, 0xaaf8, 0x040300)
                .parent("0000:00:1d.0")
                .group(21)
                .driver("snd_hda_intel"),
        );
        write(
            &s,
            "etc/pve/qemu-server/100.conf",
            "machine: q35\nbios: ovmf\nefidisk0: x:1\ncpu: host\nballoon: 0\nhostpci0: 06:00,pcie=1\n",
        );
        s
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.8.12-4-pve"), Some((6, 8)));
        assert_eq!(kernel_version("6.12.57+deb13-amd64"), Some((6, 12)));
        assert_eq!(kernel_version("5.15.0"), Some((5, 15)));
        assert_eq!(kernel_version("junk"), None);
    }

    #[test]
    fn bootloader_detection_and_where_flags_go() {
        let s = SimHost::new();
        assert_eq!(Loader::detect(&s), Loader::Unknown);
        write(
            &s,
            "etc/default/grub",
            "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\n",
        );
        assert_eq!(Loader::detect(&s), Loader::Grub { managed: false });
        assert!(Loader::detect(&s)
            .add_flag("iommu=pt")
            .contains("update-grub"));
        write(&s, "etc/kernel/proxmox-boot-uuids", "A-B\n");
        assert_eq!(Loader::detect(&s), Loader::Grub { managed: true });
        assert!(Loader::detect(&s)
            .add_flag("iommu=pt")
            .contains("proxmox-boot-tool refresh"));
        write(
            &s,
            "etc/kernel/cmdline",
            "root=ZFS=rpool/ROOT/pve-1 boot=zfs\n",
        );
        assert_eq!(Loader::detect(&s), Loader::SystemdBoot { managed: true });
        let fix = Loader::detect(&s).add_flag("intel_iommu=on");
        assert!(fix.contains("/etc/kernel/cmdline") && fix.contains("proxmox-boot-tool"));
        // The running command line has a flag the config lacks: the next boot loses it.
        write(
            &s,
            "proc/cmdline",
            "root=ZFS=rpool/ROOT/pve-1 boot=zfs intel_iommu=on\n",
        );
        let r = doctor(&s);
        let c = &find(&r, "boot.loader", None)[0];
        assert_eq!(c.status, Status::Warn, "{c:?}");
        assert!(c.message.contains("intel_iommu=on"), "{}", c.message);
    }

    #[test]
    fn cmdline_flags_by_cpu_vendor() {
        let s = SimHost::new();
        write(&s, "proc/cmdline", "root=/dev/sda1 quiet\n");
        write(&s, "proc/cpuinfo", "vendor_id\t: AuthenticAMD\n");
        // AMD-Vi is on by default: no flag needed while the IOMMU is active.
        assert_eq!(status(&doctor(&s), "iommu.cmdline", None), Status::Pass);
        // Never the non-existent amd_iommu=on, in any advice.
        let r = doctor(&s);
        assert!(
            r.checks
                .iter()
                .all(|c| !c.fix.as_deref().unwrap_or("").contains("amd_iommu=on")),
            "{r:?}"
        );
        write(&s, "proc/cmdline", "root=/dev/sda1 amd_iommu=on\n");
        let r = doctor(&s);
        let c = &find(&r, "iommu.cmdline", None)[0];
        assert_eq!(c.status, Status::Warn, "{c:?}");
        assert!(c.message.contains("not a kernel option"), "{c:?}");
        write(&s, "proc/cmdline", "root=/dev/sda1 quiet\n");
        s.set_iommu(None);
        let r = doctor(&s);
        let c = &find(&r, "iommu.enabled", None)[0];
        assert_eq!(c.status, Status::Fail);
        assert!(!c.fix.as_deref().unwrap().contains("amd_iommu=on"), "{c:?}");
        assert!(c.fix.as_deref().unwrap().contains("firmware"), "{c:?}");
        s.set_iommu(Some("ivhd0"));
        write(&s, "proc/cpuinfo", "vendor_id\t: GenuineIntel\n");
        assert_eq!(status(&doctor(&s), "iommu.cmdline", None), Status::Warn);
        s.set_iommu(None);
        let r = doctor(&s);
        assert_eq!(status(&r, "iommu.cmdline", None), Status::Fail);
        assert_eq!(status(&r, "iommu.enabled", None), Status::Fail);
        write(&s, "proc/cmdline", "root=/dev/sda1 intel_iommu=off\n");
        let r = doctor(&s);
        let c = &find(&r, "iommu.cmdline", None)[0];
        assert_eq!(c.status, Status::Fail);
        assert!(c.message.contains("intel_iommu=off"));
    }

    #[test]
    fn interrupt_remapping_from_proc_interrupts() {
        let s = SimHost::new();
        assert_eq!(
            status(&doctor(&s), "iommu.interrupt-remapping", None),
            Status::Warn,
            "unreadable: cannot tell"
        );
        write(
            &s,
            "proc/interrupts",
            " 24: 1 IR-PCI-MSI-0000:00:1f.0 0-edge x\n",
        );
        assert_eq!(
            status(&doctor(&s), "iommu.interrupt-remapping", None),
            Status::Pass
        );
        write(
            &s,
            "proc/interrupts",
            " 24: 1 PCI-MSI-0000:00:1f.0 0-edge x\n",
        );
        assert_eq!(
            status(&doctor(&s), "iommu.interrupt-remapping", None),
            Status::Fail
        );
        write(
            &s,
            "etc/modprobe.d/unsafe.conf",
            "# escape hatch\noptions vfio_iommu_type1 allow_unsafe_interrupts=1\n",
        );
        let r = doctor(&s);
        let c = &find(&r, "iommu.interrupt-remapping", None)[0];
        assert_eq!(c.status, Status::Warn);
        assert!(c.message.contains("unsafe.conf:2"), "{}", c.message);
    }

    #[test]
    fn vfio_modules_from_the_kernel_module_lists() {
        let s = SimHost::gpu_host();
        write(&s, "proc/sys/kernel/osrelease", "6.12.117+deb12-amd64\n");
        // No module directory: cannot tell.
        assert_eq!(status(&doctor(&s), "modules.vfio", None), Status::Warn);
        write(
            &s,
            "lib/modules/6.12.117+deb12-amd64/modules.dep",
            "kernel/drivers/vfio/vfio.ko.xz: kernel/drivers/vfio/x.ko\nkernel/drivers/vfio/vfio_iommu_type1.ko.xz: kernel/drivers/vfio/vfio.ko.xz\n",
        );
        let r = doctor(&s);
        let c = &find(&r, "modules.vfio", None)[0];
        assert_eq!(c.status, Status::Fail, "vfio-pci missing: {c:?}");
        assert!(c.message.contains("vfio_pci"), "{}", c.message);
        write(
            &s,
            "lib/modules/6.12.117+deb12-amd64/modules.builtin",
            "kernel/drivers/vfio/pci/vfio-pci.ko\n",
        );
        assert_eq!(status(&doctor(&s), "modules.vfio", None), Status::Pass);
        // A stale vfio_virqfd line only on kernels that merged it.
        write(&s, "etc/modules", "vfio\nvfio_virqfd # old guide\n");
        let c = doctor(&s);
        let c = &find(&c, "modules.vfio-virqfd", None)[0];
        assert_eq!(c.status, Status::Warn);
        assert!(c.message.contains("modules:2"), "{}", c.message);
        write(&s, "proc/sys/kernel/osrelease", "5.15.131-2-pve\n");
        assert!(find(&doctor(&s), "modules.vfio-virqfd", None).is_empty());
    }

    #[test]
    fn vfio_pci_ids_format_and_gpu_functions() {
        let s = host_with_vega();
        write(
            &s,
            "etc/modprobe.d/vfio.conf",
            "options vfio-pci ids=1002:687f, 1002:aaf8\n",
        );
        let r = doctor(&s);
        let c = &find(&r, "modules.vfio-pci-ids", None)[0];
        assert_eq!(c.status, Status::Fail, "space in ids: {c:?}");
        assert!(c.message.contains("1002:aaf8"), "{}", c.message);
        write(
            &s,
            "etc/modprobe.d/vfio.conf",
            "options vfio-pci ids=1002:687f,abcd:0001\n",
        );
        let r = doctor(&s);
        let c = &find(&r, "modules.vfio-pci-ids", None)[0];
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.message.contains("abcd:0001 matches no device"),
            "{}",
            c.message
        );
        assert!(
            c.message.contains("0000:06:00.1"),
            "audio not listed: {}",
            c.message
        );
        write(
            &s,
            "etc/modprobe.d/vfio.conf",
            "options vfio-pci ids=1002:687f,1002:aaf8 disable_vga=1\n",
        );
        assert_eq!(
            status(&doctor(&s), "modules.vfio-pci-ids", None),
            Status::Pass
        );
        // Claiming the host console GPU.
        write(
            &s,
            "etc/modprobe.d/vfio.conf",
            "options vfio_pci ids=1234:1111,8086:293e\n",
        );
        let r = doctor(&s);
        let c = &find(&r, "modules.vfio-pci-ids", None)[0];
        assert_eq!(c.status, Status::Warn);
        assert!(c.message.contains("host console"), "{}", c.message);
    }

    #[test]
    fn vendor_reset_missing_fails_the_amd_vm() {
        let s = host_with_vega();
        let r = doctor(&s);
        let q = find(&r, "vm.quirk", Some(100));
        assert_eq!(q.len(), 1, "one finding per GPU, not per function: {q:#?}");
        assert_eq!(q[0].status, Status::Fail);
        assert!(q[0].message.contains("vendor_reset"), "{}", q[0].message);
        assert_eq!(q[0].device, Some(Bdf::parse("0000:06:00.0").unwrap()));
        assert!(r.failed());
        // Installed (DKMS) but not loaded: pre-start loads it.
        write(&s, "proc/sys/kernel/osrelease", "6.8.12-4-pve\n");
        write(
            &s,
            "lib/modules/6.8.12-4-pve/modules.dep",
            "updates/dkms/vendor-reset.ko:\n",
        );
        let r = doctor(&s);
        let c = &find(&r, "vm.quirk", Some(100))[0];
        assert_eq!(c.status, Status::Warn, "{c:?}");
        assert!(c.fix.as_deref().unwrap().contains("/etc/modules"));
        s.add_module(SimModule::new("vendor_reset").loaded(true));
        let r = doctor(&s);
        assert_eq!(status(&r, "vm.quirk", Some(100)), Status::Pass);
        assert_eq!(status(&r, "vm.iommu-group", Some(100)), Status::Pass);
        assert_eq!(status(&r, "vm.all-functions", Some(100)), Status::Pass);
    }

    #[test]
    fn blackwell_warns_and_notes_disable_idle_d3() {
        let s = SimHost::gpu_host();
        s.add_device(SimDevice::bridge("0000:00:1d.0").group(20));
        s.add_device(
            SimDevice::new("0000:06:00.0", 0x10de, 0x2b85, 0x030000)
                .parent("0000:00:1d.0")
                .group(21)
                .reset_methods(&["flr", "bus"])
                .driver("nvidia"),
        );
        write(
            &s,
            "etc/pve/qemu-server/102.conf",
            "machine: q35\nhostpci0: 06:00.0,pcie=1\n",
        );
        let r = doctor(&s);
        let c = &find(&r, "vm.quirk", Some(102))[0];
        assert_eq!(c.status, Status::Warn);
        assert!(c.message.contains("Blackwell") && c.message.contains("FLR"));
        assert!(c.fix.as_deref().unwrap().contains("disable_idle_d3=1"));
        write(
            &s,
            "etc/modprobe.d/vfio.conf",
            "options vfio-pci disable_idle_d3=1\n",
        );
        let r = doctor(&s);
        let c = &find(&r, "vm.quirk", Some(102))[0];
        assert_eq!(c.status, Status::Warn);
        assert!(c.fix.is_none() && c.message.contains("disable_idle_d3=1 is set"));
    }

    #[test]
    fn hookscript_romfile_ha_and_leftovers() {
        let s = host_with_vega();
        s.add_module(SimModule::new("vendor_reset").loaded(true));
        write(
            &s,
            "etc/pve/qemu-server/100.conf",
            "machine: q35\nbios: ovmf\nefidisk0: x:1\ncpu: host,hidden=1\nballoon: 0\n\
             hookscript: nas:snippets/other.sh\nargs: -cpu host,kvm=off\n\
             hostpci0: 06:00,pcie=1,romfile=vega.rom\n",
        );
        write(
            &s,
            "etc/pve/storage.cfg",
            "dir: local\n\tpath /var/lib/vz\n\ndir: nas\n\tpath /mnt/nas\n\tcontent snippets\n",
        );
        write(&s, "mnt/nas/snippets/other.sh", "#!/bin/sh\n");
        write(&s, "etc/pve/ha/resources.cfg", "vm: 100\n\tstate started\n");
        let r = doctor(&s);
        let c = &find(&r, "vm.hookscript", Some(100))[0];
        assert_eq!(c.status, Status::Fail, "not executable: {c:?}");
        assert!(
            c.message.contains("mnt/nas/snippets/other.sh"),
            "{}",
            c.message
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            s.root_dir().join("mnt/nas/snippets/other.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let r = doctor(&s);
        assert_eq!(
            status(&r, "vm.hookscript", Some(100)),
            Status::Warn,
            "not pt-hook"
        );
        assert_eq!(status(&r, "vm.romfile", Some(100)), Status::Fail);
        assert_eq!(
            status(&r, "vm.cluster.raw-address", Some(100)),
            Status::Warn
        );
        let c = &find(&r, "vm.nvidia-workarounds", Some(100))[0];
        assert!(c.message.contains("kvm=off") && c.message.contains("hidden=1"));
        write(&s, "usr/share/kvm/vega.rom", "rom");
        assert_eq!(status(&doctor(&s), "vm.romfile", Some(100)), Status::Pass);
    }

    #[test]
    fn hookscript_storage_comes_from_the_install_parser() {
        let s = host_with_vega();
        let vm = "machine: q35\nbios: ovmf\nefidisk0: x:1\nballoon: 0\n\
                  hookscript: nas:snippets/pt-hook\nhostpci0: 06:00,pcie=1\n";
        write(&s, "etc/pve/qemu-server/100.conf", vm);
        let hookscript = |storage_cfg: Option<&str>| -> Check {
            let cfg = s.root_dir().join("etc/pve/storage.cfg");
            match storage_cfg {
                Some(text) => write(&s, "etc/pve/storage.cfg", text),
                None => drop(std::fs::remove_file(cfg)),
            }
            find(&doctor(&s), "vm.hookscript", Some(100))[0].clone()
        };
        let install_nas = "pt-hook install --storage nas --vmid 100; qm set 100 --hookscript nas:snippets/pt-hook";
        for (storage_cfg, status, needle, fix) in [
            // No storage.cfg: only `local` is known.
            (None, Status::Warn, "storage nas is unknown", None),
            // A broken storage.cfg: the install parser's error, with file and line.
            (
                Some("dir: local\n\tpath /var/lib/vz\ndir nas\n"),
                Status::Warn,
                "storage.cfg:3: expected `type: id`",
                None,
            ),
            // A network storage without `path` lives under /mnt/pve/<id>; the snippet is
            // missing, so the fix is `pt-hook install` on that storage, then `qm set`.
            (
                Some("dir: local\n\tpath /var/lib/vz\n\nnfs: nas\n\tserver 10.0.0.2\n\tcontent snippets\n"),
                Status::Fail,
                "mnt/pve/nas/snippets/pt-hook",
                Some(install_nas),
            ),
            // A storage with no directory at all.
            (
                Some("lvmthin: nas\n\tthinpool data\n\tvgname pve\n"),
                Status::Warn,
                "storage.cfg:1: storage nas is of type lvmthin",
                None,
            ),
        ] {
            let c = hookscript(storage_cfg);
            assert_eq!(c.status, status, "{storage_cfg:?}: {c:?}");
            assert!(c.message.contains(needle), "{storage_cfg:?}: {c:?}");
            assert_eq!(c.fix.as_deref(), fix, "{storage_cfg:?}");
        }
        // No hookscript: the same install hint, for `local`.
        write(
            &s,
            "etc/pve/qemu-server/100.conf",
            &vm.replace("hookscript: nas:snippets/pt-hook\n", ""),
        );
        assert_eq!(
            hookscript(None).fix.as_deref(),
            Some("pt-hook install --storage local --vmid 100; qm set 100 --hookscript local:snippets/pt-hook")
        );
    }

    #[test]
    fn console_gpu_needs_another_way_in() {
        let s = SimHost::gpu_host();
        write(
            &s,
            "etc/pve/qemu-server/102.conf",
            "machine: q35\nhostpci0: 01:00,pcie=1,x-vga=1\nvga: none\n",
        );
        let r = doctor(&s);
        let c = &find(&r, "vm.console-access", Some(102))[0];
        assert_eq!(c.status, Status::Warn, "{c:?}");
        assert_eq!(c.device, Some(Bdf::parse("0000:01:00.0").unwrap()));
        // sshd found by its pid file (a live pid) or by name in /proc.
        write(&s, "run/sshd.pid", "4242\n");
        assert_eq!(
            status(&doctor(&s), "vm.console-access", Some(102)),
            Status::Warn,
            "stale pid file"
        );
        write(&s, "proc/4242/comm", "sshd\n");
        assert_eq!(
            status(&doctor(&s), "vm.console-access", Some(102)),
            Status::Pass
        );
        std::fs::remove_file(s.root_dir().join("run/sshd.pid")).unwrap();
        assert_eq!(
            status(&doctor(&s), "vm.console-access", Some(102)),
            Status::Pass
        );
        // A VM with only the nvme has no such check.
        write(&s, "etc/pve/qemu-server/102.conf", "hostpci0: 02:00.0\n");
        assert!(find(&doctor(&s), "vm.console-access", Some(102)).is_empty());
    }

    #[test]
    fn only_vms_with_hostpci_unless_asked() {
        let s = SimHost::gpu_host();
        write(&s, "etc/pve/qemu-server/100.conf", "memory: 512\n");
        write(
            &s,
            "etc/pve/qemu-server/101.conf",
            "template: 1\nhostpci0: 02:00.0\n",
        );
        write(&s, "etc/pve/qemu-server/102.conf", "hostpci0: 02:00.0\n");
        assert_eq!(doctor(&s).vms, [102]);
        write(&s, "etc/pve/qemu-server/103.conf", "hostpci0: 0000:02:00\n");
        let r = doctor(&s);
        assert_eq!(r.vms, [102, 103]);
        let c = &find(&r, "vm.shared-device", Some(102))[0];
        assert_eq!(c.status, Status::Warn);
        assert!(c.message.contains("VM 103"), "{}", c.message);
        // The template's config is not a running VM's: it does not count.
        assert!(!c.message.contains("101"), "{}", c.message);
        let none = |_| Err(Error::Usage("no planner".into()));
        let r = run(&s, &Config::default(), Some(100), &none).unwrap();
        assert_eq!(r.vms, [100]);
        assert!(r.checks.iter().all(|c| c.vm.is_none() || c.vm == Some(100)));
        assert!(run(&s, &Config::default(), Some(109), &none).is_err());
    }
}
