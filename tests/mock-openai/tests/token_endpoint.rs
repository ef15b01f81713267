//! Token semantics over real TCP: rotation, reuse detection and family revocation, expiry,
//! request validation, JWT claims, counters and the request log.

use std::time::Duration;

use mock_openai::client::{self, ClientResponse};
use mock_openai::{CLIENT_ID, MockConfig, MockServer, decode_jwt_payload, make_jwt};
use serde_json::{Value, json};

fn server() -> MockServer {
    MockServer::start(MockConfig::default())
}

fn refresh(s: &MockServer, rt: &str) -> ClientResponse {
    client::refresh(s.addr(), rt).expect("transport")
}

fn new_rt(r: &ClientResponse) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().unwrap()["refresh_token"].as_str().unwrap().to_string()
}

fn error_code(r: &ClientResponse) -> Value {
    r.json().unwrap()["error"]["code"].clone()
}

#[test]
fn rotation_spends_the_old_token() {
    let s = server();
    let c = s.issue_family("acct-1");
    assert!(s.is_live_refresh_token(&c.refresh_token));
    assert!(s.is_live_access_token(&c.access_token));

    let r = refresh(&s, &c.refresh_token);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("connection"), Some("close"));
    let body = r.json().unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 10 * 24 * 3600);
    let rt2 = new_rt(&r);
    assert_ne!(rt2, c.refresh_token);
    assert!(!s.is_live_refresh_token(&c.refresh_token));
    assert!(s.is_live_refresh_token(&rt2));
    assert_eq!(s.current_refresh_token("acct-1"), Some(rt2.clone()));
    assert!(s.is_live_access_token(body["access_token"].as_str().unwrap()));

    // The chain continues.
    let rt3 = new_rt(&refresh(&s, &rt2));
    assert!(s.is_live_refresh_token(&rt3));
    assert_eq!(s.successful_refreshes(), 2);
}

#[test]
fn reuse_revokes_the_family() {
    let s = server();
    let c = s.issue_family("acct-1");
    let rt2 = new_rt(&refresh(&s, &c.refresh_token));

    let r = refresh(&s, &c.refresh_token);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json().unwrap(),
        json!({"error": {
            "message": "Your refresh token has already been used to generate a new access token. Please try \
                signing in again.",
            "type": "invalid_request_error",
            "param": null,
            "code": "refresh_token_reused",
        }})
    );
    assert!(s.family_revoked("acct-1"));
    assert_eq!(s.reuse_detections(), 1);
    assert!(!s.is_live_refresh_token(&rt2));

    // The family's current token and the spent one now both say invalidated.
    for token in [&rt2, &c.refresh_token] {
        let r = refresh(&s, token);
        assert_eq!(r.status, 401);
        assert_eq!(error_code(&r), "refresh_token_invalidated");
    }
    assert_eq!(s.reuse_detections(), 1);
    // A new login is unaffected.
    let again = s.issue_family("acct-1");
    assert_eq!(refresh(&s, &again.refresh_token).status, 200);
    assert!(!s.family_revoked("acct-1"));
}

#[test]
fn unknown_token_and_malformed_requests() {
    let s = server();
    let r = refresh(&s, "CANARY-rt_1_1_0123456789abcdef");
    assert_eq!(r.status, 400);
    assert_eq!(r.json().unwrap(), json!({"error": "invalid_grant", "error_description": "Invalid refresh token"}));

    let c = s.issue_family("a");
    let bad_bodies = [
        json!({"client_id": "someone-else", "grant_type": "refresh_token", "refresh_token": c.refresh_token}),
        json!({"client_id": CLIENT_ID, "grant_type": "authorization_code", "refresh_token": c.refresh_token}),
        json!({"client_id": CLIENT_ID, "grant_type": "refresh_token"}),
    ];
    for b in bad_bodies {
        let r = client::post_json(s.addr(), "/oauth/token", &b).unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.json().unwrap()["error"], "invalid_request");
    }
    let r = client::request(
        s.addr(),
        "POST",
        "/oauth/token",
        Some(("application/json", b"{not json")),
        client::DEFAULT_TIMEOUT,
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json().unwrap()["error"], "invalid_request");
    // None of that consumed the token; extra fields are fine.
    let mut body = client::refresh_body(&c.refresh_token);
    body["refresh_reason"] = json!("expired");
    assert_eq!(client::post_json(s.addr(), "/oauth/token", &body).unwrap().status, 200);
}

#[test]
fn other_routes_and_oversized_requests() {
    let s = server();
    assert_eq!(client::get(s.addr(), "/oauth/token").unwrap().status, 405);
    assert_eq!(client::get(s.addr(), "/nope").unwrap().status, 404);
    // Admin is off by default and indistinguishable from a missing route.
    assert_eq!(client::get(s.addr(), "/__admin/stats").unwrap().status, 404);
    let big = vec![b'x'; mock_openai::MAX_REQUEST_BODY + 1];
    let r =
        client::request(s.addr(), "POST", "/oauth/token", Some(("application/json", &big)), client::DEFAULT_TIMEOUT)
            .unwrap();
    assert_eq!(r.status, 413);
}

#[test]
fn refresh_token_lifetime_and_clock() {
    let s = MockServer::start(MockConfig {
        refresh_token_lifetime: Some(Duration::from_secs(3600)),
        ..MockConfig::default()
    });
    let c = s.issue_family("a");
    s.advance_clock(Duration::from_secs(1800));
    let rt2 = new_rt(&refresh(&s, &c.refresh_token));
    s.advance_clock(Duration::from_secs(3600));
    assert!(!s.is_live_refresh_token(&rt2));
    let r = refresh(&s, &rt2);
    assert_eq!(r.status, 401);
    assert_eq!(error_code(&r), "refresh_token_expired");
    assert!(!s.family_revoked("a"));

    s.set_refresh_token_lifetime(None);
    assert_eq!(refresh(&s, &rt2).status, 200);
}

#[test]
fn access_tokens_expire_on_the_mock_clock() {
    let s = server();
    s.set_access_lifetime(Duration::from_secs(60));
    let c = s.issue_family("a");
    let r = refresh(&s, &c.refresh_token);
    assert_eq!(r.json().unwrap()["expires_in"], 60);
    let at = r.json().unwrap()["access_token"].as_str().unwrap().to_string();
    assert!(s.is_live_access_token(&at));
    s.advance_clock(Duration::from_secs(61));
    assert!(!s.is_live_access_token(&at));
    assert!(!s.is_live_access_token("not.a.jwt"));
    assert!(!s.is_live_access_token(&make_jwt(&json!({"jti": "forged"}))));
}

#[test]
fn jwt_claims() {
    let s = MockServer::start(MockConfig { canary_prefix: "LEAK-".into(), ..MockConfig::default() });
    let c = s.issue_family("acct-9");
    assert!(c.refresh_token.starts_with("LEAK-rt_"));
    let r = refresh(&s, &c.refresh_token).json().unwrap();
    for creds in [
        (c.access_token.as_str(), c.id_token.as_str()),
        (r["access_token"].as_str().unwrap(), r["id_token"].as_str().unwrap()),
    ] {
        let at = decode_jwt_payload(creds.0).unwrap();
        let id = decode_jwt_payload(creds.1).unwrap();
        let auth = &at["https://api.openai.com/auth"];
        assert_eq!(auth["chatgpt_account_id"], "acct-9");
        assert_eq!(auth["chatgpt_plan_type"], "pro");
        assert!(auth["chatgpt_user_id"].as_str().unwrap().starts_with("user-"));
        assert!(at["jti"].as_str().unwrap().starts_with("LEAK-at_"));
        let (iat, exp) = (at["iat"].as_u64().unwrap(), at["exp"].as_u64().unwrap());
        assert_eq!(exp - iat, 10 * 24 * 3600);
        assert_eq!(id["email"], "acct-9@example.com");
        assert_eq!(id["https://api.openai.com/auth"], *auth);
        assert_eq!(id["exp"], exp);
        assert!(id.get("jti").is_none());
    }
}

#[test]
fn counters_and_log() {
    let s = server();
    let a = s.issue_family("a");
    let b = s.issue_family("b");
    let a2 = new_rt(&refresh(&s, &a.refresh_token));
    refresh(&s, &a.refresh_token); // reuse
    refresh(&s, &b.refresh_token);
    refresh(&s, "unknown");
    client::get(s.addr(), "/elsewhere").unwrap();

    assert_eq!(s.token_requests(), 4);
    assert_eq!(s.token_requests_for("a"), 2);
    assert_eq!(s.token_requests_for("b"), 1);
    assert_eq!(s.token_requests_for("nobody"), 0);
    assert_eq!(s.successful_refreshes(), 2);
    assert_eq!(s.reuse_detections(), 1);
    let stats = s.stats();
    assert_eq!(stats.families, 2);
    assert_eq!(stats.revoked_families, 1);

    let log = s.requests_log();
    let summary: Vec<(&str, Option<u16>, Option<&str>)> =
        log.iter().map(|e| (e.path.as_str(), e.status, e.account_id.as_deref())).collect();
    assert_eq!(
        summary,
        vec![
            ("/oauth/token", Some(200), Some("a")),
            ("/oauth/token", Some(401), Some("a")),
            ("/oauth/token", Some(200), Some("b")),
            ("/oauth/token", Some(400), None),
            ("/elsewhere", Some(404), None),
        ]
    );
    let text = serde_json::to_string(&log).unwrap();
    assert!(!text.contains("CANARY-"), "log must not hold tokens");
    assert!(!text.contains(&a2));

    s.reset_counters();
    assert_eq!(s.token_requests(), 0);
    assert!(s.requests_log().is_empty());
}

#[test]
fn concurrent_refreshes_of_one_token_detect_reuse() {
    // Two writers racing with the same token: exactly one wins, the other trips reuse.
    let s = server();
    let c = s.issue_family("a");
    let addr = s.addr();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let rt = c.refresh_token.clone();
            std::thread::spawn(move || client::refresh(addr, &rt).unwrap().status)
        })
        .collect();
    let mut statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    statuses.sort();
    assert_eq!(statuses, vec![200, 401]);
    assert!(s.family_revoked("a"));
}
