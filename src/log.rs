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

    /// "VM 100 pre-start" in front of every line.
    pub fn set_context(&mut self, ctx: &str) {
        self.prefix = if ctx.is_empty() {
            String::new()
        } else {
            format!("{ctx}: ")
        };
    }

    pub fn log(&self, level: Level, msg: &str) {
        let shown = match level {
            Level::Error => self.verbosity > -3,
            Level::Warn => self.verbosity >= -1,
            Level::Info => self.verbosity >= 0,
            Level::Debug => self.verbosity >= 1,
        };
        let tag = match level {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            _ => "",
        };
        if shown {
            let _ = writeln!(std::io::stderr(), "pt-hook: {}{tag}{msg}", self.prefix);
        }
        if level <= Level::Info {
            if let Ok(mut g) = self.syslog.lock() {
                if let Some(s) = g.as_mut() {
                    let line = format!("{}{tag}{msg}", self.prefix);
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
