//! Generated auth.json documents and JWTs (issue #7, "Malformed input"). Valid documents
//! with unknown fields and odd-but-legal claims round-trip; each structured mistake (wrong
//! type, missing or null field, bad timestamp, bad JWT, deep nesting, huge numbers,
//! truncation, non-UTF-8) is an error naming the file and the field and saying how to fix
//! it, never the token value; random byte mutations never panic.

use super::*;
use base64::Engine;
use proptest::prelude::*;
use serde_json::json;

const PATH: &str = "/home/u/.codex/auth.json";
/// Every token value in generated documents carries this, so a leak is visible.
const CANARY: &str = "CANARY";
const FIX: &str = "; fix: log in again (codex login --device-auth) or install a seed";
const FIELDS: &[&str] = &[
    "(file)",
    "auth_mode",
    "OPENAI_API_KEY",
    "last_refresh",
    "tokens",
    "tokens.id_token",
    "tokens.access_token",
    "tokens.refresh_token",
    "tokens.account_id",
];

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn jwt_with(payload: &Value) -> String {
    format!("{}.{}.{CANARY}sig", b64(br#"{"alg":"RS256"}"#), b64(payload.to_string().as_bytes()))
}

/// Any JSON value, nested a little (unknown fields hold these).
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,8}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Values `exp` may hold in the wild: any integer, floats, strings, overflow, junk.
fn any_exp() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        (-20_000_000_000i64..20_000_000_000).prop_map(Value::from),
        // Around the ends of what chrono can represent (years ±262 143).
        (-8_300_000_000_000i64..8_300_000_000_000).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "[0-9]{1,12}".prop_map(Value::from),
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        Just(json!([1800000000])),
        Just(json!({"exp": 1800000000})),
    ]
}

/// JWT payloads Codex would accept: an object with whatever claims.
fn claims_payload() -> impl Strategy<Value = Value> {
    (
        prop::option::of(any_exp()),
        prop::option::of("[a-z]{1,8}@[a-z]{1,8}\\.example"),
        prop::option::of(any_json()),
        prop::collection::btree_map("[a-z_]{1,8}", any_json(), 0..3),
    )
        .prop_map(|(exp, email, auth, extra)| {
            let mut m: Map<String, Value> = extra.into_iter().collect();
            if let Some(e) = exp {
                m.insert("exp".into(), e);
            }
            if let Some(e) = email {
                m.insert("email".into(), e.into());
            }
            if let Some(a) = auth {
                m.insert("https://api.openai.com/auth".into(), a);
            }
            Value::Object(m)
        })
}

/// A valid auth.json as Codex writes it, plus unknown fields at both levels.
fn valid_doc() -> impl Strategy<Value = Map<String, Value>> {
    valid_doc_with_tokens(false)
}

/// As [`valid_doc`]; `always` puts a `tokens` object in every document.
fn valid_doc_with_tokens(always: bool) -> impl Strategy<Value = Map<String, Value>> {
    let mode = prop::option::of(prop::sample::select(vec!["chatgpt", "apikey", "chatgptAuthTokens", "headers"]));
    let key = prop_oneof![Just(None), Just(Some(Value::Null)), Just(Some(json!(format!("sk-{CANARY}"))))];
    let last_refresh = prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        (0i64..253_402_300_799, 0u32..1_000_000_000, prop::sample::select(vec!["Z", "+00:00", "-05:30", "+14:00"]))
            .prop_map(|(s, ns, tz)| {
                let t = DateTime::from_timestamp(s, ns).unwrap();
                Some(json!(format!("{}{tz}", t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.f"))))
            }),
    ];
    let maybe_token = || {
        prop_oneof![
            Just(None),
            Just(Some(Value::Null)),
            "[A-Za-z0-9_-]{0,12}".prop_map(|s| Some(json!(format!("{CANARY}{s}"))))
        ]
    };
    let tokens = (
        claims_payload(),
        prop_oneof![claims_payload().prop_map(|p| Some(json!(jwt_with(&p)))), maybe_token()],
        maybe_token(),
        prop_oneof![Just(None), Just(Some(Value::Null)), "[a-z0-9-]{1,12}".prop_map(|s| Some(json!(s)))],
        prop::collection::btree_map("x_[a-z_]{1,8}", any_json(), 0..3),
    );
    let tokens = if always { tokens.prop_map(Some).boxed() } else { prop::option::of(tokens).boxed() };
    (mode, key, last_refresh, tokens, prop::collection::btree_map("x_[a-z_]{1,8}", any_json(), 0..3)).prop_map(
        |(mode, key, lr, tokens, extra)| {
            let mut doc = Map::new();
            if let Some(m) = mode {
                doc.insert("auth_mode".into(), json!(m));
            }
            if let Some(k) = key {
                doc.insert("OPENAI_API_KEY".into(), k);
            }
            if let Some((id, access, refresh, account, tok_extra)) = tokens {
                let mut t = Map::new();
                t.insert("id_token".into(), json!(jwt_with(&id)));
                for (k, v) in [("access_token", access), ("refresh_token", refresh), ("account_id", account)] {
                    if let Some(v) = v {
                        t.insert(k.into(), v);
                    }
                }
                t.extend(tok_extra);
                doc.insert("tokens".into(), Value::Object(t));
            }
            if let Some(lr) = lr {
                doc.insert("last_refresh".into(), lr);
            }
            doc.extend(extra);
            doc
        },
    )
}

/// A value of a JSON type other than string and null.
fn non_string() -> impl Strategy<Value = Value> {
    any_json().prop_filter("not a string or null", |v| !v.is_string() && !v.is_null())
}

/// Strings that are not JWTs: wrong segment counts, bad base64, bad padding, payloads
/// that are not JSON objects.
fn not_a_jwt() -> impl Strategy<Value = String> {
    let seg = "[A-Za-z0-9_-]{0,16}";
    prop_oneof![
        "[A-Za-z0-9_-]{0,40}",
        (seg, seg).prop_map(|(a, b)| format!("{a}.{b}")),
        prop::collection::vec(seg, 4..7).prop_map(|v| v.join(".")),
        (seg, "[^A-Za-z0-9_=.-]{1,4}", seg).prop_map(|(a, bad, c)| format!("{a}.e30{bad}.{c}")),
        "=[A-Za-z0-9_-]{1,8}".prop_map(|p| format!("h.{p}.s")),
        any_json()
            .prop_filter("not an object", |v| !v.is_object())
            .prop_map(|v| format!("h.{}.s", b64(v.to_string().as_bytes()))),
        prop::collection::vec(any::<u8>(), 0..24)
            .prop_filter("not a JSON object", |b| !matches!(serde_json::from_slice(b), Ok(Value::Object(_))))
            .prop_map(|b| format!("h.{}.s", b64(&b))),
        "\\{[a-z\"]{0,10}".prop_map(|p| format!("h.{}.s", b64(p.as_bytes()))),
    ]
    .prop_map(|s| format!("{s}{CANARY}"))
    .prop_filter("really not a JWT", |s| jwt::payload(s).is_err())
}

/// Deeper than serde_json's recursion limit (128).
fn too_deep() -> impl Strategy<Value = String> {
    (129usize..400, any::<bool>()).prop_map(|(n, arr)| {
        if arr {
            format!("{}{}", "[".repeat(n), "]".repeat(n))
        } else {
            format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n))
        }
    })
}

/// A valid document with one mistake, and the field the error must name.
fn broken_doc() -> impl Strategy<Value = (Vec<u8>, &'static str)> {
    let with = |f: fn(&mut Map<String, Value>, Value) -> Option<&'static str>, v: BoxedStrategy<Value>| {
        (valid_doc(), v).prop_filter_map("mistake applies", move |(mut d, v)| {
            let field = f(&mut d, v)?;
            Some((serde_json::to_vec(&d).unwrap(), field))
        })
    };
    fn tokens(d: &mut Map<String, Value>) -> Option<&mut Map<String, Value>> {
        d.get_mut("tokens").and_then(Value::as_object_mut)
    }
    prop_oneof![
        // Top-level fields of the wrong type.
        with(
            |d, v| {
                let k = ["auth_mode", "OPENAI_API_KEY", "last_refresh"][(v.to_string().len()) % 3];
                d.insert(k.into(), v);
                Some(k)
            },
            non_string().boxed()
        ),
        // last_refresh without a timezone, or not a timestamp at all.
        with(
            |d, v| {
                d.insert("last_refresh".into(), v);
                Some("last_refresh")
            },
            prop_oneof![
                "20[0-9]{2}-0[1-9]-1[0-9]T0[0-9]:[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?",
                "\\PC{0,20}",
                "[0-9]{1,12}"
            ]
            .prop_filter("not RFC 3339", |s| DateTime::parse_from_rfc3339(s).is_err())
            .prop_map(Value::from)
            .boxed()
        ),
        // tokens not an object.
        with(
            |d, v| {
                d.insert("tokens".into(), v);
                Some("tokens")
            },
            any_json().prop_filter("not an object or null", |v| !v.is_object() && !v.is_null()).boxed()
        ),
        // A token of the wrong type.
        with(
            |d, v| {
                let i = v.to_string().len() % 3;
                tokens(d)?.insert(["id_token", "access_token", "refresh_token"][i].into(), v);
                Some(["tokens.id_token", "tokens.access_token", "tokens.refresh_token"][i])
            },
            non_string().boxed()
        ),
        // id_token missing or null.
        with(
            |d, v| {
                let t = tokens(d)?;
                if v.as_bool() == Some(true) {
                    t.insert("id_token".into(), Value::Null);
                } else {
                    t.remove("id_token");
                }
                Some("tokens.id_token")
            },
            any::<bool>().prop_map(Value::from).boxed()
        ),
        // id_token that is not a JWT.
        with(
            |d, v| {
                tokens(d)?.insert("id_token".into(), v);
                Some("tokens.id_token")
            },
            not_a_jwt().prop_map(Value::from).boxed()
        ),
        // account_id of the wrong type.
        with(
            |d, v| {
                tokens(d)?.insert("account_id".into(), v);
                Some("tokens.account_id")
            },
            non_string().boxed()
        ),
        // Not an object at all.
        any_json()
            .prop_filter("not an object", |v| !v.is_object())
            .prop_map(|v| (serde_json::to_vec(&v).unwrap(), "(file)")),
        // Truncated: any strict prefix of an object is not JSON.
        (valid_doc(), any::<prop::sample::Index>()).prop_map(|(d, at)| {
            let mut b = serde_json::to_vec_pretty(&d).unwrap();
            b.truncate(at.index(b.len()));
            (b, "(file)")
        }),
        // Non-UTF-8 inside a string.
        (valid_doc(), prop::sample::select(vec![0xffu8, 0xfe, 0xc0, 0x80, 0xed])).prop_map(|(mut d, byte)| {
            d.insert("x_bad".into(), json!("AAAA"));
            let mut b = serde_json::to_vec(&d).unwrap();
            let at = b.windows(4).position(|w| w == b"AAAA").unwrap();
            b[at] = byte;
            (b, "(file)")
        }),
        // Nesting deeper than the parser's limit, in an unknown field.
        (valid_doc(), too_deep()).prop_map(|(d, deep)| {
            let text = serde_json::to_string(&d).unwrap();
            let b = format!("{{\"x_deep\":{deep},{}", &text[1..]).replace(",}", "}");
            (b.into_bytes(), "(file)")
        }),
        // Numbers beyond f64 in an unknown field.
        (valid_doc(), "[1-9]e[4-9][0-9]{2}").prop_map(|(d, big)| {
            let text = serde_json::to_string(&d).unwrap();
            let b = format!("{{\"x_big\":{big},{}", &text[1..]).replace(",}", "}");
            (b.into_bytes(), "(file)")
        }),
    ]
}

fn assert_clear(e: &InvalidAuth, expected_field: Option<&str>) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert!(FIELDS.contains(&e.field.as_str()), "unexpected field {}: {}", e.field, msg);
    if let Some(f) = expected_field {
        prop_assert_eq!(e.field.as_str(), f, "{}", msg);
    }
    prop_assert!(msg.starts_with(&format!("{PATH}: field `{}` ", e.field)), "{}", msg);
    prop_assert!(msg.ends_with(FIX), "{}", msg);
    prop_assert!(e.problem.len() >= 8, "says what is wrong: {}", msg);
    prop_assert!(!msg.contains(CANARY), "a token value leaked: {}", msg);
    Ok(())
}

proptest! {

    /// A valid document parses and is written back with every field, in order.
    #[test]
    fn valid_documents_round_trip(doc in valid_doc(), pretty in any::<bool>()) {
        let bytes = if pretty { serde_json::to_vec_pretty(&doc) } else { serde_json::to_vec(&doc) }.unwrap();
        let a = AuthFile::parse(&bytes, Path::new(PATH)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: Value = serde_json::from_slice(&a.to_bytes()).unwrap();
        prop_assert_eq!(&back, &Value::Object(doc.clone()));
        let keys: Vec<&String> = back.as_object().unwrap().keys().collect();
        prop_assert_eq!(keys, doc.keys().collect::<Vec<_>>(), "field order kept");
        // Reading the facts of any claims never panics, and Debug never shows a token.
        let _ = (a.facts(), a.account_id(), a.id_claims(), a.token_fp());
        let debug = format!("{a:?}");
        prop_assert!(!debug.contains(CANARY));
    }

    /// Applying any refresh response keeps unknown fields and leaves a valid document.
    #[test]
    fn applying_a_refresh_keeps_the_document_valid(
        // Only a credential with tokens is ever refreshed (the policy needs a refresh token).
        doc in valid_doc_with_tokens(true),
        id in prop::option::of(claims_payload()),
        access in prop::option::of("[A-Za-z0-9._-]{1,20}"),
        refresh in prop::option::of("[A-Za-z0-9_-]{1,20}"),
        secs in 0i64..4_000_000_000,
    ) {
        let mut a = AuthFile::parse(&serde_json::to_vec(&doc).unwrap(), Path::new(PATH)).unwrap();
        let new = NewTokens {
            id_token: id.as_ref().map(jwt_with),
            access_token: access.clone(),
            refresh_token: refresh.clone(),
        };
        a.apply_refresh(&new, DateTime::from_timestamp(secs, 0).unwrap());
        let again =
            AuthFile::parse(&a.to_bytes(), Path::new(PATH)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let out: Value = serde_json::from_slice(&again.to_bytes()).unwrap();
        for (k, v) in doc.iter().filter(|(k, _)| k.starts_with("x_")) {
            prop_assert_eq!(&out[k], v);
        }
        if let Some(Value::Object(t)) = doc.get("tokens") {
            for (k, v) in t.iter().filter(|(k, _)| k.starts_with("x_")) {
                prop_assert_eq!(&out["tokens"][k], v);
            }
        }
        if let Some(r) = &refresh {
            prop_assert_eq!(again.refresh_token(), Some(r.as_str()));
        }
        prop_assert_eq!(again.last_refresh().map(|t| t.timestamp()), Some(secs));
    }

    /// One structured mistake: an error naming the file and that field, with the fix.
    #[test]
    fn structured_mistakes_name_the_field((bytes, field) in broken_doc()) {
        let e = AuthFile::parse(&bytes, Path::new(PATH)).expect_err("a broken document must not parse");
        assert_clear(&e, Some(field))?;
    }

    /// Flipped, inserted or removed bytes and truncation of a valid document: no panic; an
    /// error is clear, and whatever still parses round-trips.
    #[test]
    fn mutated_documents_never_panic(
        doc in valid_doc(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut b = serde_json::to_vec_pretty(&doc).unwrap();
        for (at, byte, op) in edits {
            if b.is_empty() {
                break;
            }
            let i = at.index(b.len());
            match op {
                0 => b[i] ^= byte.max(1),
                1 => b.insert(i, byte),
                _ => { b.remove(i); }
            }
        }
        if let Some(c) = cut {
            b.truncate(c.index(b.len() + 1));
        }
        match AuthFile::parse(&b, Path::new(PATH)) {
            Ok(a) => {
                let _ = a.facts();
                let again =
                    AuthFile::parse(&a.to_bytes(), Path::new(PATH)).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(again, a);
            }
            Err(e) => assert_clear(&e, None)?,
        }
    }

    /// Random bytes: never a panic, always a clear error or a valid document.
    #[test]
    fn random_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Err(e) = AuthFile::parse(&b, Path::new(PATH)) {
            assert_clear(&e, Some("(file)"))?;
        }
    }

    /// JWTs of every shape: decoding never panics; the error says which part is wrong; a
    /// readable `exp` is an integer (or float) number of seconds chrono can represent.
    #[test]
    fn jwt_decoding_is_total(
        token in prop_oneof![not_a_jwt(), claims_payload().prop_map(|p| jwt_with(&p))],
        pad in 0usize..3,
    ) {
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        if parts.len() == 3 {
            parts[1].push_str(&"=".repeat(pad));
        }
        let token = parts.join(".");
        match jwt::claims(&token) {
            Ok(c) => {
                let p = jwt::payload(&token).unwrap();
                let secs = p.get("exp").and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)));
                let want = secs.and_then(|s| DateTime::from_timestamp(s, 0));
                prop_assert_eq!(c.exp, want);
                if p.get("exp").is_some_and(|v| !v.is_number()) {
                    prop_assert_eq!(c.exp, None, "a non-number exp is no expiry");
                }
            }
            Err(e) => {
                let n = token.split('.').count();
                prop_assert_eq!(n != 3, e == jwt::JwtError::Shape, "{:?} for {} parts", e, n);
            }
        }
    }

    /// Whatever expiry and last_refresh a valid file yields survive the worker → parent
    /// report (JSON over a pipe) and the D-Bus/status renderings.
    #[test]
    fn any_parsed_times_survive_the_report(doc in valid_doc()) {
        let a = AuthFile::parse(&serde_json::to_vec(&doc).unwrap(), Path::new(PATH)).unwrap();
        let mut r = crate::core::outcome::Report::new("a", crate::core::outcome::Outcome::Fresh, "");
        r.expires_at = a.access_expires_at();
        r.last_refresh = a.last_refresh();
        let text = serde_json::to_string(&r).unwrap();
        let back: crate::core::outcome::Report =
            serde_json::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        prop_assert_eq!(back, r.clone());
        let _ = (r.json_line(), r.human_line());
    }
}
