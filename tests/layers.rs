//! The layer check: imports point one way and no module imports itself back.
//!
//! pt-hook is one crate, so the compiler does not keep its layers apart; this test does. It reads
//! every `crate::` and `super::` path in the shipped code under `src/` (test modules and
//! `src/tests/` are skipped), maps each path to the module it names, and fails on:
//! - an edge against the direction: `cli` → `cmd` → `engine` → (`parse` | `sysfs`) → `host` →
//!   leaves (`pci`, `error`, `log`); a folder may use its own modules and anything below it,
//!   never a layer above or a sibling layer (`parse` ↔ `sysfs`, one leaf ↔ another);
//! - a cycle between modules, inside a folder as well as across folders.
//!
//! `bash tests/layers.sh` runs it alone.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Rank of each layer; an import must go to a lower rank, or stay inside its own folder.
fn rank(layer: &str) -> Option<u32> {
    Some(match layer {
        "main" => 7,
        "cli" => 6,
        "cmd" => 5,
        "engine" => 4,
        "parse" | "sysfs" => 3,
        "host" => 2,
        "pci" | "error" | "log" => 1,
        _ => return None,
    })
}

/// A module path relative to the crate root, e.g. `["engine", "reset"]`; `[]` is main.rs.
type Module = Vec<String>;

fn layer(m: &Module) -> &str {
    m.first().map(String::as_str).unwrap_or("main")
}

fn module_of(rel: &Path) -> Module {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "main") {
        parts.pop();
    }
    parts
}

fn collect(dir: &Path, root: &Path, out: &mut BTreeMap<Module, String>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(&p, root, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p.strip_prefix(root).unwrap();
            out.insert(module_of(rel), fs::read_to_string(&p).unwrap());
        }
    }
}

/// The shipped part of a file: without `#[cfg(test)]` items (a test module runs to the end of
/// its braces; any other `#[cfg(test)]` item is one line or one braced block).
fn shipped(src: &str) -> String {
    let mut out = String::new();
    let mut lines = src.lines();
    while let Some(l) = lines.next() {
        if l.trim_start().starts_with("#[cfg(test)]") {
            // Skip the item that follows, brace-balanced.
            let mut depth: i64 = 0;
            let mut opened = false;
            for l in lines.by_ref() {
                depth += l.matches('{').count() as i64 - l.matches('}').count() as i64;
                opened |= l.contains('{');
                if (opened && depth <= 0) || (!opened && l.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        let code = match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths a `crate::`/`super::` occurrence names: `crate::a::b::C` → `[a, b, C]`;
/// `crate::a::{b::C, d}` → `[a, b, C]` and `[a, d]`.
fn paths_at(s: &str) -> Vec<Vec<String>> {
    let mut segs = Vec::new();
    let mut rest = s;
    loop {
        let n: usize = rest
            .chars()
            .take_while(|c| ident_char(*c))
            .map(char::len_utf8)
            .sum();
        if n == 0 {
            break;
        }
        segs.push(rest[..n].to_string());
        rest = &rest[n..];
        if let Some(r) = rest.strip_prefix("::") {
            rest = r;
        } else {
            return vec![segs];
        }
    }
    if let Some(r) = rest.strip_prefix('{') {
        let mut depth = 0;
        let mut item = String::new();
        let mut items = Vec::new();
        for c in r.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(std::mem::take(&mut item));
                    continue;
                }
                _ => {}
            }
            item.push(c);
        }
        items.push(item);
        let mut out = Vec::new();
        for it in items {
            let it = it.trim();
            for mut p in paths_at(it) {
                let mut full = segs.clone();
                full.append(&mut p);
                out.push(full);
            }
        }
        if out.is_empty() {
            out.push(segs);
        }
        return out;
    }
    vec![segs]
}

/// The imports of module `m` (its file's shipped code), as the modules they reach.
fn imports(m: &Module, src: &str, modules: &BTreeMap<Module, String>) -> BTreeSet<Module> {
    let code = shipped(src);
    let mut out = BTreeSet::new();
    // `super` of `a::b` is `a`, whether `b` is a file or a folder's mod.rs.
    let parent = m[..m.len().saturating_sub(1)].to_vec();
    for (kw, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut from = 0;
        while let Some(i) = code[from..].find(kw) {
            let at = from + i;
            from = at + kw.len();
            if at > 0 && code[..at].chars().next_back().is_some_and(ident_char) {
                continue;
            }
            for p in paths_at(&code[from..]) {
                let mut full = base.clone();
                full.extend(p);
                // The longest prefix that is a module file.
                let target = (0..=full.len())
                    .rev()
                    .map(|n| full[..n].to_vec())
                    .find(|cand| modules.contains_key(cand));
                if let Some(t) = target.filter(|t| t != m) {
                    out.insert(t);
                }
            }
        }
    }
    out
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "main".into()
    } else {
        m.join("::")
    }
}

/// Whether the edge `from → to` keeps the direction.
fn allowed(from: &Module, to: &Module) -> bool {
    let (lf, lt) = (layer(from), layer(to));
    if lf == lt {
        return true;
    }
    match (rank(lf), rank(lt)) {
        (Some(a), Some(b)) => a > b,
        _ => false,
    }
}

#[test]
fn imports_point_one_way_and_do_not_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeMap::new();
    collect(&root, &root, &mut modules);
    // Test code may import anything.
    modules.retain(|m, _| layer(m) != "tests");
    let mut problems = Vec::new();
    let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (m, src) in &modules {
        if rank(layer(m)).is_none() {
            problems.push(format!(
                "{}: a folder with no layer (add it to tests/layers.rs)",
                name(m)
            ));
        }
        let deps = imports(m, src, &modules);
        for d in &deps {
            if !allowed(m, d) {
                problems.push(format!(
                    "{} imports {}: against the direction",
                    name(m),
                    name(d)
                ));
            }
        }
        graph.insert(m.clone(), deps);
    }
    // Cycles, by a depth-first search over the same edges.
    let mut state: BTreeMap<Module, u8> = BTreeMap::new();
    let mut stack: Vec<Module> = Vec::new();
    fn dfs(
        m: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        state: &mut BTreeMap<Module, u8>,
        stack: &mut Vec<Module>,
        problems: &mut Vec<String>,
    ) {
        state.insert(m.clone(), 1);
        stack.push(m.clone());
        for d in graph.get(m).into_iter().flatten() {
            match state.get(d).copied().unwrap_or(0) {
                0 => dfs(d, graph, state, stack, problems),
                1 => {
                    let i = stack.iter().position(|s| s == d).unwrap();
                    let cyc: Vec<String> = stack[i..].iter().chain([d]).map(name).collect();
                    problems.push(format!("import cycle: {}", cyc.join(" → ")));
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(m.clone(), 2);
    }
    for m in graph.keys() {
        if state.get(m).copied().unwrap_or(0) == 0 {
            dfs(m, &graph, &mut state, &mut stack, &mut problems);
        }
    }
    assert!(
        problems.is_empty(),
        "layer check failed:\n  {}",
        problems.join("\n  ")
    );
}
