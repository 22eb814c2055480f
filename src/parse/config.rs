//! /etc/pt-hook/pt-hook.toml: deadlines and per-VM options. Optional; refused when others can
//! write it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::host::Host;

pub const MAX_FILE_BYTES: usize = 1 << 20;

/// Deadlines for every step that can hang. Values are humantime strings ("5s", "250ms").
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// A single sysfs write that can block in the kernel (unbind, bind, probe).
    pub step: Duration,
    /// Waiting for a driver link to appear or go after bind/unbind/probe.
    pub driver_bind: Duration,
    /// A function-level reset (`reset` ← 1): the kernel polls up to 60 s itself.
    pub flr: Duration,
    /// A bus / subordinate reset.
    pub bus_reset: Duration,
    /// remove + rescan until the functions are back.
    pub rescan: Duration,
    /// modprobe / modprobe -r.
    pub module: Duration,
    /// systemctl stop/start.
    pub unit: Duration,
    /// Waiting for another hook's device locks.
    pub lock: Duration,
    /// The whole phase.
    pub phase: Duration,
    /// One user hook from /etc/pt-hook/hooks.d/<phase>/ (its process group is killed then).
    pub hook: Duration,
    /// Shutting down one container that holds a device (`release_containers`).
    pub container: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            step: Duration::from_secs(10),
            driver_bind: Duration::from_secs(5),
            flr: Duration::from_secs(10),
            bus_reset: Duration::from_secs(15),
            rescan: Duration::from_secs(15),
            module: Duration::from_secs(20),
            unit: Duration::from_secs(30),
            lock: Duration::from_secs(10),
            phase: Duration::from_secs(120),
            hook: Duration::from_secs(60),
            container: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Handoff {
    #[default]
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct VmOptions {
    /// Console handoff: auto (detect), on, off.
    #[serde(default)]
    pub console_handoff: Handoff,
    /// Display manager / GPU-holding units to stop (default: detected display-manager.service).
    #[serde(default)]
    pub units: Vec<String>,
    /// Reset devices at post-stop before giving them back (default true).
    pub reset_on_stop: Option<bool>,
    /// Shut down the LXC containers whose processes hold the VM's devices before pre-start
    /// takes them, and start them again after post-stop (default false: refuse).
    pub release_containers: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    step: Option<String>,
    driver_bind: Option<String>,
    flr_timeout: Option<String>,
    bus_reset_timeout: Option<String>,
    rescan_timeout: Option<String>,
    module_timeout: Option<String>,
    unit_timeout: Option<String>,
    lock_timeout: Option<String>,
    phase_timeout: Option<String>,
    hook_timeout: Option<String>,
    container_timeout: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    vm: BTreeMap<String, VmOptions>,
    #[serde(default)]
    quirk: Vec<toml::Value>,
    #[serde(default)]
    cluster: ClusterOptions,
}

/// `[cluster]`: the fleet view (`engine::fleet`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterOptions {
    /// Publish the device inventory after the phases (default true).
    #[serde(default = "yes")]
    pub publish: bool,
}

fn yes() -> bool {
    true
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions { publish: true }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Config {
    pub timeouts: Timeouts,
    pub vm: BTreeMap<u32, VmOptions>,
    /// `[[quirk]]` tables, parsed by the quirk layer.
    pub quirks: Vec<toml::Value>,
    pub source: Option<String>,
    pub cluster: ClusterOptions,
}

impl Config {
    pub fn vm(&self, vmid: u32) -> VmOptions {
        self.vm.get(&vmid).cloned().unwrap_or_default()
    }
}

/// Refuses a file that someone other than root (or the current user) owns, or that group or
/// others can write: pt-hook runs as root and acts on what it reads.
pub fn check_trusted(host: &dyn Host, rel: &str) -> Result<()> {
    trusted_entry(host, rel, false)?;
    // Every directory above it too: whoever can write one of them can swap the file. A
    // sticky directory (/tmp) is fine: others cannot rename or delete root's entries in it.
    let mut dir = std::path::Path::new(rel).parent();
    while let Some(d) = dir {
        trusted_entry(host, d.to_str().unwrap_or(""), true)?;
        dir = d.parent();
    }
    Ok(())
}

fn trusted_entry(host: &dyn Host, rel: &str, is_dir: bool) -> Result<()> {
    let (uid, mode) = host
        .stat_owner_mode(rel)
        .map_err(|e| Error::host("config", "stat", host.display(rel), e))?;
    let what = if is_dir { "directory " } else { "" };
    let me = host.euid();
    if uid != 0 && uid != me {
        return Err(Error::Config(format!(
            "{what}{}: refusing: owned by uid {uid}, not root",
            host.display(rel)
        )));
    }
    let sticky_dir = is_dir && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky_dir {
        return Err(Error::Config(format!(
            "{what}{}: refusing: writable by {} (mode {:o}); run chmod go-w on it",
            host.display(rel),
            if mode & 0o002 != 0 { "others" } else { "group" },
            mode & 0o7777
        )));
    }
    Ok(())
}

/// Reads a trusted text file of bounded size.
pub fn read_trusted(host: &dyn Host, rel: &str) -> Result<String> {
    check_trusted(host, rel)?;
    read_bounded(host, rel)
}

/// Reads a text file of at most `MAX_FILE_BYTES`, refusing larger ones.
pub fn read_bounded(host: &dyn Host, rel: &str) -> Result<String> {
    let bytes = host
        .read_bytes(rel, MAX_FILE_BYTES + 1)
        .map_err(|e| Error::host("config", "reading", host.display(rel), e))?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(Error::Config(format!(
            "{}: refusing: larger than {} bytes",
            host.display(rel),
            MAX_FILE_BYTES
        )));
    }
    String::from_utf8(bytes)
        .map_err(|_| Error::Config(format!("{}: not valid UTF-8", host.display(rel))))
}

fn dur(file: &str, key: &str, v: &Option<String>, default: Duration) -> Result<Duration> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s)
            .map_err(|e| Error::Config(format!("{file}: timeouts.{key} = {s:?}: {e}"))),
    }
}

/// The 1-based line of a TOML error span (0 when the error has none).
pub fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> usize {
    span.map(|r| text[..r.start.min(text.len())].matches('\n').count() + 1)
        .unwrap_or(0)
}

pub fn parse(text: &str, file: &str) -> Result<Config> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        Error::Config(format!(
            "{file}:{}: {}",
            line_of(text, e.span()),
            e.message()
        ))
    })?;
    let d = Timeouts::default();
    let t = &raw.timeouts;
    let timeouts = Timeouts {
        step: dur(file, "step", &t.step, d.step)?,
        driver_bind: dur(file, "driver_bind", &t.driver_bind, d.driver_bind)?,
        flr: dur(file, "flr_timeout", &t.flr_timeout, d.flr)?,
        bus_reset: dur(file, "bus_reset_timeout", &t.bus_reset_timeout, d.bus_reset)?,
        rescan: dur(file, "rescan_timeout", &t.rescan_timeout, d.rescan)?,
        module: dur(file, "module_timeout", &t.module_timeout, d.module)?,
        unit: dur(file, "unit_timeout", &t.unit_timeout, d.unit)?,
        lock: dur(file, "lock_timeout", &t.lock_timeout, d.lock)?,
        phase: dur(file, "phase_timeout", &t.phase_timeout, d.phase)?,
        hook: dur(file, "hook_timeout", &t.hook_timeout, d.hook)?,
        container: dur(file, "container_timeout", &t.container_timeout, d.container)?,
    };
    let mut vm = BTreeMap::new();
    for (k, v) in raw.vm {
        let id: u32 = k
            .parse()
            .ok()
            .filter(|n| (100..=999_999_999).contains(n))
            .ok_or_else(|| Error::Config(format!("{file}: [vm.{k}]: VM id must be a number")))?;
        for u in &v.units {
            if !crate::host::paths::safe_name(u) {
                return Err(Error::Config(format!(
                    "{file}: [vm.{k}] units: {u:?} is not a unit name"
                )));
            }
        }
        vm.insert(id, v);
    }
    Ok(Config {
        timeouts,
        vm,
        quirks: raw.quirk,
        source: Some(file.to_string()),
        cluster: raw.cluster,
    })
}

/// Loads the config: `explicit` must exist; the default path is optional.
pub fn load(host: &dyn Host, explicit: Option<&str>) -> Result<Config> {
    let (rel, required) = match explicit {
        Some(p) => (p.trim_start_matches('/').to_string(), true),
        None => (crate::host::paths::DEFAULT_CONFIG.to_string(), false),
    };
    if !host.exists(&rel) {
        if required {
            return Err(Error::Config(format!(
                "{}: config file not found",
                host.display(&rel)
            )));
        }
        return Ok(Config::default());
    }
    let text = read_trusted(host, &rel)?;
    parse(&text, &host.display(&rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_timeouts_and_vms() {
        let c = parse(
            "[timeouts]\nflr_timeout = \"5s\"\n[vm.100]\nconsole_handoff = \"on\"\nunits = [\"gdm.service\"]\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.timeouts.flr, Duration::from_secs(5));
        assert_eq!(c.vm(100).console_handoff, Handoff::On);
        assert_eq!(c.vm(101).console_handoff, Handoff::Auto);
    }

    #[test]
    fn malformed_names_file_and_line() {
        let e = parse("[timeouts]\nflr_timeout = \n", "/etc/pt-hook/pt-hook.toml").unwrap_err();
        let m = e.to_string();
        assert!(m.starts_with("/etc/pt-hook/pt-hook.toml:2:"), "{m}");
        let e = parse("[timeouts]\nflr_timeout = \"soon\"\n", "f").unwrap_err();
        assert!(e.to_string().contains("flr_timeout"), "{e}");
        let e = parse("[bogus]\n", "f").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = parse("[vm.abc]\n", "f").unwrap_err();
        assert!(e.to_string().contains("vm.abc"));
        let e = parse("[vm.100]\nunits = [\"../x\"]\n", "f").unwrap_err();
        assert!(e.to_string().contains("unit name"));
    }
}
