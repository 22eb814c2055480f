//! Metrics in node_exporter's textfile format (the Prometheus text exposition format 0.0.4):
//! resets by rung, reset failures and rung durations per device model, per-device "needs a
//! host reboot" and last reset time (all from the reset memory, `engine::health`), phase
//! durations (recorded by the phases into the same memory) and the devices by owner (host
//! driver, idle on vfio-pci, held by a VM). `pt-hook status --prometheus` prints it; with
//! `metrics_file` set in pt-hook.toml every phase writes it there atomically (mode 0644, so
//! node_exporter's user can read it), under the health lock.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::engine::ctx::Ctx;
use crate::engine::health::{self, MemoryFile, Phase};
use crate::engine::plan::VFIO;
use crate::engine::state;
use crate::host::paths::{self, DevFile};
use crate::host::{errno_text, Host};
use crate::log::Cat;
use crate::pci::Bdf;
use crate::sysfs::device;

/// A label value as the text format wants it: backslash, double quote and line feed escaped.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text: backslash and line feed escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Label names and values of one sample.
type Labels = Vec<(&'static str, String)>;

/// One metric family and its samples (suffix, labels, value), printed together.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(&'static str, Labels, String)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: Vec<(&'static str, String)>, value: impl ToString) {
        self.samples.push(("", labels, value.to_string()));
    }

    /// A summary without quantiles: `_sum` and `_count`.
    fn add_summary(&mut self, labels: Vec<(&'static str, String)>, sum_secs: f64, count: u64) {
        self.samples
            .push(("_sum", labels.clone(), fmt_float(sum_secs)));
        self.samples.push(("_count", labels, count.to_string()));
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (suffix, labels, value) in &self.samples {
            let _ = write!(out, "{}{suffix}", self.name);
            if !labels.is_empty() {
                let l: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                let _ = write!(out, "{{{}}}", l.join(","));
            }
            let _ = writeln!(out, " {value}");
        }
    }
}

fn fmt_float(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "NaN".into()
    }
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// Who holds each PCI function now: ("host" | "vfio-idle" | "unbound" | "vm", VM label).
/// Bridges are not counted. A function in a VM's (or libvirt domain's) pt-hook state is the
/// VM's; otherwise its driver says.
pub fn owners(host: &dyn Host) -> BTreeMap<(String, String), u64> {
    let mut held: BTreeMap<Bdf, String> = BTreeMap::new();
    for key in state::list(host) {
        if let Ok(Some(st)) = state::load(host, &key) {
            // The label status and the fleet view show ("100", "libvirt:NAME").
            let label = crate::engine::devices::owner_label(&key);
            for b in st.bdfs() {
                held.insert(b, label.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    for b in device::list_all(host) {
        // Only the class and the driver link: a whole `read_device` would also read
        // `driver_override` (through a child process on a real host) for every function.
        let class = host
            .read(&paths::dev(&b, DevFile::Class))
            .ok()
            .and_then(|s| crate::pci::parse_sysfs_hex(&s));
        let Some(class) = class else { continue };
        if class >> 8 == crate::pci::CLASS_BRIDGE_PCI {
            continue;
        }
        let driver = device::driver_of(host, &b);
        let k = match (held.get(&b), driver.as_deref()) {
            (Some(vm), _) => ("vm".to_string(), vm.clone()),
            (None, Some(VFIO)) => ("vfio-idle".to_string(), String::new()),
            (None, Some(_)) => ("host".to_string(), String::new()),
            (None, None) => ("unbound".to_string(), String::new()),
        };
        *out.entry(k).or_insert(0) += 1;
    }
    out
}

/// The metrics text. `boot_id`: this boot (a "needs a host reboot" of another boot is 0).
pub fn render(host: &dyn Host, f: &MemoryFile, boot_id: Option<&str>) -> String {
    // Every sample of a family has the same label names (an unknown value is empty).
    let model_labels = |id: &str, sub: &Option<String>| {
        vec![
            ("model", id.to_string()),
            ("subsystem", sub.clone().unwrap_or_default()),
        ]
    };
    let mut resets = Family::new(
        "pt_hook_resets_total",
        "counter",
        "Resets that recovered a device (verified after the rung), by device model and the rung that did it.",
    );
    let mut rung_fail = Family::new(
        "pt_hook_reset_rung_failures_total",
        "counter",
        "Ladder rungs that ran but left the device failing its checks, by device model and rung.",
    );
    let mut rung_time = Family::new(
        "pt_hook_reset_rung_duration_seconds",
        "summary",
        "Time each ladder rung took when it ran, by device model and rung.",
    );
    let mut failures = Family::new(
        "pt_hook_reset_failures_total",
        "counter",
        "Resets after which the device did not recover (it needs a host reboot), by device model.",
    );
    for m in &f.models {
        for r in &m.rungs {
            let Some(rung) = r.rung else { continue };
            let mut l = model_labels(&m.id, &m.subsystem);
            l.push(("rung", rung.name().to_string()));
            resets.add(l.clone(), r.ok);
            rung_fail.add(l.clone(), r.failed);
            rung_time.add_summary(l, secs(r.sum_ms), r.ok + r.failed);
        }
        failures.add(model_labels(&m.id, &m.subsystem), m.unrecovered);
    }
    let mut reboot = Family::new(
        "pt_hook_device_needs_reboot",
        "gauge",
        "1 when the device's last reset left it broken in this boot: only a host reboot or power cycle helps.",
    );
    let mut last = Family::new(
        "pt_hook_device_last_reset_timestamp_seconds",
        "gauge",
        "When the device was last reset (seconds since the epoch).",
    );
    let mut dev_fail = Family::new(
        "pt_hook_device_reset_failures_total",
        "counter",
        "Resets of this device (slot and card) after which it did not recover.",
    );
    for s in &f.slots {
        let l = vec![
            ("bdf", s.bdf.to_string()),
            ("model", s.id.clone()),
            ("slot", s.physical_slot.clone().unwrap_or_default()),
        ];
        let needs = s.needs_reboot
            && match (&s.boot_id, boot_id) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            };
        reboot.add(l.clone(), u8::from(needs));
        last.add(l.clone(), s.last_reset);
        dev_fail.add(l, s.failures);
    }
    let mut p_time = Family::new(
        "pt_hook_phase_duration_seconds",
        "summary",
        "Time pt-hook's phases took (the hookscript's four, cleanup, reset), user hooks included.",
    );
    let mut p_last = Family::new(
        "pt_hook_phase_last_duration_seconds",
        "gauge",
        "Time the last run of each phase took.",
    );
    let mut p_fail = Family::new(
        "pt_hook_phase_failures_total",
        "counter",
        "Phase runs that failed (exit status not 0).",
    );
    let mut p_at = Family::new(
        "pt_hook_phase_last_timestamp_seconds",
        "gauge",
        "When each phase last ended (seconds since the epoch).",
    );
    for p in &f.phases {
        let l = vec![("phase", p.phase.name().to_string())];
        p_time.add_summary(l.clone(), secs(p.sum_ms), p.count);
        p_last.add(l.clone(), fmt_float(secs(p.last_ms)));
        p_fail.add(l.clone(), p.failures);
        p_at.add(l, p.last_at);
    }
    let mut owners_f = Family::new(
        "pt_hook_devices",
        "gauge",
        "PCI functions (bridges not counted) by owner: host (a host driver), vfio-idle (on vfio-pci, no VM), unbound, or vm (held by the VM in label vm).",
    );
    for ((owner, vm), n) in owners(host) {
        owners_f.add(vec![("owner", owner), ("vm", vm)], n);
    }
    let mut out = String::new();
    for fam in [
        &resets, &rung_fail, &rung_time, &failures, &reboot, &last, &dev_fail, &p_time, &p_last,
        &p_fail, &p_at, &owners_f,
    ] {
        fam.render(&mut out);
    }
    out
}

/// Records a phase run into the reset memory and, when `metrics_file` is set, rewrites the
/// metrics file (both under the health lock). Never fails the phase: problems are warnings.
pub fn phase_done(ctx: &Ctx, phase: Phase, took: Duration, ok: bool) {
    if ctx.dry_run {
        return;
    }
    let _t = ctx.log.span(Cat::State, "phase metrics");
    record_with_phase(ctx, &[], false, (phase, took, ok));
}

/// Ladder runs (none for a phase without a reset) and the phase's own run (`took` so far,
/// `ok`) in one locked update of the reset memory, then the metrics file when one is set.
/// `pt-hook reset` records its ladder and its phase with one write instead of two.
pub fn record_with_phase(
    ctx: &Ctx,
    records: &[health::ResetRecord],
    learn: bool,
    run: (Phase, Duration, bool),
) {
    if ctx.dry_run {
        return;
    }
    let (phase, took, ok) = run;
    let now = health::now_secs();
    health::update(
        ctx.h(),
        ctx.log,
        |f, boot| {
            if !records.is_empty() {
                health::apply_resets(f, records, learn, now, boot().as_deref());
            }
            health::apply_phase(f, phase, took, ok, now);
        },
        |f| write_file(ctx, f),
    );
}

/// Runs a phase and records how long it took and whether it worked. A usage or
/// configuration error (exit 2: the phase did not run and touched nothing) is not recorded.
pub fn timed<T>(
    ctx: &Ctx,
    phase: Phase,
    f: impl FnOnce() -> crate::error::Result<T>,
) -> crate::error::Result<T> {
    let t0 = Instant::now();
    let r = f();
    if !matches!(&r, Err(e) if e.exit_code() == 2) {
        phase_done(ctx, phase, t0.elapsed(), r.is_ok());
    }
    r
}

/// Writes the metrics file of `metrics_file`, if one is set. The directory must exist (it is
/// node_exporter's textfile directory) and must not be writable by group or others.
fn write_file(ctx: &Ctx, f: &MemoryFile) {
    let Some(rel) = ctx.cfg.metrics_file.as_deref() else {
        return;
    };
    let host = ctx.h();
    let shown = host.display(rel);
    let dir = std::path::Path::new(rel)
        .parent()
        .and_then(|d| d.to_str())
        .unwrap_or("");
    match host.stat_owner_mode(dir) {
        Ok((_, mode)) if mode & 0o022 != 0 => {
            ctx.log.warn(&format!(
                "metrics file {shown} not written: its directory is writable by group or others (mode {:o}); run chmod go-w on it",
                mode & 0o7777
            ));
            return;
        }
        Ok(_) => {}
        Err(e) => {
            ctx.log.warn(&format!(
                "metrics file {shown} not written: {}: {} (create node_exporter's textfile directory, or change metrics_file)",
                host.display(dir),
                errno_text(&e)
            ));
            return;
        }
    }
    let boot = host.read(paths::BOOT_ID).ok().map(|s| s.trim().to_string());
    let text = render(host, f, boot.as_deref());
    if let Err(e) = host.write_atomic_mode(rel, text.as_bytes(), 0o644) {
        ctx.log.warn(&format!(
            "metrics file {shown} not written: {}",
            errno_text(&e)
        ));
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// One parsed sample: name, labels, value.
    pub type Sample = (String, Vec<(String, String)>, f64);

    /// A strict reader of the text format: every line is a HELP, a TYPE or a sample; names
    /// and label names are valid; label values use only the three escapes; each family has
    /// one HELP and one TYPE before its samples, and its samples together; counters end in
    /// `_total`; summaries have only `_sum`/`_count` samples; no sample twice; values parse.
    /// Returns the samples as (name, labels, value).
    pub fn parse_strict(text: &str) -> Result<Vec<Sample>, String> {
        fn name_ok(s: &str, colon: bool) -> bool {
            let mut c = s.chars();
            c.next()
                .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || (colon && f == ':'))
                && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || (colon && x == ':'))
        }
        if !text.ends_with('\n') {
            return Err("does not end with a line feed".into());
        }
        let mut types: BTreeMap<String, String> = BTreeMap::new();
        let mut helps: BTreeSet<String> = BTreeSet::new();
        let mut closed: BTreeSet<String> = BTreeSet::new();
        let mut current: Option<String> = None;
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut names_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let err = |m: &str| Err(format!("line {}: {m}: {line:?}", n + 1));
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                if !name_ok(name, true) || help.is_empty() || !helps.insert(name.into()) {
                    return err("bad or repeated HELP");
                }
                if types.contains_key(name) {
                    return err("HELP after TYPE");
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
                if !name_ok(name, true)
                    || !["counter", "gauge", "summary", "histogram", "untyped"].contains(&kind)
                    || types.insert(name.into(), kind.into()).is_some()
                {
                    return err("bad or repeated TYPE");
                }
                if kind == "counter" && !name.ends_with("_total") {
                    return err("counter not named *_total");
                }
                if let Some(c) = current.replace(name.into()) {
                    closed.insert(c);
                }
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                return err("stray comment or empty line");
            }
            // name{labels} value
            let Some((head, value)) = line.rsplit_once(' ') else {
                return err("no value");
            };
            let value: f64 = match value {
                "NaN" => f64::NAN,
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => match v.parse() {
                    Ok(x) => x,
                    Err(_) => return err("value is not a number"),
                },
            };
            let (name, labels) = match head.split_once('{') {
                None => (head, Vec::new()),
                Some((name, rest)) => {
                    let Some(body) = rest.strip_suffix('}') else {
                        return err("labels not closed");
                    };
                    let mut labels = Vec::new();
                    let mut chars = body.chars().peekable();
                    loop {
                        let mut k = String::new();
                        while let Some(&c) = chars.peek() {
                            if c == '=' {
                                break;
                            }
                            k.push(c);
                            chars.next();
                        }
                        if chars.next() != Some('=')
                            || chars.next() != Some('"')
                            || !name_ok(&k, false)
                        {
                            return err("bad label name");
                        }
                        let mut v = String::new();
                        loop {
                            match chars.next() {
                                None => return err("label value not closed"),
                                Some('"') => break,
                                Some('\\') => match chars.next() {
                                    Some('\\') => v.push('\\'),
                                    Some('"') => v.push('"'),
                                    Some('n') => v.push('\n'),
                                    _ => return err("bad escape"),
                                },
                                Some('\n') => return err("raw line feed"),
                                Some(c) => v.push(c),
                            }
                        }
                        if labels.iter().any(|(x, _): &(String, String)| *x == k) {
                            return err("label twice");
                        }
                        labels.push((k, v));
                        match chars.next() {
                            None => break,
                            Some(',') => continue,
                            Some(_) => return err("junk after label value"),
                        }
                    }
                    (name, labels)
                }
            };
            if !name_ok(name, true) {
                return err("bad metric name");
            }
            let Some(fam) = current.clone() else {
                return err("sample before any TYPE");
            };
            let kind = types[&fam].clone();
            let ok_name = match kind.as_str() {
                "summary" => {
                    name == format!("{fam}_sum") || name == format!("{fam}_count") || name == fam
                }
                _ => name == fam,
            };
            if !ok_name || closed.contains(&fam) {
                return err("sample outside its family");
            }
            if !helps.contains(&fam) {
                return err("family without HELP");
            }
            if kind == "counter" && value < 0.0 {
                return err("negative counter");
            }
            let mut sorted = labels.clone();
            sorted.sort();
            if !seen.insert(format!("{name}{sorted:?}")) {
                return err("sample twice");
            }
            // One set of label names per family (what client libraries and registries check).
            let names: Vec<String> = sorted.iter().map(|(k, _)| k.clone()).collect();
            let first = names_of.entry(fam.clone()).or_insert_with(|| names.clone());
            if *first != names {
                return err("label names differ within the family");
            }
            out.push((name.to_string(), labels, value));
        }
        Ok(out)
    }

    #[test]
    fn the_strict_reader_rejects_what_it_should() {
        for bad in [
            "x 1\n",
            "# HELP a_total h\n# TYPE a_total counter\na_total{l=\"v\\q\"} 1\n",
            "# HELP a h\n# TYPE a counter\na 1\n",
            "# HELP a_total h\n# TYPE a_total counter\na_total 1\na_total 2\n",
            "# HELP a h\n# TYPE a gauge\n# HELP b h\n# TYPE b gauge\nb 1\na 1\n",
            "# HELP a h\n# TYPE a gauge\na{1x=\"v\"} 1\n",
            "# HELP a h\n# TYPE a gauge\na{x=\"v\"} one\n",
            "# HELP a h\n# TYPE a gauge\na 1",
            "# TYPE a gauge\na 1\n",
            "# HELP a h\n# TYPE a gauge\na{x=\"1\"} 1\na{y=\"1\"} 1\n",
        ] {
            assert!(parse_strict(bad).is_err(), "{bad:?}");
        }
        let good = "# HELP a h\n# TYPE a gauge\na{x=\"q\\\"\\\\\\n\"} 1.5\n";
        let s = parse_strict(good).unwrap();
        assert_eq!(s[0].1[0].1, "q\"\\\n");
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
