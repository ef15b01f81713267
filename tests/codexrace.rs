//! Issue #11 part 3: the real Codex CLI and the agent refreshing the same expired token at
//! once. The account's own CODEX_HOME, an access token that expired 100 s ago, a token
//! endpoint that takes 300 ms, and `codex exec` (or `codex app-server` with `account/read
//! {refreshToken:true}`) started together with `codex-auth-agent refresh --codex-home DIR`.
//! Codex POSTs before it takes any lock, so both used to spend the same refresh token: the
//! mock saw `refresh_token_reused`, revoked the login, and the agent still said
//! `refreshed`. Now the agent yields to a running Codex inside Codex's refresh window and
//! adopts what it wrote, and verifies a refresh that may have collided.
//!
//! `CODEX_AUTH_AGENT_TEST_CODEX` names the Codex binary (0.169 unless said otherwise).
//! `CODEXRACE_ROUNDS` overrides the number of rounds (default 10).

mod support;

use mock_openai::{Credentials, make_jwt};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::codex::*;
use support::*;

const SLOW: Duration = Duration::from_millis(300);

fn rounds() -> usize {
    std::env::var("CODEXRACE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10)
}

#[allow(clippy::disallowed_methods)] // fixtures are built relative to the real clock
fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A new login of `account` whose access token expires `exp_in` seconds from now
/// (negative: expired that long ago). The refresh token is live.
fn login(w: &World, account: &str, exp_in: i64) -> Credentials {
    let mut c = w.mock.issue_family(account);
    let mut claims = mock_openai::decode_jwt_payload(&c.access_token).unwrap();
    claims["exp"] = json!(unix_now() + exp_in);
    claims["iat"] = json!(unix_now() - 3600);
    c.access_token = make_jwt(&claims);
    c
}

/// The account's real CODEX_HOME, with a config that points Codex at the mock.
fn account_home(w: &World, name: &str, c: &Credentials) -> PathBuf {
    let home = w.scratch.codex_home(name, Some(&auth_json(c, &recent())));
    std::fs::write(home.join("config.toml"), codex_auth_agent::codexrun::offline_config(&w.mock.url())).unwrap();
    home
}

/// Codex as the user would run it against `home` (argv `args`).
fn codex(w: &World, home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(codex_bin());
    c.args(args)
        .env_clear()
        .env("HOME", w.scratch.path())
        .env("CODEX_HOME", home)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("CODEX_REFRESH_TOKEN_URL_OVERRIDE", w.mock.token_url())
        .current_dir(w.scratch.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn codex_exec(w: &World, home: &Path) -> Command {
    codex(w, home, &codex_auth_agent::preflight::EXEC_ARGS)
}

/// `codex-auth-agent refresh --codex-home HOME --json`.
fn agent_refresh(w: &World, home: &Path) -> Command {
    let mut c = w.agent();
    c.args(["refresh", "--json", "--codex-home"]).arg(home).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn finish(child: Child) -> Run {
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What one round ended with.
struct Round {
    agent: Value,
    agent_run: Run,
    codex: Run,
    reused: u64,
    revoked: bool,
    on_disk_live: bool,
    requests: u64,
}

impl Round {
    fn outcome(&self) -> &str {
        self.agent["outcome"].as_str().unwrap_or("?")
    }

    fn line(&self, i: usize) -> String {
        format!(
            "round {i}: reuse={} revoked={} disk_live={} token_requests={} agent={} ({}) codex_exit={}",
            self.reused,
            self.revoked,
            self.on_disk_live,
            self.requests,
            self.outcome(),
            self.agent["reason"].as_str().unwrap_or(""),
            self.codex.code
        )
    }
}

/// Judge a round once every connection to the mock has been answered.
fn judge(w: &World, account: &str, home: &Path, agent_run: Run, codex: Run) -> Round {
    assert!(w.mock.settle(Duration::from_secs(20)), "the mock settled");
    if std::env::var_os("CODEXRACE_DEBUG").is_some() {
        for e in w.mock.requests_log() {
            println!("{e:?}");
        }
    }
    let agent = agent_run.one();
    let rt = read_json(&home.join("auth.json"))["tokens"]["refresh_token"].as_str().unwrap().to_string();
    Round {
        agent,
        agent_run,
        codex,
        reused: w.mock.reuse_detections(),
        revoked: w.mock.family_revoked(account),
        on_disk_live: w.mock.is_live_refresh_token(&rt),
        requests: w.mock.token_requests(),
    }
}

/// One race: `codex exec` and the agent started together on one expired login.
fn exec_round(w: &World, i: usize, agent_delay: Duration) -> Round {
    let account = format!("acct-race-{i}");
    let c = login(w, &account, -100);
    let home = account_home(w, &format!("race-{i}"), &c);
    w.mock.reset_counters();
    let codex = codex_exec(w, &home).spawn().unwrap();
    std::thread::sleep(agent_delay);
    let agent = agent_refresh(w, &home).spawn().unwrap();
    let (agent_run, codex_run) = (finish(agent), finish(codex));
    judge(w, &account, &home, agent_run, codex_run)
}

/// What every round must show once the race is fixed.
fn assert_clean_round(r: &Round, i: usize) {
    let line = r.line(i);
    assert_eq!(r.reused, 0, "the single-use rule saw a reuse: {line}");
    assert!(!r.revoked && r.on_disk_live, "the login on disk is alive: {line}");
    assert!(
        r.outcome() != "refreshed" || !r.revoked,
        "the agent reported refreshed for a revoked login: {line}\n{}",
        r.agent_run.stderr
    );
    assert_eq!(r.agent_run.code, 0, "{line}\n{}", r.agent_run.stderr);
}

#[test]
fn codex_exec_and_the_agent_refreshing_together_never_spend_one_token_twice() {
    let w = World::new();
    w.mock.set_latency(SLOW);
    let n = rounds();
    let results: Vec<Round> = (0..n).map(|i| exec_round(&w, i, Duration::ZERO)).collect();
    for (i, r) in results.iter().enumerate() {
        println!("{}", r.line(i));
        if std::env::var_os("CODEXRACE_DEBUG").is_some() {
            println!("CODEX STDERR {}\nAGENT STDERR {}", r.codex.stderr, r.agent_run.stderr);
        }
    }
    let reused = results.iter().filter(|r| r.reused > 0).count();
    let lied = results.iter().filter(|r| r.outcome() == "refreshed" && r.revoked).count();
    println!("{reused} of {n} rounds reused a refresh token; {lied} reported refreshed for a revoked login");
    for (i, r) in results.iter().enumerate() {
        assert_clean_round(r, i);
        assert_eq!(r.codex.code, 0, "Codex answered: {}\n{}", r.line(i), r.codex.stderr);
        assert_eq!(r.outcome(), "fresh", "the agent yielded to Codex and adopted: {}", r.line(i));
        assert_eq!(r.requests, 1, "one refresh, Codex's: {}", r.line(i));
    }
    assert_no_secrets(
        &results.iter().flat_map(|r| [("agent stdout", r.agent_run.stdout.as_str())]).collect::<Vec<_>>(),
        &[],
    );
}
