//! The code's shape, checked from the sources: no import cycles between the modules of src/,
//! and no function longer than 100 lines. Run alone with `cargo test --test integration layers`.
//!
//! A module is a file (`src/dkms/build.rs` is `dkms::build`, `src/dkms/mod.rs` is `dkms`). Module A
//! depends on B when A's code (its tests excluded) names B: `crate::b::...`, `super::...`, or a
//! child's name; a module naming its own children (declaring and using them) is its job and is
//! not counted, but a child naming its parent is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longest function allowed, in lines from its `fn` line to its closing brace.
const MAX_FUNCTION_LINES: usize = 100;

/// Every `.rs` file below `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// `dkms::build` for src/dkms/build.rs; None for main.rs (the binary) and "" for lib.rs.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?.with_extension("");
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    match parts.last().map(String::as_str) {
        Some("main") if parts.len() == 1 => return None,
        Some("lib") if parts.len() == 1 => return Some(String::new()),
        Some("mod") => {
            parts.pop();
        }
        _ => {}
    }
    Some(parts.join("::"))
}

/// The code of a file without its test module, comments and string literals (what could name a
/// module in passing).
fn code_of(text: &str) -> Vec<String> {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| {
            let mut out = String::new();
            let mut in_string = false;
            let mut chars = line.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '\\' if in_string => {
                        chars.next();
                    }
                    '"' => in_string = !in_string,
                    '/' if !in_string && chars.peek() == Some(&'/') => break,
                    _ if in_string => {}
                    _ => out.push(c),
                }
            }
            out
        })
        .collect()
}

/// The paths a line names: `crate::a::b`, `super::a`, `super::{a, b::c}`, `child::x`.
fn named_paths(line: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let bytes: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_' || bytes[i - 1] == ':');
        if !starts_word || !(bytes[i].is_alphabetic() || bytes[i] == '_') {
            i += 1;
            continue;
        }
        // A path: words joined by `::`, possibly ending in a `{...}` group.
        let mut words = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < bytes.len() && (bytes[j].is_alphanumeric() || bytes[j] == '_') {
                j += 1;
            }
            words.push(bytes[start..j].iter().collect::<String>());
            if bytes.get(j) == Some(&':') && bytes.get(j + 1) == Some(&':') {
                j += 2;
                if bytes.get(j) == Some(&'{') {
                    let close = bytes[j..].iter().position(|&c| c == '}').map_or(bytes.len(), |p| j + p);
                    let group: String = bytes[j + 1..close].iter().collect();
                    for item in group.split(',') {
                        let mut path = words.clone();
                        path.extend(item.trim().split("::").map(|w| w.trim().to_string()).filter(|w| !w.is_empty()));
                        paths.push(path);
                    }
                    words.clear();
                    j = close;
                    break;
                }
                continue;
            }
            break;
        }
        if words.len() > 1 {
            paths.push(words);
        }
        i = j.max(i + 1);
    }
    paths
}

/// The module a path names, from module `from`: the longest known module it reaches.
fn target_module(path: &[String], from: &str, modules: &BTreeSet<String>) -> Option<String> {
    let mut base: Vec<String> = if from.is_empty() { Vec::new() } else { from.split("::").map(String::from).collect() };
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        Some("self") => rest = &rest[1..],
        _ => {
            // A bare path counts only when it starts with a child module of `from`.
            let mut child = base.clone();
            child.push(rest.first()?.clone());
            if !modules.contains(&child.join("::")) {
                return None;
            }
        }
    }
    let mut best = base.join("::");
    let mut current = base;
    for word in rest {
        current.push(word.clone());
        let name = current.join("::");
        if modules.contains(&name) {
            best = name;
        } else {
            break;
        }
    }
    Some(best)
}

/// True when `child` lies below `parent`.
fn is_below(child: &str, parent: &str) -> bool {
    parent.is_empty() || child.starts_with(&format!("{parent}::"))
}

/// Modules in cycles, each cycle's members sorted (Tarjan's strongly connected components).
fn cycles(edges: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeMap<String, String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, node: &'a str) {
        let n = s.index.len();
        s.index.insert(node, n);
        s.low.insert(node, n);
        s.stack.push(node);
        s.on_stack.insert(node);
        if let Some(targets) = s.edges.get(node) {
            for target in targets.keys() {
                if !s.index.contains_key(target.as_str()) {
                    visit(s, target);
                    let low = s.low[target.as_str()].min(s.low[node]);
                    s.low.insert(node, low);
                } else if s.on_stack.contains(target.as_str()) {
                    let low = s.index[target.as_str()].min(s.low[node]);
                    s.low.insert(node, low);
                }
            }
        }
        if s.low[node] == s.index[node] {
            let mut component = Vec::new();
            while let Some(top) = s.stack.pop() {
                s.on_stack.remove(top);
                component.push(top.to_string());
                if top == node {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in edges.keys() {
        if !state.index.contains_key(node.as_str()) {
            visit(&mut state, node);
        }
    }
    state.found
}

/// Functions longer than the limit: (file:line, name, lines).
fn long_functions(file: &Path, text: &str) -> Vec<(String, String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let signature = ["fn ", "pub fn ", "pub(crate) fn ", "async fn ", "pub async fn ", "unsafe fn "]
            .iter()
            .find_map(|prefix| trimmed.strip_prefix(prefix));
        let Some(rest) = signature else {
            i += 1;
            continue;
        };
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let indent = line.len() - trimmed.len();
        // The body ends at the first line after the signature that closes at the same indent.
        let mut end = i;
        while end < lines.len() && !lines[end].trim_end().ends_with('{') && !lines[end].trim_end().ends_with(';') {
            end += 1;
        }
        if lines.get(end).is_some_and(|l| l.trim_end().ends_with(';')) {
            i = end + 1;
            continue;
        }
        let mut close = end + 1;
        while close < lines.len() {
            let l = lines[close];
            if l.len() - l.trim_start().len() == indent && l.trim_start().starts_with('}') {
                break;
            }
            close += 1;
        }
        let length = close - i + 1;
        if length > MAX_FUNCTION_LINES {
            found.push((format!("{}:{}", file.display(), i + 1), name, length));
        }
        i += 1;
    }
    found
}

#[test]
fn no_import_cycles_between_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files: Vec<(String, PathBuf)> =
        sources(&src).into_iter().filter_map(|f| module_of(&src, &f).map(|m| (m, f))).collect();
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    // from -> to -> an example line naming it.
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (module, file) in &files {
        let text = std::fs::read_to_string(file).expect("read source");
        for line in code_of(&text) {
            for path in named_paths(&line) {
                let Some(target) = target_module(&path, module, &modules) else { continue };
                if &target == module || is_below(&target, module) {
                    continue;
                }
                edges.entry(module.clone()).or_default().entry(target).or_insert_with(|| line.trim().to_string());
            }
        }
    }
    let found = cycles(&edges);
    let report: Vec<String> = found
        .iter()
        .map(|cycle| {
            let members: BTreeSet<&String> = cycle.iter().collect();
            let links: Vec<String> = cycle
                .iter()
                .flat_map(|from| {
                    edges[from]
                        .iter()
                        .filter(|(to, _)| members.contains(to))
                        .map(move |(to, line)| format!("    {from} -> {to}: {line}"))
                })
                .collect();
            format!("cycle {}:\n{}", cycle.join(" <-> "), links.join("\n"))
        })
        .collect();
    assert!(found.is_empty(), "import cycles between modules of src/:\n{}", report.join("\n"));
    // The checker itself: it must see the layering it is meant to guard.
    assert!(edges.get("cli").is_some_and(|targets| targets.contains_key("depmod")), "no edge cli -> depmod seen");
}

#[test]
fn no_function_longer_than_100_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for file in sources(&src) {
        let text = std::fs::read_to_string(&file).expect("read source");
        found.extend(long_functions(&file, &text));
    }
    let report: Vec<String> = found.iter().map(|(at, name, lines)| format!("{at} {name}: {lines} lines")).collect();
    assert!(found.is_empty(), "functions over {MAX_FUNCTION_LINES} lines:\n{}", report.join("\n"));
}

#[test]
fn the_checks_see_what_they_look_for() {
    let modules: BTreeSet<String> = ["a", "a::b", "c"].into_iter().map(String::from).collect();
    let named = named_paths("use super::{exit, b::thing}; crate::c::run(); b::go(x::y)");
    let targets: BTreeSet<Option<String>> = named.iter().map(|p| target_module(p, "a::b", &modules)).collect();
    assert!(targets.contains(&Some("a".to_string())) && targets.contains(&Some("c".to_string())), "{targets:?}");
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    edges.entry("a".into()).or_default().insert("c".into(), String::new());
    edges.entry("c".into()).or_default().insert("a".into(), String::new());
    assert_eq!(cycles(&edges), vec![vec!["a".to_string(), "c".to_string()]]);
    let long = format!("fn long() {{\n{}}}\nfn short() {{\n}}\n", "    x();\n".repeat(100));
    let found = long_functions(Path::new("f.rs"), &long);
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].1.as_str(), found[0].2), ("long", 102));
}
