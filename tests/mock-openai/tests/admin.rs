//! The admin API, in-process (the same code path the binary serves) and through the real
//! `mock-openai` binary started as a child process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mock_openai::client::{self, ClientResponse};
use mock_openai::{Credentials, Fault, MockConfig, MockServer};
use serde_json::{Value, json};

fn admin(addr: SocketAddr, path: &str, body: Value) -> Value {
    let r = client::post_json(addr, path, &body).unwrap();
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json().unwrap()
}

fn stats(addr: SocketAddr) -> Value {
    let r = client::get(addr, "/__admin/stats").unwrap();
    assert_eq!(r.status, 200);
    r.json().unwrap()
}

fn refresh(addr: SocketAddr, rt: &str) -> ClientResponse {
    client::refresh(addr, rt).unwrap()
}

/// The whole admin surface, driven over HTTP only (as a benchmark script would).
fn exercise(addr: SocketAddr, prefix: &str) {
    let creds: Credentials =
        serde_json::from_value(admin(addr, "/__admin/families", json!({"account_id": "a1"}))).unwrap();
    assert_eq!(creds.account_id, "a1");
    assert!(creds.refresh_token.starts_with(&format!("{prefix}rt_")));
    let live = |rt: &str| admin(addr, "/__admin/check", json!({"refresh_token": rt}))["live"].clone();
    assert_eq!(live(&creds.refresh_token), true);
    assert_eq!(admin(addr, "/__admin/check", json!({"access_token": creds.access_token}))["live"], true);

    // One-shot fault by full serde form, then by preset with a status override.
    let fault = serde_json::to_value(Fault::too_many_requests()).unwrap();
    admin(addr, "/__admin/fault", json!({"fault": fault}));
    assert_eq!(refresh(addr, &creds.refresh_token).status, 429);
    admin(addr, "/__admin/fault", json!({"fault": {"kind": "preset", "name": "refresh_token_reused", "status": 403}}));
    let r = refresh(addr, &creds.refresh_token);
    assert_eq!(r.status, 403);
    assert_eq!(r.json().unwrap()["error"]["code"], "refresh_token_reused");

    // Sticky per-account fault, then clearing it with null.
    let b: Credentials = serde_json::from_value(admin(addr, "/__admin/families", json!({"account_id": "b1"}))).unwrap();
    admin(
        addr,
        "/__admin/fault",
        json!({"fault": {"kind": "status", "status": 500}, "sticky": true, "account_id": "b1"}),
    );
    assert_eq!(refresh(addr, &b.refresh_token).status, 500);
    assert_eq!(refresh(addr, &b.refresh_token).status, 500);
    assert_eq!(stats(addr)["pending_faults"], 1);
    admin(addr, "/__admin/fault", json!({"fault": null, "sticky": true, "account_id": "b1"}));
    assert_eq!(refresh(addr, &b.refresh_token).status, 200);

    // Rotation, then current / check see it.
    let r = refresh(addr, &creds.refresh_token);
    assert_eq!(r.status, 200);
    let rt2 = r.json().unwrap()["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(live(&creds.refresh_token), false);
    let cur = admin(addr, "/__admin/current", json!({"key": "a1"}));
    assert_eq!(cur, json!({"refresh_token": rt2, "revoked": false}));

    // Latency, then clear removes it (and faults).
    admin(addr, "/__admin/latency", json!({"ms": 500}));
    admin(addr, "/__admin/fault", json!({"fault": {"kind": "hang"}, "sticky": true}));
    assert_eq!(stats(addr)["latency_ms"], 500);
    admin(addr, "/__admin/clear", json!({}));
    let t = Instant::now();
    let r = refresh(addr, &rt2);
    assert_eq!(r.status, 200);
    assert!(t.elapsed() < Duration::from_millis(500));
    let rt3 = r.json().unwrap()["refresh_token"].as_str().unwrap().to_string();

    // Clock and lifetimes.
    admin(addr, "/__admin/access-lifetime", json!({"secs": 60}));
    let r = refresh(addr, &rt3);
    assert_eq!(r.json().unwrap()["expires_in"], 60);
    let at = r.json().unwrap()["access_token"].as_str().unwrap().to_string();
    let rt4 = r.json().unwrap()["refresh_token"].as_str().unwrap().to_string();
    admin(addr, "/__admin/clock", json!({"advance_secs": 61}));
    assert_eq!(admin(addr, "/__admin/check", json!({"access_token": at}))["live"], false);
    admin(addr, "/__admin/refresh-lifetime", json!({"secs": 30}));
    assert_eq!(refresh(addr, &rt4).json().unwrap()["error"]["code"], "refresh_token_expired");
    admin(addr, "/__admin/refresh-lifetime", json!({"secs": null}));

    // Revoke and stats.
    assert_eq!(admin(addr, "/__admin/revoke", json!({"key": "a1"})), json!({"revoked": true}));
    assert_eq!(refresh(addr, &rt4).json().unwrap()["error"]["code"], "refresh_token_invalidated");
    let st = stats(addr);
    assert_eq!(st["token_requests"], 10);
    assert_eq!(st["successful_refreshes"], 4);
    assert_eq!(st["token_requests_by_account"]["b1"], 3);
    assert_eq!(st["families"], 2);
    assert_eq!(st["revoked_families"], 1);
    assert_eq!(st["clock_offset_secs"], 61);

    // The log holds token traffic only, and no token values.
    let log = client::get(addr, "/__admin/log").unwrap().json().unwrap();
    assert_eq!(log.as_array().unwrap().len(), 10);
    assert!(!log.to_string().contains(prefix));
    admin(addr, "/__admin/reset-counters", json!({}));
    assert_eq!(stats(addr)["token_requests"], 0);

    // Bad input is a 400 with a reason, unknown routes 404.
    let r = client::post_json(addr, "/__admin/fault", &json!({"fault": {"kind": "nope"}})).unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("nope"));
    let r = client::post_json(addr, "/__admin/fault", &json!({"sticky": false})).unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(client::get(addr, "/__admin/nothing").unwrap().status, 404);
}

#[test]
fn admin_api_round_trip_in_process() {
    let s = MockServer::start(MockConfig::default().with_admin());
    exercise(s.addr(), "CANARY-");
    // The library view agrees with what the HTTP side did.
    assert!(s.family_revoked("a1"));
    assert!(!s.family_revoked("b1"));
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        // Kill only the child this test started, by its handle.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn binary_serves_admin_and_writes_port_file() {
    let dir = std::env::temp_dir().join(format!("mock-openai-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port_file = dir.join("port");
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_mock-openai"))
            .args(["--listen", "127.0.0.1:0", "--canary-prefix", "BIN-", "--port-file"])
            .arg(&port_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("listening on ").expect(&line).to_string();
    let port: u16 = std::fs::read_to_string(&port_file).unwrap().trim().parse().unwrap();
    assert_eq!(url, format!("http://127.0.0.1:{port}"));
    let addr: SocketAddr = url.strip_prefix("http://").unwrap().parse().unwrap();

    exercise(addr, "BIN-");

    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn binary_rejects_bad_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_mock-openai")).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}

/// `/__admin/device` lists pending device codes and approves or denies them (what the
/// nspawn e2e test does for `codex-authctl login`), driving the same endpoints Codex polls.
#[test]
fn admin_device_approves_and_denies_pending_codes() {
    let m = MockServer::start(MockConfig::default().with_admin());
    let addr = m.addr();
    let start = || {
        let r =
            client::post_json(addr, "/api/accounts/deviceauth/usercode", &json!({"client_id": mock_openai::CLIENT_ID}))
                .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        r.json().unwrap()
    };
    let poll = |d: &Value| {
        let body = json!({"device_auth_id": d["device_auth_id"], "user_code": d["user_code"]});
        client::post_json(addr, "/api/accounts/deviceauth/token", &body).unwrap().status
    };
    let (a, b) = (start(), start());
    let pending = client::get(addr, "/__admin/device").unwrap().json().unwrap();
    assert_eq!(pending["pending"], json!([a["user_code"], b["user_code"]]));
    assert_eq!(poll(&a), 403);
    assert_eq!(
        admin(addr, "/__admin/device", json!({"user_code": a["user_code"], "account_id": "a1"}))["decided"],
        true
    );
    assert_eq!(admin(addr, "/__admin/device", json!({"user_code": b["user_code"]}))["decided"], true);
    assert_eq!(admin(addr, "/__admin/device", json!({"user_code": b["user_code"]}))["decided"], false);
    assert_eq!((poll(&a), poll(&b)), (200, 401));
    assert_eq!(client::get(addr, "/__admin/device").unwrap().json().unwrap()["pending"], json!([]));
}
