//! `codex-auth-agent preflight` end to end with the real Codex CLI (0.169, and each version
//! of the matrix in tests/codex-compat.sh) against the mock:
//! a working login passes, an expired access token is refreshed by Codex inside the
//! throwaway home and adopted, a dead refresh token fails permanently without touching
//! auth.json, a hung backend is killed at preflight_timeout, nothing is left in TMPDIR,
//! no token reaches Codex's argv or environment, and (as root) two accounts run at once
//! as their own users.

mod support;

use codex_auth_agent::core::authfile::fingerprint;
use codex_auth_agent::core::contract::EXEC_ARGS;
use mock_openai::Fault;
use mock_openai::backend::RESPONSES_PATH;
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};
use support::codex::*;
use support::*;

fn preflight(w: &World, cfg: &Path) -> Run {
    w.run(cfg, &["preflight", "--account", "me", "--json"])
}

fn status(w: &World, account: &str) -> Value {
    read_json(&w.scratch.state_dir().join(format!("accounts/{account}/status.json")))
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim().to_string()
}

/// The tokens now in `home`'s auth.json.
fn tokens_in(home: &Path) -> Vec<String> {
    let a = read_json(&home.join("auth.json"));
    ["id_token", "access_token", "refresh_token"].iter().map(|k| a["tokens"][k].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_working_login_passes_and_leaves_nothing_behind() {
    let w = World::new();
    let c = w.mock.issue_family("acct-ok");
    let home = w.scratch.codex_home("codex", Some(&auth_json(&c, &recent())));
    let (before, inode) = (std::fs::read(home.join("auth.json")).unwrap(), ino(&home.join("auth.json")));
    let cfg = w.config_me(&home, "");
    let r = preflight(&w, &cfg);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let line = r.one();
    assert_eq!((line["outcome"].as_str(), line["runner_state"].as_str()), (Some("preflight_ok"), Some("ok")));
    assert!(line["class"].is_null() && line["adopted"] == false, "{line}");
    assert_eq!(line["token_fp"], fingerprint(&c.refresh_token));
    assert!(w.mock.backend_requests_to(RESPONSES_PATH) >= 1, "Codex asked the mock's model");
    assert_eq!(w.mock.token_requests(), 0, "a live access token needs no refresh");
    assert_eq!(std::fs::read(home.join("auth.json")).unwrap(), before);
    assert_eq!(ino(&home.join("auth.json")), inode);
    let st = status(&w, "me");
    assert_eq!(st["runner_state"], "ok");
    assert!(st["runner_last_ok"].is_string() && st["runner_last_fail"].is_null());
    assert_eq!(st["runner_last_check"], st["runner_last_ok"]);
    assert_eq!(st["runner_boot_id"], boot_id());
    assert!(st["runner_last_reason"].as_str().unwrap().contains("Banana"));
    assert!(r.stderr.contains("preflight_ok"), "journal entry: {}", r.stderr);
    assert!(w.leftovers().is_empty(), "throwaway home left: {:?}", w.leftovers());
    assert_no_codex_left(&w.tmp());
    assert_clean(&r, w.scratch.path(), &secrets(&c));

    // A backend that answers but not "Banana" fails (transient) and is recorded.
    w.mock.set_reply_text("Apple");
    let r = preflight(&w, &cfg);
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    let line = r.one();
    assert_eq!((line["outcome"].as_str(), line["class"].as_str()), (Some("preflight_failed"), Some("transient")));
    assert!(line["reason"].as_str().unwrap().contains("without answering Banana"), "{line}");
    let st = status(&w, "me");
    assert_eq!(st["runner_state"], "fail");
    assert!(st["runner_last_ok"].is_string() && st["runner_last_fail"].is_string());
    assert_eq!(std::fs::read(home.join("auth.json")).unwrap(), before);
    assert!(w.leftovers().is_empty());
}

#[test]
fn codex_refreshing_inside_the_throwaway_home_is_adopted() {
    let w = World::new();
    let c = w.expired_family("acct-exp");
    let home = w.scratch.codex_home("codex", Some(&auth_json(&c, OLD)));
    let cfg = w.config_me(&home, "");
    let r = preflight(&w, &cfg);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let line = r.one();
    assert_eq!((line["outcome"].as_str(), line["adopted"].as_bool()), (Some("preflight_ok"), Some(true)), "{line}");
    assert!(line["reason"].as_str().unwrap().contains("adopted"), "{line}");
    assert_eq!(w.mock.successful_refreshes(), 1, "Codex refreshed once, inside the throwaway home");
    // Codex spent the old refresh token: the canonical file must now hold the new one.
    let auth = read_json(&home.join("auth.json"));
    let new_rt = auth["tokens"]["refresh_token"].as_str().unwrap();
    assert_ne!(new_rt, c.refresh_token);
    assert!(w.mock.is_live_refresh_token(new_rt), "the canonical file holds the live token");
    assert!(!w.mock.is_live_refresh_token(&c.refresh_token));
    assert!(w.mock.is_live_access_token(auth["tokens"]["access_token"].as_str().unwrap()));
    assert_eq!(auth["tokens"]["account_id"], "acct-exp");
    assert_ne!(auth["last_refresh"], OLD);
    assert_eq!(auth["x_unknown_top"]["keep"], true, "fields Codex drops survive the adoption");
    assert_eq!(auth["tokens"]["x_unknown_token_field"], "keep-me-too");
    assert_eq!(mode(&home.join("auth.json")), 0o600);
    assert_eq!(line["token_fp"], fingerprint(new_rt));
    assert_eq!(status(&w, "me")["token_fp"], fingerprint(new_rt));
    assert!(r.stderr.contains("outcome=\"adopted\""), "journal entry: {}", r.stderr);
    assert!(w.leftovers().is_empty());

    // The adopted credential works: a second preflight passes without another refresh.
    let r2 = preflight(&w, &cfg);
    assert_eq!(r2.code, 0, "{}\n{}", r2.stdout, r2.stderr);
    assert_eq!(r2.one()["adopted"], false);
    assert_eq!(w.mock.successful_refreshes(), 1);
    let mut all = secrets(&c);
    all.extend(tokens_in(&home));
    assert_clean(&r, w.scratch.path(), &all);
    assert_clean(&r2, w.scratch.path(), &all);
}

#[test]
fn a_dead_refresh_token_fails_permanently_and_auth_json_is_untouched() {
    let w = World::new();
    for (name, fault) in [
        ("reused", Fault::refresh_token_reused()),
        ("expired", Fault::refresh_token_expired()),
        ("invalid-grant", Fault::invalid_grant()),
    ] {
        let c = w.expired_family(name);
        let home = w.scratch.codex_home(name, Some(&auth_json(&c, OLD)));
        let (before, inode) = (std::fs::read(home.join("auth.json")).unwrap(), ino(&home.join("auth.json")));
        w.mock.set_sticky_fault(Some(fault));
        let r = preflight(&w, &w.config_me(&home, ""));
        w.mock.set_sticky_fault(None);
        assert_eq!(r.code, 3, "{name}: {}\n{}", r.stdout, r.stderr);
        let line = r.one();
        assert_eq!((line["outcome"].as_str(), line["class"].as_str()), (Some("preflight_failed"), Some("permanent")));
        let reason = line["reason"].as_str().unwrap();
        assert!(reason.contains("codex login --device-auth") && !reason.contains("ERROR"), "{name}: {reason}");
        assert_eq!(line["adopted"], false);
        assert_eq!(std::fs::read(home.join("auth.json")).unwrap(), before, "{name}: byte-identical");
        assert_eq!(ino(&home.join("auth.json")), inode);
        let st = status(&w, "me");
        assert_eq!((st["runner_state"].as_str(), st["runner_last_ok"].is_null()), (Some("fail"), true));
        assert!(w.leftovers().is_empty(), "{name}");
        assert_clean(&r, w.scratch.path(), &secrets(&c));
    }
    // The reason names the code when Codex printed it.
    assert!(status(&w, "me")["runner_last_reason"].as_str().unwrap().contains("rejected"), "invalid_grant row");
}

#[test]
fn a_hung_backend_is_killed_at_preflight_timeout_and_nothing_is_left() {
    let w = World::new();
    let c = w.mock.issue_family("acct-hang");
    let home = w.scratch.codex_home("codex", Some(&auth_json(&c, &recent())));
    let before = std::fs::read(home.join("auth.json")).unwrap();
    let cfg = w.config_me(&home, "preflight_timeout = \"3s\"");
    w.mock.set_sticky_backend_fault(Some(Fault::Hang));
    let t = Instant::now();
    let r = preflight(&w, &cfg);
    let took = t.elapsed();
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    let line = r.one();
    assert_eq!(line["class"], "transient");
    assert!(line["reason"].as_str().unwrap().contains("did not finish within 3s and was killed"), "{line}");
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(20), "took {took:?}");
    assert_no_codex_left(&w.tmp());
    assert!(w.leftovers().is_empty(), "throwaway home left after a timeout: {:?}", w.leftovers());
    assert_eq!(std::fs::read(home.join("auth.json")).unwrap(), before);
    assert_eq!(status(&w, "me")["runner_state"], "fail");
}

#[test]
fn no_token_reaches_codexs_argv_or_environment() {
    let w = World::new();
    let c = w.mock.issue_family("acct-canary");
    let home = w.scratch.codex_home("codex", Some(&auth_json(&c, &recent())));
    let cfg = w.config_me(&home, "");
    // Slow answers keep Codex running long enough to be looked at.
    w.mock.set_sticky_backend_fault(Some(Fault::Delay(Duration::from_millis(1500))));
    let sampler = ProcSampler::start(&w.tmp());
    let r = preflight(&w, &cfg);
    let samples = sampler.finish();
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_child_clean(&samples, &EXEC_ARGS, &secrets(&c));
    assert!(
        samples.iter().all(|s| s.env.contains(&format!("CODEX_REFRESH_TOKEN_URL_OVERRIDE={}", w.mock.token_url())))
    );
    assert_clean(&r, w.scratch.path(), &secrets(&c));
}

#[test]
fn stale_throwaway_homes_of_a_killed_agent_are_removed_at_the_next_run() {
    let w = World::new();
    let c = w.mock.issue_family("acct-stale");
    let home = w.scratch.codex_home("codex", Some(&auth_json(&c, &recent())));
    let uid = nix::unistd::geteuid().as_raw();
    let stale = w.tmp().join(format!("codex-auth-agent-{uid}-00000000deadbeef"));
    let foreign = w.tmp().join(format!("codex-auth-agent-{}-00000000deadbeef", uid + 4242));
    for d in [&stale, &foreign] {
        std::fs::create_dir_all(d.join(".codex")).unwrap();
        std::fs::write(d.join(".codex/auth.json"), auth_json(&c, OLD)).unwrap();
        let touched = std::process::Command::new("touch").args(["-d", "2 hours ago"]).arg(d).status().unwrap();
        assert!(touched.success());
    }
    let r = preflight(&w, &w.config_me(&home, ""));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(!stale.exists(), "the killed run's home (and the token copy in it) is gone");
    assert!(foreign.exists(), "another user's name is not ours to remove");
}

#[test]
fn two_accounts_at_once_each_as_its_own_user() {
    if !require_root("two_accounts_at_once_each_as_its_own_user") {
        return;
    }
    let w = World::new();
    let ca = w.expired_family("alice-acct");
    let cb = w.mock.issue_family("bob-acct");
    let u = w.two_users(&auth_json(&ca, OLD), &auth_json(&cb, &recent()));
    let (alice, bob, ha, hb) = (&u.alice, &u.bob, &u.alice_home, &u.bob_home);
    let hb_before = std::fs::read(hb.join("auth.json")).unwrap();
    let cfg = w.config("", &u.accounts);
    let r = w.run(&cfg, &["preflight", "--all", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let lines = r.json();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l["outcome"] == "preflight_ok"), "{}", r.stdout);
    assert_eq!((lines[0]["adopted"].as_bool(), lines[1]["adopted"].as_bool()), (Some(true), Some(false)));
    // alice's adopted file was written by alice.
    let fa = ha.join("auth.json");
    assert_eq!((std::fs::metadata(&fa).unwrap().uid(), mode(&fa)), (alice.uid.as_raw(), 0o600));
    assert!(w.mock.is_live_refresh_token(read_json(&fa)["tokens"]["refresh_token"].as_str().unwrap()));
    assert_eq!(std::fs::read(hb.join("auth.json")).unwrap(), hb_before);
    assert_all_owned_by(ha, alice.uid.as_raw());
    assert_all_owned_by(hb, bob.uid.as_raw());
    for name in ["alice", "bob"] {
        let st = w.scratch.state_dir().join(format!("accounts/{name}/status.json"));
        assert_eq!((std::fs::metadata(&st).unwrap().uid(), mode(&st)), (0, 0o600));
        assert_eq!(read_json(&st)["runner_state"], "ok");
    }
    assert!(w.leftovers().is_empty(), "{:?}", w.leftovers());
    let mut all = secrets(&ca);
    all.extend(secrets(&cb));
    all.extend(tokens_in(ha));
    assert_clean(&r, w.scratch.path(), &all);
}
