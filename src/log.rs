//! Logging to the Proxmox task log (stderr) and to syslog (identifier pt-hook, facility
//! daemon). Syslog being unavailable is not an error.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use syslog::{Facility, Formatter3164, Logger as SysLogger, LoggerBackend};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

pub struct Logger {
    prefix: String,
    verbosity: i8,
    syslog: Mutex<Option<SysLogger<LoggerBackend, Formatter3164>>>,
}

impl Logger {
    /// `use_syslog` is false for hosts under `--root` (tests, fake hosts).
    pub fn new(verbosity: i8, use_syslog: bool) -> Logger {
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
        Logger {
            prefix: String::new(),
            verbosity,
            syslog: Mutex::new(syslog),
        }
    }

    /// "VM 100 pre-start" in front of every line. It carries command-line words (a hook
    /// phase, a libvirt operation): control characters in it are escaped (`\n`, `\u{1b}`), so
    /// neither the task log nor syslog gets a forged line or a terminal escape.
    pub fn set_context(&mut self, ctx: &str) {
        self.prefix = if ctx.is_empty() {
            String::new()
        } else {
            format!("{}: ", escape_controls(ctx))
        };
    }

    /// The line as written to stderr (after "pt-hook: ") and to syslog.
    fn line(&self, level: Level, msg: &str) -> String {
        let tag = match level {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            _ => "",
        };
        format!("{}{tag}{msg}", self.prefix)
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
            let _ = writeln!(std::io::stderr(), "pt-hook: {line}");
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
    fn context_escapes_control_characters_in_both_sinks() {
        assert_eq!(escape_controls("pre-start"), "pre-start");
        assert_eq!(
            escape_controls("a\nb\r\u{1b}[31m\t\u{7f}\u{202e}ü \"q\" \\"),
            "a\\nb\\r\\u{1b}[31m\\t\\u{7f}\\u{202e}ü \"q\" \\"
        );
        let mut l = Logger::new(-3, false);
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
