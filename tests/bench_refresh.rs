//! One account, side by side against the same loopback mock: our fresh check (nothing to
//! do) and our refresh vs the real `codex app-server` doing `account/read` without and
//! with `refreshToken`. Wall time (spawn → reaped) and peak RSS (wait4: the largest
//! process of the tree — ours includes the worker when there is one, Codex's whatever
//! it starts). A benchmark, not a test: #[ignore], asserts only that every run did what
//! it measures. Run (release build, as root):
//! `cargo test --release --test bench_refresh -- --ignored --nocapture --test-threads 1`
//! (`BENCH_RUNS=N` for more runs than 11). Figures go to docs/PERFORMANCE.md.

mod support;

use codex_auth_agent::worker::codexrun::{self, CodexSetup, TempHome};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::bench::*;
use support::codex::*;
use support::*;

/// `codex-auth-agent --config CFG refresh --account ACCOUNT --json [--force]`, measured;
/// checks the outcome and how many token requests the run made.
fn ours(w: &World, cfg: &Path, account: &str, force: bool, outcome: &str) -> Measured {
    let before = w.mock.token_requests();
    let mut c = w.agent();
    c.arg("--config").arg(cfg).args(["refresh", "--account", account, "--json"]);
    if force {
        c.arg("--force");
    }
    c.stdout(Stdio::piped()).stderr(Stdio::null());
    let t0 = Instant::now();
    let mut child = c.spawn().unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let m = reap(child, t0);
    let line: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(line["outcome"], outcome, "{line}");
    assert_eq!(w.mock.token_requests() - before, u64::from(outcome == "refreshed"));
    m
}

/// `codex app-server` in a throwaway home set up exactly as our app-server refresh sets
/// it up (same config and environment), holding a new login; initialize → initialized →
/// `account/read {"refreshToken": refresh}` → stdin closed → exit. Checks that Codex
/// made a token request exactly when asked to refresh.
fn codex_account_read(w: &World, refresh: bool) -> Measured {
    let c = w.mock.issue_family(&format!("codex-{}", fastrand::u64(..)));
    let setup = CodexSetup::new(&codex_bin().to_string_lossy(), &w.mock.url(), &w.mock.token_url(), &w.tmp());
    let home = TempHome::create(&w.tmp(), 0).unwrap();
    home.install(auth_json(&c, &recent()).as_bytes(), &codexrun::offline_config(&setup.base_url)).unwrap();
    let mut cmd = home.command(codex_bin(), &setup);
    cmd.arg("app-server").stdin(Stdio::piped()).stderr(Stdio::null());
    let before = w.mock.token_requests();
    let t0 = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let lines = {
        let (tx, rx) = mpsc::channel::<Value>();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&l) {
                    let _ = tx.send(v);
                }
            }
        });
        rx
    };
    let mut stdin = child.stdin.take().unwrap();
    let mut send = |v: Value| writeln!(stdin, "{v}").unwrap();
    let answer = |id: u64| loop {
        let m = lines.recv_timeout(Duration::from_secs(30)).expect("codex app-server answered in time");
        if m["id"] == id && m.get("method").is_none() {
            return m;
        }
    };
    send(json!({"id": 1, "method": "initialize", "params": {"clientInfo": {"name": "bench", "version": "0"}}}));
    answer(1);
    send(json!({"method": "initialized"}));
    send(json!({"id": 2, "method": "account/read", "params": {"refreshToken": refresh}}));
    let read = answer(2);
    assert!(!read["result"]["account"].is_null(), "{read}");
    drop(stdin);
    let m = reap(child, t0);
    assert_eq!(w.mock.token_requests() - before, u64::from(refresh), "Codex refreshed exactly when asked");
    m
}

#[test]
#[ignore]
fn fresh_check_and_refresh_vs_codex_app_server() {
    if !require_root("fresh_check_and_refresh_vs_codex_app_server") {
        return;
    }
    let w = World::new();
    let fresh = |name: &str| {
        let c = w.mock.issue_family(name);
        auth_json(&c, &recent())
    };
    // Accounts of root (the CLI works in-process) and of caa-alice (root hands the work to
    // a worker that drops to her: the path the daemon and the root timer take).
    let alice = ensure_user("caa-alice");
    let homes: Vec<(&str, String, PathBuf)> = vec![
        ("self", me(), w.scratch.codex_home("self", Some(&fresh("self")))),
        ("alice", alice.name.clone(), home_for(&w.scratch, &alice, Some(&fresh("alice")))),
        ("app", me(), w.scratch.codex_home("app", Some(&fresh("app")))),
    ];
    let accounts: String = homes
        .iter()
        .map(|(n, u, h)| {
            let method = if *n == "app" { "refresh_method = \"app-server\"\n" } else { "" };
            format!("[accounts.{n}]\nuser = \"{u}\"\ncodex_home = \"{}\"\n{method}\n", h.display())
        })
        .collect();
    let cfg = w.config("", &accounts);

    type Variant<'a> = (&'a str, Box<dyn Fn() -> Measured + 'a>);
    let variants: Vec<Variant> = vec![
        ("ours: fresh check, same user (in-process)", Box::new(|| ours(&w, &cfg, "self", false, "fresh"))),
        ("ours: fresh check, root -> caa-alice (worker)", Box::new(|| ours(&w, &cfg, "alice", false, "fresh"))),
        ("codex app-server: account/read, no refresh", Box::new(|| codex_account_read(&w, false))),
        ("ours: refresh --force, same user (in-process)", Box::new(|| ours(&w, &cfg, "self", true, "refreshed"))),
        ("ours: refresh --force, root -> caa-alice (worker)", Box::new(|| ours(&w, &cfg, "alice", true, "refreshed"))),
        ("ours: refresh --force, refresh_method = app-server", Box::new(|| ours(&w, &cfg, "app", true, "refreshed"))),
        ("codex app-server: account/read {refreshToken: true}", Box::new(|| codex_account_read(&w, true))),
    ];
    // Interleaved, so drift in the machine's load hits every variant alike.
    let mut results: BTreeMap<usize, Vec<Measured>> = BTreeMap::new();
    for _ in 0..runs() {
        for (i, (_, f)) in variants.iter().enumerate() {
            let m = f();
            assert_eq!(m.code, 0);
            results.entry(i).or_default().push(m);
        }
    }
    println!("BENCH one account, {} interleaved runs each: median wall, median and max peak RSS", runs());
    for (i, (name, _)) in variants.iter().enumerate() {
        let r = &results[&i];
        let wall = median(r.iter().map(|m| m.wall.as_secs_f64() * 1000.0).collect());
        let rss = median(r.iter().map(|m| m.maxrss_kib as f64).collect());
        let rss_max = r.iter().map(|m| m.maxrss_kib).max().unwrap();
        let mut walls: Vec<f64> = r.iter().map(|m| m.wall.as_secs_f64() * 1000.0).collect();
        walls.sort_by(f64::total_cmp);
        println!(
            "BENCH {name:<52} wall {wall:7.2} ms (min {:.2}, max {:.2})  peak RSS {:6.2} MiB (max {:.2})",
            walls[0],
            walls[walls.len() - 1],
            rss / 1024.0,
            rss_max as f64 / 1024.0
        );
    }
    assert!(w.leftovers().is_empty(), "throwaway homes left: {:?}", w.leftovers());
}
