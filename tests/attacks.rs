//! Attacks by the account's own user on its CODEX_HOME while the agent (root, worker as
//! the user) is inside the token POST, held there by the mock's Delay fault. Root only;
//! skipped with a printed reason otherwise.

mod support;

use mock_openai::{Fault, MockConfig, MockServer};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};
use support::*;

/// How long the mock holds the POST when alice acts through a shell of her own: starting
/// it can take longer than the in-process attacks' 800 ms on a loaded machine.
const SHELL_WINDOW: Duration = Duration::from_secs(3);

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
    finish_measured(c).0
}

/// Wait for the agent; also its peak RSS in KiB. wait4's rusage counts the child and the
/// descendants it reaped, so the worker that read auth.json is included.
fn finish_measured(mut c: Child) -> (Run, i64) {
    fn drain(mut r: impl Read) -> String {
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        s
    }
    // Both pipes at once, so neither can fill up and stall the agent.
    let out = c.stdout.take().unwrap();
    let stdout = std::thread::spawn(move || drain(out));
    let stderr = drain(c.stderr.take().unwrap());
    let stdout = stdout.join().unwrap();
    let (mut status, pid) = (0, c.id() as libc::pid_t);
    // SAFETY: an all-zero rusage is a valid value (plain integers).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: our own unreaped child; wait4 writes only through the two valid pointers.
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut ru) }, pid);
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    (Run { code, stdout, stderr }, ru.ru_maxrss)
}

/// Run `sh -c script` as `u` in `dir`, positional args `$1…`: what the user herself can
/// do, with the kernel deciding (e.g. protected_hardlinks).
fn as_user(u: &nix::unistd::User, dir: &Path, script: &str, args: &[&Path]) {
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(args)
        .current_dir(dir)
        .uid(u.uid.as_raw())
        .gid(u.gid.as_raw())
        .output()
        .unwrap();
    assert!(o.status.success(), "as {}: {script}: {}", u.name, String::from_utf8_lossy(&o.stderr));
}

/// The `--json` line, and that its reason says the POST spent the refresh token in
/// auth.json and the new one, which could not be written, is kept for the next run.
fn assert_reports_spent(r: &Run, problem: &str) {
    assert_eq!(r.code, 5, "refused as unsafe: {}\n{}", r.stdout, r.stderr);
    let j: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    let reason = j["reason"].as_str().unwrap();
    assert_eq!((j["outcome"].as_str(), j["class"].as_str()), (Some("failed"), Some("unsafe")), "{}", r.stdout);
    for says in [problem, "could not be written", "spent", "kept in", "do not log in again"] {
        assert!(reason.contains(says), "the reason says {says:?}: {reason}");
    }
}

/// Nothing but `except` in `home` belongs to anyone but `u`, and no temp of ours is left.
fn assert_home_clean(home: &Path, u: &nix::unistd::User, except: &str) {
    for e in std::fs::read_dir(home).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".tmp-caa-"), "temp {name} left");
        if name != except {
            assert_eq!(std::fs::symlink_metadata(e.path()).unwrap().uid(), u.uid.as_raw(), "{name}");
        }
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
        assert_reports_spent(&r, "is a symlink");
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

#[test]
fn auth_json_swapped_for_a_hard_link_during_the_post_is_refused() {
    if !require_root("auth_json_swapped_for_a_hard_link_during_the_post_is_refused") {
        return;
    }
    let (alice, bob) = (ensure_user("caa-alice"), ensure_user("caa-bob"));
    let root = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(0)).unwrap().unwrap();
    // protected_hardlinks=1 (systemd's default; this machine: see /proc/sys/fs) lets alice
    // link only files she owns, so she links her own file herself. Links to bob's or root's
    // file stand for a kernel with protected_hardlinks=0 (the kernel's default): root makes
    // them, which is what alice could do there.
    for (owner, alice_links) in [(&alice, true), (&bob, false), (&root, false)] {
        let (m, s) = (MockServer::start(MockConfig::default()), Scratch::new());
        let c = m.issue_family("alice-acct");
        let original = auth_json(&c, OLD);
        let home = home_for(&s, &alice, Some(&original));
        // The victim holds the very bytes the agent read: only the link count can tell.
        let victims = s.path().join("victims");
        std::fs::create_dir(&victims).unwrap();
        let victim = victims.join(format!("{}-file", owner.name));
        std::fs::write(&victim, &original).unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        lchown(&victim, owner);
        m.push_fault(Fault::Delay(SHELL_WINDOW));
        let child = start(&s, &m, &config(&s, &alice, &home));
        wait_in_post(&m);
        if alice_links {
            as_user(&alice, &home, r#"ln -f "$1" auth.json"#, &[&victim]);
        } else {
            let tmp = home.join("auth.json.link");
            std::fs::hard_link(&victim, &tmp).unwrap();
            std::fs::rename(&tmp, home.join("auth.json")).unwrap();
        }
        assert_eq!(m.successful_refreshes(), 0, "the swap landed while the POST was held");
        let r = finish(child);
        assert_reports_spent(&r, "2 hard links");
        let md = std::fs::metadata(&victim).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), original.as_bytes(), "nothing written through the link");
        assert_eq!((md.uid(), md.mode() & 0o7777, md.nlink()), (owner.uid.as_raw(), 0o600, 2));
        assert_eq!(ino(&home.join("auth.json")), md.ino(), "auth.json is still the link, not replaced");
        assert_eq!(std::fs::read_dir(&victims).unwrap().count(), 1, "nothing written beside the victim");
        assert_home_clean(&home, &alice, "auth.json");
        assert_eq!((m.token_requests(), m.successful_refreshes()), (1, 1), "the POST rotated the token");
        assert!(!m.is_live_refresh_token(&c.refresh_token));
        // With the link still there the next cycle refuses before its POST.
        let again = finish(start(&s, &m, &config(&s, &alice, &home)));
        assert_eq!((again.code, m.token_requests()), (5, 1), "{}\n{}", again.stdout, again.stderr);
        assert_eq!(std::fs::read(&victim).unwrap(), original.as_bytes());
    }
}

#[test]
fn auth_json_swapped_for_a_huge_file_during_the_post_is_refused_unread() {
    if !require_root("auth_json_swapped_for_a_huge_file_during_the_post_is_refused_unread") {
        return;
    }
    const HUGE: u64 = 64 << 20;
    let alice = ensure_user("caa-alice");
    let (m, s) = (MockServer::start(MockConfig::default()), Scratch::new());
    let c = m.issue_family("alice-acct");
    let home = home_for(&s, &alice, Some(&auth_json(&c, OLD)));
    m.push_fault(Fault::Delay(SHELL_WINDOW));
    let child = start(&s, &m, &config(&s, &alice, &home));
    wait_in_post(&m);
    // Sparse: costs no disk, but reading it whole would cost 64 MiB of memory.
    as_user(&alice, &home, &format!("truncate -s {HUGE} big && chmod 600 big && mv -f big auth.json"), &[]);
    assert_eq!(m.successful_refreshes(), 0, "the swap landed while the POST was held");
    let before = std::fs::metadata(home.join("auth.json")).unwrap();
    let (r, peak_kib) = finish_measured(child);
    println!("huge auth.json ({HUGE} bytes): agent + worker peak RSS {peak_kib} KiB");
    assert_reports_spent(&r, "larger than 1 MiB");
    let after = std::fs::metadata(home.join("auth.json")).unwrap();
    assert_eq!((after.ino(), after.len(), after.modified().unwrap()), (before.ino(), HUGE, before.modified().unwrap()));
    // Judged by its size, not read: agent and worker peak far below the file's 64 MiB.
    assert!(peak_kib < 32 << 10, "peak RSS {peak_kib} KiB: the huge file was read");
    assert_home_clean(&home, &alice, "");
    assert_eq!((m.token_requests(), m.successful_refreshes()), (1, 1));
}
