//! The tree's shape, as ARCHITECTURE.md draws it: no import circle between the crate's
//! top-level modules, nor between the files of one module (`agent`'s `shard`, `table`, ...).
//! Reads src/ as text (non-test code, comments left out), so a new `use crate::...` or
//! `use super::...` that closes a circle fails here with the circle named.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file under src/ (`src/nlb/kernel.rs` is `["nlb", "kernel"]`).
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The identifiers following each `prefix` in `code`: `prefix::name`, and each first name of a
/// group, `prefix::{a, b::C}`. A prefix that continues a longer path (`super::` inside
/// `super::super::`) is not one.
fn names_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    let ident_end = |text: &str| {
        text.find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(text.len())
    };
    let mut names = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        if rest.starts_with("super::") {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Split the group's top level at commas; nested groups belong to their item.
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in group.char_indices() {
                let item_ends = match c {
                    '{' => {
                        depth += 1;
                        false
                    }
                    '}' if depth == 0 => true,
                    '}' => {
                        depth -= 1;
                        false
                    }
                    ',' => depth == 0,
                    _ => false,
                };
                if item_ends {
                    let item = group[start..i].trim_start();
                    let end = ident_end(item);
                    if end > 0 {
                        names.push(&item[..end]);
                    }
                    start = i + 1;
                    if c == '}' {
                        break;
                    }
                }
            }
            continue;
        }
        let end = ident_end(rest);
        if end > 0 {
            names.push(&rest[..end]);
        }
    }
    names
}

/// Every .rs file under src/ with its module path and its code (tests and comments left out).
fn sources() -> Vec<(Vec<String>, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut out = Vec::new();
    for file in &files {
        let path = module_path(&src, file);
        if path.last().is_some_and(|p| p == "tests") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        let text = text.split("#[cfg(test)]\nmod tests {").next().unwrap_or("");
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        out.push((path, code));
    }
    out
}

/// The children of module `parent` (`[]` for the crate root) -> the siblings their code names,
/// through `crate::PARENT::X` or `super::X` (`super::super::X` one level further down).
fn graph_under(parent: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let sources = sources();
    let within =
        |path: &[String]| path.len() > parent.len() && path.iter().zip(parent).all(|(a, b)| a == b);
    let children: BTreeSet<String> = sources
        .iter()
        .filter(|(path, _)| within(path))
        .map(|(path, _)| path[parent.len()].clone())
        .filter(|m| !(parent.is_empty() && (m == "lib" || m == "main")))
        .collect();
    let crate_prefix: String = ["crate"]
        .into_iter()
        .chain(parent.iter().copied())
        .map(|p| format!("{p}::"))
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, code) in &sources {
        if !within(path) || !children.contains(&path[parent.len()]) {
            continue;
        }
        let child = &path[parent.len()];
        let mut named = names_after(code, &crate_prefix);
        // `super::` from the child's own file names a sibling (or the parent's items).
        let supers = "super::".repeat(path.len() - parent.len());
        named.extend(names_after(code, &supers));
        let edges = graph.entry(child.clone()).or_default();
        for name in named {
            if name != child && children.contains(name) {
                edges.insert(name.to_string());
            }
        }
    }
    graph
}

/// Top-level module -> the top-level modules its code names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    graph_under(&[])
}

/// Every circle of `graph`, each as `a -> b -> a`.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    graph
        .keys()
        .filter_map(|m| circle_through(graph, m))
        .map(|c| c.join(" -> "))
        .collect()
}

/// A circle through `start`, if there is one (depth-first search back to it).
fn circle_through(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in graph.get(at).into_iter().flatten() {
            if next == start {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, start, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    let mut seen = BTreeSet::new();
    walk(graph, start, start, &mut path, &mut seen).then(|| {
        path.push(start.to_string());
        path
    })
}

#[test]
fn no_import_circle_between_top_level_modules() {
    let graph = graph();
    // The check itself must see the tree: these edges exist by design.
    assert!(graph["run"].contains("agent"), "{graph:?}");
    assert!(graph["coordinator"].contains("wire"), "{graph:?}");
    let circles = circles(&graph);
    assert!(
        circles.is_empty(),
        "import circles between top-level modules (break them as ARCHITECTURE.md says):\n{}",
        circles.join("\n")
    );
}

#[test]
fn no_import_circle_between_the_files_of_a_module() {
    // Every module with files of its own: `agent`, `nlb`, `sink`, `tui::ui`, ...
    let parents: BTreeSet<Vec<String>> = sources()
        .into_iter()
        .filter(|(path, _)| path.len() >= 2)
        .map(|(path, _)| path[..path.len() - 1].to_vec())
        .collect();
    assert!(parents.contains(&vec!["agent".to_string()]), "{parents:?}");
    let agent = graph_under(&["agent"]);
    assert!(agent["worker"].contains("shard"), "{agent:?}");
    let mut found = Vec::new();
    for parent in &parents {
        let parent: Vec<&str> = parent.iter().map(String::as_str).collect();
        for circle in circles(&graph_under(&parent)) {
            found.push(format!("{}: {circle}", parent.join("::")));
        }
    }
    assert!(
        found.is_empty(),
        "import circles between the files of a module (move the shared part to a leaf file, as \
         agent/timing.rs does):\n{}",
        found.join("\n")
    );
}

#[test]
fn imports_are_read_alone_and_in_groups() {
    let code = "use super::shard::Shard;\nuse super::{timing::micros, EnginePlan, pool::{A, B}};\n\
                let x = super::super::net::f(); crate::metrics::Latency;";
    assert_eq!(
        names_after(code, "super::"),
        ["shard", "timing", "EnginePlan", "pool"]
    );
    assert_eq!(names_after(code, "super::super::"), ["net"]);
    assert_eq!(names_after(code, "crate::"), ["metrics"]);
}

#[test]
fn the_circle_check_finds_a_circle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    graph.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        circle_through(&graph, "a").map(|c| c.join(" -> ")),
        Some("a -> b -> c -> a".to_string())
    );
    graph.entry("c".into()).or_default().remove("a");
    assert_eq!(circle_through(&graph, "a"), None);
}
