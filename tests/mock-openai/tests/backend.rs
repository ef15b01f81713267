//! Codex's backend routes over real HTTP: bearer checks against the mock's own tokens,
//! the bodies Codex 0.169 accepts, backend faults kept apart from token faults, counters.

use std::net::SocketAddr;
use std::time::Duration;

use mock_openai::backend::{ACCOUNTS_CHECK_PATH, RESPONSES_PATH, USAGE_PATH};
use mock_openai::client::{self, ClientResponse};
use mock_openai::{Fault, MockConfig, MockServer};

fn call(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> ClientResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let body = (method == "POST").then_some(("application/json", &b"{}"[..]));
    client::request_with_headers(addr, method, path, &headers, body, client::DEFAULT_TIMEOUT).unwrap()
}

#[test]
fn live_tokens_get_the_bodies_codex_reads() {
    let s = MockServer::start(MockConfig::default());
    let c = s.issue_family("acct-1");
    let r = call(s.addr(), "POST", RESPONSES_PATH, Some(&c.access_token));
    assert_eq!((r.status, r.header("content-type")), (200, Some("text/event-stream")));
    let text = r.text();
    assert!(text.contains("\"text\":\"Banana\"") && text.contains("response.completed"), "{text}");
    let r = call(s.addr(), "GET", ACCOUNTS_CHECK_PATH, Some(&c.access_token));
    assert_eq!(r.json().unwrap()["accounts"][0]["id"], "acct-1");
    let r = call(s.addr(), "GET", USAGE_PATH, Some(&c.access_token));
    assert_eq!(r.json().unwrap()["rate_limit"]["allowed"], true);
    s.set_reply_text("Apple");
    assert!(call(s.addr(), "POST", RESPONSES_PATH, Some(&c.access_token)).text().contains("Apple"));
    assert_eq!(call(s.addr(), "GET", "/backend-api/codex/models", Some(&c.access_token)).status, 404);
    assert_eq!(s.backend_requests(), 5);
    assert_eq!(s.backend_requests_to(RESPONSES_PATH), 2);
    assert_eq!(s.stats().backend_requests, 5);
    assert_eq!(s.token_requests(), 0);
}

#[test]
fn expired_unknown_and_revoked_access_tokens_get_401() {
    let s = MockServer::start(MockConfig::default());
    s.set_access_lifetime(Duration::from_secs(1));
    let short = s.issue_family("short");
    s.set_access_lifetime(Duration::from_secs(3600));
    let revoked = s.issue_family("gone");
    s.revoke_family("gone");
    s.advance_clock(Duration::from_secs(2));
    for token in [Some(short.access_token.as_str()), Some(revoked.access_token.as_str()), Some("not-a-jwt"), None] {
        let r = call(s.addr(), "GET", USAGE_PATH, token);
        assert_eq!(r.status, 401, "{token:?}");
        assert_eq!(r.json().unwrap()["error"]["code"], "token_expired");
    }
}

#[test]
fn backend_faults_do_not_touch_the_token_endpoint() {
    let s = MockServer::start(MockConfig::default());
    let c = s.issue_family("acct-f");
    s.push_backend_fault(Fault::internal_server_error());
    assert_eq!(call(s.addr(), "POST", RESPONSES_PATH, Some(&c.access_token)).status, 500);
    s.push_backend_fault_for("someone-else", Fault::Reset);
    assert_eq!(client::refresh(s.addr(), &c.refresh_token).unwrap().status, 200, "token requests unaffected");
    assert_eq!(call(s.addr(), "POST", RESPONSES_PATH, Some(&c.access_token)).status, 200, "one-shot, other account's");
    s.set_sticky_backend_fault(Some(Fault::Delay(Duration::from_millis(50))));
    assert_eq!(call(s.addr(), "GET", USAGE_PATH, Some(&c.access_token)).status, 200, "a delay still answers");
    assert_eq!(s.stats().pending_faults, 2);
    s.clear_faults();
    assert_eq!(s.stats().pending_faults, 0);
}
