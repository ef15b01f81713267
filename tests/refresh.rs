//! `codex-auth-agent refresh` end to end against the mock token endpoint, as the invoking
//! user (single-user mode and a configured account of our own user).

mod support;

use mock_openai::{Credentials, Fault, MockConfig, MockServer};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

fn mock() -> MockServer {
    MockServer::start(MockConfig::default())
}

/// A configured account owned by us with a short request timeout.
fn config_for(s: &Scratch, home: &std::path::Path, extra: &str) -> std::path::PathBuf {
    s.config(&format!(
        "[defaults]\nrequest_timeout = \"2s\"\n\n[accounts.me]\nuser = \"{}\"\ncodex_home = \"{}\"\n{extra}",
        me(),
        home.display()
    ))
}

#[test]
fn due_credential_is_refreshed_rotated_and_written_safely() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("acct-1");
    let home = s.codex_home("codex", Some(&auth_json(&c, OLD)));
    let r = run({
        let mut cmd = agent(&s, &m);
        cmd.args(["refresh", "--json", "--codex-home"]).arg(&home);
        cmd
    });
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line = r.one();
    assert_eq!(line["outcome"], "refreshed");
    assert_eq!(line["account"], "default");
    assert!(line["class"].is_null());
    assert_eq!(m.token_requests(), 1);
    let auth = read_json(&home.join("auth.json"));
    let new_rt = auth["tokens"]["refresh_token"].as_str().unwrap();
    assert_ne!(new_rt, c.refresh_token);
    assert!(m.is_live_refresh_token(new_rt), "the file holds the live token");
    assert!(!m.is_live_refresh_token(&c.refresh_token));
    assert_eq!(auth["x_unknown_top"]["keep"], true, "unknown top-level field kept");
    assert_eq!(auth["tokens"]["x_unknown_token_field"], "keep-me-too", "unknown token field kept");
    assert_eq!(auth["tokens"]["account_id"], "acct-1");
    assert_ne!(auth["last_refresh"], OLD);
    assert_eq!(mode(&home.join("auth.json")), 0o600);
    assert_eq!(line["token_fp"], codex_auth_agent::core::authfile::fingerprint(new_rt));
    // The sidecar and status file exist, are private, and hold no tokens.
    let sidecar = read_json(&home.join("auth_refresh_status.json"));
    assert_eq!(sidecar["watchdog_last_outcome"], "refreshed");
    assert!(sidecar["last_refresh_age_seconds"].as_i64().unwrap() < 60);
    assert_eq!(mode(&home.join("auth_refresh_status.json")), 0o600);
    let status = s.path().join("xdg-state/codex-auth-agent/accounts/default/status.json");
    assert_eq!(read_json(&status)["outcome"], "refreshed");
    assert_eq!(mode(&status), 0o600);
    let mut all = secrets(&c);
    all.push(new_rt.to_string());
    assert_clean(&r, s.path(), &all);
}

#[test]
fn fresh_credential_is_left_alone_and_force_refreshes_it() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("acct-1");
    let home = s.codex_home("codex", Some(&auth_json(&c, &recent())));
    let before = std::fs::read(home.join("auth.json")).unwrap();
    let mut cmd = agent(&s, &m);
    cmd.args(["refresh", "--json", "--codex-home"]).arg(&home);
    let r = run(cmd);
    assert_eq!((r.code, r.one()["outcome"].as_str().unwrap()), (0, "fresh"), "{}", r.stderr);
    assert_eq!(m.token_requests(), 0);
    assert_eq!(std::fs::read(home.join("auth.json")).unwrap(), before);
    let mut cmd = agent(&s, &m);
    cmd.args(["refresh", "--force", "--json", "--codex-home"]).arg(&home);
    let r = run(cmd);
    assert_eq!((r.code, r.one()["outcome"].as_str().unwrap()), (0, "refreshed"), "{}", r.stderr);
    assert_eq!(m.token_requests(), 1);
}

#[test]
fn inert_credentials_send_nothing() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("a");
    let cases = [
        r#"{"OPENAI_API_KEY":"sk-canary-key"}"#.to_string(),
        r#"{"auth_mode":"apikey","OPENAI_API_KEY":"sk-canary-key"}"#.to_string(),
        auth_json(&c, OLD).replace("\"chatgpt\"", "\"chatgptAuthTokens\""),
        serde_json::json!({"auth_mode":"chatgpt","tokens":{"id_token":c.id_token,"access_token":c.access_token}})
            .to_string(),
    ];
    for (i, text) in cases.iter().enumerate() {
        let home = s.codex_home(&format!("h{i}"), Some(text));
        let mut cmd = agent(&s, &m);
        cmd.args(["refresh", "--force", "--json", "--codex-home"]).arg(&home);
        let r = run(cmd);
        assert_eq!((r.code, r.one()["outcome"].as_str().unwrap()), (0, "inert"), "case {i}: {}", r.stderr);
        assert!(!r.stdout.contains("sk-canary-key") && !r.stderr.contains("sk-canary-key"));
    }
    assert_eq!(m.token_requests(), 0);
}

#[test]
fn keyring_store_is_inert() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("a");
    let home = s.codex_home("codex", Some(&auth_json(&c, OLD)));
    std::fs::write(home.join("config.toml"), "cli_auth_credentials_store = \"keyring\"\n").unwrap();
    let mut cmd = agent(&s, &m);
    cmd.args(["refresh", "--json", "--codex-home"]).arg(&home);
    let r = run(cmd);
    let line = r.one();
    assert_eq!(line["outcome"], "inert");
    assert!(line["reason"].as_str().unwrap().contains("cli_auth_credentials_store"));
    assert_eq!(m.token_requests(), 0);
}

#[test]
fn every_failure_class_leaves_auth_json_byte_identical() {
    let rows: Vec<(&str, Fault, i32)> = vec![
        ("expired", Fault::refresh_token_expired(), 3),
        ("reused", Fault::refresh_token_reused(), 3),
        ("invalidated", Fault::refresh_token_invalidated(), 3),
        ("reused on 403", Fault::refresh_token_reused().with_status(403), 3),
        ("expired string shape on 500", Fault::error_code_string(500, "refresh_token_expired"), 3),
        ("401 empty", Fault::unauthorized_empty(), 3),
        ("401 unknown code", Fault::unauthorized_unknown_code(), 3),
        ("400 invalid_grant", Fault::invalid_grant(), 3),
        ("400 other", Fault::bad_request_other(), 4),
        ("400 empty", Fault::bad_request_empty(), 4),
        ("403", Fault::forbidden_plain(), 4),
        ("429", Fault::too_many_requests(), 4),
        ("500", Fault::internal_server_error(), 4),
        ("502", Fault::bad_gateway(), 4),
        ("503", Fault::service_unavailable(), 4),
        ("200 non-JSON", Fault::ok_non_json(), 4),
        ("reset", Fault::Reset, 4),
        ("garbage", Fault::Garbage, 4),
        ("oversized", Fault::Oversized(2 * 1024 * 1024), 4),
        ("slowloris", Fault::Slowloris { byte_interval: Duration::from_millis(300) }, 4),
        ("timeout", Fault::Delay(Duration::from_secs(5)), 4),
        ("rotated then reset", Fault::RotateThenReset, 4),
    ];
    let (m, s) = (mock(), Scratch::new());
    for (i, (name, fault, code)) in rows.into_iter().enumerate() {
        let c = m.issue_family(&format!("acct-{i}"));
        let home = s.codex_home(&format!("h{i}"), Some(&auth_json(&c, OLD)));
        let before = std::fs::read(home.join("auth.json")).unwrap();
        let inode = ino(&home.join("auth.json"));
        let cfg = config_for(&s, &home, "");
        m.push_fault(fault);
        let mut cmd = agent(&s, &m);
        cmd.arg("--config").arg(&cfg).args(["refresh", "--account", "me", "--json"]);
        let r = run(cmd);
        assert_eq!(r.code, code, "{name}: {}\n{}", r.stdout, r.stderr);
        let line = r.one();
        assert_eq!(line["outcome"], "failed", "{name}");
        assert_eq!(line["class"], if code == 3 { "permanent" } else { "transient" }, "{name}");
        assert_eq!(std::fs::read(home.join("auth.json")).unwrap(), before, "{name}: file changed");
        assert_eq!(ino(&home.join("auth.json")), inode, "{name}: file replaced");
        let stray: Vec<_> = std::fs::read_dir(&home)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(stray.is_empty(), "{name}: temp files left");
        assert_clean(&r, s.path(), &secrets(&c));
    }
}

#[test]
fn a_response_carrying_only_some_tokens_keeps_the_others() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("a");
    let home = s.codex_home("codex", Some(&auth_json(&c, OLD)));
    let new_access = mock_openai::make_jwt(&serde_json::json!({"exp": 4_000_000_000u64}));
    m.push_fault(Fault::json(200, &serde_json::json!({"access_token": new_access})));
    let mut cmd = agent(&s, &m);
    cmd.args(["refresh", "--json", "--codex-home"]).arg(&home);
    let r = run(cmd);
    assert_eq!(r.one()["outcome"], "refreshed", "{}", r.stderr);
    let auth = read_json(&home.join("auth.json"));
    assert_eq!(auth["tokens"]["access_token"], new_access.as_str());
    assert_eq!(auth["tokens"]["refresh_token"], c.refresh_token.as_str());
    assert_eq!(auth["tokens"]["id_token"], c.id_token.as_str());
    assert_eq!(r.one()["expires_at"], "2096-10-02T07:06:40Z");
}

#[test]
fn two_concurrent_refreshes_send_exactly_one_token_request() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("a");
    let home = s.codex_home("codex", Some(&auth_json(&c, OLD)));
    // Slow the endpoint so the two runs overlap.
    m.set_latency(Duration::from_millis(700));
    let spawn = || {
        let mut cmd = agent(&s, &m);
        cmd.args(["refresh", "--json", "--codex-home"]).arg(&home);
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let outs: Vec<_> = [a, b].into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let mut outcomes: Vec<String> = outs
        .iter()
        .map(|o| {
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            v["outcome"].as_str().unwrap().to_string()
        })
        .collect();
    outcomes.sort();
    assert_eq!(outcomes, ["fresh", "refreshed"]);
    assert_eq!(m.token_requests(), 1);
    assert_eq!(m.reuse_detections(), 0);
    let rt = read_json(&home.join("auth.json"))["tokens"]["refresh_token"].as_str().unwrap().to_string();
    assert!(m.is_live_refresh_token(&rt));
}

/// Hold Codex's auth.lock from this process, as Codex does during its commit.
fn hold_codex_lock(home: &std::path::Path) -> nix::fcntl::Flock<std::fs::File> {
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(home.join("auth.lock")).unwrap();
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e).unwrap()
}

/// Start `refresh` in the background while this process holds Codex's auth.lock.
fn refresh_behind_codex_lock(
    s: &Scratch,
    m: &MockServer,
    home: &std::path::Path,
) -> (nix::fcntl::Flock<std::fs::File>, std::process::Child) {
    let lock = hold_codex_lock(home);
    let mut cmd = agent(s, m);
    cmd.args(["refresh", "--json", "--codex-home"]).arg(home);
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    (lock, cmd.spawn().unwrap())
}

#[test]
fn codex_lock_held_we_wait_then_adopt_the_file_codex_wrote() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("a");
    let home = s.codex_home("codex", Some(&auth_json(&c, OLD)));
    let (lock, child) = refresh_behind_codex_lock(&s, &m, &home);
    // The agent waits for auth.lock before its POST (the commit will need it).
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(m.token_requests(), 0, "no token request while Codex holds auth.lock");
    // "Codex" commits its own credential meanwhile.
    let codex_creds = m.issue_family("a-codex");
    let codex_file = auth_json(&codex_creds, &recent());
    std::fs::write(home.join("auth.json"), &codex_file).unwrap();
    drop(lock);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"], "fresh");
    assert!(v["reason"].as_str().unwrap().contains("changed during the refresh"));
    assert_eq!(std::fs::read_to_string(home.join("auth.json")).unwrap(), codex_file, "Codex's file was kept");
    assert_eq!(m.token_requests(), 0, "Codex's rotation made our token stale: never sent");
}

#[test]
fn codex_lock_held_briefly_we_wait_then_write() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("a");
    let home = s.codex_home("codex", Some(&auth_json(&c, OLD)));
    let (lock, child) = refresh_behind_codex_lock(&s, &m, &home);
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        std::fs::read_to_string(home.join("auth.json")).unwrap().contains(&c.refresh_token),
        "no write while Codex holds the lock"
    );
    drop(lock);
    let out = child.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"], "refreshed", "{}", String::from_utf8_lossy(&out.stderr));
    assert!(m.is_live_refresh_token(read_json(&home.join("auth.json"))["tokens"]["refresh_token"].as_str().unwrap()));
}

#[test]
fn unsafe_files_are_refused_before_the_token_is_spent() {
    let (m, s) = (mock(), Scratch::new());
    type Setup = Box<dyn Fn(&std::path::Path, &str)>;
    let cases: Vec<(&str, Setup)> = vec![
        (
            "symlinked auth.json",
            Box::new(|home, text| {
                let target =
                    home.parent().unwrap().join(format!("{}-target.json", home.file_name().unwrap().to_string_lossy()));
                std::fs::write(&target, text).unwrap();
                std::fs::remove_file(home.join("auth.json")).unwrap();
                std::os::unix::fs::symlink(&target, home.join("auth.json")).unwrap();
            }),
        ),
        (
            "hard-linked auth.json",
            Box::new(|home, _| {
                std::fs::hard_link(
                    home.join("auth.json"),
                    home.parent().unwrap().join(format!("{}-link", home.file_name().unwrap().to_string_lossy())),
                )
                .unwrap();
            }),
        ),
        (
            "world-writable CODEX_HOME",
            Box::new(|home, _| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o777)).unwrap();
            }),
        ),
        (
            "FIFO as auth.json",
            Box::new(|home, _| {
                std::fs::remove_file(home.join("auth.json")).unwrap();
                nix::unistd::mkfifo(&home.join("auth.json"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            }),
        ),
        (
            "huge auth.json",
            Box::new(|home, _| {
                std::fs::write(home.join("auth.json"), vec![b' '; 2 * 1024 * 1024]).unwrap();
            }),
        ),
    ];
    for (i, (name, setup)) in cases.into_iter().enumerate() {
        let c = m.issue_family(&format!("u{i}"));
        let text = auth_json(&c, OLD);
        let home = s.codex_home(&format!("h{i}"), Some(&text));
        setup(&home, &text);
        let mut cmd = agent(&s, &m);
        cmd.args(["refresh", "--force", "--json", "--codex-home"]).arg(&home);
        let r = run(cmd);
        assert_eq!(r.code, 5, "{name}: {}\n{}", r.stdout, r.stderr);
        let line = r.one();
        assert_eq!(line["class"], "unsafe", "{name}");
        assert!(line["reason"].as_str().unwrap().contains("fix:"), "{name}: reason says how to fix");
        assert_eq!(m.token_requests(), 0, "{name}: a token was spent");
        assert!(m.is_live_refresh_token(&c.refresh_token));
        // (The symlink target and the extra hard link beside the home hold tokens by design.)
        assert_clean(&r, &home, &secrets(&c));
        assert_clean(&r, &s.path().join("xdg-state"), &secrets(&c));
    }
    // The symlink target was never written.
    let target = s.path().join("h0-target.json");
    assert!(std::fs::read_to_string(target).unwrap().contains("CANARY-rt_"));
}

#[test]
fn symlinked_codex_home_is_refused() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("a");
    let real = s.codex_home("real", Some(&auth_json(&c, OLD)));
    let link = s.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let mut cmd = agent(&s, &m);
    cmd.args(["refresh", "--json", "--codex-home"]).arg(&link);
    let r = run(cmd);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.one()["reason"].as_str().unwrap().contains("symlink"));
    assert_eq!(m.token_requests(), 0);
}

#[test]
fn invalid_or_missing_auth_json_is_permanent_and_names_the_field() {
    let (m, s) = (mock(), Scratch::new());
    let home =
        s.codex_home("bad", Some(r#"{"tokens":{"id_token":"CANARY-rt_not_a_jwt","refresh_token":"CANARY-rt_x"}}"#));
    let mut cmd = agent(&s, &m);
    cmd.args(["refresh", "--json", "--codex-home"]).arg(&home);
    let r = run(cmd);
    assert_eq!(r.code, 3, "{}", r.stderr);
    let reason = r.one()["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("tokens.id_token") && reason.contains("auth.json") && reason.contains("codex login"),
        "{reason}"
    );
    assert_clean(&r, &home, &[]);
    let empty = s.codex_home("empty", None);
    let mut cmd = agent(&s, &m);
    cmd.args(["refresh", "--json", "--codex-home"]).arg(&empty);
    let r = run(cmd);
    assert_eq!(r.code, 3);
    assert!(r.one()["reason"].as_str().unwrap().contains("missing"));
    let mut cmd = agent(&s, &m);
    cmd.args(["refresh", "--json", "--codex-home"]).arg(s.path().join("nope"));
    assert_eq!(run(cmd).code, 3);
    assert_eq!(m.token_requests(), 0);
}

#[test]
fn dry_run_sends_and_writes_nothing() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("a");
    let home = s.codex_home("codex", Some(&auth_json(&c, OLD)));
    let before = std::fs::read(home.join("auth.json")).unwrap();
    let mut cmd = agent(&s, &m);
    cmd.args(["refresh", "--dry-run", "--json", "--codex-home"]).arg(&home);
    let r = run(cmd);
    assert_eq!(r.code, 0);
    let line = r.one();
    assert_eq!(line["outcome"], "would_refresh");
    assert!(line["reason"].as_str().unwrap().contains("older than max_age"));
    assert_eq!(m.token_requests(), 0);
    assert_eq!(std::fs::read(home.join("auth.json")).unwrap(), before);
    assert!(!home.join("auth_refresh_status.json").exists());
}

/// `refresh --account me --json` with `cfg`.
fn refresh_me(s: &Scratch, m: &MockServer, cfg: &Path) -> Run {
    let mut cmd = agent(s, m);
    cmd.arg("--config").arg(cfg).args(["refresh", "--account", "me", "--json"]);
    run(cmd)
}

/// An old seed of a new login at me's default seed path (beside the config): the first
/// run installs it, then refreshes it. Returns the config and the rotated refresh token.
fn seeded_and_refreshed(s: &Scratch, m: &MockServer, home: &Path) -> (PathBuf, Credentials, String) {
    let first = m.issue_family("acct");
    s.seed("me", &auth_json(&first, OLD));
    let cfg = config_for(s, home, "");
    let r = refresh_me(s, m, &cfg);
    assert_eq!((r.code, r.one()["outcome"].as_str().unwrap()), (0, "refreshed"), "{}", r.stderr);
    assert!(r.stderr.contains("seeded"), "{}", r.stderr);
    let rotated = read_json(&home.join("auth.json"))["tokens"]["refresh_token"].as_str().unwrap().to_string();
    assert!(m.is_live_refresh_token(&rotated));
    (cfg, first, rotated)
}

#[test]
fn seeds_install_once_and_a_new_seed_replaces() {
    let (m, s) = (mock(), Scratch::new());
    let home = s.codex_home("codex", None);
    let (cfg, first, _) = seeded_and_refreshed(&s, &m, &home);
    let refresh = || refresh_me(&s, &m, &cfg);
    // The same seed is never applied again over the rotated credential.
    let r = run({
        let mut cmd = agent(&s, &m);
        cmd.arg("--config").arg(&cfg).args(["refresh", "--account", "me", "--json", "--force"]);
        cmd
    });
    assert_eq!(r.one()["outcome"], "refreshed");
    assert!(!r.stderr.contains("seeded"));
    assert_eq!(m.reuse_detections(), 0);
    // Deleting auth.json does not resurrect the spent seed.
    std::fs::remove_file(home.join("auth.json")).unwrap();
    let r = refresh();
    assert_eq!(r.code, 3);
    assert!(r.one()["reason"].as_str().unwrap().contains("already applied"));
    // A new seed (an operator's re-login) replaces whatever is there.
    let second = m.issue_family("acct");
    s.seed("me", &auth_json(&second, &recent()));
    let r = refresh();
    assert_eq!((r.code, r.one()["outcome"].as_str().unwrap()), (0, "fresh"), "{}", r.stderr);
    assert_eq!(read_json(&home.join("auth.json"))["tokens"]["refresh_token"], second.refresh_token.as_str());
    let mut all = secrets(&first);
    all.extend(secrets(&second));
    assert_clean(&r, &s.state_dir(), &all);
}

/// status.json is replaced without fsync after most runs: a power cut can leave it older or,
/// on a file system that orders nothing, empty. The applied seed's hash is also kept on its
/// own, durably, so the seed — whose refresh token our first refresh spent — is not applied
/// again over the rotated login (which would send the spent token and revoke the family).
#[test]
fn an_applied_seed_stays_applied_when_status_json_is_lost() {
    let (m, s) = (mock(), Scratch::new());
    let home = s.codex_home("codex", None);
    let (cfg, _, rotated) = seeded_and_refreshed(&s, &m, &home);
    let status = s.state_dir().join("accounts/me/status.json");
    for lost in [&b""[..], b"{\"account\":\"me\",\"outc"] {
        std::fs::write(&status, lost).unwrap();
        let r = refresh_me(&s, &m, &cfg);
        assert_eq!((r.code, r.one()["outcome"].as_str().unwrap()), (0, "fresh"), "{}", r.stderr);
        assert!(!r.stderr.contains("seeded"), "the spent seed was applied again: {}", r.stderr);
        assert_eq!(read_json(&home.join("auth.json"))["tokens"]["refresh_token"], rotated.as_str());
        assert_eq!((m.token_requests(), m.reuse_detections()), (1, 0));
    }
    assert!(m.is_live_refresh_token(&rotated));
}

#[test]
fn check_config_prints_or_names_the_bad_key() {
    let (m, s) = (mock(), Scratch::new());
    let home = s.codex_home("codex", None);
    let cfg = config_for(&s, &home, "");
    let mut cmd = agent(&s, &m);
    cmd.arg("--config").arg(&cfg).arg("check-config");
    let r = run(cmd);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("[accounts.me]") && r.stdout.contains("request_timeout = \"2s\""), "{}", r.stdout);
    std::fs::write(s.path().join("etc/config.d-missing"), "").unwrap();
    std::fs::create_dir_all(s.path().join("etc/config.d")).unwrap();
    std::fs::write(s.path().join("etc/config.d/90-bad.toml"), "[defaults]\nmax_age = \"forever\"\n").unwrap();
    let mut cmd = agent(&s, &m);
    cmd.arg("--config").arg(&cfg).arg("check-config");
    let r = run(cmd);
    assert_eq!(r.code, 78);
    assert!(r.stderr.contains("90-bad.toml") && r.stderr.contains("defaults.max_age"), "{}", r.stderr);
    // refresh with a broken config is a config error too.
    let mut cmd = agent(&s, &m);
    cmd.arg("--config").arg(&cfg).args(["refresh", "--all"]);
    assert_eq!(run(cmd).code, 78);
}

/// A relative `--config` is taken against the current directory once: config.d/ and the
/// default seed path come out absolute, not relative to whatever directory a worker has.
#[test]
fn a_relative_config_path_gives_absolute_derived_paths() {
    let (m, s) = (mock(), Scratch::new());
    let home = s.codex_home("codex", None);
    config_for(&s, &home, "");
    std::fs::create_dir_all(s.path().join("etc/config.d")).unwrap();
    std::fs::write(s.path().join("etc/config.d/50-x.toml"), "[defaults]\nmax_age = \"3d\"\n").unwrap();
    let mut cmd = agent(&s, &m);
    cmd.current_dir(s.path()).args(["--config", "etc/config.toml", "check-config"]);
    let r = run(cmd);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let seed = s.path().join("etc/seeds/me.json");
    assert!(r.stdout.contains(&format!("seed = \"{}\"", seed.display())), "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!("# read: {}", s.path().join("etc/config.d/50-x.toml").display())),
        "{}",
        r.stdout
    );
}

/// On a terminal (stdout and stderr both a pty, through script(1)) each outcome is printed
/// once: the command's own line, not also the log entry on stderr.
#[test]
fn on_a_terminal_each_outcome_is_printed_once() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("acct");
    let home = s.codex_home("codex", Some(&auth_json(&c, OLD)));
    let cfg = config_for(&s, &home, "");
    // The agent's own clean environment (logs to stderr), run inside script's pty.
    let a = agent(&s, &m);
    let mut script = std::process::Command::new("script");
    script.env_clear().envs(a.get_envs().filter_map(|(k, v)| Some((k, v?))));
    script.args(["-qec", &format!("{BIN} --config {} refresh --all", cfg.display()), "/dev/null"]);
    let r = run(script);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let n = r.stdout.lines().filter(|l| l.contains("me: refreshed")).count();
    assert_eq!(n, 1, "printed {n} times:\n{}", r.stdout);
}

#[test]
fn usage_errors_exit_2() {
    let (m, s) = (mock(), Scratch::new());
    let home = s.codex_home("codex", None);
    let cfg = config_for(&s, &home, "");
    for args in [vec!["refresh"], vec!["refresh", "--all", "--account", "me"], vec!["bogus"]] {
        let mut cmd = agent(&s, &m);
        cmd.arg("--config").arg(&cfg).args(&args);
        assert_eq!(run(cmd).code, 2, "{args:?}");
    }
    let mut cmd = agent(&s, &m);
    cmd.arg("--config").arg(&cfg).args(["refresh", "--account", "nobody"]);
    let r = run(cmd);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("configured: me"), "{}", r.stderr);
}

/// `refresh --json --codex-home HOME`.
fn refresh_home(s: &Scratch, m: &MockServer, home: &std::path::Path) -> Run {
    let mut cmd = agent(s, m);
    cmd.args(["refresh", "--json", "--codex-home"]).arg(home);
    run(cmd)
}

#[test]
fn a_file_codex_is_rewriting_in_place_is_read_again_and_a_torn_one_is_only_transient() {
    // Codex 0.130 rewrites auth.json in place: open(O_TRUNC), then write (docs/CODEX-COMPAT.md).
    // A read in between sees an empty or half-written file — not a broken login.
    use std::io::Write;
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("acct-torn");
    let good = auth_json(&c, OLD);
    let home = s.codex_home("torn", Some(&good));
    let f = home.join("auth.json");

    // Mid-write: truncated and half written now, the rest 150 ms later, in place like 0.130.
    let inode = ino(&f);
    let mut w = std::fs::OpenOptions::new().write(true).truncate(true).open(&f).unwrap();
    w.write_all(&good.as_bytes()[..good.len() / 2]).unwrap();
    assert_eq!(ino(&f), inode, "the same file, rewritten in place");
    let rest = good.as_bytes()[good.len() / 2..].to_vec();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        w.write_all(&rest).unwrap();
    });
    let r = refresh_home(&s, &m, &home);
    writer.join().unwrap();
    assert_eq!(r.code, 0, "the finished file was refreshed: {}\n{}", r.stdout, r.stderr);
    assert_eq!(r.one()["outcome"], "refreshed");
    assert_eq!((m.successful_refreshes(), m.reuse_detections()), (1, 0));

    // A file that stays empty or cut off: transient, nothing sent, the file left alone.
    let now = read_json(&f).to_string();
    for (what, text, says) in
        [("empty", String::new(), "is empty"), ("cut off", now[..now.len() / 3].into(), "ends mid-way")]
    {
        std::fs::write(&f, &text).unwrap();
        let before = m.token_requests();
        let r = refresh_home(&s, &m, &home);
        assert_eq!(r.code, 4, "{what}: {}\n{}", r.stdout, r.stderr);
        let line = r.one();
        assert_eq!((line["outcome"].as_str(), line["class"].as_str()), (Some("failed"), Some("transient")), "{what}");
        let reason = line["reason"].as_str().unwrap();
        for part in [says, "on every read for 450 ms", "may be Codex writing it", "will retry"] {
            assert!(reason.contains(part), "{what}: {part}: {reason}");
        }
        assert!(!reason.contains("invalid auth.json"), "{what}: {reason}");
        assert_eq!(m.token_requests(), before, "{what}: no token request");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), text, "{what}: untouched");
        assert_clean(&r, s.path(), &secrets(&c));
    }
}

#[test]
fn every_other_auth_mode_is_inert_naming_what_manages_it_and_auto_with_a_file_is_ours() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("acct-modes");
    // What each mode's reason says about its manager is unit-tested (core::policy).
    let modes = ["chatgptAuthTokens", "agentIdentity", "personalAccessToken", "headers", "bedrockApiKey"];
    for mode in modes.into_iter().chain(["bedrockAccessKeys", "apikey"]) {
        let mut doc = read_json_str(&auth_json(&c, OLD));
        doc["auth_mode"] = mode.into();
        let home = s.codex_home(mode, Some(&doc.to_string()));
        let line = refresh_home(&s, &m, &home).one();
        assert_eq!(line["outcome"], "inert", "{mode}");
        let reason = line["reason"].as_str().unwrap();
        assert!(reason.contains(&format!("auth_mode {mode}")), "{mode}: {reason}");
        if mode != "apikey" {
            assert!(reason.contains("only ChatGPT logins"), "{mode}: {reason}");
        }
    }
    for (store, file, outcome) in [("ephemeral", true, "inert"), ("auto", false, "inert"), ("auto", true, "refreshed")]
    {
        let home = s.codex_home(&format!("{store}-{file}"), file.then(|| auth_json(&c, OLD)).as_deref());
        std::fs::write(home.join("config.toml"), format!("cli_auth_credentials_store = \"{store}\"\n")).unwrap();
        let line = refresh_home(&s, &m, &home).one();
        assert_eq!(line["outcome"], outcome, "{store}, file {file}: {line}");
        if outcome == "inert" {
            assert!(line["reason"].as_str().unwrap().contains("cli_auth_credentials_store"), "{line}");
        }
    }
    assert_eq!(m.token_requests(), 1, "only the auto store with a file was refreshed");
}

fn read_json_str(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

/// build.rs takes the unwinder from libgcc_eh: neither executable loads libgcc_s at start
/// (loading it and its constructor's `cpuid` were ≈ 7 % of a fresh check on a VM; that the
/// executables still work is every other test here).
#[test]
fn the_executables_start_without_libgcc_s() {
    for bin in [BIN, env!("CARGO_BIN_EXE_codex-authctl")] {
        let out =
            std::process::Command::new("readelf").args(["-d", "--wide", bin]).output().expect("readelf (binutils)");
        let dynamic = String::from_utf8_lossy(&out.stdout);
        let needed: Vec<&str> = dynamic.lines().filter(|l| l.contains("(NEEDED)")).collect();
        assert!(needed.iter().any(|l| l.contains("libc.so.6")), "{bin}: readelf found no NEEDED libc:\n{dynamic}");
        assert!(!needed.iter().any(|l| l.contains("libgcc_s")), "{bin} needs libgcc_s:\n{}", needed.join("\n"));
    }
}
