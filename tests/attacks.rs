//! Attacks by the account's own user on its CODEX_HOME while the agent (root, worker as
//! the user) is inside the token POST, held there by the mock's Delay fault. Root only;
//! skipped with a printed reason otherwise.

mod support;

use mock_openai::{Fault, MockConfig, MockServer};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};
use support::*;

fn config(s: &Scratch, u: &nix::unistd::User, home: &Path) -> PathBuf {
    s.config(&format!(
        "[defaults]\nrequest_timeout = \"10s\"\n\n[accounts.alice]\nuser = \"{}\"\ncodex_home = \"{}\"\n",
        u.name,
        home.display()
    ))
}

fn start(s: &Scratch, m: &MockServer, cfg: &Path) -> Child {
    let mut cmd = agent(s, m);
    cmd.arg("--config").arg(cfg).args(["refresh", "--force", "--json", "--account", "alice"]);
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    cmd.spawn().unwrap()
}

/// Wait until the agent's POST reached the mock (it is then held by the Delay fault).
fn wait_in_post(m: &MockServer) {
    let t = Instant::now();
    while m.token_requests() == 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "the agent never sent its POST");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn finish(c: Child) -> Run {
    let o = c.wait_with_output().unwrap();
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn lchown(p: &Path, u: &nix::unistd::User) {
    std::os::unix::fs::lchown(p, Some(u.uid.as_raw()), Some(u.gid.as_raw())).unwrap();
}

#[test]
fn auth_json_swapped_for_a_symlink_during_the_post_is_refused() {
    if !require_root("auth_json_swapped_for_a_symlink_during_the_post_is_refused") {
        return;
    }
    let (alice, bob) = (ensure_user("caa-alice"), ensure_user("caa-bob"));
    let root_file = |s: &Scratch| {
        let p = s.path().join("root-owned");
        std::fs::write(&p, b"root's").unwrap();
        p
    };
    let bob_file = |s: &Scratch| {
        let p = s.path().join("bobs");
        std::fs::write(&p, b"bob's").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        lchown(&p, &bob);
        p
    };
    for target in [&root_file as &dyn Fn(&Scratch) -> PathBuf, &bob_file] {
        let (m, s) = (MockServer::start(MockConfig::default()), Scratch::new());
        let c = m.issue_family("alice-acct");
        let home = home_for(&s, &alice, Some(&auth_json(&c, OLD)));
        let victim = target(&s);
        let (before, owner) = (std::fs::read(&victim).unwrap(), std::fs::metadata(&victim).unwrap().uid());
        m.push_fault(Fault::Delay(Duration::from_millis(800)));
        let child = start(&s, &m, &config(&s, &alice, &home));
        wait_in_post(&m);
        std::fs::remove_file(home.join("auth.json")).unwrap();
        std::os::unix::fs::symlink(&victim, home.join("auth.json")).unwrap();
        lchown(&home.join("auth.json"), &alice);
        let r = finish(child);
        assert_eq!(r.code, 5, "refused as unsafe: {}\n{}", r.stdout, r.stderr);
        assert_eq!(std::fs::read(&victim).unwrap(), before, "the symlink's target is unchanged");
        assert_eq!(std::fs::metadata(&victim).unwrap().uid(), owner);
        assert!(std::fs::symlink_metadata(home.join("auth.json")).unwrap().is_symlink());
        assert_all_owned_by(&home, alice.uid.as_raw());
        assert_eq!(m.token_requests(), 1);
    }
}

#[test]
fn codex_home_swapped_for_a_symlink_during_the_post_writes_only_the_original() {
    if !require_root("codex_home_swapped_for_a_symlink_during_the_post_writes_only_the_original") {
        return;
    }
    let alice = ensure_user("caa-alice");
    let (m, s) = (MockServer::start(MockConfig::default()), Scratch::new());
    let c = m.issue_family("alice-acct");
    let home = home_for(&s, &alice, Some(&auth_json(&c, OLD)));
    // alice owns her home's parent, so she can rename it.
    lchown(home.parent().unwrap(), &alice);
    let elsewhere = s.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o777)).unwrap();
    m.push_fault(Fault::Delay(Duration::from_millis(800)));
    let child = start(&s, &m, &config(&s, &alice, &home));
    wait_in_post(&m);
    let moved = home.with_file_name(".codex-real");
    std::fs::rename(&home, &moved).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &home).unwrap();
    lchown(&home, &alice);
    let r = finish(child);
    assert!(r.code == 0 || r.code == 5, "written to the held directory or refused: {}\n{}", r.stdout, r.stderr);
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "nothing written through the symlink");
    if r.code == 0 {
        let rt = read_json(&moved.join("auth.json"))["tokens"]["refresh_token"].as_str().unwrap().to_string();
        assert!(m.is_live_refresh_token(&rt), "the new token landed in the original directory");
        assert_eq!(mode(&moved.join("auth.json")), 0o600);
    }
    assert_all_owned_by(&moved, alice.uid.as_raw());
}

#[test]
fn squatted_temp_names_do_not_redirect_the_write() {
    if !require_root("squatted_temp_names_do_not_redirect_the_write") {
        return;
    }
    let alice = ensure_user("caa-alice");
    let (m, s) = (MockServer::start(MockConfig::default()), Scratch::new());
    let c = m.issue_family("alice-acct");
    let home = home_for(&s, &alice, Some(&auth_json(&c, OLD)));
    let victim = s.path().join("root-owned");
    std::fs::write(&victim, b"root's").unwrap();
    m.push_fault(Fault::Delay(Duration::from_millis(800)));
    let child = start(&s, &m, &config(&s, &alice, &home));
    wait_in_post(&m);
    // After the agent's stale-temp cleanup: squat 500 names, half symlinks to root's file.
    for i in 0..500u64 {
        let p = home.join(format!(".auth.json.tmp-caa-{:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        if i % 2 == 0 {
            std::os::unix::fs::symlink(&victim, &p).unwrap();
        } else {
            std::fs::write(&p, b"squat").unwrap();
        }
        lchown(&p, &alice);
    }
    let r = finish(child);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(std::fs::read(&victim).unwrap(), b"root's");
    let rt = read_json(&home.join("auth.json"))["tokens"]["refresh_token"].as_str().unwrap().to_string();
    assert!(m.is_live_refresh_token(&rt));
    assert_eq!(mode(&home.join("auth.json")), 0o600);
    assert_all_owned_by(&home, alice.uid.as_raw());
    // The next cycle removes the squatters (not their targets).
    let r = finish(start(&s, &m, &config(&s, &alice, &home)));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let left =
        std::fs::read_dir(&home).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains("tmp-caa"));
    assert_eq!(left.count(), 0);
    assert_eq!(std::fs::read(&victim).unwrap(), b"root's");
}

#[test]
fn a_fifo_as_auth_json_is_refused_at_once_and_spends_nothing() {
    if !require_root("a_fifo_as_auth_json_is_refused_at_once_and_spends_nothing") {
        return;
    }
    let alice = ensure_user("caa-alice");
    let (m, s) = (MockServer::start(MockConfig::default()), Scratch::new());
    let home = home_for(&s, &alice, None);
    let fifo = home.join("auth.json");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    lchown(&fifo, &alice);
    let t = Instant::now();
    let r = finish(start(&s, &m, &config(&s, &alice, &home)));
    assert_eq!(r.code, 5, "{}\n{}", r.stdout, r.stderr);
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert_eq!(m.token_requests(), 0);
}
