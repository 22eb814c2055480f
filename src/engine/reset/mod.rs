//! The reset ladder: function reset → bus/slot reset → remove + rescan → give up (exit 3).
//! Every rung is followed by a check of every function of the slot: present, config space
//! readable with a sane vendor id, link as wide and fast as before, driver as before.

use std::collections::BTreeMap;
use std::io;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engine::ctx::Ctx;
use crate::engine::health::{self, FunctionFacts, Memory, RungName};
use crate::engine::plan::VFIO;
use crate::engine::state::VmState;
use crate::error::{Error, Result};
use crate::host::paths::{self, DevFile};
use crate::host::{errno_text, poll_until, within, write_with_deadline, Host};
use crate::log::{fmt_dur, Cat};
use crate::pci::Bdf;
use crate::sysfs::device::{self, DeviceInfo};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// `pt-hook reset`: the operator asked; refuse what is unsafe.
    Manual,
    /// A VM's post-stop: the devices belong to the stopped VM (on vfio-pci).
    PostStop,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rung {
    pub rung: &'static str,
    /// It touched the device (false: not offered, refused, or skipped).
    pub ran: bool,
    pub ok: bool,
    pub detail: String,
    pub ms: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Reset and verified.
    Reset,
    /// Not reset (no safe method), but healthy and untouched.
    Refused,
    /// Still unhealthy after every rung: needs a host reboot or power cycle.
    Unrecovered,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlotReport {
    pub functions: Vec<Bdf>,
    pub verdict: Verdict,
    pub rungs: Vec<Rung>,
    pub message: String,
    pub ms: u64,
    /// The rung the reset memory started the ladder at (null: from the top).
    pub start: Option<&'static str>,
    /// Why the ladder started where it did, when the reset memory chose it.
    pub memory: Option<String>,
    /// Each function's model and serials as read before the ladder (for the reset memory;
    /// the physical slot is filled in once every bus is done).
    #[serde(skip)]
    pub facts: Vec<FunctionFacts>,
}

/// What a function looked like before the ladder: the reference for every check
/// (`device::read_for_ladder`: no `driver_override`, which only remove+rescan needs and reads
/// itself before the remove).
#[derive(Debug, Clone)]
struct Before {
    info: DeviceInfo,
}

fn link_rank(speed: &Option<String>) -> f64 {
    speed
        .as_deref()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// The host-driver rebind of a quirk profile (AMD RDNA, Ryzen iGPUs): the host driver's probe
/// is the reset.
#[derive(Clone, Debug)]
pub struct HostRebind {
    /// The host driver whose probe resets the card (amdgpu).
    pub driver: String,
    /// How long its probe may take.
    pub wait: Duration,
    /// post-stop of a device whose original driver is `driver`: leave it bound there (the
    /// restore that follows finds it done) instead of handing it back to vfio-pci.
    pub keep: bool,
}

/// What quirk profiles change in the ladder, per function.
#[derive(Clone, Debug, Default)]
pub struct LadderQuirks {
    /// Rungs a profile says not to use.
    pub skip: Vec<(Bdf, Vec<String>)>,
    /// Functions whose profile adds the host-rebind rung.
    pub rebind: Vec<(Bdf, HostRebind)>,
    /// post-stop: functions the restore holds at D0 for the ladder (`hold_d0`); the ladder
    /// gives those of a slot that does not recover back to runtime PM (`release_d0`).
    pub hold_d0: Vec<Bdf>,
    /// post-stop: the reset memory, read while the guard waits (None: the ladder reads it).
    pub memory: Option<Memory>,
    /// `pt-hook reset`: functions as read while the guard scanned (`read_before`); a slot
    /// whose functions are all here, each still on the driver it had, starts its first rung
    /// at once instead of reading them again.
    pub read: Vec<ReadBefore>,
    /// `pt-hook reset`: the phase the ladder ends, recorded in the same update of the reset
    /// memory as the ladder's runs (one locked write, not two).
    pub phase: Option<(health::Phase, Instant)>,
}

/// A function as the ladder reads it before its first rung: the reference for every check,
/// its config space (the health check before, the serial) and its model and serials for the
/// reset memory.
#[derive(Clone, Debug)]
pub struct ReadBefore {
    info: DeviceInfo,
    config: Option<Vec<u8>>,
    facts: FunctionFacts,
}

/// Reads a function as the ladder needs it before its first rung (only reads: a caller may
/// do it while the guard scans). `info`: the function just read (`device::read_for_ladder`),
/// if the caller has it; None when the function does not exist.
pub fn read_before(h: &dyn Host, bdf: &Bdf, info: Option<DeviceInfo>) -> Option<ReadBefore> {
    let info = info.or_else(|| device::read_for_ladder(h, bdf))?;
    let config = crate::engine::identity::config_bytes(h, &info.bdf);
    let facts = FunctionFacts::read(h, &info, config.as_deref());
    Some(ReadBefore {
        info,
        config,
        facts,
    })
}

impl LadderQuirks {
    /// Adds `p`'s ladder changes for `bdf`. `original` is the driver the function goes back to
    /// after post-stop (None for `pt-hook reset`).
    pub fn add(&mut self, bdf: Bdf, p: &crate::engine::quirks::Profile, original: Option<&str>) {
        if !p.skip_rungs.is_empty() {
            self.skip.push((bdf, p.skip_rungs.clone()));
        }
        if let Some(wait) = p.rebind_wait() {
            let driver = p
                .host_driver
                .clone()
                .or_else(|| original.filter(|d| *d != VFIO).map(str::to_string));
            if let Some(driver) = driver {
                let keep = original == Some(driver.as_str());
                self.rebind.push((bdf, HostRebind { driver, wait, keep }));
            }
        }
    }
}

struct Ladder<'a, 'b> {
    ctx: &'a Ctx<'b>,
    mode: Mode,
    method: Option<&'a str>,
    /// Every function that belongs to the same owner as the slot being reset.
    owned: &'a [Bdf],
    quirks: &'a LadderQuirks,
    /// Functions the host-rebind rung left on their host driver (post-stop, `keep`).
    kept: std::sync::Mutex<Vec<(Bdf, String)>>,
    /// The phase deadline (`phase_timeout` from the start of the ladder): no rung starts after
    /// it and every wait is cut to what is left of it. Undo writes keep their own timeouts.
    deadline: Instant,
    /// The reset memory, when the ladder chooses its own first rung (no `--method`).
    memory: Option<&'a Memory>,
}

impl Ladder<'_, '_> {
    fn h(&self) -> &dyn Host {
        &*self.ctx.host
    }

    /// A wait of `d`, cut to what is left of the phase.
    fn budget(&self, d: Duration) -> Duration {
        within(d, self.deadline)
    }

    fn write(&self, what: &Bdf, rel: &str, data: &str, t: Duration) -> Result<()> {
        self.kwrite(rel, data, t).map_err(|e| {
            Error::host(
                what,
                &format!("writing {data:?} to"),
                self.h().display(rel),
                e,
            )
        })
    }

    /// A kernel write of the ladder, timed.
    fn kwrite(&self, rel: &str, data: &str, t: Duration) -> io::Result<()> {
        kwrite(self.ctx, rel, data, t)
    }

    /// The checks after every rung.
    fn verify(&self, before: &[Before]) -> std::result::Result<(), String> {
        let h = self.h();
        let _t = self.ctx.log.span(
            Cat::Verify,
            format!(
                "{}: config space, link, driver",
                list(&before.iter().map(|b| b.info.bdf).collect::<Vec<_>>())
            ),
        );
        let t = self.budget(self.ctx.cfg.timeouts.driver_bind);
        for b in before {
            let bdf = &b.info.bdf;
            if !device::exists(h, bdf) {
                return Err(format!(
                    "{bdf} is missing from {}",
                    h.display(paths::PCI_DEVICES)
                ));
            }
            // A device coming out of reset may read 0x0001 (CRS) for a while: poll.
            let cfg = poll_until(t, || device::config_healthy(h, bdf).ok());
            if cfg.is_none() {
                let why = device::config_healthy(h, bdf).unwrap_err();
                return Err(format!("{bdf}: {why}"));
            }
            // Only the link is compared with before: two attributes, not the whole device
            // (its driver_override read is a bounded op of its own).
            if let (Some(w0), Some(w1)) = (&b.info.link_width, device::link_width_of(h, bdf)) {
                let (a, c) = (
                    w0.parse::<u32>().unwrap_or(0),
                    w1.parse::<u32>().unwrap_or(0),
                );
                if c < a {
                    return Err(format!("{bdf}: link came back at x{c}, was x{a}"));
                }
            }
            if b.info.link_speed.is_some() {
                let now = device::link_speed_of(h, bdf);
                if link_rank(&now) < link_rank(&b.info.link_speed) {
                    return Err(format!(
                        "{bdf}: link speed {} after reset, was {}",
                        now.as_deref().unwrap_or("?"),
                        b.info.link_speed.as_deref().unwrap_or("?")
                    ));
                }
            }
            let kept = self
                .kept
                .lock()
                .map(|k| k.iter().find(|(x, _)| x == bdf).map(|(_, d)| d.clone()))
                .unwrap_or(None);
            let want = kept.as_deref().or(b.info.driver.as_deref());
            if poll_until(t, || {
                (device::driver_of(h, bdf).as_deref() == want).then_some(())
            })
            .is_none()
            {
                return Err(format!(
                    "{bdf}: driver is {}, was {}",
                    device::driver_of(h, bdf).as_deref().unwrap_or("none"),
                    want.unwrap_or("none")
                ));
            }
        }
        Ok(())
    }

    /// Whether every function is present with healthy config space (polled like `verify`:
    /// a function may still be coming out of an earlier reset).
    fn healthy(&self, before: &[Before]) -> bool {
        let h = self.h();
        let _t = self.ctx.log.span(
            Cat::Verify,
            format!(
                "{}: config space before the ladder",
                list(&before.iter().map(|b| b.info.bdf).collect::<Vec<_>>())
            ),
        );
        let t = self.budget(self.ctx.cfg.timeouts.driver_bind);
        before.iter().all(|b| {
            device::exists(h, &b.info.bdf)
                && poll_until(t, || device::config_healthy(h, &b.info.bdf).ok()).is_some()
        })
    }

    /// Rung 1: the function's own reset methods.
    fn function_reset(&self, before: &[Before]) -> RungOutcome {
        let h = self.h();
        let t = self.budget(self.ctx.cfg.timeouts.flr);
        let undo_t = self.ctx.cfg.timeouts.flr;
        let mut done = Vec::new();
        let mut skipped = Vec::new();
        for b in before {
            let bdf = &b.info.bdf;
            if !b.info.has_reset {
                skipped.push(format!("{bdf} has no reset method"));
                continue;
            }
            let rm_rel = paths::dev(bdf, DevFile::ResetMethod);
            let old = device::reset_method_of(h, bdf);
            if let Some(m) = self.method {
                if let Err(e) = self.kwrite(&rm_rel, m, t) {
                    return RungOutcome::Untouched(format!(
                        "{bdf}: the kernel refuses reset method {m:?} ({}: {})",
                        h.display(&rm_rel),
                        errno_text(&e)
                    ));
                }
            }
            let r = self.kwrite(&paths::dev(bdf, DevFile::Reset), "1", t);
            if self.method.is_some() {
                if let Some(old) = &old {
                    let data = device::reset_method_data(old);
                    if let Err(e) = self.kwrite(&rm_rel, data, undo_t) {
                        self.ctx.log.error(&format!(
                            "{bdf}: restoring reset_method {old:?} in {}: {}",
                            h.display(&rm_rel),
                            errno_text(&e)
                        ));
                    }
                }
            }
            match r {
                Ok(()) => done.push(format!(
                    "{bdf} ({})",
                    self.method.map(str::to_string).or(old).unwrap_or_default()
                )),
                Err(e) => {
                    let timed_out = e.raw_os_error() == Some(libc::ETIMEDOUT);
                    let msg = format!(
                        "{bdf}: writing 1 to {}: {}{}",
                        h.display(&paths::dev(bdf, DevFile::Reset)),
                        errno_text(&e),
                        if e.raw_os_error() == Some(libc::ENOTTY) {
                            " (no reset method worked)"
                        } else if timed_out {
                            " (the reset did not return)"
                        } else {
                            ""
                        }
                    );
                    // A reset that never returned may have done anything.
                    return if timed_out {
                        RungOutcome::Hung(msg)
                    } else if done.is_empty() {
                        RungOutcome::Untouched(msg)
                    } else {
                        RungOutcome::Failed(msg)
                    };
                }
            }
        }
        if done.is_empty() {
            return RungOutcome::Untouched(skipped.join("; "));
        }
        let mut s = format!("reset {}", done.join(", "));
        if !skipped.is_empty() {
            s.push_str(&format!("; {}", skipped.join("; ")));
        }
        RungOutcome::Done(s)
    }

    /// Why a reset of everything below `bridge` is not safe, or None when it is.
    fn bus_unsafe(&self, bridge: &Bdf, below: &[Bdf]) -> Option<String> {
        let h = self.h();
        for b in below {
            let info = device::read_device(h, b)?;
            let drv = info.driver.as_deref();
            let console = info.is_display()
                && (info.boot_vga == Some(true) || h.exists(&paths::dev(b, DevFile::Drm)))
                && drv.is_some_and(|d| d != VFIO);
            if console {
                return Some(format!(
                    "{b} below {bridge} drives the host console ({})",
                    drv.unwrap_or("?")
                ));
            }
            let ours = self.owned.contains(b);
            if !ours && drv.is_some_and(|d| d != VFIO) {
                return Some(format!(
                    "{b} below {bridge} is in use by the host ({}) and was not asked for",
                    drv.unwrap_or("?")
                ));
            }
        }
        None
    }

    /// Rung 2: reset everything below the parent bridge.
    fn bus_reset(&self, before: &[Before]) -> RungOutcome {
        let h = self.h();
        let first = &before[0].info.bdf;
        let Some(bridge) = device::parent_bridge(h, first) else {
            return RungOutcome::Untouched(format!(
                "{first} has no parent bridge (root complex device)"
            ));
        };
        let below: Vec<Bdf> = device::list_all(h)
            .into_iter()
            .filter(|b| device::parent_bridge(h, b) == Some(bridge))
            .collect();
        if let Some(why) = self.bus_unsafe(&bridge, &below) {
            return RungOutcome::Untouched(format!("bus reset refused: {why}"));
        }
        let t = self.budget(self.ctx.cfg.timeouts.bus_reset);
        let sub = paths::dev(&bridge, DevFile::ResetSubordinate);
        if h.exists(&sub) {
            // EAGAIN: the bus lock is busy; poll until the deadline.
            let mut last: Option<io::Error> = None;
            let ok = poll_until(t, || match self.kwrite(&sub, "1", t) {
                Ok(()) => Some(true),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    last = Some(e);
                    None
                }
                Err(e) => {
                    last = Some(e);
                    Some(false)
                }
            });
            return match ok {
                Some(true) => RungOutcome::Done(format!(
                    "reset_subordinate on {bridge} (resets {})",
                    list(&below)
                )),
                _ => {
                    let e = last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::ETIMEDOUT));
                    RungOutcome::untouched_or_hung(
                        &e,
                        format!("writing 1 to {}: {}", h.display(&sub), errno_text(&e)),
                    )
                }
            };
        }
        // Older kernels: the kernel's bus reset, which works only when the function is alone
        // on its bus.
        if below.len() != 1 || below[0] != *first {
            return RungOutcome::Untouched(format!(
                "no reset_subordinate on {bridge} (kernel before 6.13) and {first} shares its bus with {}",
                list(&below.iter().filter(|b| *b != first).copied().collect::<Vec<_>>())
            ));
        }
        if !h.exists(&paths::dev(first, DevFile::Reset)) {
            return RungOutcome::Untouched(format!("{first} has no reset file"));
        }
        let rm = paths::dev(first, DevFile::ResetMethod);
        let old = device::reset_method_of(h, first).unwrap_or_default();
        if let Err(e) = self.kwrite(&rm, "bus", t) {
            return RungOutcome::Untouched(format!(
                "{first}: bus reset not offered ({}: {})",
                h.display(&rm),
                errno_text(&e)
            ));
        }
        let r = self.kwrite(&paths::dev(first, DevFile::Reset), "1", t);
        let _ = self.kwrite(
            &rm,
            device::reset_method_data(&old),
            self.ctx.cfg.timeouts.bus_reset,
        );
        match r {
            Ok(()) => RungOutcome::Done(format!("bus reset of {first}")),
            Err(e) => RungOutcome::untouched_or_hung(
                &e,
                format!("{first}: bus reset: {}", errno_text(&e)),
            ),
        }
    }

    /// Rung 3: remove the functions, rescan, wait for them, restore override/reset_method and
    /// the driver they had.
    fn remove_rescan(&self, before: &[Before]) -> RungOutcome {
        let h = self.h();
        let t = self.budget(self.ctx.cfg.timeouts.rescan);
        let first = before[0].info.bdf;
        let bridge = device::parent_bridge(h, &first);
        // The overrides to put back (the ladder's view of a device leaves them out: they do not
        // change before this rung, and this is the only rung that loses them).
        let overrides: Vec<(Bdf, Option<String>)> = before
            .iter()
            .map(|b| (b.info.bdf, device::override_of(h, &b.info.bdf)))
            .collect();
        // Highest function first, function 0 last, like a hot-unplug.
        for b in before.iter().rev() {
            let bdf = &b.info.bdf;
            if device::exists(h, bdf) {
                if let Err(e) = self.write(bdf, &paths::dev(bdf, DevFile::Remove), "1", t) {
                    return RungOutcome::failed(&e, e.to_string());
                }
            }
        }
        let gone = {
            let _w = self.ctx.log.span(Cat::Wait, "functions gone after remove");
            poll_until(t, || {
                before
                    .iter()
                    .all(|b| !device::exists(h, &b.info.bdf))
                    .then_some(())
            })
        };
        if gone.is_none() {
            return RungOutcome::Failed("functions did not go away after remove".into());
        }
        let rescan = match bridge {
            Some(br) if h.exists(&format!("{}/rescan", paths::dev_dir(&br))) => {
                format!("{}/rescan", paths::dev_dir(&br))
            }
            _ => paths::PCI_RESCAN.to_string(),
        };
        if let Err(e) = self.write(&first, &rescan, "1", t) {
            return RungOutcome::failed(&e, e.to_string());
        }
        let back = {
            let _w = self.ctx.log.span(Cat::Wait, "functions back after rescan");
            poll_until(t, || {
                before
                    .iter()
                    .all(|b| device::exists(h, &b.info.bdf))
                    .then_some(())
            })
        };
        if back.is_none() {
            let missing: Vec<Bdf> = before
                .iter()
                .map(|b| b.info.bdf)
                .filter(|b| !device::exists(h, b))
                .collect();
            return RungOutcome::Failed(format!(
                "{} did not come back after rescan",
                list(&missing)
            ));
        }
        // A rescanned device has fresh state: no override, default reset_method, and whatever
        // driver matched. Put back what it had.
        let step_t = self.ctx.cfg.timeouts.step;
        for b in before {
            let bdf = &b.info.bdf;
            if let Some(rm) = &b.info.reset_method {
                if device::reset_method_of(h, bdf).as_ref() != Some(rm) {
                    let data = device::reset_method_data(rm);
                    let _ = self.write(bdf, &paths::dev(bdf, DevFile::ResetMethod), data, step_t);
                }
            }
            let had = overrides
                .iter()
                .find(|(x, _)| x == bdf)
                .and_then(|(_, o)| o.clone());
            if device::override_of(h, bdf) != had {
                let data = had.as_deref().unwrap_or("\n");
                let _ = self.write(bdf, &paths::dev(bdf, DevFile::DriverOverride), data, step_t);
            }
            let now = device::driver_of(h, bdf);
            if now != b.info.driver {
                if let Some(cur) = &now {
                    if let Some(rel) = paths::driver_file(cur, "unbind") {
                        let _ = self.write(bdf, &rel, &bdf.to_string(), step_t);
                    }
                }
                if let Some(want) = &b.info.driver {
                    if let Some(rel) = paths::driver_file(want, "bind") {
                        if self.write(bdf, &rel, &bdf.to_string(), step_t).is_err() {
                            let _ =
                                self.write(bdf, paths::PCI_DRIVERS_PROBE, &bdf.to_string(), step_t);
                        }
                    }
                }
            }
        }
        RungOutcome::Done(format!(
            "removed and rescanned {}",
            list(&before.iter().map(|b| b.info.bdf).collect::<Vec<_>>())
        ))
    }

    /// Rung 3 for host-rebind profiles: bind the host driver (its probe resets the card), wait
    /// for it within the profile's deadline, check the card, then keep it there (post-stop, when
    /// that is where it goes back to) or hand it back to the driver it had. On failure the
    /// function goes back to the driver it had (vfio-pci: safe).
    fn host_rebind(&self, before: &[Before]) -> RungOutcome {
        let h = self.h();
        let exec = self.ctx.exec();
        let mut done = Vec::new();
        for b in before {
            let bdf = b.info.bdf;
            let Some((_, r)) = self.quirks.rebind.iter().find(|(x, _)| *x == bdf) else {
                continue;
            };
            let t0 = Instant::now();
            let wait = self.budget(r.wait);
            let cur = device::driver_of(h, &bdf);
            let ov0 = device::override_of(h, &bdf);
            // Back to the driver it had before the rung, with its override: the hand-back
            // after a good rebind and the safe state after a failed one.
            let to_before = || -> Result<()> {
                if let Some(now) = device::driver_of(h, &bdf) {
                    if Some(&now) != cur.as_ref() {
                        exec.apply(&crate::engine::plan::Step::Unbind { bdf, driver: now })?;
                    }
                }
                exec.apply(&crate::engine::plan::Step::SetOverride {
                    bdf,
                    from: None,
                    to: ov0.clone(),
                })?;
                match &cur {
                    Some(c) => exec.apply(&crate::engine::plan::Step::Bind {
                        bdf,
                        driver: c.clone(),
                    }),
                    None => Ok(()),
                }
            };
            // `cause`: the error that failed the rebind, when there is one (it says whether a
            // write hung).
            let back = |cause: Option<&Error>, why: String| -> RungOutcome {
                let hung = cause.is_some_and(Error::timed_out);
                match to_before() {
                    Ok(()) => RungOutcome::failed_or_hung(hung, why),
                    Err(e) => RungOutcome::failed_or_hung(
                        hung || e.timed_out(),
                        format!("{why}; putting it back failed: {e}"),
                    ),
                }
            };
            let mut steps = Vec::new();
            if !h.exists(&paths::driver_dir(&r.driver).unwrap_or_default()) {
                steps.push(crate::engine::plan::Step::LoadModules {
                    modules: vec![crate::engine::exec::module_for_driver(&r.driver)],
                    unload_on_undo: false,
                });
            }
            if let Some(c) = &cur {
                steps.push(crate::engine::plan::Step::Unbind {
                    bdf,
                    driver: c.clone(),
                });
            }
            steps.push(crate::engine::plan::Step::SetOverride {
                bdf,
                from: ov0.clone(),
                to: Some(r.driver.clone()),
            });
            for s in &steps {
                if let Err(e) = exec.apply(s) {
                    return back(Some(&e), format!("{bdf}: host rebind: {e}"));
                }
            }
            // The probe runs inside the bind write: give it the profile's whole wait.
            let bind = paths::driver_file(&r.driver, "bind").unwrap_or_default();
            if let Err(e) = self.write(&bdf, &bind, &bdf.to_string(), wait) {
                return back(
                    Some(&e),
                    format!("{bdf}: host rebind: {} refused it: {e}", r.driver),
                );
            }
            let left = wait.saturating_sub(t0.elapsed());
            if let Err(e) = exec.wait_driver(&bdf, Some(&r.driver), left) {
                return back(Some(&e), format!("{bdf}: host rebind: {e}"));
            }
            let left = wait.saturating_sub(t0.elapsed());
            if poll_until(left, || device::config_healthy(h, &bdf).ok()).is_none() {
                let why = device::config_healthy(h, &bdf).unwrap_err();
                return back(
                    None,
                    format!("{bdf}: bound to {} but still unhealthy: {why}", r.driver),
                );
            }
            if r.keep && self.mode == Mode::PostStop {
                if let Ok(mut k) = self.kept.lock() {
                    k.push((bdf, r.driver.clone()));
                }
                done.push(format!(
                    "{bdf}: {} bound in {} and kept (its host driver)",
                    r.driver,
                    fmt_dur(t0.elapsed())
                ));
                continue;
            }
            // Hand it back (when it came from the host driver itself, it is there already).
            if let Err(e) = to_before() {
                return RungOutcome::failed(&e, format!("{bdf}: handing it back: {e}"));
            }
            done.push(format!(
                "{bdf}: {} bound in {}, handed back to {}",
                r.driver,
                fmt_dur(t0.elapsed()),
                cur.as_deref().unwrap_or("no driver")
            ));
        }
        if done.is_empty() {
            return RungOutcome::Untouched(
                "no function of this slot has a host-rebind profile".into(),
            );
        }
        RungOutcome::Done(done.join("; "))
    }

    /// Where the reset memory starts this slot's ladder: the index of the rung that
    /// recovered its model last time, when this slot can run that rung. Never a rung a quirk
    /// profile forbids, one the slot does not have (host-rebind without a profile, a bus
    /// reset without a parent bridge), nor remove+rescan itself (only for a device the reset
    /// rungs left broken: a model it recovered starts at the rung before it).
    fn memory_start(
        &self,
        funcs: &[Bdf],
        facts: &[FunctionFacts],
        ladder: &[&'static str],
    ) -> Option<(usize, String)> {
        let mem = self.memory?;
        let models: Vec<health::ModelKey> = facts.iter().map(|f| f.model.clone()).collect();
        let (rung, why) = mem.start_rung(&models)?;
        let mut i = ladder.iter().position(|n| *n == rung.name());
        if rung == RungName::RemoveRescan {
            i = i.and_then(|i| i.checked_sub(1));
        }
        let no = |what: String| {
            self.ctx.log.info(&format!(
                "{}: {why}, but {what}: the ladder starts at the top",
                list(funcs)
            ));
            None
        };
        let Some(i) = i.filter(|i| *i > 0) else {
            return no(format!("this slot has no {} rung", rung.name()));
        };
        let name = ladder[i];
        if let Some((b, _)) = self
            .quirks
            .skip
            .iter()
            .find(|(b, rungs)| funcs.contains(b) && rungs.iter().any(|r| r == name))
        {
            return no(format!("the quirk profile of {b} forbids {name}"));
        }
        if name == "bus-reset" && device::parent_bridge(self.h(), &funcs[0]).is_none() {
            return no(format!("{} has no parent bridge", funcs[0]));
        }
        Some((i, why))
    }

    /// Runs the ladder on one slot's functions (the restore may hold them at D0: `hold_d0`).
    fn run_slot(&self, funcs: &[Bdf]) -> SlotReport {
        let report = self.ladder_slot(funcs);
        if report.verdict == Verdict::Unrecovered {
            // They stay on vfio-pci: let them idle in D3hot again as vfio-pci had them.
            let held: Vec<Bdf> = funcs
                .iter()
                .copied()
                .filter(|b| self.quirks.hold_d0.contains(b))
                .collect();
            release_d0(self.ctx, &held, self.deadline);
        }
        report
    }

    fn ladder_slot(&self, funcs: &[Bdf]) -> SlotReport {
        let start = Instant::now();
        let h = self.h();
        let mut rungs = Vec::new();
        // Each function as it is now: read here, unless the caller read the whole slot while
        // its guard scanned (`LadderQuirks::read`). Model and serials for the reset memory are
        // read while the device is as it was (a device the ladder leaves broken may no longer
        // show its serial); the physical slot is named after the ladder (`reset_many_then`).
        let given: Vec<&ReadBefore> = funcs
            .iter()
            .filter_map(|b| self.quirks.read.iter().find(|r| r.info.bdf == *b))
            .collect();
        // What was read while the guard scanned is used if every function is still on the
        // driver it had then (one link each); otherwise the slot is read again.
        let still = || {
            given
                .iter()
                .all(|r| device::driver_of(h, &r.info.bdf) == r.info.driver)
        };
        let read: Vec<ReadBefore> = if given.len() == funcs.len() && still() {
            given.into_iter().cloned().collect()
        } else {
            let _t = self.ctx.log.span(
                Cat::Verify,
                format!("{}: read before the ladder", list(funcs)),
            );
            funcs
                .iter()
                .filter_map(|b| read_before(h, b, None))
                .collect()
        };
        let mut before = Vec::with_capacity(read.len());
        let mut configs = Vec::with_capacity(read.len());
        let mut facts = Vec::with_capacity(read.len());
        for r in read {
            before.push(Before { info: r.info });
            configs.push(r.config);
            facts.push(r.facts);
        }
        let mut first: Option<&'static str> = None;
        let mut memory: Option<String> = None;
        let report = |verdict, rungs, message: String, first, memory| SlotReport {
            functions: funcs.to_vec(),
            verdict,
            rungs,
            message,
            ms: start.elapsed().as_millis() as u64,
            start: first,
            memory,
            facts: facts.clone(),
        };
        if before.len() != funcs.len() {
            let missing: Vec<Bdf> = funcs
                .iter()
                .copied()
                .filter(|b| !device::exists(h, b))
                .collect();
            return report(
                Verdict::Refused,
                rungs,
                format!("{} does not exist on this host", list(&missing)),
                None,
                None,
            );
        }
        // Was it healthy before we started? A refusal then leaves it healthy. (Its link and
        // driver were just read into `before`: only config space is left to check.)
        // The config space just read for the serials answers at once when it is healthy;
        // otherwise it is polled (a function may still be coming out of an earlier reset).
        let healthy_before = configs
            .iter()
            .all(|c| device::config_bytes_healthy(c.as_deref()).is_ok())
            || self.healthy(&before);
        type RungFn<'x, 'y, 'z> = fn(&Ladder<'x, 'y>, &[Before]) -> RungOutcome;
        let mut ladder: Vec<(&'static str, RungFn)> = vec![
            ("function-reset", Ladder::function_reset),
            ("bus-reset", Ladder::bus_reset),
        ];
        if self.quirks.rebind.iter().any(|(b, _)| funcs.contains(b)) {
            ladder.push(("host-rebind", Ladder::host_rebind));
        }
        ladder.push(("remove-rescan", Ladder::remove_rescan));
        let mut reasons: Vec<String> = Vec::new();
        let mut hung = false;
        // The reset memory may start the ladder further down (see `memory_start`); it still
        // verifies after that rung and escalates past it. When the remembered rung cannot run
        // here at all, the ladder runs from the top (that rung's outcome is reused, not tried
        // again).
        let names: Vec<&'static str> = ladder.iter().map(|(n, _)| *n).collect();
        let mem_start = self.memory_start(funcs, &facts, &names);
        let mut order: Vec<usize> = match &mem_start {
            Some((i, why)) => {
                first = Some(names[*i]);
                let note = format!("started at {}: {why}", names[*i]);
                self.ctx.log.info(&format!("{}: {note}", list(funcs)));
                memory = Some(note);
                (*i..ladder.len()).collect()
            }
            None => (0..ladder.len()).collect(),
        };
        let mut reuse: Option<usize> = None;
        let mut k = 0;
        while k < order.len() {
            let i = order[k];
            k += 1;
            let (name, f) = ladder[i];
            if reuse == Some(i) {
                // The remembered rung, tried first, did not run: the ladder's own rule after
                // it applies again.
                if healthy_before && name == "bus-reset" {
                    break;
                }
                continue;
            }
            if let Some((b, _)) = self
                .quirks
                .skip
                .iter()
                .find(|(b, rungs)| funcs.contains(b) && rungs.iter().any(|r| r == name))
            {
                let detail =
                    format!("skipped: the quirk profile of {b} says this rung does not work");
                self.ctx
                    .log
                    .info(&format!("{}: {name}: {detail}", list(funcs)));
                not_run(&mut rungs, &mut reasons, name, detail);
                continue;
            }
            if Instant::now() >= self.deadline {
                let detail = format!(
                    "not tried: the phase deadline ({}) was reached",
                    humantime::format_duration(self.ctx.cfg.timeouts.phase)
                );
                self.ctx
                    .log
                    .warn(&format!("{}: {name}: {detail}", list(funcs)));
                not_run(&mut rungs, &mut reasons, name, detail);
                break;
            }
            // remove+rescan is a recovery for a device that is broken, not a reset of a
            // healthy one.
            if name == "remove-rescan" && healthy_before && self.verify(&before).is_ok() {
                break;
            }
            let t0 = Instant::now();
            let r = f(self, &before);
            let ran = r.touched();
            // A write that never returned: the kernel still holds the device (its reset
            // thread owns the device lock). Whatever the checks say, it is not reset, and no
            // further rung can run on it.
            let stuck = matches!(r, RungOutcome::Hung(_));
            let detail = r.into_detail();
            let check = if ran { self.verify(&before) } else { Ok(()) };
            let ok = ran && !stuck && check.is_ok();
            let detail = match &check {
                Err(c) if ran => format!("{detail}; check failed: {c}"),
                _ => detail,
            };
            self.ctx.log.info(&format!(
                "{}: {name}: {} ({})",
                list(funcs),
                if ok {
                    format!("ok: {detail}")
                } else {
                    format!("no: {detail}")
                },
                fmt_dur(t0.elapsed())
            ));
            rungs.push(Rung {
                rung: name,
                ran,
                ok,
                detail: detail.clone(),
                ms: t0.elapsed().as_millis() as u64,
            });
            if ok {
                return report(
                    Verdict::Reset,
                    rungs,
                    format!("{name}: {detail}"),
                    first,
                    memory,
                );
            }
            reasons.push(format!("{name}: {detail}"));
            if stuck {
                hung = true;
                break;
            }
            if !ran && reuse.is_none() && mem_start.as_ref().is_some_and(|(m, _)| *m == i) {
                let note = format!("it could not run here ({detail}): the ladder ran from the top");
                self.ctx
                    .log
                    .info(&format!("{}: {name}: {note}", list(funcs)));
                memory = memory.map(|m| format!("{m}; {note}"));
                reuse = Some(i);
                order = (0..ladder.len()).collect();
                k = 0;
                continue;
            }
            if !ran && healthy_before && name == "bus-reset" {
                // Nothing was done and nothing is wrong: refuse rather than escalate.
                break;
            }
        }
        if !hung && self.verify(&before).is_ok() {
            let msg = format!("not reset: {}", reasons.join("; "));
            let msg = if self.mode == Mode::PostStop {
                format!("{msg} (healthy; vfio-pci already reset what it could on release)")
            } else {
                msg
            };
            return report(Verdict::Refused, rungs, msg, first, memory);
        }
        report(
            Verdict::Unrecovered,
            rungs,
            format!(
                "{} did not recover; tried: {}; it needs a host reboot (or a power cycle)",
                list(funcs),
                reasons.join("; ")
            ),
            first,
            memory,
        )
    }
}

/// What one rung did: the ladder decides on the variant, the text is for people.
#[derive(Debug)]
pub enum RungOutcome {
    /// It ran; the text says what it did (the checks decide whether it worked).
    Done(String),
    /// It did not touch the device: not offered, refused, or nothing to do.
    Untouched(String),
    /// It touched the device and failed.
    Failed(String),
    /// A write did not return before its deadline: the kernel still holds the device.
    Hung(String),
}

impl RungOutcome {
    /// Whether the device may have been changed (the checks run after such a rung).
    fn touched(&self) -> bool {
        !matches!(self, RungOutcome::Untouched(_))
    }

    fn into_detail(self) -> String {
        match self {
            RungOutcome::Done(s)
            | RungOutcome::Untouched(s)
            | RungOutcome::Failed(s)
            | RungOutcome::Hung(s) => s,
        }
    }

    /// A write that failed before it could act; one that did not return may have acted.
    fn untouched_or_hung(e: &io::Error, why: String) -> RungOutcome {
        if e.raw_os_error() == Some(libc::ETIMEDOUT) {
            RungOutcome::Hung(why)
        } else {
            RungOutcome::Untouched(why)
        }
    }

    fn failed(e: &Error, why: String) -> RungOutcome {
        RungOutcome::failed_or_hung(e.timed_out(), why)
    }

    fn failed_or_hung(hung: bool, why: String) -> RungOutcome {
        if hung {
            RungOutcome::Hung(why)
        } else {
            RungOutcome::Failed(why)
        }
    }
}

/// Records a rung that did not run (skipped by a profile, or past the deadline).
fn not_run(rungs: &mut Vec<Rung>, reasons: &mut Vec<String>, name: &'static str, detail: String) {
    reasons.push(format!("{name}: {detail}"));
    rungs.push(Rung {
        rung: name,
        ran: false,
        ok: false,
        detail,
        ms: 0,
    });
}

pub fn list(v: &[Bdf]) -> String {
    v.iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Resets many devices: functions of one slot together, slots on different buses in
/// parallel, slots on one bus one after another.
pub fn reset_many(
    ctx: &Ctx,
    bdfs: &[Bdf],
    method: Option<&str>,
    mode: Mode,
    owned: &[Bdf],
    quirks: &LadderQuirks,
) -> Vec<SlotReport> {
    reset_many_then(ctx, bdfs, method, mode, owned, quirks, &|_| {})
}

/// `reset_many`, running `then` with a bus's reports as soon as every slot on that bus is
/// done (on that bus's thread, while other buses may still be resetting): what follows a
/// reset of those functions (a post-stop's restore) need not wait for the slowest bus.
pub fn reset_many_then(
    ctx: &Ctx,
    bdfs: &[Bdf],
    method: Option<&str>,
    mode: Mode,
    owned: &[Bdf],
    quirks: &LadderQuirks,
    then: &(dyn Fn(&[SlotReport]) + Sync),
) -> Vec<SlotReport> {
    type Slots = BTreeMap<(u16, u8, u8), Vec<Bdf>>;
    let mut by_bus: BTreeMap<(u16, u8), Slots> = BTreeMap::new();
    for b in bdfs {
        let slot = by_bus
            .entry((b.domain, b.bus))
            .or_default()
            .entry(b.slot())
            .or_default();
        if !slot.contains(b) {
            slot.push(*b);
        }
    }
    // The reset memory: read once (no lock; a post-stop reads it beside the guard's wait),
    // consulted per slot, written once at the end.
    let loaded;
    let memory = match &quirks.memory {
        Some(m) => m,
        None => {
            loaded = load_memory(ctx);
            &loaded
        }
    };
    if let Some(w) = &memory.warning {
        ctx.log.warn(w);
    }
    let ladder = Ladder {
        ctx,
        mode,
        method,
        owned,
        quirks,
        kept: std::sync::Mutex::new(Vec::new()),
        deadline: Instant::now() + ctx.cfg.timeouts.phase,
        memory: method.is_none().then_some(memory),
    };
    let mut out = Vec::new();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<SlotReport>>();
    let run_bus = |slots: &Slots, tx: std::sync::mpsc::Sender<Vec<SlotReport>>| {
        let r = slots
            .values()
            .map(|funcs| {
                let mut f = funcs.clone();
                f.sort();
                ladder.run_slot(&f)
            })
            .collect::<Vec<_>>();
        let _ = tx.send(r.clone());
        then(&r);
        r
    };
    let buses = by_bus.len();
    let slot_count: usize = by_bus.values().map(BTreeMap::len).sum();
    std::thread::scope(|s| {
        // The reset memory's record is written as soon as every bus's ladder is done, beside
        // what `then` does with them (a post-stop's restore waits for drivers to bind); the
        // physical slots it names are found beside the slower buses' resets.
        let record = s.spawn(move || {
            // Once the first bus is done: until then the ladders' own reads have the CPUs.
            let mut reports: Vec<SlotReport> = rx.recv().unwrap_or_default();
            let places = health::physical_slots(ctx.h());
            reports.extend(rx.iter().take(buses.saturating_sub(1)).flatten());
            if ctx.dry_run {
                return;
            }
            for r in &mut reports {
                for f in &mut r.facts {
                    f.physical_slot = places
                        .iter()
                        .find(|(k, _)| *k == (f.bdf.domain, f.bdf.bus, f.bdf.dev))
                        .map(|(_, n)| n.clone());
                }
            }
            let records: Vec<health::ResetRecord> = reports.iter().map(reset_record).collect();
            let learn = method.is_none();
            ctx.log
                .timed(Cat::State, "reset memory: record", || match quirks.phase {
                    Some((phase, t0)) => {
                        let ok = reports.len() == slot_count
                            && reports.iter().all(|r| r.verdict == Verdict::Reset);
                        crate::engine::metrics::record_with_phase(
                            ctx,
                            &records,
                            learn,
                            (phase, t0.elapsed(), ok),
                        )
                    }
                    None => health::record_resets(ctx.h(), ctx.log, &records, learn),
                });
        });
        // The buses side by side (the first on this thread); a bus whose ladder panicked
        // reports nothing.
        let slots: Vec<&Slots> = by_bus.values().collect();
        for r in crate::host::side_by_side_caught(&slots, |s| run_bus(s, tx.clone()))
            .into_iter()
            .flatten()
        {
            out.extend(r);
        }
        drop(tx);
        let _ = record.join();
    });
    out
}

/// The reset memory as the ladder consults it (read without the lock: it only advises
/// which rung to start with; its record is a locked read-modify-write).
pub fn load_memory(ctx: &Ctx) -> Memory {
    ctx.log
        .timed(Cat::State, "reset memory", || Memory::load(ctx.h()))
}

/// A slot's report as the reset memory keeps it.
fn reset_record(r: &SlotReport) -> health::ResetRecord {
    health::ResetRecord {
        functions: r.facts.clone(),
        outcome: match r.verdict {
            Verdict::Reset => health::Outcome::Reset,
            Verdict::Refused => health::Outcome::Refused,
            Verdict::Unrecovered => health::Outcome::Unrecovered,
        },
        start: r.start.and_then(RungName::from_name),
        rungs: r
            .rungs
            .iter()
            .filter_map(|x| {
                Some(health::RungTry {
                    rung: RungName::from_name(x.rung)?,
                    ran: x.ran,
                    ok: x.ok,
                    ms: x.ms,
                })
            })
            .collect(),
        ms: r.ms,
        message: (r.verdict != Verdict::Reset).then(|| r.message.clone()),
    }
}

/// post-stop: vfio-pci lets an idle function runtime-suspend (power/control "auto"), so
/// around a reset the kernel resumes it (the reset), suspends it again (a config read right
/// after waits for that) and resumes it once more (the unbind): tens of milliseconds for
/// nothing. With power/control "on" from before the ladder until the unbind the function stays
/// at D0 throughout. `bdfs`: the functions the restore moves from vfio-pci back to a host
/// driver; only those bound to vfio-pci with "auto" are written, in parallel (each write
/// waits for the function's resume, ~10 ms from D3hot). The restore issues it while the guard
/// still waits for QEMU to let go: "on" resets nothing, and vfio-pci keeps a function it has
/// open at D0 anyway. vfio-pci's remove sets power/control to "on" whatever it was, so the
/// host ends as it would have anyway, a crash included (the next restore unbinds them too).
/// A function that does not recover, or a restore that stops before the ladder (a holder
/// that does not let go), gets "auto" back (`release_d0`). A write that fails only means the
/// ladder runs without the hold. No write waits past `deadline` (the phase's).
///
/// Holds one function: the restore starts one thread per function with it, before anything
/// else (each write waits for its function's resume, ~10 ms from D3hot, and the ladder waits
/// for it). Returns the function if it is held now.
pub fn hold_d0(ctx: &Ctx, b: &Bdf, deadline: Instant) -> Option<Bdf> {
    let h = &*ctx.host;
    if device::driver_of(h, b).as_deref() != Some(VFIO)
        || device::power_control_of(h, b).as_deref() != Some("auto")
    {
        return None;
    }
    let rel = paths::dev(b, DevFile::PowerControl);
    match kwrite(ctx, &rel, "on", within(ctx.cfg.timeouts.step, deadline)) {
        Ok(()) => Some(*b),
        Err(e) => {
            ctx.log.warn(&format!(
                "{b}: could not hold it at D0 for the reset ({}: {}); resetting it as it is",
                h.display(&rel),
                errno_text(&e)
            ));
            None
        }
    }
}

/// A kernel write under the reset, timed (`"on" > 0000:02:00.0/power/control`).
fn kwrite(ctx: &Ctx, rel: &str, data: &str, t: Duration) -> io::Result<()> {
    let short = rel.strip_prefix("sys/bus/pci/devices/").unwrap_or(rel);
    let _t = ctx
        .log
        .span(Cat::Write, format!("{:?} > {short}", data.trim_end()));
    write_with_deadline(&ctx.host, rel, data, t)
}

/// Gives functions `hold_d0` held back to runtime PM ("auto"), each write by `deadline`.
pub fn release_d0(ctx: &Ctx, held: &[Bdf], deadline: Instant) {
    for b in held {
        let rel = paths::dev(b, DevFile::PowerControl);
        let t = within(ctx.cfg.timeouts.step, deadline);
        if let Err(e) = write_with_deadline(&ctx.host, &rel, "auto", t) {
            ctx.log.warn(&format!(
                "{b}: power/control stays \"on\" ({}: {})",
                ctx.host.display(&rel),
                errno_text(&e)
            ));
        }
    }
}

/// What `post_stop_reset` runs for a bus's functions once they are done: the functions, and
/// those of them that did not recover with why.
pub type BusDone<'a> = dyn Fn(&[Bdf], &[(Bdf, String)]) + Sync + 'a;

#[derive(Default)]
pub struct Outcome {
    pub failed: Vec<(Bdf, String)>,
}

/// post-stop: reset every device the VM had, with the VM as owner of all of them.
/// `profiles`: the quirk profiles in force (the caller loaded them once for the phase).
/// `skip`: functions already back on their host drivers, never reset.
/// `held`: the functions the restore holds at D0 (`hold_d0`).
/// `then(functions, failed)`: run for the functions of each bus once they are done (see
/// `reset_many_then`), with those of them that did not recover.
pub fn post_stop_reset(
    ctx: &Ctx,
    st: &VmState,
    profiles: &[crate::engine::quirks::Profile],
    skip: &[Bdf],
    held: &[Bdf],
    memory: Option<Memory>,
    then: &BusDone,
) -> Outcome {
    let mut o = Outcome::default();
    let reset_on = ctx.cfg.vm(st.vmid).resets_on_stop();
    let bdfs: Vec<Bdf> = st
        .bdfs()
        .into_iter()
        .filter(|b| !skip.contains(b))
        .filter(|b| !st.unrecovered.contains(b) || device::exists(&*ctx.host, b))
        .collect();
    if !reset_on {
        // Still check health: a dead device must not go back to its host driver.
        for b in &bdfs {
            if let Err(e) = device::config_healthy(&*ctx.host, b) {
                o.failed.push((*b, e));
            }
        }
        return o;
    }
    // A profile's reset_method (e.g. Blackwell: no FLR) must hold while the ladder runs, even
    // when an earlier restore already put the original list back or a remove/rescan brought
    // the kernel's default back: the original list is restored after the reset.
    let mut quirks = LadderQuirks::default();
    for d in &st.devices {
        let Some(p) = d
            .quirk
            .as_deref()
            .and_then(|q| crate::engine::quirks::by_name(profiles, q))
        else {
            continue;
        };
        let b = d.original.bdf;
        let cur = device::reset_method_of(&*ctx.host, &b);
        if let Some(want) = p.planned_reset_method(cur.as_deref()) {
            if cur.as_deref() != Some(want.as_str()) {
                let rel = paths::dev(&b, DevFile::ResetMethod);
                let data = device::reset_method_data(&want);
                if let Err(e) = write_with_deadline(&ctx.host, &rel, data, ctx.cfg.timeouts.step) {
                    ctx.log.warn(&format!(
                        "{b}: could not re-apply the {} reset_method {want:?}: {}",
                        p.name,
                        errno_text(&e)
                    ));
                }
            }
        }
        quirks.add(b, p, d.original.driver.as_deref());
    }
    quirks.hold_d0 = held.to_vec();
    quirks.memory = memory;
    let bus_done = |reports: &[SlotReport]| {
        let funcs: Vec<Bdf> = reports.iter().flat_map(|r| r.functions.clone()).collect();
        let failed: Vec<(Bdf, String)> = reports
            .iter()
            .filter(|r| r.verdict == Verdict::Unrecovered)
            .flat_map(|r| r.functions.iter().map(|b| (*b, r.message.clone())))
            .collect();
        then(&funcs, &failed);
    };
    for r in reset_many_then(ctx, &bdfs, None, Mode::PostStop, &bdfs, &quirks, &bus_done) {
        match r.verdict {
            Verdict::Unrecovered => {
                for b in &r.functions {
                    o.failed.push((*b, r.message.clone()));
                }
            }
            Verdict::Refused => ctx
                .log
                .warn(&format!("{}: {}", list(&r.functions), r.message)),
            Verdict::Reset => {}
        }
    }
    o
}
