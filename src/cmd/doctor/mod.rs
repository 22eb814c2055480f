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
use crate::parse::config::{read_bounded, Config};
use crate::parse::pve::config::{parse_vm_config, VmConfig};
use crate::parse::pve::hostpci::HostSource;
use crate::pci::{Bdf, PciId};
use crate::sysfs::device::{self, DeviceInfo};
use crate::sysfs::pciids::{self, Names};

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
    pub checks: Vec<Check>,
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

impl<'a> Doctor<'a> {
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

    // ------------------------------------------------------------------ host

    fn check_iommu(&mut self) {
        let groups = self
            .host
            .list(paths::IOMMU_GROUPS)
            .map(|v| v.len())
            .unwrap_or(0);
        let cpu = read_trim(self.host, "proc/cpuinfo").unwrap_or_default();
        let (flag, vendor_fw) = if cpu.contains("AuthenticAMD") || cpu.contains("HygonGenuine") {
            ("amd_iommu=on", "AMD-Vi (IOMMU) and SVM")
        } else {
            ("intel_iommu=on", "VT-d and VT-x")
        };
        let amd = flag.starts_with("amd");
        if !self.iommu_units.is_empty() {
            self.add(
                "iommu.enabled",
                Status::Pass,
                format!(
                    "IOMMU active: {} ({groups} IOMMU groups)",
                    self.iommu_units.join(", ")
                ),
                None,
            );
        } else {
            self.add(
                "iommu.enabled",
                Status::Fail,
                format!(
                    "no IOMMU: {} is empty{}; passthrough is impossible",
                    self.host.display("sys/class/iommu"),
                    if groups == 0 {
                        " and there are no IOMMU groups"
                    } else {
                        ""
                    }
                ),
                Some(format!(
                    "enable {vendor_fw} in the firmware setup, then {}",
                    self.boot.add_flag(flag)
                )),
            );
        }

        let active = !self.iommu_units.is_empty();
        let off = ["intel_iommu=off", "amd_iommu=off", "iommu=off"]
            .into_iter()
            .find(|f| self.cmdline.iter().any(|t| t == f));
        let on = ["intel_iommu=on", "amd_iommu=on"]
            .into_iter()
            .find(|f| self.cmdline.iter().any(|t| t.starts_with(f)));
        match (off, on) {
            (Some(f), _) => self.add(
                "iommu.cmdline",
                Status::Fail,
                format!("the kernel command line turns the IOMMU off ({f})"),
                Some(self.boot.remove_flag(f)),
            ),
            (None, Some(f)) => self.add(
                "iommu.cmdline",
                Status::Pass,
                format!("{f} on the kernel command line"),
                None,
            ),
            (None, None) if amd && active => self.add(
                "iommu.cmdline",
                Status::Pass,
                "no amd_iommu flag on the kernel command line; AMD-Vi is on by default and active"
                    .into(),
                None,
            ),
            (None, None) => self.add(
                "iommu.cmdline",
                if active { Status::Warn } else { Status::Fail },
                format!(
                    "{flag} is not on the kernel command line{}",
                    if active {
                        " (the kernel enabled the IOMMU by default; the explicit flag is the baseline)"
                    } else {
                        ""
                    }
                ),
                Some(self.boot.add_flag(flag)),
            ),
        }

        if self.has_flag("iommu").is_some_and(|t| t == "iommu=pt") {
            self.add(
                "iommu.passthrough-mode",
                Status::Pass,
                "iommu=pt on the kernel command line (host devices skip IOMMU translation)".into(),
                None,
            );
        } else {
            self.add(
                "iommu.passthrough-mode",
                Status::Warn,
                "iommu=pt is not on the kernel command line (recommended: host devices then skip IOMMU translation)".into(),
                Some(self.boot.add_flag("iommu=pt")),
            );
        }
    }

    fn check_interrupt_remapping(&mut self) {
        let unsafe_param = read_trim(
            self.host,
            "sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts",
        )
        .is_some_and(|v| v == "Y" || v == "1");
        let unsafe_opt = self.modprobe.iter().find(|l| {
            let w: Vec<&str> = l.text.split_whitespace().collect();
            w.first() == Some(&"options")
                && w.get(1)
                    .is_some_and(|m| crate::host::paths::module_name(m) == "vfio_iommu_type1")
                && w.iter().skip(2).any(|o| {
                    matches!(
                        *o,
                        "allow_unsafe_interrupts=1"
                            | "allow_unsafe_interrupts=Y"
                            | "allow_unsafe_interrupts=y"
                    )
                })
        });
        let off_flag = self
            .cmdline
            .iter()
            .find(|t| t.as_str() == "intremap=off" || t.as_str() == "intremap=no_x2apic_optout")
            .cloned();
        let interrupts = self.host.read("proc/interrupts");
        let ir = interrupts
            .as_ref()
            .map(|t| t.lines().any(|l| l.contains(" IR-")))
            .ok();
        let unsafe_where = if unsafe_param {
            Some("vfio_iommu_type1 allow_unsafe_interrupts=Y (loaded)".to_string())
        } else {
            unsafe_opt.map(|l| format!("allow_unsafe_interrupts=1 at {}", l.at()))
        };
        let unsafe_fix = "remove allow_unsafe_interrupts once interrupt remapping works (it lets a guest inject interrupts into the host)";
        match (ir, &off_flag) {
            (_, Some(f)) if f == "intremap=off" => self.add(
                "iommu.interrupt-remapping",
                Status::Fail,
                "interrupt remapping is turned off on the kernel command line (intremap=off): vfio refuses devices with \"Operation not permitted\"".into(),
                Some(self.boot.remove_flag("intremap=off")),
            ),
            (Some(true), _) => match unsafe_where {
                Some(w) => self.add(
                    "iommu.interrupt-remapping",
                    Status::Warn,
                    format!("interrupt remapping enabled, but {w} is set: a security compromise not needed here"),
                    Some(unsafe_fix.into()),
                ),
                None => self.add(
                    "iommu.interrupt-remapping",
                    Status::Pass,
                    "interrupt remapping enabled (IR- interrupt chips in /proc/interrupts)".into(),
                    None,
                ),
            },
            (Some(false), _) => match unsafe_where {
                Some(w) => self.add(
                    "iommu.interrupt-remapping",
                    Status::Warn,
                    format!("no interrupt remapping; passthrough only works through {w}, a security compromise"),
                    Some("enable x2APIC / interrupt remapping in the firmware setup (or update the firmware)".into()),
                ),
                None => self.add(
                    "iommu.interrupt-remapping",
                    Status::Fail,
                    format!(
                        "no interrupt remapping (no IR- interrupt chips in /proc/interrupts{}): vfio refuses devices with \"Operation not permitted\"",
                        if self.iommu_units.is_empty() { "; the IOMMU is off" } else { "" }
                    ),
                    Some(if self.iommu_units.is_empty() {
                        "turn the IOMMU on first (see iommu.enabled)".into()
                    } else {
                        "enable x2APIC / interrupt remapping in the firmware setup (or update the firmware); last resort, insecure: options vfio_iommu_type1 allow_unsafe_interrupts=1 in /etc/modprobe.d/".into()
                    }),
                ),
            },
            (None, _) => self.add(
                "iommu.interrupt-remapping",
                Status::Warn,
                format!(
                    "cannot tell whether interrupt remapping is on: {} is not readable",
                    self.host.display("proc/interrupts")
                ),
                Some("look for \"DMAR-IR: Enabled IRQ remapping\" or \"AMD-Vi: Interrupt remapping enabled\" in dmesg".into()),
            ),
        }
    }

    /// The kernel command line the bootloader config sets, for the next boot.
    fn boot_config_cmdline(&self) -> Option<(String, String)> {
        match self.boot {
            Loader::SystemdBoot { .. } => read_bounded(self.host, "etc/kernel/cmdline")
                .ok()
                .map(|t| (self.host.display("etc/kernel/cmdline"), t)),
            Loader::Grub { .. } => {
                let mut text = String::new();
                let mut files = vec!["etc/default/grub".to_string()];
                for f in self.host.list("etc/default/grub.d").unwrap_or_default() {
                    if f.ends_with(".cfg") {
                        files.push(format!("etc/default/grub.d/{f}"));
                    }
                }
                for f in &files {
                    if let Ok(t) = read_bounded(self.host, f) {
                        for l in t.lines() {
                            let l = l.trim();
                            if l.starts_with("GRUB_CMDLINE_LINUX") {
                                text.push_str(l);
                                text.push(' ');
                            }
                        }
                    }
                }
                Some((self.host.display("etc/default/grub"), text))
            }
            Loader::Unknown => None,
        }
    }

    fn check_boot(&mut self) {
        let name = self.boot.name();
        let (status, message, fix) = match self.boot_config_cmdline() {
            None => (
                Status::Warn,
                "no /etc/kernel/cmdline nor /etc/default/grub: cannot tell where this host's kernel flags are set".to_string(),
                Some("systemd-boot hosts (ZFS/UEFI installs) use /etc/kernel/cmdline + proxmox-boot-tool refresh; GRUB hosts /etc/default/grub + update-grub".to_string()),
            ),
            Some((file, text)) => {
                let words: Vec<&str> = text
                    .split(|c: char| c.is_whitespace() || c == '"' || c == '\'')
                    .collect();
                let missing: Vec<&str> = ["intel_iommu=on", "amd_iommu=on", "iommu=pt"]
                    .into_iter()
                    .filter(|f| self.cmdline.iter().any(|t| t == f))
                    .filter(|f| !words.contains(f))
                    .collect();
                if missing.is_empty() {
                    (
                        Status::Pass,
                        format!("this host boots with {name}: kernel flags are set in {file}"),
                        None,
                    )
                } else {
                    (
                        Status::Warn,
                        format!(
                            "this host boots with {name} ({file}), but {} from the running command line {} not there: the next boot loses {}",
                            missing.join(" "),
                            if missing.len() == 1 { "is" } else { "are" },
                            if missing.len() == 1 { "it" } else { "them" }
                        ),
                        Some(self.boot.add_flag(&missing.join(" "))),
                    )
                }
            }
        };
        self.add("boot.loader", status, message, fix);

        if let Some(f) = self.has_flag("pcie_acs_override") {
            let f = f.to_string();
            self.add(
                "boot.acs-override",
                Status::Warn,
                format!("ACS override in use ({f}): IOMMU groups are faked apart, devices are not really isolated (a guest can reach other devices by peer-to-peer DMA); only a last resort"),
                Some(format!("move the card to a slot whose root port has ACS, then {}", self.boot.remove_flag(&f))),
            );
        } else {
            self.add(
                "boot.acs-override",
                Status::Pass,
                "no ACS override: IOMMU groups are what the hardware isolates".into(),
                None,
            );
        }

        let fb: Vec<String> = self
            .cmdline
            .iter()
            .filter(|t| {
                matches!(
                    t.as_str(),
                    "nofb"
                        | "nomodeset"
                        | "video=efifb:off"
                        | "video=simplefb:off"
                        | "video=vesafb:off"
                        | "initcall_blacklist=sysfb_init"
                )
            })
            .cloned()
            .collect();
        if !fb.is_empty() {
            self.add(
                "boot.framebuffer-flags",
                Status::Pass,
                format!(
                    "framebuffer rescue flags in use: {} (they also take the console away from the host; pt-hook's console handoff usually makes them unnecessary)",
                    fb.join(" ")
                ),
                None,
            );
        }
    }

    fn module_listed(&self, m: &str) -> Option<&Line> {
        self.modules_load
            .iter()
            .find(|l| crate::host::paths::module_name(&l.text) == m)
    }

    /// Whether the running kernel ships a module (modules.dep or modules.builtin); None when
    /// there is no module directory to ask.
    fn module_available(&self, m: &str) -> Option<bool> {
        // Releases look like "6.12.117+deb12-amd64" or "6.8.12-4-pve".
        let k = self.kernel.as_deref().filter(|k| {
            !k.is_empty()
                && k.len() <= 128
                && !k.contains("..")
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-+~".contains(&b))
        })?;
        let mut any = false;
        let mut found = false;
        for f in ["modules.dep", "modules.builtin"] {
            let rel = format!("lib/modules/{k}/{f}");
            let Ok(bytes) = self.host.read_bytes(&rel, 4 << 20) else {
                continue;
            };
            any = true;
            let text = String::from_utf8_lossy(&bytes);
            found |= text.lines().any(|l| {
                let path = l.split(':').next().unwrap_or("");
                let base = path.rsplit('/').next().unwrap_or("");
                let stem = base.split(".ko").next().unwrap_or("");
                base.contains(".ko") && crate::host::paths::module_name(stem) == m
            });
        }
        any.then_some(found)
    }

    fn check_modules(&mut self) {
        let mut loaded = Vec::new();
        let mut later = Vec::new();
        let mut missing = Vec::new();
        let mut unknown = Vec::new();
        for m in ["vfio", "vfio_iommu_type1", "vfio_pci"] {
            if self.host.exists(&format!("{}/{m}", paths::SYS_MODULE)) {
                loaded.push(m);
            } else if let Some(l) = self.module_listed(m) {
                later.push(format!("{m} (listed at {})", l.at()));
            } else {
                match self.module_available(m) {
                    Some(true) => later.push(format!("{m} (not loaded; modprobe loads it)")),
                    Some(false) => missing.push(m),
                    None => unknown.push(m),
                }
            }
        }
        let kernel = self.kernel.clone().unwrap_or_else(|| "?".into());
        if !missing.is_empty() {
            self.add(
                "modules.vfio",
                Status::Fail,
                format!(
                    "{} not available for kernel {kernel} (not in modules.dep nor modules.builtin)",
                    missing.join(", ")
                ),
                Some("install the kernel's modules package (proxmox-kernel / linux-image) matching the running kernel".into()),
            );
        } else if !unknown.is_empty() {
            self.add(
                "modules.vfio",
                Status::Warn,
                format!(
                    "{} not loaded, and no module list for kernel {kernel} to tell whether they exist",
                    unknown.join(", ")
                ),
                Some("list vfio, vfio_iommu_type1 and vfio_pci in /etc/modules, then update-initramfs -u -k all".into()),
            );
        } else {
            let mut msg = format!("loaded: {}", loaded.join(", "));
            if loaded.is_empty() {
                msg = "none loaded yet".into();
            }
            if !later.is_empty() {
                msg.push_str(&format!(
                    "; {}; pt-hook's pre-start loads vfio-pci itself",
                    later.join(", ")
                ));
            }
            self.add("modules.vfio", Status::Pass, msg, None);
        }

        // vfio_virqfd was merged into vfio in 6.2: a line for it only makes noise at boot.
        let virqfd: Vec<String> = self
            .modules_load
            .iter()
            .filter(|l| crate::host::paths::module_name(&l.text) == "vfio_virqfd")
            .map(Line::at)
            .collect();
        if !virqfd.is_empty() {
            let new = self
                .kernel
                .as_deref()
                .and_then(kernel_version)
                .is_some_and(|v| v >= (6, 2));
            if new && !self.host.exists("sys/module/vfio_virqfd") {
                self.add(
                    "modules.vfio-virqfd",
                    Status::Warn,
                    format!(
                        "vfio_virqfd is listed at {} but kernel {kernel} has no such module (merged into vfio in 6.2): harmless, but systemd-modules-load reports an error at every boot",
                        virqfd.join(", ")
                    ),
                    Some("remove the vfio_virqfd line, then update-initramfs -u -k all".into()),
                );
            }
        }
    }

    fn check_vfio_ids(&mut self) {
        let opts: Vec<Line> = self
            .modprobe
            .iter()
            .filter(|l| {
                let w: Vec<&str> = l.text.split_whitespace().collect();
                w.first() == Some(&"options")
                    && w.get(1)
                        .is_some_and(|m| crate::host::paths::module_name(m) == "vfio_pci")
            })
            .cloned()
            .collect();
        for l in opts {
            let words: Vec<&str> = l.text.split_whitespace().collect();
            let Some(pos) = words.iter().position(|w| w.starts_with("ids=")) else {
                continue;
            };
            let value = &words[pos]["ids=".len()..];
            // "ids=10de:2786, 10de:22bc": modprobe reads the part after the space as
            // another option.
            let stray: Vec<&str> = words[pos + 1..]
                .iter()
                .filter(|w| !w.contains('='))
                .copied()
                .collect();
            let mut bad = Vec::new();
            let mut ids = Vec::new();
            for item in value.split(',').filter(|s| !s.is_empty()) {
                let vd: Vec<&str> = item.split(':').take(2).collect();
                match PciId::parse(&vd.join(":")) {
                    Some(id) if item.split(':').count() >= 2 => ids.push(id),
                    _ => bad.push(item.to_string()),
                }
            }
            bad.extend(stray.iter().map(|s| s.to_string()));
            if !bad.is_empty() {
                self.add(
                    "modules.vfio-pci-ids",
                    Status::Fail,
                    format!(
                        "{}: vfio-pci ids={value}: {} not vvvv:dddd (comma-separated, no spaces)",
                        l.at(),
                        bad.join(" ")
                    ),
                    Some("write it as one word: options vfio-pci ids=10de:2786,10de:22bc; then update-initramfs -u -k all".into()),
                );
                continue;
            }
            let mut problems = Vec::new();
            for id in &ids {
                let matching: Vec<&DeviceInfo> = self
                    .devices
                    .values()
                    .filter(|d| d.vendor == id.vendor && d.device == id.device)
                    .collect();
                if matching.is_empty() {
                    problems.push(format!("{id} matches no device on this host"));
                }
                for d in matching {
                    if d.boot_vga == Some(true) {
                        problems.push(format!(
                            "{id} claims {}, the GPU the host console boots on",
                            d.bdf
                        ));
                    }
                    if d.is_display() {
                        for f in self.devices.values().filter(|o| {
                            o.bdf.slot() == d.bdf.slot() && o.bdf != d.bdf && !o.is_bridge()
                        }) {
                            let fid = PciId {
                                vendor: f.vendor,
                                device: f.device,
                            };
                            if !ids.contains(&fid) {
                                problems.push(format!(
                                    "{id} lists the GPU {} but not its function {} ({fid})",
                                    d.bdf, f.bdf
                                ));
                            }
                        }
                    }
                }
            }
            if problems.is_empty() {
                self.add(
                    "modules.vfio-pci-ids",
                    Status::Pass,
                    format!("{}: vfio-pci ids={value}", l.at()),
                    None,
                );
            } else {
                self.add(
                    "modules.vfio-pci-ids",
                    Status::Warn,
                    format!("{}: vfio-pci ids={value}: {}", l.at(), problems.join("; ")),
                    Some("list exactly the ids of the devices meant for passthrough, every function of each GPU; pt-hook binds vfio-pci per device at pre-start, so ids= is optional".into()),
                );
            }
        }
    }

    /// Devices some VM config passes (host addresses only; mappings are per node).
    fn configured_owners(&self) -> BTreeMap<Bdf, Vec<u32>> {
        let mut m: BTreeMap<Bdf, Vec<u32>> = BTreeMap::new();
        for vm in &self.vms {
            let Ok(cfg) = &vm.cfg else { continue };
            if cfg.is_template() {
                continue;
            }
            for hp in &cfg.hostpci {
                if let HostSource::Host(addrs) = &hp.source {
                    for a in addrs {
                        for b in self.devices.keys().filter(|b| a.matches(b)) {
                            m.entry(*b).or_default().push(vm.vmid);
                        }
                    }
                }
            }
        }
        m
    }

    fn check_blacklists(&mut self) {
        let mut by_name: BTreeMap<String, Vec<Line>> = BTreeMap::new();
        for l in &self.modprobe {
            let w: Vec<&str> = l.text.split_whitespace().collect();
            if w.first() == Some(&"blacklist") {
                if let Some(n) = w.get(1) {
                    by_name.entry(n.to_string()).or_default().push(l.clone());
                }
            }
        }
        let owners = self.configured_owners();
        let consoles: Vec<&DeviceInfo> = self
            .devices
            .values()
            .filter(|d| d.boot_vga == Some(true))
            .collect();
        let mut fails = Vec::new();
        for d in &consoles {
            if owners.contains_key(&d.bdf) {
                continue; // single-GPU passthrough: the VM takes the console GPU anyway
            }
            for drv in console_drivers(d.vendor) {
                if let Some(lines) = by_name.get(*drv) {
                    fails.push((
                        d.bdf,
                        format!(
                            "blacklist {drv} ({}) keeps the host console GPU {} from its driver: the host loses its display",
                            lines.iter().map(Line::at).collect::<Vec<_>>().join(", "),
                            self.label(&d.bdf)
                        ),
                    ));
                }
            }
        }
        let failed = !fails.is_empty();
        for (b, msg) in fails {
            self.checks.push(Check {
                id: "modules.blacklist",
                status: Status::Fail,
                message: msg,
                fix: Some("remove that blacklist line (pt-hook moves the passthrough GPU to vfio-pci at pre-start, so its host driver need not be blacklisted), then update-initramfs -u -k all".into()),
                device: Some(b),
                vm: None,
            });
        }
        let dups: Vec<String> = by_name
            .iter()
            .filter(|(_, v)| v.len() > 1)
            .map(|(n, v)| {
                format!(
                    "{n} ({})",
                    v.iter().map(Line::at).collect::<Vec<_>>().join(", ")
                )
            })
            .collect();
        if !dups.is_empty() {
            self.add(
                "modules.blacklist-duplicates",
                Status::Warn,
                format!("blacklisted more than once: {}", dups.join("; ")),
                Some("keep one dedicated file (e.g. /etc/modprobe.d/pt-hook-blacklist.conf) instead of appended lines".into()),
            );
        }
        if !failed {
            let gpu: Vec<&String> = by_name
                .keys()
                .filter(|n| {
                    [0x8086, 0x1002, 0x10de]
                        .iter()
                        .any(|v| console_drivers(*v).contains(&n.as_str()))
                })
                .collect();
            self.add(
                "modules.blacklist",
                Status::Pass,
                if gpu.is_empty() {
                    "no GPU driver blacklisted".into()
                } else {
                    format!(
                        "blacklisted GPU drivers ({}) do not drive the host console",
                        gpu.iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
                None,
            );
        }
    }

    // -------------------------------------------------------------------- VM

    fn check_vm(&mut self, idx: usize) {
        let vmid = self.vms[idx].vmid;
        let cfg = match &self.vms[idx].cfg {
            Ok(c) => c.clone(),
            Err(e) => {
                let e = e.clone();
                self.add_vm(
                    vmid,
                    None,
                    "vm.config",
                    Status::Fail,
                    e,
                    Some("fix the line named; Proxmox refuses this config too".into()),
                );
                return;
            }
        };
        let log = crate::log::Logger::new(-3, false);
        let node = self.host.node_name();
        let resolved = match crate::engine::resolve::resolve(self.host, &cfg, &node, &log) {
            Ok(r) => r,
            Err(e) => {
                self.add_vm(
                    vmid,
                    None,
                    "vm.devices",
                    Status::Fail,
                    e.to_string(),
                    Some(
                        "correct the hostpci line (qm set VMID --hostpciN ...) or the mapping"
                            .into(),
                    ),
                );
                return;
            }
        };
        let explicit: Vec<&crate::engine::resolve::Resolved> = resolved
            .iter()
            .filter(|r| r.origin.starts_with("hostpci"))
            .collect();
        let passed: BTreeSet<Bdf> = explicit.iter().map(|r| r.info.bdf).collect();
        self.add_vm(
            vmid,
            None,
            "vm.devices",
            Status::Pass,
            format!(
                "passes {}",
                explicit
                    .iter()
                    .map(|r| self.label(&r.info.bdf))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None,
        );

        let gpus: Vec<&crate::engine::resolve::Resolved> = explicit
            .iter()
            .copied()
            .filter(|r| r.info.is_display())
            .collect();
        self.vm_shared_devices(vmid, &explicit);
        self.vm_iommu_groups(vmid, &explicit, &passed);
        self.vm_in_use(vmid);
        self.vm_console_handoff(vmid, &explicit);
        self.vm_machine_and_pcie(vmid, &cfg, &gpus);
        self.vm_gpu_functions(vmid, &gpus, &passed);
        self.vm_gpu_firmware(vmid, &cfg, &gpus);
        self.vm_romfiles(vmid, &cfg);
        self.vm_memory_and_cpu(vmid, &cfg);
        self.check_hookscript(vmid, &cfg);
        self.check_quirks(vmid, &resolved);
        self.check_identity(vmid, &resolved);
        self.vm_ha_and_workarounds(vmid, &cfg);
    }

    /// A device in two configs.
    fn vm_shared_devices(&mut self, vmid: u32, explicit: &[&crate::engine::resolve::Resolved]) {
        // A device in two configs: only one of the VMs can run at a time.
        let owners = self.configured_owners();
        for r in explicit {
            let others: Vec<u32> = owners
                .get(&r.info.bdf)
                .map(|v| v.iter().copied().filter(|o| *o != vmid).collect())
                .unwrap_or_default();
            if !others.is_empty() {
                self.add_vm(
                    vmid,
                    Some(r.info.bdf),
                    "vm.shared-device",
                    Status::Warn,
                    format!(
                        "{} is also passed by VM {}: only one of them can run at a time (pt-hook refuses the second start)",
                        r.info.bdf,
                        others.iter().map(|o| o.to_string()).collect::<Vec<_>>().join(", ")
                    ),
                    Some("give each VM its own device, or never run them together".into()),
                );
            }
        }
    }

    /// IOMMU group isolation.
    fn vm_iommu_groups(
        &mut self,
        vmid: u32,
        explicit: &[&crate::engine::resolve::Resolved],
        passed: &BTreeSet<Bdf>,
    ) {
        // IOMMU group isolation: Proxmox moves every member of the group to vfio-pci.
        let mut done_groups = BTreeSet::new();
        for r in explicit {
            let b = r.info.bdf;
            let Some(g) = r.info.iommu_group else {
                self.add_vm(
                    vmid,
                    Some(b),
                    "vm.iommu-group",
                    Status::Fail,
                    format!(
                        "{b} has no IOMMU group (the IOMMU is off): it cannot be passed through"
                    ),
                    Some("turn the IOMMU on (see iommu.enabled)".into()),
                );
                continue;
            };
            if !done_groups.insert(g) {
                continue;
            }
            let others: Vec<Bdf> = device::group_members(self.host, g)
                .into_iter()
                .filter(|m| !passed.contains(m))
                .filter(|m| self.devices.get(m).is_some_and(|d| !d.is_bridge()))
                .collect();
            if others.is_empty() {
                self.add_vm(
                    vmid,
                    Some(b),
                    "vm.iommu-group",
                    Status::Pass,
                    format!("{b}: IOMMU group {g} holds only devices this VM passes (and bridges)"),
                    None,
                );
                continue;
            }
            // A group member the host uses is named with its use (the management NIC...).
            let users = crate::engine::guard::scan(
                self.host,
                &others,
                &crate::engine::guard::Opts {
                    me: Some(&crate::engine::state::VmKey::Pve(vmid)),
                    node: &self.host.node_name(),
                },
            );
            let mut desc = Vec::new();
            for o in &others {
                let mut s = self.label(o);
                if let Some(u) = users.uses_of(o).first() {
                    s.push_str(&format!(" — {u}"));
                }
                desc.push(s);
            }
            self.add_vm(
                vmid,
                Some(b),
                "vm.iommu-group",
                Status::Fail,
                format!(
                    "{b} shares IOMMU group {g} with {}, which this VM does not pass: starting it moves {} to vfio-pci and the host loses {}",
                    desc.join(", "),
                    if others.len() == 1 { "that device" } else { "those devices" },
                    if others.len() == 1 { "it" } else { "them" }
                ),
                Some("put the card in a slot whose root port isolates it (its own IOMMU group), or pass every device of the group to this VM; pcie_acs_override only fakes isolation".into()),
            );
        }
    }

    /// Devices the host or another VM uses.
    fn vm_in_use(&mut self, vmid: u32) {
        // Devices the host or another VM uses: pre-start's own refusal, in its words.
        // One check per function, its refusal lines joined.
        if let Ok(p) = (self.planner)(vmid) {
            let mut by_dev: BTreeMap<Option<Bdf>, Vec<String>> = BTreeMap::new();
            for r in &p.refusals {
                let dev = r
                    .split_whitespace()
                    .find_map(|w| Bdf::parse(w.trim_end_matches(':')).ok());
                by_dev.entry(dev).or_default().push(r.clone());
            }
            for (dev, lines) in by_dev {
                self.add_vm(
                    vmid,
                    dev,
                    "vm.in-use",
                    Status::Fail,
                    lines.join("; "),
                    Some(p.fixes.join("; ")),
                );
            }
        }
    }

    /// Single-GPU handoff: another way in.
    fn vm_console_handoff(&mut self, vmid: u32, explicit: &[&crate::engine::resolve::Resolved]) {
        // Single-GPU handoff: the local console goes away, so another way in must exist.
        if let Some(g) = explicit
            .iter()
            .find(|r| r.info.is_display() && r.info.boot_vga == Some(true))
        {
            let b = g.info.bdf;
            match sshd_running(self.host) {
                Some(pid) => self.add_vm(
                    vmid,
                    Some(b),
                    "vm.console-access",
                    Status::Pass,
                    format!("the VM takes the host console GPU {b}; sshd is running (pid {pid}) for another way in"),
                    None,
                ),
                None => self.add_vm(
                    vmid,
                    Some(b),
                    "vm.console-access",
                    Status::Warn,
                    format!("the VM takes the host console GPU {b} (boot_vga) and no sshd is running: while it runs the host has no local console and no SSH"),
                    Some("systemctl enable --now ssh (or make sure IPMI/BMC access works) before starting it".into()),
                ),
            }
        }
    }

    /// machine: q35, pcie=1 and x-vga on the hostpci lines.
    fn vm_machine_and_pcie(
        &mut self,
        vmid: u32,
        cfg: &VmConfig,
        gpus: &[&crate::engine::resolve::Resolved],
    ) {
        let machine = cfg.get("machine").unwrap_or("");
        let q35 = machine.contains("q35");
        let pcie_entries: Vec<String> = cfg
            .hostpci
            .iter()
            .filter(|h| h.pcie)
            .map(|h| h.key())
            .collect();
        let machine_desc = if machine.is_empty() {
            "no machine: line (i440fx)".to_string()
        } else {
            format!("machine: {machine}")
        };
        if q35 {
            self.add_vm(vmid, None, "vm.machine", Status::Pass, machine_desc, None);
        } else if !pcie_entries.is_empty() {
            self.add_vm(
                vmid,
                None,
                "vm.machine",
                Status::Fail,
                format!(
                    "{machine_desc} but {} set pcie=1: Proxmox refuses to start it (pcie needs q35)",
                    pcie_entries.join(", ")
                ),
                Some(format!("qm set {vmid} --machine q35 (the guest sees new hardware once)")),
            );
        } else if !gpus.is_empty() {
            self.add_vm(
                vmid,
                None,
                "vm.machine",
                Status::Warn,
                format!(
                    "{machine_desc}: a GPU on i440fx has no PCIe topology (drivers may misbehave)"
                ),
                Some(format!(
                    "qm set {vmid} --machine q35, then set pcie=1 on the GPU's hostpci"
                )),
            );
        } else {
            self.add_vm(
                vmid,
                None,
                "vm.machine",
                Status::Pass,
                format!("{machine_desc} (no GPU, no pcie=1)"),
                None,
            );
        }

        for hp in &cfg.hostpci {
            let key = hp.key();
            let gpu = gpus
                .iter()
                .find(|r| r.origin == key || r.origin.starts_with(&format!("{key} (")));
            let Some(gpu) = gpu else { continue };
            if hp.pcie {
                self.add_vm(
                    vmid,
                    Some(gpu.info.bdf),
                    "vm.pcie",
                    Status::Pass,
                    format!("{key}: GPU {} passed with pcie=1", gpu.info.bdf),
                    None,
                );
            } else {
                self.add_vm(
                    vmid,
                    Some(gpu.info.bdf),
                    "vm.pcie",
                    Status::Warn,
                    format!("{key}: GPU {} passed without pcie=1 (it appears on a plain PCI bus; modern drivers expect PCIe)", gpu.info.bdf),
                    Some(format!(
                        "{}qm set {vmid} --{key} <same value>,pcie=1",
                        if q35 { "" } else { "switch to machine: q35, then " }
                    )),
                );
            }
            if hp.x_vga && cfg.get("vga") != Some("none") {
                self.add_vm(
                    vmid,
                    Some(gpu.info.bdf),
                    "vm.x-vga",
                    Status::Warn,
                    format!(
                        "{key}: x-vga=1 makes the GPU the primary display, but vga is {:?} (an emulated display stays primary)",
                        cfg.get("vga").unwrap_or("default")
                    ),
                    Some(format!("qm set {vmid} --vga none")),
                );
            }
        }
    }

    /// Every function of a passed GPU goes with it.
    fn vm_gpu_functions(
        &mut self,
        vmid: u32,
        gpus: &[&crate::engine::resolve::Resolved],
        passed: &BTreeSet<Bdf>,
    ) {
        // Every function of a passed GPU goes with it (the audio function above all).
        for g in gpus {
            let missing: Vec<Bdf> = self
                .devices
                .values()
                .filter(|d| d.bdf.slot() == g.info.bdf.slot() && !d.is_bridge())
                .map(|d| d.bdf)
                .filter(|b| !passed.contains(b))
                .collect();
            let b = g.info.bdf;
            if missing.is_empty() {
                self.add_vm(
                    vmid,
                    Some(b),
                    "vm.all-functions",
                    Status::Pass,
                    format!("every function of the GPU {b} is passed"),
                    None,
                );
            } else {
                self.add_vm(
                    vmid,
                    Some(b),
                    "vm.all-functions",
                    Status::Warn,
                    format!(
                        "the GPU {b} is passed without {} of its functions: {} (a missing audio function is the most common cause of Code 43 and black screens)",
                        if missing.len() == 1 { "one" } else { "some" },
                        missing.iter().map(|m| self.label(m)).collect::<Vec<_>>().join(", ")
                    ),
                    Some(format!(
                        "pass the whole device: hostpciN: {:04x}:{:02x}:{:02x} (no function), pcie=1",
                        b.domain, b.bus, b.dev
                    )),
                );
            }
        }
    }

    /// What a passed GPU needs from the VM config.
    fn vm_gpu_firmware(
        &mut self,
        vmid: u32,
        cfg: &VmConfig,
        gpus: &[&crate::engine::resolve::Resolved],
    ) {
        if !gpus.is_empty() {
            match cfg.get("bios") {
                Some("ovmf") if cfg.get("efidisk0").is_none() => self.add_vm(
                    vmid,
                    None,
                    "vm.bios",
                    Status::Warn,
                    "bios: ovmf without efidisk0: UEFI settings are lost at every start".into(),
                    Some(format!("qm set {vmid} --efidisk0 <storage>:1,efitype=4m")),
                ),
                Some("ovmf") => self.add_vm(
                    vmid,
                    None,
                    "vm.bios",
                    Status::Pass,
                    "bios: ovmf with efidisk0".into(),
                    None,
                ),
                other => self.add_vm(
                    vmid,
                    None,
                    "vm.bios",
                    Status::Warn,
                    format!(
                        "bios: {} with a passed GPU: modern GPUs want UEFI (SeaBIOS only for ROMs without UEFI support)",
                        other.unwrap_or("seabios (default)")
                    ),
                    Some(format!("qm set {vmid} --bios ovmf --efidisk0 <storage>:1,efitype=4m (the guest OS must boot with UEFI)")),
                ),
            }
            let cpu = cfg.get("cpu").unwrap_or("");
            let cpu_type = cpu
                .split(',')
                .find(|p| !p.contains('=') || p.starts_with("cputype="))
                .map(|p| p.trim_start_matches("cputype="))
                .unwrap_or("");
            if cpu_type == "host" {
                self.add_vm(vmid, None, "vm.cpu", Status::Pass, "cpu: host".into(), None);
            } else {
                self.add_vm(
                    vmid,
                    None,
                    "vm.cpu",
                    Status::Warn,
                    format!(
                        "cpu: {} with a passed GPU: GPU drivers and tools expect the host CPU model",
                        if cpu.is_empty() { "default (x86-64-v2-AES / kvm64)" } else { cpu }
                    ),
                    Some(format!("qm set {vmid} --cpu host")),
                );
            }
        }
    }

    /// romfile= files exist.
    fn vm_romfiles(&mut self, vmid: u32, cfg: &VmConfig) {
        for hp in &cfg.hostpci {
            let Some(rom) = &hp.romfile else { continue };
            let rel = if let Some(abs) = rom.strip_prefix('/') {
                abs.to_string()
            } else {
                format!("usr/share/kvm/{rom}")
            };
            let ok = !rom.split('/').any(|c| c == "..") && self.host.exists(&rel);
            if ok {
                self.add_vm(
                    vmid,
                    None,
                    "vm.romfile",
                    Status::Pass,
                    format!("{}: romfile {rom} exists", hp.key()),
                    None,
                );
            } else {
                self.add_vm(
                    vmid,
                    None,
                    "vm.romfile",
                    Status::Fail,
                    format!(
                        "{}: romfile {rom} not found ({})",
                        hp.key(),
                        self.host.display(&rel)
                    ),
                    Some(
                        "put the ROM in /usr/share/kvm/ and name it relative to that directory"
                            .into(),
                    ),
                );
            }
            if !hp.rombar {
                self.add_vm(
                    vmid,
                    None,
                    "vm.romfile",
                    Status::Warn,
                    format!(
                        "{}: romfile set but rombar=0: the ROM is never shown to the guest",
                        hp.key()
                    ),
                    Some("drop rombar=0".into()),
                );
            }
        }
    }

    /// balloon and the rest of the VM's settings.
    fn vm_memory_and_cpu(&mut self, vmid: u32, cfg: &VmConfig) {
        match cfg.get("balloon") {
            Some("0") => self.add_vm(
                vmid,
                None,
                "vm.balloon",
                Status::Pass,
                "balloon: 0 (memory ballooning off)".into(),
                None,
            ),
            other => self.add_vm(
                vmid,
                None,
                "vm.balloon",
                Status::Warn,
                format!(
                    "memory ballooning is on (balloon: {}): with passthrough all guest memory is pinned anyway, and the balloon driver only fights it",
                    other.unwrap_or("default")
                ),
                Some(format!("qm set {vmid} --balloon 0")),
            ),
        }
    }

    /// HA membership and leftover Code 43 workarounds.
    fn vm_ha_and_workarounds(&mut self, vmid: u32, cfg: &VmConfig) {
        if let Ok(text) = read_bounded(self.host, "etc/pve/ha/resources.cfg") {
            let ours = text.lines().any(|l| {
                l.split_once(':')
                    .is_some_and(|(k, v)| k.trim() == "vm" && v.trim() == vmid.to_string())
            });
            if ours {
                self.add_vm(
                    vmid,
                    None,
                    "vm.ha",
                    Status::Warn,
                    "the VM is an HA resource, but a VM with passed-through devices cannot migrate: HA can only restart it on this node".into(),
                    Some(format!("ha-manager remove vm:{vmid}, or use resource mappings on every node of the HA group")),
                );
            }
        }

        let args = format!(
            "{} {}",
            cfg.get("args").unwrap_or(""),
            cfg.get("cpu").unwrap_or("")
        );
        let leftovers: Vec<&str> = ["kvm=off", "hv_vendor_id", "hv-vendor-id", "hidden=1"]
            .into_iter()
            .filter(|w| args.contains(w))
            .collect();
        if !leftovers.is_empty() {
            self.add_vm(
                vmid,
                None,
                "vm.nvidia-workarounds",
                Status::Warn,
                format!(
                    "Code 43 workarounds in args/cpu ({}): unnecessary with NVIDIA drivers 465 and later",
                    leftovers.join(", ")
                ),
                Some("remove them unless the guest runs an NVIDIA driver older than 465".into()),
            );
        }
    }

    fn check_hookscript(&mut self, vmid: u32, cfg: &VmConfig) {
        let Some(hs) = cfg.get("hookscript") else {
            self.add_vm(
                vmid,
                None,
                "vm.hookscript",
                Status::Warn,
                "no hookscript: nothing unbinds the host driver cleanly before start, and the devices stay on vfio-pci after the VM stops".into(),
                Some(install_hint(vmid, "local")),
            );
            return;
        };
        let parsed = hs
            .split_once(':')
            .and_then(|(st, p)| Some((st, p.strip_prefix("snippets/")?)))
            .filter(|(st, name)| {
                paths::safe_name(st) && paths::safe_name(name) && !name.contains('/')
            });
        let Some((storage, name)) = parsed else {
            self.add_vm(
                vmid,
                None,
                "vm.hookscript",
                Status::Fail,
                format!("hookscript: {hs} is not STORAGE:snippets/NAME"),
                Some(format!("qm set {vmid} --hookscript local:snippets/pt-hook")),
            );
            return;
        };
        let dir = match snippets_base(self.host, storage) {
            Ok(d) => d,
            Err(why) => {
                self.add_vm(
                    vmid,
                    None,
                    "vm.hookscript",
                    Status::Warn,
                    format!("hookscript: {hs}: {why}; cannot check the snippet"),
                    None,
                );
                return;
            }
        };
        let rel = format!("{dir}/snippets/{name}");
        let shown = self.host.display(&rel);
        match self.host.stat_owner_mode(&rel) {
            Err(_) => self.add_vm(
                vmid,
                None,
                "vm.hookscript",
                Status::Fail,
                format!(
                    "hookscript: {hs}, but {shown} does not exist: Proxmox refuses to start the VM"
                ),
                Some(install_hint(vmid, storage)),
            ),
            Ok((_, mode)) if mode & 0o111 == 0 => self.add_vm(
                vmid,
                None,
                "vm.hookscript",
                Status::Fail,
                format!("hookscript: {hs}, but {shown} is not executable"),
                Some(format!("chmod 755 /{rel}")),
            ),
            Ok(_) => {
                let target = self
                    .host
                    .link_name(&rel)
                    .unwrap_or_else(|_| name.to_string());
                if name.contains("pt-hook") || target.contains("pt-hook") {
                    self.add_vm(
                        vmid,
                        None,
                        "vm.hookscript",
                        Status::Pass,
                        format!("hookscript: {hs} ({shown})"),
                        None,
                    );
                } else {
                    self.add_vm(
                        vmid,
                        None,
                        "vm.hookscript",
                        Status::Warn,
                        format!("hookscript: {hs} ({shown}) is not pt-hook: pt-hook does not prepare nor restore this VM's devices unless that script calls it"),
                        Some("make the script call `pt-hook \"$1\" \"$2\"`, or point hookscript at a pt-hook snippet".into()),
                    );
                }
            }
        }
    }

    /// Address drift: the named addresses hold what they held at the VM's last good start.
    fn check_identity(&mut self, vmid: u32, resolved: &[crate::engine::resolve::Resolved]) {
        match crate::engine::identity::doctor_drift(self.host, vmid, resolved) {
            Ok(None) => {}
            Ok(Some(drift)) if drift.is_empty() => self.add_vm(
                vmid,
                None,
                "vm.identity",
                Status::Pass,
                "the PCI addresses hold the devices they held at the last start".into(),
                None,
            ),
            Ok(Some(drift)) => {
                for d in drift {
                    self.add_vm(
                        vmid,
                        Some(d.bdf),
                        "vm.identity",
                        Status::Fail,
                        d.message,
                        Some(format!(
                            "if the addresses moved: {}; if you replaced the card on purpose: {}",
                            d.fix, d.accept
                        )),
                    );
                }
            }
            Err(w) => self.add_vm(
                vmid,
                None,
                "vm.identity",
                Status::Warn,
                w,
                Some("nothing to do: the next successful start rewrites it".into()),
            ),
        }
    }

    fn check_quirks(&mut self, vmid: u32, resolved: &[crate::engine::resolve::Resolved]) {
        // One finding per profile and slot: a GPU's functions share one profile.
        let mut seen = BTreeSet::new();
        for r in resolved.iter().filter(|r| !r.keep) {
            let Some(p) = quirks::find(&self.profiles, &r.info).cloned() else {
                continue;
            };
            let b = r.info.bdf;
            if !seen.insert((p.name.clone(), b.slot())) {
                continue;
            }
            let available = p
                .requires_module
                .as_deref()
                .and_then(|m| self.module_available(m));
            if let (Some(m), Some(true)) = (&p.requires_module, available) {
                if quirks::module_missing(self.host, &p).is_some() {
                    self.add_vm(
                        vmid,
                        Some(b),
                        "vm.quirk",
                        Status::Warn,
                        format!("{b}: quirk {}: {m} is installed but not loaded; pre-start loads it", p.name),
                        Some(format!("add {m} to /etc/modules so it is loaded at boot, before amdgpu touches the card")),
                    );
                    continue;
                }
            }
            if let Some(m) = quirks::module_missing(self.host, &p) {
                self.add_vm(
                    vmid,
                    Some(b),
                    "vm.quirk",
                    Status::Fail,
                    format!("{b}: {m}"),
                    Some("apt install pve-headers dkms; build and install vendor-reset (github.com/gnif/vendor-reset), add vendor_reset to /etc/modules, update-initramfs -u -k all".into()),
                );
            } else if p.name == "nvidia-blackwell" {
                let d3 = read_trim(self.host, "sys/module/vfio_pci/parameters/disable_idle_d3")
                    .is_some_and(|v| v == "Y")
                    || self.modprobe.iter().any(|l| {
                        let w: Vec<&str> = l.text.split_whitespace().collect();
                        w.first() == Some(&"options")
                            && w.get(1)
                                .is_some_and(|m| crate::host::paths::module_name(m) == "vfio_pci")
                            && w.contains(&"disable_idle_d3=1")
                    });
                self.add_vm(
                    vmid,
                    Some(b),
                    "vm.quirk",
                    Status::Warn,
                    format!(
                        "{b}: NVIDIA Blackwell ({}): these cards can fail to come back from a function-level reset (\"not ready 65535ms after FLR\"); pt-hook never uses FLR on them, keeps every function awake, resets the slot instead and checks config space and link width after each stop{}",
                        p.name,
                        if d3 { "; vfio-pci disable_idle_d3=1 is set" } else { "" }
                    ),
                    (!d3).then(|| "add `options vfio-pci disable_idle_d3=1` to /etc/modprobe.d/vfio.conf, then update-initramfs -u -k all".into()),
                );
            } else if p.requires_module.is_some() {
                self.add_vm(
                    vmid,
                    Some(b),
                    "vm.quirk",
                    Status::Pass,
                    format!(
                        "{b}: quirk {}: {} loaded",
                        p.name,
                        p.requires_module.as_deref().unwrap_or("")
                    ),
                    None,
                );
            } else if !p.companion {
                self.add_vm(
                    vmid,
                    Some(b),
                    "vm.quirk",
                    Status::Pass,
                    format!("{b}: quirk {} applies: {}", p.name, p.description),
                    None,
                );
            }
        }
    }
}

/// The fix for a missing hookscript: `pt-hook install` links pt-hook into the storage's
/// snippets (and checks the storage allows them), then the VM points at it.
fn install_hint(vmid: u32, storage: &str) -> String {
    format!(
        "pt-hook install --storage {storage} --vmid {vmid}; qm set {vmid} --hookscript {storage}:snippets/{}",
        crate::cmd::install::LINK_NAME
    )
}

/// The host-relative directory of a Proxmox storage, from /etc/pve/storage.cfg as
/// `pt-hook install` reads it. Without storage.cfg (or without a `local` entry in it),
/// `local` is Proxmox's built-in /var/lib/vz. The error says why there is none.
fn snippets_base(host: &dyn Host, storage: &str) -> std::result::Result<String, String> {
    const LOCAL: &str = "var/lib/vz";
    let (file, all) = match crate::cmd::install::read_storage_cfg(host) {
        Ok(Some(v)) => v,
        Ok(None) if storage == "local" => return Ok(LOCAL.to_string()),
        Ok(None) => {
            return Err(format!(
                "{} does not exist, so storage {storage} is unknown",
                host.display(crate::cmd::install::STORAGE_CFG)
            ))
        }
        Err(e) => return Err(e.to_string()),
    };
    let Some(st) = all.iter().find(|s| s.id == storage) else {
        if storage == "local" {
            return Ok(LOCAL.to_string());
        }
        return Err(format!("{file}: no storage {storage:?}"));
    };
    match st.dir_rel(&file) {
        Ok(Some(d)) => Ok(d),
        Ok(None) => Err(format!(
            "{file}:{}: storage {storage} is of type {} and has no directory",
            st.line, st.kind
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// The pid of a running sshd: its pid file, else a scan of /proc/*/comm.
fn sshd_running(host: &dyn Host) -> Option<u32> {
    for f in ["run/sshd.pid", "var/run/sshd.pid"] {
        if let Some(pid) = read_trim(host, f).and_then(|p| p.parse::<u32>().ok()) {
            if pid > 0 && host.exists(&format!("proc/{pid}")) {
                return Some(pid);
            }
        }
    }
    let procs = host.list("proc").unwrap_or_default();
    procs
        .iter()
        .filter_map(|p| p.parse::<u32>().ok())
        .take(65536)
        .find(|pid| read_trim(host, &format!("proc/{pid}/comm")).is_some_and(|c| c == "sshd"))
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
    let mut d = Doctor {
        host,
        checks: Vec::new(),
        cmdline: read_trim(host, "proc/cmdline")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        boot: Loader::detect(host),
        names: pciids::load(host, &want),
        devices,
        profiles: quirks::load_all(host, cfg)?,
        modprobe: config_lines(host, &[], "etc/modprobe.d"),
        modules_load: config_lines(host, &["etc/modules"], "etc/modules-load.d"),
        vms,
        kernel: read_trim(host, "proc/sys/kernel/osrelease"),
        iommu_units: host.list("sys/class/iommu").unwrap_or_default(),
        planner,
    };
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
        assert_eq!(status(&r, "vm.ha", Some(100)), Status::Warn);
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
