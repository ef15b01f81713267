//! Codex 0.169's classification of token-endpoint failures, copied exactly: permanent
//! means Codex (and we) stop using that credential until a human logs in again.

use crate::outcome::Failure;
use serde_json::Value;

const RELOGIN: &str = "log in again: codex login --device-auth, then codex-authctl store <account>";

/// The error code of a token-endpoint body, in either shape OpenAI uses:
/// `{"error":{"code":…}}` or `{"error":"…"}`.
fn error_code(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    match v.get("error")? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("code").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// Classify a non-2xx response from the token endpoint.
pub fn classify_http(status: u16, body: &[u8]) -> Failure {
    let code = error_code(body);
    let failure = match code.as_deref() {
        Some("refresh_token_expired") => {
            Failure::permanent(format!("refresh token has expired (refresh_token_expired, HTTP {status}); {RELOGIN}"))
        }
        Some("refresh_token_reused") => Failure::permanent(format!(
            "refresh token was already used (refresh_token_reused, HTTP {status}); {RELOGIN}"
        )),
        Some("refresh_token_invalidated") => Failure::permanent(format!(
            "refresh token was revoked (refresh_token_invalidated, HTTP {status}); {RELOGIN}"
        )),
        _ if status == 401 => Failure::permanent(format!("token endpoint answered HTTP 401; {RELOGIN}")),
        Some("invalid_grant") if status == 400 => {
            Failure::permanent(format!("token endpoint rejected the refresh token (invalid_grant); {RELOGIN}"))
        }
        Some(c) => Failure::transient(format!("token endpoint answered HTTP {status} ({}); will retry", printable(c))),
        None => Failure::transient(format!("token endpoint answered HTTP {status}; will retry")),
    };
    failure.with_status(status)
}

/// Error codes come from the server; keep only a short, plain rendering of them.
fn printable(code: &str) -> String {
    code.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::FailureClass::{Permanent, Transient};

    #[test]
    fn the_codex_error_table() {
        let obj = |c: &str| format!(r#"{{"error":{{"message":"m","code":"{c}"}}}}"#);
        let flat = |c: &str| format!(r#"{{"error":"{c}","error_description":"d"}}"#);
        let rows: Vec<(u16, String, _)> = vec![
            (401, obj("refresh_token_expired"), Permanent),
            (401, obj("refresh_token_reused"), Permanent),
            (401, obj("refresh_token_invalidated"), Permanent),
            (403, obj("refresh_token_reused"), Permanent),
            (500, flat("refresh_token_expired"), Permanent),
            (400, flat("refresh_token_reused"), Permanent),
            (401, String::new(), Permanent),
            (401, obj("something_new"), Permanent),
            (400, flat("invalid_grant"), Permanent),
            (400, flat("invalid_request"), Transient),
            (400, String::new(), Transient),
            (403, String::new(), Transient),
            (429, flat("rate_limited"), Transient),
            (500, String::new(), Transient),
            (502, "<html>bad gateway</html>".into(), Transient),
            (503, obj("overloaded"), Transient),
        ];
        for (status, body, class) in rows {
            let f = classify_http(status, body.as_bytes());
            assert_eq!(f.class, class, "{status} {body}");
            assert_eq!(f.http_status, Some(status));
        }
    }

    #[test]
    fn permanent_reasons_say_how_to_fix() {
        let f = classify_http(401, br#"{"error":"refresh_token_reused"}"#);
        assert!(f.reason.contains("already used") && f.reason.contains("codex login --device-auth"));
    }

    #[test]
    fn server_strings_are_not_echoed_raw() {
        let f = classify_http(400, br#"{"error":"bad code with spaces <script>"}"#);
        assert!(!f.reason.contains("<script>"), "{}", f.reason);
    }
}
