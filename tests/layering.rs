//! The layer rule of docs/ARCHITECTURE.md, checked on the source: every `crate::` path in
//! src/ may name only its own layer or a layer below it; worker and runner never name each
//! other; core names no I/O crate; and no two files import each other, directly or round a
//! loop; and no line of src/ or tests/ is wider than 120 columns. The failures print the file
//! and the path (or line) that broke the rule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each layer and the layers it may import (besides itself).
const RULES: &[(&str, &[&str])] = &[
    ("core", &[]),
    ("sys", &["core"]),
    ("config", &["core", "sys"]),
    ("store", &["core", "sys", "config"]),
    ("worker", &["core", "sys", "config"]),
    ("runner", &["core", "sys", "config", "store"]),
    ("api", &["core"]),
    ("daemon", &["core", "sys", "config", "store", "worker", "runner", "api"]),
    ("ctl", &["core", "sys", "api"]),
    ("cli", &["core", "sys", "config", "store", "worker", "runner", "api", "daemon"]),
];

/// What core/ must not use: files, processes, the network, the OS, async runtimes, buses.
const IO_IN_CORE: &[&str] = &[
    "std::fs",
    "std::process",
    "std::net",
    "std::os::",
    "std::env",
    "std::io::stdin",
    "std::io::stdout",
    "File::",
    "nix::",
    "libc::",
    "tokio",
    "zbus",
    "ureq",
    "rustls",
    "tracing_subscriber",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without comments and string literals (they may mention paths).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let (mut out, mut i) = (String::with_capacity(text.len()), 0);
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i + 1 < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' && (i == 0 || b[i - 1] != b'\'') {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn ident_at(s: &[u8], mut i: usize) -> (String, usize) {
    let start = i;
    while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'_') {
        i += 1;
    }
    (String::from_utf8_lossy(&s[start..i]).into_owned(), i)
}

/// Expand the path (or use tree) that starts at `i`, right after `crate::`, into full paths.
fn paths_at(s: &[u8], i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    let mut i = i;
    loop {
        while i < s.len() && s[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < s.len() && s[i] == b'{' {
            i += 1;
            loop {
                while i < s.len() && (s[i].is_ascii_whitespace() || s[i] == b',') {
                    i += 1;
                }
                if i >= s.len() || s[i] == b'}' {
                    return i + 1;
                }
                i = paths_at(s, i, path.clone(), out);
            }
        }
        let (id, j) = ident_at(s, i);
        if id.is_empty() {
            out.push(path);
            return i;
        }
        if id != "self" {
            path.push(id);
        }
        i = j;
        if s[i..].starts_with(b"::") {
            i += 2;
        } else {
            out.push(path);
            return i;
        }
    }
}

/// Every `crate::…` path named in `code`.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let s = code.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(k) = code[from..].find("crate::") {
        let at = from + k;
        let word_start = at == 0 || !(s[at - 1].is_ascii_alphanumeric() || s[at - 1] == b'_' || s[at - 1] == b'$');
        from = at + 7;
        if word_start {
            paths_at(s, from, Vec::new(), &mut out);
        }
    }
    out
}

/// The module path of a file under src/ (`src/worker/cycle.rs` → [worker, cycle]).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut m: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    if m.last().is_some_and(|l| l == "mod" || l == "lib") {
        m.pop();
    }
    m
}

struct Tree {
    /// Module path → file.
    files: BTreeMap<Vec<String>, PathBuf>,
    /// File → its code.
    code: BTreeMap<PathBuf, String>,
}

fn tree() -> (PathBuf, Tree) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    sources(&src, &mut all);
    let mut t = Tree { files: BTreeMap::new(), code: BTreeMap::new() };
    for f in all.into_iter().filter(|f| !f.starts_with(src.join("bin"))) {
        t.code.insert(f.clone(), code_only(&std::fs::read_to_string(&f).unwrap()));
        t.files.insert(module_of(&src, &f), f);
    }
    (src, t)
}

/// The file that defines the longest prefix of `path`.
fn target<'a>(t: &'a Tree, path: &[String]) -> Option<&'a PathBuf> {
    (1..=path.len()).rev().find_map(|n| t.files.get(&path[..n]))
}

#[test]
fn every_import_goes_down_a_layer_or_stays_in_its_own() {
    let (src, t) = tree();
    let rules: BTreeMap<&str, &[&str]> = RULES.iter().copied().collect();
    let mut bad = Vec::new();
    for (file, code) in &t.code {
        let module = module_of(&src, file);
        let Some(layer) = module.first().map(String::as_str) else { continue };
        let allowed = rules.get(layer).unwrap_or_else(|| panic!("{}: layer {layer:?} has no rule", file.display()));
        for p in crate_paths(code) {
            let Some(to) = p.first().map(String::as_str) else { continue };
            if to != layer && !allowed.contains(&to) {
                bad.push(format!("{}: crate::{} ({layer} may import {allowed:?})", file.display(), p.join("::")));
            }
        }
    }
    assert!(bad.is_empty(), "imports against the layer rule:\n{}", bad.join("\n"));
}

/// `word` appears in `code` as a whole path start (`File::` is not inside `AuthFile::`).
fn uses(code: &str, word: &str) -> bool {
    code.match_indices(word).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

#[test]
fn core_uses_no_io() {
    let (src, t) = tree();
    let mut bad = Vec::new();
    let test_only = |f: &Path| f.ends_with("proptests.rs") || f.ends_with("tests.rs");
    for (file, code) in t.code.iter().filter(|(f, _)| f.starts_with(src.join("core")) && !test_only(f)) {
        // Tests may use temp files; the rule is for what ships.
        let shipped = code.split("#[cfg(test)]").next().unwrap_or_default();
        for word in IO_IN_CORE {
            if uses(shipped, word) {
                bad.push(format!("{}: uses {word}", file.display()));
            }
        }
    }
    assert!(bad.is_empty(), "core/ must be pure:\n{}", bad.join("\n"));
}

#[test]
fn no_two_files_import_each_other_round_a_loop() {
    let (_, t) = tree();
    let mut edges: BTreeMap<&PathBuf, BTreeSet<&PathBuf>> = BTreeMap::new();
    for (file, code) in &t.code {
        let set = edges.entry(file).or_default();
        for p in crate_paths(code) {
            if let Some(to) = target(&t, &p).filter(|to| *to != file) {
                // A folder's mod.rs declares its children; that is not an import.
                if to.parent() != Some(file.parent().unwrap()) || !file.ends_with("mod.rs") {
                    set.insert(to);
                }
            }
        }
    }
    // Depth-first search for a back edge.
    fn visit<'a>(
        n: &'a PathBuf,
        edges: &BTreeMap<&'a PathBuf, BTreeSet<&'a PathBuf>>,
        state: &mut BTreeMap<&'a PathBuf, u8>,
        stack: &mut Vec<&'a PathBuf>,
    ) -> Option<Vec<String>> {
        state.insert(n, 1);
        stack.push(n);
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m) {
                Some(1) => {
                    let from = stack.iter().position(|x| x == m).unwrap();
                    return Some(stack[from..].iter().map(|p| p.display().to_string()).collect());
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n, 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if !state.contains_key(n) {
            if let Some(cycle) = visit(n, &edges, &mut state, &mut Vec::new()) {
                panic!("import cycle: {}", cycle.join(" -> "));
            }
        }
    }
}

#[test]
fn the_checker_sees_what_it_must() {
    // A checker that parses nothing would pass everything: prove it reads each form.
    let code = code_only(
        "use crate::core::{clock::Clock, task::{self, Job}};\n// crate::runner::x\n\
         let a = crate::store::status::load();\n\
         let s = \"crate::daemon\";",
    );
    let got: BTreeSet<String> = crate_paths(&code).into_iter().map(|p| p.join("::")).collect();
    let want: BTreeSet<String> = ["core::clock::Clock", "core::task", "core::task::Job", "store::status::load"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
    assert!(uses("let f = std::fs::read(p);", "std::fs") && !uses("AuthFile::parse(b)", "File::"));
}

/// rustfmt keeps code within 120 columns but leaves long strings and macro bodies (proptest!)
/// alone; this keeps those within it too.
#[test]
fn no_line_is_wider_than_120_columns() {
    let mut files = Vec::new();
    for dir in ["src", "tests"] {
        sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir), &mut files);
    }
    let wide: Vec<String> = files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let lines: Vec<(usize, usize)> =
                text.lines().enumerate().map(|(i, l)| (i + 1, l.chars().count())).filter(|(_, n)| *n > 120).collect();
            lines.into_iter().map(move |(i, n)| format!("{}:{i}: {n} columns", f.display()))
        })
        .collect();
    assert!(files.len() > 50, "the sources were found ({} files)", files.len());
    assert!(wide.is_empty(), "lines over 120 columns (split the string or the expression):\n{}", wide.join("\n"));
}
