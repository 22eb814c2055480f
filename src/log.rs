//! Logging to the Proxmox task log (stderr) and to syslog (identifier pt-hook, facility
//! daemon). Syslog being unavailable is not an error.
//!
//! The logger also keeps the run's timing: every part of a phase that costs time (config and
//! quirk loading, resolve, the guard, state writes, each kernel write, each wait, each
//! verification) records a `Span` into it, from whichever thread runs it. `timing()` sums
//! them per category for `-v` (one `timing total=...` line, then one line per span) and for
//! `--json` output (`reset --json`'s `timing`).

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use syslog::{Facility, Formatter3164, Logger as SysLogger, LoggerBackend};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

pub struct Logger {
    prefix: Mutex<String>,
    verbosity: i8,
    syslog: Mutex<Option<SysLogger<LoggerBackend, Formatter3164>>>,
    /// When the run began (spans are placed relative to it) and the spans recorded so far.
    origin: Instant,
    spans: Mutex<Vec<SpanRecord>>,
}

impl Logger {
    /// `use_syslog` is false for hosts under `--root` (tests, fake hosts).
    pub fn new(verbosity: i8, use_syslog: bool) -> Logger {
        Logger::starting_at(Instant::now(), verbosity, use_syslog)
    }

    /// A logger whose timing starts at `origin` (the process's first instant in `main`), so
    /// that argument parsing and connecting to syslog count as start-up.
    pub fn starting_at(origin: Instant, verbosity: i8, use_syslog: bool) -> Logger {
        let syslog = if use_syslog {
            syslog::unix(Formatter3164 {
                facility: Facility::LOG_DAEMON,
                hostname: None,
                process: "pt-hook".into(),
                pid: std::process::id(),
            })
            .ok()
        } else {
            None
        };
        let log = Logger {
            prefix: Mutex::new(String::new()),
            verbosity,
            syslog: Mutex::new(syslog),
            origin,
            spans: Mutex::new(Vec::new()),
        };
        log.record(Cat::Startup, "arguments, logger", origin, Instant::now());
        log
    }

    /// "VM 100 pre-start" in front of every line. It carries command-line words (a hook
    /// phase, a libvirt operation): control characters in it are escaped (`\n`, `\u{1b}`), so
    /// neither the task log nor syslog gets a forged line or a terminal escape.
    pub fn set_context(&self, ctx: &str) {
        let p = if ctx.is_empty() {
            String::new()
        } else {
            format!("{}: ", escape_controls(ctx))
        };
        if let Ok(mut g) = self.prefix.lock() {
            *g = p;
        }
    }

    /// The line as written to stderr (after "pt-hook: ") and to syslog.
    fn line(&self, level: Level, msg: &str) -> String {
        let tag = match level {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            _ => "",
        };
        let prefix = self.prefix.lock().map(|p| p.clone()).unwrap_or_default();
        format!("{prefix}{tag}{msg}")
    }

    pub fn log(&self, level: Level, msg: &str) {
        let shown = match level {
            Level::Error => self.verbosity > -3,
            Level::Warn => self.verbosity >= -1,
            Level::Info => self.verbosity >= 0,
            Level::Debug => self.verbosity >= 1,
        };
        let line = self.line(level, msg);
        if shown {
            // One write(2) per line (stderr is unbuffered: `writeln!` would make three),
            // so lines of parallel steps never interleave either.
            let _ = std::io::stderr().write_all(format!("pt-hook: {line}\n").as_bytes());
        }
        if level <= Level::Info {
            if let Ok(mut g) = self.syslog.lock() {
                if let Some(s) = g.as_mut() {
                    let r = match level {
                        Level::Error => s.err(line),
                        Level::Warn => s.warning(line),
                        _ => s.info(line),
                    };
                    if r.is_err() {
                        *g = None;
                    }
                }
            }
        }
    }

    pub fn info(&self, msg: &str) {
        self.log(Level::Info, msg)
    }
    pub fn warn(&self, msg: &str) {
        self.log(Level::Warn, msg)
    }
    pub fn error(&self, msg: &str) {
        self.log(Level::Error, msg)
    }
    pub fn debug(&self, msg: &str) {
        self.log(Level::Debug, msg)
    }

    /// One executed step with the time it took.
    pub fn step(&self, desc: &str, took: Duration, outcome: Result<(), &str>) {
        match outcome {
            Ok(()) => self.info(&format!("{desc}: ok ({})", fmt_dur(took))),
            Err(e) => self.error(&format!("{desc}: FAILED after {}: {e}", fmt_dur(took))),
        }
    }

    /// Starts a span of category `cat`; it is recorded when the returned guard is dropped.
    /// `what` says which one ("0000:02:00.0 unbind from nvme").
    pub fn span(&self, cat: Cat, what: impl Into<String>) -> Span<'_> {
        Span {
            log: self,
            cat,
            what: what.into(),
            start: Instant::now(),
        }
    }

    /// Runs `f` as a span.
    pub fn timed<T>(&self, cat: Cat, what: impl Into<String>, f: impl FnOnce() -> T) -> T {
        let _s = self.span(cat, what);
        f()
    }

    /// Records a span that has already ended.
    pub fn record(&self, cat: Cat, what: &str, start: Instant, end: Instant) {
        let rec = SpanRecord {
            cat,
            what: what.to_string(),
            start: start.saturating_duration_since(self.origin),
            dur: end.saturating_duration_since(start),
        };
        if let Ok(mut v) = self.spans.lock() {
            v.push(rec);
        }
    }

    /// The run's timing so far: the spans and their sums per category.
    pub fn timing(&self) -> Timing {
        let total = self.origin.elapsed();
        let mut spans = self.spans.lock().map(|v| v.clone()).unwrap_or_default();
        spans.sort_by_key(|s| s.start);
        Timing::from_spans(total, spans)
    }

    /// The timing at `-v`: one summary line, then one line per span in the order they began.
    /// Debug lines: never in syslog, never on stderr without `-v`.
    pub fn log_timing(&self) {
        if self.verbosity < 1 {
            return;
        }
        let t = self.timing();
        self.debug(&t.summary());
        for s in &t.spans {
            self.debug(&format!(
                "timing +{:.1}ms {} {}: {}",
                s.start_ms,
                s.cat.name(),
                s.what,
                fmt_dur(Duration::from_secs_f64(s.ms / 1000.0))
            ));
        }
    }
}

/// What a span of time was spent on.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cat {
    /// Argument parsing, the logger and its syslog connection.
    Startup,
    /// Reading pt-hook.toml (and the VM config).
    Config,
    /// Loading and matching the quirk profiles.
    Quirks,
    /// Resolving hostpci lines and IOMMU groups into functions, reading their state.
    Resolve,
    /// Address drift: reading and writing the identity records.
    Identity,
    /// The host guard's scan (and its waits for users to go).
    Guard,
    /// The rest of planning (console handoff, steps).
    Plan,
    /// User hooks (listing and running).
    Hooks,
    /// The per-device locks.
    Lock,
    /// Write-ahead state: each write (with its fsyncs), load and removal.
    State,
    /// A kernel write: unbind, bind, driver_override, drivers_probe, reset, remove, ...
    Write,
    /// Waiting for the kernel after a write: a driver link to go or come, devices to go or
    /// come back, a busy bus lock.
    Wait,
    /// Checks after a step: read-backs, config space and link after a reset, the final
    /// check that every device is back as it was.
    Verify,
    /// modprobe, systemctl, pct.
    Run,
}

impl Cat {
    pub const ALL: [Cat; 14] = [
        Cat::Startup,
        Cat::Config,
        Cat::Quirks,
        Cat::Resolve,
        Cat::Identity,
        Cat::Guard,
        Cat::Plan,
        Cat::Hooks,
        Cat::Lock,
        Cat::State,
        Cat::Write,
        Cat::Wait,
        Cat::Verify,
        Cat::Run,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cat::Startup => "startup",
            Cat::Config => "config",
            Cat::Quirks => "quirks",
            Cat::Resolve => "resolve",
            Cat::Identity => "identity",
            Cat::Guard => "guard",
            Cat::Plan => "plan",
            Cat::Hooks => "hooks",
            Cat::Lock => "lock",
            Cat::State => "state",
            Cat::Write => "write",
            Cat::Wait => "wait",
            Cat::Verify => "verify",
            Cat::Run => "run",
        }
    }
}

/// A span in progress (see `Logger::span`); recorded when dropped.
pub struct Span<'a> {
    log: &'a Logger,
    cat: Cat,
    what: String,
    start: Instant,
}

impl Drop for Span<'_> {
    fn drop(&mut self) {
        let what = std::mem::take(&mut self.what);
        self.log.record(self.cat, &what, self.start, Instant::now());
    }
}

#[derive(Clone, Debug)]
struct SpanRecord {
    cat: Cat,
    what: String,
    /// From the logger's origin.
    start: Duration,
    dur: Duration,
}

/// The timing of a run (`Logger::timing`), as `--json` gives it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Timing {
    /// From the start of `main` to now.
    pub total_ms: f64,
    /// Per category (only those with spans): the wall time its spans cover (spans of
    /// parallel steps overlap, so this is not their sum), their sum, and their number.
    pub categories: Vec<CatTime>,
    /// Wall time no span covers (bookkeeping between the parts: logging, planning glue).
    pub other_ms: f64,
    /// Every span, in the order they began.
    pub spans: Vec<SpanTime>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct CatTime {
    pub name: Cat,
    pub wall_ms: f64,
    pub sum_ms: f64,
    pub count: usize,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SpanTime {
    pub cat: Cat,
    pub what: String,
    pub start_ms: f64,
    pub ms: f64,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000_000.0).round() / 10_000.0
}

/// The length of the union of `[start, start + dur)` intervals.
fn covered(mut iv: Vec<(Duration, Duration)>) -> Duration {
    iv.sort();
    let mut total = Duration::ZERO;
    let mut cur: Option<(Duration, Duration)> = None;
    for (s, e) in iv {
        match cur {
            Some((cs, ce)) if s <= ce => cur = Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                cur = Some((s, e));
            }
            None => cur = Some((s, e)),
        }
    }
    if let Some((cs, ce)) = cur {
        total += ce - cs;
    }
    total
}

impl Timing {
    fn from_spans(total: Duration, spans: Vec<SpanRecord>) -> Timing {
        let iv = |s: &SpanRecord| (s.start, s.start + s.dur);
        let categories = Cat::ALL
            .iter()
            .filter_map(|&c| {
                let of: Vec<&SpanRecord> = spans.iter().filter(|s| s.cat == c).collect();
                (!of.is_empty()).then(|| CatTime {
                    name: c,
                    wall_ms: ms(covered(of.iter().map(|s| iv(s)).collect())),
                    sum_ms: ms(of.iter().map(|s| s.dur).sum()),
                    count: of.len(),
                })
            })
            .collect();
        let all = covered(spans.iter().map(iv).collect());
        Timing {
            total_ms: ms(total),
            categories,
            other_ms: ms(total.saturating_sub(all)),
            spans: spans
                .into_iter()
                .map(|s| SpanTime {
                    cat: s.cat,
                    what: s.what,
                    start_ms: ms(s.start),
                    ms: ms(s.dur),
                })
                .collect(),
        }
    }

    /// "timing total=412.3ms startup=0.4ms/1 config=1.2ms/1 ... other=3.1ms": per category
    /// the wall time its spans cover and their number.
    pub fn summary(&self) -> String {
        let mut s = format!("timing total={:.1}ms", self.total_ms);
        for c in &self.categories {
            s.push_str(&format!(
                " {}={:.1}ms/{}",
                c.name.name(),
                c.wall_ms,
                c.count
            ));
        }
        s.push_str(&format!(" other={:.1}ms", self.other_ms));
        s
    }
}

/// `s` with control and other unprintable characters (bidi overrides, zero-width ones)
/// escaped as Rust's `{:?}` writes them (`\n`, `\t`, `\u{1b}`, `\u{202e}`); quotes,
/// backslashes and everything else as is.
pub fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() || (c.escape_debug().nth(1).is_some() && !matches!(c, '\\' | '\'' | '"'))
        {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

pub fn fmt_dur(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1000 {
        format!("{us} µs")
    } else if us < 10_000_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_sums_per_category_and_counts_overlap_once() {
        let d = Duration::from_millis;
        let rec = |cat, what: &str, from: u64, to: u64| SpanRecord {
            cat,
            what: what.into(),
            start: d(from),
            dur: d(to - from),
        };
        // Two writes of parallel steps overlapping by 5 ms, a wait after them, 100 ms in all.
        let t = Timing::from_spans(
            d(100),
            vec![
                rec(Cat::Startup, "arguments", 0, 2),
                rec(Cat::Write, "a unbind", 10, 20),
                rec(Cat::Write, "b unbind", 15, 30),
                rec(Cat::Wait, "a driver gone", 30, 32),
            ],
        );
        let w = t.categories.iter().find(|c| c.name == Cat::Write).unwrap();
        assert_eq!((w.wall_ms, w.sum_ms, w.count), (20.0, 25.0, 2));
        let wait = t.categories.iter().find(|c| c.name == Cat::Wait).unwrap();
        assert_eq!((wait.wall_ms, wait.count), (2.0, 1));
        // 0..2 and 10..32 are covered: 76 ms are nobody's.
        assert_eq!((t.total_ms, t.other_ms), (100.0, 76.0));
        assert_eq!(
            t.summary(),
            "timing total=100.0ms startup=2.0ms/1 write=20.0ms/2 wait=2.0ms/1 other=76.0ms"
        );
        let j = serde_json::to_value(&t).unwrap();
        assert_eq!(j["categories"][1]["name"], "write");
        assert_eq!(j["spans"][2]["what"], "b unbind");
        assert_eq!(j["spans"][2]["start_ms"], 15.0);
    }

    #[test]
    fn spans_from_any_thread_reach_the_logger_in_start_order() {
        let l = Logger::new(-3, false);
        {
            let _outer = l.span(Cat::Guard, "scan");
            std::thread::scope(|s| {
                s.spawn(|| l.timed(Cat::Write, "a", || ()));
                s.spawn(|| l.timed(Cat::Write, "b", || ()));
            });
        }
        let t = l.timing();
        let cats: Vec<Cat> = t.spans.iter().map(|s| s.cat).collect();
        // Start-up first, then the guard span (begun before the writes, recorded after).
        assert_eq!(cats[..2], [Cat::Startup, Cat::Guard], "{t:?}");
        assert_eq!(cats.iter().filter(|c| **c == Cat::Write).count(), 2);
        let starts: Vec<f64> = t.spans.iter().map(|s| s.start_ms).collect();
        assert!(starts.windows(2).all(|w| w[0] <= w[1]), "{starts:?}");
        assert!(t.other_ms <= t.total_ms);
    }

    #[test]
    fn covered_merges_intervals() {
        let d = Duration::from_millis;
        assert_eq!(covered(vec![]), d(0));
        assert_eq!(
            covered(vec![(d(5), d(9)), (d(0), d(2)), (d(1), d(3))]),
            d(7)
        );
        assert_eq!(covered(vec![(d(0), d(10)), (d(2), d(3))]), d(10));
    }

    #[test]
    fn context_escapes_control_characters_in_both_sinks() {
        assert_eq!(escape_controls("pre-start"), "pre-start");
        assert_eq!(
            escape_controls("a\nb\r\u{1b}[31m\t\u{7f}\u{202e}ü \"q\" \\"),
            "a\\nb\\r\\u{1b}[31m\\t\\u{7f}\\u{202e}ü \"q\" \\"
        );
        let l = Logger::new(-3, false);
        l.set_context("VM 100 evil\nfake: line\u{1b}[2J");
        // The one line both stderr and syslog write.
        let line = l.line(Level::Warn, "unknown phase");
        assert_eq!(
            line,
            "VM 100 evil\\nfake: line\\u{1b}[2J: warning: unknown phase"
        );
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }
}
