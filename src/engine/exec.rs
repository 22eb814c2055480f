//! Steps → kernel. Every step checks whether its effect is already there first (so undo is
//! idempotent and a crash-interrupted journal can be replayed), runs every write that can
//! block under a deadline, and verifies its effect by polling with a deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::plan::Step;
use crate::error::{Error, Result};
use crate::host::paths::{self, DevFile};
use crate::host::CmdOutput;
use crate::host::{poll_until, write_with_deadline, Host};
use crate::log::{Cat, Logger};
use crate::parse::config::Timeouts;
use crate::pci::Bdf;
use crate::sysfs::device;

pub struct Exec<'a> {
    pub host: Arc<dyn Host>,
    pub t: &'a Timeouts,
    pub dry_run: bool,
    pub log: &'a Logger,
    /// The phase deadline: no step waits beyond it.
    pub deadline: Instant,
}

fn module_loaded(host: &dyn Host, module: &str) -> bool {
    paths::module_dir(module).is_some_and(|d| host.exists(&d))
}

/// The PCI driver a module provides, where the names differ (`vfio_pci` → `vfio-pci`).
pub fn driver_for_module(module: &str) -> String {
    match module {
        "vfio_pci" => "vfio-pci".into(),
        m => m.to_string(),
    }
}

/// The module that provides a PCI driver (`vfio-pci` → `vfio_pci`).
pub fn module_for_driver(driver: &str) -> String {
    paths::module_name(driver)
}

impl<'a> Exec<'a> {
    pub fn new(host: Arc<dyn Host>, t: &'a Timeouts, dry_run: bool, log: &'a Logger) -> Self {
        Exec {
            host,
            t,
            dry_run,
            log,
            deadline: Instant::now() + t.phase,
        }
    }

    fn h(&self) -> &dyn Host {
        &*self.host
    }

    /// The time a step may take: its own budget, capped by what is left of the phase.
    fn budget(&self, d: Duration) -> Duration {
        crate::host::within(d, self.deadline)
    }

    pub fn write(&self, what: &Bdf, rel: &str, data: &str, timeout: Duration) -> Result<()> {
        self.write_named(&what.to_string(), rel, data, timeout)
    }

    pub fn write_named(&self, what: &str, rel: &str, data: &str, timeout: Duration) -> Result<()> {
        if self.dry_run {
            println!(
                "dry-run: write {:?} to {}",
                data.trim_end(),
                self.h().display(rel)
            );
            return Ok(());
        }
        let _t = self.log.span(Cat::Write, write_what(what, rel, data));
        write_with_deadline(&self.host, rel, data, self.budget(timeout)).map_err(|e| {
            Error::host(
                what,
                &format!("writing {:?} to", data.trim_end()),
                self.h().display(rel),
                e,
            )
        })
    }

    /// Waits for a device's driver link to become `want` (None: unbound).
    pub fn wait_driver(&self, bdf: &Bdf, want: Option<&str>, timeout: Duration) -> Result<()> {
        self.wait_driver_as(Cat::Wait, bdf, want, timeout)
    }

    /// `wait_driver`, timed as `cat` (the final checks of a restore are verification).
    pub fn wait_driver_as(
        &self,
        cat: Cat,
        bdf: &Bdf,
        want: Option<&str>,
        timeout: Duration,
    ) -> Result<()> {
        if self.dry_run {
            return Ok(());
        }
        let _t = self
            .log
            .span(cat, format!("{bdf} driver {}", want.unwrap_or("(none)")));
        let h = self.h();
        let got = poll_until(self.budget(timeout), || {
            let d = device::driver_of(h, bdf);
            (d.as_deref() == want).then_some(())
        });
        got.ok_or_else(|| {
            let now = device::driver_of(h, bdf);
            Error::Failed(format!(
                "{bdf}: driver is {} after {}, expected {} ({})",
                now.as_deref().unwrap_or("none"),
                humantime::format_duration(timeout),
                want.unwrap_or("none"),
                h.display(&paths::dev(bdf, DevFile::Driver))
            ))
        })
    }

    fn modprobe(&self, args: &[&str]) -> Result<()> {
        let shown = format!("modprobe {}", args.join(" "));
        if self.dry_run {
            println!("dry-run: run {shown}");
            return Ok(());
        }
        let _t = self.log.span(Cat::Run, shown.clone());
        let out = self
            .h()
            .run("modprobe", args, self.budget(self.t.module))
            .map_err(|e| Error::host("module", "running", shown.clone(), e))?;
        if !out.success() {
            return Err(Error::Failed(format!(
                "{shown} failed (exit {}): {}",
                out.code.map(|c| c.to_string()).unwrap_or("signal".into()),
                out.stderr.trim()
            )));
        }
        Ok(())
    }

    /// Runs a batch (see `plan::batches`): each device's steps in order, different devices in
    /// parallel. After a step fails no further step of the batch begins (steps already running
    /// run to their own end, each bounded by its timeouts); the first error in batch order is
    /// returned.
    pub fn apply_batch(&self, batch: &[Step]) -> Result<()> {
        self.run_lanes(batch, true).into_iter().flatten().collect()
    }

    /// Runs a batch like `apply_batch`, but every step runs whatever the others did (a
    /// restore: one failure must not hide the others); every step's own result, in batch
    /// order.
    pub fn apply_each(&self, batch: &[Step]) -> Vec<Result<()>> {
        self.run_lanes(batch, false)
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Failed("a step did not run".into()))))
            .collect()
    }

    /// The lanes of a batch, in parallel; None for a step that did not begin (`stop`: a
    /// step failed before it).
    fn run_lanes(&self, batch: &[Step], stop: bool) -> Vec<Option<Result<()>>> {
        let lanes = crate::engine::plan::lanes(batch);
        let failed = std::sync::atomic::AtomicBool::new(false);
        let run = |lane: &[usize]| -> Vec<(usize, Result<()>)> {
            let mut v = Vec::new();
            for &i in lane {
                if stop && failed.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let r = self.apply(&batch[i]);
                let bad = r.is_err();
                v.push((i, r));
                if bad && stop {
                    failed.store(true, std::sync::atomic::Ordering::SeqCst);
                    break;
                }
            }
            v
        };
        let mut out: Vec<Option<Result<()>>> = batch.iter().map(|_| None).collect();
        let done: Vec<Vec<(usize, Result<()>)>> = if let [one] = lanes.as_slice() {
            vec![run(one)]
        } else {
            crate::host::side_by_side_caught(&lanes, |lane| run(lane))
                .into_iter()
                .zip(&lanes)
                .map(|(r, lane)| {
                    r.unwrap_or_else(|_| {
                        vec![(lane[0], Err(Error::Failed("a step panicked".into())))]
                    })
                })
                .collect()
        };
        for (i, r) in done.into_iter().flatten() {
            out[i] = Some(r);
        }
        out
    }

    pub fn apply(&self, step: &Step) -> Result<()> {
        let start = Instant::now();
        let r = self.apply_inner(step);
        let desc = step.to_string();
        match &r {
            // In a dry run nothing was written: no "ok (9 µs)" for a write that was not made
            // (the "dry-run: would ..." lines say what it would do).
            Ok(()) if self.dry_run => self.log.debug(&format!("{desc}: not done (dry run)")),
            Ok(()) => self.log.step(&desc, start.elapsed(), Ok(())),
            Err(e) => self.log.step(&desc, start.elapsed(), Err(&e.to_string())),
        }
        r
    }

    fn apply_inner(&self, step: &Step) -> Result<()> {
        let h = self.h();
        match step {
            Step::LoadModules { modules, .. } => {
                for m in modules {
                    if !paths::safe_name(m) {
                        return Err(Error::Config(format!("bad module name {m:?}")));
                    }
                    if module_loaded(h, m) {
                        continue;
                    }
                    self.modprobe(&[m])?;
                    if !self.dry_run {
                        let _t = self.log.span(Cat::Wait, format!("module {m} appears"));
                        let drv = driver_for_module(m);
                        let dir = paths::module_dir(m).unwrap_or_default();
                        let ddir = paths::driver_dir(&drv).unwrap_or_default();
                        poll_until(self.budget(self.t.module), || {
                            (h.exists(&dir) || h.exists(&ddir)).then_some(())
                        })
                        .ok_or_else(|| {
                            Error::Failed(format!(
                                "module {m}: modprobe succeeded but {} did not appear",
                                h.display(&dir)
                            ))
                        })?;
                    }
                }
                Ok(())
            }
            Step::UnloadModules { modules } => {
                for m in modules {
                    if !paths::safe_name(m) {
                        return Err(Error::Config(format!("bad module name {m:?}")));
                    }
                    if !module_loaded(h, m) {
                        continue;
                    }
                    self.modprobe(&["-r", m])?;
                }
                Ok(())
            }
            Step::SetResetMethod { bdf, to, .. } => {
                let rel = paths::dev(bdf, DevFile::ResetMethod);
                let now = self.check(bdf, "reset_method", || device::reset_method_of(h, bdf));
                if now.as_deref() == Some(to.as_str()) {
                    return Ok(());
                }
                let data = device::reset_method_data(to);
                self.write(bdf, &rel, data, self.t.step)?;
                if !self.dry_run {
                    let now = self
                        .check(bdf, "reset_method", || device::reset_method_of(h, bdf))
                        .unwrap_or_default();
                    if now != *to {
                        return Err(Error::Failed(format!(
                            "{bdf}: {} reads {now:?} after writing {to:?}",
                            h.display(&rel)
                        )));
                    }
                }
                Ok(())
            }
            Step::SetAttr { bdf, file, to, .. } => {
                let f = match file.as_str() {
                    "d3cold_allowed" => DevFile::D3coldAllowed,
                    "power/control" => DevFile::PowerControl,
                    other => return Err(Error::Config(format!("unknown attribute {other}"))),
                };
                self.set_attr(bdf, file, f, to)
            }
            Step::HoldD0 { bdf } => {
                self.set_attr(bdf, "power/control", DevFile::PowerControl, "on")
            }
            Step::Unbind { bdf, driver } => {
                let now = self.check(bdf, "driver", || device::driver_of(h, bdf));
                if now.as_deref() != Some(driver.as_str()) {
                    return Ok(());
                }
                let rel = paths::driver_file(driver, "unbind")
                    .ok_or_else(|| Error::Config(format!("bad driver name {driver:?}")))?;
                self.write(bdf, &rel, &bdf.to_string(), self.t.step)?;
                self.wait_driver(bdf, None, self.t.driver_bind)
            }
            Step::Bind { bdf, driver } => self.bind(bdf, driver),
            Step::SetOverride { bdf, to, .. } => {
                let rel = paths::dev(bdf, DevFile::DriverOverride);
                let current = || self.check(bdf, "driver_override", || device::override_of(h, bdf));
                // Setting a driver: no read first, writing the value it already has changes
                // nothing and the read-back below is the check (one bounded read, not two).
                // Clearing: read first, as an undo often finds nothing to clear (a write that
                // never landed) and a bare newline is then left alone, not written over it.
                // A write that fails is fine when the value is already there.
                if to.is_none() && current().is_none() {
                    return Ok(());
                }
                let data = to.as_deref().unwrap_or("\n");
                if let Some(t) = to {
                    if !paths::safe_name(t) {
                        return Err(Error::Config(format!("bad driver name {t:?}")));
                    }
                }
                if let Err(e) = self.write(bdf, &rel, data, self.t.step) {
                    if !e.timed_out() && current() == *to {
                        return Ok(());
                    }
                    return Err(e);
                }
                if !self.dry_run && current() != *to {
                    return Err(Error::Failed(format!(
                        "{bdf}: {} did not take {:?}",
                        h.display(&rel),
                        data.trim()
                    )));
                }
                Ok(())
            }
            Step::Probe { bdf, driver } => {
                let now = self.check(bdf, "driver", || device::driver_of(h, bdf));
                if now.as_deref() == Some(driver.as_str()) {
                    return Ok(());
                }
                self.write(bdf, paths::PCI_DRIVERS_PROBE, &bdf.to_string(), self.t.step)?;
                self.wait_driver(bdf, Some(driver), self.t.driver_bind)
            }
            Step::StopUnit { .. }
            | Step::StartUnit { .. }
            | Step::Vtcon { .. }
            | Step::UnbindPlatform { .. } => crate::engine::console::apply(self, step),
            Step::StopContainer { ctid } => self.container(*ctid, false),
            Step::StartContainer { ctid } => self.container(*ctid, true),
            Step::AwaitFree { bdfs } => {
                if self.dry_run {
                    return Ok(());
                }
                let _t = self
                    .log
                    .span(Cat::Guard, "wait until the functions are free");
                let left = crate::engine::guard::wait_unheld(h, bdfs, self.budget(self.t.unit));
                if left.is_empty() {
                    Ok(())
                } else {
                    Err(Error::Failed(format!(
                        "still held after the units/containers holding them were stopped: {}",
                        left.join("; ")
                    )))
                }
            }
        }
    }

    fn pct(&self, args: &[&str], timeout: Duration) -> Result<CmdOutput> {
        let shown = format!("pct {}", args.join(" "));
        let _t = self.log.span(Cat::Run, shown.clone());
        self.h()
            .run("pct", args, self.budget(timeout))
            .map_err(|e| Error::host("container", "running", shown, e))
    }

    fn container_running(&self, id: &str) -> Result<bool> {
        let o = self.pct(&["status", id], self.t.step)?;
        if !o.success() {
            return Err(Error::Failed(format!(
                "pct status {id} failed ({})",
                failure(&o)
            )));
        }
        Ok(o.stdout.contains("status: running"))
    }

    /// `pct shutdown` (clean, within the container timeout), then `pct stop`; or `pct start`.
    /// Checked with `pct status` before and after, so undo and replay are idempotent.
    fn container(&self, ctid: u32, start: bool) -> Result<()> {
        let id = ctid.to_string();
        if self.dry_run {
            println!(
                "dry-run: run pct {} {id}",
                if start { "start" } else { "shutdown" }
            );
            return Ok(());
        }
        let running = self.container_running(&id)?;
        if running == start {
            return Ok(());
        }
        if start {
            let o = self.pct(&["start", &id], self.t.container)?;
            if !o.success() {
                return Err(Error::Failed(format!(
                    "container {ctid}: pct start failed ({})",
                    failure(&o)
                )));
            }
        } else {
            let secs = self.budget(self.t.container).as_secs().max(1).to_string();
            let o = self.pct(
                &["shutdown", &id, "--timeout", &secs],
                self.t.container + Duration::from_secs(5),
            )?;
            if !o.success() {
                self.log.warn(&format!(
                    "container {ctid}: clean shutdown failed ({}); stopping it",
                    failure(&o)
                ));
                let o = self.pct(&["stop", &id], self.t.container)?;
                if !o.success() {
                    return Err(Error::Failed(format!(
                        "container {ctid}: pct stop failed ({})",
                        failure(&o)
                    )));
                }
            }
        }
        if self.container_running(&id)? != start {
            return Err(Error::Failed(format!(
                "container {ctid}: still {} after pct {}",
                if start { "stopped" } else { "running" },
                if start { "start" } else { "shutdown/stop" }
            )));
        }
        Ok(())
    }

    /// A read that checks a device's state before or after a step, timed as verification.
    fn check<T>(&self, bdf: &Bdf, what: &str, read: impl FnOnce() -> T) -> T {
        let _t = self.log.span(Cat::Verify, format!("{bdf} read {what}"));
        read()
    }

    /// Writes `to` to a device attribute unless it already reads so.
    fn set_attr(&self, bdf: &Bdf, name: &str, file: DevFile, to: &str) -> Result<()> {
        let h = self.h();
        let rel = paths::dev(bdf, file);
        let now = self.check(bdf, name, || {
            h.read(&rel).map(|s| s.trim().to_string()).ok()
        });
        if now.as_deref() == Some(to) {
            return Ok(());
        }
        self.write(bdf, &rel, to, self.t.step)
    }

    /// Gives a device to `driver`: explicit bind, falling back to the normal probe.
    fn bind(&self, bdf: &Bdf, driver: &str) -> Result<()> {
        let h = self.h();
        let now = self.check(bdf, "driver", || device::driver_of(h, bdf));
        if now.as_deref() == Some(driver) {
            return Ok(());
        }
        if let Some(other) = now {
            return Err(Error::Failed(format!(
                "{bdf}: cannot give it back to {driver}: still bound to {other}"
            )));
        }
        let dir = paths::driver_dir(driver)
            .ok_or_else(|| Error::Config(format!("bad driver name {driver:?}")))?;
        if !h.exists(&dir) {
            // The module is not loaded (yet): a later step (console handoff undo) loads it
            // and the kernel binds the device then; the final verification checks it.
            self.log.info(&format!(
                "{bdf}: driver {driver} not loaded yet; bind deferred"
            ));
            return Ok(());
        }
        let rel = format!("{dir}/bind");
        match self.write(bdf, &rel, &bdf.to_string(), self.t.step) {
            Ok(()) => {}
            Err(e) => {
                self.log.debug(&format!("{e}; trying drivers_probe"));
                self.write(bdf, paths::PCI_DRIVERS_PROBE, &bdf.to_string(), self.t.step)?;
            }
        }
        self.wait_driver(bdf, Some(driver), self.t.driver_bind)
    }
}

impl crate::engine::console::Io for Exec<'_> {
    fn host(&self) -> &dyn Host {
        &*self.host
    }
    fn t(&self) -> &Timeouts {
        self.t
    }
    fn dry_run(&self) -> bool {
        self.dry_run
    }
    fn log(&self) -> &Logger {
        self.log
    }
    fn write_named(&self, what: &str, rel: &str, data: &str, timeout: Duration) -> Result<()> {
        Exec::write_named(self, what, rel, data, timeout)
    }
}

/// "0000:02:00.0 \"0000:02:00.0\" > drivers/nvme/unbind": a kernel write as the timing shows it.
fn write_what(what: &str, rel: &str, data: &str) -> String {
    let short = rel
        .strip_prefix("sys/bus/pci/devices/")
        .and_then(|r| r.split_once('/').map(|(_, f)| f))
        .or_else(|| rel.strip_prefix("sys/bus/pci/"))
        .unwrap_or(rel);
    format!("{what} {:?} > {short}", data.trim_end())
}

/// "exit 2: Configuration file ... does not exist" for a helper program that failed.
fn failure(o: &CmdOutput) -> String {
    format!(
        "exit {}: {}",
        o.code.map(|c| c.to_string()).unwrap_or("signal".into()),
        o.stderr.trim()
    )
}
