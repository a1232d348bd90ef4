//! The shape of `src/`, checked on every run: dependencies point one way through the layers
//! (commands → ops → guest/host → render → instance), no command imports another, there is no
//! import cycle among the files, and no user-facing message formats a value with `{:#}` or
//! `{:?}`. The imports are read from the source text (`crate::…`, `super::…` and grouped `use`
//! lists); test modules (`#[cfg(test)]` to the end of a file) and the test-only fakes are
//! left out, because a test may build its fixtures from any layer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layer of each top-level module: a file may use its own top-level module and any module
/// of a strictly lower layer, nothing else.
const LAYERS: [(&str, u8); 14] = [
    ("env_vars", 0),
    ("instance", 1),
    ("faults", 2),
    ("output", 2),
    ("cli", 2),
    ("render", 2),
    ("store", 2),
    ("settings", 3),
    ("host", 3),
    ("guest", 4),
    ("ops", 5),
    ("commands", 6),
    ("lib", 7),
    ("main", 7),
];

/// Files that are compiled only for tests.
const TEST_ONLY: [&str; 1] = ["ops/fakes"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Module path of a file: `ops/network.rs` → `ops/network`, `commands/doctor/mod.rs` →
/// `commands/doctor`.
fn module_of(file: &Path) -> String {
    let relative = file.strip_prefix(src()).unwrap().with_extension("");
    let text = relative.to_str().unwrap().to_owned();
    text.strip_suffix("/mod").map(str::to_owned).unwrap_or(text)
}

fn files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The file's code without its test-only items (each `#[cfg(test)]` item, to its closing
/// brace) and without comment lines.
fn production_code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let mut kept = String::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        kept.push_str(&rest[..at]);
        rest = &rest[at..];
        rest = &rest[end_of_item(rest)..];
    }
    kept.push_str(rest);
    kept.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where the item starting at the beginning of `text` ends: after its matching closing brace
/// (strings and char literals skipped), or after its `;` when it has no body.
fn end_of_item(text: &str) -> usize {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'"' => {
                index += 1;
                while index < bytes.len() && bytes[index] != b'"' {
                    index += if bytes[index] == b'\\' { 2 } else { 1 };
                }
            }
            b'\'' if index + 2 < bytes.len() && bytes[index + 2] == b'\'' => index += 2,
            b';' if depth == 0 => return index + 1,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return index + 1;
                }
            }
            _ => {}
        }
        index += 1;
    }
    text.len()
}

/// Every module a path names, given the module the path is relative to.
fn resolve(known: &BTreeSet<String>, segments: &[&str]) -> Option<String> {
    // The longest prefix that is a module file.
    (1..=segments.len())
        .rev()
        .map(|n| segments[..n].join("/"))
        .find(|candidate| known.contains(candidate))
}

/// Modules a file refers to through `crate::` and `super::` paths, grouped lists included.
fn references(
    module: &str,
    code: &str,
    known: &BTreeSet<String>,
    is_dir_module: bool,
) -> Vec<String> {
    let mut found = Vec::new();
    // The module `super::` names.
    let mut parts: Vec<&str> = module.split('/').collect();
    if !is_dir_module {
        parts.pop();
    }
    let parent = if is_dir_module {
        parts[..parts.len().saturating_sub(1)].to_vec()
    } else {
        parts.clone()
    };
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let preceded_by_path = at > 0 && rest.as_bytes()[at - 1] == b':';
            rest = &rest[at + prefix.len()..];
            if preceded_by_path {
                continue;
            }
            // Segments up to a `{` group or the end of the path.
            let path: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            let mut heads = vec![segments.clone()];
            if rest[path.len()..].starts_with('{') {
                let group =
                    &rest[path.len() + 1..rest[path.len()..].find('}').unwrap() + path.len()];
                for item in group.split(',') {
                    let item = item.trim().trim_start_matches('{');
                    let mut joined = segments.clone();
                    joined.extend(item.split("::").map(str::trim).filter(|s| !s.is_empty()));
                    heads.push(joined);
                }
            }
            for head in heads {
                let mut full = base.clone();
                full.extend(head);
                if let Some(target) = resolve(known, &full) {
                    found.push(target);
                }
            }
        }
    }
    // A module also reaches the children it declares by their bare name (`egress::audit`).
    let own: Vec<&str> = if is_dir_module || module == "lib" {
        if module == "lib" {
            Vec::new()
        } else {
            module.split('/').collect()
        }
    } else {
        Vec::new()
    };
    if is_dir_module || module == "lib" {
        for line in code.lines() {
            let line = line.trim();
            let Some(name) = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("mod "))
                .and_then(|rest| rest.strip_suffix(';'))
            else {
                continue;
            };
            let uses = code.contains(&format!("{name}::")) || code.contains(&format!("use {name}"));
            let mut child = own.clone();
            child.push(name);
            if uses && known.contains(&child.join("/")) && module != "lib" {
                found.push(child.join("/"));
            }
        }
    }
    found.retain(|target| target != module);
    found
}

struct Graph {
    edges: BTreeMap<String, BTreeSet<String>>,
    code: BTreeMap<String, String>,
}

fn graph() -> Graph {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let mut known: BTreeSet<String> = all.iter().map(|f| module_of(f)).collect();
    known.insert(String::new());
    let mut edges = BTreeMap::new();
    let mut code = BTreeMap::new();
    for file in &all {
        let module = module_of(file);
        if TEST_ONLY.contains(&module.as_str()) {
            continue;
        }
        let text = production_code(file);
        let is_dir_module = file.file_name().is_some_and(|n| n == "mod.rs");
        let targets: BTreeSet<String> = references(&module, &text, &known, is_dir_module)
            .into_iter()
            .filter(|t| !t.is_empty())
            .collect();
        edges.insert(module.clone(), targets);
        code.insert(module, text);
    }
    Graph { edges, code }
}

fn top(module: &str) -> &str {
    module.split('/').next().unwrap()
}

fn layer(module: &str) -> u8 {
    LAYERS
        .iter()
        .find(|(name, _)| *name == top(module))
        .unwrap_or_else(|| panic!("module {module} has no layer in LAYERS"))
        .1
}

#[test]
fn dependencies_point_down_the_layers() {
    let graph = graph();
    let mut wrong = Vec::new();
    for (from, targets) in &graph.edges {
        for to in targets {
            let same_top = top(from) == top(to);
            if !same_top && layer(to) >= layer(from) {
                wrong.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers: {wrong:#?}");
    // The graph is not empty: the check reads what it should.
    assert!(graph.edges["ops/lifecycle"].contains("host/systemd"));
    assert!(graph.edges["commands/start"].contains("ops/lifecycle"));
}

#[test]
fn no_command_imports_another() {
    let graph = graph();
    let verb = |module: &str| module.split('/').nth(1).map(str::to_owned);
    let mut wrong = Vec::new();
    for (from, targets) in graph.edges.iter().filter(|(m, _)| top(m) == "commands") {
        for to in targets.iter().filter(|t| top(t) == "commands") {
            // A verb split into files (doctor/, setup/) uses its own parts; `commands/mod.rs`
            // dispatches to every verb.
            if from != "commands" && verb(from) != verb(to) {
                wrong.push(format!("{from} -> {to}"));
            }
        }
        if from != "commands" && graph.code[from].contains("crate::commands") {
            wrong.push(format!("{from} names crate::commands"));
        }
    }
    assert!(wrong.is_empty(), "commands importing commands: {wrong:#?}");
}

#[test]
fn there_is_no_import_cycle_among_the_files() {
    let graph = graph();
    // Depth-first search with colours; a grey target is a back edge, so a cycle.
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
        cycles: &mut Vec<String>,
    ) {
        state.insert(node, 1);
        stack.push(node);
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let start = stack.iter().position(|n| n == next).unwrap();
                    cycles.push(format!("{} -> {next}", stack[start..].join(" -> ")));
                }
                Some(_) => {}
                None => visit(next, graph, state, stack, cycles),
            }
        }
        stack.pop();
        state.insert(node, 2);
    }
    let mut state = BTreeMap::new();
    let mut cycles = Vec::new();
    for node in graph.edges.keys() {
        if !state.contains_key(node.as_str()) {
            visit(node, &graph.edges, &mut state, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}

#[test]
fn no_message_formats_with_alternate_or_debug() {
    let graph = graph();
    let mut wrong = Vec::new();
    for (module, code) in &graph.code {
        for (number, line) in code.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("//") {
                continue;
            }
            if line.contains(":#}") || line.contains(":?}") || line.contains("{:#") {
                wrong.push(format!("src/{module}.rs line {}: {}", number + 1, trimmed));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "`{{:#}}` repeats causes and `{{:?}}` shows a type's Debug to a person; use \
         output::error_chain or instance::values::escaped: {wrong:#?}"
    );
}
