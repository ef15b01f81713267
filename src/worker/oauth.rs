//! The OAuth refresh grant exactly as Codex sends it. The refresh token travels only in
//! the request body; responses are read with a size cap and classified with Codex's table.

use crate::core::authfile::{NewTokens, jwt};
use crate::core::classify::classify_http;
use crate::core::contract::CLIENT_ID;
use crate::core::outcome::Failure;
use crate::core::policy::RefreshReason;
use crate::worker::codexwatch::Version;
use serde_json::Value;
use std::io::Read;
use std::time::Duration;

/// Cap on what we read from the token endpoint; real answers are a few KiB.
pub const MAX_RESPONSE_BYTES: u64 = 256 * 1024;

fn read_capped(resp: ureq::Response) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    resp.into_reader()
        .take(MAX_RESPONSE_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| Failure::transient(format!("reading the token endpoint's answer failed: {}", e.kind())))?;
    if body.len() as u64 > MAX_RESPONSE_BYTES {
        return Err(Failure::transient("token endpoint answer is larger than 256 KiB; will retry"));
    }
    Ok(body)
}

/// Parse a 2xx body: each of id_token/access_token/refresh_token may be present.
pub(super) fn parse_success(status: u16, body: &[u8]) -> Result<NewTokens, Failure> {
    let malformed = |what: &str| {
        Failure::transient(format!("token endpoint answered HTTP {status} with {what}; will retry")).with_status(status)
    };
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return Err(malformed("a body that is not a JSON object"));
    };
    let field = |key: &str| -> Result<Option<String>, Failure> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(malformed(&format!("a non-string `{key}`"))),
        }
    };
    let tokens = NewTokens {
        id_token: field("id_token")?,
        access_token: field("access_token")?,
        refresh_token: field("refresh_token")?,
    };
    // Codex refuses to load a file whose id_token is not a JWT; don't write one.
    if tokens.id_token.as_deref().is_some_and(|t| jwt::payload(t).is_err()) {
        return Err(malformed("an id_token that is not a JWT"));
    }
    Ok(tokens)
}

/// What Codex's own refresh request carries that depends on the Codex the account uses
/// (docs/CODEX-COMPAT.md): so the token endpoint sees the same request from us as from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestShape {
    /// Codex's, or `CODEX_APP_SERVER_LOGIN_CLIENT_ID`'s replacement.
    pub client_id: String,
    /// Codex's `refresh_reason` (0.169 and later); None for 0.130 and older.
    pub refresh_reason: Option<&'static str>,
    /// `codex_cli_rs/<Codex version> (<os>; <arch>) codex-auth-agent/<ours>`.
    pub user_agent: String,
}

impl RequestShape {
    /// For the Codex `version` found (None: not found, taken as the newest).
    pub fn for_codex(version: Option<Version>, reason: &RefreshReason) -> RequestShape {
        let with_reason = version.is_none_or(|v| v >= Version(0, 169, 0));
        let codex = version.map_or_else(|| "unknown".to_string(), |Version(a, b, c)| format!("{a}.{b}.{c}"));
        RequestShape {
            client_id: CLIENT_ID.to_string(),
            refresh_reason: with_reason.then_some(refresh_reason(reason)),
            user_agent: format!(
                "codex_cli_rs/{codex} ({}; {}) codex-auth-agent/{}",
                std::env::consts::OS,
                std::env::consts::ARCH,
                env!("CARGO_PKG_VERSION")
            ),
        }
    }
}

/// Codex's word for why it refreshes: `forced` on demand, `proactive_expiry` for an
/// access token about to expire, `scheduled` for one refreshed by age.
pub fn refresh_reason(reason: &RefreshReason) -> &'static str {
    match reason {
        RefreshReason::Forced => "forced",
        RefreshReason::Expiring { .. } => "proactive_expiry",
        RefreshReason::TooOld { .. } | RefreshReason::Unknown => "scheduled",
    }
}

/// POST the refresh grant to `url`. Never follows redirects (a token must not be
/// replayed to another host).
pub fn refresh(url: &str, refresh_token: &str, timeout: Duration, shape: &RequestShape) -> Result<NewTokens, Failure> {
    let tls = crate::sys::tls::for_url(url)
        .map_err(|e| Failure::transient(format!("cannot set up TLS for the token endpoint: {e}; will retry")))?;
    let agent =
        ureq::AgentBuilder::new().timeout(timeout).redirects(0).user_agent(&shape.user_agent).tls_config(tls).build();
    let mut body = serde_json::json!({
        "client_id": shape.client_id,
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
    });
    if let Some(r) = shape.refresh_reason {
        body["refresh_reason"] = r.into();
    }
    let result = agent
        .post(url)
        .set("content-type", "application/json")
        .set("accept", "*/*")
        .set("originator", "codex_cli_rs")
        .send_string(&body.to_string());
    match result {
        Ok(resp) => {
            let status = resp.status();
            let body = read_capped(resp)?;
            if !(200..300).contains(&status) {
                return Err(Failure::transient(format!("token endpoint answered HTTP {status}; will retry"))
                    .with_status(status));
            }
            parse_success(status, &body)
        }
        Err(ureq::Error::Status(status, resp)) => {
            let body = read_capped(resp).unwrap_or_default();
            Err(classify_http(status, &body))
        }
        Err(ureq::Error::Transport(t)) => {
            Err(Failure::transient(format!("could not reach the token endpoint ({}); will retry", t.kind())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_shaped_like_the_codex_found() {
        let old = RequestShape::for_codex(Some(Version(0, 130, 0)), &RefreshReason::Forced);
        assert_eq!(old.refresh_reason, None, "0.130 sends no refresh_reason");
        assert!(old.user_agent.starts_with("codex_cli_rs/0.130.0 (linux; "), "{}", old.user_agent);
        let new = RequestShape::for_codex(Some(Version(0, 171, 0)), &RefreshReason::Unknown);
        assert_eq!(new.refresh_reason, Some("scheduled"));
        assert_eq!(new.client_id, CLIENT_ID);
        assert!(new.user_agent.ends_with(concat!(" codex-auth-agent/", env!("CARGO_PKG_VERSION"))));
        let unknown = RequestShape::for_codex(None, &RefreshReason::Forced);
        assert_eq!(
            (unknown.refresh_reason, unknown.user_agent.starts_with("codex_cli_rs/unknown ")),
            (Some("forced"), true)
        );
    }

    #[test]
    fn success_bodies() {
        let t = parse_success(200, br#"{"access_token":"a","refresh_token":"r","token_type":"Bearer"}"#).unwrap();
        assert_eq!(t.access_token.as_deref(), Some("a"));
        assert_eq!(t.id_token, None);
        assert!(parse_success(200, b"not json").is_err());
        assert!(parse_success(200, b"[]").is_err());
        assert!(parse_success(200, br#"{"id_token":"nope"}"#).is_err());
        assert!(parse_success(200, br#"{"refresh_token":5}"#).is_err());
        assert_eq!(parse_success(200, br#"{"refresh_token":""}"#).unwrap().refresh_token, None);
    }
}
