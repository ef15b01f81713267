//! Generated token-endpoint answers (issue #7, "Malformed input"): error bodies of every
//! shape (both OpenAI shapes, codes of the wrong type, non-JSON, HTML, empty, non-UTF-8,
//! deep nesting, large), success bodies with missing, null, empty, wrong-typed and partial
//! tokens, and Codex log text. Properties: no panic; every failure is classified exactly as
//! the Codex 0.169 table says (shared/notes/codex-contract.md), carries its status and a
//! fix, and never echoes the body; a success never yields a token that is not a string,
//! and merging it keeps auth.json valid.

use super::oauth::parse_success;
use crate::core::authfile::{AuthFile, jwt};
use crate::core::classify::{RELOGIN, classify_http, from_codex_log};
use crate::core::outcome::FailureClass;
use base64::Engine;
use proptest::prelude::*;
use serde_json::{Value, json};
use std::path::Path;

/// Server-chosen text (descriptions, messages, unknown codes) carries this; it must never
/// reach a reason.
const CANARY: &str = "CANARY";
const PERMANENT_CODES: &[&str] = &["refresh_token_expired", "refresh_token_reused", "refresh_token_invalidated"];

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "\\PC{0,10}".prop_map(|s| Value::from(format!("{CANARY}{s}"))),
    ];
    leaf.prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An error code as a server might send it: a table code, a random one, or junk.
fn code() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(PERMANENT_CODES).prop_map(str::to_string),
        Just("invalid_grant".to_string()),
        Just("invalid_request".to_string()),
        "[a-z_]{0,20}",
        "\\PC{0,20}".prop_map(|s| format!("{CANARY} {s}")),
    ]
}

/// An error body and the code the contract reads from it (None: no code).
fn error_body() -> impl Strategy<Value = (Vec<u8>, Option<String>)> {
    let json_bytes = |v: Value| serde_json::to_vec(&v).unwrap();
    prop_oneof![
        // {"error":{"message":…,"code":…}}
        (code(), any_json()).prop_map(move |(c, extra)| {
            (json_bytes(json!({"error": {"message": format!("{CANARY} msg"), "code": c, "x": extra}})), Some(c))
        }),
        // {"error":"…","error_description":…}
        (code(), any_json()).prop_map(move |(c, d)| (json_bytes(json!({"error": c, "error_description": d})), Some(c))),
        // error present but neither shape: code of the wrong type, or no code.
        any_json()
            .prop_filter("not a string", |v| !v.is_string() && !v.is_object())
            .prop_map(move |v| (json_bytes(json!({"error": v})), None)),
        any_json().prop_map(move |v| (
            json_bytes(json!({"error": {"code": v.clone(), "message": v}})),
            v.as_str().map(str::to_string)
        )),
        // Valid JSON without an error field, or not an object.
        any_json().prop_map(move |v| {
            let code = v.get("error").and_then(Value::as_str).map(str::to_string);
            (json_bytes(v), code)
        }),
        // Not JSON at all.
        Just((b"".to_vec(), None)),
        "<html>\\PC{0,40}</html>".prop_map(|s| (s.into_bytes(), None)),
        prop::collection::vec(any::<u8>(), 0..64)
            .prop_filter("not JSON", |b| serde_json::from_slice::<Value>(b).is_err())
            .prop_map(|b| (b, None)),
        // A permanent code inside a document truncated before its end.
        (prop::sample::select(PERMANENT_CODES), 1usize..30).prop_map(|(c, cut)| {
            let b = format!(r#"{{"error":{{"code":"{c}","message":"{CANARY}"}}}}"#).into_bytes();
            (b[..b.len() - cut.min(b.len() - 1)].to_vec(), None)
        }),
        // Nested past the parser's limit, and large bodies.
        (129usize..300).prop_map(|n| (format!("{{\"error\":{}{}}}", "[".repeat(n), "]".repeat(n)).into_bytes(), None)),
        (1usize..200).prop_map(move |k| {
            (
                json_bytes(json!({"error": "refresh_token_reused", "error_description": CANARY.repeat(k * 100)})),
                Some("refresh_token_reused".to_string()),
            )
        }),
    ]
}

/// The Codex 0.169 table, as written in the contract notes.
fn expected_class(status: u16, code: Option<&str>) -> FailureClass {
    match code {
        Some(c) if PERMANENT_CODES.contains(&c) => FailureClass::Permanent,
        _ if status == 401 => FailureClass::Permanent,
        Some("invalid_grant") if status == 400 => FailureClass::Permanent,
        _ => FailureClass::Transient,
    }
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![Just(400u16), Just(401), Just(403), Just(429), Just(500), Just(502), Just(503), 300u16..600]
        .prop_filter("not 2xx", |s| !(200..300).contains(s))
}

/// A token field in a success body: absent, null, empty, a string, or a wrong type.
fn token_field(jwt_ok: bool) -> impl Strategy<Value = Option<Value>> {
    let good = if jwt_ok {
        "[a-z]{0,8}"
            .prop_map(|s| {
                format!(
                    "e30.{}.{CANARY}sig",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .encode(format!("{{\"exp\":1800000000,\"n\":\"{s}\"}}"))
                )
            })
            .boxed()
    } else {
        "[A-Za-z0-9._-]{1,20}".prop_map(|s| format!("{CANARY}{s}")).boxed()
    };
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        Just(Some(json!(""))),
        good.prop_map(|s| Some(json!(s))),
        "[A-Za-z0-9_-]{1,12}".prop_map(|s| Some(json!(format!("{CANARY}{s}")))),
        any_json().prop_filter("wrong type", |v| !v.is_string() && !v.is_null()).prop_map(Some),
    ]
}

/// A 2xx body: an object with token fields of any kind plus extras, or not an object.
fn success_body() -> impl Strategy<Value = Vec<u8>> {
    let object = (token_field(true), token_field(true), token_field(false), any_json(), any_json())
        .prop_map(|(id, access, refresh, expires_in, scope)| {
            let mut m = serde_json::Map::new();
            for (k, v) in [("id_token", id), ("access_token", access), ("refresh_token", refresh)] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            m.insert("token_type".into(), json!("Bearer"));
            m.insert("expires_in".into(), expires_in);
            m.insert("scope".into(), scope);
            serde_json::to_vec(&Value::Object(m)).unwrap()
        })
        .boxed();
    prop_oneof![
        4 => object.clone(),
        1 => any_json().prop_filter("not an object", |v| !v.is_object()).prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => (object, any::<prop::sample::Index>()).prop_map(|(b, at)| b[..at.index(b.len())].to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn sample_auth() -> AuthFile {
    let jwt = "e30.eyJleHAiOjE4MDAwMDAwMDB9.sig";
    let tokens = json!({"id_token": jwt, "access_token": jwt, "refresh_token": "old", "account_id": "a"});
    let doc = json!({"auth_mode": "chatgpt", "tokens": tokens, "x_keep": [1.5]});
    AuthFile::parse(doc.to_string().as_bytes(), Path::new("auth.json")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn error_answers_follow_the_codex_table(status in status(), (body, code) in error_body()) {
        let f = classify_http(status, &body);
        let expected = expected_class(status, code.as_deref());
        prop_assert_eq!(f.class, expected, "HTTP {} {}", status, String::from_utf8_lossy(&body));
        prop_assert_eq!(f.http_status, Some(status));
        match f.class {
            FailureClass::Permanent => prop_assert!(f.reason.contains(RELOGIN), "{}", f.reason),
            _ => prop_assert!(f.reason.ends_with("will retry"), "{}", f.reason),
        }
        let names_it = f.reason.contains(&format!("HTTP {status}")) || f.reason.contains("invalid_grant");
        prop_assert!(names_it, "{}", f.reason);
        // Only the error code may show, filtered to [A-Za-z0-9_] and 64 characters.
        let shown: String =
            code.unwrap_or_default().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
        let rest = if shown.is_empty() { f.reason.clone() } else { f.reason.replace(&shown, "") };
        prop_assert!(!rest.contains(CANARY) && f.reason.len() < 300, "server text echoed: {}", f.reason);
    }

    #[test]
    fn success_answers_yield_string_tokens_or_a_transient_failure(status in 200u16..300, body in success_body()) {
        let parsed = serde_json::from_slice::<Value>(&body).ok();
        let obj = parsed.as_ref().and_then(Value::as_object);
        let well_typed = obj.is_some_and(|o| {
            let string_or_absent = |k: &&str| matches!(o.get(*k), None | Some(Value::Null) | Some(Value::String(_)));
            ["id_token", "access_token", "refresh_token"].iter().all(string_or_absent)
        });
        let id_ok = obj
            .and_then(|o| o.get("id_token"))
            .and_then(Value::as_str)
            .is_none_or(|t| t.is_empty() || jwt::payload(t).is_ok());
        match parse_success(status, &body) {
            Ok(new) => {
                prop_assert!(well_typed && id_ok, "accepted {}", String::from_utf8_lossy(&body));
                let o = obj.unwrap();
                let tokens = [&new.id_token, &new.access_token, &new.refresh_token];
                for (k, got) in ["id_token", "access_token", "refresh_token"].into_iter().zip(tokens) {
                    let want = o.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
                    prop_assert_eq!(got.as_deref(), want, "{}", k);
                }
                // What gets written: every token a string, the document still valid.
                let mut auth = sample_auth();
                auth.apply_refresh(&new, chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap());
                let written: Value = serde_json::from_slice(&auth.to_bytes()).unwrap();
                for k in ["id_token", "access_token", "refresh_token"] {
                    prop_assert!(written["tokens"][k].is_string(), "{} is {}", k, written["tokens"][k]);
                }
                prop_assert_eq!(&written["x_keep"], &json!([1.5]));
                prop_assert!(AuthFile::parse(&auth.to_bytes(), Path::new("auth.json")).is_ok());
            }
            Err(f) => {
                prop_assert!(!(well_typed && id_ok), "refused a good answer: {}", f.reason);
                prop_assert_eq!(f.class, FailureClass::Transient);
                prop_assert_eq!(f.http_status, Some(status));
                prop_assert!(f.reason.ends_with("will retry") && !f.reason.contains(CANARY), "{}", f.reason);
            }
        }
    }

    /// Codex's stderr can hold anything: never a panic, never the log text in a reason.
    #[test]
    fn codex_logs_of_any_shape(
        noise in "\\PC{0,40}",
        digits in "[0-9]{0,30}",
        tail in "( [A-Za-z]{1,8}\\PC{0,4})?",
        with_marker in any::<bool>(),
    ) {
        let log = if with_marker {
            format!("{noise}{CANARY} Failed to refresh token status={digits}{tail}")
        } else {
            format!("{noise}{CANARY}")
        };
        if let Some(f) = from_codex_log(&log) {
            prop_assert!(!f.reason.contains(CANARY), "{}", f.reason);
            let s: Option<u16> = digits.parse().ok();
            prop_assert_eq!(f.http_status, s.filter(|_| with_marker));
        }
    }
}
