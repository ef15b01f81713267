//! Fleet mode end to end: separate `codex-auth-agent refresh` processes (each with its own
//! state dir, CODEX_HOME and host id) sharing one account through a real OpenBao dev
//! server, with the mock token endpoint counting token calls and reuse detections.

mod support;

use mock_openai::{Credentials, MockConfig, MockServer};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::dbus::{AgentDaemon, PrivateBus, ctl};
use support::openbao::Bao;
use support::*;

const ROTATING: &str = "codex-auth-json-b64-rotating-team";
const SEED: &str = "codex-auth-json-b64-team";
const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/fleet-policies");

/// One simulated VM: its own scratch (state dir, CODEX_HOME, config).
struct Host {
    scratch: Scratch,
    home: PathBuf,
    config: PathBuf,
}

/// How a host logs in to Vault.
enum Login<'a> {
    Token(&'a str),
    AppRole { role_id: &'a str, secret_id: &'a str },
}

fn secret_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

impl Host {
    fn new(bao: &Bao, host_id: &str, role: &str, login: Login) -> Host {
        Host::with(&bao.addr, host_id, role, login, "", "")
    }

    /// A host talking to Vault at `address`, with extra lines in `[vault]` (e.g. ca_file)
    /// and `[accounts.team]` (e.g. its own max_age).
    fn with(address: &str, host_id: &str, role: &str, login: Login, vault: &str, account: &str) -> Host {
        let scratch = Scratch::new();
        let home = scratch.codex_home("codex", None);
        let auth = match login {
            Login::Token(t) => format!("token_file = \"{}\"", secret_file(scratch.path(), "vault-token", t).display()),
            Login::AppRole { role_id, secret_id } => format!(
                "approle_role_id_file = \"{}\"\napprole_secret_id_file = \"{}\"",
                secret_file(scratch.path(), "role-id", role_id).display(),
                secret_file(scratch.path(), "secret-id", secret_id).display()
            ),
        };
        // An empty host_id leaves the key out: the agent's default (/etc/machine-id) applies.
        let host_line = if host_id.is_empty() { String::new() } else { format!("host_id = \"{host_id}\"\n") };
        let config = scratch.config(&format!(
            "{host_line}\n[vault]\naddress = \"{}\"\n{auth}\nrequest_timeout = \"1s\"\n{vault}\n\
             [defaults]\nrequest_timeout = \"20s\"\n\n[accounts.team]\nuser = \"{}\"\ncodex_home = \
                 \"{}\"\nfleet_role = \"{role}\"\n{account}",
            address,
            me(),
            home.display()
        ));
        // Scratch::config puts host_id after state_dir inside [agent].
        Host { scratch, home, config }
    }

    fn cmd(&self, mock: &MockServer, extra: &[&str]) -> Command {
        let mut c = agent(&self.scratch, mock);
        c.arg("--config").arg(&self.config).args(["refresh", "--account", "team", "--json"]).args(extra);
        c
    }

    fn refresh(&self, mock: &MockServer, extra: &[&str]) -> Run {
        run(self.cmd(mock, extra))
    }

    fn auth(&self) -> Vec<u8> {
        std::fs::read(self.home.join("auth.json")).unwrap_or_default()
    }

    fn status(&self) -> serde_json::Value {
        read_json(&self.scratch.state_dir().join("accounts/team/status.json"))
    }
}

/// A login whose refresh is due, stored as the account's seed in Vault.
fn seeded(bao: &Bao, mock: &MockServer) -> Credentials {
    let c = mock.issue_family("acct-team");
    bao.put(SEED, auth_json(&c, OLD).as_bytes());
    c
}

/// Every token value the mock issued for the account so far (canaries).
fn all_secrets(mock: &MockServer, c: &Credentials, bao_tokens: &[&str]) -> Vec<String> {
    let mut s = secrets(c);
    if let Some(rt) = mock.current_refresh_token("acct-team") {
        s.push(rt);
    }
    s.extend(bao_tokens.iter().map(|t| t.to_string()));
    s
}

fn install_policies(bao: &Bao) {
    bao.cli(&["policy", "write", "fleet-refresher", &format!("{POLICIES}/refresher.hcl")]);
    bao.cli(&["policy", "write", "fleet-follower", &format!("{POLICIES}/follower.hcl")]);
}

#[test]
fn refresher_by_approle_and_three_followers_converge_with_one_token_call() {
    let Some(bao) = Bao::start("refresher_by_approle_and_three_followers_converge_with_one_token_call") else {
        return;
    };
    let mock = MockServer::start(MockConfig::default());
    let c = seeded(&bao, &mock);
    install_policies(&bao);
    bao.cli(&["auth", "enable", "approle"]);
    bao.cli(&["write", "auth/approle/role/fleet", "token_policies=fleet-refresher", "token_ttl=1h"]);
    let role_id = bao.field(&["read", "-field=role_id", "auth/approle/role/fleet/role-id"]);
    let secret_id = bao.field(&["write", "-f", "-field=secret_id", "auth/approle/role/fleet/secret-id"]);
    let follower_token = bao.token(&["fleet-follower"]);
    let refresher = Host::new(&bao, "vm-0", "refresher", Login::AppRole { role_id: &role_id, secret_id: &secret_id });
    let followers: Vec<Host> =
        (1..=3).map(|i| Host::new(&bao, &format!("vm-{i}"), "follower", Login::Token(&follower_token))).collect();

    let r = refresher.refresh(&mock, &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.one()["outcome"], "refreshed", "{}", r.stdout);
    let (rotated, version) = bao.get(ROTATING).expect("the rotating key was written");
    assert_eq!(version, 2, "mirrored from the seed (1), then the refreshed credential (2)");
    assert_eq!(rotated, refresher.auth(), "Vault holds exactly what the refresher wrote locally");
    assert_eq!(refresher.status()["store_version"], 2);
    assert_eq!(refresher.status()["lease_holder"], "vm-0");

    let mut runs = vec![r];
    for f in &followers {
        let r = f.refresh(&mock, &[]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        assert_eq!(r.one()["outcome"], "fresh");
        assert!(r.one()["reason"].as_str().unwrap().contains("version 2"), "{}", r.stdout);
        assert_eq!(f.auth(), rotated, "the follower converged on the rotating credential");
        assert_eq!(f.status()["store_version"], 2);
        assert_eq!(f.status()["lease_holder"], "vm-0");
        // A second sync changes nothing, and a forced follower still never calls the endpoint.
        let again = f.refresh(&mock, &["--force"]);
        assert_eq!(again.code, 0, "{}", again.stderr);
        assert_eq!(f.auth(), rotated);
        runs.push(r);
        runs.push(again);
    }
    assert_eq!(mock.token_requests(), 1, "exactly one token call for the whole fleet");
    assert_eq!(mock.reuse_detections(), 0);
    let secrets = all_secrets(&mock, &c, &[&role_id, &secret_id, &follower_token]);
    for (h, r) in std::iter::once(&refresher).chain(&followers).zip(&runs) {
        assert_clean(r, &h.scratch.state_dir(), &secrets);
    }
}

#[test]
fn two_refreshers_racing_for_100_cycles_never_reuse_a_token() {
    let Some(bao) = Bao::start("two_refreshers_racing_for_100_cycles_never_reuse_a_token") else { return };
    let mock = MockServer::start(MockConfig::default());
    seeded(&bao, &mock);
    install_policies(&bao);
    let token = bao.token(&["fleet-refresher"]);
    let hosts = [
        Host::new(&bao, "vm-a", "refresher", Login::Token(&token)),
        Host::new(&bao, "vm-b", "refresher", Login::Token(&token)),
    ];
    const CYCLES: u64 = 100;
    for cycle in 0..CYCLES {
        // Both start at once, each forced: every cycle is due for both of them.
        let spawned: Vec<_> = hosts
            .iter()
            .map(|h| h.cmd(&mock, &["--force"]).stdout(std::process::Stdio::piped()).spawn().unwrap())
            .collect();
        for c in spawned {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "cycle {cycle}: {}", String::from_utf8_lossy(&out.stdout));
        }
        assert_eq!(mock.token_requests(), cycle + 1, "cycle {cycle}: exactly one token call");
    }
    assert_eq!(mock.reuse_detections(), 0, "no refresh_token_reused");
    let (rotated, _) = bao.get(ROTATING).unwrap();
    for h in &hosts {
        let r = h.refresh(&mock, &[]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(h.auth(), rotated, "both hosts end on the fleet's credential");
    }
    let v: serde_json::Value = serde_json::from_slice(&rotated).unwrap();
    assert!(mock.is_live_refresh_token(v["tokens"]["refresh_token"].as_str().unwrap()));
}

/// The refresh token in an auth.json.
fn refresh_token(auth: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(auth).expect("auth.json parses");
    v["tokens"]["refresh_token"].as_str().unwrap().to_string()
}

/// Wait until the mock has received `n` token requests (a sync point, not a timing check).
fn wait_token_requests(mock: &MockServer, n: u64) {
    let t0 = std::time::Instant::now();
    while mock.token_requests() < n {
        assert!(t0.elapsed() < Duration::from_secs(30), "the token request never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A refresher whose write of the credential it just received finds Vault down keeps
/// trying within `vault.publish_retry` (and its lease): a pod has no next run that could
/// upload its local copy, so a Vault back within the window must get it in the same run.
#[test]
fn openbao_back_within_the_publish_retry_gets_the_new_credential_in_the_same_run() {
    let test = "openbao_back_within_the_publish_retry_gets_the_new_credential_in_the_same_run";
    let Some(mut bao) = Bao::start_persistent(test, false) else { return };
    let mock = MockServer::start(MockConfig::default());
    let _c = seeded(&bao, &mock);
    install_policies(&bao);
    let rt = bao.token(&["fleet-refresher"]);
    let refresher = Host::new(&bao, "vm-0", "refresher", Login::Token(&rt));
    assert_eq!(refresher.refresh(&mock, &[]).code, 0);
    let before = mock.token_requests();
    // Vault stops while the token endpoint is answering, and is back a few seconds after the
    // answer: inside the default publish_retry (30s).
    mock.set_latency(Duration::from_secs(3));
    let child = refresher.cmd(&mock, &["--force"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    wait_token_requests(&mock, before + 1);
    bao.stop(Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(6));
    bao.restart();
    let out = child.wait_with_output().unwrap();
    mock.set_latency(Duration::ZERO);
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "refreshed and published in one run: {line}");
    let (rotated, version) = bao.get(ROTATING).unwrap();
    assert_eq!(rotated, refresher.auth(), "Vault holds the credential this run received");
    assert!(line.contains(&format!("version {version}")), "{line}");
    assert!(mock.is_live_refresh_token(&refresh_token(&rotated)), "and it is the live one");
}

#[test]
fn openbao_stopped_mid_refresh_and_restarted_loses_nothing_and_catches_up() {
    let test = "openbao_stopped_mid_refresh_and_restarted_loses_nothing_and_catches_up";
    let Some(mut bao) = Bao::start_persistent(test, false) else { return };
    let mock = MockServer::start(MockConfig::default());
    let c = seeded(&bao, &mock);
    install_policies(&bao);
    let (rt, ft) = (bao.token(&["fleet-refresher"]), bao.token(&["fleet-follower"]));
    let refresher = Host::new(&bao, "vm-0", "refresher", Login::Token(&rt));
    let follower = Host::new(&bao, "vm-1", "follower", Login::Token(&ft));
    assert_eq!(refresher.refresh(&mock, &[]).code, 0);
    assert_eq!(follower.refresh(&mock, &[]).code, 0);
    let before = follower.auth();
    assert_eq!(follower.status()["store_version"], 2);

    // A Vault that hangs (frozen) between cycles: the follower gives up after its
    // request_timeout, says why, and keeps its file.
    bao.pause();
    let r = follower.refresh(&mock, &[]);
    assert_eq!(r.code, 4, "{}", r.stdout);
    assert!(r.one()["reason"].as_str().unwrap().contains("unreachable"), "{}", r.stdout);
    assert_eq!(follower.auth(), before);
    bao.resume();

    // Stop Vault for real (SIGTERM, process gone) while the refresher waits for the token
    // endpoint: the token is spent, so the new credential must survive locally.
    mock.set_latency(Duration::from_secs(8));
    let child = refresher.cmd(&mock, &["--force"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    wait_token_requests(&mock, 2);
    bao.stop(Duration::from_secs(5));
    let out = child.wait_with_output().unwrap();
    mock.set_latency(Duration::ZERO);
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(4), "transient failure: {line}");
    assert!(line.contains("uploaded on the next run") && line.contains("unreachable"), "{line}");
    let refreshed_locally = refresher.auth();
    assert!(mock.is_live_refresh_token(&refresh_token(&refreshed_locally)), "the live credential is kept locally");
    assert_eq!(mode(&refresher.home.join("auth.json")), 0o600);
    let st = refresher.status();
    assert_eq!((st["outcome"].as_str(), st["class"].as_str()), (Some("failed"), Some("transient")), "{st}");

    // Vault gone between cycles: every host says so and keeps a working auth.json.
    for (h, file) in [(&refresher, &refreshed_locally), (&follower, &before)] {
        let r = h.refresh(&mock, &[]);
        assert_eq!(r.code, 4, "{}", r.stdout);
        let reason = r.one()["reason"].as_str().unwrap().to_string();
        assert!(reason.contains(&bao.addr) && reason.contains("unreachable"), "{reason}");
        assert_eq!(&h.auth(), file, "auth.json is untouched while Vault is down");
        assert_eq!(h.status()["reason"].as_str(), Some(reason.as_str()), "status.json says why");
    }
    assert_eq!(mock.token_requests(), 2, "nothing refreshed while Vault was down");

    // The same server on the same storage comes back: the very next cycle catches up.
    bao.restart();
    let r = refresher.refresh(&mock, &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let (rotated, version) = bao.get(ROTATING).unwrap();
    assert_eq!(rotated, refreshed_locally, "the credential refreshed while Vault was down was uploaded");
    assert_eq!(version, 3);
    let r = follower.refresh(&mock, &[]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(follower.auth(), rotated, "the follower caught up on its next run");
    assert_eq!(follower.status()["store_version"], 3);
    // And the fleet keeps rotating from there.
    assert_eq!(refresher.refresh(&mock, &["--force"]).code, 0);
    let (rotated, version) = bao.get(ROTATING).unwrap();
    assert_eq!(version, 4);
    assert!(mock.is_live_refresh_token(&refresh_token(&rotated)), "Vault holds the live credential");
    let r = follower.refresh(&mock, &[]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(follower.auth(), rotated);
    assert_eq!(mock.token_requests(), 3, "one token call per rotation");
    assert_eq!(mock.reuse_detections(), 0, "no refresh_token_reused");
    assert_clean(&r, &follower.scratch.state_dir(), &all_secrets(&mock, &c, &[&rt, &ft]));
    assert_clean(&r, &refresher.scratch.state_dir(), &all_secrets(&mock, &c, &[&rt, &ft]));
}

#[test]
fn denied_access_names_the_key_and_the_missing_capability() {
    let Some(bao) = Bao::start("denied_access_names_the_key_and_the_missing_capability") else { return };
    let mock = MockServer::start(MockConfig::default());
    seeded(&bao, &mock);
    install_policies(&bao);
    // A wrong token: the first read is refused.
    let wrong = Host::new(&bao, "vm-x", "follower", Login::Token("s.CANARY-not-a-token"));
    let r = wrong.refresh(&mock, &[]);
    assert_eq!(r.code, 4, "{}", r.stdout);
    let reason = r.one()["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("secret/data/codex-auth-json-b64-rotating-team") && reason.contains("\"read\""),
        "{reason}"
    );
    assert!(!r.stdout.contains("CANARY-not-a-token") && !r.stderr.contains("CANARY-not-a-token"));
    // A follower's read-only token on a refresher: the rotating key cannot be created.
    let ro = bao.token(&["fleet-follower"]);
    let h = Host::new(&bao, "vm-y", "refresher", Login::Token(&ro));
    let r = h.refresh(&mock, &[]);
    assert_eq!(r.code, 4, "{}", r.stdout);
    let reason = r.one()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains(ROTATING) && reason.contains("create/update"), "{reason}");
    assert_eq!(mock.token_requests(), 0, "nothing refreshed without Vault's blessing");
    assert!(bao.get(ROTATING).is_none());
}

/// `secs` seconds ago, in auth.json's format (fixtures relative to the real clock).
fn ago(secs: i64) -> String {
    #[allow(clippy::disallowed_methods)]
    let t = chrono::Utc::now() - chrono::Duration::seconds(secs);
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// One host's daemon on its own private bus (the daemon owns one well-known name per bus).
struct DaemonHost {
    host: Host,
    bus: PrivateBus,
    daemon: AgentDaemon,
}

impl DaemonHost {
    fn start(host: Host, mock: &MockServer) -> DaemonHost {
        let bus = PrivateBus::start(host.scratch.path());
        let daemon = AgentDaemon::start(&host.scratch, mock, &host.config, &bus);
        DaemonHost { host, bus, daemon }
    }

    /// `codex-authctl ARGS` against this host's bus.
    fn ctl(&self, args: &[&str]) -> Run {
        let mut c = ctl(&self.bus);
        c.args(args);
        run(c)
    }

    /// The Account object's properties, read over D-Bus by `codex-authctl status --json`.
    fn props(&self) -> serde_json::Value {
        let r = self.ctl(&["status", "team", "--json"]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        r.one()
    }

    /// Poll the properties until `done` holds (limit: `secs`; a sync point, not a timing check).
    fn wait(&self, what: &str, secs: u64, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let t0 = std::time::Instant::now();
        loop {
            let p = self.props();
            if done(&p) {
                return p;
            }
            assert!(t0.elapsed() < Duration::from_secs(secs), "{what}: {p}\n{}", self.daemon.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn daemons_refresh_when_due_and_followers_converge_by_timer_and_by_sync() {
    let Some(bao) = Bao::start("daemons_refresh_when_due_and_followers_converge_by_timer_and_by_sync") else {
        return;
    };
    let mock = MockServer::start(MockConfig::default());
    let c = mock.issue_family("acct-team");
    // The seed turns due by max_age = 1h two seconds from now on the refresher; the
    // followers' own max_age puts it later (timer: +6 s) or far away (sync only: +1 h).
    // Stored twice, so the seed's version (2) is one the rotating key reaches too.
    let seed = auth_json(&c, &ago(3600 - 2));
    bao.put(SEED, auth_json(&mock.issue_family("acct-team"), OLD).as_bytes());
    assert_eq!(bao.put(SEED, seed.as_bytes()), 2);
    install_policies(&bao);
    let (rt, ft) = (bao.token(&["fleet-refresher"]), bao.token(&["fleet-follower"]));
    let host = |id: &str, role: &str, token: &str, max_age: &str| {
        Host::with(&bao.addr, id, role, Login::Token(token), "", &format!("max_age = \"{max_age}\"\n"))
    };
    // Followers first: their start-up pass installs the seed before any rotation.
    let by_sync = DaemonHost::start(host("vm-2", "follower", &ft, "2h"), &mock);
    let by_timer = DaemonHost::start(host("vm-1", "follower", &ft, "3604s"), &mock);
    for f in [&by_sync, &by_timer] {
        f.wait("the follower never installed the seed", 30, |p| p["state"] == "ok");
        assert_eq!(f.host.auth(), seed.as_bytes());
    }
    let refresher = DaemonHost::start(host("vm-0", "refresher", &rt, "1h"), &mock);

    // The refresher's own timer: it refreshes when due and writes version 2 (1 = the seed's mirror).
    let p = refresher.wait("the refresher never wrote version 2", 60, |p| p["store_version"] == 2);
    assert_eq!((p["state"].as_str(), p["last_outcome"].as_str()), (Some("ok"), Some("refreshed")), "{p}");
    assert_eq!((p["fleet_role"].as_str(), p["lease_holder"].as_str()), (Some("refresher"), Some("vm-0")));
    let (rotated, version) = bao.get(ROTATING).unwrap();
    assert_eq!(version, 2);
    assert_eq!(refresher.host.auth(), rotated);
    assert_eq!(mock.token_requests(), 1);
    let fp = p["token_fingerprint"].clone();

    // A follower's timer fires when its copy turns due and installs the new credential (if it
    // looked before the refresher wrote, it looks again a minute later).
    let p = by_timer
        .wait("the follower's timer never installed the rotated credential", 120, |p| p["token_fingerprint"] == fp);
    assert_eq!(by_timer.host.auth(), rotated);
    assert_eq!(p["state"], "ok", "{p}");

    // The other follower is not due for an hour: it still has the seed until `sync`.
    assert_ne!(by_sync.props()["token_fingerprint"], fp);
    assert_eq!(by_sync.host.auth(), seed.as_bytes());
    let r = by_sync.ctl(&["sync", "team"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("installed codex-auth-json-b64-rotating-team version 2"), "{}", r.stdout);
    assert_eq!(by_sync.host.auth(), rotated);

    for (h, role) in [(&refresher, "refresher"), (&by_timer, "follower"), (&by_sync, "follower")] {
        let p = h.props();
        assert_eq!(p["fleet_role"], role, "{p}");
        assert_eq!(p["store_version"], 2, "{p}");
        assert_eq!(p["lease_holder"], "vm-0", "{p}");
        assert_eq!(p["state"], "ok", "{p}");
        assert_eq!(p["token_fingerprint"], fp, "{p}");
    }
    assert_eq!(mock.token_requests(), 1, "exactly one token call for the fleet");
    assert_eq!(mock.reuse_detections(), 0);
    let secrets = all_secrets(&mock, &c, &[&rt, &ft]);
    for h in [&refresher, &by_timer, &by_sync] {
        let log = Run { code: 0, stdout: h.daemon.log_text(), stderr: String::new() };
        assert_clean(&log, &h.host.scratch.state_dir(), &secrets);
    }
}

#[test]
fn tls_with_ca_file_works_and_without_it_names_the_untrusted_certificate() {
    let test = "tls_with_ca_file_works_and_without_it_names_the_untrusted_certificate";
    let Some(bao) = Bao::start_persistent(test, true) else { return };
    let mock = MockServer::start(MockConfig::default());
    let c = seeded(&bao, &mock);
    install_policies(&bao);
    let (rt, ft) = (bao.token(&["fleet-refresher"]), bao.token(&["fleet-follower"]));
    let https = bao.tls_addr.clone().unwrap();
    let ca_line = |ca: &Path| format!("ca_file = \"{}\"\n", ca.display());
    let ca = ca_line(bao.ca_file.as_ref().unwrap());

    // With the CA that signed Vault's certificate: the fleet works over HTTPS.
    let refresher = Host::with(&https, "vm-0", "refresher", Login::Token(&rt), &ca, "");
    let follower = Host::with(&https, "vm-1", "follower", Login::Token(&ft), &ca, "");
    let r = refresher.refresh(&mock, &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.one()["outcome"], "refreshed");
    let r = follower.refresh(&mock, &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let (rotated, version) = bao.get(ROTATING).unwrap();
    assert_eq!((version, follower.auth()), (2, rotated));

    // Without ca_file (system roots only), or with another CA: a transient failure that
    // names the address, says the certificate is not trusted and how to fix it.
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = support::openbao::make_tls(other.path());
    for (id, vault, trust) in [
        ("vm-2", String::new(), "no ca_file is set".to_string()),
        ("vm-3", ca_line(&other_ca), format!("neither ca_file {} nor", other_ca.display())),
    ] {
        let h = Host::with(&https, id, "follower", Login::Token(&ft), &vault, "");
        let r = h.refresh(&mock, &[]);
        assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
        let reason = r.one()["reason"].as_str().unwrap().to_string();
        // (UnknownIssuer, or BadSignature from the other CA of the same name)
        let want = format!("the TLS certificate of Vault at {https} is not trusted (");
        assert!(reason.contains(&want) && reason.contains(&trust), "{reason}");
        assert!(reason.contains("set ca_file in [vault]"), "{reason}");
        assert!(h.auth().is_empty(), "nothing installed from an untrusted server");
    }
    assert_eq!(mock.token_requests(), 1);
    assert_clean(&r, &follower.scratch.state_dir(), &all_secrets(&mock, &c, &[&rt, &ft]));
}

#[test]
fn a_follower_denied_by_its_policy_says_so_on_dbus_and_sync_heals_it_once_fixed() {
    let Some(bao) = Bao::start("a_follower_denied_by_its_policy_says_so_on_dbus_and_sync_heals_it_once_fixed") else {
        return;
    };
    let mock = MockServer::start(MockConfig::default());
    let c = seeded(&bao, &mock);
    // The token names a policy that does not exist yet: every read is denied.
    let ft = bao.token(&["fleet-follower"]);
    let follower = DaemonHost::start(Host::new(&bao, "vm-1", "follower", Login::Token(&ft)), &mock);
    let p = follower.wait("the denied start-up run never finished", 30, |p| {
        !["stale", "refreshing"].contains(&p["state"].as_str().unwrap())
    });
    assert_eq!(p["state"], "failed_transient", "{p}");
    let err = p["last_error"].as_str().unwrap();
    assert!(err.contains("secret/data/codex-auth-json-b64-rotating-team") && err.contains("\"read\""), "{p}");
    let sync = || follower.ctl(&["sync", "team"]);
    // Asking again runs again (no "backing off" answer) and still names what is missing.
    let r = sync();
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("lacks the \"read\" capability"), "{}", r.stdout);
    // The operator installs the policy: the next sync heals the account at once.
    install_policies(&bao);
    let r = sync();
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let (seed, _) = bao.get(SEED).unwrap();
    assert_eq!(follower.host.auth(), seed);
    let p = follower.props();
    assert_eq!((p["state"].as_str(), p["consecutive_failures"].as_u64()), (Some("ok"), Some(0)), "{p}");
    assert_eq!(mock.token_requests(), 0);
    let log = Run { code: 0, stdout: follower.daemon.log_text(), stderr: String::new() };
    assert_clean(&log, &follower.host.scratch.state_dir(), &all_secrets(&mock, &c, &[&ft]));
}

// Re-login of a fleet account: `codex-authctl store` on the refresher writes the new login
// to Vault; on a follower it stays local; a new seed in Vault is a re-login too.

impl DaemonHost {
    /// `codex-authctl store team` with `auth` on stdin, as an operator runs it.
    fn store(&self, auth: &[u8]) -> Run {
        let path = self.host.scratch.path().join("login.json");
        std::fs::write(&path, auth).unwrap();
        let mut c = ctl(&self.bus);
        c.args(["store", "team"]).stdin(std::fs::File::open(&path).unwrap());
        let r = run(c);
        std::fs::remove_file(&path).unwrap();
        r
    }
}

/// A fleet host without automatic preflights (no Codex binary needed after a Store).
fn quiet_host(bao: &Bao, id: &str, role: &str, token: &str) -> Host {
    Host::with(&bao.addr, id, role, Login::Token(token), "", "preflight = false\n")
}

/// A fleet ready to run: the mock, a due seed in Vault, the shipped policies, and a
/// refresher's and a follower's token.
fn fleet(bao: &Bao) -> (MockServer, Credentials, String, String) {
    let mock = MockServer::start(MockConfig::default());
    let c = seeded(bao, &mock);
    install_policies(bao);
    let (rt, ft) = (bao.token(&["fleet-refresher"]), bao.token(&["fleet-follower"]));
    (mock, c, rt, ft)
}

/// The refresh token's family in the mock.
fn family(mock: &MockServer, auth: &[u8]) -> u64 {
    mock.family_id_of(&refresh_token(auth)).expect("a refresh token the mock issued")
}

#[test]
fn store_on_the_refresher_writes_the_new_login_to_vault_and_the_fleet_rotates_it() {
    let Some(bao) = Bao::start("store_on_the_refresher_writes_the_new_login_to_vault_and_the_fleet_rotates_it") else {
        return;
    };
    let (mock, c, rt, ft) = fleet(&bao);
    let refresher = DaemonHost::start(quiet_host(&bao, "vm-0", "refresher", &rt), &mock);
    let follower = quiet_host(&bao, "vm-1", "follower", &ft);
    // The fleet is running: the refresher's start-up run rotated the seed (version 2).
    refresher.wait("the refresher never wrote version 2", 30, |p| p["store_version"] == 2);
    assert_eq!(follower.refresh(&mock, &[]).code, 0);
    let old_family = family(&mock, &follower.auth());

    // A human logs in again (a new token family) and the old family is revoked.
    let login = auth_json(&mock.issue_family("acct-team"), &recent());
    assert!(mock.revoke_family(&old_family.to_string()));
    let r = refresher.store(login.as_bytes());
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains(&format!("stored; wrote {ROTATING} version 3")), "{}", r.stdout);
    assert_eq!(bao.get(ROTATING), Some((login.as_bytes().to_vec(), 3)), "Vault holds exactly the stored login");
    assert_eq!(refresher.host.auth(), login.as_bytes());
    assert_eq!(refresher.props()["store_version"], 3);

    // The refresher's next run keeps it (it used to install Vault's old credential over it).
    let r = refresher.ctl(&["sync", "team"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(refresher.host.auth(), login.as_bytes());
    assert_eq!(bao.get(ROTATING).unwrap().1, 3);
    // The follower converges on its next sync.
    let r = follower.refresh(&mock, &[]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.one()["reason"].as_str().unwrap().contains("version 3"), "{}", r.stdout);
    assert_eq!(follower.auth(), login.as_bytes());

    // A later due refresh rotates the new family.
    let r = refresher.ctl(&["refresh", "team", "--force"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let (rotated, version) = bao.get(ROTATING).unwrap();
    assert_eq!(version, 4);
    assert_eq!(refresher.host.auth(), rotated);
    assert_eq!(family(&mock, &rotated), family(&mock, login.as_bytes()), "the stored login's family rotated");
    assert!(mock.is_live_refresh_token(&refresh_token(&rotated)));
    assert_eq!(follower.refresh(&mock, &[]).code, 0);
    assert_eq!(follower.auth(), rotated);
    assert_eq!(mock.token_requests(), 2, "the start-up rotation and the forced one");
    assert_eq!(mock.reuse_detections(), 0);
    let log = Run { code: 0, stdout: refresher.daemon.log_text(), stderr: r.stdout };
    let mut secrets = all_secrets(&mock, &c, &[&rt, &ft]);
    secrets.extend([refresh_token(login.as_bytes()), refresh_token(&rotated)]);
    assert_clean(&log, &refresher.host.scratch.state_dir(), &secrets);
}

#[test]
fn store_on_a_follower_stays_local_until_vault_has_a_newer_version_and_a_new_seed_is_a_relogin() {
    let Some(bao) = Bao::start("store_on_a_follower_stays_local_until_vault_has_a_newer_version") else { return };
    let (mock, _, rt, ft) = fleet(&bao);
    let refresher = quiet_host(&bao, "vm-0", "refresher", &rt);
    assert_eq!(refresher.refresh(&mock, &[]).code, 0);
    let follower = DaemonHost::start(quiet_host(&bao, "vm-1", "follower", &ft), &mock);
    follower.wait("the follower never installed version 2", 30, |p| p["store_version"] == 2);

    // A human stores a login on the follower: installed here, not written to Vault.
    let login = auth_json(&mock.issue_family("acct-team"), &recent());
    let r = follower.store(login.as_bytes());
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("this host follows the fleet, so it is not written to Vault"), "{}", r.stdout);
    assert!(r.stdout.contains("codex-authctl store team` on the refresher"), "{}", r.stdout);
    assert_eq!(follower.host.auth(), login.as_bytes());
    assert_eq!(bao.get(ROTATING).unwrap().1, 2, "Vault unchanged");
    // Syncs report the difference and neither write back nor overwrite it.
    for _ in 0..2 {
        let r = follower.ctl(&["sync", "team"]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        assert!(r.stdout.contains("auth.json differs from Vault version 2 (changed locally"), "{}", r.stdout);
        assert_eq!(follower.host.auth(), login.as_bytes());
        assert_eq!(bao.get(ROTATING).unwrap().1, 2);
    }
    assert_eq!(follower.props()["store_version"], 2);
    // A local seed would be ignored in fleet mode: Seed says where the seed lives instead.
    let path = follower.host.scratch.path().join("seed.json");
    std::fs::write(&path, &login).unwrap();
    let mut c = ctl(&follower.bus);
    c.args(["seed", "team"]).stdin(std::fs::File::open(&path).unwrap());
    let r = run(c);
    assert_ne!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains(&format!("fleet mode: its seed is the Vault key {SEED}")), "{}", r.stderr);
    assert_eq!(follower.host.auth(), login.as_bytes());

    // Another login put in the seed key is newer than the rotating key: the refresher
    // publishes it (once), and the follower installs that newer version over its own.
    let seed = auth_json(&mock.issue_family("acct-team"), &recent());
    bao.put(SEED, seed.as_bytes());
    let r = refresher.refresh(&mock, &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.one()["reason"].as_str().unwrap().contains("published it as a new login"), "{}", r.stdout);
    assert_eq!(bao.get(ROTATING), Some((seed.as_bytes().to_vec(), 3)));
    assert_eq!(refresher.auth(), seed.as_bytes());
    assert_eq!(refresher.refresh(&mock, &[]).code, 0);
    assert_eq!(bao.get(ROTATING).unwrap().1, 3, "an already published seed is not published again");
    let r = follower.ctl(&["sync", "team"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains(&format!("installed {ROTATING} version 3")), "{}", r.stdout);
    assert_eq!(follower.host.auth(), seed.as_bytes());
    assert_eq!(mock.token_requests(), 1, "only the first rotation; a follower never calls the endpoint");
    assert_eq!(mock.reuse_detections(), 0);
}

#[test]
fn store_on_the_refresher_while_openbao_is_down_is_uploaded_when_it_returns() {
    let test = "store_on_the_refresher_while_openbao_is_down_is_uploaded_when_it_returns";
    let Some(mut bao) = Bao::start_persistent(test, false) else { return };
    let (mock, c, rt, _) = fleet(&bao);
    let refresher = DaemonHost::start(quiet_host(&bao, "vm-0", "refresher", &rt), &mock);
    refresher.wait("the refresher never wrote version 2", 30, |p| p["store_version"] == 2);

    bao.stop(Duration::from_secs(5));
    let login = auth_json(&mock.issue_family("acct-team"), &recent());
    let r = refresher.store(login.as_bytes());
    assert_eq!(r.code, 4, "transient until Vault has it: {}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("stored locally; upload to Vault pending") && r.stdout.contains("unreachable"));
    assert_eq!(refresher.host.auth(), login.as_bytes(), "installed locally all the same");

    // Vault returns: the next run (here the CLI's, on the same host) uploads it first.
    bao.restart();
    assert_eq!(bao.get(ROTATING).unwrap().1, 2);
    let r = refresher.host.refresh(&mock, &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let reason = r.one()["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains(&format!(
            "uploaded the credential stored while Vault was unreachable: wrote {ROTATING} version 3"
        )),
        "{reason}"
    );
    assert_eq!(bao.get(ROTATING), Some((login.as_bytes().to_vec(), 3)));
    assert_eq!(refresher.host.auth(), login.as_bytes());
    assert_eq!(refresher.host.status()["store_version"], 3);
    assert_eq!(mock.token_requests(), 1, "the store itself never refreshed");
    let log = Run { code: 0, stdout: refresher.daemon.log_text(), stderr: r.stdout };
    let mut secrets = all_secrets(&mock, &c, &[&rt]);
    secrets.push(refresh_token(login.as_bytes()));
    assert_clean(&log, &refresher.host.scratch.state_dir(), &secrets);
}

#[test]
fn a_quarantined_refresher_is_healed_by_a_new_seed_in_vault() {
    let Some(bao) = Bao::start("a_quarantined_refresher_is_healed_by_a_new_seed_in_vault") else { return };
    let (mock, c, rt, _) = fleet(&bao);
    // The fleet's login was revoked (a password change): the refresher's first run fails
    // for good and the account is quarantined.
    assert!(mock.revoke_family(&family(&mock, auth_json(&c, OLD).as_bytes()).to_string()));
    let refresher = DaemonHost::start(quiet_host(&bao, "vm-0", "refresher", &rt), &mock);
    refresher.wait("the refresher was never quarantined", 30, |p| p["state"] == "failed_permanent");
    let r = refresher.ctl(&["sync", "team"]);
    assert!(r.stdout.contains("quarantined"), "{}\n{}", r.stdout, r.stderr);
    assert_eq!(mock.token_requests(), 1, "no token request while quarantined");

    // A human puts a new login in the seed key: the next look at the quarantined account
    // (here `sync`; otherwise its quarter-hourly probe) sees it in Vault and publishes it.
    let login = auth_json(&mock.issue_family("acct-team"), &recent());
    bao.put(SEED, login.as_bytes());
    let r = refresher.ctl(&["sync", "team"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("published it as a new login"), "{}", r.stdout);
    assert_eq!(bao.get(ROTATING), Some((login.as_bytes().to_vec(), 2)), "mirror (1), then the new login (2)");
    assert_eq!(refresher.host.auth(), login.as_bytes());
    let p = refresher.props();
    assert_eq!((p["state"].as_str(), p["store_version"].as_u64()), (Some("ok"), Some(2)), "{p}");
    assert_eq!(mock.token_requests(), 1);
    assert_eq!(mock.reuse_detections(), 0);
}

// Two agents with one identity (issue #11, part 2): two configs on one host with the same
// default host_id, or a cloned VM whose state dir was copied too. Exactly one of them may
// refresh; the other says why and follows.

/// The host id of an agent without `agent.host_id` (/etc/machine-id, else the hostname).
fn default_host_id() -> String {
    codex_auth_agent::config::default_host_id()
}

impl Host {
    /// This agent's instance id, generated once into its state dir.
    fn instance_id(&self) -> String {
        let p = self.scratch.state_dir().join("instance-id");
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).trim().to_string()
    }

    /// Reconfigure `agent.host_id` (the operator's fix for a shared identity).
    fn set_host_id(&self, id: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("host_id = ")).collect();
        let text = kept.join("\n").replacen("[agent]\n", &format!("[agent]\nhost_id = \"{id}\"\n"), 1);
        std::fs::write(&self.config, text + "\n").unwrap();
    }
}

/// Run every host at once, each forced (every cycle is due for all of them).
fn race(hosts: &[&Host], mock: &MockServer) -> Vec<Run> {
    let spawned: Vec<_> = hosts
        .iter()
        .map(|h| {
            h.cmd(mock, &["--force"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    spawned
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            Run {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        })
        .collect()
}

/// One cycle of two agents sharing an identity: exactly one refreshed, the other failed
/// transient with the collision; returns (index of the refresher, the collision reason).
fn one_refreshed_one_collided(cycle: u64, runs: &[Run]) -> (usize, String) {
    let refreshed: Vec<usize> = (0..runs.len()).filter(|&i| runs[i].code == 0).collect();
    let all = || runs.iter().map(|r| format!("{}{}", r.stdout, r.stderr)).collect::<Vec<_>>().join("\n");
    assert_eq!(refreshed.len(), 1, "cycle {cycle}: exactly one agent refreshes:\n{}", all());
    let (winner, loser) = (refreshed[0], 1 - refreshed[0]);
    assert_eq!(runs[winner].one()["outcome"], "refreshed", "cycle {cycle}: {}", all());
    let r = &runs[loser];
    assert_eq!(r.code, 4, "cycle {cycle}: the other one fails transient: {}", all());
    let line = r.one();
    assert_eq!((line["outcome"].as_str(), line["class"].as_str()), (Some("failed"), Some("transient")), "{line}");
    (winner, line["reason"].as_str().unwrap().to_string())
}

#[test]
fn two_refreshers_with_the_same_default_host_id_on_one_host_refresh_once_per_cycle_and_name_the_collision() {
    let test = "two_refreshers_with_the_same_default_host_id_on_one_host_refresh_once_per_cycle";
    let Some(bao) = Bao::start(test) else { return };
    let (mock, c, rt, _) = fleet(&bao);
    // Two configs, two state dirs, one host: neither sets agent.host_id.
    let hosts =
        [Host::new(&bao, "", "refresher", Login::Token(&rt)), Host::new(&bao, "", "refresher", Login::Token(&rt))];
    let id = default_host_id();
    const CYCLES: u64 = 20;
    let mut first_winner = None;
    let mut runs = Vec::new();
    for cycle in 0..CYCLES {
        runs = race(&[&hosts[0], &hosts[1]], &mock);
        assert_eq!(mock.token_requests(), cycle + 1, "cycle {cycle}: exactly one token call");
        assert_eq!(mock.reuse_detections(), 0, "cycle {cycle}: no refresh_token_reused");
        let (winner, reason) = one_refreshed_one_collided(cycle, &runs);
        assert_eq!(*first_winner.get_or_insert(winner), winner, "cycle {cycle}: the lease holder keeps the lease");
        let (w, l) = (&hosts[winner], &hosts[1 - winner]);
        assert_ne!(w.instance_id(), l.instance_id(), "each agent has an instance id of its own");
        for want in [
            format!("two agents share host_id {id} (cloned VM image?)"),
            format!("held by host_id {id} instance {}", w.instance_id()),
            format!("this agent is host_id {id} instance {}", l.instance_id()),
            "set agent.host_id".to_string(),
            "not refreshing".to_string(),
        ] {
            assert!(reason.contains(&want), "cycle {cycle}: {want:?} missing in: {reason}");
        }
    }
    let winner = first_winner.unwrap();
    let (w, l) = (&hosts[winner], &hosts[1 - winner]);
    // The colliding agent keeps following the rotating key: it installs the newest version.
    let r = l.refresh(&mock, &[]);
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    let (rotated, version) = bao.get(ROTATING).unwrap();
    assert_eq!(version, CYCLES + 1, "mirror (1), then one version per cycle");
    assert_eq!(l.auth(), rotated, "the colliding agent installed the fleet's credential");
    assert_eq!(l.status()["lease_holder"], id.as_str());
    assert_eq!(l.status()["class"], "transient");

    // The operator's fix: a host_id of its own. From then on it follows without a failure.
    l.set_host_id("vm-second");
    for cycle in CYCLES..CYCLES + 3 {
        let runs = race(&[w, l], &mock);
        for r in &runs {
            assert_eq!(r.code, 0, "cycle {cycle}: {}\n{}", r.stdout, r.stderr);
        }
        assert_eq!(mock.token_requests(), cycle + 1, "cycle {cycle}: exactly one token call");
        assert!(runs.iter().any(|r| r.one()["reason"].as_str().unwrap().contains(&format!("lease held by {id}"))));
    }
    assert_eq!(l.refresh(&mock, &[]).code, 0);
    assert_eq!(l.auth(), bao.get(ROTATING).unwrap().0, "healed: both on the fleet's credential");
    assert_eq!(mock.reuse_detections(), 0, "no refresh_token_reused at any time");
    assert!(mock.is_live_refresh_token(&refresh_token(&l.auth())));
    for (h, r) in hosts.iter().zip(&runs) {
        assert_clean(r, &h.scratch.state_dir(), &all_secrets(&mock, &c, &[&rt]));
    }
}

/// `cp -a` of a directory tree (a cloned VM's copy of the agent's state).
fn copy_tree(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let out = Command::new("cp").arg("-a").arg(from).arg(to).output().unwrap();
    assert!(out.status.success(), "cp -a: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_cloned_vm_with_a_copied_state_dir_refreshes_once_per_cycle_and_names_the_collision() {
    let test = "a_cloned_vm_with_a_copied_state_dir_refreshes_once_per_cycle_and_names_the_collision";
    let Some(bao) = Bao::start(test) else { return };
    let (mock, c, rt, _) = fleet(&bao);
    let original = Host::new(&bao, "", "refresher", Login::Token(&rt));
    let r = original.refresh(&mock, &[]);
    assert_eq!((r.code, r.one()["outcome"].as_str()), (0, Some("refreshed")), "{}\n{}", r.stdout, r.stderr);
    // The clone: same machine id, and /var/lib/codex-auth-agent and CODEX_HOME copied.
    let clone = Host::new(&bao, "", "refresher", Login::Token(&rt));
    copy_tree(&original.scratch.state_dir(), &clone.scratch.state_dir());
    std::fs::write(clone.home.join("auth.json"), original.auth()).unwrap();
    let id = default_host_id();
    const CYCLES: u64 = 20;
    let mut first_winner = None;
    let hosts = [&original, &clone];
    for cycle in 0..CYCLES {
        let runs = race(&hosts, &mock);
        assert_eq!(mock.token_requests(), cycle + 2, "cycle {cycle}: exactly one token call");
        assert_eq!(mock.reuse_detections(), 0, "cycle {cycle}: no refresh_token_reused");
        let (winner, reason) = one_refreshed_one_collided(cycle, &runs);
        assert_eq!(*first_winner.get_or_insert(winner), winner, "cycle {cycle}: the lease holder keeps the lease");
        let instance = original.instance_id();
        assert_eq!(clone.instance_id(), instance, "the copy carries the instance id");
        for want in [
            format!("two agents share host_id {id} (cloned VM image?)"),
            format!("and instance {instance}"),
            "set agent.host_id".to_string(),
            "not refreshing".to_string(),
        ] {
            assert!(reason.contains(&want), "cycle {cycle}: {want:?} missing in: {reason}");
        }
    }
    let winner = first_winner.unwrap();
    let (w, l) = (hosts[winner], hosts[1 - winner]);
    assert_eq!(l.refresh(&mock, &[]).code, 4);
    assert_eq!(l.auth(), bao.get(ROTATING).unwrap().0, "the colliding agent follows the rotating key");

    // Either one reconfigured heals it: here the one that was refreshing gets a host_id of
    // its own. Its old lease still blocks the other until it runs out (at most lease_ttl),
    // so nobody refreshes meanwhile — and nobody spends a token twice.
    w.set_host_id("vm-renamed");
    let runs = race(&hosts, &mock);
    assert_eq!(mock.token_requests(), CYCLES + 1, "nobody refreshes while the old lease lasts");
    assert_eq!(runs[winner].code, 0, "{}\n{}", runs[winner].stdout, runs[winner].stderr);
    assert!(runs[winner].stdout.contains(&format!("lease held by {id}")), "{}", runs[winner].stdout);
    assert_eq!(runs[1 - winner].code, 4, "{}", runs[1 - winner].stdout);
    // The old lease runs out (its expiry moved into the past, as time would): one of them
    // takes the lease, and from then on exactly one of them refreshes per cycle.
    let lease = "codex-auth-lease-team";
    let (bytes, _) = bao.get(lease).unwrap();
    let mut record: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    record["expires_at"] = serde_json::json!("2020-01-01T00:00:00Z");
    bao.put(lease, &serde_json::to_vec(&record).unwrap());
    for cycle in CYCLES..CYCLES + 3 {
        let runs = race(&hosts, &mock);
        for r in &runs {
            assert_eq!(r.code, 0, "cycle {cycle}: {}\n{}", r.stdout, r.stderr);
        }
        let refreshed = runs.iter().filter(|r| r.one()["outcome"] == "refreshed").count();
        assert_eq!(refreshed, 1, "cycle {cycle}: one of them holds the lease now");
        assert_eq!(mock.token_requests(), cycle + 2, "cycle {cycle}: exactly one token call");
        for r in &runs {
            assert_clean(r, &l.scratch.state_dir(), &all_secrets(&mock, &c, &[&rt]));
        }
    }
    assert_eq!(w.refresh(&mock, &[]).code, 0);
    assert_eq!(w.auth(), bao.get(ROTATING).unwrap().0, "healed: both on the fleet's credential");
    assert_eq!(mock.reuse_detections(), 0, "no refresh_token_reused at any time");
}

#[test]
fn a_lease_ttl_shorter_than_one_refresher_cycle_is_a_config_error() {
    let mock = MockServer::start(MockConfig::default());
    let h = Host::with("http://127.0.0.1:8200", "vm-0", "refresher", Login::Token("s.placeholder"), "", "");
    let text = std::fs::read_to_string(&h.config).unwrap();
    let set_ttl = |ttl: &str| {
        std::fs::write(&h.config, text.replacen("[agent]\n", &format!("[agent]\nlease_ttl = \"{ttl}\"\n"), 1)).unwrap();
    };
    let check = || {
        let mut c = agent(&h.scratch, &mock);
        c.arg("--config").arg(&h.config).arg("check-config");
        run(c)
    };
    set_ttl("1s");
    let r = check();
    assert_eq!(r.code, 78, "{}\n{}", r.stdout, r.stderr);
    // Vault request_timeout 1s and request_timeout 20s (Host::with), preflight_timeout 120s:
    // the worker's deadline 540s (lock wait 190s, yield 20s, 2 × (Codex's locks 2 × 65s + refresh 20s),
    // settle 20s, 10s) + 4 × 1s.
    let head = format!("config error in {} at key `agent.lease_ttl`: ", h.config.display());
    assert!(r.stderr.starts_with(&head), "{}", r.stderr);
    for want in ["1s is shorter than", "account team", "9m 4s", "refresh_token_reused", "at least 9m 4s"] {
        assert!(r.stderr.contains(want), "{want:?} missing in: {}", r.stderr);
    }
    // A refresh with that config is refused the same way, before anything is spent.
    let r = h.refresh(&mock, &[]);
    assert_eq!(r.code, 78, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(mock.token_requests(), 0);
    // The minimum itself is accepted.
    set_ttl("9m 4s");
    let r = check();
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
}

/// Hold `name` in `dir` locked from this process (as another cycle of ours would).
fn hold_lock(dir: &Path, name: &str) -> nix::fcntl::Flock<std::fs::File> {
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(name)).unwrap();
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e).unwrap()
}

#[test]
fn a_refresher_does_not_spend_a_token_whose_version_was_rotated_after_it_took_the_lease() {
    let Some(bao) = Bao::start("a_refresher_does_not_spend_a_token_whose_version_was_rotated_after_it_took_the_lease")
    else {
        return;
    };
    let (mock, c, rt, _) = fleet(&bao);
    let refresher = Host::new(&bao, "vm-0", "refresher", Login::Token(&rt));
    assert_eq!(refresher.refresh(&mock, &[]).code, 0);
    let (v2, version) = bao.get(ROTATING).unwrap();
    assert_eq!(version, 2);
    let lease = "codex-auth-lease-team";
    let lease_version = bao.get(lease).unwrap().1;

    // The refresher's next cycle takes the lease and then waits for its cycle lock (held
    // here, as a preflight would hold it). Meanwhile someone else spends version 2's
    // refresh token and writes version 3 (here: a one-shot refresh of a copy, put in Vault).
    let held = hold_lock(&refresher.home, "codex-auth-agent.lock");
    let child = refresher.cmd(&mock, &["--force"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let t0 = std::time::Instant::now();
    while bao.get(lease).unwrap().1 == lease_version {
        assert!(t0.elapsed() < Duration::from_secs(30), "the refresher never renewed its lease");
        std::thread::sleep(Duration::from_millis(20));
    }
    let other = Scratch::new();
    let copy = other.codex_home("codex", Some(std::str::from_utf8(&v2).unwrap()));
    let mut one_shot = agent(&other, &mock);
    one_shot.args(["refresh", "--force", "--json", "--codex-home"]).arg(&copy);
    let r = run(one_shot);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let v3 = std::fs::read(copy.join("auth.json")).unwrap();
    assert_eq!(bao.put(ROTATING, &v3), 3);
    drop(held);

    // Right before its POST the refresher re-reads Vault: version 2 is no longer current,
    // so its token is not sent (it would be refresh_token_reused, revoking the family).
    let out = child.wait_with_output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(4), "{line}");
    assert!(
        line.contains(
            "not spending the refresh token: the rotating key moved from version 2 (installed for \
            this refresh) to version 3"
        ),
        "{line}"
    );
    assert_eq!(mock.token_requests(), 2, "the first rotation and the one-shot refresh, nothing else");
    assert_eq!(mock.reuse_detections(), 0, "no refresh_token_reused");
    // The next run installs version 3 and refreshes from it.
    let r = refresher.refresh(&mock, &["--force"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.one()["reason"].as_str().unwrap().contains("wrote codex-auth-json-b64-rotating-team version 4"),
        "{}",
        r.stdout
    );
    assert_eq!(mock.reuse_detections(), 0);
    assert!(mock.is_live_refresh_token(&refresh_token(&refresher.auth())));
    assert_clean(&r, &refresher.scratch.state_dir(), &all_secrets(&mock, &c, &[&rt]));
}
