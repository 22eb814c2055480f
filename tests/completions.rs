//! The shell completions in contrib/completions complete: each shell is asked for the
//! candidates of a partly typed command line, as it would be at <TAB>. bash and fish are
//! required (CI installs bash-completion and fish, see .ci/run); zsh is checked for syntax
//! and that it defines the completion function.

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The candidates bash offers for `words` with the cursor at the end of the last one.
fn bash_complete(words: &[&str]) -> Vec<String> {
    let script = repo().join("contrib/completions/pt-hook.bash");
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let prog = format!(
        r#"source '{}'
f=$(complete -p pt-hook | sed -n 's/.*-F \([^ ]*\) .*/\1/p')
[ -n "$f" ] || {{ echo "no completion function registered for pt-hook" >&2; exit 3; }}
COMP_WORDS=({})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE="${{COMP_WORDS[*]}}"
COMP_POINT=${{#COMP_LINE}}
"$f" pt-hook "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
        script.display(),
        quoted.join(" ")
    );
    let o = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &prog])
        .output()
        .expect("bash");
    assert!(
        o.status.success(),
        "bash completion for {words:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_subcommands_and_their_options() {
    let reset = bash_complete(&["pt-hook", "reset", "--"]);
    for want in ["--method", "--json", "--dry-run", "--help"] {
        assert!(reset.iter().any(|c| c == want), "reset --<TAB>: {reset:?}");
    }
    assert!(reset.iter().all(|c| c.starts_with("--")), "{reset:?}");
    assert_eq!(bash_complete(&["pt-hook", "status", "--j"]), ["--json"]);
    let top = bash_complete(&["pt-hook", "st"]);
    assert_eq!(top, ["status"]);
    let acc = bash_complete(&["pt-hook", "accept", "--lib"]);
    assert_eq!(acc, ["--libvirt-uuid"]);
}

#[test]
fn fish_completes_subcommands_and_their_options() {
    let script = repo().join("contrib/completions/pt-hook.fish");
    let ask = |line: &str| -> Vec<String> {
        let o = Command::new("fish")
            .args(["--no-config", "-c"])
            .arg(format!(
                "source '{}'; complete -C '{line}'",
                script.display()
            ))
            .output()
            .expect("fish not runnable: apt-get install fish (CI installs it)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| l.split('\t').next().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(ask("pt-hook status --j"), ["--json"]);
    let reset = ask("pt-hook reset --");
    assert!(reset.iter().any(|c| c == "--method"), "{reset:?}");
    assert!(ask("pt-hook ").iter().any(|c| c == "doctor"));
}

#[test]
fn zsh_completion_parses_and_defines_its_function() {
    let script = repo().join("contrib/completions/_pt-hook");
    let o = Command::new("zsh")
        .args(["-f", "-n"])
        .arg(&script)
        .output()
        .expect("zsh not runnable: apt-get install zsh (CI installs it)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.starts_with("#compdef pt-hook"), "{}", &text[..40]);
    for want in ["'--json[", "--method=", "':vmid -- The VM id"] {
        assert!(text.contains(want), "_pt-hook lacks {want}");
    }
}
