//! The daemon on a private dbus-daemon with the mock token endpoint: properties match the
//! files, PropertiesChanged, single-flight, backoff, quarantine, reload, Store/Seed,
//! access control from the caller's credentials, sd-notify, SIGTERM, and no token value
//! in any property, status file or log line.

mod support;

use codex_auth_agent::api::names::{BUS_NAME, account_path};
use futures_util::StreamExt;
use mock_openai::{Fault, MockConfig, MockServer};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::dbus::*;
use support::*;
use zbus::Connection;
use zbus::zvariant::OwnedObjectPath;

struct World {
    m: MockServer,
    s: Scratch,
    bus: PrivateBus,
}

fn world() -> World {
    let s = Scratch::new();
    let bus = PrivateBus::start(s.path());
    World { m: MockServer::start(MockConfig::default()), s, bus }
}

fn account_cfg(home: &Path, name: &str) -> String {
    format!("\n[accounts.{name}]\nuser = \"{}\"\ncodex_home = \"{}\"\n", me(), home.display())
}

impl World {
    fn config(&self, accounts: &str) -> PathBuf {
        self.s.config(&format!("[defaults]\nrequest_timeout = \"3s\"\n{accounts}"))
    }
    fn daemon(&self, cfg: &Path) -> AgentDaemon {
        AgentDaemon::start(&self.s, &self.m, cfg, &self.bus)
    }
    async fn conn(&self) -> Connection {
        zbus::connection::Builder::address(self.bus.address.as_str()).unwrap().build().await.unwrap()
    }
}

fn file_rt(home: &Path) -> String {
    read_json(&home.join("auth.json"))["tokens"]["refresh_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn properties_match_the_files_and_change_on_refresh() {
    let w = world();
    let c = w.m.issue_family("acct-a");
    let home = w.s.codex_home("a", Some(&auth_json(&c, OLD)));
    let cfg = w.config(&account_cfg(&home, "alice"));
    let mut d = w.daemon(&cfg);
    let conn = w.conn().await;
    // The start-up pass refreshes what is due.
    let v = wait_state(&conn, "alice", "ok").await;
    assert_eq!(w.m.token_requests(), 1);
    let rt = file_rt(&home);
    assert_eq!(v.token_fingerprint, codex_auth_agent::core::authfile::fingerprint(&rt));
    let auth =
        codex_auth_agent::core::authfile::AuthFile::parse(&std::fs::read(home.join("auth.json")).unwrap(), &home)
            .unwrap();
    assert_eq!(v.access_token_expires_at as i64, auth.access_expires_at().unwrap().timestamp());
    assert_eq!(v.last_refresh as i64, auth.last_refresh().unwrap().timestamp());
    assert_eq!(
        (v.name.as_str(), v.user.as_str(), v.codex_home.clone()),
        ("alice", me().as_str(), home.display().to_string())
    );
    assert_eq!(v.last_outcome, "refreshed");
    assert!(v.next_attempt > v.last_refresh, "next attempt is scheduled");
    let st = read_json(&w.s.state_dir().join("accounts/alice/status.json"));
    assert_eq!(st["token_fp"], v.token_fingerprint.as_str());
    // Manager properties.
    let m = manager(&conn).await;
    let accounts: Vec<OwnedObjectPath> = m.get_property("Accounts").await.unwrap();
    assert_eq!(accounts.len(), 1);
    let summary: String = m.get_property("Summary").await.unwrap();
    assert!(summary.starts_with("1 account: 1 ok; next refresh "), "{summary}");
    assert_eq!(m.get_property::<String>("Version").await.unwrap(), env!("CARGO_PKG_VERSION"));
    assert_eq!(m.get_property::<String>("BootId").await.unwrap().len(), 36);
    // sd-notify: READY then STATUS= lines following the state.
    assert!(d.notes()[0].contains("READY=1"));
    d.wait_note("STATUS=1 account: 1 ok", Duration::from_secs(5));
    // PropertiesChanged on a forced refresh.
    let props = zbus::fdo::PropertiesProxy::builder(&conn)
        .destination(BUS_NAME)
        .unwrap()
        .path(account_path("alice"))
        .unwrap()
        .build()
        .await
        .unwrap();
    let mut changes = props.receive_properties_changed().await.unwrap();
    let a = account(&conn, "alice").await;
    let (outcome, _): (String, String) = a.call("Refresh", &(true,)).await.unwrap();
    assert_eq!(outcome, "refreshed");
    let mut seen = std::collections::HashSet::new();
    let t0 = Instant::now();
    while !(seen.contains("TokenFingerprint") && seen.contains("State")) {
        assert!(t0.elapsed() < Duration::from_secs(5), "saw only {seen:?}");
        if let Ok(Some(sig)) = tokio::time::timeout(Duration::from_secs(5), changes.next()).await {
            let args = sig.args().unwrap();
            seen.extend(args.changed_properties().keys().map(|k| k.to_string()));
        }
    }
    let v2 = view(&conn, "alice").await;
    assert_ne!(v2.token_fingerprint, v.token_fingerprint);
    assert_eq!(v2.token_fingerprint, codex_auth_agent::core::authfile::fingerprint(&file_rt(&home)));
    // Nothing secret anywhere we publish.
    let props_text = format!("{v:?}{v2:?}{summary}");
    let mut all = secrets(&c);
    all.push(rt);
    all.push(file_rt(&home));
    assert_no_secrets(
        &[("properties", &props_text), ("daemon log", &d.log_text()), ("notify", &d.notes().join("\n"))],
        &all,
    );
    assert_clean(&Run { code: 0, stdout: String::new(), stderr: String::new() }, &w.s.state_dir(), &all);
    assert_eq!(d.stop(), 0, "SIGTERM exits 0");
    assert!(d.notes().iter().any(|n| n.contains("STOPPING=1")), "{:?}", d.notes());
}

/// A package upgrade replaces the executable while the daemon runs: prerm stops nothing on
/// upgrade and postinst restarts the daemon only once every new file is in place. Until
/// then the daemon's workers must still start, and be its own version, not whatever the
/// path names now.
#[tokio::test]
async fn workers_still_start_after_the_executable_is_replaced_on_disk() {
    use std::os::unix::fs::PermissionsExt;
    let w = world();
    let c = w.m.issue_family("acct-a");
    let home = w.s.codex_home("a", Some(&auth_json(&c, &recent())));
    let cfg = w.config(&account_cfg(&home, "alice"));
    let dir = w.s.path().join("usr-bin");
    std::fs::create_dir(&dir).unwrap();
    let exe = dir.join("codex-auth-agent");
    // A second name for the same file (a copy where the scratch is on another file system).
    std::fs::hard_link(BIN, &exe).or_else(|_| std::fs::copy(BIN, &exe).map(drop)).unwrap();
    let mut d = AgentDaemon::start_from(&exe, &w.s, &w.m, &cfg, &w.bus, |_| {});
    let conn = w.conn().await;
    wait_state(&conn, "alice", "ok").await;
    // What dpkg does: the new file is unpacked beside the old one and renamed over it.
    let new = dir.join("codex-auth-agent.dpkg-new");
    std::fs::write(&new, "#!/bin/sh\necho 'the new version must not run as this daemon worker' >&2\nexit 70\n")
        .unwrap();
    std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&new, &exe).unwrap();
    let before = w.m.token_requests();
    let (outcome, reason): (String, String) = account(&conn, "alice").await.call("Refresh", &(true,)).await.unwrap();
    assert_eq!((outcome.as_str(), w.m.token_requests()), ("refreshed", before + 1), "{reason}\n{}", d.log_text());
    assert!(!d.log_text().contains("must not run"), "{}", d.log_text());
    assert_eq!(d.stop(), 0, "SIGTERM exits 0");
}

#[tokio::test]
async fn fifty_concurrent_refresh_calls_send_one_token_request() {
    let w = world();
    let c = w.m.issue_family("acct-a");
    let home = w.s.codex_home("a", Some(&auth_json(&c, &recent())));
    let cfg = w.config(&account_cfg(&home, "alice"));
    let _d = w.daemon(&cfg);
    let conn = w.conn().await;
    // The start-up pass checks it: fresh, so no token request.
    wait_state(&conn, "alice", "ok").await;
    assert_eq!(w.m.token_requests(), 0);
    w.m.set_latency(Duration::from_millis(800));
    let a = account(&conn, "alice").await;
    let calls = (0..50).map(|_| a.call::<_, _, (String, String)>("Refresh", &(true,)));
    let results: Vec<(String, String)> =
        futures_util::future::join_all(calls).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(w.m.token_requests(), 1);
    assert_eq!(w.m.reuse_detections(), 0);
    assert!(results.iter().all(|r| r == &results[0]), "{results:?}");
    assert_eq!(results[0].0, "refreshed");
    assert!(w.m.is_live_refresh_token(&file_rt(&home)));
}

#[tokio::test]
async fn transient_failures_back_off_and_permanent_ones_quarantine() {
    let w = world();
    let (ct, cp) = (w.m.issue_family("acct-t"), w.m.issue_family("acct-p"));
    let (ht, hp) =
        (w.s.codex_home("t", Some(&auth_json(&ct, &recent()))), w.s.codex_home("p", Some(&auth_json(&cp, &recent()))));
    let cfg = w.config(&(account_cfg(&ht, "tina") + &account_cfg(&hp, "paul")));
    let d = w.daemon(&cfg);
    let conn = w.conn().await;
    wait_state(&conn, "tina", "ok").await;
    wait_state(&conn, "paul", "ok").await;
    // Transient: a 503 schedules a retry ≈1 min out; a second unforced call waits for it.
    w.m.set_sticky_fault_for("acct-t", Some(Fault::service_unavailable()));
    let t = account(&conn, "tina").await;
    let before = ct.refresh_token.clone();
    let (o, _): (String, String) = t.call("Refresh", &(true,)).await.unwrap();
    assert_eq!(o, "failed");
    let v = wait_state(&conn, "tina", "failed_transient").await;
    assert_eq!(v.consecutive_failures, 1);
    let wait = v.next_attempt as i64 - v.last_attempt as i64;
    assert!((45..=75).contains(&wait), "first retry ≈1 min, got {wait}s");
    let n = w.m.token_requests();
    let (o, reason): (String, String) = t.call("Refresh", &(false,)).await.unwrap();
    assert_eq!(o, "failed");
    assert!(reason.contains("backing off"), "{reason}");
    assert_eq!(w.m.token_requests(), n, "no request while backing off");
    assert_eq!(file_rt(&ht), before, "file untouched");
    // Permanent: one token request, then none until the file changes, one err entry.
    w.m.push_fault_for("acct-p", Fault::refresh_token_reused());
    let p = account(&conn, "paul").await;
    let (o, _): (String, String) = p.call("Refresh", &(true,)).await.unwrap();
    assert_eq!(o, "failed");
    wait_state(&conn, "paul", "failed_permanent").await;
    let n = w.m.token_requests_for("acct-p");
    for _ in 0..3 {
        let (o, reason): (String, String) = p.call("Refresh", &(true,)).await.unwrap();
        assert_eq!(o, "failed");
        assert!(reason.contains("quarantined") && reason.contains("codex-authctl login paul"), "{reason}");
    }
    let m = manager(&conn).await;
    let _: Vec<(String, String, String)> = m.call("RefreshAll", &(true,)).await.unwrap();
    assert_eq!(w.m.token_requests_for("acct-p"), n, "no token request while quarantined");
    let errs = d.log_text().lines().filter(|l| l.contains("ERROR") && l.contains("account=paul")).count();
    assert_eq!(errs, 1, "exactly one err entry:\n{}", d.log_text());
    let summary: String = m.get_property("Summary").await.unwrap();
    assert!(summary.contains("failed_permanent (paul)"), "{summary}");
    // A human logs in again: the file changes and the account works again.
    let fresh = w.m.issue_family("acct-p");
    std::fs::write(hp.join("auth.json"), auth_json(&fresh, OLD)).unwrap();
    let (o, _): (String, String) = p.call("Refresh", &(false,)).await.unwrap();
    assert_eq!(o, "refreshed");
    wait_state(&conn, "paul", "ok").await;
    assert_no_secrets(&[("daemon log", &d.log_text())], &[secrets(&ct), secrets(&cp), secrets(&fresh)].concat());
}

#[tokio::test]
async fn reload_adds_and_removes_accounts_and_survives_a_bad_config() {
    let w = world();
    let (ca, cb) = (w.m.issue_family("a"), w.m.issue_family("b"));
    let (ha, hb) =
        (w.s.codex_home("a", Some(&auth_json(&ca, &recent()))), w.s.codex_home("b", Some(&auth_json(&cb, &recent()))));
    let cfg = w.config(&account_cfg(&ha, "alice"));
    let d = w.daemon(&cfg);
    let conn = w.conn().await;
    let m = manager(&conn).await;
    let dropin = cfg.parent().unwrap().join("config.d/50-bob.toml");
    std::fs::create_dir_all(dropin.parent().unwrap()).unwrap();
    std::fs::write(&dropin, account_cfg(&hb, "bob")).unwrap();
    m.call::<_, _, ()>("Reload", &()).await.unwrap();
    let accounts: Vec<OwnedObjectPath> = m.get_property("Accounts").await.unwrap();
    assert_eq!(accounts.len(), 2);
    assert_eq!(view(&conn, "bob").await.name, "bob");
    // SIGHUP does the same as Reload(): remove bob again.
    std::fs::remove_file(&dropin).unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    let t0 = Instant::now();
    while m.get_property::<Vec<OwnedObjectPath>>("Accounts").await.unwrap().len() != 1 {
        assert!(t0.elapsed() < Duration::from_secs(5), "SIGHUP did not remove bob");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(account(&conn, "bob").await.get_property::<String>("Name").await.is_err(), "bob's object is gone");
    // A broken config: Reload fails, the old config keeps running, Summary says why.
    std::fs::write(&dropin, "[defaults]\nmax_age = \"never\"\n").unwrap();
    let err = m.call::<_, _, ()>("Reload", &()).await.unwrap_err().to_string();
    assert!(err.contains("defaults.max_age"), "{err}");
    let summary: String = m.get_property("Summary").await.unwrap();
    assert!(summary.contains("config error") && summary.contains("1 account"), "{summary}");
    assert_eq!(view(&conn, "alice").await.name, "alice");
    assert!(d.log_text().contains("reload failed"));
}

#[tokio::test]
async fn store_and_seed_install_through_the_worker() {
    if !require_root("store_and_seed_install_through_the_worker") {
        return;
    }
    let w = world();
    let c = w.m.issue_family("acct");
    let home = w.s.codex_home("a", Some(&auth_json(&c, &recent())));
    let cfg = w.config(&account_cfg(&home, "alice"));
    let _d = w.daemon(&cfg);
    // Store: stdin is handed over as a file descriptor.
    let stored = w.m.issue_family("acct");
    let file = w.s.path().join("new-auth.json");
    std::fs::write(&file, auth_json(&stored, &recent())).unwrap();
    let mut cmd = ctl(&w.bus);
    cmd.args(["store", "alice"]).stdin(std::fs::File::open(&file).unwrap());
    let r = run(cmd);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("alice: fresh"), "{}", r.stdout);
    assert_eq!(file_rt(&home), stored.refresh_token);
    assert_eq!(mode(&home.join("auth.json")), 0o600);
    // Not an auth.json: refused with a clear error, nothing written.
    let mut cmd = ctl(&w.bus);
    cmd.args(["store", "alice"]).stdin(std::fs::File::open("/etc/hostname").unwrap());
    let r = run(cmd);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not valid JSON"), "{}", r.stderr);
    assert_eq!(file_rt(&home), stored.refresh_token);
    // Seed: becomes the seed file (0600) and is installed.
    let seeded = w.m.issue_family("acct");
    std::fs::write(&file, auth_json(&seeded, &recent())).unwrap();
    let mut cmd = ctl(&w.bus);
    cmd.args(["seed", "alice"]).stdin(std::fs::File::open(&file).unwrap());
    let r = run(cmd);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let seed_file = w.s.path().join("etc/seeds/alice.json");
    assert_eq!(mode(&seed_file), 0o600);
    assert_eq!(file_rt(&home), seeded.refresh_token);
    assert_clean(&r, &w.s.state_dir(), &[secrets(&stored), secrets(&seeded)].concat());
}

#[test]
fn ctl_reports_an_unreachable_daemon_with_69() {
    let s = Scratch::new();
    let mut cmd = Command::new(CTL);
    cmd.args(["--address", &format!("unix:path={}/nothing", s.path().display()), "status"]);
    let r = run(cmd);
    assert_eq!(r.code, 69, "{}", r.stderr);
    assert!(r.stderr.contains("systemctl start codex-auth-agent"), "{}", r.stderr);
}

#[tokio::test]
async fn ctl_status_table_and_json_agree_with_the_bus() {
    let w = world();
    let c = w.m.issue_family("acct");
    let home = w.s.codex_home("a", Some(&auth_json(&c, OLD)));
    let cfg = w.config(&account_cfg(&home, "alice"));
    let _d = w.daemon(&cfg);
    let conn = w.conn().await;
    let v = wait_state(&conn, "alice", "ok").await;
    let mut cmd = ctl(&w.bus);
    cmd.args(["status", "--json"]);
    let r = run(cmd);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = r.one();
    assert_eq!(j["state"], "ok");
    assert_eq!(j["token_fingerprint"], v.token_fingerprint.as_str());
    let mut cmd = ctl(&w.bus);
    cmd.arg("status");
    let r = run(cmd);
    assert!(r.stdout.contains("ACCOUNT") && r.stdout.contains("alice") && r.stdout.contains(" ok "), "{}", r.stdout);
    let mut cmd = ctl(&w.bus);
    cmd.args(["refresh", "alice", "--force"]);
    let r = run(cmd);
    assert_eq!((r.code, r.stdout.starts_with("alice: refreshed")), (0, true), "{}", r.stdout);
    w.m.push_fault(Fault::refresh_token_reused());
    let mut cmd = ctl(&w.bus);
    cmd.args(["refresh", "--all", "--force"]);
    let r = run(cmd);
    assert_eq!(r.code, 3, "permanent failure exits 3: {}", r.stdout);
}

/// `codex-authctl status | head -1`: a reader that closes the pipe early is not an error.
#[tokio::test]
async fn ctl_status_into_a_closed_pipe_exits_cleanly() {
    let w = world();
    let _d = w.daemon(
        &w.config(&account_cfg(&w.s.codex_home("a", Some(&auth_json(&w.m.issue_family("acct"), OLD))), "alice")),
    );
    wait_state(&w.conn().await, "alice", "ok").await;
    for args in [&["status"][..], &["status", "--json"], &["refresh", "alice"]] {
        // The read end is closed before the child writes: its first write gets EPIPE.
        let (reader, writer) = nix::unistd::pipe().unwrap();
        drop(reader);
        let mut cmd = ctl(&w.bus);
        cmd.args(args).stdout(std::process::Stdio::from(writer)).stderr(std::process::Stdio::piped());
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {:?} {stderr}", out.status);
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

/// Run codex-authctl as `user` (its binary copied where that user can execute it).
fn ctl_as(w: &World, user: &nix::unistd::User, args: &[&str]) -> Run {
    let bin = w.s.path().join("codex-authctl");
    if !bin.exists() {
        std::fs::copy(CTL, &bin).unwrap();
    }
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", &user.uid.to_string(), "--regid", &user.gid.to_string(), "--init-groups", "--"])
        .arg(&bin)
        .args(["--address", &w.bus.address])
        .args(args);
    run(cmd)
}

/// A daemon serving alice (fresh), and caa-bob outside the codex-auth group.
fn daemon_and_outsider() -> (nix::unistd::User, World, AgentDaemon) {
    let bob = ensure_user("caa-bob");
    let w = world();
    let c = w.m.issue_family("acct");
    let home = w.s.codex_home("a", Some(&auth_json(&c, &recent())));
    let cfg = w.config(&account_cfg(&home, "alice"));
    let d = w.daemon(&cfg);
    let _ = Command::new("gpasswd").args(["-d", "caa-bob", "codex-auth"]).output();
    (bob, w, d)
}

#[tokio::test]
async fn non_root_callers_may_read_but_not_act() {
    if !require_root("non_root_callers_may_read_but_not_act") {
        return;
    }
    let (bob, w, d) = daemon_and_outsider();
    let r = ctl_as(&w, &bob, &["status", "--json"]);
    assert_eq!(r.code, 0, "reads are open: {}", r.stderr);
    for args in [
        &["refresh", "alice"][..],
        &["refresh", "--all"],
        &["preflight", "alice"],
        &["preflight", "--all"],
        &["reload"],
        &["store", "alice"],
        &["seed", "alice"],
    ] {
        let r = ctl_as(&w, &bob, args);
        assert_eq!(r.code, 77, "{args:?}: {}{}", r.stdout, r.stderr);
    }
    assert_eq!(w.m.token_requests(), 0);
    assert!(d.log_text().contains("access denied"), "denials are logged");
    // Members of codex-auth may refresh, but still not store.
    assert!(Command::new("groupadd").args(["-f", "--system", "codex-auth"]).status().unwrap().success());
    assert!(Command::new("usermod").args(["-aG", "codex-auth", "caa-bob"]).status().unwrap().success());
    let r = ctl_as(&w, &bob, &["refresh", "alice", "--force"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = ctl_as(&w, &bob, &["store", "alice"]);
    assert_eq!(r.code, 77, "{}", r.stderr);
    let _ = Command::new("gpasswd").args(["-d", "caa-bob", "codex-auth"]).output();
}

/// A caller looping on a denied call: a few WARN lines and a count, not one line per call.
#[tokio::test]
async fn denied_calls_are_logged_with_a_rate_limit() {
    if !require_root("denied_calls_are_logged_with_a_rate_limit") {
        return;
    }
    let (bob, w, d) = daemon_and_outsider();
    for _ in 0..30 {
        assert_eq!(ctl_as(&w, &bob, &["refresh", "alice"]).code, 77);
    }
    let n = d.log_text().lines().filter(|l| l.contains("access denied: Refresh")).count();
    assert!((1..=5).contains(&n), "{n} denial lines for 30 denied calls:\n{}", d.log_text());
}

#[tokio::test]
async fn preflight_over_dbus_sets_the_runner_properties_and_follows_a_store() {
    let cw = support::codex::World::new();
    let bus = PrivateBus::start(cw.scratch.path());
    let c = cw.mock.issue_family("acct-pf");
    let home = cw.scratch.codex_home("pf", Some(&auth_json(&c, &recent())));
    let cfg = cw.config_me(&home, "");
    let d = AgentDaemon::start(&cw.scratch, &cw.mock, &cfg, &bus);
    let conn = zbus::connection::Builder::address(bus.address.as_str()).unwrap().build().await.unwrap();
    wait_state(&conn, "me", "ok").await;
    assert_eq!(view(&conn, "me").await.runner_state.as_str(), "unknown");
    let a = account(&conn, "me").await;
    let (outcome, reason): (String, String) = a.call("Preflight", &()).await.unwrap();
    assert_eq!(outcome, "preflight_ok", "{reason}\n{}", d.log_text());
    let v = view(&conn, "me").await;
    assert_eq!(v.runner_state.as_str(), "ok");
    assert!(v.runner_last_ok > 0 && v.runner_last_check == v.runner_last_ok && v.runner_last_fail == 0, "{v:?}");
    assert_eq!(v.runner_boot_id.len(), 36);
    // PreflightAll through codex-authctl (what the daily timer runs).
    let mut cmd = ctl(&bus);
    cmd.args(["preflight", "--all"]);
    let r = run(cmd);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("me: preflight_ok"), "{}", r.stdout);
    // A Store answers at once; the preflight it triggers runs afterwards.
    let checked = view(&conn, "me").await.runner_last_check;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stored = cw.mock.issue_family("acct-pf");
    let file = cw.scratch.path().join("stored.json");
    std::fs::write(&file, auth_json(&stored, &recent())).unwrap();
    let fd = std::fs::File::open(&file).unwrap();
    let (o, _): (String, String) =
        a.call("Store", &(zbus::zvariant::Fd::from(std::os::fd::AsFd::as_fd(&fd)),)).await.unwrap();
    assert_eq!(o, "fresh");
    let t0 = Instant::now();
    while view(&conn, "me").await.runner_last_check <= checked {
        assert!(t0.elapsed() < Duration::from_secs(60), "no preflight after Store:\n{}", d.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(view(&conn, "me").await.runner_state.as_str(), "ok");
    assert_no_secrets(&[("daemon log", &d.log_text())], &[secrets(&c), secrets(&stored)].concat());
}
