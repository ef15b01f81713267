//! `refresh_method = "app-server"` end to end with the real `codex app-server` (0.169, and
//! each version of the matrix in tests/codex-compat.sh) against the mock: a due credential
//! is refreshed by Codex in a throwaway home and committed like an OAuth answer; every failure
//! class leaves auth.json byte-identical; a hung token endpoint gets Codex killed; no token
//! reaches Codex's argv or environment; and (as root) two accounts refresh at once as their
//! own users.

mod support;

use codex_auth_agent::core::authfile::fingerprint;
use mock_openai::Fault;
use mock_openai::backend::{ACCOUNTS_CHECK_PATH, USAGE_PATH};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::codex::*;
use support::*;

const APP_SERVER: &str = "refresh_method = \"app-server\"";

fn refresh(w: &World, cfg: &Path) -> Run {
    w.run(cfg, &["refresh", "--account", "me", "--json"])
}

/// A due credential (old last_refresh) of a new login in its own CODEX_HOME.
fn due_home(w: &World, name: &str) -> (mock_openai::Credentials, PathBuf) {
    let c = w.mock.issue_family(name);
    let home = w.scratch.codex_home(name, Some(&auth_json(&c, OLD)));
    (c, home)
}

#[test]
fn codex_refreshes_a_throwaway_copy_and_the_result_is_committed() {
    let w = World::new();
    let (c, home) = due_home(&w, "acct-app");
    let cfg = w.config_me(&home, APP_SERVER);
    // A slow token endpoint keeps Codex running long enough to be looked at.
    w.mock.set_latency(Duration::from_millis(1500));
    let sampler = ProcSampler::start(&w.tmp());
    let r = refresh(&w, &cfg);
    let samples = sampler.finish();
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let line = r.one();
    assert_eq!(line["outcome"], "refreshed", "{line}");
    assert_eq!(w.mock.token_requests(), 1, "Codex refreshed once");
    // 0.130's account/read does not ask /wham/accounts/check; 0.169 and later do.
    assert_eq!(w.mock.backend_requests_to(ACCOUNTS_CHECK_PATH) >= 1, behaviour().accounts_check, "account/read");
    assert!(w.mock.backend_requests_to(USAGE_PATH) >= 1, "the rate-limit verify ran");
    let auth = read_json(&home.join("auth.json"));
    let new_rt = auth["tokens"]["refresh_token"].as_str().unwrap();
    assert_ne!(new_rt, c.refresh_token);
    assert!(w.mock.is_live_refresh_token(new_rt), "the canonical file holds the live token");
    assert!(!w.mock.is_live_refresh_token(&c.refresh_token));
    assert_eq!(auth["x_unknown_top"]["keep"], true, "the commit keeps fields Codex drops");
    assert_eq!(auth["tokens"]["x_unknown_token_field"], "keep-me-too");
    assert_ne!(auth["last_refresh"], OLD);
    assert_eq!(mode(&home.join("auth.json")), 0o600);
    assert_eq!(line["token_fp"], fingerprint(new_rt));
    assert_eq!(read_json(&home.join("auth_refresh_status.json"))["watchdog_last_outcome"], "refreshed");
    assert!(w.leftovers().is_empty(), "{:?}", w.leftovers());
    assert_no_codex_left(&w.tmp());
    let mut all = secrets(&c);
    all.extend(["id_token", "access_token", "refresh_token"].map(|k| auth["tokens"][k].as_str().unwrap().to_string()));
    assert_child_clean(&samples, &["app-server"], &all);
    assert_clean(&r, w.scratch.path(), &all);
}

/// Refresh `me` with `fault` on the token endpoint; auth.json must stay byte-identical.
fn failing_refresh(w: &World, name: &str, fault: Fault, extra: &str) -> Run {
    let (c, home) = due_home(w, name);
    let f = home.join("auth.json");
    let (before, inode) = (std::fs::read(&f).unwrap(), ino(&f));
    w.mock.set_sticky_fault(Some(fault));
    let r = refresh(w, &w.config_me(&home, &format!("{APP_SERVER}\n{extra}")));
    w.mock.set_sticky_fault(None);
    assert_eq!(std::fs::read(&f).unwrap(), before, "{name}: auth.json is byte-identical");
    assert_eq!(ino(&f), inode, "{name}: not even replaced");
    assert!(w.mock.is_live_refresh_token(&c.refresh_token), "{name}: the login still works");
    assert!(w.leftovers().is_empty(), "{name}: {:?}", w.leftovers());
    assert_clean(&r, w.scratch.path(), &secrets(&c));
    r
}

/// Every row fails with `class` (exit `code`) and a reason containing `hint`.
fn assert_each_fails(rows: Vec<(&str, Fault)>, code: i32, class: &str, hint: &str) {
    let w = World::new();
    for (name, fault) in rows {
        let r = failing_refresh(&w, name, fault, "");
        assert_eq!(r.code, code, "{name}: {}\n{}", r.stdout, r.stderr);
        let line = r.one();
        assert_eq!((line["outcome"].as_str(), line["class"].as_str()), (Some("failed"), Some(class)), "{name}");
        assert!(line["reason"].as_str().unwrap().contains(hint), "{name}: {line}");
    }
}

#[test]
fn permanent_failures_need_a_login_and_leave_auth_json_untouched() {
    let rows = vec![
        ("reused", Fault::refresh_token_reused()),
        ("expired", Fault::refresh_token_expired()),
        ("invalidated", Fault::refresh_token_invalidated()),
        ("reused-on-403", Fault::refresh_token_reused().with_status(403)),
        ("invalid-grant", Fault::invalid_grant()),
        ("401-empty", Fault::unauthorized_empty()),
    ];
    assert_each_fails(rows, 3, "permanent", "codex login --device-auth");
}

#[test]
fn transient_failures_retry_later_and_leave_auth_json_untouched() {
    let rows = vec![
        ("500", Fault::internal_server_error()),
        ("429", Fault::too_many_requests()),
        ("400-other", Fault::bad_request_other()),
        ("reset", Fault::Reset),
    ];
    assert_each_fails(rows, 4, "transient", "will retry");
}

#[test]
fn a_hung_token_endpoint_gets_codex_killed() {
    let w = World::new();
    let t = Instant::now();
    let r = failing_refresh(&w, "hang", Fault::Hang, "request_timeout = \"1s\"");
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.one()["class"], "transient");
    assert!(t.elapsed() < Duration::from_secs(40), "took {:?}", t.elapsed());
    assert_no_codex_left(&w.tmp());
}

#[test]
fn a_missing_codex_is_a_clear_transient_failure() {
    let w = World::new();
    let (c, home) = due_home(&w, "acct-nocodex");
    let before = std::fs::read(home.join("auth.json")).unwrap();
    let cfg = w.config_me(&home, APP_SERVER);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(&codex_bin().display().to_string(), "/nonexistent/codex");
    std::fs::write(&cfg, text).unwrap();
    let r = refresh(&w, &cfg);
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    let reason = r.one()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("/nonexistent/codex") && reason.contains("agent.codex_bin"), "{reason}");
    assert_eq!(std::fs::read(home.join("auth.json")).unwrap(), before);
    assert_eq!(w.mock.token_requests(), 0);
    assert!(w.mock.is_live_refresh_token(&c.refresh_token));
}

#[test]
fn two_accounts_refresh_at_once_each_as_its_own_user() {
    if !require_root("two_accounts_refresh_at_once_each_as_its_own_user") {
        return;
    }
    let w = World::new();
    let (ca, cb) = (w.mock.issue_family("alice-app"), w.mock.issue_family("bob-app"));
    let u = w.two_users(&auth_json(&ca, OLD), &auth_json(&cb, OLD));
    let (alice, bob, ha, hb) = (&u.alice, &u.bob, &u.alice_home, &u.bob_home);
    let r = w.run(&w.config(APP_SERVER, &u.accounts), &["refresh", "--all", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let lines = r.json();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l["outcome"] == "refreshed"), "{}", r.stdout);
    let mut all = secrets(&ca);
    all.extend(secrets(&cb));
    for (home, user, creds) in [(ha, alice, &ca), (hb, bob, &cb)] {
        let f = home.join("auth.json");
        assert_eq!((std::fs::metadata(&f).unwrap().uid(), mode(&f)), (user.uid.as_raw(), 0o600));
        let rt = read_json(&f)["tokens"]["refresh_token"].as_str().unwrap().to_string();
        assert_ne!(rt, creds.refresh_token);
        assert!(w.mock.is_live_refresh_token(&rt));
        assert_all_owned_by(home, user.uid.as_raw());
        all.push(rt);
    }
    assert!(w.leftovers().is_empty(), "{:?}", w.leftovers());
    assert_clean(&r, w.scratch.path(), &all);
}
