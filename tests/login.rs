//! Codex's device-code login against the mock, with the real Codex CLI
//! (`codex login --device-auth --experimental_issuer <mock>`): the mock's endpoints behave
//! the way Codex expects on the approve, deny and never-approved paths, and the login it
//! writes is one the agent can then refresh, while the account's older login is revoked.
//! Then `codex-authctl login` against a running daemon (as root, for a throwaway user):
//! approve installs through Store and lifts the quarantine; deny, timeout and Ctrl-C
//! install nothing and leave no throwaway home and no Codex behind.

mod support;

use mock_openai::{MockConfig, MockServer};
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::dbus::{AgentDaemon, PrivateBus, ctl, view, wait_state};
use support::openbao::Bao;

const SEED: &str = "codex-auth-json-b64-alpha";
const ROTATING: &str = "codex-auth-json-b64-rotating-alpha";
use support::*;

/// `codex login --device-auth` in `home` against the mock (file credential store).
fn codex_login(m: &MockServer, home: &Path) -> Child {
    std::fs::write(home.join("config.toml"), "cli_auth_credentials_store = \"file\"\n").unwrap();
    Command::new(support::codex::codex_bin())
        .args(["login", "--device-auth", "--experimental_issuer", &m.url()])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("CODEX_HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The one user code the mock handed out (Codex asked for it).
fn wait_code(m: &MockServer) -> String {
    let t0 = Instant::now();
    loop {
        if let [code] = m.pending_device_codes().as_slice() {
            return code.clone();
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "Codex never asked for a device code");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn finish(mut c: Child) -> (i32, String, String) {
    let status = c.wait().unwrap();
    let (mut out, mut err) = (String::new(), String::new());
    c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status.code().unwrap_or(-1), out, err)
}

#[test]
fn real_codex_device_login_approved_against_the_mock_revokes_the_old_login() {
    let (m, s) = (MockServer::start(MockConfig::default()), Scratch::new());
    let old = m.issue_family("acct-dev");
    let home = s.codex_home("codex", None);
    let child = codex_login(&m, &home);
    let code = wait_code(&m);
    assert!(m.device_polls(&code) <= 2, "approved within Codex's first polls");
    assert!(m.approve_device(&code, "acct-dev"));
    let (rc, out, err) = finish(child);
    assert_eq!(rc, 0, "{out}{err}");
    assert!(out.contains(&format!("{}/codex/device", m.url())), "the verification URL: {out}");
    assert!(out.contains(&code), "the one-time code: {out}");
    let auth = read_json(&home.join("auth.json"));
    assert_eq!(auth["auth_mode"], "chatgpt");
    assert_eq!(auth["tokens"]["account_id"], "acct-dev");
    assert_eq!(auth["tokens"]["oauth_provenance"]["issuer"], m.url().as_str());
    let rt = auth["tokens"]["refresh_token"].as_str().unwrap();
    assert!(m.is_live_refresh_token(rt), "the new login is live");
    assert!(!m.is_live_refresh_token(&old.refresh_token), "the old family is revoked by the new login");

    // The agent refreshes the new login (the old family's revocation does not touch it).
    let cfg = s.config(&format!(
        "[defaults]\nrequest_timeout = \"5s\"\n[accounts.dev]\nuser = \"{}\"\ncodex_home = \"{}\"\n",
        me(),
        home.display()
    ));
    let mut c = agent(&s, &m);
    c.arg("--config").arg(&cfg).args(["refresh", "--account", "dev", "--force", "--json"]);
    let r = run(c);
    assert_eq!((r.code, r.one()["outcome"].as_str().unwrap()), (0, "refreshed"), "{}", r.stderr);
    assert_eq!(m.reuse_detections(), 0);
}

#[test]
fn real_codex_device_login_denied_or_never_approved_writes_nothing() {
    let (m, s) = (MockServer::start(MockConfig::default()), Scratch::new());
    let home = s.codex_home("denied", None);
    let child = codex_login(&m, &home);
    let code = wait_code(&m);
    assert!(m.deny_device(&code));
    let (rc, out, err) = finish(child);
    assert_eq!(rc, 1, "{out}{err}");
    assert!(err.contains("device auth failed with status 401"), "{err}");
    assert!(!home.join("auth.json").exists());

    // Never approved: Codex keeps polling (every second) and writes nothing until stopped.
    let home = s.codex_home("pending", None);
    let mut child = codex_login(&m, &home);
    let code = wait_code(&m);
    let t0 = Instant::now();
    while m.device_polls(&code) < 3 {
        assert!(t0.elapsed() < Duration::from_secs(20), "Codex stopped polling");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(child.try_wait().unwrap().is_none(), "still waiting for the user");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!home.join("auth.json").exists());
    assert_eq!(m.pending_device_codes(), [code]);
}

/// A daemon on a private bus with one account `alpha` of a throwaway user whose login the
/// mock has revoked (so its start-up refresh fails permanent and quarantines it).
struct World {
    m: MockServer,
    /// Kept for its lifetime: the scratch directory holds the homes, config and bus.
    _scratch: Scratch,
    bus: PrivateBus,
    d: AgentDaemon,
    cfg: std::path::PathBuf,
    home: std::path::PathBuf,
    tmp: std::path::PathBuf,
    prom: std::path::PathBuf,
    uid: u32,
    /// The fleet's refresher when alpha follows.
    refresher: Option<Refresher>,
}

/// Another host, the refresher of a fleet whose follower the World's daemon is.
struct Refresher {
    s: Scratch,
    cfg: std::path::PathBuf,
}

impl Refresher {
    /// One `codex-auth-agent refresh` run (what its timer or daemon would do).
    fn run(&self, m: &MockServer) -> support::Run {
        let mut c = agent(&self.s, m);
        c.arg("--config").arg(&self.cfg).args(["refresh", "--account", "alpha", "--json"]);
        run(c)
    }
}

impl World {
    /// `user` is the test's own, so its check for a Codex left running sees only its own.
    async fn new(user: &str) -> World {
        Self::with(user, None).await
    }

    /// With `bao`: alpha is in a fleet whose login is the Vault seed, its Vault token has
    /// the policy docs/fleet-policies/<policy>.hcl: "refresher" makes it the refresher;
    /// otherwise it follows a refresher run by `codex-auth-agent refresh` (World::refresher).
    async fn with(user: &str, bao: Option<(&Bao, &str)>) -> World {
        let (m, s) = (MockServer::start(MockConfig::default()), Scratch::new());
        let user = ensure_user(user);
        let old = m.issue_family("acct-login");
        if bao.is_none() {
            m.revoke_family("acct-login");
        }
        let follower = bao.is_some_and(|(_, p)| p != "refresher");
        let mut refresher = None;
        let (auth, fleet) = match bao {
            None => (Some(auth_json(&old, OLD)), String::new()),
            Some((bao, policy)) => {
                bao.put(SEED, auth_json(&old, OLD).as_bytes());
                let vault = |s: &Scratch, policy: &str| {
                    let file = format!("{}/docs/fleet-policies/{policy}.hcl", env!("CARGO_MANIFEST_DIR"));
                    bao.cli(&["policy", "write", policy, &file]);
                    let token = s.path().join("vault-token");
                    std::fs::write(&token, bao.token(&[policy])).unwrap();
                    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
                    format!("[vault]\naddress = \"{}\"\ntoken_file = \"{}\"\n", bao.addr, token.display())
                };
                if follower {
                    // The fleet's refresher, another host: mirrors the seed and rotates (version 2).
                    let rs = Scratch::new();
                    let cfg = rs.config(&format!(
                        "host_id = \"vm-refresher\"\n\n{}[accounts.alpha]\nuser = \"{}\"\ncodex_home = \"{}\"\n\
                         fleet_role = \"refresher\"\n",
                        vault(&rs, "refresher"),
                        me(),
                        rs.codex_home("codex", None).display()
                    ));
                    let r = Refresher { s: rs, cfg };
                    let run = r.run(&m);
                    assert_eq!((run.code, run.one()["outcome"].as_str()), (0, Some("refreshed")), "{}", run.stderr);
                    refresher = Some(r);
                }
                (None, vault(&s, policy))
            }
        };
        let home = home_for(&s, &user, auth.as_deref());
        let tmp = s.path().join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
        let prom = s.path().join("codex_auth_agent.prom");
        let role = match bao {
            None => "",
            Some(_) if follower => "fleet_role = \"follower\"\n",
            Some(_) => "fleet_role = \"refresher\"\n",
        };
        let cfg = s.config(&format!(
            "codex_bin = \"{}\"\nmetrics_textfile = \"{}\"\n\n{fleet}[defaults]\ntoken_url = \"{}\"\n\
             preflight = false\n\
             request_timeout = \"5s\"\n\n[accounts.alpha]\nuser = \"{}\"\ncodex_home = \"{}\"\n{role}",
            support::codex::codex_bin().display(),
            prom.display(),
            m.token_url(),
            user.name,
            home.display()
        ));
        let bus = PrivateBus::start(s.path());
        let d = AgentDaemon::start(&s, &m, &cfg, &bus);
        let w = World { m, _scratch: s, bus, d, cfg, home, tmp, prom, uid: user.uid.as_raw(), refresher };
        let conn = w.conn().await;
        if follower {
            // It installed the rotating key's version 2: a working follower.
            assert_eq!(wait_state(&conn, "alpha", "ok").await.store_version, 2);
            return w;
        }
        if bao.is_some() {
            // The fleet runs (seed mirrored and rotated: version 2), then its login dies.
            wait_state(&conn, "alpha", "ok").await;
            w.m.revoke_family("acct-login");
            let mut c = ctl(&w.bus);
            c.args(["refresh", "alpha", "--force"]);
            assert_eq!(run(c).code, 3, "a revoked login fails permanent");
        }
        wait_state(&conn, "alpha", "failed_permanent").await;
        w
    }

    async fn conn(&self) -> zbus::Connection {
        zbus::connection::Builder::address(self.bus.address.as_str()).unwrap().build().await.unwrap()
    }

    fn login(&self, extra: &[&str]) -> Child {
        let mut c = ctl(&self.bus);
        c.env("TMPDIR", &self.tmp)
            .args(["login", "alpha", "--config"])
            .arg(&self.cfg)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn().unwrap()
    }

    /// Nothing left in TMPDIR and no Codex of the user still running.
    fn assert_clean(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.tmp).unwrap().flatten().map(|e| e.path()).collect();
        assert!(left.is_empty(), "throwaway homes left: {left:?}");
        let codex = support::codex::codex_bin().to_path_buf();
        for p in std::fs::read_dir("/proc").unwrap().flatten() {
            let exe = std::fs::read_link(p.path().join("exe")).ok();
            let uid = std::fs::metadata(p.path()).map(|m| std::os::unix::fs::MetadataExt::uid(&m)).ok();
            assert!(!(exe.as_ref() == Some(&codex) && uid == Some(self.uid)), "a Codex of the user still runs: {p:?}");
        }
    }
}

#[tokio::test]
async fn authctl_login_approved_installs_through_store_and_lifts_the_quarantine() {
    if !require_root("authctl_login_approved_installs_through_store_and_lifts_the_quarantine") {
        return;
    }
    let mut w = World::new("caa-login-ok").await;
    let before = std::fs::read(w.home.join("auth.json")).unwrap();
    assert!(read(&w.prom).contains("codex_auth_agent_needs_login{account=\"alpha\"} 1\n"));
    let child = w.login(&[]);
    let code = wait_code(&w.m);
    assert!(w.m.approve_device(&code, "acct-login"));
    let (rc, out, err) = finish(child);
    assert_eq!(rc, 0, "{out}{err}");
    // Codex's instructions reach the caller's terminal (stderr), the answer stdout.
    assert!(err.contains(&format!("{}/codex/device", w.m.url())) && err.contains(&code), "relayed: {err}");
    assert!(out.contains("alpha: logged in; installed: fresh"), "{out}");
    let auth = std::fs::read(w.home.join("auth.json")).unwrap();
    assert_ne!(auth, before);
    let v: serde_json::Value = serde_json::from_slice(&auth).unwrap();
    let rt = v["tokens"]["refresh_token"].as_str().unwrap().to_string();
    assert!(w.m.is_live_refresh_token(&rt), "the new login is installed");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(w.home.join("auth.json")).unwrap()), w.uid);
    let conn = w.conn().await;
    wait_state(&conn, "alpha", "ok").await;
    assert!(read(&w.prom).contains("codex_auth_agent_needs_login{account=\"alpha\"} 0\n"), "{}", read(&w.prom));
    w.assert_clean();
    // The old family's revocation does not touch the new login: it refreshes.
    let mut c = ctl(&w.bus);
    c.args(["refresh", "alpha", "--force"]);
    let r = run(c);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("alpha: refreshed"), "{}", r.stdout);
    assert_eq!(w.m.reuse_detections(), 0);
    // Neither the code nor a token reached the daemon's log.
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(w.home.join("auth.json")).unwrap()).unwrap();
    let tokens: Vec<String> = ["id_token", "access_token", "refresh_token"]
        .iter()
        .map(|k| v["tokens"][k].as_str().unwrap().to_string())
        .chain([rt, code.clone()])
        .collect();
    w.d.stop();
    assert_no_secrets(&[("daemon log", &w.d.log_text())], &tokens);
    // The journal entry (here the daemon's stderr log, same fields) calls it a login.
    let log = w.d.log_text();
    assert!(log.contains("outcome=\"login\"") && log.contains("installed a new login"), "{log}");
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[tokio::test]
async fn authctl_login_denied_timed_out_or_cancelled_installs_nothing() {
    if !require_root("authctl_login_denied_timed_out_or_cancelled_installs_nothing") {
        return;
    }
    let w = World::new("caa-login-no").await;
    let before = std::fs::read(w.home.join("auth.json")).unwrap();

    // --publish on an account outside fleet mode: a usage error naming it, before any login.
    let (rc, out, err) = finish(w.login(&["--publish"]));
    assert_eq!(rc, 2, "{out}{err}");
    assert!(err.contains("alpha: --publish applies to fleet followers only, and account alpha is not in fleet mode"));
    assert!(w.m.pending_device_codes().is_empty(), "no login was started");
    w.assert_clean();
    // The daemon refuses it too (a caller other than codex-authctl).
    let a = support::dbus::account(&w.conn().await, "alpha").await;
    match a.call::<_, _, u64>("SeedVersion", &()).await {
        Err(zbus::Error::MethodError(name, Some(msg), _)) => {
            assert_eq!(name.as_str(), "org.freedesktop.DBus.Error.InvalidArgs");
            assert!(msg.contains("account alpha is not in fleet mode"), "{msg}");
        }
        r => panic!("SeedVersion on a local account: {r:?}"),
    }

    let child = w.login(&[]);
    let code = wait_code(&w.m);
    assert!(w.m.deny_device(&code));
    let (rc, out, err) = finish(child);
    assert_eq!(rc, 4, "{out}{err}");
    assert!(err.contains("codex login failed") && err.contains("nothing was installed"), "{err}");
    w.assert_clean();

    let child = w.login(&["--timeout", "3s"]);
    let code = wait_code_not(&w.m, &[]);
    let (rc, out, err) = finish(child);
    assert_eq!(rc, 4, "{out}{err}");
    assert!(err.contains("no approval within 3s"), "{err}");
    assert!(w.m.device_polls(&code) >= 1);
    w.assert_clean();

    let child = w.login(&[]);
    let pending = w.m.pending_device_codes();
    wait_code_not(&w.m, &pending);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let (rc, out, err) = finish(child);
    assert_eq!(rc, 130, "{out}{err}");
    assert!(err.contains("login cancelled: nothing was installed"), "{err}");
    w.assert_clean();

    assert_eq!(std::fs::read(w.home.join("auth.json")).unwrap(), before, "nothing installed");
    let conn = w.conn().await;
    wait_state(&conn, "alpha", "failed_permanent").await;
}

/// A user code the mock handed out that is not in `seen`.
fn wait_code_not(m: &MockServer, seen: &[String]) -> String {
    let t0 = Instant::now();
    loop {
        if let Some(c) = m.pending_device_codes().into_iter().find(|c| !seen.contains(c)) {
            return c;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "Codex never asked for a device code");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn authctl_login_on_a_fleet_refresher_publishes_the_new_login_with_cas() {
    let test = "authctl_login_on_a_fleet_refresher_publishes_the_new_login_with_cas";
    if !require_root(test) {
        return;
    }
    let Some(bao) = Bao::start(test) else { return };
    let w = World::with("caa-login-fleet", Some((&bao, "refresher"))).await;
    let (_, version) = bao.get(ROTATING).expect("the refresher wrote the rotating key");
    let seed = bao.get(SEED);
    // --publish is unnecessary here (the install itself writes the rotating key): said, exit 0.
    let child = w.login(&["--publish"]);
    let code = wait_code(&w.m);
    assert!(w.m.approve_device(&code, "acct-login"));
    let (rc, out, err) = finish(child);
    assert_eq!(rc, 0, "{out}{err}");
    assert!(err.contains("alpha: --publish is not needed here: this host is the account's refresher"), "{err}");
    assert_eq!(bao.get(SEED), seed, "the seed key is the humans'; a refresher's login does not touch it");
    let next = version + 1;
    assert!(
        out.contains(&format!("alpha: logged in; installed: fresh: stored; wrote {ROTATING} version {next};")),
        "{out}"
    );
    let installed = std::fs::read(w.home.join("auth.json")).unwrap();
    assert_eq!(bao.get(ROTATING), Some((installed.clone(), next)), "Vault holds exactly the new login");
    let v: serde_json::Value = serde_json::from_slice(&installed).unwrap();
    assert!(w.m.is_live_refresh_token(v["tokens"]["refresh_token"].as_str().unwrap()));
    let conn = w.conn().await;
    wait_state(&conn, "alpha", "ok").await;
    w.assert_clean();
}

/// The tokens of the auth.json at `p` (canaries).
fn tokens_of(auth: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(auth).unwrap();
    ["id_token", "access_token", "refresh_token"].iter().map(|k| v["tokens"][k].as_str().unwrap().into()).collect()
}

/// `codex-authctl login alpha` on a follower, approved: (exit code, stdout, stderr, the
/// argv and environment of every process of the login, for the canary check).
fn approved_login(w: &World, extra: &[&str], between: impl FnOnce()) -> (i32, String, String, String) {
    let child = w.login(extra);
    let watch = support::procwatch::ProcWatch::start(child.id());
    let code = wait_code_not(&w.m, &[]);
    between();
    assert!(w.m.approve_device(&code, "acct-login"));
    let (rc, out, err) = finish(child);
    let procs: Vec<String> = watch.finish().iter().map(|p| p.text()).collect();
    (rc, out, err, procs.join("\n"))
}

#[tokio::test]
async fn authctl_login_on_a_follower_without_publish_or_the_policy_leaves_the_seed_key_alone() {
    let test = "authctl_login_on_a_follower_without_publish_or_the_policy_leaves_the_seed_key_alone";
    if !require_root(test) {
        return;
    }
    let Some(bao) = Bao::start(test) else { return };
    let w = World::with("caa-login-follow", Some((&bao, "follower"))).await;
    let seed = bao.get(SEED).expect("the seed");

    // Without --publish: installed here, the seed key untouched, and who must publish it.
    let (rc, out, err, _) = approved_login(&w, &[], || {});
    assert_eq!(rc, 0, "{out}{err}");
    assert!(out.contains("alpha: logged in; installed: fresh"), "{out}");
    assert!(out.contains("this host is a fleet follower: the login is installed here only"), "{out}");
    assert!(out.contains("codex-authctl login alpha --publish"), "{out}");
    let first = std::fs::read(w.home.join("auth.json")).unwrap();
    assert!(w.m.is_live_refresh_token(&tokens_of(&first)[2]), "installed locally");
    assert_eq!(bao.get(SEED), Some(seed.clone()), "the seed key is untouched");

    // --publish with a token that may only read (follower.hcl): Vault's 403, said exactly;
    // the new login stays installed; exit 4.
    let (rc, out, err, procs) = approved_login(&w, &["--publish"], || {});
    assert_eq!(rc, 4, "{out}{err}");
    let installed = std::fs::read(w.home.join("auth.json")).unwrap();
    assert_ne!(installed, first, "the second login is installed");
    assert!(out.contains("alpha: logged in; installed: fresh"), "{out}");
    assert!(
        err.contains(&format!(
            "alpha: not published: Vault denied writing the seed key {SEED} of account alpha (HTTP 403): this \
             host's Vault token may not write it; its policy needs the \"create\" and \"update\" capabilities on \
             secret/data/{SEED}"
        )),
        "{err}"
    );
    assert!(err.contains("the login stays installed on this host"), "{err}");
    assert!(
        err.contains(&format!("put base64(auth.json) in field `value` of {SEED}: bao kv put -mount=secret {SEED}")),
        "the manual command: {err}"
    );
    assert_eq!(bao.get(SEED), Some(seed), "nothing written");
    let conn = w.conn().await;
    assert_eq!(wait_state(&conn, "alpha", "ok").await.store_version, 2);
    let mut secrets = tokens_of(&first);
    secrets.extend(tokens_of(&installed));
    assert_no_secrets(&[("ctl stdout", &out), ("ctl stderr", &err), ("argv/env", &procs)], &secrets);
}

#[tokio::test]
async fn authctl_login_publish_on_a_follower_writes_the_seed_key_with_cas_and_the_refresher_publishes_it() {
    let test = "authctl_login_publish_on_a_follower_writes_the_seed_key_with_cas_and_the_refresher_publishes_it";
    if !require_root(test) {
        return;
    }
    let Some(bao) = Bao::start(test) else { return };
    let mut w = World::with("caa-login-publish", Some((&bao, "follower-publish"))).await;
    let (_, seed_version) = bao.get(SEED).expect("the seed");
    let conn = w.conn().await;

    // Someone else writes the seed key while the code waits for approval: check-and-set
    // refuses, their version stays, the login is installed here, exit 4.
    let theirs = b"{\"someone\":\"else\"}".to_vec();
    let (rc, out, err, _) = approved_login(&w, &["--publish"], || {
        bao.put(SEED, &theirs);
    });
    assert_eq!(rc, 4, "{out}{err}");
    assert!(
        err.contains(&format!(
            "alpha: not published: someone else changed the seed key {SEED} of account alpha while this login ran \
             (it was at version {seed_version}; Vault refused the check-and-set write): it was not overwritten"
        )),
        "{err}"
    );
    assert_eq!(bao.get(SEED), Some((theirs, seed_version + 1)), "theirs is kept");
    let raced = std::fs::read(w.home.join("auth.json")).unwrap();
    assert!(w.m.is_live_refresh_token(&tokens_of(&raced)[2]), "the login is installed here anyway");

    // Published: the seed key holds exactly the installed login, one version up.
    let (rc, out, err, procs) = approved_login(&w, &["--publish"], || {});
    assert_eq!(rc, 0, "{out}{err}");
    let installed = std::fs::read(w.home.join("auth.json")).unwrap();
    let next = seed_version + 2;
    assert!(out.contains(&format!("alpha: published to the seed key: wrote {SEED} version {next};")), "{out}");
    assert_eq!(bao.get(SEED), Some((installed.clone(), next)));
    let (rotating, v2) = bao.get(ROTATING).unwrap();
    assert_eq!(v2, 2, "the rotating key is the refresher's alone");
    assert_ne!(rotating, installed);

    // The refresher's next run publishes the new seed as rotating version 3 (no refresh:
    // the login is fresh), and the follower's sync installs it.
    let r = w.refresher.as_ref().unwrap().run(&w.m);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.one()["reason"].as_str().unwrap().contains(&format!("published it as a new login ({ROTATING} version 3)"))
    );
    assert_eq!(bao.get(ROTATING), Some((installed.clone(), 3)));
    let mut c = ctl(&w.bus);
    c.args(["sync", "alpha"]);
    let sync = run(c);
    assert_eq!(sync.code, 0, "{}{}", sync.stdout, sync.stderr);
    assert!(sync.stdout.contains(&format!("installed {ROTATING} version 3")), "{}", sync.stdout);
    assert_eq!(view(&conn, "alpha").await.store_version, 3);
    assert_eq!(std::fs::read(w.home.join("auth.json")).unwrap(), installed);
    assert!(w.m.is_live_refresh_token(&tokens_of(&installed)[2]));
    assert_eq!(w.m.reuse_detections(), 0);

    // No token in the answers, the processes' argv and environment, or the daemon's log;
    // the journal's entry of the install is a login.
    w.d.stop();
    let log = w.d.log_text();
    assert!(log.contains("outcome=\"login\"") && log.contains("published the new login to the seed key"), "{log}");
    let mut secrets = tokens_of(&raced);
    secrets.extend(tokens_of(&installed));
    let answers = [("ctl stdout", &out), ("ctl stderr", &err), ("argv/env", &procs), ("daemon log", &log)];
    assert_no_secrets(&answers.map(|(w, t)| (w, t.as_str())), &secrets);
}
