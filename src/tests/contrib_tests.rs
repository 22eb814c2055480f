//! Tests that keep contrib/ in step with the code: the example config documents every key
//! the parser accepts (and parses), the man pages and shell completions are the ones the
//! clap CLI generates. `PT_HOOK_REGEN=1 cargo test --target x86_64-unknown-linux-gnu
//! contrib_tests` rewrites the generated files.

use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::parse::config::{self, Config, Timeouts};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The example with its settings un-commented: lines starting with '#' directly followed by
/// a key or a '['.
fn example_active() -> String {
    let text = std::fs::read_to_string(repo().join("contrib/pt-hook.toml")).unwrap();
    text.lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '[') => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The field names serde lists in an "unknown field" error: the parser's own key list.
fn accepted_keys(err: &str) -> Vec<String> {
    let tail = err
        .split("expected one of ")
        .nth(1)
        .or_else(|| err.split("expected ").nth(1))
        .unwrap_or_else(|| panic!("no key list in {err:?}"));
    tail.split(',')
        .filter_map(|s| {
            let s = s.trim();
            let s = s.strip_prefix('`')?;
            Some(s[..s.find('`')?].to_string())
        })
        .collect()
}

fn keys_of(v: &toml::Value) -> Vec<String> {
    v.as_table()
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn example_config_parses_and_documents_every_key() {
    let text = example_active();
    let cfg: Config = config::parse(&text, "contrib/pt-hook.toml").unwrap();
    // Its [[quirk]] goes through the quirk layer's own checks.
    let dir = tempfile::tempdir().unwrap();
    let host = crate::host::real::RealHost::new(dir.path());
    let all = crate::engine::quirks::load_all(&host, &cfg).unwrap();
    assert!(all.iter().any(|p| p.name == "my-card"));
    // The documented timeouts are the defaults.
    let d = Timeouts::default();
    let t = &cfg.timeouts;
    assert_eq!(
        (
            t.step,
            t.driver_bind,
            t.flr,
            t.bus_reset,
            t.rescan,
            t.module,
            t.unit,
            t.lock,
            t.phase,
            t.hook
        ),
        (
            d.step,
            d.driver_bind,
            d.flr,
            d.bus_reset,
            d.rescan,
            d.module,
            d.unit,
            d.lock,
            d.phase,
            d.hook
        )
    );
    let doc: toml::Value = toml::from_str(&text).unwrap();
    let unknown = |toml: &str| -> String {
        config::parse(toml, "x")
            .and_then(|c| crate::engine::quirks::load_all(&host, &c).map(|_| ()))
            .unwrap_err()
            .to_string()
    };
    let sections = [
        (
            accepted_keys(&unknown("zz_unknown = 1\n")),
            keys_of(&doc),
            "top level",
        ),
        (
            accepted_keys(&unknown("[timeouts]\nzz_unknown = 1\n")),
            keys_of(&doc["timeouts"]),
            "[timeouts]",
        ),
        (
            accepted_keys(&unknown("[vm.100]\nzz_unknown = 1\n")),
            keys_of(&doc["vm"]["100"]),
            "[vm.N]",
        ),
        (
            accepted_keys(&unknown(
                "[[quirk]]\nname = \"x\"\nvendor = \"10de\"\ndevices = []\nzz_unknown = 1\n",
            )),
            keys_of(&doc["quirk"][0]),
            "[[quirk]]",
        ),
    ];
    for (accepted, documented, what) in sections {
        assert!(accepted.len() >= 3, "{what}: {accepted:?}");
        for k in &accepted {
            assert!(
                documented.contains(k),
                "{what}: key {k} is accepted by the parser but not documented in contrib/pt-hook.toml"
            );
        }
    }
}

/// roff for a line of prose: backslashes, a leading control character, hyphens in words
/// that must not break, and anything outside ASCII (groff -ww warns about raw UTF-8).
fn roff_text(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\e"),
            '-' => out.push_str("\\-"),
            c if c.is_ascii() => out.push(c),
            c => out.push_str(&format!("\\[u{:04X}]", c as u32)),
        }
    }
    if out.starts_with('.') || out.starts_with('\'') {
        out.insert_str(0, "\\&");
    }
    out
}

/// `.TP` entries: a bold term and its text.
fn roff_list(items: &[(&str, &str)]) -> String {
    items
        .iter()
        .map(|(t, d)| format!(".TP\n\\fB{}\\fR\n{}\n", roff_text(t), roff_text(d)))
        .collect()
}

const EXIT_STATUS: &[(&str, &str)] = &[
    ("0", "Success. In hookscript mode also every phase pt-hook does not act on."),
    ("1", "The operation failed; in pre-start the VM start is aborted. plan exits 1 when pre-start would refuse, doctor when a check fails."),
    ("2", "Usage or configuration error; nothing was touched."),
    ("3", "A device is left in a state only a host reboot (or power cycle) fixes."),
];

const ENVIRONMENT: &[(&str, &str)] = &[
    ("PT_HOOK_ROOT", "Prefix for every host path, as --root."),
    ("PT_HOOK_NODE", "The Proxmox node name used to pick a PCI mapping's entries (default: the short host name)."),
    ("PVE_MIGRATED_FROM", "Set by Proxmox when a VM starts after a migration."),
];

const FILES: &[(&str, &str)] = &[
    (
        "/etc/pve/pt-hook/pt-hook.toml, /etc/pve/pt-hook/quirks.d/*.toml",
        "Cluster-wide configuration and quirk profiles in pmxcfs, optional; the local files override them key by key.",
    ),
    (
        "/etc/pt-hook/pt-hook.toml",
        "Configuration of this node, optional; see pt-hook.toml(5).",
    ),
    (
        "/etc/pt-hook/quirks.d/*.toml",
        "More quirk profiles ([[quirk]] tables).",
    ),
    (
        "/var/lib/pt-hook/cluster-config.json",
        "The cluster-wide configuration as last read, used when /etc/pve cannot be read.",
    ),
    (
        "/etc/pt-hook/hooks.d/PHASE/",
        "User hooks: executables run as HOOK VMID PHASE (root-owned, not group or other writable).",
    ),
    (
        "/run/pt-hook/vm-VMID.json, /run/pt-hook/libvirt-UUID.json",
        "Write-ahead state: what pre-start changed, read back by post-stop and cleanup.",
    ),
    ("/run/pt-hook/lock/", "Per-device locks."),
    (
        "/var/lib/pt-hook/identity/",
        "The devices each VM had at its last good start (address drift; see pt-hook-accept(8)).",
    ),
    (
        "/etc/pve/qemu-server/VMID.conf, /etc/pve/mapping/pci.cfg",
        "Proxmox VM configs and PCI resource mappings (read only).",
    ),
    (
        "/etc/pve/storage.cfg",
        "Where pt-hook install puts the snippet link.",
    ),
    (
        "/usr/share/misc/pci.ids",
        "Vendor, device and class names, when present.",
    ),
];

const SUB_EXIT_STATUS: &str = ".SH \"EXIT STATUS\"\n0 on success, 1 when the operation failed, 2 for a usage or configuration error (nothing was touched), 3 when a device needs a host reboot; see pt\\-hook(8).\n";

/// A man page from clap's pieces, with the sections clap has no data for.
fn man_page(cmd: clap::Command, title: &str, extra: &str) -> Vec<u8> {
    let man = clap_mangen::Man::new(cmd.clone())
        .title(title)
        .section("8")
        .source(format!("pt-hook {}", env!("CARGO_PKG_VERSION")))
        .manual("pt-hook");
    let mut buf = Vec::new();
    man.render_title(&mut buf).unwrap();
    man.render_name_section(&mut buf).unwrap();
    man.render_synopsis_section(&mut buf).unwrap();
    man.render_description_section(&mut buf).unwrap();
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut buf).unwrap();
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut buf).unwrap();
    }
    if cmd.get_after_help().is_some() {
        man.render_extra_section(&mut buf).unwrap();
    }
    buf.extend_from_slice(extra.as_bytes());
    buf
}

/// pt-hook.toml(5) from contrib/pt-hook.toml itself: its comment blocks become prose, each
/// `# -- Title` a section, each `#[table]` a subsection and each `#key = default` an entry
/// with the comment lines above it.
fn config_man_page() -> Vec<u8> {
    let text = std::fs::read_to_string(repo().join("contrib/pt-hook.toml")).unwrap();
    let mut out = format!(
        ".TH pt\\-hook.toml 5 \"\" \"pt-hook {}\" pt\\-hook\n.SH NAME\npt\\-hook.toml \\- configuration of pt\\-hook, the PCI passthrough hookscript\n.SH SYNOPSIS\n/etc/pve/pt\\-hook/pt\\-hook.toml, /etc/pve/pt\\-hook/quirks.d/*.toml, /etc/pt\\-hook/pt\\-hook.toml, /etc/pt\\-hook/quirks.d/*.toml\n.SH DESCRIPTION\n",
        env!("CARGO_PKG_VERSION")
    );
    let mut pending: Vec<String> = Vec::new();
    let flush = |out: &mut String, pending: &mut Vec<String>| {
        if !pending.is_empty() {
            out.push_str(&format!(".PP\n{}\n", pending.join("\n")));
            pending.clear();
        }
    };
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() {
            flush(&mut out, &mut pending);
            continue;
        }
        let Some(rest) = line.strip_prefix('#') else {
            panic!(
                "contrib/pt-hook.toml:{}: an active setting in the example",
                i + 1
            );
        };
        if let Some(title) = rest.strip_prefix(" -- ") {
            flush(&mut out, &mut pending);
            let title = title.trim_end_matches('-').trim().to_uppercase();
            out.push_str(&format!(".SH \"{}\"\n", roff_text(&title)));
        } else if rest.starts_with('[') {
            flush(&mut out, &mut pending);
            out.push_str(&format!(".SS \"{}\"\n", roff_text(rest)));
        } else if rest.starts_with(|c: char| c.is_ascii_alphabetic()) {
            out.push_str(&format!(".TP\n\\fB{}\\fR\n", roff_text(rest)));
            if pending.is_empty() {
                out.push_str("(see above)\n");
            } else {
                out.push_str(&pending.join("\n"));
                out.push('\n');
                pending.clear();
            }
        } else {
            let mut t = rest.strip_prefix(' ').unwrap_or(rest).to_string();
            if i == 0 {
                // "# /etc/pt-hook/pt-hook.toml: pt-hook's configuration." is the NAME line.
                t = t.split_once(": ").map(|(_, b)| b.to_string()).unwrap_or(t);
            }
            if t.is_empty() {
                flush(&mut out, &mut pending);
            } else {
                pending.push(roff_text(&t));
            }
        }
    }
    flush(&mut out, &mut pending);
    out.push_str(".SH FILES\n/etc/pt\\-hook/pt\\-hook.toml is installed as a conffile with every setting commented out. This page is generated from that file, so the two say the same.\n");
    out.push_str(".SH \"SEE ALSO\"\npt\\-hook(8), pt\\-hook\\-quirks(8), pt\\-hook\\-plan(8)\n");
    out.into_bytes()
}

/// clap_complete's bash script for a binary name with a hyphen (clap issue 6421) sets
/// `cmd="pt__hook__subcmd__reset"` but names the case arm `pt__subcmd__hook__subcmd__reset`,
/// so no subcommand completes anything. Until clap fixes it: name the arms as `cmd` is set
/// (a no-op once the generator is right; tests/completions.rs completes through bash).
fn bash_hyphen_fix(script: Vec<u8>) -> Vec<u8> {
    String::from_utf8(script)
        .unwrap()
        .replace("pt__subcmd__hook__", "pt__hook__")
        .into_bytes()
}

/// Every generated file: man pages (the command, each subcommand, pt-hook.toml(5)) and
/// completions.
fn generated() -> Vec<(String, Vec<u8>)> {
    let cmd = crate::cli::Cli::command();
    let mut out = Vec::new();
    let subs: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .cloned()
        .collect();
    let see_also: Vec<String> = subs
        .iter()
        .map(|s| format!("pt\\-hook\\-{}(8)", s.get_name()))
        .collect();
    let main_extra = format!(
        ".SH \"EXIT STATUS\"\n{}.SH ENVIRONMENT\n{}.SH FILES\n{}.SH \"SEE ALSO\"\n{}, pt\\-hook.toml(5), qm(1), virsh(1), systemd\\-tmpfiles(8)\n",
        roff_list(EXIT_STATUS),
        roff_list(ENVIRONMENT),
        roff_list(FILES),
        see_also.join(", ")
    );
    // No `help` subcommand in the page: it has no page of its own.
    let main = cmd.clone().disable_help_subcommand(true);
    out.push((
        "contrib/man/pt-hook.8".into(),
        man_page(main, "pt-hook", &main_extra),
    ));
    for sub in subs {
        // Debian's style for subcommand pages (git-commit(1)): the file and title are
        // pt-hook-NAME, the synopsis is the command as typed, `pt-hook NAME`.
        // clap without its `string` feature takes &'static str names (a test: leak it).
        let file: &'static str = Box::leak(format!("pt-hook-{}", sub.get_name()).into_boxed_str());
        let typed: &'static str = Box::leak(format!("pt-hook {}", sub.get_name()).into_boxed_str());
        let others: Vec<&String> = see_also
            .iter()
            .filter(|s| **s != format!("pt\\-hook\\-{}(8)", sub.get_name()))
            .collect();
        let extra = format!(
            "{SUB_EXIT_STATUS}.SH \"SEE ALSO\"\npt\\-hook(8), pt\\-hook.toml(5), {}\n",
            others
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let c = sub.display_name(file).bin_name(typed);
        out.push((format!("contrib/man/{file}.8"), man_page(c, file, &extra)));
    }
    out.push(("contrib/man/pt-hook.toml.5".into(), config_man_page()));
    for (shell, file) in [
        (Shell::Bash, "pt-hook.bash"),
        (Shell::Zsh, "_pt-hook"),
        (Shell::Fish, "pt-hook.fish"),
    ] {
        let mut c = cmd.clone();
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut c, "pt-hook", &mut buf);
        if shell == Shell::Bash {
            buf = bash_hyphen_fix(buf);
        }
        out.push((format!("contrib/completions/{file}"), buf));
    }
    out
}

#[test]
fn man_pages_and_completions_match_the_cli() {
    let regen = std::env::var_os("PT_HOOK_REGEN").is_some();
    let mut stale = Vec::new();
    let files = generated();
    for (rel, want) in &files {
        let p = repo().join(rel);
        if regen {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, want).unwrap();
        } else if std::fs::read(&p).ok().as_deref() != Some(want.as_slice()) {
            stale.push(rel.clone());
        }
    }
    // No page left over from a removed subcommand.
    for dir in ["contrib/man", "contrib/completions"] {
        for e in std::fs::read_dir(repo().join(dir)).unwrap() {
            let rel = format!("{dir}/{}", e.unwrap().file_name().to_string_lossy());
            if !files.iter().any(|(r, _)| *r == rel) {
                stale.push(format!("{rel} (not generated any more)"));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "out of date: {stale:?}; run PT_HOOK_REGEN=1 cargo test --target x86_64-unknown-linux-gnu contrib_tests"
    );
    // The pages carry the commands' help.
    let main = &files
        .iter()
        .find(|(r, _)| r.ends_with("/pt-hook.8"))
        .unwrap()
        .1;
    let main = String::from_utf8_lossy(main);
    for s in ["install", "libvirt", "cleanup", "Exit codes"] {
        assert!(main.contains(s), "pt-hook.8 lacks {s}");
    }
}

#[test]
fn every_command_has_help() {
    let cmd = crate::cli::Cli::command();
    for sub in cmd.get_subcommands() {
        assert!(
            sub.get_about().is_some_and(|a| a.to_string().len() > 20),
            "{} has no help text",
            sub.get_name()
        );
        for a in sub.get_arguments() {
            if a.is_hide_set() || a.get_id() == "help" || a.is_global_set() {
                continue;
            }
            assert!(
                a.get_help().is_some(),
                "{} {}: argument without help",
                sub.get_name(),
                a.get_id()
            );
        }
    }
}

#[test]
fn man_pages_are_ascii_and_groff_clean() {
    let pages: Vec<_> = generated()
        .into_iter()
        .filter(|(r, _)| r.starts_with("contrib/man/"))
        .collect();
    assert!(pages.len() >= 10);
    for (rel, roff) in &pages {
        if let Some(pos) = roff.iter().position(|b| !b.is_ascii()) {
            panic!("{rel}: raw non-ASCII byte at {pos} (write \\[uXXXX])");
        }
        let text = String::from_utf8_lossy(roff);
        assert!(
            !text.contains("pt\\-hook\\-help"),
            "{rel}: names pt-hook-help(8)"
        );
        for s in ["NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"] {
            assert!(
                text.contains(&format!(".SH {s}")) || text.contains(&format!(".SH \"{s}\"")),
                "{rel} lacks {s}"
            );
        }
        let p = repo().join(rel);
        // CI installs groff (.ci/run); without it this test fails rather than passes quietly.
        let o = std::process::Command::new("groff")
            .args(["-ww", "-man", "-Tutf8", "-z"])
            .arg(&p)
            .env("LC_ALL", "C.UTF-8")
            .output()
            .unwrap_or_else(|e| panic!("groff not runnable ({e}): apt-get install groff-base"));
        assert!(o.status.success(), "groff {rel} failed");
        assert!(
            o.stderr.is_empty(),
            "groff -ww {rel}:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let main = &pages
        .iter()
        .find(|(r, _)| r.ends_with("/pt-hook.8"))
        .unwrap()
        .1;
    let main = String::from_utf8_lossy(main);
    for s in [
        "OPTIONS",
        "\"EXIT STATUS\"",
        "ENVIRONMENT",
        "FILES",
        "PT_HOOK_NODE",
        "pt\\-hook.toml(5)",
    ] {
        assert!(main.contains(s), "pt-hook.8 lacks {s}");
    }
    // Subcommand pages show the command as it is typed.
    let reset = &pages
        .iter()
        .find(|(r, _)| r.ends_with("/pt-hook-reset.8"))
        .unwrap()
        .1;
    assert!(String::from_utf8_lossy(reset).contains("\\fBpt\\-hook reset\\fR"));
    // pt-hook.toml(5) has an entry for every key of the example config.
    let conf = &pages
        .iter()
        .find(|(r, _)| r.ends_with("/pt-hook.toml.5"))
        .unwrap()
        .1;
    let conf = String::from_utf8_lossy(conf);
    let example = example_active();
    let doc: toml::Value = toml::from_str(&example).unwrap();
    let mut keys = keys_of(&doc["timeouts"]);
    keys.extend(keys_of(&doc["vm"]["100"]));
    keys.extend(keys_of(&doc["quirk"][0]));
    for k in keys {
        assert!(
            conf.contains(&format!("\\fB{} = ", k.replace('-', "\\-"))),
            "pt-hook.toml.5 has no entry for {k}"
        );
    }
}
