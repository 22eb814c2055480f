//! Quirk profiles as data: the built-in table (src/quirks.toml, embedded) plus user files in
//! quirks.d/*.toml and `[[quirk]]` in pt-hook.toml (cluster-wide in /etc/pve/pt-hook, then
//! local in /etc/pt-hook), which override by name. The config load reads the files.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::plan::PlannedDevice;
use crate::error::{Error, Result};
use crate::host::{paths, Host};
use crate::parse::config::{Config, QuirkSource};
use crate::sysfs::device::DeviceInfo;

const BUILTIN: &str = include_str!("quirks.toml");

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub vendor: String,
    pub devices: Vec<String>,
    /// Comma-separated hex prefixes of the class code ("03", "040300").
    pub class: Option<String>,
    pub subsystem_vendor: Option<String>,
    pub subsystem_device: Option<String>,
    #[serde(default)]
    pub reset_method: Vec<String>,
    #[serde(default)]
    pub reset_method_only: bool,
    #[serde(default)]
    pub reset_method_remove: Vec<String>,
    pub d3cold_allowed: Option<String>,
    pub power_control: Option<String>,
    /// Advise vfio-pci's disable_idle_d3=1 (keeps idle devices out of D3 on the host).
    #[serde(default)]
    pub vfio_disable_idle_d3: bool,
    pub requires_module: Option<String>,
    #[serde(default)]
    pub skip_rungs: Vec<String>,
    pub host_rebind_wait: Option<String>,
    /// The host driver whose probe is the reset (host-rebind profiles); default: the
    /// device's original driver.
    pub host_driver: Option<String>,
    #[serde(default)]
    pub companion: bool,
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Where it came from ("built-in", or a file).
    #[serde(default, skip_deserializing)]
    pub source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    quirk: Vec<Profile>,
}

fn hex16(s: &str) -> Option<u16> {
    u16::from_str_radix(s.trim_start_matches("0x"), 16)
        .ok()
        .filter(|_| !s.is_empty() && s.len() <= 6)
}

impl Profile {
    fn validate(&self, file: &str) -> std::result::Result<(), String> {
        let bad = |what: &str| Err(format!("{file}: quirk {:?}: {what}", self.name));
        if self.name.is_empty() || !paths::safe_name(&self.name) {
            return bad("name must be letters, digits, - or _");
        }
        if hex16(&self.vendor).is_none() {
            return bad("vendor must be a 4-digit hex id");
        }
        for d in &self.devices {
            let ok = match d.split_once('-') {
                Some((a, b)) => hex16(a).zip(hex16(b)).is_some_and(|(a, b)| a <= b),
                None => hex16(d).is_some(),
            };
            if !ok {
                return bad(&format!("device {d:?} is not a hex id or range a-b"));
            }
        }
        use crate::pci::RESET_METHODS as METHODS;
        for m in self.reset_method.iter().chain(&self.reset_method_remove) {
            if !METHODS.contains(&m.as_str()) {
                return bad(&format!("unknown reset method {m:?}"));
            }
        }
        for r in &self.skip_rungs {
            if !["function-reset", "bus-reset", "remove-rescan"].contains(&r.as_str()) {
                return bad(&format!("unknown rung {r:?}"));
            }
        }
        if let Some(w) = &self.host_rebind_wait {
            if humantime::parse_duration(w).is_err() {
                return bad(&format!("host_rebind_wait {w:?} is not a duration"));
            }
        }
        if let Some(d) = &self.host_driver {
            if !paths::safe_name(d) {
                return bad("host_driver is not a driver name");
            }
        }
        if let Some(m) = &self.requires_module {
            if !paths::safe_name(m) {
                return bad("requires_module is not a module name");
            }
        }
        Ok(())
    }

    pub fn matches(&self, d: &DeviceInfo) -> bool {
        if hex16(&self.vendor) != Some(d.vendor) {
            return false;
        }
        let id_ok = self.devices.iter().any(|e| match e.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (hex16(a).unwrap_or(1), hex16(b).unwrap_or(0));
                (a..=b).contains(&d.device)
            }
            None => hex16(e) == Some(d.device),
        });
        if !id_ok {
            return false;
        }
        if let Some(c) = &self.class {
            let cls = d.class_hex();
            if !c.split(',').any(|p| cls.starts_with(p.trim())) {
                return false;
            }
        }
        if let Some(sv) = &self.subsystem_vendor {
            if hex16(sv) != d.subsystem_vendor {
                return false;
            }
        }
        if let Some(sd) = &self.subsystem_device {
            if hex16(sd) != d.subsystem_device {
                return false;
            }
        }
        true
    }

    /// The reset_method list to write for a device that lists `current`, or None to leave it.
    pub fn planned_reset_method(&self, current: Option<&str>) -> Option<String> {
        let current = current?;
        if self.reset_method.is_empty() && self.reset_method_remove.is_empty() {
            return None;
        }
        let mut list: Vec<String> = self.reset_method.clone();
        if !self.reset_method_only {
            for m in current.split_whitespace() {
                if !list.iter().any(|x| x == m) {
                    list.push(m.to_string());
                }
            }
        }
        list.retain(|m| !self.reset_method_remove.contains(m));
        Some(list.join(" "))
    }

    pub fn rebind_wait(&self) -> Option<Duration> {
        self.host_rebind_wait
            .as_deref()
            .and_then(|w| humantime::parse_duration(w).ok())
    }
}

pub(crate) fn parse_file(text: &str, file: &str) -> Result<Vec<Profile>> {
    let f: File = toml::from_str(text).map_err(|e| {
        Error::Config(format!(
            "{file}:{}: {}",
            crate::parse::config::line_of(text, e.span()),
            e.message()
        ))
    })?;
    let mut v = f.quirk;
    for p in &mut v {
        p.validate(file).map_err(Error::Config)?;
        p.source = file.to_string();
    }
    Ok(v)
}

pub fn builtin() -> Vec<Profile> {
    let mut v = parse_file(BUILTIN, "built-in").expect("built-in quirks.toml is valid");
    for p in &mut v {
        p.source = "built-in".into();
    }
    v
}

/// One built-in `[[quirk]]` block as text, with its `name` and `vendor` lines read off it
/// (None when a line is missing or not the plain `key = "value"` form).
struct Block<'a> {
    text: &'a str,
    name: Option<&'a str>,
    vendor: Option<u16>,
}

fn builtin_blocks() -> Vec<Block<'static>> {
    let mut starts: Vec<usize> = BUILTIN
        .match_indices("\n[[quirk]]\n")
        .map(|(i, _)| i + 1)
        .collect();
    starts.push(BUILTIN.len());
    starts
        .windows(2)
        .map(|w| {
            let text = &BUILTIN[w[0]..w[1]];
            let value = |key: &str| {
                text.lines().find_map(|l| {
                    let (k, v) = l.split_once('=')?;
                    (k.trim() == key).then_some(())?;
                    v.trim().strip_prefix('"')?.strip_suffix('"')
                })
            };
            Block {
                text,
                name: value("name"),
                vendor: value("vendor").and_then(|v| u16::from_str_radix(v, 16).ok()),
            }
        })
        .collect()
}

/// The built-in profiles that can match a device of one of `vendors`: only their blocks are
/// parsed (a phase's devices rarely have a profile; parsing every built-in profile was most
/// of the quirk step's time under emulation). Every built-in profile names its vendor, and a
/// profile only matches that vendor's devices; a block whose vendor line cannot be read is
/// parsed anyway. In the order of `builtin()`.
pub fn builtin_for(vendors: &[u16]) -> Vec<Profile> {
    let text: String = builtin_blocks()
        .into_iter()
        .filter(|b| b.vendor.is_none_or(|v| vendors.contains(&v)))
        .map(|b| b.text)
        .collect();
    let mut v = parse_file(&text, "built-in").expect("built-in quirks.toml is valid");
    for p in &mut v {
        p.source = "built-in".into();
    }
    v
}

/// `load_all` for devices of `vendors` only (the hook's phases, `reset`): the built-ins that
/// cannot match them are not parsed. The same answer for those devices as `load_all`: when a
/// configured profile replaces a built-in left out here (its place in the list decides between
/// two profiles that match), every built-in is parsed.
pub fn load_for(host: &dyn Host, cfg: &Config, vendors: &[u16]) -> Result<Vec<Profile>> {
    let blocks = builtin_blocks();
    let left_out: Vec<&str> = blocks
        .iter()
        .filter(|b| b.vendor.is_some_and(|v| !vendors.contains(&v)))
        .filter_map(|b| b.name)
        .collect();
    let replaced = !left_out.is_empty()
        && configured(cfg)?
            .iter()
            .any(|p| left_out.contains(&p.name.as_str()));
    if replaced {
        return load_all(host, cfg);
    }
    merge_configured(builtin_for(vendors), cfg)
}

/// The profiles of the config's quirk sources, in their order.
fn configured(cfg: &Config) -> Result<Vec<Profile>> {
    let mut out = Vec::new();
    for src in &cfg.quirks {
        match src {
            QuirkSource::File { name, text } => out.extend(parse_file(text, name)?),
            QuirkSource::Tables { name, tables } => {
                for v in tables {
                    let p: Profile = v.clone().try_into().map_err(|e: toml::de::Error| {
                        Error::Config(format!("{name}: [[quirk]]: {e}"))
                    })?;
                    p.validate(name).map_err(Error::Config)?;
                    out.push(Profile {
                        source: name.clone(),
                        ..p
                    });
                }
            }
        }
    }
    Ok(out)
}

/// `all` with the configured profiles merged in: a later profile with the same name replaces
/// the earlier one in place, a new name goes first.
fn merge_configured(mut all: Vec<Profile>, cfg: &Config) -> Result<Vec<Profile>> {
    if cfg.quirks.is_empty() {
        return Ok(all);
    }
    for p in configured(cfg)? {
        match all.iter_mut().find(|q| q.name == p.name) {
            Some(q) => *q = p,
            None => all.insert(0, p),
        }
    }
    Ok(all)
}

/// All profiles: the built-ins, then the config's quirk sources in their order (cluster
/// quirks.d, cluster `[[quirk]]`, its `[node.NAME]`, then the same locally: see
/// `parse::config`); a later profile with the same name replaces the earlier one in place.
pub fn load_all(host: &dyn Host, cfg: &Config) -> Result<Vec<Profile>> {
    // The files were read (and trusted) by the config load; the host is not needed any more.
    let _ = host;
    merge_configured(builtin(), cfg)
}

/// The profile for a device: user profiles come first in `all`, so they win over built-ins;
/// a model profile wins over a companion profile.
pub fn find<'a>(all: &'a [Profile], d: &DeviceInfo) -> Option<&'a Profile> {
    all.iter()
        .filter(|p| p.matches(d))
        .min_by_key(|p| p.companion)
}

pub fn by_name<'a>(all: &'a [Profile], name: &str) -> Option<&'a Profile> {
    all.iter().find(|p| p.name == name)
}

pub fn module_missing(host: &dyn Host, p: &Profile) -> Option<String> {
    let m = p.requires_module.as_ref()?;
    let present = paths::module_dir(m).is_some_and(|d| host.exists(&d));
    (!present).then(|| {
        format!(
            "quirk {} needs the {m} module, which is not loaded ({} missing): pre-start loads it and fails if it cannot; install vendor-reset (DKMS) and load it at boot, or the kernel's own reset may leave the card wedged",
            p.name,
            host.display(&paths::module_dir(m).unwrap_or_default())
        )
    })
}

/// Companion functions move with their GPU: a function of the same slot as a passed-through
/// display function that matches a companion profile (HDMI audio, Turing USB-C xHCI and UCSI)
/// is prepared with it even when the VM config names only the GPU and the IOMMU groups are
/// split. Left on its host driver it would make the slot reset unsafe and would hold the
/// card's power state; the VM config should pass it too (a warning says so).
fn add_companions(
    host: &dyn Host,
    all: &[Profile],
    devices: &mut Vec<PlannedDevice>,
    warnings: &mut Vec<String>,
) {
    let gpus: Vec<crate::pci::Bdf> = devices
        .iter()
        .filter(|d| !d.keep && d.info.is_display())
        .map(|d| d.info.bdf)
        .collect();
    if gpus.is_empty() {
        return;
    }
    for b in crate::sysfs::device::list_all(host) {
        let Some(gpu) = gpus.iter().find(|g| g.slot() == b.slot() && **g != b) else {
            continue;
        };
        if devices.iter().any(|d| d.info.bdf == b) {
            continue;
        }
        let Some(info) = crate::sysfs::device::read_device(host, &b) else {
            continue;
        };
        let Some(p) = find(all, &info).filter(|p| p.companion) else {
            continue;
        };
        warnings.push(format!(
            "{b} ({}) is a companion function of {gpu} and moves to vfio-pci with it; pass it to the VM too (hostpci: {} without the function number)",
            p.name,
            gpu.to_string().trim_end_matches(|c: char| c != '.').trim_end_matches('.')
        ));
        devices.push(PlannedDevice {
            info,
            origin: format!("companion of {gpu} (quirk {})", p.name),
            keep: false,
            quirk: None,
            reset_method: None,
            power: Vec::new(),
            load_module: None,
            warnings: Vec::new(),
        });
    }
}

pub fn apply_profiles(
    host: &dyn Host,
    cfg: &Config,
    devices: &mut Vec<PlannedDevice>,
    warnings: &mut Vec<String>,
) -> Result<()> {
    // A display function brings its slot's companions, of any vendor: every profile then.
    let all = if devices.iter().any(|d| !d.keep && d.info.is_display()) {
        load_all(host, cfg)?
    } else {
        let vendors: Vec<u16> = devices.iter().map(|d| d.info.vendor).collect();
        load_for(host, cfg, &vendors)?
    };
    add_companions(host, &all, devices, warnings);
    for d in devices.iter_mut().filter(|d| !d.keep) {
        let Some(p) = find(&all, &d.info) else {
            continue;
        };
        d.quirk = Some(p.name.clone());
        d.reset_method = p.planned_reset_method(d.info.reset_method.as_deref());
        if let Some(v) = &p.d3cold_allowed {
            if d.info.d3cold_allowed.is_some() {
                d.power.push(("d3cold_allowed".into(), v.clone()));
            }
        }
        if let Some(v) = &p.power_control {
            if d.info.power_control.is_some() {
                d.power.push(("power/control".into(), v.clone()));
            }
        }
        if let Some(w) = module_missing(host, p) {
            d.load_module = p.requires_module.clone();
            d.warnings.push(w.clone());
            warnings.push(format!("{}: {w}", d.info.bdf));
        }
        if p.vfio_disable_idle_d3 {
            let rel = "sys/module/vfio_pci/parameters/disable_idle_d3";
            let on = host.read(rel).is_ok_and(|v| matches!(v.trim(), "Y" | "1"));
            if !on {
                let w = format!(
                    "quirk {}: vfio-pci's disable_idle_d3 is off ({}); add `options vfio-pci disable_idle_d3=1` to /etc/modprobe.d/pt-hook.conf and run `update-initramfs -u`",
                    p.name,
                    host.display(rel)
                );
                if !warnings.iter().any(|x| x.ends_with(&w)) {
                    warnings.push(format!("{}: {w}", d.info.bdf));
                }
                d.warnings.push(w);
            }
        }
        for w in &p.warnings {
            d.warnings.push(w.clone());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn builtin_for_parses_only_the_vendors_blocks_in_builtin_order() {
        let all = builtin();
        let vendors: Vec<u16> = all
            .iter()
            .map(|p| u16::from_str_radix(&p.vendor, 16).unwrap())
            .collect();
        // Every built-in block's vendor line is read off its text.
        assert!(builtin_blocks()
            .iter()
            .skip(1)
            .all(|b| b.vendor.is_some() && b.name.is_some()));
        assert_eq!(builtin_for(&vendors), all);
        for v in &vendors {
            let want: Vec<Profile> = all
                .iter()
                .filter(|p| u16::from_str_radix(&p.vendor, 16).ok() == Some(*v))
                .cloned()
                .collect();
            assert_eq!(builtin_for(&[*v]), want);
        }
        assert!(builtin_for(&[0x1b36]).is_empty());
    }

    #[test]
    fn load_for_agrees_with_load_all_when_a_left_out_builtin_is_replaced() {
        let host = crate::host::sim::SimHost::new();
        let name = builtin()[0].name.clone();
        let text = format!(
            "[[quirk]]\nname = \"{name}\"\nvendor = \"8086\"\ndevices = [\"10d3\"]\nreset_method = [\"pm\"]\n"
        );
        let cfg = Config {
            quirks: vec![QuirkSource::File {
                name: "/etc/pt-hook/quirks.d/x.toml".into(),
                text,
            }],
            ..Config::default()
        };
        let all = load_all(&host, &cfg).unwrap();
        assert_eq!(load_for(&host, &cfg, &[0x8086]).unwrap(), all);
        // Without the replacement: only what can match, the configured profile first.
        let cfg = Config::default();
        assert!(load_for(&host, &cfg, &[0x8086]).unwrap().is_empty());
    }

    use super::*;
    use crate::pci::Bdf;

    fn info(v: u16, d: u16, class: u32) -> DeviceInfo {
        DeviceInfo {
            bdf: Bdf::parse("0000:01:00.0").unwrap(),
            vendor: v,
            device: d,
            subsystem_vendor: None,
            subsystem_device: None,
            class,
            driver: None,
            driver_override: None,
            iommu_group: None,
            reset_method: Some("flr bus".into()),
            has_reset: true,
            boot_vga: None,
            d3cold_allowed: None,
            power_control: None,
            link_speed: None,
            link_width: None,
        }
    }

    /// Every id docs/quirks.md lists resolves to its family's profile.
    #[test]
    fn every_builtin_id_resolves() {
        let all = builtin();
        let fam: &[(&str, &[&str])] = &[
            (
                "amd-polaris10",
                &[
                    "67c0", "67c1", "67c2", "67c4", "67c7", "67d0", "67df", "67c8", "67c9", "67ca",
                    "67cc", "67cf", "6fdf",
                ],
            ),
            (
                "amd-polaris11",
                &[
                    "67e0", "67e3", "67e8", "67eb", "67ef", "67ff", "67e1", "67e7", "67e9",
                ],
            ),
            (
                "amd-polaris12",
                &[
                    "6980", "6981", "6985", "6986", "6987", "6995", "6997", "699f",
                ],
            ),
            (
                "amd-vega10",
                &[
                    "6860", "6861", "6862", "6863", "6864", "6867", "6868", "6869", "686a", "686b",
                    "686c", "686d", "686e", "686f", "687f",
                ],
            ),
            (
                "amd-vega20",
                &["66a0", "66a1", "66a2", "66a3", "66a4", "66a7", "66af"],
            ),
            (
                "amd-navi1x",
                &[
                    "7310", "7312", "7318", "7319", "731a", "731b", "731e", "731f", "7340", "7341",
                    "7347", "734f", "7360", "7362",
                ],
            ),
            ("amd-mi100", &["738c"]),
            (
                "amd-rdna-host-rebind",
                &["73bf", "73df", "73ff", "744c", "747e", "7590", "7550"],
            ),
            (
                "amd-igpu-host-rebind",
                &["1681", "15bf", "164e", "13c0", "150e", "1114"],
            ),
        ];
        for (name, ids) in fam {
            for id in *ids {
                let d = info(0x1002, u16::from_str_radix(id, 16).unwrap(), 0x030000);
                assert_eq!(
                    find(&all, &d).map(|p| p.name.as_str()),
                    Some(*name),
                    "1002:{id}"
                );
            }
        }
        for id in [
            "2b85", "2b87", "2b8c", "2c02", "2c05", "2f04", "2d04", "2d05", "2c18", "2c58", "2c19",
            "2c59", "2d18", "2d58", "2f18", "2f58", "2bb1", "2bb4", "2bb5",
        ] {
            let d = info(0x10de, u16::from_str_radix(id, 16).unwrap(), 0x030000);
            assert_eq!(
                find(&all, &d).map(|p| p.name.as_str()),
                Some("nvidia-blackwell"),
                "10de:{id}"
            );
        }
        for id in ["22e8", "22e9"] {
            let d = info(0x10de, u16::from_str_radix(id, 16).unwrap(), 0x040300);
            assert_eq!(
                find(&all, &d).map(|p| p.name.as_str()),
                Some("nvidia-blackwell"),
                "audio 10de:{id}"
            );
        }
        // A Turing audio function is a companion; an RTX 4090 is not a quirk at all.
        assert_eq!(
            find(&all, &info(0x10de, 0x10f8, 0x040300)).map(|p| p.name.as_str()),
            Some("nvidia-companion")
        );
        assert_eq!(find(&all, &info(0x10de, 0x2684, 0x030000)), None);
    }

    #[test]
    fn planned_reset_methods() {
        let all = builtin();
        let vega = by_name(&all, "amd-vega10").unwrap();
        assert_eq!(
            vega.planned_reset_method(Some("flr bus")).as_deref(),
            Some("device_specific flr bus")
        );
        let bw = by_name(&all, "nvidia-blackwell").unwrap();
        assert_eq!(
            bw.planned_reset_method(Some("flr bus")).as_deref(),
            Some("bus")
        );
        assert_eq!(bw.planned_reset_method(Some("flr")).as_deref(), Some(""));
        assert_eq!(bw.planned_reset_method(None), None);
    }

    #[test]
    fn user_profiles_override_and_errors_name_file_and_line() {
        let text = "[[quirk]]\nname = \"nvidia-blackwell\"\nvendor = \"10de\"\ndevices = [\"2b85\"]\nreset_method = [\"bus\"]\nreset_method_only = true\n";
        let mut all = builtin();
        for p in parse_file(text, "/etc/pt-hook/quirks.d/x.toml").unwrap() {
            let q = all.iter_mut().find(|q| q.name == p.name).unwrap();
            *q = p;
        }
        let d = info(0x10de, 0x2b85, 0x030000);
        let p = find(&all, &d).unwrap();
        assert_eq!(p.source, "/etc/pt-hook/quirks.d/x.toml");
        assert_eq!(
            p.planned_reset_method(Some("flr bus")).as_deref(),
            Some("bus")
        );
        // 5090 D no longer matches the replaced profile.
        assert_eq!(find(&all, &info(0x10de, 0x2b87, 0x030000)), None);

        let e = parse_file("[[quirk]]\nname = \"x\"\nvendor = 12\n", "/q.toml").unwrap_err();
        assert!(e.to_string().starts_with("/q.toml:3:"), "{e}");
        let e = parse_file(
            "[[quirk]]\nname = \"x\"\nvendor = \"10de\"\ndevices = [\"zz\"]\n",
            "/q.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("zz"), "{e}");
        let e = parse_file("[[quirk]]\nname = \"x\"\nvendor = \"10de\"\ndevices = [\"2b85\"]\nreset_method = [\"warp\"]\n", "/q.toml").unwrap_err();
        assert!(e.to_string().contains("warp"), "{e}");
    }
}
