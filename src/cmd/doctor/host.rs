//! doctor's host checks: IOMMU, interrupt remapping, bootloader flags, vfio modules, vfio-pci
//! ids and blacklists.

use super::*;

impl Doctor<'_> {
    // ------------------------------------------------------------------ host

    pub(super) fn check_iommu(&mut self) {
        let groups = self
            .host
            .list(paths::IOMMU_GROUPS)
            .map(|v| v.len())
            .unwrap_or(0);
        let cpu = read_trim(self.host, "proc/cpuinfo").unwrap_or_default();
        // Intel's VT-d driver needs intel_iommu=on on kernels built without
        // CONFIG_INTEL_IOMMU_DEFAULT_ON. The AMD IOMMU driver is on by default and
        // `amd_iommu=` has no "on" value (only off, force_enable, force_isolation, fullflush,
        // pgtbl_v1/v2, ...): the kernel logs "AMD-Vi: Unknown option" and ignores it.
        let amd = cpu.contains("AuthenticAMD") || cpu.contains("HygonGenuine");
        let vendor_fw = if amd {
            "the IOMMU (AMD-Vi, sometimes called \"IOMMU\" or \"AMD CBS > NBIO > IOMMU\") and SVM"
        } else {
            "VT-d and VT-x"
        };
        let off = ["intel_iommu=off", "amd_iommu=off", "iommu=off"]
            .into_iter()
            .find(|f| self.cmdline.iter().any(|t| t == f));
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
            let then = match (amd, off) {
                (_, Some(f)) => self.boot.remove_flag(f),
                (true, None) => {
                    "reboot: the kernel enables the AMD IOMMU by default, no kernel flag is needed"
                        .to_string()
                }
                (false, None) => self.boot.add_flag("intel_iommu=on"),
            };
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
                    "enable {vendor_fw} in the firmware setup, then {then}"
                )),
            );
        }

        let active = !self.iommu_units.is_empty();
        let has = |f: &str| self.cmdline.iter().any(|t| t == f);
        match off {
            Some(f) => self.add(
                "iommu.cmdline",
                Status::Fail,
                format!("the kernel command line turns the IOMMU off ({f})"),
                Some(self.boot.remove_flag(f)),
            ),
            None if amd && has("amd_iommu=on") => self.add(
                "iommu.cmdline",
                Status::Warn,
                "amd_iommu=on is not a kernel option (the AMD IOMMU is on by default; the kernel ignores it with \"AMD-Vi: Unknown option\"); harmless, but it does nothing".into(),
                Some(self.boot.remove_flag("amd_iommu=on")),
            ),
            None if amd => self.add(
                "iommu.cmdline",
                if active { Status::Pass } else { Status::Warn },
                if active {
                    "no IOMMU flag on the kernel command line: none is needed, the AMD IOMMU is on by default and active".into()
                } else {
                    "nothing on the kernel command line turns the AMD IOMMU off (it is on by default): it must be the firmware setup".into()
                },
                None,
            ),
            None if has("intel_iommu=on") => self.add(
                "iommu.cmdline",
                Status::Pass,
                "intel_iommu=on on the kernel command line".into(),
                None,
            ),
            None => self.add(
                "iommu.cmdline",
                if active { Status::Warn } else { Status::Fail },
                format!(
                    "intel_iommu=on is not on the kernel command line{}",
                    if active {
                        " (this kernel enabled VT-d by default; the explicit flag keeps it on with kernels that do not)"
                    } else {
                        ""
                    }
                ),
                Some(self.boot.add_flag("intel_iommu=on")),
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

    pub(super) fn check_interrupt_remapping(&mut self) {
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
    pub(super) fn boot_config_cmdline(&self) -> Option<(String, String)> {
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

    pub(super) fn check_boot(&mut self) {
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
                let missing: Vec<&str> = ["intel_iommu=on", "iommu=pt"]
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

    pub(super) fn module_listed(&self, m: &str) -> Option<&Line> {
        self.modules_load
            .iter()
            .find(|l| crate::host::paths::module_name(&l.text) == m)
    }

    /// Whether the running kernel ships a module (modules.dep or modules.builtin); None when
    /// there is no module directory to ask.
    pub(super) fn module_available(&self, m: &str) -> Option<bool> {
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

    pub(super) fn check_modules(&mut self) {
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

    pub(super) fn check_vfio_ids(&mut self) {
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
    pub(super) fn configured_owners(&self) -> BTreeMap<Bdf, Vec<u32>> {
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

    pub(super) fn check_blacklists(&mut self) {
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
}
