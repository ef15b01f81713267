//! Helpers for the operator-feature tests (tests/ops.rs, tests/ops_daemon.rs): hook
//! scripts, reading what they recorded, and parsing the Prometheus textfile.

use super::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// An executable script (0755) in a directory everyone can traverse.
pub fn script(s: &Scratch, name: &str, body: &str) -> PathBuf {
    let dir = s.path().join("hooks");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A hook that writes its exact environment (from /proc, as exec'd) to "$1".
pub fn env_hook(s: &Scratch) -> PathBuf {
    script(s, "env.sh", "tr '\\0' '\\n' < /proc/$$/environ > \"$1\"")
}

/// KEY=VALUE lines of a file written by a hook.
pub fn read_env(p: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

pub fn keys(env: &BTreeMap<String, String>) -> Vec<&str> {
    env.keys().map(String::as_str).collect()
}

/// The exact environment every hook gets.
pub const HOOK_ENV_KEYS: [&str; 6] = ["ACCOUNT", "FAILURE_CLASS", "HOME", "OUTCOME", "PATH", "REASON"];

/// Parse a node_exporter textfile: every line is a `# HELP`/`# TYPE` comment or
/// `name{labels} value` with a numeric value (else the test fails, naming the line).
/// Returns `name{labels}` → value.
pub fn parse_prom(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a metric line: {line:?}"));
        let name_ok = series
            .split('{')
            .next()
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'));
        assert!(name_ok && (!series.contains('{') || series.ends_with('}')), "bad series in {line:?}");
        let value: f64 = value.parse().unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
        assert!(out.insert(series.to_string(), value).is_none(), "duplicate series {series}");
    }
    out
}

/// Wait until `p` exists and `done` holds for its text (hooks the daemon runs are detached
/// from the run that triggered them); the limit only bounds a failing test.
pub fn wait_for_text(p: &Path, done: impl Fn(&str) -> bool) -> String {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        if done(&text) {
            return text;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{} never got there: {text:?}", p.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}
