//! pt-hook.toml: deadlines and per-VM options. Optional; refused when others can write it.
//!
//! The config is built from layers, each overriding the one before it key by key:
//! built-in defaults < the cluster file `/etc/pve/pt-hook/pt-hook.toml` < its `[node.THIS]`
//! section < the local file `/etc/pt-hook/pt-hook.toml` < its `[node.THIS]` section (THIS:
//! `Host::node_name`). Tables merge per key (`[timeouts]` per deadline, `[vm.N]` per option);
//! any other value, a list such as `units` included, is replaced whole. Quirk profiles go by
//! name, later ones replacing earlier ones: built-in < cluster `quirks.d/*.toml` (name order)
//! < cluster `[[quirk]]` < cluster `[node.THIS]` `[[quirk]]` < local `quirks.d` < local
//! `[[quirk]]` < local `[node.THIS]` `[[quirk]]`. `--config FILE` replaces both files by
//! FILE (its `[node.THIS]` applies; the local quirks.d stays, as before). How the cluster
//! part is read, trusted and cached: `parse::cluster`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::host::Host;

pub use crate::parse::trust::{check_trusted, read_bounded, read_trusted, MAX_FILE_BYTES};

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

impl VmOptions {
    /// Whether post-stop resets the VM's devices (`reset_on_stop`, default true).
    pub fn resets_on_stop(&self) -> bool {
        self.reset_on_stop.unwrap_or(true)
    }
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
    /// node_exporter textfile (`metrics_path`).
    metrics_file: Option<String>,
    #[serde(default)]
    cluster: ClusterOptions,
    /// `[node.NAME]`: the same keys, for one node only (never nested).
    #[serde(default)]
    node: BTreeMap<String, RawConfig>,
}

/// Where quirk profiles come from, lowest precedence first (parsed by the quirk layer).
#[derive(Debug, Clone)]
pub enum QuirkSource {
    /// A quirks.d file: its name (for messages) and text.
    File { name: String, text: String },
    /// The `[[quirk]]` tables of a pt-hook.toml or of its `[node.NAME]` section.
    Tables {
        name: String,
        tables: Vec<toml::Value>,
    },
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
    /// Quirk profiles from files, in precedence order.
    pub quirks: Vec<QuirkSource>,
    pub source: Option<String>,
    /// Where every phase writes its metrics (node_exporter's textfile collector), relative to
    /// the host root; None: not written.
    pub metrics_file: Option<String>,
    /// Which files it was built from, and how the cluster part went.
    pub origin: Origin,
    /// `[cluster]` options.
    pub cluster: ClusterOptions,
}

/// Which kind of file a config layer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// /etc/pve/pt-hook/, read now.
    Cluster,
    /// The copy of /etc/pve/pt-hook/ last read, from /var/lib/pt-hook.
    Cached,
    /// /etc/pt-hook/.
    Local,
    /// `--config FILE`.
    Explicit,
}

/// One file a config was built from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UsedFile {
    pub path: String,
    pub kind: FileKind,
}

/// Where a config came from: every file used (lowest precedence first), the node whose
/// `[node.NAME]` sections applied, what happened to the cluster part, and the warnings to
/// show (a cluster config that could not be read).
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub files: Vec<UsedFile>,
    pub node: String,
    pub cluster: crate::parse::cluster::ClusterState,
    pub warnings: Vec<String>,
    /// What the cluster cache needs after this load (`cluster::update_cache`).
    pub cache: crate::parse::cluster::CacheAction,
    /// Set only by doctor, which goes on with the defaults when the config cannot be loaded
    /// and reports why.
    pub load_error: Option<String>,
}

impl Config {
    pub fn vm(&self, vmid: u32) -> VmOptions {
        self.vm.get(&vmid).cloned().unwrap_or_default()
    }
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

/// Parses one file on its own (no `[node.NAME]` section applied; every one checked).
#[cfg(test)]
pub fn parse(text: &str, file: &str) -> Result<Config> {
    layered(
        vec![Part::Toml {
            name: file.to_string(),
            text: text.to_string(),
            kind: FileKind::Explicit,
        }],
        "",
    )
}

/// A Proxmox node name as `[node.NAME]` may give it: a host name's first label.
fn node_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !n.starts_with('-')
        && !n.ends_with('-')
}

/// Checks one file completely (syntax with line numbers, keys, values, every node section).
fn check_file(text: &str, file: &str) -> Result<()> {
    let mut raw: RawConfig = toml::from_str(text).map_err(|e| {
        Error::Config(format!(
            "{file}:{}: {}",
            line_of(text, e.span()),
            e.message()
        ))
    })?;
    for (name, n) in std::mem::take(&mut raw.node) {
        if !node_name_ok(&name) {
            return Err(Error::Config(format!(
                "{file}: [node.{name}]: not a node name (letters, digits and -, as `hostname -s` prints it)"
            )));
        }
        if !n.node.is_empty() {
            return Err(Error::Config(format!(
                "{file}: [node.{name}]: node sections cannot hold node sections"
            )));
        }
        build(n, &format!("{file} [node.{name}]"))?;
    }
    build(raw, file).map(|_| ())
}

/// One input of `layered`, lowest precedence first.
enum Part {
    /// A pt-hook.toml.
    Toml {
        name: String,
        text: String,
        kind: FileKind,
    },
    /// A quirks.d file.
    Quirks {
        name: String,
        text: String,
        kind: FileKind,
    },
}

/// `from` over `into`: tables merge per key, anything else replaces.
fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn take_quirks(t: &mut toml::Table) -> Vec<toml::Value> {
    match t.remove("quirk") {
        Some(toml::Value::Array(a)) => a,
        _ => Vec::new(),
    }
}

/// The config of `parts` in order, with the `[node.NODE]` sections of `node` applied ("":
/// none).
fn layered(parts: Vec<Part>, node: &str) -> Result<Config> {
    let mut acc = toml::Table::new();
    let mut quirks = Vec::new();
    let mut files = Vec::new();
    let mut last = None;
    for part in parts {
        match part {
            Part::Quirks { name, text, kind } => {
                files.push(UsedFile {
                    path: name.clone(),
                    kind,
                });
                quirks.push(QuirkSource::File { name, text });
            }
            Part::Toml { name, text, kind } => {
                check_file(&text, &name)?;
                let mut t: toml::Table = text
                    .parse()
                    .map_err(|e: toml::de::Error| Error::Config(format!("{name}: {e}")))?;
                let this = match t.remove("node") {
                    Some(toml::Value::Table(mut nodes)) if !node.is_empty() => {
                        match nodes.remove(node) {
                            Some(toml::Value::Table(n)) => Some(n),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                let q = take_quirks(&mut t);
                if !q.is_empty() {
                    quirks.push(QuirkSource::Tables {
                        name: name.clone(),
                        tables: q,
                    });
                }
                merge(&mut acc, t);
                if let Some(mut n) = this {
                    let q = take_quirks(&mut n);
                    if !q.is_empty() {
                        quirks.push(QuirkSource::Tables {
                            name: format!("{name} [node.{node}]"),
                            tables: q,
                        });
                    }
                    merge(&mut acc, n);
                }
                files.push(UsedFile {
                    path: name.clone(),
                    kind,
                });
                last = Some(name);
            }
        }
    }
    let what = last.clone().unwrap_or_else(|| "built-in defaults".into());
    let raw: RawConfig = toml::Value::Table(acc)
        .try_into()
        .map_err(|e: toml::de::Error| Error::Config(format!("{what}: {}", e.message())))?;
    let mut cfg = build(raw, &what)?;
    cfg.quirks = quirks;
    cfg.source = last;
    cfg.origin.files = files;
    cfg.origin.node = node.to_string();
    Ok(cfg)
}

/// The checked values of one parsed table.
fn build(raw: RawConfig, file: &str) -> Result<Config> {
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
    let _ = raw.quirk;
    Ok(Config {
        timeouts,
        vm,
        source: Some(file.to_string()),
        metrics_file: metrics_path(file, raw.metrics_file.as_deref())?,
        cluster: raw.cluster,
        ..Config::default()
    })
}

/// `metrics_file`: an absolute path of plain names (letters, digits, `.`, `_`, `-`, `+`, `@`)
/// ending in `.prom` (node_exporter reads only those), not under /proc, /sys, /dev or /run/pt-hook;
/// returned relative to the host root.
fn metrics_path(file: &str, v: Option<&str>) -> Result<Option<String>> {
    let Some(p) = v else { return Ok(None) };
    let bad = |why: &str| {
        Error::Config(format!(
            "{file}: metrics_file = {:?}: {why}",
            crate::log::escape_controls(p)
        ))
    };
    let rel = p
        .strip_prefix('/')
        .ok_or_else(|| bad("must be an absolute path"))?;
    let parts: Vec<&str> = rel.split('/').collect();
    if p.len() > 1024
        || parts.len() < 2
        || parts.iter().any(|c| {
            c.is_empty()
                || *c == "."
                || *c == ".."
                || !c
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-+@".contains(&b))
        })
    {
        return Err(bad(
            "must be a plain absolute path (no //, . or .. components, no spaces or special characters)",
        ));
    }
    if !rel.ends_with(".prom") {
        return Err(bad(
            "node_exporter's textfile collector reads only *.prom files",
        ));
    }
    if ["proc", "sys", "dev"].contains(&parts[0]) || rel.starts_with("run/pt-hook/") {
        return Err(bad("not a place for a metrics file"));
    }
    Ok(Some(rel.to_string()))
}

/// The trusted quirks.d files of `dir`, in name order.
fn quirk_files(host: &dyn Host, dir: &str, kind: FileKind) -> Result<Vec<Part>> {
    let mut v = Vec::new();
    for f in host.list(dir).unwrap_or_default() {
        if !f.ends_with(".toml") {
            continue;
        }
        let rel = format!("{dir}/{f}");
        v.push(Part::Quirks {
            name: host.display(&rel),
            text: read_trusted(host, &rel)?,
            kind,
        });
    }
    Ok(v)
}

/// Loads the config: the cluster layer (`parse::cluster`, unless `explicit`), then the local
/// one; `explicit` must exist, the default files are optional.
pub fn load(host: &dyn Host, explicit: Option<&str>) -> Result<Config> {
    let node = host.node_name();
    let mut parts = Vec::new();
    let mut cluster = None;
    if explicit.is_none() {
        let c = crate::parse::cluster::read(host)?;
        let kind = match c.state {
            crate::parse::cluster::ClusterState::Cached { .. } => FileKind::Cached,
            _ => FileKind::Cluster,
        };
        for (name, text) in &c.quirks {
            parts.push(Part::Quirks {
                name: name.clone(),
                text: text.clone(),
                kind,
            });
        }
        if let Some((name, text)) = &c.config {
            parts.push(Part::Toml {
                name: name.clone(),
                text: text.clone(),
                kind,
            });
        }
        cluster = Some(c);
    }
    parts.extend(quirk_files(
        host,
        crate::host::paths::QUIRKS_DIR,
        FileKind::Local,
    )?);
    let (rel, kind) = match explicit {
        Some(p) => (p.trim_start_matches('/').to_string(), FileKind::Explicit),
        None => (
            crate::host::paths::DEFAULT_CONFIG.to_string(),
            FileKind::Local,
        ),
    };
    if host.exists(&rel) {
        parts.push(Part::Toml {
            name: host.display(&rel),
            text: read_trusted(host, &rel)?,
            kind,
        });
    } else if kind == FileKind::Explicit {
        return Err(Error::Config(format!(
            "{}: config file not found",
            host.display(&rel)
        )));
    }
    let mut cfg = layered(parts, &node)?;
    if let Some(c) = cluster {
        cfg.origin.cluster = c.state;
        cfg.origin.warnings = c.warnings;
        cfg.origin.cache = c.cache;
    }
    Ok(cfg)
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

    #[test]
    fn metrics_file_is_a_plain_prom_path() {
        let c = parse(
            "metrics_file = \"/var/lib/prometheus/node-exporter/pt-hook.prom\"\n",
            "f",
        )
        .unwrap();
        assert_eq!(
            c.metrics_file.as_deref(),
            Some("var/lib/prometheus/node-exporter/pt-hook.prom")
        );
        assert_eq!(parse("", "f").unwrap().metrics_file, None);
        for bad in [
            "pt-hook.prom",
            "/pt-hook.prom",
            "/var/lib/../etc/x.prom",
            "/var//x.prom",
            "/var/lib/x.txt",
            "/var/lib/a b.prom",
            "/proc/self/x.prom",
            "/sys/x/y.prom",
            "/run/pt-hook/x.prom",
            "/var/lib/x\\n.prom",
        ] {
            let e = parse(&format!("metrics_file = \"{bad}\"\n"), "f").unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
            assert!(e.to_string().contains("metrics_file"), "{e}");
        }
    }
}
