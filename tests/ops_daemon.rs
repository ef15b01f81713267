//! Operator features under the daemon, on a private dbus-daemon with the mock token
//! endpoint: a D-Bus Refresh (through `codex-authctl`) rewrites the Prometheus textfile
//! atomically and runs `on_success` / `on_failure` as the account's user with exactly the
//! documented environment; a hook that hangs until its timeout holds up neither the bus,
//! nor the caller, nor another account's refresh (max_parallel = 1).

mod support;

use mock_openai::{Fault, MockConfig, MockServer};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::dbus::*;
use support::ops::*;
use support::*;
use zbus::Connection;

struct World {
    m: MockServer,
    s: Scratch,
    bus: PrivateBus,
    prom: PathBuf,
}

impl World {
    fn new() -> World {
        let s = Scratch::new();
        let bus = PrivateBus::start(s.path());
        let prom_dir = s.path().join("node-exporter");
        std::fs::create_dir_all(&prom_dir).unwrap();
        World { m: MockServer::start(MockConfig::default()), prom: prom_dir.join("codex_auth_agent.prom"), s, bus }
    }

    /// A config with the textfile, one worker at a time, a codex that does not exist (a
    /// preflight fails at once) and `accounts`.
    fn config(&self, accounts: &str) -> PathBuf {
        self.s.config(&format!(
            "metrics_textfile = \"{}\"\nmax_parallel = 1\ncodex_bin = \"{}\"\n\n[defaults]\nrequest_timeout = \
                \"3s\"\n{accounts}",
            self.prom.display(),
            self.s.path().join("no-codex").display()
        ))
    }

    async fn conn(&self) -> Connection {
        zbus::connection::Builder::address(self.bus.address.as_str()).unwrap().build().await.unwrap()
    }

    fn ctl(&self, args: &[&str]) -> Run {
        let mut c = ctl(&self.bus);
        c.args(args);
        run(c)
    }

    /// The textfile, parsed, after checking it is 0644, owned by us (the daemon's uid),
    /// and alone in its directory (no temp file left behind).
    fn metrics(&self) -> BTreeMap<String, f64> {
        let md = std::fs::metadata(&self.prom).unwrap();
        assert_eq!((md.mode() & 0o7777, md.uid()), (0o644, nix::unistd::geteuid().as_raw()));
        let names: Vec<_> =
            std::fs::read_dir(self.prom.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, ["codex_auth_agent.prom"], "no temp file left");
        parse_prom(&std::fs::read_to_string(&self.prom).unwrap())
    }
}

fn account_cfg(name: &str, user: &str, home: &Path, extra: &str) -> String {
    format!("\n[accounts.{name}]\nuser = \"{user}\"\ncodex_home = \"{}\"\n{extra}", home.display())
}

fn series(metric: &str, account: &str) -> String {
    format!("codex_auth_agent_{metric}{{account=\"{account}\"}}")
}

fn outcome_series(account: &str, outcome: &str) -> String {
    format!("codex_auth_agent_last_outcome{{account=\"{account}\",outcome=\"{outcome}\"}}")
}

/// A directory owned by `u` where its hook records what it saw: `<OUTCOME>.uid`,
/// `<OUTCOME>.env`, and one line per run in `runs` (written last).
fn hook_out(s: &Scratch, u: &nix::unistd::User) -> PathBuf {
    let out = s.path().join(format!("out-{}", u.name));
    std::fs::create_dir_all(&out).unwrap();
    chown_r(&out, u.uid.as_raw(), u.gid.as_raw());
    out
}

fn file_rt(home: &Path) -> String {
    read_json(&home.join("auth.json"))["tokens"]["refresh_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_dbus_refresh_updates_the_textfile_and_runs_the_hooks_as_the_account_user() {
    if !require_root("a_dbus_refresh_updates_the_textfile_and_runs_the_hooks_as_the_account_user") {
        return;
    }
    let w = World::new();
    let (alice, bob) = (ensure_user("caa-alice"), ensure_user("caa-bob"));
    let (ca, cb) = (w.m.issue_family("acct-alice"), w.m.issue_family("acct-bob"));
    let ha = home_for(&w.s, &alice, Some(&auth_json(&ca, &recent())));
    let hb = home_for(&w.s, &bob, Some(&auth_json(&cb, &recent())));
    let hook = script(
        &w.s,
        "record.sh",
        "id -u > \"$1/$OUTCOME.uid\"\ntr '\\0' '\\n' < /proc/$$/environ > \"$1/$OUTCOME.env\"\necho \
            \"$OUTCOME\" >> \"$1/runs\"",
    );
    let (oa, ob) = (hook_out(&w.s, &alice), hook_out(&w.s, &bob));
    let hooks =
        |out: &Path| format!("on_success = \"{0} {1}\"\non_failure = \"{0} {1}\"\n", hook.display(), out.display());
    let cfg = w.config(
        &(account_cfg("alice", &alice.name, &ha, &hooks(&oa)) + &account_cfg("bob", &bob.name, &hb, &hooks(&ob))),
    );
    let mut d = AgentDaemon::start(&w.s, &w.m, &cfg, &w.bus);
    let conn = w.conn().await;
    wait_state(&conn, "alice", "ok").await;
    wait_state(&conn, "bob", "ok").await;

    // The start-up pass found both fresh: recorded in the textfile, no hook.
    let before = ino(&w.prom);
    let m = w.metrics();
    for who in ["alice", "bob"] {
        assert_eq!(m[&outcome_series(who, "fresh")], 1.0, "{m:?}");
        assert_eq!(m[&series("consecutive_failures", who)], 0.0);
    }

    // A D-Bus Refresh: the file is replaced (a new inode) with alice's new state.
    let r = w.ctl(&["refresh", "alice", "--force"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("alice: refreshed"), "{}", r.stdout);
    assert_ne!(ino(&w.prom), before, "replaced by a rename");
    let v = view(&conn, "alice").await;
    let m = w.metrics();
    assert_eq!(m[&outcome_series("alice", "refreshed")], 1.0, "{m:?}");
    assert_eq!(m[&outcome_series("alice", "fresh")], 0.0);
    assert_eq!(m[&outcome_series("bob", "fresh")], 1.0, "bob's series stay");
    assert_eq!(m[&series("access_token_expiry_timestamp_seconds", "alice")], v.access_token_expires_at as f64);
    assert_eq!(m[&series("last_refresh_timestamp_seconds", "alice")], v.last_refresh as f64);
    assert_eq!(m[&series("consecutive_failures", "alice")], 0.0);
    assert!(!m.contains_key(&series("runner_ok", "alice")), "never preflighted: {m:?}");

    // on_success ran as caa-alice, with exactly the documented environment.
    wait_for_text(&oa.join("runs"), |t| t == "refreshed\n");
    let uid = std::fs::read_to_string(oa.join("refreshed.uid")).unwrap();
    assert_eq!(uid.trim(), alice.uid.to_string());
    let env = read_env(&oa.join("refreshed.env"));
    assert_eq!(keys(&env), HOOK_ENV_KEYS, "{env:?}");
    assert_eq!((env["ACCOUNT"].as_str(), env["OUTCOME"].as_str()), ("alice", "refreshed"));
    assert_eq!((env["FAILURE_CLASS"].as_str(), env["HOME"].clone()), ("", alice.dir.display().to_string()));

    // A permanent failure: on_failure with class and reason; the textfile counts it.
    w.m.push_fault_for("acct-alice", Fault::refresh_token_expired());
    let r = w.ctl(&["refresh", "alice", "--force"]);
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    let v = wait_state(&conn, "alice", "failed_permanent").await;
    let m = w.metrics();
    assert_eq!(m[&outcome_series("alice", "failed")], 1.0, "{m:?}");
    assert_eq!(m[&outcome_series("alice", "refreshed")], 0.0);
    assert_eq!(m[&series("consecutive_failures", "alice")], 1.0);
    assert_eq!(m[&series("access_token_expiry_timestamp_seconds", "alice")], v.access_token_expires_at as f64);
    wait_for_text(&oa.join("runs"), |t| t.lines().count() == 2);
    let env = read_env(&oa.join("failed.env"));
    assert_eq!(keys(&env), HOOK_ENV_KEYS, "{env:?}");
    assert_eq!((env["OUTCOME"].as_str(), env["FAILURE_CLASS"].as_str()), ("failed", "permanent"));
    assert_eq!(env["REASON"], v.last_error, "the reason the daemon recorded");
    assert!(!env["REASON"].is_empty());
    // Quarantined: further calls send nothing and record nothing, so no more hooks.
    let r = w.ctl(&["refresh", "alice", "--force"]);
    assert_eq!(r.code, 3, "{}", r.stdout);
    assert!(r.stdout.contains("quarantined"), "{}", r.stdout);

    // The runner state: a preflight (codex missing) fails, bob's on_failure runs as caa-bob.
    let r = w.ctl(&["preflight", "bob"]);
    assert_ne!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(w.metrics()[&series("runner_ok", "bob")], 0.0);
    wait_for_text(&ob.join("runs"), |t| t == "preflight_failed\n");
    assert_eq!(std::fs::read_to_string(ob.join("preflight_failed.uid")).unwrap().trim(), bob.uid.to_string());
    let env = read_env(&ob.join("preflight_failed.env"));
    assert_eq!((keys(&env), env["ACCOUNT"].as_str()), (HOOK_ENV_KEYS.to_vec(), "bob"));

    // SIGTERM waits for pending hooks: after it, alice's hooks ran exactly once each.
    assert_eq!(d.stop(), 0);
    assert_eq!(std::fs::read_to_string(oa.join("runs")).unwrap(), "refreshed\nfailed\n");
    let mut all = [secrets(&ca), secrets(&cb)].concat();
    all.extend([file_rt(&ha), file_rt(&hb)]);
    let texts: Vec<(String, String)> = [&oa, &ob]
        .iter()
        .flat_map(|o| non_credential_files(o))
        .chain([("metrics".into(), std::fs::read_to_string(&w.prom).unwrap()), ("daemon log".into(), d.log_text())])
        .collect();
    let hay: Vec<(&str, &str)> = texts.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    assert_no_secrets(&hay, &all);
}

#[tokio::test]
async fn a_hook_hanging_until_its_timeout_stalls_neither_the_daemon_nor_other_accounts() {
    let w = World::new();
    let (cs, cf) = (w.m.issue_family("acct-slow"), w.m.issue_family("acct-fast"));
    let hs = w.s.codex_home("slow", Some(&auth_json(&cs, &recent())));
    let hf = w.s.codex_home("fast", Some(&auth_json(&cf, &recent())));
    let pid_file = w.s.path().join("sleeper.pid");
    // The sleeper is a grandchild: the timeout must kill the hook's whole group.
    let hang = script(&w.s, "hang.sh", &format!("sleep 600 &\necho $! > {}\nwait", pid_file.display()));
    let slow = format!("on_success = \"{}\"\nhook_timeout = \"30s\"\n", hang.display());
    let cfg = w.config(&(account_cfg("slow", &me(), &hs, &slow) + &account_cfg("fast", &me(), &hf, "")));
    let d = AgentDaemon::start(&w.s, &w.m, &cfg, &w.bus);
    let conn = w.conn().await;
    wait_state(&conn, "slow", "ok").await;
    wait_state(&conn, "fast", "ok").await;

    // The caller gets its answer although the hook hangs.
    let r = w.ctl(&["refresh", "slow", "--force"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("slow: refreshed"), "{}", r.stdout);
    let pid = wait_for_text(&pid_file, |t| t.ends_with('\n')).trim().to_string();
    let alive = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z'))
    };
    assert!(alive(), "the hook is hanging");
    // While it hangs: properties answer, and the other account refreshes although
    // max_parallel = 1 (the hook holds no permit).
    let v = view(&conn, "slow").await;
    assert_eq!((v.state.as_str(), v.last_outcome.as_str()), ("ok", "refreshed"));
    let r = w.ctl(&["refresh", "fast", "--force"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("fast: refreshed"), "{}", r.stdout);
    assert_eq!(w.metrics()[&outcome_series("fast", "refreshed")], 1.0);
    assert_eq!(w.m.token_requests_for("acct-fast"), 1);
    assert!(alive(), "all of the above happened while the hook hung");
    assert!(!d.log_text().contains("killed"), "{}", d.log_text());

    // At its timeout the hook's group is killed, and the outcome stands.
    let log = wait_for_text(&d.log, |t| t.contains("still running after 30s and killed"));
    let line = log.lines().find(|l| l.contains("killed")).unwrap();
    assert!(line.contains("account=slow") && line.contains("on_success hook"), "{line}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!alive(), "the hook's sleeper {pid} survived");
    assert_eq!(view(&conn, "slow").await.last_outcome, "refreshed");
}

/// With nothing to record the daemon still rewrites the textfile every metrics_interval,
/// so `codex_auth_agent_textfile_timestamp_seconds` going stale means the daemon stopped
/// (the CodexAuthAgentDown alert); the account's status is not touched by it.
#[test]
fn the_daemon_rewrites_the_textfile_every_metrics_interval_with_nothing_to_record() {
    let w = World::new();
    let c = w.m.issue_family("acct-idle");
    let home = w.s.codex_home("idle", Some(&auth_json(&c, &recent())));
    let cfg = w.s.config(&format!(
        "metrics_textfile = \"{}\"\nmetrics_interval = \"1s\"\n{}",
        w.prom.display(),
        account_cfg("idle", &me(), &home, "preflight = false\n")
    ));
    let mut d = AgentDaemon::start(&w.s, &w.m, &cfg, &w.bus);
    let stamp = |text: &str| parse_prom(text).get("codex_auth_agent_textfile_timestamp_seconds").copied();
    let first = stamp(&wait_for_text(&w.prom, |t| stamp(t).is_some())).unwrap();
    let status = w.s.state_dir().join("accounts/idle/status.json");
    let attempt = wait_for_text(&status, |t| t.contains("\"last_attempt\""));
    let later = stamp(&wait_for_text(&w.prom, |t| stamp(t).is_some_and(|s| s >= first + 2.0))).unwrap();
    assert!(later >= first + 2.0);
    assert_eq!(std::fs::read_to_string(&status).unwrap(), attempt, "a heartbeat records no outcome");
    assert_eq!(w.m.token_requests(), 0, "fresh: no token request");
    assert_eq!(d.stop(), 0);
    let stopped = stamp(&std::fs::read_to_string(&w.prom).unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(stamp(&std::fs::read_to_string(&w.prom).unwrap()), Some(stopped), "a stopped daemon writes nothing");
}
