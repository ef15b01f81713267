//! Secret-hygiene sweep (root): canary tokens go through every path — refresh (CLI and
//! daemon), seed, Store, preflight and app-server with the real Codex, hooks, and every
//! failure (transient, permanent, unsafe file, bad config, a token endpoint or backend that
//! echoes the tokens back in its error bodies) — and no token, 12-character fragment,
//! JWT segment or base64 form of one may show up in: journal records (a fake journald on
//! the real socket path, in a private mount namespace), stdout/stderr, the daemon's log,
//! every file in the state dir, the sidecar and every other non-credential file in
//! CODEX_HOME, D-Bus properties, or the argv/environment of any process the agent starts
//! (all descendants, sampled from /proc while they run). Every such process must also
//! have RLIMIT_CORE 0, and every agent process running as an account user must be
//! non-dumpable.

mod support;

use codex_auth_agent::api::names::{ACCOUNT_IFACE, MANAGER_IFACE, MANAGER_PATH};
use mock_openai::Fault;
use serde_json::json;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::canary::Canaries;
use support::codex::{World, codex_bin};
use support::dbus::{AgentDaemon, PrivateBus, ctl};
use support::journal::FakeJournal;
use support::procwatch::{ProcInfo, ProcWatch, running};
use support::*;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

/// Hooks that live long enough to be sampled (argv: absolute program, no shell).
const HOOKS: &str = "on_success = \"/bin/sleep 0.3\"\non_failure = \"/bin/sleep 0.3\"\n";

/// Everything one sweep collected, checked at the end.
struct Sweep {
    canaries: Canaries,
    journal: FakeJournal,
    outputs: Vec<(String, Vec<u8>)>,
    samples: Vec<ProcInfo>,
}

impl Sweep {
    fn new(w: &World) -> Sweep {
        Sweep {
            canaries: Canaries::new(),
            journal: FakeJournal::start(w.scratch.path()),
            outputs: vec![],
            samples: vec![],
        }
    }

    /// Run `cmd` in the journal namespace, sampling it and everything it starts.
    fn run(&mut self, label: &str, mut cmd: Command) -> Run {
        self.journal.attach(&mut cmd);
        self.spawn_watched(label, cmd)
    }

    /// [`Sweep::run`] as `user` (dropped after the namespace is set up: Command::uid
    /// would drop before it, and an unprivileged process cannot mount).
    fn run_as(&mut self, label: &str, mut cmd: Command, user: &nix::unistd::User) -> Run {
        self.journal.attach(&mut cmd);
        let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
        // SAFETY: only async-signal-safe syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let ok = libc::setgroups(0, std::ptr::null()) == 0 && libc::setgid(gid) == 0 && libc::setuid(uid) == 0;
                if ok { Ok(()) } else { Err(std::io::Error::last_os_error()) }
            });
        }
        self.spawn_watched(label, cmd)
    }

    fn spawn_watched(&mut self, label: &str, mut cmd: Command) -> Run {
        let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let watch = ProcWatch::start(child.id());
        let out = child.wait_with_output().unwrap();
        // Not the test's own fork before it exec'ed the command.
        let me = std::env::current_exe().unwrap();
        self.samples.extend(watch.finish().into_iter().filter(|s| s.exe.as_deref() != Some(me.as_path())));
        self.outputs.push((format!("{label}: stdout"), out.stdout.clone()));
        self.outputs.push((format!("{label}: stderr"), out.stderr.clone()));
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Every token now in `home`'s auth.json becomes a canary too (rotations mint new ones).
    fn learn(&mut self, home: &Path) {
        if let Ok(b) = std::fs::read(home.join("auth.json")) {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) {
                for k in ["id_token", "access_token", "refresh_token"] {
                    if let Some(t) = v["tokens"][k].as_str() {
                        self.canaries.add_token(k, t);
                    }
                }
            }
        }
    }

    /// The checks every sweep ends with; `dirs` are scanned for non-credential files.
    fn assert_clean(&self, dirs: &[&Path], want_codex: bool) {
        let journal = self.journal.records();
        assert!(
            journal.iter().any(|r| String::from_utf8_lossy(r).contains("ACCOUNT=alice")),
            "the fake journal received the agent's records ({} records)",
            journal.len()
        );
        let files: Vec<(String, String)> = dirs.iter().flat_map(|d| non_credential_files(d)).collect();
        assert!(files.iter().any(|(n, _)| n.ends_with("status.json")), "status files were scanned");
        assert!(files.iter().any(|(n, _)| n.ends_with("auth_refresh_status.json")), "the sidecar was scanned");
        let mut places: Vec<(String, &[u8])> = Vec::new();
        places.extend(journal.iter().enumerate().map(|(i, r)| (format!("journal record {i}"), r.as_slice())));
        places.extend(self.outputs.iter().map(|(n, b)| (n.clone(), b.as_slice())));
        places.extend(files.iter().map(|(n, t)| (n.clone(), t.as_bytes())));
        let proc_texts: Vec<(String, String)> =
            self.samples.iter().map(|s| (format!("/proc/{} ({:?}) cmdline/environ", s.pid, s.exe), s.text())).collect();
        places.extend(proc_texts.iter().map(|(n, t)| (n.clone(), t.as_bytes())));
        self.canaries.assert_absent(places);
        self.assert_processes(want_codex);
    }

    /// Core dumps are off for everything the agent started; its own processes running as
    /// an account user are non-dumpable.
    fn assert_processes(&self, want_codex: bool) {
        let bin = std::fs::canonicalize(BIN).unwrap();
        let workers: Vec<_> =
            running(&self.samples, &bin).filter(|s| s.argv.get(1).map(String::as_str) == Some("worker")).collect();
        assert!(workers.iter().any(|s| s.uid != 0), "a worker was sampled after its privilege drop");
        let sleeper = std::fs::canonicalize("/bin/sleep").unwrap();
        assert!(running(&self.samples, &sleeper).next().is_some(), "a hook was sampled");
        let codex = std::fs::canonicalize(codex_bin()).unwrap();
        assert_eq!(running(&self.samples, &codex).next().is_some(), want_codex, "Codex was sampled");
        let no_core = |s: &ProcInfo| s.core_limit.as_ref().is_some_and(|(a, b)| a == "0" && b == "0");
        // What the agent starts inherits RLIMIT_CORE 0 from it: every look shows it.
        for s in self.samples.iter().filter(|s| s.exe.as_deref() != Some(bin.as_path())) {
            assert!(no_core(s), "RLIMIT_CORE of {} {:?}: {:?}", s.pid, s.argv, s.core_limit);
        }
        // The agent's own processes set RLIMIT_CORE 0 and PR_SET_DUMPABLE 0 first thing in
        // main(); right after exec neither holds yet, and a process that exits at once
        // (a bad config) may only be seen then. So: every look of a worker after its
        // privilege drop (which follows the hardening), and at least one look of every
        // agent process that started another (it had passed main by then).
        let hard = |s: &ProcInfo| no_core(s) && (s.uid == 0 || s.proc_owner == 0);
        for s in workers.iter().filter(|s| s.uid != 0) {
            assert!(hard(s), "worker {} as uid {} can dump core: {:?}", s.pid, s.uid, s.core_limit);
        }
        let parents: std::collections::BTreeSet<i32> = self.samples.iter().map(|s| s.ppid).collect();
        let mut hardened: std::collections::BTreeMap<i32, bool> = Default::default();
        for s in running(&self.samples, &bin).filter(|s| parents.contains(&s.pid)) {
            *hardened.entry(s.pid).or_insert(false) |= hard(s);
        }
        assert!(!hardened.is_empty(), "agent processes that started others were sampled");
        let bad: Vec<_> = hardened.iter().filter(|(_, h)| !**h).collect();
        assert!(bad.is_empty(), "agent processes never seen without core dumps: {bad:?}");
        println!(
            "sampled {} processes ({} looks): {} agent, {} Codex, {} hooks",
            self.samples.iter().map(|s| s.pid).collect::<std::collections::BTreeSet<_>>().len(),
            self.samples.len(),
            running(&self.samples, &bin).count(),
            running(&self.samples, &codex).count(),
            running(&self.samples, &sleeper).count(),
        );
    }
}

/// alice's account section: caa-alice's CODEX_HOME, a seed file, hooks, `extra`.
fn alice_section(home: &Path, seed: &Path, extra: &str) -> String {
    format!(
        "[accounts.alice]\nuser = \"caa-alice\"\ncodex_home = \"{}\"\nseed = \"{}\"\n{HOOKS}{extra}",
        home.display(),
        seed.display()
    )
}

/// A root-only seed file holding `auth`.
fn write_seed(w: &World, auth: &str) -> PathBuf {
    let p = w.scratch.path().join("etc/seeds/alice.json");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, auth).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// Token-endpoint answers that echo the credential back: in an error code, a plain body,
/// an HTML page, a malformed success; each must fail transiently, echoing nothing.
fn echo_faults(rt: &str, at: &str, id: &str) -> Vec<(Fault, i32)> {
    let all = format!("{rt} {at} {id}");
    vec![
        (Fault::json(400, &json!({"error": {"code": rt, "message": all}})), 4),
        (Fault::json(400, &json!({"error": at, "error_description": all})), 4),
        (Fault::plain(500, all.clone()), 4),
        (Fault::status(200, format!("<html>{all}</html>"), "text/html"), 4),
        (Fault::json(200, &json!({"access_token": 7, "refresh_token": rt, "id_token": all})), 4),
        (Fault::json(401, &json!({"error": {"code": "refresh_token_expired", "message": all}})), 3),
    ]
}

fn cli(w: &World, cfg: &Path, args: &[&str]) -> Command {
    let mut c = w.agent();
    c.arg("--config").arg(cfg).args(args);
    c
}

#[test]
fn every_cli_path_keeps_tokens_out_of_logs_files_and_processes() {
    if !require_root("every_cli_path_keeps_tokens_out_of_logs_files_and_processes") {
        return;
    }
    let w = World::new();
    let mut sw = Sweep::new(&w);
    let alice = ensure_user("caa-alice");
    let first = w.mock.issue_family("acct-alice");
    sw.canaries.add_creds(&first);
    let home = home_for(&w.scratch, &alice, Some(&auth_json(&first, OLD)));
    let seeded = w.mock.issue_family("acct-alice");
    sw.canaries.add_creds(&seeded);
    let seed = write_seed(&w, &auth_json(&seeded, OLD));
    let cfg = w.config("", &alice_section(&home, &seed, ""));
    // Slow answers keep workers, hooks and Codex alive long enough to be sampled.
    w.mock.set_latency(Duration::from_millis(300));

    // Seed installed, then refreshed; a forced refresh.
    let r = sw.run("refresh (seed)", cli(&w, &cfg, &["refresh", "--account", "alice", "--json"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    sw.learn(&home);
    let r = sw.run("refresh --force", cli(&w, &cfg, &["refresh", "--account", "alice", "--force", "--json"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    sw.learn(&home);

    // Failures: transient, echoing endpoints, permanent.
    w.mock.set_sticky_fault(Some(Fault::service_unavailable()));
    let r = sw.run("503", cli(&w, &cfg, &["refresh", "--account", "alice", "--force", "--json"]));
    assert_eq!(r.code, 4, "{}", r.stderr);
    let file = read_json(&home.join("auth.json"));
    let tok = |k: &str| file["tokens"][k].as_str().unwrap().to_string();
    for (i, (fault, code)) in
        echo_faults(&tok("refresh_token"), &tok("access_token"), &tok("id_token")).into_iter().enumerate()
    {
        w.mock.set_sticky_fault(Some(fault));
        let r = sw.run(&format!("echo {i}"), cli(&w, &cfg, &["refresh", "--account", "alice", "--force", "--json"]));
        assert_eq!(r.code, code, "echo fault {i}: {}", r.stderr);
    }
    w.mock.set_sticky_fault(None);

    // Unsafe: auth.json swapped for a symlink to a file full of canaries.
    let f = home.join("auth.json");
    let kept = home.with_file_name("kept-auth.json");
    std::fs::rename(&f, &kept).unwrap();
    std::os::unix::fs::symlink(&kept, &f).unwrap();
    let r = sw.run("unsafe", cli(&w, &cfg, &["refresh", "--account", "alice", "--force", "--json"]));
    assert_eq!(r.code, 5, "{}", r.stderr);
    std::fs::remove_file(&f).unwrap();
    std::fs::rename(&kept, &f).unwrap();

    // Bad configs that carry a token: an unknown key, and a token as a value.
    let rt = tok("refresh_token");
    for (i, extra) in [format!("refresh_token = \"{rt}\"\n"), format!("max_age = \"{rt}\"\n")].iter().enumerate() {
        let bad = w.scratch.path().join(format!("bad{i}/config.toml"));
        std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
        std::fs::write(&bad, std::fs::read_to_string(&cfg).unwrap() + extra).unwrap();
        for cmd in [&["check-config"][..], &["refresh", "--account", "alice"]] {
            let r = sw.run(&format!("bad config {i} {cmd:?}"), cli(&w, &bad, cmd));
            assert_eq!(r.code, 78, "{}", r.stderr);
        }
    }

    // Preflight with the real Codex: it works; then the backend echoes the tokens in a 500.
    w.mock.set_sticky_backend_fault(Some(Fault::Delay(Duration::from_millis(800))));
    let r = sw.run("preflight", cli(&w, &cfg, &["preflight", "--account", "alice", "--json"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    sw.learn(&home);
    let file = read_json(&home.join("auth.json"));
    let echo = ["id_token", "access_token", "refresh_token"].map(|k| file["tokens"][k].as_str().unwrap()).join(" ");
    w.mock.set_sticky_backend_fault(Some(Fault::plain(500, echo)));
    let r = sw.run("preflight (echo)", cli(&w, &cfg, &["preflight", "--account", "alice", "--json"]));
    assert_ne!(r.code, 0, "{}", r.stdout);
    w.mock.set_sticky_backend_fault(None);

    // app-server refresh with the real Codex.
    let app = w.scratch.path().join("app/config.toml");
    std::fs::create_dir_all(app.parent().unwrap()).unwrap();
    std::fs::write(&app, std::fs::read_to_string(&cfg).unwrap() + "refresh_method = \"app-server\"\n").unwrap();
    let r = sw.run("app-server", cli(&w, &app, &["refresh", "--account", "alice", "--force", "--json"]));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    sw.learn(&home);

    // Single-user mode as alice herself: the command itself is non-dumpable.
    let state = w.scratch.path().join("alice-state");
    std::fs::create_dir_all(&state).unwrap();
    chown_r(&state, alice.uid.as_raw(), alice.gid.as_raw());
    let mut c = w.agent();
    c.env("XDG_STATE_HOME", &state).args(["refresh", "--force", "--json", "--codex-home"]).arg(&home);
    let r = sw.run_as("single-user as alice", c, &alice);
    assert_eq!(r.code, 0, "{}", r.stderr);
    sw.learn(&home);
    let bin = std::fs::canonicalize(BIN).unwrap();
    let own: Vec<_> = running(&sw.samples, &bin).filter(|s| s.argv.iter().any(|a| a == "--codex-home")).collect();
    assert!(own.iter().any(|s| s.proc_owner == 0), "the command as alice made itself non-dumpable: {own:?}");

    assert!(w.leftovers().is_empty(), "throwaway Codex homes left: {:?}", w.leftovers());
    sw.assert_clean(&[&w.scratch.state_dir(), &state, &home], true);
}

/// Every property of the Manager and of every Account object, as text.
async fn all_properties(address: &str) -> String {
    let conn = zbus::connection::Builder::address(address).unwrap().build().await.unwrap();
    let get = |path: String, iface: &'static str| {
        let conn = conn.clone();
        async move {
            let p = zbus::fdo::PropertiesProxy::builder(&conn)
                .destination(codex_auth_agent::api::names::BUS_NAME)
                .unwrap()
                .path(path)
                .unwrap()
                .build()
                .await
                .unwrap();
            let all: HashMap<String, OwnedValue> =
                p.get_all(zbus::names::InterfaceName::from_static_str_unchecked(iface)).await.unwrap();
            all
        }
    };
    let manager = get(MANAGER_PATH.to_string(), MANAGER_IFACE).await;
    let accounts: Vec<OwnedObjectPath> = manager["Accounts"].try_clone().unwrap().try_into().unwrap();
    assert!(!accounts.is_empty());
    let mut text = format!("{manager:?}");
    for a in accounts {
        let props = get(a.to_string(), ACCOUNT_IFACE).await;
        assert!(props.len() >= 20, "all Account properties: {props:?}");
        text.push_str(&format!("\n{props:?}"));
    }
    text
}

#[tokio::test]
async fn every_daemon_path_keeps_tokens_out_of_logs_files_properties_and_processes() {
    if !require_root("every_daemon_path_keeps_tokens_out_of_logs_files_properties_and_processes") {
        return;
    }
    let w = World::new();
    let mut sw = Sweep::new(&w);
    let bus = PrivateBus::start(w.scratch.path());
    let alice = ensure_user("caa-alice");
    let first = w.mock.issue_family("acct-alice");
    sw.canaries.add_creds(&first);
    let home = home_for(&w.scratch, &alice, Some(&auth_json(&first, &recent())));
    let seed = write_seed(&w, &auth_json(&first, &recent()));
    let cfg = w.config("", &alice_section(&home, &seed, ""));
    w.mock.set_latency(Duration::from_millis(300));
    let journal = &sw.journal;
    let mut d = AgentDaemon::start_from(Path::new(BIN), &w.scratch, &w.mock, &cfg, &bus, |c| {
        journal.attach(c);
        c.env("TMPDIR", w.tmp());
    });
    let watch = ProcWatch::start(d.child.as_ref().unwrap().id());
    let ctl_in = |args: &[&str], stdin: Option<&Path>| {
        let mut c = ctl(&bus);
        c.args(args);
        if let Some(p) = stdin {
            c.stdin(std::fs::File::open(p).unwrap());
        }
        run(c)
    };
    let file = w.scratch.path().join("upload.json");
    // Store (a preflight with the real Codex follows), then Seed.
    let stored = w.mock.issue_family("acct-alice");
    sw.canaries.add_creds(&stored);
    std::fs::write(&file, auth_json(&stored, OLD)).unwrap();
    w.mock.set_sticky_backend_fault(Some(Fault::Delay(Duration::from_millis(800))));
    let r = ctl_in(&["store", "alice"], Some(&file));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let r = ctl_in(&["preflight", "alice"], None);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    w.mock.set_sticky_backend_fault(None);
    sw.learn(&home);
    let seeded = w.mock.issue_family("acct-alice");
    sw.canaries.add_creds(&seeded);
    std::fs::write(&file, auth_json(&seeded, OLD)).unwrap();
    let r = ctl_in(&["seed", "alice"], Some(&file));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    sw.learn(&home);
    // Refreshes, then every failure; the permanent one last (it quarantines).
    for args in [&["refresh", "alice", "--force"][..], &["refresh", "--all", "--force"]] {
        let r = ctl_in(args, None);
        assert_eq!(r.code, 0, "{args:?}: {}\n{}", r.stdout, r.stderr);
        sw.learn(&home);
    }
    let f = read_json(&home.join("auth.json"));
    let tok = |k: &str| f["tokens"][k].as_str().unwrap().to_string();
    let mut faults = vec![(Fault::service_unavailable(), 4)];
    faults.extend(echo_faults(&tok("refresh_token"), &tok("access_token"), &tok("id_token")));
    for (i, (fault, code)) in faults.into_iter().enumerate() {
        w.mock.set_sticky_fault(Some(fault));
        let r = ctl_in(&["refresh", "alice", "--force"], None);
        assert_eq!(r.code, code, "fault {i}: {}\n{}", r.stdout, r.stderr);
        sw.outputs.push((format!("ctl fault {i}"), format!("{}\n{}", r.stdout, r.stderr).into_bytes()));
        // LastError and friends change with every failure: read them after each.
        sw.outputs.push((format!("D-Bus properties after fault {i}"), all_properties(&bus.address).await.into_bytes()));
    }
    w.mock.set_sticky_fault(None);
    let r = ctl_in(&["status", "--json"], None);
    sw.outputs.push(("codex-authctl status --json".into(), r.stdout.into_bytes()));
    sw.outputs.push(("D-Bus properties".into(), all_properties(&bus.address).await.into_bytes()));
    assert_eq!(d.stop(), 0);
    sw.samples.extend(watch.finish());
    sw.outputs.push(("daemon log".into(), d.log_text().into_bytes()));
    let daemon: Vec<_> = sw.samples.iter().filter(|s| s.argv.get(1).map(String::as_str) == Some("--config")).collect();
    assert!(!daemon.is_empty(), "the daemon itself was sampled");
    assert!(w.leftovers().is_empty(), "throwaway Codex homes left: {:?}", w.leftovers());
    sw.assert_clean(&[&w.scratch.state_dir(), &home], true);
}
