//! Token minting: unsigned-but-well-formed JWTs and opaque random strings.
//!
//! Nothing here verifies signatures; the mock recognises its own tokens by lookup, so the
//! signature segment only has to look like one.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

/// Builds `base64url(header).base64url(payload).base64url("mock-signature-"+random)` with
/// header `{"alg":"RS256","typ":"JWT"}` and no padding — the shape Codex parses.
pub fn make_jwt(payload: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(payload.to_string());
    let sig = URL_SAFE_NO_PAD.encode(format!("mock-signature-{}", random_hex16()));
    format!("{header}.{body}.{sig}")
}

/// Decodes the payload (middle segment) of a JWT without any verification.
pub fn decode_jwt_payload(jwt: &str) -> Option<Value> {
    let mut parts = jwt.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// 64 random bits as 16 lowercase hex digits.
pub(crate) fn random_hex16() -> String {
    format!("{:016x}", random_u64())
}

/// Non-cryptographic randomness from std alone (no `rand` dependency allowed): SipHash
/// with per-process random keys over a counter. Good enough to make tokens unguessable
/// by accident and distinct from each other.
pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// Stable pseudo user id for an account, so re-logins of one account share a user id as
/// they would at OpenAI.
pub(crate) fn user_id_for(account_id: &str) -> String {
    // FNV-1a: deterministic across processes, unlike RandomState.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in account_id.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("user-{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jwt_has_three_unpadded_segments_and_expected_header() {
        let jwt = make_jwt(&json!({"a": 1}));
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert!(!jwt.contains('='));
        let header = URL_SAFE_NO_PAD.decode(parts[0]).unwrap();
        let header: Value = serde_json::from_slice(&header).unwrap();
        assert_eq!(header, json!({"alg": "RS256", "typ": "JWT"}));
        let sig = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
        assert!(sig.starts_with("mock-signature-"));
        assert_eq!(decode_jwt_payload(&jwt), Some(json!({"a": 1})));
    }

    #[test]
    fn decode_rejects_garbage() {
        assert_eq!(decode_jwt_payload("nope"), None);
        assert_eq!(decode_jwt_payload("a.b.c.d"), None);
        assert_eq!(decode_jwt_payload("a.!!!.c"), None);
    }

    #[test]
    fn random_values_differ_and_user_ids_are_stable() {
        assert_ne!(random_hex16(), random_hex16());
        assert_eq!(random_hex16().len(), 16);
        assert_eq!(user_id_for("a1"), user_id_for("a1"));
        assert_ne!(user_id_for("a1"), user_id_for("a2"));
    }
}
