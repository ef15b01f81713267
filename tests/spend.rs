//! "Never spend a refresh token that cannot be saved": everything the commit needs is
//! checked before the POST (lock files, auth.lock, room on disk), a credential received
//! but not written is kept and written by the next run (never the old token again), and
//! a token the endpoint called dead is not sent again on every run. Each test reproduces
//! a failure observed on the first version; the mock's single-use rule must never report
//! a reuse.

mod support;

use mock_openai::{Fault, MockConfig, MockServer};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

fn mock() -> MockServer {
    MockServer::start(MockConfig::default())
}

fn refresh(s: &Scratch, m: &MockServer, home: &Path, extra: &[&str]) -> Run {
    let mut c = agent(s, m);
    c.args(["refresh", "--json", "--codex-home"]).arg(home).args(extra);
    run(c)
}

/// A config with one account `name` of `user` at `home`.
fn account_config(s: &Scratch, name: &str, user: &str, home: &Path) -> PathBuf {
    s.config(&format!("[accounts.{name}]\nuser = \"{user}\"\ncodex_home = \"{}\"\n", home.display()))
}

/// `refresh --account NAME --json` with `cfg`, the fault hook armed at `fault` if given.
fn refresh_account(s: &Scratch, m: &MockServer, cfg: &Path, name: &str, fault: Option<&str>) -> Run {
    let mut cmd = agent(s, m);
    cmd.arg("--config").arg(cfg).args(["refresh", "--json", "--account", name]);
    if let Some(f) = fault {
        cmd.env("CODEX_AUTH_AGENT_FAULT", f);
    }
    run(cmd)
}

/// `refresh --codex-home HOME` aborted by the fault hook at `fault`.
fn killed_at(s: &Scratch, m: &MockServer, home: &Path, fault: &str) {
    let mut cmd = agent(s, m);
    cmd.env("CODEX_AUTH_AGENT_FAULT", fault).args(["refresh", "--codex-home"]).arg(home);
    let st = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
    assert!(!st.success(), "the fault hook aborts the run");
}

/// Single-user mode keeps its state under XDG_STATE_HOME (see `support::agent`).
fn pending_file(s: &Scratch) -> PathBuf {
    s.path().join("xdg-state/codex-auth-agent/accounts/default/pending.json")
}

fn disk_token(home: &Path) -> String {
    read_json(&home.join("auth.json"))["tokens"]["refresh_token"].as_str().unwrap().to_string()
}

fn wait_in_post(m: &MockServer) {
    let t0 = Instant::now();
    while m.token_requests() == 0 {
        assert!(t0.elapsed() < Duration::from_secs(20), "the agent never called the token endpoint");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn lock_files_that_are_not_lock_files_are_refused_before_the_post() {
    for lock in ["auth.lock", "auth.json.lock"] {
        for kind in ["directory", "symlink", "fifo"] {
            let (m, s) = (mock(), Scratch::new());
            let c = m.issue_family("a");
            let home = s.codex_home("codex", Some(&auth_json(&c, OLD)));
            let p = home.join(lock);
            match kind {
                "directory" => std::fs::create_dir(&p).unwrap(),
                "symlink" => std::os::unix::fs::symlink(s.path().join("elsewhere"), &p).unwrap(),
                _ => nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap(),
            }
            let r = refresh(&s, &m, &home, &[]);
            let ctx = format!("{lock} as a {kind}: {} {}", r.stdout, r.stderr);
            assert_eq!(r.code, 5, "{ctx}");
            let reason = r.one()["reason"].as_str().unwrap().to_string();
            assert!(reason.contains(lock) && reason.contains("no token request was sent"), "{ctx}");
            assert_eq!(m.token_requests(), 0, "{ctx}");
            assert_eq!(disk_token(&home), c.refresh_token, "{ctx}");
            assert!(m.is_live_refresh_token(&c.refresh_token), "{ctx}");
        }
    }
}

#[test]
fn a_held_auth_lock_means_no_post_and_the_token_stays_live() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("a");
    let home = s.codex_home("codex", Some(&auth_json(&c, OLD)));
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(home.join("auth.lock")).unwrap();
    let held = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e).unwrap();
    // Held for longer than the agent waits for it (a minute, Codex's commit is short).
    let r = refresh(&s, &m, &home, &[]);
    assert_eq!(r.code, 4, "{} {}", r.stdout, r.stderr);
    let reason = r.one()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("held by another process") && reason.contains("no token request was sent"), "{reason}");
    assert_eq!(m.token_requests(), 0);
    drop(held);
    let r = refresh(&s, &m, &home, &[]);
    assert_eq!((r.code, r.one()["outcome"].as_str()), (0, Some("refreshed")), "{}", r.stderr);
    assert!(m.is_live_refresh_token(&disk_token(&home)));
    assert_eq!(m.reuse_detections(), 0);
}

#[test]
fn a_full_disk_is_found_before_the_post_and_the_login_survives_it() {
    if !require_root("a_full_disk_is_found_before_the_post_and_the_login_survives_it") {
        return;
    }
    let (m, s) = (mock(), Scratch::new());
    let mnt = s.path().join("tiny");
    std::fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", "size=16k,mode=0700", "tmpfs"]).arg(&mnt).status();
    assert!(st.is_ok_and(|s| s.success()), "root cannot mount a tmpfs here");
    let _guard = TinyFs(mnt.clone());
    let home = mnt.join("codex");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let c = m.issue_family("enospc");
    std::fs::write(home.join("auth.json"), auth_json(&c, OLD)).unwrap();
    std::fs::set_permissions(home.join("auth.json"), std::fs::Permissions::from_mode(0o600)).unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(mnt.join("filler")).unwrap();
        while f.write_all(&[0u8; 512]).is_ok() {}
    }
    let before = std::fs::read(home.join("auth.json")).unwrap();
    // Every run while the disk is full: refused before the POST, nothing changed.
    for attempt in 0..3 {
        let r = refresh(&s, &m, &home, &[]);
        assert_eq!(r.code, 4, "attempt {attempt}: {} {}", r.stdout, r.stderr);
        let reason = r.one()["reason"].as_str().unwrap().to_string();
        assert!(reason.contains("No space left on device") && reason.contains("no token request was sent"), "{reason}");
        assert_eq!(std::fs::read(home.join("auth.json")).unwrap(), before, "auth.json byte-identical");
        assert!(
            !std::fs::read_dir(&home).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains(".tmp-caa-"))
        );
    }
    assert_eq!(m.token_requests(), 0, "no token was spent while the result could not be saved");
    std::fs::remove_file(mnt.join("filler")).unwrap();
    let r = refresh(&s, &m, &home, &[]);
    assert_eq!((r.code, r.one()["outcome"].as_str()), (0, Some("refreshed")), "{}", r.stderr);
    assert!(m.is_live_refresh_token(&disk_token(&home)));
    assert_eq!((m.token_requests(), m.reuse_detections()), (1, 0));
}

/// A new seed is installed and, being old, refreshed in the same run. Killed right after
/// the POST, that run never recorded the seed as applied: the next run wrote the kept
/// credential, and the one after installed the seed again — its refresh token spent — and
/// sent it: `refresh_token_reused`, login revoked. The seed is now marked applied before
/// its token is spent.
#[test]
fn a_seed_whose_token_was_spent_by_a_killed_run_is_not_installed_again() {
    let (m, s) = (mock(), Scratch::new());
    let home = s.codex_home("codex", None);
    let c = m.issue_family("sd");
    s.seed("me", &auth_json(&c, OLD));
    let cfg = account_config(&s, "me", &me(), &home);
    let refresh = |fault: Option<&str>| refresh_account(&s, &m, &cfg, "me", fault);
    let r = refresh(Some("after_post"));
    assert_ne!(r.code, 0, "the fault hook aborts the run: {}", r.stderr);
    assert!(!m.is_live_refresh_token(&c.refresh_token), "the POST spent the seed's token");
    let r = refresh(None);
    assert_eq!((r.code, r.one()["outcome"].as_str()), (0, Some("refreshed")), "{}", r.stderr);
    assert!(r.one()["reason"].as_str().unwrap().contains("could not save"), "{}", r.stdout);
    let live = disk_token(&home);
    assert!(m.is_live_refresh_token(&live));
    for _ in 0..2 {
        let r = refresh(None);
        assert_eq!((r.code, r.one()["outcome"].as_str()), (0, Some("fresh")), "{}", r.stderr);
        assert!(!r.stderr.contains("seeded"), "the spent seed was installed again: {}", r.stderr);
    }
    assert_eq!(disk_token(&home), live);
    assert_eq!((m.token_requests(), m.reuse_detections()), (1, 0));
}

/// The kept copy outlives its write when the run is killed after auth.json's rename (or a
/// power cut brings back its removal, which is not fsynced): the next run finds auth.json
/// already holding it, drops the copy and says so ("fresh"); it does not claim to have
/// written a credential an earlier run "could not save", and sends nothing.
#[test]
fn a_kept_copy_that_auth_json_already_holds_is_dropped_and_the_run_goes_on() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("w");
    let home = s.codex_home("codex", Some(&auth_json(&c, OLD)));
    killed_at(&s, &m, &home, "after_rename");
    let live = m.current_refresh_token("w").expect("the family's live token");
    assert_eq!(disk_token(&home), live, "auth.json was renamed into place before the kill");
    assert!(pending_file(&s).exists(), "the kill came before the copy was dropped");
    let r = refresh(&s, &m, &home, &[]);
    let j = r.one();
    assert_eq!((r.code, j["outcome"].as_str()), (0, Some("fresh")), "{j} {}", r.stderr);
    assert!(j["reason"].as_str().unwrap().contains("already holds"), "{j}");
    assert!(!pending_file(&s).exists(), "the copy auth.json already holds is dropped");
    assert_eq!(disk_token(&home), live);
    assert_eq!((m.token_requests(), m.reuse_detections()), (1, 0));
    // And the login goes on living.
    let r = refresh(&s, &m, &home, &["--force"]);
    assert_eq!((r.code, r.one()["outcome"].as_str()), (0, Some("refreshed")), "{}", r.stderr);
    assert!(m.is_live_refresh_token(&disk_token(&home)));
    assert_eq!(m.reuse_detections(), 0);
}

#[test]
fn killed_between_post_and_commit_the_next_run_writes_the_kept_credential() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("k");
    let home = s.codex_home("codex", Some(&auth_json(&c, OLD)));
    killed_at(&s, &m, &home, "after_post");
    // The POST rotated the token; the old one on disk is dead, the new one is kept.
    assert_eq!(disk_token(&home), c.refresh_token);
    assert!(!m.is_live_refresh_token(&c.refresh_token));
    let live = m.current_refresh_token("k").expect("the family's live token");
    assert_eq!(mode(&pending_file(&s)) & 0o777, 0o600);
    let kept = std::fs::read_to_string(pending_file(&s)).unwrap();
    assert!(!kept.contains(&live), "the kept copy is base64, not a greppable token");
    // The next run, without --force, writes it and sends nothing.
    let r = refresh(&s, &m, &home, &[]);
    let j = r.one();
    assert_eq!((r.code, j["outcome"].as_str()), (0, Some("refreshed")), "{}", r.stderr);
    assert!(j["reason"].as_str().unwrap().contains("could not save"), "{j}");
    assert_eq!(disk_token(&home), live);
    assert_eq!((m.token_requests(), m.reuse_detections()), (1, 0));
    assert!(!pending_file(&s).exists(), "the kept copy is removed once auth.json holds it");
    // And the login goes on living.
    let r = refresh(&s, &m, &home, &["--force"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(m.is_live_refresh_token(&disk_token(&home)));
    assert_eq!(m.reuse_detections(), 0);
}

#[test]
fn a_commit_that_fails_after_the_post_is_finished_by_the_next_run() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("f");
    let home = s.codex_home("codex", Some(&auth_json(&c, OLD)));
    m.push_fault(Fault::Delay(Duration::from_millis(800)));
    let mut cmd = agent(&s, &m);
    cmd.args(["refresh", "--json", "--codex-home"]).arg(&home).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    wait_in_post(&m);
    // While the POST is in flight, the lock the commit needs turns into a directory.
    let _ = std::fs::remove_file(home.join("auth.lock"));
    std::fs::create_dir(home.join("auth.lock")).unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(5), "{stdout} {stderr}");
    let j: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let reason = j["reason"].as_str().unwrap();
    for says in ["auth.lock", "could not be written", "kept in", "not sent again", "do not log in again"] {
        assert!(reason.contains(says), "the reason says {says:?}: {reason}");
    }
    let live = m.current_refresh_token("f").unwrap();
    assert_no_secrets(&[("stdout", &stdout), ("stderr", &stderr)], std::slice::from_ref(&live));
    for (name, body) in non_credential_files(&s.path().join("xdg-state")) {
        if !name.ends_with("pending.json") {
            assert_no_secrets(&[(&name, &body)], std::slice::from_ref(&live));
        }
    }
    // While it is not fixed: refused again, still no second POST.
    let r = refresh(&s, &m, &home, &["--force"]);
    assert_eq!(r.code, 5, "{}", r.stdout);
    assert!(r.one()["reason"].as_str().unwrap().contains("not yet written"), "{}", r.stdout);
    assert_eq!(m.token_requests(), 1);
    std::fs::remove_dir(home.join("auth.lock")).unwrap();
    let r = refresh(&s, &m, &home, &[]);
    assert_eq!((r.code, r.one()["outcome"].as_str()), (0, Some("refreshed")), "{}", r.stderr);
    assert_eq!(disk_token(&home), live);
    assert_eq!((m.token_requests(), m.reuse_detections()), (1, 0));
    assert!(!pending_file(&s).exists());
}

#[test]
fn a_newer_login_replaces_a_kept_credential_instead_of_being_overwritten() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("n");
    let home = s.codex_home("codex", Some(&auth_json(&c, OLD)));
    let mut cmd = agent(&s, &m);
    cmd.env("CODEX_AUTH_AGENT_FAULT", "after_post").args(["refresh", "--codex-home"]).arg(&home);
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
    assert!(pending_file(&s).exists());
    // A human logs in again before the next run.
    let fresh = m.issue_family("n2");
    std::fs::write(home.join("auth.json"), auth_json(&fresh, &recent())).unwrap();
    let r = refresh(&s, &m, &home, &[]);
    assert_eq!((r.code, r.one()["outcome"].as_str()), (0, Some("fresh")), "{}", r.stderr);
    assert_eq!(disk_token(&home), fresh.refresh_token, "the new login stays");
    assert!(!pending_file(&s).exists(), "the superseded copy is dropped");
    assert_eq!(m.reuse_detections(), 0);
}

#[test]
fn the_one_shot_cli_does_not_resend_a_dead_token_on_every_run() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("q");
    let home = s.codex_home("codex", Some(&auth_json(&c, OLD)));
    m.set_sticky_fault(Some(Fault::refresh_token_reused()));
    let r = refresh(&s, &m, &home, &[]);
    assert_eq!(r.code, 3, "{}", r.stdout);
    for _ in 0..5 {
        let r = refresh(&s, &m, &home, &[]);
        assert_eq!(r.code, 3, "{}", r.stdout);
        assert!(r.one()["reason"].as_str().unwrap().contains("not sent again"), "{}", r.stdout);
    }
    assert_eq!(m.token_requests(), 1, "one request for a dead token, not one per run");
    // --force tries anyway; a new auth.json is a new login and is refreshed.
    assert_eq!(refresh(&s, &m, &home, &["--force"]).code, 3);
    assert_eq!(m.token_requests(), 2);
    m.set_sticky_fault(None);
    let fresh = m.issue_family("q2");
    std::fs::write(home.join("auth.json"), auth_json(&fresh, OLD)).unwrap();
    let r = refresh(&s, &m, &home, &[]);
    assert_eq!((r.code, r.one()["outcome"].as_str()), (0, Some("refreshed")), "{}", r.stdout);
    assert_eq!(m.token_requests(), 3);
}

#[test]
fn as_root_the_worker_hands_the_new_credential_to_root_state_before_its_commit() {
    if !require_root("as_root_the_worker_hands_the_new_credential_to_root_state_before_its_commit") {
        return;
    }
    let alice = ensure_user("caa-alice");
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("alice-acct");
    let home = home_for(&s, &alice, Some(&auth_json(&c, OLD)));
    let cfg = account_config(&s, "alice", &alice.name, &home);
    let refresh = |fault: Option<&str>| refresh_account(&s, &m, &cfg, "alice", fault);
    // The worker (alice) dies between the POST and the commit; root kept the copy.
    let r = refresh(Some("after_post"));
    assert_eq!(r.code, 4, "the parent reports the dead worker as transient: {} {}", r.stdout, r.stderr);
    let pending = s.state_dir().join("accounts/alice/pending.json");
    let md = std::fs::metadata(&pending).unwrap();
    assert_eq!((md.permissions().mode() & 0o777, std::os::unix::fs::MetadataExt::uid(&md)), (0o600, 0));
    assert_all_owned_by(&home, alice.uid.as_raw());
    let live = m.current_refresh_token("alice-acct").unwrap();
    assert_no_secrets(&[("stdout", &r.stdout), ("stderr", &r.stderr)], std::slice::from_ref(&live));
    let r = refresh(None);
    assert_eq!((r.code, r.one()["outcome"].as_str()), (0, Some("refreshed")), "{}", r.stderr);
    assert_eq!(disk_token(&home), live);
    assert_all_owned_by(&home, alice.uid.as_raw());
    assert_eq!((m.token_requests(), m.reuse_detections()), (1, 0));
    assert!(!pending.exists());
}

/// A worker kept for its user's next account can die while it waits (its user may kill
/// it; here the fault hook ends every worker right after its report): each next account
/// goes to a new worker, is refreshed once, and no token is sent twice.
#[test]
fn a_kept_worker_that_died_while_it_waited_hands_the_next_account_to_a_new_one() {
    if !require_root("a_kept_worker_that_died_while_it_waited_hands_the_next_account_to_a_new_one") {
        return;
    }
    let (m, s, alice) = (mock(), Scratch::new(), ensure_user("caa-alice"));
    let mut body = String::from("max_parallel = 1\n");
    let mut homes = Vec::new();
    for name in ["a1", "a2", "a3"] {
        let c = m.issue_family(name);
        let home = home_at(&s, &alice, name, Some(&auth_json(&c, OLD)));
        body.push_str(&format!(
            "\n[accounts.{name}]\nuser = \"{}\"\ncodex_home = \"{}\"\n",
            alice.name,
            home.display()
        ));
        homes.push((home, c));
    }
    let cfg = s.config(&body);
    let mut cmd = agent(&s, &m);
    cmd.env("CODEX_AUTH_AGENT_FAULT", "after_report").arg("--config").arg(&cfg).args(["refresh", "--all", "--json"]);
    let r = run(cmd);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.json().iter().all(|l| l["outcome"] == "refreshed"), "{}", r.stdout);
    assert_eq!(m.token_requests(), 3);
    assert_eq!(m.reuse_detections(), 0);
    for (home, c) in &homes {
        let rt = disk_token(home);
        assert!(rt != c.refresh_token && m.is_live_refresh_token(&rt));
    }
}
