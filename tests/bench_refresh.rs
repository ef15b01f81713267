//! One account, side by side against the same loopback mock: our fresh check (nothing to
//! do) and our refresh vs the real `codex app-server` doing `account/read` without and
//! with `refreshToken`. Wall time (spawn → reaped) and peak RSS (wait4: the largest
//! process of the tree — ours includes the worker when there is one, Codex's whatever
//! it starts). A benchmark, not a test: #[ignore], asserts only that every run did what
//! it measures. Run (release build, as root):
//! `cargo test --release --test bench_refresh -- --ignored --nocapture --test-threads 1`
//! (`BENCH_RUNS=N` for more runs than 11). Figures go to docs/PERFORMANCE.md.
//! Peers in the same run: seed 003's watchdog script (rebuilt into target/bench/ by
//! packaging/bench/seed003.py from `BENCH_SEED003`, default /work/shared/seeds/003_….txt)
//! and, with `BENCH_OLD_AGENT=<older codex-auth-agent>`, an older build of ours (its CPU
//! per run is paired with ours run by run). `BENCH_AGENT=<codex-auth-agent>` measures that
//! build as ours instead of the test build's binary, which is not the shipped one: under
//! `cargo test` it is built with unwinding (the release profile's panic = "abort" is not
//! applied) and with the dev-dependencies' features. `BENCH_CALLGRIND=1` also counts the
//! instructions of one fresh check and one refresh of each build under valgrind
//! (`BENCH_CALLGRIND_DIR=<dir>` keeps the profiles).

mod support;

use codex_auth_agent::worker::codexrun::{self, CodexSetup, TempHome};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::bench::*;
use support::codex::*;
use support::*;

/// `c`'s environment on another program.
fn with_program(c: &Command, program: &Path) -> Command {
    let mut n = Command::new(program);
    n.env_clear();
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            n.env(k, v);
        }
    }
    n
}

/// `codex-auth-agent --config CFG refresh --account ACCOUNT --json [--force]`, measured;
/// checks the outcome and how many token requests the run made. `bin`: another build.
/// The agent's command as the tests set it up, running `bin` instead of the test build's
/// binary when given.
fn agent_command(w: &World, bin: Option<&Path>) -> Command {
    bin.map_or_else(|| w.agent(), |b| with_program(&w.agent(), b))
}

fn ours(w: &World, bin: Option<&Path>, cfg: &Path, account: &str, force: bool, outcome: &str) -> Measured {
    let before = w.mock.token_requests();
    let mut c = agent_command(w, bin);
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
    assert_eq!(m.code, 0, "{out}");
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
    assert_eq!(m.code, 0);
    assert_eq!(w.mock.token_requests() - before, u64::from(refresh), "Codex refreshed exactly when asked");
    m
}

/// Seed 003's watchdog rebuilt runnable into target/bench/seed003.sh, or None (printed)
/// when the seed is not on this machine.
fn seed_script() -> Option<PathBuf> {
    let seed = std::env::var("BENCH_SEED003").unwrap_or("/work/shared/seeds/003_e45a5ec4525e4f09.txt".into());
    if !Path::new(&seed).exists() {
        println!("BENCH seed 003 script SKIPPED: no {seed} (set BENCH_SEED003 to the seed file)");
        return None;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("target/bench/seed003.sh");
    let st = Command::new("python3").arg(root.join("packaging/bench/seed003.py")).arg(&seed).arg(&out).status();
    assert!(st.unwrap().success(), "packaging/bench/seed003.py could not rebuild {seed}");
    Some(out)
}

/// The interpreter the seed's script runs its Python with (`CODEX_PYTHON`): the system's,
/// not a pyenv shim, which would add its own bash start to every call. `BENCH_PYTHON`.
fn python() -> String {
    std::env::var("BENCH_PYTHON").unwrap_or("/usr/bin/python3".into())
}

/// The seed's script `--once` on `home`, as its README runs it: CODEX_HOME and the token
/// URL override pointing at the mock. `due` sets a safety margin of 100 years, so the
/// credential is due and the run refreshes (as our --force); otherwise it is fresh and the
/// run skips. Checks its exit code (0 refreshed, 1 skipped), its status sidecar's outcome
/// and how many token requests it made.
fn seed(w: &World, script: &Path, home: &Path, due: bool) -> Measured {
    let before = w.mock.token_requests();
    let mut c = Command::new(script);
    c.arg("--once")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", w.scratch.path())
        .env("TMPDIR", w.tmp())
        .env("CODEX_HOME", home)
        .env("CODEX_PYTHON", python())
        .env("CODEX_REFRESH_TOKEN_URL_OVERRIDE", w.mock.token_url())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if due {
        c.env("CODEX_AUTH_SAFETY_MARGIN_SECONDS", "3153600000");
    }
    let t0 = Instant::now();
    let m = reap(c.spawn().unwrap(), t0);
    assert_eq!(m.code, if due { 0 } else { 1 }, "seed script --once exit code");
    let status: Value = serde_json::from_slice(&std::fs::read(home.join("auth_refresh_status.json")).unwrap()).unwrap();
    assert_eq!(status["watchdog_last_outcome"], if due { "refreshed" } else { "skip" }, "{status}");
    assert_eq!(w.mock.token_requests() - before, u64::from(due));
    m
}

/// Instructions of one run of `c` under callgrind (its `summary:` line).
fn instructions(c: &Command, w: &World) -> u64 {
    let out = w.tmp().join(format!("callgrind.{}", fastrand::u64(..)));
    let mut v = with_program(c, Path::new("valgrind"));
    v.arg("--tool=callgrind").arg(format!("--callgrind-out-file={}", out.display()));
    v.arg(c.get_program()).args(c.get_args()).stdout(Stdio::null()).stderr(Stdio::null());
    assert!(v.status().expect("valgrind (BENCH_CALLGRIND=1) is installed").success());
    let text = std::fs::read_to_string(&out).unwrap();
    // BENCH_CALLGRIND_DIR keeps the profiles there, for callgrind_annotate.
    if let Some(d) = std::env::var_os("BENCH_CALLGRIND_DIR") {
        std::fs::copy(&out, Path::new(&d).join(out.file_name().unwrap())).unwrap();
    }
    std::fs::remove_file(&out).unwrap();
    let line = text.lines().find_map(|l| l.strip_prefix("summary:")).expect("callgrind summary line");
    line.split_whitespace().next().unwrap().parse().unwrap()
}

const FRESH: &str = "ours: fresh check, same user (in-process)";
const REFRESH: &str = "ours: refresh --force, same user (in-process)";
const SEED_FRESH: &str = "seed 003 script --once: fresh check (skip)";
const OLD_FRESH: &str = "older build (BENCH_OLD_AGENT): fresh check, in-process";
const OLD_REFRESH: &str = "older build (BENCH_OLD_AGENT): refresh --force, in-process";

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
    // The older build keeps its own state dir (its status.json format may differ) and
    // its own account, on the same mock.
    let old = std::env::var_os("BENCH_OLD_AGENT").map(PathBuf::from);
    let agent = std::env::var_os("BENCH_AGENT").map(PathBuf::from);
    let agent = agent.as_deref();
    let old_cfg = cfg.with_file_name("config-old.toml");
    let old_home = w.scratch.codex_home("old", Some(&fresh("old")));
    let text = std::fs::read_to_string(&cfg).unwrap();
    let state = w.scratch.state_dir().display().to_string();
    let old_account = format!("[accounts.old]\nuser = \"{}\"\ncodex_home = \"{}\"\n", me(), old_home.display());
    std::fs::write(&old_cfg, text.replace(&state, &format!("{state}-old")) + &old_account).unwrap();
    let script = seed_script();
    let seed_home = w.scratch.codex_home("seed", Some(&fresh("seed")));

    type Variant<'a> = (&'a str, Box<dyn Fn() -> Measured + 'a>);
    let mut variants: Vec<Variant> = vec![
        (FRESH, Box::new(|| ours(&w, agent, &cfg, "self", false, "fresh"))),
        ("ours: fresh check, root -> caa-alice (worker)", Box::new(|| ours(&w, agent, &cfg, "alice", false, "fresh"))),
        ("codex app-server: account/read, no refresh", Box::new(|| codex_account_read(&w, false))),
        (REFRESH, Box::new(|| ours(&w, agent, &cfg, "self", true, "refreshed"))),
        (
            "ours: refresh --force, root -> caa-alice (worker)",
            Box::new(|| ours(&w, agent, &cfg, "alice", true, "refreshed")),
        ),
        (
            "ours: refresh --force, refresh_method = app-server",
            Box::new(|| ours(&w, agent, &cfg, "app", true, "refreshed")),
        ),
        ("codex app-server: account/read {refreshToken: true}", Box::new(|| codex_account_read(&w, true))),
    ];
    if let Some(script) = &script {
        variants.push((SEED_FRESH, Box::new(|| seed(&w, script, &seed_home, false))));
        variants.push(("seed 003 script --once: refresh (due)", Box::new(|| seed(&w, script, &seed_home, true))));
    }
    if let Some(old) = &old {
        variants.push((OLD_FRESH, Box::new(|| ours(&w, Some(old), &old_cfg, "old", false, "fresh"))));
        variants.push((OLD_REFRESH, Box::new(|| ours(&w, Some(old), &old_cfg, "old", true, "refreshed"))));
    }
    // Interleaved, so drift in the machine's load hits every variant alike.
    let mut results: BTreeMap<&str, Vec<Measured>> = BTreeMap::new();
    for _ in 0..runs() {
        for (name, f) in &variants {
            results.entry(name).or_default().push(f());
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap();
    println!("BENCH one account, {} interleaved runs each (loadavg {})", runs(), load.trim());
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (name, _) in &variants {
        let r = &results[name];
        let wall = median(r.iter().map(|m| ms(m.wall)).collect());
        let cpu = median(r.iter().map(|m| ms(m.cpu)).collect());
        let rss = median(r.iter().map(|m| m.maxrss_kib as f64).collect());
        let rss_max = r.iter().map(|m| m.maxrss_kib).max().unwrap();
        let mut walls: Vec<f64> = r.iter().map(|m| ms(m.wall)).collect();
        walls.sort_by(f64::total_cmp);
        println!(
            "BENCH {name:<52} wall {wall:7.2} ms (min {:.2}, max {:.2})  CPU {cpu:6.2} ms  \
             peak RSS {:6.2} MiB (max {:.2})",
            walls[0],
            walls[walls.len() - 1],
            rss / 1024.0,
            rss_max as f64 / 1024.0
        );
    }
    // Ratios of medians in this run; the paired ones are the median of run-by-run ratios.
    let med = |name: &str, f: &dyn Fn(&Measured) -> f64| median(results[name].iter().map(f).collect());
    let paired = |a: &str, b: &str, f: &dyn Fn(&Measured) -> f64| {
        median(results[a].iter().zip(&results[b]).map(|(x, y)| f(x) / f(y)).collect())
    };
    let wall = |m: &Measured| ms(m.wall);
    let cpu = |m: &Measured| ms(m.cpu);
    if script.is_some() {
        println!(
            "BENCH ratio seed 003 fresh check / ours (wall): {:.1}x (median of paired runs {:.1}x)",
            med(SEED_FRESH, &wall) / med(FRESH, &wall),
            paired(SEED_FRESH, FRESH, &wall)
        );
    }
    if old.is_some() {
        for (now, then) in [(REFRESH, OLD_REFRESH), (FRESH, OLD_FRESH)] {
            println!(
                "BENCH ratio CPU {now} / older build: {:.2} (paired {:.2}); wall {:.2} (paired {:.2})",
                med(now, &cpu) / med(then, &cpu),
                paired(now, then, &cpu),
                med(now, &wall) / med(then, &wall),
                paired(now, then, &wall)
            );
        }
    }
    if std::env::var("BENCH_CALLGRIND").is_ok_and(|v| v == "1") {
        let mut builds = vec![("ours", agent_command(&w, agent), cfg.clone(), "self")];
        if let Some(old) = &old {
            builds.push(("older build", agent_command(&w, Some(old)), old_cfg.clone(), "old"));
        }
        for (label, base, config, account) in builds {
            for force in [false, true] {
                let mut c = with_program(&base, Path::new(base.get_program()));
                c.arg("--config").arg(&config).args(["refresh", "--account", account, "--json"]);
                if force {
                    c.arg("--force");
                }
                let what = if force { "refresh --force" } else { "fresh check" };
                println!("BENCH instructions (callgrind) {label}: {what}: {}", instructions(&c, &w));
            }
        }
    }
    assert!(w.leftovers().is_empty(), "throwaway homes left: {:?}", w.leftovers());
}
