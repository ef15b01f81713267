//! Codex's device-code login against the mock, with the real Codex CLI
//! (`codex login --device-auth --experimental_issuer <mock>`): the mock's endpoints behave
//! the way Codex expects on the approve, deny and never-approved paths, and the login it
//! writes is one the agent can then refresh, while the account's older login is revoked.

mod support;

use mock_openai::{MockConfig, MockServer};
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
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
