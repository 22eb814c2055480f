//! User hooks: executables in `/etc/pt-hook/hooks.d/<phase>/`, run around pt-hook's own
//! steps. See hooks/README.md for the contract.
//!
//! - Order: sorted by name (byte order). Names may use letters, digits and `- _ . @ :`;
//!   names starting with `.` or ending in `~`, `.dpkg-*`, `.ucf-*`, `.disabled` are skipped;
//!   so are files without an execute bit (with a warning) and directories.
//! - Trust: `/etc/pt-hook`, `hooks.d`, the phase directory and every hook must be owned by
//!   root and not writable by group or others (the rule of `config::check_trusted`), or
//!   the phase is refused (exit 2) naming the file and why. pre-start checks all four phase
//!   directories, so a bad post-stop hook stops the start instead of the clean-up.
//! - Run: directly (no shell) as `HOOK <vmid> <phase>` (libvirt: the domain name for
//!   `<vmid>`), stdin /dev/null, environment exactly PATH, LC_ALL=C, PT_HOOK_VMID,
//!   PT_HOOK_PHASE, PT_HOOK_DEVICES (space-separated functions), PT_HOOK_KIND
//!   (`pve`/`libvirt`), PT_HOOK_LIBVIRT_UUID (libvirt), PT_HOOK_ROLLBACK=1 (post-stop hooks
//!   run to undo a failed pre-start); deadline `[timeouts] hook_timeout` (default 60 s), after
//!   which the hook's whole process group is killed.
//! - pre-start: user hooks run first, before pt-hook touches any device; the first hook that
//!   fails (non-zero exit, timeout) aborts the start. If pre-start fails after one or more
//!   pre-start hooks succeeded (a later hook, or pt-hook's own steps, which roll back
//!   first), the post-stop hooks run with PT_HOOK_ROLLBACK=1 so hooks can undo their work.
//! - post-stop: pt-hook gives the devices back first, then the hooks run (also when the
//!   restore failed); the worse of the two results is the exit code.
//! - post-start, pre-stop: only the hooks run.

use std::time::Instant;

use crate::engine::ctx::Ctx;
use crate::engine::state::{self, VmKey};
use crate::error::{Error, Result};
use crate::host::{paths, Host};
use crate::parse::config::check_trusted;
use crate::pci::Bdf;

pub const PHASES: [&str; 4] = ["pre-start", "post-start", "pre-stop", "post-stop"];
const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// Lines of a hook's output copied into pt-hook's log (per stream, the last ones).
const OUTPUT_LINES: usize = 20;

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;

fn skipped_name(n: &str) -> bool {
    n.starts_with('.')
        || n.ends_with('~')
        || n.ends_with(".disabled")
        || n.contains(".dpkg-")
        || n.contains(".ucf-")
}

/// The hooks of one phase, in run order, after the trust checks. `phase` must be one of
/// `PHASES`.
pub fn list(host: &dyn Host, phase: &str, log: &crate::log::Logger) -> Result<Vec<String>> {
    if !PHASES.contains(&phase) {
        return Err(Error::Usage(format!("unknown hook phase {phase:?}")));
    }
    let dir = format!("{}/{phase}", paths::HOOKS_DIR);
    if !host.exists(&dir) {
        return Ok(Vec::new());
    }
    for d in ["etc/pt-hook", paths::HOOKS_DIR, dir.as_str()] {
        check_trusted(host, d)?;
    }
    let names = host
        .list(&dir)
        .map_err(|e| Error::host("user hooks", "listing", host.display(&dir), e))?;
    let mut out = Vec::new();
    for n in names {
        if skipped_name(&n) {
            continue;
        }
        let rel = format!("{dir}/{n}");
        if !paths::safe_name(&n) {
            return Err(Error::Config(format!(
                "{}: refusing: hook names may use only letters, digits and - _ . @ : (64 at most)",
                host.display(&rel)
            )));
        }
        let (_, mode) = host
            .stat_owner_mode(&rel)
            .map_err(|e| Error::host("user hook", "stat", host.display(&rel), e))?;
        match mode & S_IFMT {
            S_IFDIR => continue,
            S_IFREG => {}
            _ => {
                return Err(Error::Config(format!(
                    "{}: refusing: not a regular file",
                    host.display(&rel)
                )))
            }
        }
        check_trusted(host, &rel)?;
        if mode & 0o111 == 0 {
            log.warn(&format!(
                "{}: not executable, skipped (chmod +x to run it)",
                host.display(&rel)
            ));
            continue;
        }
        out.push(rel);
    }
    Ok(out)
}

fn key_env(key: &VmKey) -> (String, &'static str, Option<String>) {
    match key {
        VmKey::Pve(v) => (v.to_string(), "pve", None),
        VmKey::Libvirt(d) => (d.name.clone(), "libvirt", Some(d.uuid.clone())),
    }
}

fn tail(s: &str) -> Vec<&str> {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(OUTPUT_LINES)..].to_vec()
}

/// Runs the phase's hooks in order, stopping at the first failure. Returns how many
/// succeeded, and the failure.
pub fn run_hooks(
    ctx: &Ctx,
    key: &VmKey,
    phase: &str,
    devices: &[Bdf],
    rollback: bool,
) -> (usize, Result<()>) {
    let hooks = match list(ctx.host.as_ref(), phase, ctx.log) {
        Ok(h) => h,
        Err(e) => return (0, Err(e)),
    };
    let (id, kind, uuid) = key_env(key);
    let devs = devices
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let mut env: Vec<(&str, &str)> = vec![
        ("PATH", PATH),
        ("LC_ALL", "C"),
        ("PT_HOOK_VMID", &id),
        ("PT_HOOK_PHASE", phase),
        ("PT_HOOK_DEVICES", &devs),
        ("PT_HOOK_KIND", kind),
    ];
    if let Some(u) = &uuid {
        env.push(("PT_HOOK_LIBVIRT_UUID", u));
    }
    if rollback {
        env.push(("PT_HOOK_ROLLBACK", "1"));
    }
    let timeout = ctx.cfg.timeouts.hook;
    let mut ok = 0;
    for rel in hooks {
        let shown = ctx.host.display(&rel);
        if ctx.dry_run {
            println!(
                "dry-run: run user hook {shown} {id} {phase} (PT_HOOK_DEVICES=\"{devs}\"{})",
                if rollback { ", PT_HOOK_ROLLBACK=1" } else { "" }
            );
            ok += 1;
            continue;
        }
        let start = Instant::now();
        let r = ctx.host.run_file(&rel, &[&id, phase], &env, timeout);
        let took = crate::log::fmt_dur(start.elapsed());
        let out = match r {
            Ok(o) => o,
            Err(e) if e.raw_os_error() == Some(libc::ETIMEDOUT) => {
                return (
                    ok,
                    Err(Error::Failed(format!(
                        "user hook {shown}: no exit after {} (hook_timeout); its process group was killed",
                        humantime::format_duration(timeout)
                    ))),
                )
            }
            Err(e) => return (ok, Err(Error::host("user hook", "running", shown, e))),
        };
        for l in tail(&out.stdout).into_iter().chain(tail(&out.stderr)) {
            ctx.log.info(&format!("user hook {shown}: {l}"));
        }
        if !out.success() {
            let why = match out.code {
                Some(c) => format!("exit code {c}"),
                None => "killed by a signal".to_string(),
            };
            let last = tail(&out.stderr).last().map(|l| format!(": {l}"));
            return (
                ok,
                Err(Error::Failed(format!(
                    "user hook {shown} failed ({why}) after {took}{}",
                    last.unwrap_or_default()
                ))),
            );
        }
        ctx.log.info(&format!("user hook {shown}: ok ({took})"));
        ok += 1;
    }
    (ok, Ok(()))
}

/// The functions a VM holds now (from its state), for the hooks' PT_HOOK_DEVICES.
pub fn held_devices(ctx: &Ctx, key: &VmKey) -> Vec<Bdf> {
    state::load(ctx.host.as_ref(), key)
        .ok()
        .flatten()
        .map(|s| s.bdfs())
        .unwrap_or_default()
}
