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

/// Every generated file: man pages (the command and each subcommand) and completions.
fn generated() -> Vec<(String, Vec<u8>)> {
    let cmd = crate::cli::Cli::command();
    let mut out = Vec::new();
    let mut page = |c: clap::Command, file: String| {
        let mut buf = Vec::new();
        clap_mangen::Man::new(c)
            .section("8")
            .manual("pt-hook")
            .render(&mut buf)
            .unwrap();
        out.push((format!("contrib/man/{file}"), buf));
    };
    page(cmd.clone(), "pt-hook.8".into());
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        // clap without its `string` feature takes &'static str names (a test: leak it).
        let name: &'static str = Box::leak(format!("pt-hook-{}", sub.get_name()).into_boxed_str());
        page(sub.clone().name(name).bin_name(name), format!("{name}.8"));
    }
    for (shell, file) in [
        (Shell::Bash, "pt-hook.bash"),
        (Shell::Zsh, "_pt-hook"),
        (Shell::Fish, "pt-hook.fish"),
    ] {
        let mut c = cmd.clone();
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut c, "pt-hook", &mut buf);
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
