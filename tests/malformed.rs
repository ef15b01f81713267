//! Malformed input from outside, black-box (issue #7): generated token-endpoint answers
//! through the real binary, and a running daemon whose one account's auth.json turns into
//! a series of broken documents while another receives broken Store and Seed payloads. Cases are
//! drawn with proptest's deterministic runner (fixed seed), so a failure reproduces.
//! Properties: no crash, a clear error, the refused file byte-identical, and the healthy
//! account keeps refreshing.

mod support;

use mock_openai::{Fault, MockConfig, MockServer};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use std::os::fd::AsFd;
use std::path::Path;
use support::dbus::*;
use support::*;

/// Server-chosen text and stored tokens carry this; it must show up nowhere.
const CANARY: &str = "CANARY-rt_";

/// Draw `n` values of `strategy` from a fixed seed.
fn draw<S: Strategy>(strategy: S, n: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::deterministic();
    (0..n).map(|_| strategy.new_tree(&mut runner).unwrap().current()).collect()
}

fn content_type() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["application/json", "text/html", "text/plain", "application/octet-stream", ""])
}

/// A token-endpoint answer and the exit code the Codex table gives it (0 refreshed,
/// 3 permanent, 4 transient), built row by row from the contract.
fn answer() -> impl Strategy<Value = (u16, String, i32)> {
    let permanent_code =
        prop::sample::select(vec!["refresh_token_expired", "refresh_token_reused", "refresh_token_invalidated"]);
    let not_401 = prop_oneof![Just(400u16), Just(403), Just(429), 500u16..600];
    let junk = prop_oneof![
        Just(String::new()),
        "<html>[a-z ]{0,30}</html>",
        "\\PC{0,40}".prop_filter("not JSON", |s| serde_json::from_str::<Value>(s).is_err()),
        "[a-z_]{1,20}".prop_map(|c| json!({"error": {"code": c, "message": CANARY}}).to_string()),
        "[a-z_]{1,20}".prop_map(|c| json!({"error": c, "error_description": CANARY}).to_string()),
    ]
    .prop_filter("no table code", |b| !b.contains("refresh_token_") && !b.contains("invalid_grant"));
    let sig = format!("{CANARY}sig");
    let jwt = move |claims: &Value| format!("e30.{}.{sig}", b64(claims.to_string().as_bytes()));
    prop_oneof![
        // Any status whose body carries a permanent code, in either shape.
        1 => (400u16..600, permanent_code.clone(), any::<bool>()).prop_map(|(st, c, nested)| {
            let body = if nested {
                json!({"error": {"code": c, "message": CANARY}})
            } else {
                json!({"error": c, "error_description": CANARY})
            };
            (st, body.to_string(), 3)
        }),
        // Any 401, whatever it says.
        1 => junk.clone().prop_map(|b| (401, b, 3)),
        1 => Just((400, json!({"error": "invalid_grant", "error_description": CANARY}).to_string(), 3)),
        // Everything else that is not a success: transient.
        3 => (not_401, junk).prop_map(|(st, b)| (st, b, 4)),
        // 200 that is not a usable answer: transient, nothing written.
        2 => prop_oneof![
            Just(String::new()),
            "\\PC{1,30}".prop_filter("not JSON", |s| serde_json::from_str::<Value>(s).is_err()),
            Just("[]".to_string()),
            Just(json!({"refresh_token": 5}).to_string()),
            Just(json!({"access_token": ["x"], "refresh_token": "r"}).to_string()),
            Just(json!({"id_token": "not-a-jwt", "refresh_token": format!("{CANARY}new")}).to_string()),
            (300usize..400).prop_map(|k| json!({"refresh_token": CANARY.repeat(k * 100)}).to_string()),
        ]
        .prop_map(|b| (200, b, 4)),
        // 200 with some tokens: refreshed, the missing ones kept.
        2 => (prop::option::of("[A-Za-z0-9_-]{4,12}"), prop::option::of("[A-Za-z0-9_-]{4,12}"), any::<bool>()).prop_map(
            move |(rt, at, id)| {
                let mut m = serde_json::Map::new();
                if let Some(rt) = rt {
                    m.insert("refresh_token".into(), json!(format!("{CANARY}{rt}")));
                }
                if let Some(at) = at {
                    m.insert("access_token".into(), json!(jwt(&json!({"exp": 4_000_000_000u64, "n": at}))));
                }
                if id {
                    m.insert("id_token".into(), json!(jwt(&json!({"email": "a@b.example"}))));
                }
                m.insert("expires_in".into(), json!("soon"));
                (200, Value::Object(m).to_string(), 0)
            }
        ),
    ]
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn generated_token_answers_are_classified_and_never_written_wrong() {
    let (m, s) = (MockServer::start(MockConfig::default()), Scratch::new());
    let cases = draw((answer(), content_type()), 64);
    let mut by_code = std::collections::BTreeMap::new();
    for ((_, _, code), _) in &cases {
        *by_code.entry(*code).or_insert(0) += 1;
    }
    println!("token answers by expected exit code: {by_code:?}");
    for (i, ((status, body, code), ctype)) in cases.into_iter().enumerate() {
        let c = m.issue_family(&format!("acct-{i}"));
        let home = s.codex_home(&format!("h{i}"), Some(&auth_json(&c, OLD)));
        let before = std::fs::read(home.join("auth.json")).unwrap();
        m.push_fault(Fault::status(status, body.clone(), ctype));
        let r = run({
            let mut cmd = agent(&s, &m);
            cmd.args(["refresh", "--json", "--force", "--codex-home"]).arg(&home);
            cmd
        });
        let what = format!("case {i}: HTTP {status} {ctype:?} {:.200}", body);
        assert_eq!(r.code, code, "{what}\n{}{}", r.stdout, r.stderr);
        let line = r.one();
        let after = std::fs::read(home.join("auth.json")).unwrap();
        if code == 0 {
            // Every token written is a string: the one the answer carried, else the old one.
            let sent: Value = serde_json::from_str(&body).unwrap();
            let file: Value = serde_json::from_slice(&after).unwrap();
            for (k, old) in
                [("id_token", &c.id_token), ("access_token", &c.access_token), ("refresh_token", &c.refresh_token)]
            {
                let want = sent[k].as_str().unwrap_or(old);
                assert_eq!(file["tokens"][k].as_str(), Some(want), "{what}: {k}");
            }
            assert_eq!(file["x_unknown_top"]["keep"], true, "{what}");
            codex_auth_agent::core::authfile::AuthFile::parse(&after, &home).expect("a written file parses");
        } else {
            assert_eq!(line["class"], if code == 3 { "permanent" } else { "transient" }, "{what}");
            assert_eq!(after, before, "{what}: a failed refresh changed auth.json");
            let reason = line["reason"].as_str().unwrap();
            assert!(reason.contains("will retry") || reason.contains("codex login --device-auth"), "{what}: {reason}");
        }
        assert!(!r.stdout.contains(CANARY) && !r.stderr.contains(CANARY), "{what}: server text or a token leaked");
    }
}

/// Broken auth.json documents, each different, none of which parses.
fn broken_auth(valid: String) -> impl Strategy<Value = Vec<u8>> {
    let v: Value = serde_json::from_str(&valid).unwrap();
    let wrong =
        prop_oneof![Just(json!(5)), Just(json!(true)), Just(json!([])), Just(json!({"x": 1})), Just(json!(1e300))];
    let field = prop::sample::select(vec![
        "/auth_mode",
        "/last_refresh",
        "/tokens",
        "/tokens/id_token",
        "/tokens/access_token",
        "/tokens/refresh_token",
        "/tokens/account_id",
    ]);
    let valid_bytes = valid.clone().into_bytes();
    prop_oneof![
        (field, wrong).prop_map(move |(f, w)| {
            let mut d = v.clone();
            *d.pointer_mut(f).unwrap() = w;
            serde_json::to_vec_pretty(&d).unwrap()
        }),
        any::<prop::sample::Index>().prop_map({
            let b = valid_bytes.clone();
            move |at| b[..at.index(b.len())].to_vec()
        }),
        (any::<prop::sample::Index>(), prop::sample::select(vec![0xffu8, 0xc0, 0x80])).prop_map({
            let b = valid_bytes.clone();
            move |(at, x)| {
                let mut b = b.clone();
                let i = at.index(b.len());
                b[i] = x;
                b
            }
        }),
        "[^{\\[]\\PC{0,30}".prop_map(String::into_bytes),
        (129usize..200).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes()),
        Just(valid.replace("Z\"", "\"").into_bytes()),
    ]
    .prop_filter("does not parse", |b| codex_auth_agent::core::authfile::AuthFile::parse(b, Path::new("x")).is_err())
}

/// Empty or cut off mid-document, as a reader may see Codex 0.130's in-place rewrite.
fn incomplete(doc: &[u8]) -> bool {
    codex_auth_agent::core::authfile::AuthFile::parse(doc, Path::new("x")).unwrap_err().incomplete
}

/// Store payloads the daemon must refuse, with a part of the message it must give.
fn bad_store_payload(valid: String) -> impl Strategy<Value = (Vec<u8>, &'static str)> {
    let doc: Value = serde_json::from_str(&valid).unwrap();
    let no_tokens = prop_oneof![
        Just(json!({})),
        Just(json!({"auth_mode": "apikey", "OPENAI_API_KEY": "sk-x"})),
        Just(json!({"tokens": null})),
        Just({
            let mut d = doc.clone();
            d["tokens"].as_object_mut().unwrap().remove("refresh_token");
            d
        }),
    ];
    prop_oneof![
        Just((Vec::new(), "is not valid JSON")),
        "[^{\\[ ]\\PC{0,60}".prop_map(|s| (s.into_bytes(), "is not valid JSON")),
        no_tokens.prop_map(|d| (d.to_string().into_bytes(), "has no refresh token")),
        (1usize..64).prop_map({
            let v = valid.clone();
            move |k| {
                let pad = "x".repeat(1024 * 1024 + k * 1024);
                (v.replacen('{', &format!("{{\"x_pad\":\"{pad}\","), 1).into_bytes(), "larger than 1024 KiB")
            }
        }),
        any::<prop::sample::Index>().prop_map(move |at| {
            let mut b = valid.clone().into_bytes();
            let i = b.iter().enumerate().filter(|(_, c)| **c == b'"').map(|(i, _)| i + 1).nth(at.index(8)).unwrap();
            b[i] = 0xff;
            (b, "is not valid JSON")
        }),
    ]
}

#[tokio::test]
async fn malformed_files_and_store_payloads_leave_other_accounts_alone() {
    if !require_root("malformed_files_and_store_payloads_leave_other_accounts_alone") {
        return;
    }
    let (m, s) = (MockServer::start(MockConfig::default()), Scratch::new());
    let bus = PrivateBus::start(s.path());
    let fam = |id: &str| m.issue_family(id);
    let (cb, ct, ch) = (fam("acct-broken"), fam("acct-target"), fam("acct-healthy"));
    let homes: Vec<_> = [("broken", &cb), ("target", &ct), ("healthy", &ch)]
        .iter()
        .map(|(n, c)| s.codex_home(n, Some(&auth_json(c, &recent()))))
        .collect();
    let accounts: String = ["broken", "target", "healthy"]
        .iter()
        .zip(&homes)
        .map(|(n, h)| format!("\n[accounts.{n}]\nuser = \"{}\"\ncodex_home = \"{}\"\n", me(), h.display()))
        .collect();
    let cfg = s.config(&format!("[defaults]\nrequest_timeout = \"3s\"\n{accounts}"));
    let mut d = AgentDaemon::start(&s, &m, &cfg, &bus);
    let conn = zbus::connection::Builder::address(bus.address.as_str()).unwrap().build().await.unwrap();
    for n in ["broken", "target", "healthy"] {
        wait_state(&conn, n, "ok").await;
    }
    let (broken, target, healthy) =
        (account(&conn, "broken").await, account(&conn, "target").await, account(&conn, "healthy").await);
    let target_before = std::fs::read(homes[1].join("auth.json")).unwrap();
    let seed = cfg.parent().unwrap().join("seeds/target.json");
    let mut docs = draw(broken_auth(auth_json(&cb, &recent())), 40);
    docs.dedup();
    docs.truncate(20);
    let payloads = draw(bad_store_payload(auth_json(&ct, &recent())), docs.len());
    let mut healthy_requests = m.token_requests_for("acct-healthy");
    let mut quarantined = false;
    for (i, (doc, (payload, says))) in docs.iter().zip(&payloads).enumerate() {
        // The broken account: a clear permanent failure naming the field, no token request;
        // an empty or cut-off file (Codex 0.130 mid-write looks so) is transient instead.
        std::fs::write(homes[0].join("auth.json"), doc).unwrap();
        let (o, reason): (String, String) = broken.call("Refresh", &(false,)).await.unwrap();
        assert_eq!(o, "failed", "case {i}: {reason}");
        if incomplete(doc) && quarantined {
            // A quarantined login waits for a file that parses; a torn one does not lift it.
            assert!(reason.contains("quarantined"), "case {i}: {reason}");
        } else if incomplete(doc) {
            assert!(reason.contains("may be Codex writing it") && reason.contains("will retry"), "case {i}: {reason}");
        } else {
            quarantined = true;
            assert!(
                reason.contains("invalid auth.json")
                    && reason.contains("field `")
                    && reason.contains("fix: log in again"),
                "case {i}: {reason}"
            );
        }
        // The target account: Store and Seed refuse the payload with a clear D-Bus error.
        let file = s.path().join(format!("payload-{i}"));
        std::fs::write(&file, payload).unwrap();
        for method in ["Store", "Seed"] {
            let fd = std::fs::File::open(&file).unwrap();
            let err = target
                .call::<_, _, (String, String)>(method, &(zbus::zvariant::Fd::from(fd.as_fd()),))
                .await
                .expect_err("a malformed payload must be refused");
            let zbus::Error::MethodError(name, Some(msg), _) = &err else { panic!("case {i} {method}: {err:?}") };
            assert_eq!(name.as_str(), "org.freedesktop.DBus.Error.InvalidArgs", "case {i} {method}: {msg}");
            assert!(
                msg.starts_with("the passed auth.json") && msg.contains(says),
                "case {i} {method}: wanted {says:?}: {msg}"
            );
            assert_eq!(std::fs::read(homes[1].join("auth.json")).unwrap(), target_before, "case {i}: target changed");
            assert!(!seed.exists(), "case {i}: a refused Seed left a seed file");
        }
        // The healthy account keeps refreshing.
        let (o, reason): (String, String) = healthy.call("Refresh", &(true,)).await.unwrap();
        assert_eq!(o, "refreshed", "case {i}: {reason}");
        let now = m.token_requests_for("acct-healthy");
        assert_eq!(now, healthy_requests + 1, "case {i}: one token request for the healthy account");
        healthy_requests = now;
    }
    assert_eq!(wait_state(&conn, "healthy", "ok").await.consecutive_failures, 0);
    let broken_state = if quarantined { "failed_permanent" } else { "failed_transient" };
    assert_eq!(view(&conn, "broken").await.state.as_str(), broken_state);
    assert_eq!(view(&conn, "target").await.state.as_str(), "ok");
    assert_eq!(m.token_requests_for("acct-broken") + m.token_requests_for("acct-target"), 0, "no token spent");
    // Still alive and answering.
    let version: String = manager(&conn).await.get_property("Version").await.unwrap();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert!(d.child.as_mut().unwrap().try_wait().unwrap().is_none(), "the daemon died:\n{}", d.log_text());
    assert!(!d.log_text().contains(CANARY), "a token leaked into the daemon log");
    println!(
        "malformed: {} auth.json documents, {} Store and Seed payloads, {healthy_requests} healthy refreshes",
        docs.len(),
        payloads.len()
    );
    assert_eq!(d.stop(), 0);
}
