//! As root: the file work happens in a child that dropped to the account's user. Uses two
//! throwaway system users (created once, idempotently). Skipped with a printed reason when
//! not root; CI runs as root.

mod support;

use mock_openai::{MockConfig, MockServer};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use support::*;

struct Users {
    alice: nix::unistd::User,
    bob: nix::unistd::User,
    /// The gid of alice's supplementary group.
    extra: u32,
}

/// The two users, alice with her supplementary group already: the worker pool keys on a
/// user's groups, so a test that added it while another ran would start a second worker
/// there (as the agent should) and make that test fail on a fresh machine.
fn users() -> Users {
    let alice = ensure_user("caa-alice");
    let extra = ensure_group_member("caa-extra", &alice.name);
    Users { alice, bob: ensure_user("caa-bob"), extra }
}

fn accounts(s: &Scratch, list: &[(&str, &nix::unistd::User, &Path)], extra: &str) -> PathBuf {
    accounts_with_agent(s, "", list, extra)
}

/// Like [`accounts`], with `agent` keys ([agent] section) first.
fn accounts_with_agent(s: &Scratch, agent: &str, list: &[(&str, &nix::unistd::User, &Path)], extra: &str) -> PathBuf {
    let mut body = format!("{agent}\n[defaults]\nrequest_timeout = \"3s\"\n");
    for (name, u, home) in list {
        body.push_str(&format!("\n[accounts.{name}]\nuser = \"{}\"\ncodex_home = \"{}\"\n", u.name, home.display()));
    }
    body.push_str(extra);
    s.config(&body)
}

fn refresh_all(s: &Scratch, m: &MockServer, cfg: &Path) -> Run {
    run(refresh_all_command(s, m, cfg))
}

fn refresh_all_command(s: &Scratch, m: &MockServer, cfg: &Path) -> std::process::Command {
    let mut cmd = agent(s, m);
    cmd.arg("--config").arg(cfg).args(["refresh", "--all", "--json"]);
    cmd
}

#[test]
fn each_account_is_refreshed_by_its_own_user() {
    if !require_root("each_account_is_refreshed_by_its_own_user") {
        return;
    }
    let (u, m, s) = (users(), MockServer::start(MockConfig::default()), Scratch::new());
    let (ca, cb) = (m.issue_family("alice-acct"), m.issue_family("bob-acct"));
    let ha = home_for(&s, &u.alice, Some(&auth_json(&ca, OLD)));
    let hb = home_for(&s, &u.bob, Some(&auth_json(&cb, OLD)));
    let cfg = accounts(&s, &[("alice", &u.alice, &ha), ("bob", &u.bob, &hb)], "");
    let r = refresh_all(&s, &m, &cfg);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let lines = r.json();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l["outcome"] == "refreshed"), "{}", r.stdout);
    for (home, user, creds) in [(&ha, &u.alice, &ca), (&hb, &u.bob, &cb)] {
        let f = home.join("auth.json");
        assert_eq!(std::fs::metadata(&f).unwrap().uid(), user.uid.as_raw());
        assert_eq!(mode(&f), 0o600);
        let rt = read_json(&f)["tokens"]["refresh_token"].as_str().unwrap().to_string();
        assert_ne!(rt, creds.refresh_token);
        assert!(m.is_live_refresh_token(&rt));
        assert_all_owned_by(home, user.uid.as_raw());
    }
    for name in ["alice", "bob"] {
        let st = s.state_dir().join(format!("accounts/{name}/status.json"));
        assert_eq!(std::fs::metadata(&st).unwrap().uid(), 0);
        assert_eq!(mode(&st), 0o600);
    }
    let mut all = secrets(&ca);
    all.extend(secrets(&cb));
    assert_clean(&r, &s.state_dir(), &all);
    assert_clean(&r, &ha, &all);
}

#[test]
fn the_worker_cannot_reach_what_its_user_cannot() {
    if !require_root("the_worker_cannot_reach_what_its_user_cannot") {
        return;
    }
    let (u, m, s) = (users(), MockServer::start(MockConfig::default()), Scratch::new());
    let ca = m.issue_family("alice-acct");
    // alice's home inside bob's private directory: root (the config check) sees an
    // alice-owned home; alice (the worker) cannot even reach it. Retrying cannot help: a
    // permanent failure that says what to change.
    let private = s.path().join("bob-private");
    let ha = private.join("alice/.codex");
    std::fs::create_dir_all(&ha).unwrap();
    std::fs::write(ha.join("auth.json"), auth_json(&ca, OLD)).unwrap();
    chown_r(&ha, u.alice.uid.as_raw(), u.alice.gid.as_raw());
    std::fs::set_permissions(&ha, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&private, Some(u.bob.uid.as_raw()), Some(u.bob.gid.as_raw())).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let cfg = accounts(&s, &[("alice", &u.alice, &ha)], "");
    let r = refresh_all(&s, &m, &cfg);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    let reason = r.one()["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("Permission denied") && reason.contains(&format!("chmod u+rwx {}", ha.display())),
        "{reason}"
    );
    assert!(!reason.contains("will retry"), "{reason}");
    assert_eq!(m.token_requests(), 0);
}

/// chmod 000 by its owner: check-config says what to fix (78); a run says it too, as a
/// permanent failure, instead of "Permission denied; will retry" for ever.
#[test]
fn an_unreadable_codex_home_says_what_to_fix() {
    if !require_root("an_unreadable_codex_home_says_what_to_fix") {
        return;
    }
    let (u, m, s) = (users(), MockServer::start(MockConfig::default()), Scratch::new());
    let ca = m.issue_family("alice-acct");
    let ha = home_for(&s, &u.alice, Some(&auth_json(&ca, OLD)));
    std::fs::set_permissions(&ha, std::fs::Permissions::from_mode(0o000)).unwrap();
    let cfg = accounts(&s, &[("alice", &u.alice, &ha)], "");
    let mut cmd = agent(&s, &m);
    cmd.arg("--config").arg(&cfg).arg("check-config");
    let r = run(cmd);
    assert_eq!(r.code, 78, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("accounts.alice.codex_home") && r.stderr.contains("chmod 700"), "{}", r.stderr);
    let r = refresh_all(&s, &m, &cfg);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    let reason = r.one()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("Permission denied") && reason.contains("chmod u+rwx"), "{reason}");
    assert_eq!(m.token_requests(), 0);
}

#[test]
fn a_users_symlink_to_a_root_or_foreign_file_is_refused() {
    if !require_root("a_users_symlink_to_a_root_or_foreign_file_is_refused") {
        return;
    }
    let (u, m, s) = (users(), MockServer::start(MockConfig::default()), Scratch::new());
    let (ca, cb) = (m.issue_family("alice-acct"), m.issue_family("bob-acct"));
    let ha = home_for(&s, &u.alice, None);
    let hb = home_for(&s, &u.bob, Some(&auth_json(&cb, OLD)));
    let root_file = s.path().join("root-owned.json");
    std::fs::write(&root_file, auth_json(&ca, OLD)).unwrap();
    std::fs::set_permissions(&root_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = accounts(&s, &[("alice", &u.alice, &ha)], "");
    for target in [root_file.clone(), hb.join("auth.json")] {
        let link = ha.join("auth.json");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        std::os::unix::fs::lchown(&link, Some(u.alice.uid.as_raw()), Some(u.alice.gid.as_raw())).unwrap();
        let before = std::fs::read(&target).unwrap();
        let r = refresh_all(&s, &m, &cfg);
        assert_eq!(r.code, 5, "{} → {}\n{}", target.display(), r.stdout, r.stderr);
        assert_eq!(std::fs::read(&target).unwrap(), before);
    }
    assert_eq!(m.token_requests(), 0);
    assert_eq!(std::fs::metadata(&root_file).unwrap().uid(), 0);
    assert_all_owned_by(&ha, u.alice.uid.as_raw());
}

#[test]
fn a_root_only_seed_reaches_the_user_through_the_pipe() {
    if !require_root("a_root_only_seed_reaches_the_user_through_the_pipe") {
        return;
    }
    let (u, m, s) = (users(), MockServer::start(MockConfig::default()), Scratch::new());
    let ca = m.issue_family("alice-acct");
    let ha = home_for(&s, &u.alice, None);
    let seed = s.path().join("seeds/alice.json");
    std::fs::create_dir_all(seed.parent().unwrap()).unwrap();
    std::fs::set_permissions(seed.parent().unwrap(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(&seed, auth_json(&ca, &recent())).unwrap();
    std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = accounts(&s, &[("alice", &u.alice, &ha)], &format!("seed = \"{}\"\n", seed.display()));
    let r = refresh_all(&s, &m, &cfg);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.one()["outcome"], "fresh");
    let f = ha.join("auth.json");
    assert_eq!(std::fs::metadata(&f).unwrap().uid(), u.alice.uid.as_raw());
    assert_eq!(read_json(&f)["tokens"]["refresh_token"], ca.refresh_token.as_str());
    let st = read_json(&s.state_dir().join("accounts/alice/status.json"));
    assert_eq!(st["seed_sha256"].as_str().unwrap().len(), 64);
    assert_clean(&r, &s.state_dir(), &secrets(&ca));
    assert_eq!(m.token_requests(), 0);
}

/// `preflight --account alice` as root for `alice`'s account, with a stand-in Codex that
/// runs `script` (OUT names a directory it may write) and answers Banana. Returns OUT.
fn preflight_with_stand_in(alice: &nix::unistd::User, script: &str) -> Scratch {
    let (m, s) = (MockServer::start(MockConfig::default()), Scratch::new());
    let home = home_for(&s, alice, Some(&auth_json(&m.issue_family("alice-acct"), OLD)));
    let out = Scratch::new();
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let codex = s.path().join("codex");
    std::fs::write(&codex, format!("#!/bin/sh\nOUT={}\n{script}\necho Banana\n", out.path().display())).unwrap();
    std::fs::set_permissions(&codex, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(s.path().join("etc")).unwrap();
    let cfg = s.path().join("etc/config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nstate_dir = \"{}\"\ncodex_bin = \"{}\"\n\n[accounts.alice]\nuser = \"{}\"\ncodex_home = \"{}\"\n",
            s.state_dir().display(),
            codex.display(),
            alice.name,
            home.display()
        ),
    )
    .unwrap();
    let mut cmd = agent(&s, &m);
    cmd.arg("--config").arg(&cfg).args(["preflight", "--account", "alice", "--json"]);
    let r = run(cmd);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    out
}

/// The worker is started through /proc/self/exe (the running executable, whatever lies at
/// its path now) and still shows as the agent's worker in ps, pgrep and the journal: the
/// Codex it starts sees its parent's name and command line as before.
#[test]
fn the_worker_is_named_after_the_agent() {
    if !require_root("the_worker_is_named_after_the_agent") {
        return;
    }
    let alice = ensure_user("caa-alice");
    let out = preflight_with_stand_in(
        &alice,
        "cat /proc/$PPID/comm > \"$OUT/comm\"\ntr '\\0' ' ' < /proc/$PPID/cmdline > \"$OUT/cmdline\"",
    );
    let read = |n: &str| std::fs::read_to_string(out.path().join(n)).unwrap();
    assert_eq!((read("comm").trim(), read("cmdline").trim()), ("codex-auth-agen", format!("{BIN} worker").as_str()));
}

/// The worker runs with exactly its user's groups — the supplementary ones included, looked
/// up by root before the spawn as initgroups would — and none of root's: the Codex it starts
/// (a stand-in that records `id -G`) shows them.
#[test]
fn the_worker_has_its_users_groups_and_none_of_roots() {
    if !require_root("the_worker_has_its_users_groups_and_none_of_roots") {
        return;
    }
    let Users { alice, extra, .. } = users();
    let out = preflight_with_stand_in(&alice, "id -G > \"$OUT/seen\"");
    let mut seen: Vec<u32> = std::fs::read_to_string(out.path().join("seen"))
        .unwrap()
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    seen.sort_unstable();
    let mut want = vec![alice.gid.as_raw(), extra];
    want.sort_unstable();
    assert_eq!(seen, want, "the worker's groups: the user's primary and supplementary ones only");
}

/// Run `cmd`, sampling every 2 ms which of its children run `codex-auth-agent worker`:
/// (pid, uid) of each (other tests' workers run as the same users).
fn run_watching_workers(mut cmd: std::process::Command) -> (Run, Vec<(u32, u32)>) {
    use std::process::Stdio;
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let parent = format!("PPid:\t{}", child.id());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut seen = std::collections::BTreeSet::new();
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            for e in std::fs::read_dir("/proc").unwrap().flatten() {
                let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
                let argv = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                if status.lines().any(|l| l == parent) && argv.split(|b| *b == 0).nth(1) == Some(b"worker".as_slice()) {
                    let uid =
                        status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1));
                    seen.insert((e.file_name().to_string_lossy().parse().unwrap(), uid.unwrap().parse().unwrap()));
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        seen.into_iter().collect::<Vec<_>>()
    });
    let out = child.wait_with_output().unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    (Run::from(out), sampler.join().unwrap())
}

/// A pass over several accounts of one user hands them to one worker in turn (starting a
/// worker costs about what its refresh does); every user still has workers of its own, and
/// each account is refreshed by its user.
#[test]
fn one_users_accounts_share_a_worker_and_no_worker_serves_two_users() {
    if !require_root("one_users_accounts_share_a_worker_and_no_worker_serves_two_users") {
        return;
    }
    let (u, m, s) = (users(), MockServer::start(MockConfig::default()), Scratch::new());
    m.set_latency(std::time::Duration::from_millis(150));
    let mut list = Vec::new();
    for (name, user) in [("a1", &u.alice), ("a2", &u.alice), ("a3", &u.alice), ("b1", &u.bob), ("b2", &u.bob)] {
        let c = m.issue_family(name);
        list.push((name, user, home_at(&s, user, name, Some(&auth_json(&c, OLD))), c));
    }
    let named: Vec<_> = list.iter().map(|(name, user, home, _)| (*name, *user, home.as_path())).collect();
    let cfg = accounts_with_agent(&s, "max_parallel = 1\n", &named, "");
    let (alice, bob) = (u.alice.uid.as_raw(), u.bob.uid.as_raw());
    let (r, seen) = run_watching_workers(refresh_all_command(&s, &m, &cfg));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.json().iter().all(|l| l["outcome"] == "refreshed"), "{}", r.stdout);
    let pids_of = |uid| seen.iter().filter(|(_, u)| *u == uid).map(|(p, _)| *p).collect::<Vec<_>>();
    assert_eq!(pids_of(alice).len(), 1, "alice's three accounts, one after another: one worker ({seen:?})");
    assert_eq!(pids_of(bob).len(), 1, "bob's two: one worker of bob's own ({seen:?})");
    for (_, user, home, c) in &list {
        let f = home.join("auth.json");
        assert_eq!(std::fs::metadata(&f).unwrap().uid(), user.uid.as_raw());
        let rt = read_json(&f)["tokens"]["refresh_token"].as_str().unwrap().to_string();
        assert!(rt != c.refresh_token && m.is_live_refresh_token(&rt));
        assert_all_owned_by(home, user.uid.as_raw());
    }
    let mut all: Vec<String> = list.iter().flat_map(|(_, _, _, c)| secrets(c)).collect();
    all.sort();
    assert_clean(&r, &s.state_dir(), &all);
}

/// A worker has dropped to its first request's user for good: a request for anybody else
/// is answered with a failure, not run.
#[test]
fn a_worker_refuses_a_task_of_another_user() {
    use codex_auth_agent::core::task::{Identity, PreflightJob, Task, WorkerRequest};
    if !require_root("a_worker_refuses_a_task_of_another_user") {
        return;
    }
    let (u, s) = (users(), Scratch::new());
    let request = |user: &nix::unistd::User| {
        let identity = Identity {
            user: user.name.clone(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir.clone(),
        };
        let job = PreflightJob {
            account: format!("{}-acct", user.name),
            codex_home: s.path().join("missing"),
            owner_uid: identity.uid,
            timeout: std::time::Duration::from_secs(5),
            lock_wait: std::time::Duration::from_secs(1),
            codex_bin: "/nonexistent/codex".into(),
            codex_base_url: "http://127.0.0.1:9".into(),
            token_url: "http://127.0.0.1:9/oauth/token".into(),
            temp_dir: std::env::temp_dir(),
        };
        let mut line =
            serde_json::to_vec(&WorkerRequest { identity, groups: None, task: Task::Preflight(job) }).unwrap();
        line.push(b'\n');
        line
    };
    let mut child = std::process::Command::new(BIN)
        .arg("worker")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, &[request(&u.alice), request(&u.bob)].concat()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "one report per request: {lines:?}");
    let report = |i: usize| lines[i]["done"]["preflight"].clone();
    assert_eq!(report(0)["account"], "caa-alice-acct");
    assert_eq!(report(1)["account"], "caa-bob-acct");
    let why = report(1).to_string();
    assert!(why.contains("this worker runs as caa-alice, not as caa-bob"), "{why}");
}
