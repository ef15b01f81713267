//! Codex 0.169's classification of token-endpoint failures, copied exactly: permanent
//! means Codex (and we) stop using that credential until a human logs in again.

use crate::core::outcome::{Failure, FailureClass};
use serde_json::Value;

pub const RELOGIN: &str =
    "log in again: codex-authctl login <account> (or codex login --device-auth, then codex-authctl store <account>)";

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

/// Codex 0.169's messages for the three permanent codes (`codex exec` prints them on
/// stderr), matched on the distinctive part; each with the code it stands for.
const CODEX_PERMANENT_MESSAGES: &[(&str, &str, &str)] = &[
    ("refresh token has expired", "refresh_token_expired", "refresh token has expired"),
    ("refresh token was already used", "refresh_token_reused", "refresh token was already used"),
    ("refresh token was revoked", "refresh_token_invalidated", "refresh token was revoked"),
];
/// What Codex prints for its other permanent rows (any other 401, 400 invalid_grant).
const CODEX_GENERIC_PERMANENT: &str = "access token could not be refreshed. Please log out and sign in again";
/// Codex's log line for any failed refresh: `Failed to refresh token status=401 Unauthorized`.
const CODEX_REFRESH_FAILED: &str = "Failed to refresh token";

/// Classify a failed refresh from Codex's own log output (stderr of `codex exec` or
/// `codex app-server`, ANSI colours removed), following the same table as
/// [`classify_http`]. None when the log shows no failed refresh. The reason is built
/// from fixed texts and the parsed status only, never copied from the log.
pub fn from_codex_log(log: &str) -> Option<Failure> {
    // Codex 0.130 quotes the status and body but retries every 400 (even invalid_grant):
    // the server's answer is judged with our table, so a dead login is reported as one.
    // Codex's own permanent verdict still wins over a transient reading of a quote.
    let quoted = quoted_refresh_failure(log).map(|(status, code)| {
        let body = code.map(|c| serde_json::json!({ "error": c }).to_string()).unwrap_or_default();
        let f = classify_http(status, body.as_bytes());
        Failure { reason: format!("Codex could not refresh: {}", f.reason), ..f }
    });
    match (quoted, from_codex_messages(log)) {
        (Some(q), _) if q.class == FailureClass::Permanent => Some(q),
        (_, Some(m)) if m.class == FailureClass::Permanent => Some(m),
        (q, m) => q.or(m),
    }
}

/// [`from_codex_log`] from Codex 0.169's messages and `status=` lines.
fn from_codex_messages(log: &str) -> Option<Failure> {
    let status = codex_refresh_status(log);
    let with_status = |f: Failure| match status {
        Some(s) => f.with_status(s),
        None => f,
    };
    if let Some((_, code, what)) = CODEX_PERMANENT_MESSAGES.iter().find(|(m, _, _)| log.contains(m)) {
        return Some(with_status(Failure::permanent(format!("Codex could not refresh: {what} ({code}); {RELOGIN}"))));
    }
    if log.contains(CODEX_GENERIC_PERMANENT) || status == Some(401) {
        return Some(with_status(Failure::permanent(format!(
            "Codex could not refresh: the token endpoint rejected the refresh token{}; {RELOGIN}",
            status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
        ))));
    }
    if log.contains(CODEX_REFRESH_FAILED) {
        return Some(with_status(Failure::transient(match status {
            Some(s) => format!("Codex could not refresh: the token endpoint answered HTTP {s}; will retry"),
            None => "Codex could not refresh: the token endpoint was not reachable; will retry".to_string(),
        })));
    }
    None
}

/// Error codes the token endpoint's table knows, as they may appear in a quoted body.
const KNOWN_CODES: &[&str] =
    &["refresh_token_expired", "refresh_token_reused", "refresh_token_invalidated", "invalid_grant"];

/// Codex 0.130's `Failed to refresh token: 403 Forbidden: {…body…}`: the status of the last
/// such line and the known error code its quoted body names, if any. Nothing else of the
/// body is used (it may echo what the server was sent).
fn quoted_refresh_failure(log: &str) -> Option<(u16, Option<&'static str>)> {
    let marker = "Failed to refresh token: ";
    log.lines().rev().find_map(|line| {
        let rest = &line[line.rfind(marker)? + marker.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let status = digits.parse::<u16>().ok().filter(|_| digits.len() == 3 && rest[3..].starts_with(' '))?;
        let code = KNOWN_CODES.iter().copied().find(|c| rest.contains(&format!("\"{c}\"")));
        Some((status, code))
    })
}

/// The HTTP status of Codex's last `Failed to refresh token status=NNN` line.
fn codex_refresh_status(log: &str) -> Option<u16> {
    let marker = "Failed to refresh token status=";
    let at = log.rfind(marker)? + marker.len();
    log[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
}

/// Error codes come from the server, which may echo what it was sent (the refresh token)
/// in them: only a word shaped like an error code (`rate_limited`) is repeated. Anything
/// with digits, upper case or other characters, or longer than 48, is not shown.
fn printable(code: &str) -> String {
    let plain = !code.is_empty() && code.len() <= 48 && code.chars().all(|c| c.is_ascii_lowercase() || c == '_');
    if plain { code.to_string() } else { "an unrecognised error code".to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::outcome::FailureClass::{Permanent, Transient};

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
    fn an_error_code_is_repeated_only_when_it_looks_like_one() {
        let f = classify_http(429, br#"{"error":"rate_limited"}"#);
        assert!(f.reason.contains("(rate_limited)"), "{}", f.reason);
        // A server echoing the refresh token as its error code: not one character of it.
        for echoed in ["CANARY-rt_3_1_0123456789abcdef", "v1.abcdefghijklmnop", "abc123def456ghi789", &"a".repeat(49)] {
            let f = classify_http(400, format!(r#"{{"error":{{"code":"{echoed}"}}}}"#).as_bytes());
            assert!(f.reason.contains("an unrecognised error code"), "{}", f.reason);
            assert!(!f.reason.contains("0123456789") && !f.reason.contains("abcdefgh") && !f.reason.contains("aaaa"));
        }
    }

    #[test]
    fn permanent_reasons_say_how_to_fix() {
        let f = classify_http(401, br#"{"error":"refresh_token_reused"}"#);
        assert!(f.reason.contains("already used") && f.reason.contains("codex login --device-auth"));
    }

    #[test]
    fn codex_log_lines() {
        // As printed by codex exec 0.169 (verified against the mock).
        let line =
            |m: &str| format!("2026-11-23T05:09:26Z ERROR codex_login::auth::manager: Failed to refresh token: {m}\n");
        let reused = format!(
            "2026-11-23T05:09:26Z ERROR codex_login::auth::manager: Failed to refresh token status=401 \
                Unauthorized\n{}ERROR: x\n",
            line(
                "Your access token could not be refreshed because your refresh token was already used. Please \
                    log out and sign in again."
            )
        );
        let f = from_codex_log(&reused).unwrap();
        assert_eq!((f.class, f.http_status), (Permanent, Some(401)));
        assert!(f.reason.contains("refresh_token_reused") && f.reason.contains("codex login"), "{}", f.reason);
        for (msg, code) in [
            ("because your refresh token has expired. Please log out", "refresh_token_expired"),
            ("because your refresh token was revoked. Please log out", "refresh_token_invalidated"),
        ] {
            let f = from_codex_log(&line(&format!("Your access token could not be refreshed {msg}"))).unwrap();
            assert!(f.class == Permanent && f.reason.contains(code), "{}", f.reason);
        }
        let generic = line("Your access token could not be refreshed. Please log out and sign in again.");
        assert_eq!(from_codex_log(&generic).unwrap().class, Permanent);
        // codex app-server logs only the status line.
        let app = "ERROR codex_login::auth::manager: Failed to refresh token status=401 Unauthorized";
        assert_eq!(from_codex_log(app).unwrap().class, Permanent);
        let t = from_codex_log(
            "ERROR x: Failed to refresh token status=500 Internal Server Error\nFailed to \
            refresh token: Failed to refresh token: 500 Internal Server Error",
        )
        .unwrap();
        assert_eq!((t.class, t.http_status), (Transient, Some(500)));
        let net = from_codex_log(&line("error sending request for url (http://127.0.0.1:9/oauth/token)")).unwrap();
        assert_eq!((net.class, net.http_status), (Transient, None));
        assert!(!net.reason.contains("127.0.0.1"), "{}", net.reason);
        assert_eq!(from_codex_log("ERROR: Reconnecting... 1/5"), None);
    }

    #[test]
    fn codex_0_130_log_lines_are_judged_by_the_status_and_code_they_quote() {
        // As printed by codex exec / app-server 0.130 (verified against the mock); 0.130
        // itself retries every 400, so its verdict is not taken.
        let line =
            |m: &str| format!("2026-12-01T13:51:13Z ERROR codex_login::auth::manager: Failed to refresh token: {m}\n");
        let rows = [
            (r#"400 Bad Request: {"error":"invalid_grant"}"#, Permanent, "invalid_grant"),
            (
                concat!(
                    r#"403 Forbidden: {"error":{"message":"m","type":"invalid_request_error","#,
                    r#""code":"refresh_token_reused"}"#
                ),
                Permanent,
                "refresh_token_reused",
            ),
            (
                r#"400 Bad Request: {"error":"temporarily_unavailable","error_description":"Please retry."}"#,
                Transient,
                "HTTP 400",
            ),
            ("401 Unauthorized: ", Permanent, "HTTP 401"),
            ("500 Internal Server Error: <html>", Transient, "HTTP 500"),
        ];
        for (m, class, says) in rows {
            let log = format!("{}{}", line(m), line(&format!("Failed to refresh token: {m}")));
            let f = from_codex_log(&log).unwrap();
            assert_eq!(f.class, class, "{m}");
            assert!(f.reason.starts_with("Codex could not refresh: ") && f.reason.contains(says), "{m}: {}", f.reason);
            assert!(!f.reason.contains("Please retry") && !f.reason.contains("<html>"), "{}", f.reason);
        }
        let f = from_codex_log(&line(r#"403 Forbidden: {"error":"CANARY-rt_1_1_0123456789abcdef"}"#)).unwrap();
        assert!(!f.reason.contains("CANARY"), "{}", f.reason);
    }

    #[test]
    fn server_strings_are_not_echoed_raw() {
        let f = classify_http(400, br#"{"error":"bad code with spaces <script>"}"#);
        assert!(!f.reason.contains("<script>"), "{}", f.reason);
    }
}
