//! The command line: hookscript mode (`pt-hook VMID PHASE`) and the operator commands.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::engine::ctx::Ctx;
use crate::engine::lifecycle;
use crate::engine::state::VmKey;
use crate::error::{Error, Result};
use crate::host::real::RealHost;
use crate::host::{kio, Host};
use crate::log::Logger;
use crate::parse::config::{self, Config};
use crate::parse::pve::parse_vmid;
use crate::pci::Bdf;

const AFTER_HELP: &str = "\
Hookscript mode (what Proxmox runs):
  pt-hook <VMID> <PHASE>    PHASE is pre-start, post-start, pre-stop or post-stop;
                            other phases are logged and accepted (exit 0).
  Install: pt-hook install, then qm set <VMID> --hookscript local:snippets/pt-hook

libvirt: as /etc/libvirt/hooks/qemu or in qemu.d/ (pt-hook install --libvirt), with the
  domain XML on stdin; see pt-hook libvirt --help.
Config: /etc/pve/pt-hook/pt-hook.toml and quirks.d/ (cluster-wide, in pmxcfs), overridden
  key by key by /etc/pt-hook/pt-hook.toml and quirks.d/ (this node); [node.NAME] sections
  in either apply to one node. If /etc/pve cannot be read in 2 s (pmxcfs hung or down),
  the copy last read is used from /var/lib/pt-hook/cluster-config.json, with a warning.
  pt-hook doctor says which files were used.
User hooks: executables in /etc/pt-hook/hooks.d/<PHASE>/ (root-owned, not group/other
  writable) run as HOOK <VMID> <PHASE> with PT_HOOK_VMID, PT_HOOK_PHASE, PT_HOOK_DEVICES;
  pre-start hooks before pt-hook's device steps, post-stop hooks after.

Exit codes: 0 ok; 1 the operation failed (in pre-start the VM start is aborted);
            2 usage or configuration error (nothing was touched);
            3 a device is left in a state only a host reboot (or power cycle) fixes.

Environment: PT_HOOK_ROOT (same as --root), PT_HOOK_NODE (node name for PCI mappings;
default: the short host name), PVE_MIGRATED_FROM (set by Proxmox on migration).";

#[derive(Parser, Debug)]
#[command(
    name = "pt-hook",
    version,
    about = "Dependable GPU and PCIe passthrough for Proxmox VE: a hookscript that gives a VM's PCI devices to vfio-pci at pre-start and back to their host drivers at post-stop.",
    after_help = AFTER_HELP,
    subcommand_value_name = "COMMAND | VMID PHASE"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Print every write instead of doing it (hook phases, libvirt, cleanup, reset, accept,
    /// install; plan, status, quirks and doctor never write and refuse it).
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// Prefix for every host path (/sys, /etc, /run, /proc, /usr/share) [env: PT_HOOK_ROOT].
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// pt-hook's config instead of the cluster and local files [default:
    /// /etc/pve/pt-hook/pt-hook.toml then /etc/pt-hook/pt-hook.toml, both optional].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<String>,
    /// More output (debug lines).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Show what pre-start and post-stop would do for a VM; writes nothing.
    Plan {
        /// The VM id (e.g. 100).
        vmid: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Restore what a VM's pre-start left behind when no post-stop came (failed start, host
    /// crash). Without VMID: every VM with pt-hook state that is not running.
    Cleanup {
        /// The VM id; all when omitted.
        vmid: Option<String>,
    },
    /// Accept the devices now at a VM's PCI addresses after they changed on purpose (a card
    /// replaced): rewrites what pt-hook remembers from the VM's last good start, so the next
    /// pre-start no longer refuses. Prints each change (old -> new); with --dry-run only prints.
    #[command(
        after_help = "pre-start refuses (exit 1) when an address in hostpciN (or a libvirt <hostdev>) now holds\nanother device than at the VM's last good start (vendor:device, subsystem, class or serial).\nIf the addresses moved, fix the config instead. Remembered in\n/var/lib/pt-hook/identity/vm-<VMID>.json and libvirt-<uuid>.json.\nNothing remembered: says so and exits 0.\n\nExamples:\n  pt-hook --dry-run accept 100\n  pt-hook accept 100\n  pt-hook accept --libvirt-uuid 4dea22b3-1d52-d8f3-2516-782e98ab3fa0"
    )]
    Accept {
        /// The VM id (e.g. 100).
        #[arg(
            required_unless_present = "libvirt_uuid",
            conflicts_with = "libvirt_uuid"
        )]
        vmid: Option<String>,
        /// A libvirt domain (by its <uuid>) instead of a Proxmox VM.
        #[arg(long, value_name = "UUID")]
        libvirt_uuid: Option<String>,
    },
    /// Recover stuck devices with the escalation ladder (function reset, bus/slot reset,
    /// remove+rescan), checking each device after every step. Exit 3 when a device needs a
    /// host reboot.
    Reset {
        /// Devices (DDDD:BB:DD.F); several reset in parallel where they share no slot or bus.
        #[arg(required = true, value_name = "BDF")]
        bdfs: Vec<String>,
        /// Force one kernel reset method for the first rung (flr, pm, bus, device_specific...).
        #[arg(long, value_name = "NAME")]
        method: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Every PCI device: ids, class, driver, IOMMU group, reset methods, link, quirk, owner (Proxmox VM or libvirt domain), and the health its resets left (HEALTH lines); with --cluster, every node's published devices.
    #[command(
        after_help = "Health comes from the reset memory, /var/lib/pt-hook/health.json: per device the last reset\n(time, the rung that recovered it, how long), resets, failures and NEEDS-REBOOT when the last\nreset left it broken in this boot.\n\n--prometheus prints node_exporter's textfile format (what metrics_file in pt-hook.toml gets\nafter every phase): resets by rung, failures, time per phase, devices by owner.\n\nCluster view (Proxmox VE): every node publishes its passthrough devices to\n/etc/pve/nodes/<node>/pt-hook.json after pre-start, post-stop and cleanup (and on\n`pt-hook publish`). --cluster reads them all: which VM holds which device on which node,\nand what is free. A node offline in /etc/pve/.members is STALE: its devices are shown as\nof its last report and never count as free.\n\nExamples:\n  pt-hook status --cluster\n  pt-hook status --cluster --free 10de:2684         # a free device of this model\n  pt-hook status --cluster --free mapping=rtx4090   # a free device of this mapping\n  pt-hook status --cluster --free 'rtx 4090'        # words of the pci.ids name"
    )]
    Status {
        /// Machine-readable output.
        #[arg(long, conflicts_with = "prometheus")]
        json: bool,
        /// Metrics in Prometheus text format (node_exporter textfile collector).
        #[arg(long)]
        prometheus: bool,
        /// Every node of the Proxmox cluster, from their published inventories.
        #[arg(long, conflicts_with = "prometheus")]
        cluster: bool,
        /// With --cluster: where a free device is: vvvv:dddd, mapping=NAME, or words of the
        /// device name. Exit 1 when none is free on an online node.
        #[arg(long, value_name = "WHAT", requires = "cluster")]
        free: Option<String>,
    },
    /// Write this node's passthrough device inventory to /etc/pve/nodes/<node>/pt-hook.json
    /// for `status --cluster` (the hook phases and cleanup do it on their own).
    Publish {
        /// What triggered it (recorded in the file).
        #[arg(long, default_value = "publish", value_parser = ["pre-start", "post-stop", "cleanup", "publish"])]
        phase: String,
    },
    /// List the quirk profiles, or show which one applies to a device and what it does.
    Quirks {
        /// A device (DDDD:BB:DD.F) on this host, or an id (vvvv:dddd).
        target: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Check the host and VM configs for what breaks passthrough; exit 1 when a check fails.
    ///
    /// Checks IOMMU, interrupt remapping, bootloader flags, vfio modules, blacklists, IOMMU
    /// groups, q35/OVMF/pcie, hookscript and quirks; each passes, warns or fails with a fix.
    /// Without VMID: the host and every VM that has hostpci entries. Reads only.
    Doctor {
        /// Only this VM (besides the host checks).
        vmid: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// libvirt hook mode: what /etc/libvirt/hooks/qemu (a link to pt-hook) runs, with the
    /// domain XML on stdin. `prepare begin` takes the domain's PCI hostdevs, `release end`
    /// gives them back; other operations are logged and accepted.
    #[command(
        after_help = "Install: ln -s /usr/sbin/pt-hook /etc/libvirt/hooks/qemu (or any name in /etc/libvirt/hooks/qemu.d/), then restart libvirtd.\nTry:     pt-hook --dry-run libvirt NAME prepare begin - < <(virsh dumpxml NAME)\nState:   /run/pt-hook/libvirt-<uuid>.json (keyed by the domain's <uuid>)."
    )]
    Libvirt(crate::cmd::libvirt::LibvirtArgs),
    /// Link the installed binary as a Proxmox hookscript (STORAGE's snippets directory from
    /// /etc/pve/storage.cfg) or, with --libvirt, as a libvirt hook; prints the `qm set` line.
    /// A link, never a copy; idempotent; refuses to replace anything else at that place.
    #[command(
        after_help = "Examples:\n  pt-hook install                      # /var/lib/vz/snippets/pt-hook -> /usr/sbin/pt-hook\n  pt-hook install --storage nas --vmid 100\n  pt-hook install --libvirt            # /etc/libvirt/hooks/qemu.d/pt-hook\n  pt-hook --dry-run install            # show what it would do"
    )]
    Install(crate::cmd::install::InstallArgs),
    /// Hookscript mode: pt-hook <VMID> <PHASE>.
    #[command(external_subcommand)]
    Hook(Vec<String>),
}

/// A hookscript phase name Proxmox passes (the ones pt-hook acts on and the rest).
fn is_phase(s: &str) -> bool {
    matches!(s, "pre-start" | "post-start" | "pre-stop" | "post-stop")
}

/// The two invocations that must start fastest skip building the clap parser: Proxmox's
/// `pt-hook <VMID> <PHASE>` (on the path of every VM start; also with `-v`/`-vv`/`--verbose`
/// in front, so the benchmark's timing breakdown is that of the same path) and `--version`.
/// Anything else, or anything unusual about these, goes through clap.
fn fast_path() -> Option<std::result::Result<Cli, i32>> {
    fast_path_from(std::env::args_os().collect())
}

/// `fast_path` for these arguments (the program name first).
fn fast_path_from(argv: Vec<std::ffi::OsString>) -> Option<std::result::Result<Cli, i32>> {
    let mut args = argv.into_iter();
    if crate::cmd::libvirt::invoked_as_hook(&args.next()?) {
        return None;
    }
    let mut rest: Vec<String> = Vec::new();
    for a in args {
        rest.push(a.into_string().ok()?);
    }
    // Leading verbosity flags (each `-v...` counts its v's, as clap's Count does).
    let mut verbose: u8 = 0;
    let mut words = rest.as_slice();
    while let Some((f, tail)) = words.split_first() {
        let n = match f.as_str() {
            "--verbose" => 1,
            f if f.len() > 1 && f.starts_with('-') && f[1..].bytes().all(|c| c == b'v') => {
                f.len() - 1
            }
            _ => break,
        };
        verbose = verbose.saturating_add(u8::try_from(n).ok()?);
        words = tail;
    }
    match words {
        [a] if verbose == 0 && (a == "--version" || a == "-V") => {
            println!("pt-hook {}", env!("CARGO_PKG_VERSION"));
            Some(Err(0))
        }
        [a, b] => {
            let digits = !a.is_empty() && a.bytes().all(|c| c.is_ascii_digit());
            (digits && is_phase(b)).then(|| {
                Ok(Cli {
                    global: Global {
                        dry_run: false,
                        root: None,
                        config: None,
                        verbose,
                        quiet: false,
                    },
                    cmd: Cmd::Hook(vec![a.clone(), b.clone()]),
                })
            })
        }
        _ => None,
    }
}

pub fn main() -> i32 {
    let started = std::time::Instant::now();
    let parsed = fast_path().unwrap_or_else(|| {
        let args = crate::cmd::libvirt::rewrite_args(std::env::args_os().collect());
        Cli::try_parse_from(args).map_err(|e| {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            code
        })
    });
    let cli = match parsed {
        Ok(c) => c,
        Err(code) => return code,
    };
    let root = cli
        .global
        .root
        .clone()
        .or_else(|| std::env::var_os("PT_HOOK_ROOT").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/"));
    let real_root = root == std::path::Path::new("/");
    // With --json, stdout is the document; progress lines would only clutter a captured
    // stream, so they go to syslog only (errors still reach stderr). -v brings them back.
    let json = matches!(
        cli.cmd,
        Cmd::Plan { json: true, .. }
            | Cmd::Reset { json: true, .. }
            | Cmd::Status { json: true, .. }
            | Cmd::Quirks { json: true, .. }
            | Cmd::Doctor { json: true, .. }
    );
    let verbosity = if cli.global.quiet {
        -2
    } else if json && cli.global.verbose == 0 {
        -1
    } else {
        cli.global.verbose as i8
    };
    if !matches!(
        cli.cmd,
        Cmd::Hook(_)
            | Cmd::Cleanup { .. }
            | Cmd::Reset { .. }
            | Cmd::Accept { .. }
            | Cmd::Publish { .. }
    ) {
        // Read-only reports die quietly on a closed pipe (`pt-hook status | head`); commands
        // that change the host keep SIGPIPE ignored and finish what they started.
        use nix::sys::signal::{signal, SigHandler, Signal};
        // SAFETY: restores the default disposition (no handler runs) of one signal before any
        // thread exists; nix's signal() is unsafe only because a handler could be unsound.
        let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    }
    let host: Arc<dyn Host> = Arc::new(RealHost::new(root));
    // The phases that take or give back devices, and `pt-hook reset`, start the guard's walk
    // of /proc first of all, beside the logger, the config and the state (see
    // `guard::PreWalk`).
    let prewalk = match &cli.cmd {
        Cmd::Hook(a)
            if a.len() == 2
                && !a[0].is_empty()
                && a[0].bytes().all(|b| b.is_ascii_digit())
                && matches!(a[1].as_str(), "pre-start" | "post-stop") =>
        {
            crate::engine::guard::PreWalk::start(Arc::clone(&host), a[1] == "pre-start")
        }
        // `pt-hook reset`: its functions are often on host drivers (the class tables first).
        Cmd::Reset { .. } => crate::engine::guard::PreWalk::start(Arc::clone(&host), true),
        _ => crate::engine::guard::PreWalk::none(),
    };
    let mut log = Logger::starting_at(started, verbosity, real_root);
    let code = match run(&cli, host, prewalk, &mut log) {
        Ok(()) => 0,
        Err(e) => {
            log.error(&e.to_string());
            e.exit_code()
        }
    };
    // -v: where the time went (see `log::Timing`).
    log.log_timing();
    code
}

/// `prewalk`: the guard's early walk of /proc, started by `main` for a hook's pre-start or
/// post-stop (none otherwise).
fn run(
    cli: &Cli,
    host: Arc<dyn Host>,
    prewalk: crate::engine::guard::PreWalk,
    log: &mut Logger,
) -> Result<()> {
    let load_cfg = |host: &dyn Host| -> Result<Config> {
        let _t = log.span(crate::log::Cat::Config, "pt-hook.toml");
        config::load(host, cli.global.config.as_deref())
    };
    // The phases that change the host run under the hard deadline (`phase_timeout` from the
    // moment the config is loaded): no bounded kernel op waits beyond it and a watchdog ends
    // the process shortly after it (see `host::kio`).
    let load_armed = |host: &dyn Host, phase: &str| -> Result<Config> {
        let mut cfg = load_cfg(host)?;
        log.timed(crate::log::Cat::Startup, "phase deadline, watchdog", || {
            kio::arm_phase_deadline(phase, cfg.timeouts.phase, cfg.timeouts.step)
        });
        // The commands that change the host keep the copy of the cluster config up to date,
        // from a good load only: the config parsed (above) and so do its quirk profiles
        // (checked here only when there is something new to save).
        if matches!(
            cfg.origin.cache,
            crate::parse::cluster::CacheAction::Save(_)
        ) {
            crate::engine::quirks::load_all(host, &cfg)?;
        }
        if !cli.global.dry_run {
            let _t = log.span(crate::log::Cat::Config, "cluster config copy");
            if let Err(w) = crate::parse::cluster::update_cache(host, &cfg.origin.cache) {
                cfg.origin.warnings.push(w);
            }
        }
        Ok(cfg)
    };
    // The read-only commands write nothing anyway: a --dry-run there is a misunderstanding
    // (or a typo for another command) better said than silently accepted.
    let read_only = match &cli.cmd {
        Cmd::Plan { .. } => Some("plan"),
        Cmd::Status { .. } => Some("status"),
        Cmd::Quirks { .. } => Some("quirks"),
        Cmd::Doctor { .. } => Some("doctor"),
        _ => None,
    };
    if let (true, Some(name)) = (cli.global.dry_run, read_only) {
        return Err(Error::Usage(format!(
            "--dry-run: `pt-hook {name}` only reads and never writes; run it without --dry-run"
        )));
    }
    match &cli.cmd {
        Cmd::Hook(args) => {
            let (vmid, phase) = match args.as_slice() {
                [v, p] => (v, p),
                _ => {
                    return Err(Error::Usage(format!(
                        "unknown command {:?}; expected `pt-hook <VMID> <PHASE>` or a command (see --help)",
                        args.join(" ")
                    )))
                }
            };
            if is_phase(vmid) && !phase.is_empty() && phase.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::Usage(format!(
                    "arguments swapped: Proxmox runs `pt-hook <VMID> <PHASE>`; try `pt-hook {phase} {vmid}`"
                )));
            }
            let vmid = parse_vmid(vmid)?;
            log.set_context(&format!("VM {vmid} {phase}"));
            let cfg = load_armed(&*host, &format!("VM {vmid} {phase}"))?;
            let mut ctx = make_ctx(host, &cfg, log, cli.global.dry_run);
            ctx.prewalk = prewalk;
            let start = std::time::Instant::now();
            let r = crate::engine::phase::pve(&ctx, vmid, phase);
            if r.is_ok() {
                log.info(&format!("done in {}", crate::log::fmt_dur(start.elapsed())));
            }
            r
        }
        Cmd::Libvirt(a) => {
            let context = format!("libvirt {:?} {} {}", a.domain, a.operation, a.sub_operation);
            log.set_context(&context);
            let (stdin, tty) = crate::cmd::libvirt::stdin();
            crate::cmd::libvirt::command(
                host,
                &|h: &dyn Host| load_armed(h, &context),
                cli.global.dry_run,
                log,
                a,
                &mut stdin.lock(),
                tty,
            )
        }
        Cmd::Install(a) => crate::cmd::install::command(&*host, cli.global.dry_run, a, log),
        Cmd::Plan { vmid, json } => {
            let vmid = parse_vmid(vmid)?;
            let cfg = load_cfg(&*host)?;
            let ctx = make_ctx(host, &cfg, log, true);
            let p = lifecycle::plan_vm(&ctx, vmid)?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&crate::cmd::plan::plan_json(&p))
                        .unwrap_or_default()
                );
            } else {
                crate::cmd::plan::print_plan(&p, &ctx.node);
            }
            // The same refusal pre-start would give, and its exit status.
            crate::engine::identity::refuse(&p.identity)?;
            match p.refusal(&crate::engine::state::VmKey::Pve(vmid)) {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
        Cmd::Cleanup { vmid } => {
            let vmid = vmid.as_deref().map(parse_vmid).transpose()?;
            log.set_context("cleanup");
            let cfg = load_armed(&*host, "cleanup")?;
            let ctx = make_ctx(host, &cfg, log, cli.global.dry_run);
            crate::engine::phase::cleanup(&ctx, vmid)
        }
        Cmd::Status {
            json,
            cluster: true,
            free,
            ..
        } => crate::cmd::fleet::status(&*host, *json, free.as_deref()),
        Cmd::Status {
            json, prometheus, ..
        } => {
            let cfg = load_cfg(&*host)?;
            config_warnings(&cfg, log);
            if *prometheus {
                return crate::cmd::status::prometheus(&*host);
            }
            crate::cmd::status::command(&*host, &cfg, *json)
        }
        Cmd::Publish { phase } => {
            // Bounded like a phase: the phases wait for this child at most that long anyway.
            log.set_context("publish");
            kio::arm_phase_deadline(
                "publish",
                crate::engine::fleet::PUBLISH_TIMEOUT,
                crate::engine::fleet::PUBLISH_TIMEOUT,
            );
            crate::cmd::fleet::publish(&*host, phase, cli.global.dry_run)
        }
        Cmd::Doctor { vmid, json } => {
            let vmid = vmid.as_deref().map(parse_vmid).transpose()?;
            // A config that does not load is one of doctor's findings, not a reason to stop.
            let cfg = load_cfg(&*host).unwrap_or_else(|e| {
                let mut c = Config::default();
                c.origin.load_error = Some(e.to_string());
                c
            });
            let quiet = Logger::new(-3, false);
            let pctx = make_ctx(Arc::clone(&host), &cfg, &quiet, true);
            let planner = |v: u32| lifecycle::plan_vm(&pctx, v);
            let report = crate::cmd::doctor::run(&*host, &cfg, vmid, &planner)?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                crate::cmd::doctor::print(&report);
            }
            if report.failed() {
                return Err(Error::Failed(format!(
                    "doctor: {} check(s) failed",
                    report.count(crate::cmd::doctor::Status::Fail)
                )));
            }
            Ok(())
        }
        Cmd::Accept { vmid, libvirt_uuid } => {
            let key = match (vmid, libvirt_uuid) {
                (Some(v), None) => VmKey::Pve(parse_vmid(v)?),
                (None, Some(u)) => VmKey::Libvirt(crate::engine::state::Domain {
                    uuid: crate::parse::libvirt::parse_uuid(u).ok_or_else(|| {
                        Error::Usage(format!(
                            "invalid UUID {:?}: expected 8-4-4-4-12 hex digits",
                            crate::log::escape_controls(u)
                        ))
                    })?,
                    name: String::new(),
                }),
                _ => return Err(Error::Usage("give a VM id or --libvirt-uuid UUID".into())),
            };
            crate::engine::identity::accept(&*host, &key, cli.global.dry_run)
        }
        Cmd::Quirks { target, json } => {
            let cfg = load_cfg(&*host)?;
            config_warnings(&cfg, log);
            crate::cmd::quirks::command(&*host, &cfg, target.as_deref(), *json)
        }
        Cmd::Reset { bdfs, method, json } => {
            let mut list = Vec::new();
            for b in bdfs {
                list.push(Bdf::parse(b).map_err(|e| Error::Usage(e.to_string()))?);
            }
            log.set_context("reset");
            let cfg = load_armed(&*host, "reset")?;
            let mut ctx = make_ctx(host, &cfg, log, cli.global.dry_run);
            ctx.prewalk = prewalk;
            crate::cmd::reset::command(&ctx, &list, method.as_deref(), *json)
        }
    }
}

/// The config's own warnings (a cluster config read from the cache, or not at all).
pub fn config_warnings(cfg: &Config, log: &Logger) {
    for w in &cfg.origin.warnings {
        log.warn(w);
    }
}

fn make_ctx<'a>(host: Arc<dyn Host>, cfg: &'a Config, log: &'a Logger, dry_run: bool) -> Ctx<'a> {
    config_warnings(cfg, log);
    let node = log.timed(crate::log::Cat::Startup, "node name", || host.node_name());
    Ctx {
        node,
        host,
        cfg,
        log,
        dry_run,
        prewalk: crate::engine::guard::PreWalk::none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<std::ffi::OsString> {
        a.iter().map(std::ffi::OsString::from).collect()
    }

    /// What clap makes of the same words: the fast path must agree with it exactly.
    fn by_clap(a: &[&str]) -> (u8, Vec<String>) {
        let cli = Cli::try_parse_from(argv(a)).expect("clap parses it");
        let Cmd::Hook(words) = cli.cmd else {
            panic!("not a hook call: {a:?}")
        };
        assert!(!cli.global.dry_run && !cli.global.quiet && cli.global.root.is_none());
        (cli.global.verbose, words)
    }

    #[test]
    fn the_fast_path_reads_a_hook_call_as_clap_does_with_or_without_verbosity() {
        for a in [
            &["pt-hook", "100", "pre-start"][..],
            &["pt-hook", "-v", "100", "pre-start"],
            &["pt-hook", "-vv", "7", "post-stop"],
            &["pt-hook", "--verbose", "-v", "100", "pre-stop"],
            &["pt-hook", "-v", "-v", "-v", "100", "post-start"],
        ] {
            let Some(Ok(fast)) = fast_path_from(argv(a)) else {
                panic!("{a:?} should take the fast path")
            };
            let Cmd::Hook(words) = &fast.cmd else {
                panic!("{a:?}: not a hook call")
            };
            assert_eq!((fast.global.verbose, words.clone()), by_clap(a), "{a:?}");
        }
    }

    #[test]
    fn anything_else_goes_through_clap() {
        for a in [
            &["pt-hook"][..],
            &["pt-hook", "status"],
            &["pt-hook", "-q", "100", "pre-start"],
            &["pt-hook", "-v", "--dry-run", "100", "pre-start"],
            &["pt-hook", "--dry-run", "100", "pre-start"],
            &["pt-hook", "-vx", "100", "pre-start"],
            &["pt-hook", "-", "100", "pre-start"],
            &["pt-hook", "100", "start"],
            &["pt-hook", "1x0", "pre-start"],
            &["pt-hook", "", "pre-start"],
            &["pt-hook", "-v", "--version"],
            &["pt-hook", "100", "pre-start", "extra"],
            &["pt-hook", "-v"],
        ] {
            assert!(fast_path_from(argv(a)).is_none(), "{a:?}");
        }
        // `--version` alone is answered at once (exit 0).
        assert!(matches!(
            fast_path_from(argv(&["pt-hook", "--version"])),
            Some(Err(0))
        ));
    }
}
