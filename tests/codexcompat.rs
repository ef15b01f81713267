//! Issue #14: the Codex CLI the user has (0.130 to the newest), each release's own facts.
//! Every test runs against the Codex named by `CODEX_AUTH_AGENT_TEST_CODEX` and asserts
//! what that version does (`support::codex::behaviour`, the table in docs/CODEX-COMPAT.md):
//! Codex accepts the auth.json we write, Codex refreshing the account's file is adopted by
//! us, what Codex's refresh request looks like, the lock protocol (0.130 has none), and
//! the app-server's account/read. A release that changes a row fails the test that checks
//! it, with the row's name — that is how `tests/codex-compat.sh <version>` reports a change.

mod support;

use codex_auth_agent::core::authfile::fingerprint;
use mock_openai::TokenRequestShape;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};
use support::codex::*;
use support::*;

/// The version under test, for messages (`0.169.0`).
fn ver() -> String {
    let (a, b, c) = codex_version();
    format!("{a}.{b}.{c}")
}

fn last_shape(w: &World) -> TokenRequestShape {
    w.mock.token_request_shapes().pop().expect("a token request")
}

/// `codex-auth-agent refresh --json [--force] --codex-home HOME`.
fn agent_refresh_run(w: &World, home: &Path, force: bool) -> Run {
    let mut a = w.agent();
    a.args(["refresh", "--json", "--codex-home"]).arg(home);
    if force {
        a.arg("--force");
    }
    run(a)
}

#[test]
fn codex_accepts_the_auth_json_we_wrote() {
    // Our own refresh rewrites the file (kept fields, our atomic write, 0600); the Codex
    // under test must read it as a ChatGPT login and use its access token as it is.
    let w = World::new();
    let c = w.mock.issue_family("acct-ours");
    let home = account_home(&w, "ours", &c);
    let r = agent_refresh_run(&w, &home, true);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.one()["outcome"], "refreshed");
    let status = run(codex(&w, &home, &["login", "status"]));
    assert_eq!(status.code, 0, "codex {} login status: {}\n{}", ver(), status.stdout, status.stderr);
    assert!(format!("{}{}", status.stdout, status.stderr).contains("Logged in using ChatGPT"), "{}", status.stdout);
    w.mock.reset_counters();
    let exec = run(codex_exec(&w, &home));
    assert_eq!(exec.code, 0, "codex {} exec on our file: {}", ver(), exec.stderr);
    assert!(exec.stdout.contains("Banana"));
    assert_eq!(w.mock.token_requests(), 0, "Codex {} used our access token without refreshing", ver());
}

#[test]
fn codex_refreshing_the_accounts_file_is_adopted_by_the_agent() {
    // The user's Codex refreshes an expired login in the account's own CODEX_HOME. Then the
    // agent must read what Codex wrote (however it wrote it) and use Codex's new token.
    let b = behaviour();
    let w = World::new();
    let c = login(&w, "acct-theirs", -100);
    let home = account_home(&w, "theirs", &c);
    let f = home.join("auth.json");
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let before = ino(&f);
    let exec = run(codex_exec(&w, &home));
    assert_eq!(exec.code, 0, "codex {} exec: {}", ver(), exec.stderr);
    assert_eq!(w.mock.successful_refreshes(), 1, "Codex {} refreshed", ver());
    let auth = read_json(&f);
    let theirs = auth["tokens"]["refresh_token"].as_str().unwrap().to_string();
    assert!(w.mock.is_live_refresh_token(&theirs) && theirs != c.refresh_token);
    assert!(auth.get("x_unknown_top").is_none(), "Codex {} drops unknown fields when it rewrites", ver());
    if b.atomic_write {
        assert_ne!(ino(&f), before, "Codex {} replaces auth.json (temp + rename)", ver());
        assert_eq!(mode(&f), 0o600, "Codex {}'s new file is 0600", ver());
    } else {
        assert_eq!(ino(&f), before, "Codex {} rewrites auth.json in place (O_TRUNC)", ver());
        assert_eq!(mode(&f), 0o644, "an in-place rewrite keeps the old mode");
    }
    for lock in ["auth.lock", "auth.json.lock"] {
        assert_eq!(home.join(lock).exists(), b.locks, "Codex {} and {lock}", ver());
    }

    // The agent finds a fresh credential: nothing to send, and its status names Codex's token.
    w.mock.reset_counters();
    let r = agent_refresh_run(&w, &home, false);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let line = r.one();
    assert_eq!((line["outcome"].as_str(), line["token_fp"].as_str()), (Some("fresh"), Some(&*fingerprint(&theirs))));
    assert_eq!(w.mock.token_requests(), 0);
    // A forced refresh spends Codex's token, not the one it replaced.
    let r = agent_refresh_run(&w, &home, true);
    assert_eq!((r.code, r.one()["outcome"].as_str()), (0, Some("refreshed")), "{}", r.stderr);
    assert_eq!((w.mock.successful_refreshes(), w.mock.reuse_detections()), (1, 0));
    assert!(!w.mock.family_revoked("acct-theirs"));
    let mut all = secrets(&c);
    all.push(theirs);
    assert_clean(&r, w.scratch.path(), &all);
}

#[test]
fn what_codexs_refresh_request_looks_like() {
    let b = behaviour();
    let w = World::new();
    let c = login(&w, "acct-shape", -100);
    let home = account_home(&w, "shape", &c);
    let exec = run(codex_exec(&w, &home));
    assert_eq!(exec.code, 0, "{}", exec.stderr);
    let theirs = w.mock.token_request_shapes();
    println!("codex {} exec: {theirs:?}", ver());
    let s = &theirs[0];
    assert_eq!(
        (s.client_id.as_deref(), s.grant_type.as_deref()),
        (Some(mock_openai::CLIENT_ID), Some("refresh_token"))
    );
    let reason_field = if b.refresh_reason { vec!["refresh_reason"] } else { vec![] };
    let mut want: Vec<&str> = ["client_id", "grant_type", "refresh_token"].into();
    want.extend(&reason_field);
    want.sort();
    assert_eq!(s.body_fields, want, "Codex {}'s refresh body", ver());
    // An access token that has expired is a "proactive_expiry" refresh to Codex.
    assert_eq!(s.refresh_reason.as_deref(), b.refresh_reason.then_some("proactive_expiry"));
    assert_eq!(s.header("originator"), Some("codex_exec"));
    assert!(s.header("user-agent").unwrap().starts_with(&format!("codex_exec/{} (", ver())), "{s:?}");
    assert_eq!(s.header("content-type"), Some("application/json"));
    assert_eq!(s.header("accept"), Some("*/*"));
    assert_eq!(s.header("accept-encoding"), b.accept_encoding, "Codex {}", ver());

    // Ours, for an account whose agent.codex_bin is this Codex: the same body fields and
    // headers (no Accept-Encoding: we decode no zstd), Codex's originator, its version in
    // the User-Agent, and `login_client_id` as the client id when set.
    let c = w.mock.issue_family("acct-shape-ours");
    let home = w.scratch.codex_home("shape-ours", Some(&auth_json(&c, OLD)));
    w.mock.accept_client_id("app_codexcompat_ours");
    for (extra, client) in
        [("", mock_openai::CLIENT_ID), ("login_client_id = \"app_codexcompat_ours\"", "app_codexcompat_ours")]
    {
        w.mock.reset_counters();
        let r = w.run(&w.config_me(&home, extra), &["refresh", "--account", "me", "--json"]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        let ours = last_shape(&w);
        println!("ours for codex {}: {ours:?}", ver());
        assert_eq!(ours.body_fields, s.body_fields, "our body has Codex {}'s fields", ver());
        assert_eq!(ours.refresh_reason.as_deref(), b.refresh_reason.then_some("scheduled"), "an old last_refresh");
        assert_eq!(ours.client_id.as_deref(), Some(client));
        let names = |x: &TokenRequestShape| {
            let mut n: Vec<String> =
                x.headers.iter().map(|(k, _)| k.clone()).filter(|k| k != "accept-encoding").collect();
            n.sort();
            n
        };
        assert_eq!(names(&ours), names(s), "our headers are Codex {}'s", ver());
        assert_eq!(ours.header("originator"), Some("codex_cli_rs"));
        assert!(ours.header("user-agent").unwrap().starts_with(&format!("codex_cli_rs/{} (", ver())), "{ours:?}");
        // Refreshed: the next run of the loop starts from the new, fresh token; force it.
        let auth = std::fs::read_to_string(home.join("auth.json")).unwrap().replace(&recent()[..10], "2020-01-01");
        std::fs::write(home.join("auth.json"), auth).unwrap();
    }

    // The same through the app-server: account/read {refreshToken:true} is "forced", and the
    // originator is the JSON-RPC client's name.
    let c = login(&w, "acct-shape-app", 10 * 86_400);
    let home = account_home(&w, "shape-app", &c);
    w.mock.reset_counters();
    let mut app = AppServer::start(&w, &home);
    let read = app.call("account/read", json!({"refreshToken": true}));
    drop(app);
    assert!(read.get("result").is_some(), "{read}");
    let s = last_shape(&w);
    println!("codex {} app-server account/read: {s:?}", ver());
    assert_eq!(s.refresh_reason.as_deref(), b.refresh_reason.then_some("forced"));
    assert_eq!(s.header("originator"), Some(APP_CLIENT));
    assert!(s.header("user-agent").unwrap().starts_with(&format!("{APP_CLIENT}/{} (", ver())), "{s:?}");
    assert_eq!(
        w.mock.backend_requests_to(mock_openai::backend::ACCOUNTS_CHECK_PATH) > 0,
        b.accounts_check,
        "Codex {} account/read and /wham/accounts/check",
        ver()
    );
}

#[test]
fn codex_takes_the_client_id_from_its_environment_since_0_169() {
    let b = behaviour();
    let w = World::new();
    w.mock.accept_client_id("app_codexcompat_test");
    let c = login(&w, "acct-client", -100);
    let home = account_home(&w, "client", &c);
    let mut cmd = codex_exec(&w, &home);
    cmd.env("CODEX_APP_SERVER_LOGIN_CLIENT_ID", "app_codexcompat_test");
    let exec = run(cmd);
    assert_eq!(exec.code, 0, "{}", exec.stderr);
    let want = if b.client_id_env { "app_codexcompat_test" } else { mock_openai::CLIENT_ID };
    assert_eq!(last_shape(&w).client_id.as_deref(), Some(want), "Codex {}", ver());
}

#[test]
fn codex_waits_for_auth_lock_before_it_writes_and_0_130_does_not() {
    // The lock interplay from Codex's side: while a writer of ours holds auth.lock (as the
    // agent does from its re-read to its rename), a Codex with locks does not write auth.json;
    // 0.130 writes regardless — so for it the agent relies on the yield and the verify
    // (tests/codexrace.rs), never on Codex honouring our lock.
    let b = behaviour();
    let w = World::new();
    let c = login(&w, "acct-lock", -100);
    let home = account_home(&w, "lock", &c);
    let f = home.join("auth.json");
    let before = std::fs::read(&f).unwrap();
    let lock =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(home.join("auth.lock")).unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e).unwrap();
    let child = codex_exec(&w, &home).spawn().unwrap();
    let t = Instant::now();
    while w.mock.successful_refreshes() == 0 && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(w.mock.successful_refreshes(), 1, "Codex {} refreshed", ver());
    // Long enough for any Codex to have written its answer (it takes milliseconds).
    std::thread::sleep(Duration::from_millis(1500));
    let during = std::fs::read(&f).unwrap();
    assert_eq!(during == before, b.locks, "Codex {}: auth.json written while auth.lock was held?", ver());
    drop(held);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rt = read_json(&f)["tokens"]["refresh_token"].as_str().unwrap().to_string();
    assert!(w.mock.is_live_refresh_token(&rt), "Codex {} committed its new token once the lock was free", ver());
}

#[test]
fn a_routing_discovery_failure_is_not_a_dead_login() {
    // account/read fails with -32603 "workspace routing discovery failed" when
    // /wham/accounts/check cannot be reached (0.169+) — after Codex already rewrote its
    // copy. The agent's app-server refresh must commit that, not report a failure.
    let b = behaviour();
    let w = World::new();
    let c = w.mock.issue_family("acct-routing");
    let home = w.scratch.codex_home("routing", Some(&auth_json(&c, OLD)));
    let cfg = w.config_me(&home, "refresh_method = \"app-server\"");
    w.mock.set_sticky_backend_fault(Some(mock_openai::Fault::Reset));
    let r = w.run(&cfg, &["refresh", "--account", "me", "--json"]);
    w.mock.set_sticky_backend_fault(None);
    assert_eq!(r.code, 0, "Codex {}: {}\n{}", ver(), r.stdout, r.stderr);
    assert_eq!(r.one()["outcome"], "refreshed");
    let rt = read_json(&home.join("auth.json"))["tokens"]["refresh_token"].as_str().unwrap().to_string();
    assert!(w.mock.is_live_refresh_token(&rt) && rt != c.refresh_token);
    // And what Codex itself answered, for the table.
    let c = login(&w, "acct-routing-raw", 10 * 86_400);
    let home = account_home(&w, "routing-raw", &c);
    w.mock.set_sticky_backend_fault(Some(mock_openai::Fault::Reset));
    let mut app = AppServer::start(&w, &home);
    let read = app.call("account/read", json!({"refreshToken": true}));
    drop(app);
    w.mock.set_sticky_backend_fault(None);
    if b.accounts_check {
        assert_eq!(read["error"]["code"], -32603, "Codex {}: {read}", ver());
        assert_eq!(read["error"]["message"], "workspace routing discovery failed");
    } else {
        assert!(read.get("result").is_some(), "Codex {} does not ask /wham/accounts/check: {read}", ver());
    }
}

#[test]
fn the_agent_shows_which_codex_it_drives_and_warns_once_about_an_untested_one() {
    let w = World::new();
    let c = w.mock.issue_family("acct-version");
    let home = w.scratch.codex_home("version", Some(&auth_json(&c, &recent())));
    let cfg = w.config_me(&home, "");
    let r = w.run(&cfg, &["preflight", "--account", "me", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.one()["codex_version"], ver());
    let status = || read_json(&w.scratch.state_dir().join("accounts/me/status.json"));
    assert_eq!(status()["codex_version"], ver());
    assert!(!r.stderr.contains("outside the versions"), "a tested Codex: {}", r.stderr);

    // The same binary in an npm package that says 0.999.0 (a hard link: its path, not its
    // target's, is what names the package): one warning naming the tested range, then none.
    let pkg = w.scratch.path().join("npm/node_modules/@openai/codex-linux-x64");
    let bin = pkg.join("vendor/x86_64-unknown-linux-musl/bin/codex");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::write(pkg.join("package.json"), r#"{"name":"@openai/codex","version":"0.999.0-linux-x64"}"#).unwrap();
    std::fs::hard_link(codex_bin(), &bin).unwrap();
    let text =
        std::fs::read_to_string(&cfg).unwrap().replace(&codex_bin().display().to_string(), &bin.display().to_string());
    std::fs::write(&cfg, text).unwrap();
    let warning = "Codex CLI 0.999.0 is outside the versions codex-auth-agent is tested with (0.130.0 to 0.171.x)";
    let first = w.run(&cfg, &["preflight", "--account", "me", "--json"]);
    assert_eq!((first.code, first.one()["codex_version"].as_str()), (0, Some("0.999.0")), "{}", first.stderr);
    assert_eq!(first.stderr.matches(warning).count(), 1, "{}", first.stderr);
    assert_eq!(status()["codex_version"], "0.999.0");
    let second = w.run(&cfg, &["preflight", "--account", "me", "--json"]);
    assert_eq!(second.code, 0);
    assert!(!second.stderr.contains("outside the versions"), "once, not every run: {}", second.stderr);
}
