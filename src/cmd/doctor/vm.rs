//! doctor's VM checks, one function per concern: devices, IOMMU groups, devices in use,
//! console handoff, machine and PCIe, GPU functions and firmware, romfiles, memory and CPU,
//! leftover workarounds, hookscript, quirks, address drift (HA and migration: `cluster.rs`).

use super::*;

impl Doctor<'_> {
    // -------------------------------------------------------------------- VM

    pub(super) fn check_vm(&mut self, idx: usize) {
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
                // A mapping without an entry for this node fails above; the other nodes
                // are still worth checking.
                self.vm_cluster(vmid, &cfg);
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
    pub(super) fn vm_shared_devices(
        &mut self,
        vmid: u32,
        explicit: &[&crate::engine::resolve::Resolved],
    ) {
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
    pub(super) fn vm_iommu_groups(
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
                    own_processes_hold: false,
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
    pub(super) fn vm_in_use(&mut self, vmid: u32) {
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
    pub(super) fn vm_console_handoff(
        &mut self,
        vmid: u32,
        explicit: &[&crate::engine::resolve::Resolved],
    ) {
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
    pub(super) fn vm_machine_and_pcie(
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
    pub(super) fn vm_gpu_functions(
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
    pub(super) fn vm_gpu_firmware(
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
    pub(super) fn vm_romfiles(&mut self, vmid: u32, cfg: &VmConfig) {
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
    pub(super) fn vm_memory_and_cpu(&mut self, vmid: u32, cfg: &VmConfig) {
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

    /// Leftover Code 43 workarounds (HA and migration: `cluster.rs`).
    pub(super) fn vm_ha_and_workarounds(&mut self, vmid: u32, cfg: &VmConfig) {
        self.vm_cluster(vmid, cfg);
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

    pub(super) fn check_hookscript(&mut self, vmid: u32, cfg: &VmConfig) {
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
    pub(super) fn check_identity(
        &mut self,
        vmid: u32,
        resolved: &[crate::engine::resolve::Resolved],
    ) {
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

    pub(super) fn check_quirks(
        &mut self,
        vmid: u32,
        resolved: &[crate::engine::resolve::Resolved],
    ) {
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
