//! Crash consistency: refresh cycles that die at every named step
//! (`CODEX_AUTH_AGENT_FAULT`, see src/fault.rs) or are SIGKILLed at a random moment, and
//! what each leaves on disk; plus ENOSPC on a tiny tmpfs (root). Figures: docs/RELIABILITY.md.

mod support;

use codex_auth_agent::core::authfile::AuthFile;
use mock_openai::{MockConfig, MockServer};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::*;

const STEPS: [&str; 5] = ["after_lock", "after_read", "after_post", "after_temp_write", "after_rename"];
/// Accounts refreshed in parallel, and cycles each: ≥ 1 000 cycles in all.
const ACCOUNTS: usize = 4;
const CYCLES_PER_ACCOUNT: usize = 250;
const TEMP_PREFIX: &str = ".auth.json.tmp-caa-";

/// How a cycle ended on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    /// The rotated token is on disk and live at the mock.
    Rotated,
    /// The old token is still on disk and still live (the crash came before the POST).
    Untouched,
    /// The POST happened (the mock rotated) but the crash came before the rename: the old,
    /// now spent token is on disk and its successor is kept (pending.json); the next
    /// cycle writes it without a request.
    Kept,
    /// A kill between the token response and keeping it (a few instructions): the new
    /// token is lost with the process. Re-seeded to go on.
    Lost,
}

fn temps(home: &Path) -> BTreeSet<String> {
    std::fs::read_dir(home)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|n| n.starts_with(TEMP_PREFIX))
        .collect()
}

fn on_disk_token(home: &Path) -> String {
    let f = home.join("auth.json");
    let bytes = std::fs::read(&f).unwrap();
    let auth = AuthFile::parse(&bytes, &f).unwrap_or_else(|e| panic!("auth.json does not parse: {e}"));
    let md = std::fs::metadata(&f).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o600, "auth.json mode");
    assert_eq!(md.uid(), nix::unistd::geteuid().as_raw(), "auth.json owner");
    auth.refresh_token().expect("a refresh token").to_string()
}

fn seed(m: &MockServer, home: &Path, account: &str) -> String {
    let c = m.issue_family(account);
    let f = home.join("auth.json");
    std::fs::write(&f, auth_json(&c, OLD)).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    c.refresh_token
}

fn refresh_cmd(s: &Scratch, m: &MockServer, home: &Path, xdg: &Path) -> Command {
    let mut cmd = agent(s, m);
    cmd.env("XDG_STATE_HOME", xdg)
        .current_dir(s.path())
        .args(["refresh", "--force", "--json", "--codex-home"])
        .arg(home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

type Counts = BTreeMap<(String, End), u64>;

/// One account's cycles; returns (kind, end) counts.
fn crash_cycles(s: &Scratch, m: &MockServer, idx: usize, cycles: usize) -> Counts {
    let account = format!("crash-{idx}");
    let home = s.codex_home(&format!("home-{idx}"), None);
    let xdg = s.path().join(format!("xdg-{idx}"));
    let mut token = seed(m, &home, &account);
    let mut counts = Counts::new();
    let mut rng = fastrand::Rng::with_seed(0xC0DE_0000 + idx as u64);
    for cycle in 0..cycles {
        let old_temps = temps(&home);
        let requests = m.token_requests_for(&account);
        let kind = match rng.usize(0..7) {
            i @ 0..5 => STEPS[i].to_string(),
            _ => "sigkill".to_string(),
        };
        let mut cmd = refresh_cmd(s, m, &home, &xdg);
        let status = if kind == "sigkill" {
            let mut child = cmd.spawn().unwrap();
            std::thread::sleep(Duration::from_micros(rng.u64(0..30_000)));
            let _ = child.kill();
            let st = child.wait().unwrap();
            // A request the killed process already sent is still rotated after the kill:
            // let the mock handle every connection made so far before judging the disk.
            assert!(m.settle(Duration::from_secs(30)), "the mock did not settle");
            st
        } else {
            cmd.env("CODEX_AUTH_AGENT_FAULT", &kind).status().unwrap()
        };
        let ctx = format!("account {idx} cycle {cycle} ({kind}, {status:?})");
        if kind != "sigkill" {
            assert_eq!(status.signal(), Some(libc::SIGABRT), "{ctx}: the fault hook did not fire");
        }
        let now_temps = temps(&home);
        assert!(now_temps.len() <= 1, "{ctx}: temps {now_temps:?}");
        let cleaned = !matches!(kind.as_str(), "sigkill" | "after_lock");
        if cleaned {
            assert!(old_temps.is_disjoint(&now_temps), "{ctx}: a temp older than one cycle survived {now_temps:?}");
        }
        let posted = m.token_requests_for(&account) - requests;
        let disk = on_disk_token(&home);
        let pending = xdg.join("codex-auth-agent/accounts/default/pending.json");
        let end = if disk != token {
            assert!(m.is_live_refresh_token(&disk), "{ctx}: a changed token on disk that the mock rejects");
            End::Rotated
        } else if m.is_live_refresh_token(&disk) {
            End::Untouched
        } else {
            assert_eq!(posted, 1, "{ctx}: the token on disk is dead but this cycle sent no request");
            if pending.exists() { End::Kept } else { End::Lost }
        };
        let expected = match kind.as_str() {
            "after_lock" | "after_read" => Some((End::Untouched, 0)),
            "after_post" | "after_temp_write" => Some((End::Kept, 1)),
            "after_rename" => Some((End::Rotated, 1)),
            _ => None,
        };
        if let Some(want) = expected {
            assert_eq!((end, posted), want, "{ctx}");
        }
        if kind == "after_temp_write" {
            assert_eq!(now_temps.len(), 1, "{ctx}: the fsynced temp should be left for the next cycle");
        }
        *counts.entry((kind, end)).or_default() += 1;
        // A kill after the rename but before the copy was dropped leaves pending.json too.
        token = match end {
            End::Kept | End::Rotated if pending.exists() => {
                // The next cycle writes (or finds written) the kept credential, sends nothing.
                let before = m.token_requests_for(&account);
                let out = refresh_cmd(s, m, &home, &xdg).status().unwrap();
                assert_eq!(out.code(), Some(0), "{ctx}: the recovery cycle failed");
                assert_eq!(m.token_requests_for(&account), before, "{ctx}: the recovery sent a request");
                let now = on_disk_token(&home);
                assert!(m.is_live_refresh_token(&now), "{ctx}: the recovered token is not live");
                assert!(!pending.exists(), "{ctx}: pending.json left after the recovery");
                now
            }
            End::Lost => seed(m, &home, &account),
            _ => disk,
        };
    }
    // A clean cycle at the end: succeeds, rotates, and leaves no temp behind.
    let out = refresh_cmd(s, m, &home, &xdg).status().unwrap();
    assert_eq!(out.code(), Some(0), "account {idx}: the final clean cycle failed");
    let disk = on_disk_token(&home);
    assert!(disk != token && m.is_live_refresh_token(&disk));
    assert!(temps(&home).is_empty(), "account {idx}: temps left at the end");
    counts
}

#[test]
fn a_thousand_crashed_cycles_leave_a_parseable_private_file_with_a_known_token() {
    let (m, s) = (MockServer::start(MockConfig::default()), Scratch::new());
    let started = Instant::now();
    let all = Mutex::new(Counts::new());
    std::thread::scope(|t| {
        for idx in 0..ACCOUNTS {
            let (m, s, all) = (&m, &s, &all);
            t.spawn(move || {
                let c = crash_cycles(s, m, idx, CYCLES_PER_ACCOUNT);
                let mut all = all.lock().unwrap();
                for (k, v) in c {
                    *all.entry(k).or_default() += v;
                }
            });
        }
    });
    let all = all.into_inner().unwrap();
    let total: u64 = all.values().sum();
    assert_eq!(total, (ACCOUNTS * CYCLES_PER_ACCOUNT) as u64);
    println!("crash cycles: {total} in {:.1} s ({ACCOUNTS} accounts in parallel)", started.elapsed().as_secs_f64());
    let mut by_end: BTreeMap<End, u64> = BTreeMap::new();
    for ((kind, end), n) in &all {
        println!("  {kind:<17} {end:?}: {n}");
        *by_end.entry(*end).or_default() += n;
    }
    for (end, n) in &by_end {
        println!("  total {end:?}: {n}");
    }
    // Every end state but the rare Lost must actually occur, or the suite is not
    // exercising what it claims.
    for end in [End::Rotated, End::Untouched, End::Kept] {
        assert!(by_end.contains_key(&end), "{end:?} never happened: {by_end:?}");
    }
    assert_eq!(m.reuse_detections(), 0, "a spent token was sent again");
    assert!(all.keys().any(|(k, _)| k == "sigkill"));
}

#[test]
fn enospc_leaves_the_old_file_and_no_temp() {
    if !require_root("enospc_leaves_the_old_file_and_no_temp") {
        return;
    }
    let (m, s) = (MockServer::start(MockConfig::default()), Scratch::new());
    let mnt = s.path().join("tiny");
    std::fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", "size=16k,mode=0700", "tmpfs"]).arg(&mnt).status();
    if !st.is_ok_and(|s| s.success()) {
        skipped("enospc_leaves_the_old_file_and_no_temp", "cannot mount a tmpfs here");
        return;
    }
    let _guard = TinyFs(mnt.clone());
    let home = mnt.join("codex");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let token = seed(&m, &home, "enospc");
    // Fill the rest, so auth.json fits but a second copy does not.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(mnt.join("filler")).unwrap();
        while f.write_all(&[0u8; 512]).is_ok() {}
    }
    let before = std::fs::read(home.join("auth.json")).unwrap();
    let xdg = s.path().join("xdg");
    let out = refresh_cmd(&s, &m, &home, &xdg).stderr(Stdio::piped()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "transient failure expected: {stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert_eq!(std::fs::read(home.join("auth.json")).unwrap(), before, "auth.json byte-identical");
    assert!(temps(&home).is_empty(), "temp removed: {:?}", temps(&home));
    // Found before the POST (tests/spend.rs follows it to the recovery).
    assert_eq!(m.token_requests_for("enospc"), 0);
    assert_eq!(on_disk_token(&home), token);
}
