//! The crate's modules form layers: no import cycle among the modules of `src/`, at the level of
//! the top modules (`hub`, `endpoint`, `ws`, ...) and one level below (`hub::log`,
//! `hub::rooms`, ...). ARCHITECTURE.md draws the layers; this test keeps them from rotting.
//!
//! It reads the sources: every `crate::a::b` and `super::a` path outside comments and outside
//! the `#[cfg(test)] mod tests` block at a file's end is an arrow from the file's module to the
//! longest module the path names. Tests may reach anywhere; the code they test may not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, with its module path (`hub::log::stream`, `crate` for lib.rs).
fn modules(root: &Path, dir: &Path, out: &mut BTreeMap<String, PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            modules(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(root)
                .expect("under src")
                .with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            let name = if parts == ["lib"] {
                "crate".to_owned()
            } else {
                parts.join("::")
            };
            out.insert(name, path);
        }
    }
}

/// The code of a file without comment lines and without its trailing test module.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read module");
    let end = [
        "#[cfg(test)]\nmod tests",
        "#[cfg(test)]\npub(crate) mod tests",
    ]
    .iter()
    .filter_map(|marker| text.find(marker))
    .min()
    .unwrap_or(text.len());
    text[..end]
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `a::b::c` paths that follow each occurrence of `prefix` (`crate::`, `super::`).
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at + prefix.len()..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            out.push(tail[..len].trim_end_matches(':'));
        }
        rest = &tail[len..];
    }
    out
}

/// The module `name` at `depth` path segments (`hub::log::stream` at 2 is `hub::log`).
fn at_depth(name: &str, depth: usize) -> String {
    name.split("::").take(depth).collect::<Vec<_>>().join("::")
}

/// Arrows between modules cut at `depth`: `from -> {to}`.
fn graph(depth: usize) -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut mods = BTreeMap::new();
    modules(&root, &root, &mut mods);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, path) in &mods {
        if name == "crate" {
            continue;
        }
        let code = code(path);
        // `super` of `hub::pubsub` (hub/pubsub.rs) and of `hub::log` (hub/log/mod.rs) alike.
        let mut parent: Vec<&str> = name.split("::").collect();
        parent.pop();
        let mut targets = Vec::new();
        for path in paths_after(&code, "crate::") {
            targets.push(path.to_owned());
        }
        for path in paths_after(&code, "super::") {
            let mut full = parent.clone();
            for segment in path.split("::").filter(|s| !s.is_empty()) {
                if segment == "super" {
                    full.pop();
                } else {
                    full.push(segment);
                }
            }
            targets.push(full.join("::"));
        }
        let from = at_depth(name, depth);
        for target in targets {
            let parts: Vec<&str> = target.split("::").filter(|s| !s.is_empty()).collect();
            let Some(module) = (1..=parts.len())
                .rev()
                .map(|k| parts[..k].join("::"))
                .find(|m| mods.contains_key(m))
            else {
                continue;
            };
            let to = at_depth(&module, depth);
            if to != from {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    edges
}

/// One cycle of `edges`, if any, as the list of modules along it.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, done, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut done, &mut Vec::new()))
}

#[test]
fn the_top_modules_import_each_other_without_a_cycle() {
    let edges = graph(1);
    assert!(
        edges.contains_key("hub"),
        "the scan found no arrows: {edges:?}"
    );
    assert_eq!(find_cycle(&edges), None, "arrows: {edges:#?}");
}

#[test]
fn the_modules_one_level_down_import_each_other_without_a_cycle() {
    let edges = graph(2);
    assert!(
        edges.contains_key("hub::rooms"),
        "the scan found no arrows: {edges:?}"
    );
    assert_eq!(find_cycle(&edges), None, "arrows: {edges:#?}");
}

#[test]
fn the_ids_and_the_metrics_are_leaves() {
    let edges = graph(1);
    for leaf in ["ids", "metrics", "sync"] {
        assert_eq!(edges.get(leaf), None, "{leaf} imports from the crate");
    }
}

#[test]
fn the_detector_sees_a_cycle() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edges.entry("a".into()).or_default().insert("b".into());
    edges.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&edges), None);
    edges.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&edges),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}

/// The names `src/lib.rs` re-exports at the crate root (`pub use a::{B, C};` outside any
/// inline module).
fn root_exports() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("read lib.rs");
    let mut names = BTreeSet::new();
    let mut depth = 0usize;
    let mut statement: Option<String> = None;
    for line in lib.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("//") {
            continue;
        }
        if let Some(s) = statement.as_mut() {
            s.push_str(trimmed);
        } else if depth == 0 && trimmed.starts_with("pub use ") {
            statement = Some(trimmed.to_owned());
        } else {
            depth += trimmed.matches('{').count();
            depth -= trimmed.matches('}').count().min(depth);
            continue;
        }
        if statement.as_ref().is_some_and(|s| s.ends_with(';')) {
            let s = statement.take().unwrap_or_default();
            let body = s.trim_end_matches(';');
            let list = match (body.find('{'), body.rfind('}')) {
                (Some(open), Some(close)) => &body[open + 1..close],
                _ => body.rsplit("::").next().unwrap_or_default(),
            };
            for name in list.split(',') {
                let name = name.trim();
                let name = name.rsplit(" as ").next().unwrap_or(name);
                if !name.is_empty() {
                    names.insert(name.rsplit("::").next().unwrap_or(name).to_owned());
                }
            }
        }
    }
    names
}

/// The root holds what a first app names and nothing else; the rest lives in its module
/// (`hub`, `endpoint`, `backend`, `error`, ...). Adding a name here is a decision: change this
/// list with it.
#[test]
fn the_root_exports_what_a_first_app_names() {
    let expected: BTreeSet<String> = [
        "Connection",
        "ConnectionId",
        "Counted",
        "Delivery",
        "Drain",
        "Hub",
        "HubConfig",
        "Identity",
        "Message",
        "MessageId",
        "Payload",
        "Position",
        "PubSub",
        "Publication",
        "Rejection",
        "Rooms",
        "Topic",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(root_exports(), expected);
}

/// Every function of `src/` longer than `limit` lines that doesn't say why at its head (a
/// comment starting "Long on purpose" in its first lines): `path:line name length`.
fn long_functions(limit: usize) -> Vec<String> {
    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    /// The line without string and char literals and trailing comments (braces in them
    /// don't count).
    fn braces_of(line: &str) -> String {
        let mut out = String::new();
        let mut chars = line.chars().peekable();
        let mut in_string = false;
        while let Some(c) = chars.next() {
            match (in_string, c) {
                (true, '\\') => {
                    chars.next();
                }
                (true, '"') => in_string = false,
                (true, _) => {}
                (false, '"') => in_string = true,
                (false, '\'') if chars.peek() == Some(&'{') || chars.peek() == Some(&'}') => {
                    chars.next();
                }
                (false, '/') if chars.peek() == Some(&'/') => break,
                (false, '{' | '}') => out.push(c),
                _ => {}
            }
        }
        out
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    files(&root, &mut paths);
    let mut long = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        for (start, line) in lines.iter().enumerate() {
            let head = line.trim_start();
            let head = head
                .strip_prefix("pub(crate) ")
                .or_else(|| head.strip_prefix("pub(super) "))
                .or_else(|| head.strip_prefix("pub "))
                .unwrap_or(head);
            let head = head.strip_prefix("async ").unwrap_or(head);
            let head = head.strip_prefix("const ").unwrap_or(head);
            let Some(rest) = head.strip_prefix("fn ") else {
                continue;
            };
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let (mut depth, mut opened) = (0i64, false);
            let mut end = None;
            for (i, l) in lines.iter().enumerate().skip(start) {
                let b = braces_of(l);
                if !opened && !b.contains('{') && l.contains(';') {
                    break; // a declaration without a body
                }
                for c in b.chars() {
                    depth += if c == '{' { 1 } else { -1 };
                    opened = true;
                }
                if opened && depth == 0 {
                    end = Some(i);
                    break;
                }
            }
            let Some(end) = end else { continue };
            let length = end - start + 1;
            let explained = lines[start..=end.min(start + 6)]
                .iter()
                .any(|l| l.contains("Long on purpose"));
            if length > limit && !explained {
                let rel = path
                    .strip_prefix(&root)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                long.push(format!("{rel}:{} {name} {length}", start + 1));
            }
        }
    }
    long
}

/// No function of `src/` is over 80 lines unless its head says why: long functions are where
/// a newcomer gets lost.
#[test]
fn no_function_is_over_80_lines_without_a_reason() {
    assert_eq!(long_functions(80), Vec::<String>::new());
    // The scan sees functions at all: many are over 40 lines.
    assert!(long_functions(40).len() > 2, "{:?}", long_functions(40));
}
