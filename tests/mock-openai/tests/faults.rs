//! Fault injection over real TCP: every constructor's status/body, one-shot vs sticky,
//! per-account scoping, latency, and each transport fault as a client experiences it.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use mock_openai::client::{self, ClientResponse};
use mock_openai::{Fault, MockConfig, MockServer};
use serde_json::Value;

fn server() -> MockServer {
    MockServer::start(MockConfig::default())
}

fn refresh(s: &MockServer, rt: &str) -> ClientResponse {
    client::refresh(s.addr(), rt).expect("transport")
}

/// What each constructor must put on the wire: status, content-type, and a body check.
#[test]
fn every_constructor_produces_its_documented_answer() {
    type Check = fn(&ClientResponse);
    let table: Vec<(Fault, u16, Option<&str>, Check)> = vec![
        (Fault::refresh_token_expired(), 401, Some("application/json"), |r| {
            assert_eq!(r.json().unwrap()["error"]["code"], "refresh_token_expired")
        }),
        (Fault::refresh_token_reused(), 401, Some("application/json"), |r| {
            assert_eq!(r.json().unwrap()["error"]["code"], "refresh_token_reused")
        }),
        (Fault::refresh_token_invalidated(), 401, Some("application/json"), |r| {
            assert_eq!(r.json().unwrap()["error"]["code"], "refresh_token_invalidated")
        }),
        (Fault::error_code(403, "refresh_token_reused"), 403, Some("application/json"), |r| {
            assert_eq!(r.json().unwrap()["error"]["type"], "invalid_request_error")
        }),
        (Fault::error_code(500, "refresh_token_expired"), 500, Some("application/json"), |r| {
            assert_eq!(r.json().unwrap()["error"]["code"], "refresh_token_expired")
        }),
        (Fault::error_code_string(401, "refresh_token_reused"), 401, Some("application/json"), |r| {
            let v = r.json().unwrap();
            assert_eq!(v["error"], "refresh_token_reused");
            assert!(v["error_description"].is_string());
        }),
        (Fault::error_code_string(403, "refresh_token_invalidated"), 403, Some("application/json"), |r| {
            assert_eq!(r.json().unwrap()["error"], "refresh_token_invalidated")
        }),
        (Fault::unauthorized_empty(), 401, None, |r| assert!(r.body.is_empty())),
        (Fault::unauthorized_unknown_code(), 401, Some("application/json"), |r| {
            let code = r.json().unwrap()["error"]["code"].as_str().unwrap().to_string();
            assert!(!code.starts_with("refresh_token_"));
        }),
        (Fault::invalid_grant(), 400, Some("application/json"), |r| {
            assert_eq!(r.json().unwrap(), serde_json::json!({"error": "invalid_grant"}))
        }),
        (Fault::bad_request_other(), 400, Some("application/json"), |r| {
            let e = r.json().unwrap()["error"].clone();
            assert!(e.is_string() && e != "invalid_grant");
        }),
        (Fault::bad_request_empty(), 400, None, |r| assert!(r.body.is_empty())),
        (Fault::forbidden_plain(), 403, Some("text/plain; charset=utf-8"), |r| assert!(r.json().is_none())),
        (Fault::too_many_requests(), 429, Some("text/plain; charset=utf-8"), |_| {}),
        (Fault::internal_server_error(), 500, Some("text/plain; charset=utf-8"), |_| {}),
        (Fault::bad_gateway(), 502, Some("text/plain; charset=utf-8"), |_| {}),
        (Fault::service_unavailable(), 503, Some("text/plain; charset=utf-8"), |_| {}),
        (Fault::ok_non_json(), 200, Some("application/json"), |r| assert!(r.json().is_none())),
        (Fault::ok_wrong_content_type(), 200, Some("text/html; charset=utf-8"), |r| {
            assert!(r.json().unwrap()["refresh_token"].is_string())
        }),
    ];
    let s = server();
    let c = s.issue_family("a");
    for (fault, status, content_type, check) in table {
        let label = format!("{fault:?}");
        s.push_fault(fault);
        let r = refresh(&s, &c.refresh_token);
        assert_eq!(r.status, status, "{label}");
        assert_eq!(r.header("content-type"), content_type, "{label}");
        assert_eq!(r.header("content-length"), Some(r.body.len().to_string().as_str()), "{label}");
        check(&r);
        // A fault answer never consumes the token.
        assert!(s.is_live_refresh_token(&c.refresh_token), "{label}");
    }
    // Every preset is reachable by name, too.
    for name in Fault::PRESETS {
        s.push_fault(Fault::preset(name).unwrap());
        assert_ne!(refresh(&s, &c.refresh_token).status, 0);
    }
    assert_eq!(refresh(&s, &c.refresh_token).status, 200);
    assert_eq!(s.successful_refreshes(), 1);
}

#[test]
fn one_shot_faults_are_fifo_and_sticky_ones_persist() {
    let s = server();
    let c = s.issue_family("a");
    s.push_fault(Fault::bad_gateway());
    s.push_fault(Fault::too_many_requests());
    assert_eq!(refresh(&s, &c.refresh_token).status, 502);
    assert_eq!(refresh(&s, &c.refresh_token).status, 429);
    let rt = refresh(&s, &c.refresh_token).json().unwrap()["refresh_token"].as_str().unwrap().to_string();

    s.set_sticky_fault(Some(Fault::service_unavailable()));
    for _ in 0..3 {
        assert_eq!(refresh(&s, &rt).status, 503);
    }
    // One-shot goes first, sticky resumes afterwards.
    s.push_fault(Fault::forbidden_plain());
    assert_eq!(refresh(&s, &rt).status, 403);
    assert_eq!(refresh(&s, &rt).status, 503);
    s.set_sticky_fault(None);
    assert_eq!(refresh(&s, &rt).status, 200);
    assert_eq!(s.token_requests(), 9);
    let faults: Vec<Option<String>> = s.requests_log().into_iter().map(|e| e.fault).collect();
    assert_eq!(faults.iter().filter(|f| f.as_deref() == Some("status")).count(), 7);
}

#[test]
fn per_account_faults_leave_other_accounts_alone() {
    let s = server();
    let a = s.issue_family("a");
    let b = s.issue_family("b");
    s.push_fault_for("a", Fault::internal_server_error());
    s.set_sticky_fault_for("b", Some(Fault::refresh_token_expired()));

    let rb = refresh(&s, &b.refresh_token);
    assert_eq!(rb.status, 401);
    assert_eq!(refresh(&s, &a.refresh_token).status, 500);
    assert_eq!(refresh(&s, &a.refresh_token).status, 200, "one-shot for a is used up");
    assert_eq!(refresh(&s, &b.refresh_token).status, 401, "sticky for b persists");
    s.set_sticky_fault_for("b", None);
    assert_eq!(refresh(&s, &b.refresh_token).status, 200);

    // A per-account fault doesn't consume a global one meant for the next request.
    let c = s.issue_family("c");
    let a_rt = s.current_refresh_token("a").unwrap();
    s.push_fault(Fault::bad_gateway());
    s.push_fault_for("a", Fault::too_many_requests());
    assert_eq!(refresh(&s, &a_rt).status, 429);
    assert_eq!(refresh(&s, &c.refresh_token).status, 502);
    s.clear_faults();
    assert_eq!(s.stats().pending_faults, 0);
}

#[test]
fn delay_then_normal_answer_and_latency() {
    let s = server();
    let c = s.issue_family("a");
    s.push_fault(Fault::Delay(Duration::from_millis(300)));
    let t = Instant::now();
    let r = refresh(&s, &c.refresh_token);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.status, 200, "Delay answers normally and rotates");
    assert!(!s.is_live_refresh_token(&c.refresh_token));

    s.set_latency(Duration::from_millis(500));
    s.push_fault(Fault::bad_gateway());
    let t = Instant::now();
    assert_eq!(refresh(&s, "whatever").status, 502);
    assert!(t.elapsed() >= Duration::from_millis(500), "latency applies to faulted answers");
    let t = Instant::now();
    assert_eq!(refresh(&s, "whatever").status, 400);
    assert!(t.elapsed() >= Duration::from_millis(500));
    // Latency is for the token endpoint only.
    let t = Instant::now();
    client::get(s.addr(), "/nope").unwrap();
    assert!(t.elapsed() < Duration::from_millis(500));
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe)
}

#[test]
fn reset_leaves_the_token_alone() {
    let s = server();
    let c = s.issue_family("a");
    s.push_fault(Fault::Reset);
    let e = client::refresh(s.addr(), &c.refresh_token).unwrap_err();
    assert!(is_reset(&e), "{e:?}");
    assert!(s.is_live_refresh_token(&c.refresh_token));
    assert_eq!(s.token_requests(), 1);
    assert_eq!(s.requests_log()[0].status, None);
    assert_eq!(refresh(&s, &c.refresh_token).status, 200);
}

#[test]
fn rotate_then_reset_spends_the_token() {
    let s = server();
    let c = s.issue_family("a");
    s.push_fault(Fault::RotateThenReset);
    let e = client::refresh(s.addr(), &c.refresh_token).unwrap_err();
    assert!(is_reset(&e), "{e:?}");
    assert!(!s.is_live_refresh_token(&c.refresh_token));
    let current = s.current_refresh_token("a").unwrap();
    assert_ne!(current, c.refresh_token);
    assert_eq!(s.successful_refreshes(), 1);
    // The naive retry with the old token is reuse and kills the login.
    let r = refresh(&s, &c.refresh_token);
    assert_eq!(r.json().unwrap()["error"]["code"], "refresh_token_reused");
    assert!(s.family_revoked("a"));
}

#[test]
fn garbage_is_not_http() {
    let s = server();
    let c = s.issue_family("a");
    s.push_fault(Fault::Garbage);
    let e = client::refresh(s.addr(), &c.refresh_token).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e:?}");
    assert!(s.is_live_refresh_token(&c.refresh_token));
}

#[test]
fn oversized_body_is_streamed_in_full() {
    let s = server();
    let c = s.issue_family("a");
    let n = 3 * 1024 * 1024 + 7;
    s.push_fault(Fault::Oversized(n));
    let r = refresh(&s, &c.refresh_token);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.body.len(), n);
    assert!(r.body.starts_with(br#"{"access_token":""#));
    assert!(s.is_live_refresh_token(&c.refresh_token));
    // Tiny sizes still give exactly n bytes.
    s.push_fault(Fault::Oversized(3));
    assert_eq!(refresh(&s, &c.refresh_token).body, b"{\"a");
}

#[test]
fn slowloris_dribbles_a_503_without_consuming() {
    let s = server();
    let c = s.issue_family("a");
    s.push_fault(Fault::Slowloris { byte_interval: Duration::from_millis(2) });
    let addr = s.addr();
    let mut stream = TcpStream::connect(addr).unwrap();
    let body = client::refresh_body(&c.refresh_token).to_string();
    write!(
        stream,
        "POST /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut raw, mut reads) = (Vec::new(), 0);
    let t = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        reads += 1;
    }
    let r = client::parse_response(&raw).unwrap();
    assert_eq!(r.status, 503);
    // Reads may coalesce under load, but never into one: the server paces every byte.
    assert!(reads >= 10, "{reads} reads for {} bytes", raw.len());
    assert!(t.elapsed() >= Duration::from_millis(2) * (raw.len() as u32 - 1));
    assert!(s.is_live_refresh_token(&c.refresh_token));
}

#[test]
fn hang_times_out_the_client_and_is_counted() {
    let s = server();
    let c = s.issue_family("a");
    s.push_fault(Fault::Hang);
    let bytes = client::refresh_body(&c.refresh_token).to_string().into_bytes();
    let e = client::request(
        s.addr(),
        "POST",
        "/oauth/token",
        Some(("application/json", &bytes)),
        Duration::from_millis(300),
    )
    .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{e:?}");
    assert_eq!(s.token_requests(), 1);
    assert!(s.is_live_refresh_token(&c.refresh_token));
    // The next request is served while the hung one is still held.
    let r = refresh(&s, &c.refresh_token);
    assert_eq!(r.status, 200);
    let _: Value = r.json().unwrap();
}
