//! The tree's shape, checked: no two files of `src/` import each other, directly or round
//! a longer circle (a `crate::` or `super::` path counts as an import; test modules do
//! not). A module's `mod.rs` declaring its children is not an import.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file below `dir`.
fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// `server/session.rs` is `server::session`, `server/mod.rs` is `server`, lib.rs the root.
fn module_of(relative: &Path) -> String {
    let text = relative
        .with_extension("")
        .to_string_lossy()
        .replace('/', "::");
    let text = text.strip_suffix("::mod").unwrap_or(&text).to_owned();
    if text == "lib" || text == "main" {
        String::new()
    } else {
        text
    }
}

/// The paths (`a::b::c`) that follow each occurrence of `prefix` in `code`; a `{...}`
/// group yields one path per item.
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut paths = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        if code[..at].chars().next_back().is_some_and(ident) {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        let end = rest
            .find(|c: char| !(ident(c) || c == ':'))
            .unwrap_or(rest.len());
        let base = rest[..end].trim_end_matches(':').to_owned();
        if rest[end..].starts_with('{') && rest[..end].ends_with("::") {
            let group = &rest[end + 1..rest[end..].find('}').map_or(end + 1, |c| end + c)];
            for item in group.split(',') {
                let first = item.trim().split("::").next().unwrap_or("").to_owned();
                if !first.is_empty() {
                    paths.push(format!("{base}::{first}"));
                }
            }
        }
        paths.push(base);
    }
    paths
}

/// The longest leading part of `path` that is a module of the tree.
fn resolve<'a>(path: &str, modules: &'a BTreeSet<String>) -> Option<&'a String> {
    let mut parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    while !parts.is_empty() {
        if let Some(found) = modules.get(&parts.join("::")) {
            return Some(found);
        }
        parts.pop();
    }
    None
}

fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let by_module: BTreeMap<String, PathBuf> = files
        .into_iter()
        .map(|path| (module_of(path.strip_prefix(&root).unwrap()), path))
        .collect();
    let modules: BTreeSet<String> = by_module.keys().cloned().collect();
    let mut edges = BTreeMap::new();
    for (module, path) in &by_module {
        let text = std::fs::read_to_string(path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
        let mut targets: Vec<String> = paths_after(code, "crate::");
        targets.extend(
            paths_after(code, "super::")
                .into_iter()
                .map(|p| format!("{parent}::{p}")),
        );
        let deps: BTreeSet<String> = targets
            .iter()
            .filter_map(|t| resolve(t, &modules))
            .filter(|d| *d != module && !d.is_empty())
            .cloned()
            .collect();
        edges.insert(module.clone(), deps);
    }
    edges
}

/// A circle through `from`, if the walk finds one.
fn circle(
    from: &str,
    edges: &BTreeMap<String, BTreeSet<String>>,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(start) = path.iter().position(|m| m == from) {
        let mut found = path[start..].to_vec();
        found.push(from.to_owned());
        return Some(found);
    }
    if done.contains(from) {
        return None;
    }
    path.push(from.to_owned());
    for next in edges.get(from).into_iter().flatten() {
        if let Some(found) = circle(next, edges, path, done) {
            return Some(found);
        }
    }
    path.pop();
    done.insert(from.to_owned());
    None
}

#[test]
fn no_file_of_src_imports_one_that_imports_it_back() {
    let edges = imports();
    assert!(
        edges.len() > 30,
        "the walk found the tree: {:?}",
        edges.keys()
    );
    // The walk sees imports: a session reads through its connection.
    assert!(edges["server::session"].contains("server::connection"));
    let mut done = BTreeSet::new();
    for module in edges.keys() {
        if let Some(found) = circle(module, &edges, &mut Vec::new(), &mut done) {
            panic!("import circle: {}", found.join(" -> "));
        }
    }
}
