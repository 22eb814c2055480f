//! Host console handoff: units, vtconsoles and the firmware framebuffer.

use crate::engine::plan::Step;
use crate::error::{Error, Result};
use crate::host::{paths, poll_until, Host};
use crate::log::Logger;
use crate::parse::config::Timeouts;

/// What the console steps need from the executor (`exec::Exec` implements it), so that the
/// executor can hand these steps here without the two modules importing each other.
pub trait Io {
    fn host(&self) -> &dyn Host;
    fn t(&self) -> &Timeouts;
    fn dry_run(&self) -> bool;
    fn log(&self) -> &Logger;
    /// A bounded sysfs write, printed instead under --dry-run.
    fn write_named(
        &self,
        what: &str,
        rel: &str,
        data: &str,
        timeout: std::time::Duration,
    ) -> Result<()>;
}

pub const FIRMWARE_FB: [(&str, &str); 3] = [
    ("simple-framebuffer", "simple-framebuffer.0"),
    ("efi-framebuffer", "efi-framebuffer.0"),
    ("vesa-framebuffer", "vesa-framebuffer.0"),
];

pub fn has_systemd(host: &dyn Host) -> bool {
    host.exists("run/systemd/system")
}

pub fn unit_active(exec: &dyn Io, unit: &str) -> Option<bool> {
    let out = exec
        .host()
        .run("systemctl", &["is-active", "--quiet", unit], exec.t().unit)
        .ok()?;
    Some(out.success())
}

/// vtconsoles currently bound to a frame buffer device.
pub fn fb_vtcons(host: &dyn Host) -> Vec<String> {
    host.list(paths::VTCONSOLE)
        .unwrap_or_default()
        .into_iter()
        .filter(|v| {
            let name = host
                .read(&format!("{}/{v}/name", paths::VTCONSOLE))
                .unwrap_or_default();
            let bound = host
                .read(&format!("{}/{v}/bind", paths::VTCONSOLE))
                .map(|b| b.trim() == "1")
                .unwrap_or(false);
            name.contains("frame buffer") && bound
        })
        .collect()
}

/// Firmware framebuffer platform devices present now.
pub fn firmware_fbs(host: &dyn Host) -> Vec<(String, String)> {
    FIRMWARE_FB
        .iter()
        .filter(|(d, dev)| host.exists(&format!("{}/{d}/{dev}", paths::PLATFORM_DRIVERS)))
        .map(|(d, dev)| (d.to_string(), dev.to_string()))
        .collect()
}

fn systemctl(exec: &dyn Io, verb: &str, unit: &str) -> Result<()> {
    let h = exec.host();
    if !has_systemd(h) {
        exec.log()
            .info(&format!("no systemd on this host: skipping {verb} {unit}"));
        return Ok(());
    }
    if exec.dry_run() {
        println!("dry-run: run systemctl {verb} {unit}");
        return Ok(());
    }
    let out = h
        .run("systemctl", &[verb, unit], exec.t().unit)
        .map_err(|e| Error::host(unit, "running", format!("systemctl {verb} {unit}"), e))?;
    if !out.success() {
        return Err(Error::Failed(format!(
            "systemctl {verb} {unit} failed (exit {:?}): {}",
            out.code,
            out.stderr.trim()
        )));
    }
    Ok(())
}

pub fn apply(exec: &dyn Io, step: &Step) -> Result<()> {
    let h = exec.host();
    match step {
        Step::StopUnit { unit } | Step::StartUnit { unit } => {
            if !paths::safe_name(unit) {
                return Err(Error::Config(format!("bad unit name {unit:?}")));
            }
            let start = matches!(step, Step::StartUnit { .. });
            if !exec.dry_run() && has_systemd(h) && unit_active(exec, unit) == Some(start) {
                return Ok(());
            }
            systemctl(exec, if start { "start" } else { "stop" }, unit)
        }
        Step::Vtcon { vtcon, bind } => {
            if !paths::safe_name(vtcon) || !vtcon.starts_with("vtcon") {
                return Err(Error::Config(format!("bad vtconsole name {vtcon:?}")));
            }
            let rel = format!("{}/{vtcon}/bind", paths::VTCONSOLE);
            let want = if *bind { "1" } else { "0" };
            let read = || h.read(&rel).map(|s| s.trim().to_string()).ok();
            if read().as_deref() == Some(want) {
                return Ok(());
            }
            exec.write_named(vtcon, &rel, want, exec.t().step)?;
            if exec.dry_run() {
                return Ok(());
            }
            // The kernel reports success even when nothing happened: read it back.
            poll_until(exec.t().driver_bind, || {
                (read().as_deref() == Some(want)).then_some(())
            })
            .ok_or_else(|| {
                Error::Failed(format!(
                    "{vtcon}: wrote {want} to {} and the kernel said yes, but it reads {}",
                    h.display(&rel),
                    read().unwrap_or_else(|| "nothing".into())
                ))
            })
        }
        Step::UnbindPlatform { driver, device } => {
            if !paths::safe_name(driver) || !paths::safe_name(device) {
                return Err(Error::Config(format!("bad platform device {device:?}")));
            }
            let dev = format!("{}/{driver}/{device}", paths::PLATFORM_DRIVERS);
            if !h.exists(&dev) {
                return Ok(());
            }
            let rel = format!("{}/{driver}/unbind", paths::PLATFORM_DRIVERS);
            exec.write_named(device, &rel, device, exec.t().step)?;
            if exec.dry_run() {
                return Ok(());
            }
            poll_until(exec.t().driver_bind, || (!h.exists(&dev)).then_some(())).ok_or_else(|| {
                Error::Failed(format!("{device}: still bound to {driver} after unbind"))
            })
        }
        _ => Err(Error::Failed(format!("not a console step: {step}"))),
    }
}
