//! Injectable failures for the token endpoint: HTTP-level answers (one constructor per row
//! of Codex's refresh-error table) and transport-level misbehaviour.
//!
//! `Fault` (de)serialises through [`FaultRepr`], an internally tagged form
//! (`{"kind":"delay","ms":500}`) that shell scripts can write by hand; durations travel as
//! milliseconds because serde's default `Duration` shape is awkward to type.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One injected misbehaviour of `POST /oauth/token`.
///
/// Unless stated otherwise a fault replaces the real answer and does not consume the
/// presented refresh token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FaultRepr", into = "FaultRepr")]
pub enum Fault {
    /// Answer with this status, body and `Content-Type` (omitted when empty).
    Status { status: u16, body: String, content_type: String },
    /// Wait, then answer normally. The rotation happens after the wait even if the client
    /// has given up by then, like a slow upstream that still completes.
    Delay(Duration),
    /// Read the request, then close with `SO_LINGER 0` so the client sees a reset.
    Reset,
    /// Answer with bytes that are not HTTP.
    Garbage,
    /// `200`, `application/json`, a body of this many bytes that starts like JSON.
    Oversized(usize),
    /// Dribble a complete `503` answer one byte at a time. Does not consume the token, so
    /// a client that gives up keeps a working credential.
    Slowloris { byte_interval: Duration },
    /// Perform the real rotation (the old refresh token becomes spent), then reset the
    /// connection: the server acted but the client never learns the new tokens.
    RotateThenReset,
    /// Never answer; the connection is held until the server stops or 120 s pass.
    Hang,
}

/// `message` the real endpoint pairs with each documented refresh error code.
pub(crate) fn message_for(code: &str) -> &'static str {
    match code {
        "refresh_token_reused" => {
            "Your refresh token has already been used to generate a new access token. Please try signing in again."
        }
        "refresh_token_expired" => "Your refresh token has expired. Please try signing in again.",
        "refresh_token_invalidated" => "Your refresh token has been invalidated. Please try signing in again.",
        _ => "Could not validate your refresh token. Please try signing in again.",
    }
}

/// The object-shaped error body: `{"error":{"message","type","param","code"}}`.
pub(crate) fn object_error_body(code: &str) -> String {
    json!({
        "error": {
            "message": message_for(code),
            "type": "invalid_request_error",
            "param": null,
            "code": code,
        }
    })
    .to_string()
}

const JSON: &str = "application/json";
const PLAIN: &str = "text/plain; charset=utf-8";

impl Fault {
    /// Generic answer.
    pub fn status(status: u16, body: impl Into<String>, content_type: impl Into<String>) -> Self {
        Fault::Status { status, body: body.into(), content_type: content_type.into() }
    }

    /// Generic JSON answer.
    pub fn json(status: u16, body: &Value) -> Self {
        Self::status(status, body.to_string(), JSON)
    }

    /// Generic `text/plain` answer.
    pub fn plain(status: u16, body: impl Into<String>) -> Self {
        Self::status(status, body, PLAIN)
    }

    // --- permanent rows -------------------------------------------------------------

    /// `{"error":{"code":CODE,…}}` (object shape) with any status.
    pub fn error_code(status: u16, code: &str) -> Self {
        Self::status(status, object_error_body(code), JSON)
    }

    /// `{"error":CODE,"error_description":…}` (string shape) with any status.
    pub fn error_code_string(status: u16, code: &str) -> Self {
        Self::json(status, &json!({"error": code, "error_description": message_for(code)}))
    }

    /// 401, object shape, `refresh_token_expired`.
    pub fn refresh_token_expired() -> Self {
        Self::error_code(401, "refresh_token_expired")
    }

    /// 401, object shape, `refresh_token_reused`.
    pub fn refresh_token_reused() -> Self {
        Self::error_code(401, "refresh_token_reused")
    }

    /// 401, object shape, `refresh_token_invalidated`.
    pub fn refresh_token_invalidated() -> Self {
        Self::error_code(401, "refresh_token_invalidated")
    }

    /// 401 with an empty body (and no `Content-Type`).
    pub fn unauthorized_empty() -> Self {
        Self::status(401, "", "")
    }

    /// 401, object shape, a code Codex does not know.
    pub fn unauthorized_unknown_code() -> Self {
        Self::error_code(401, "token_mystery_error")
    }

    /// 400 `{"error":"invalid_grant"}`.
    pub fn invalid_grant() -> Self {
        Self::json(400, &json!({"error": "invalid_grant"}))
    }

    // --- transient rows -------------------------------------------------------------

    /// 400 with an error other than `invalid_grant`.
    pub fn bad_request_other() -> Self {
        Self::json(400, &json!({"error": "temporarily_unavailable", "error_description": "Please retry."}))
    }

    /// 400 with an empty body.
    pub fn bad_request_empty() -> Self {
        Self::status(400, "", "")
    }

    /// 403 plain text, as a WAF or proxy would send.
    pub fn forbidden_plain() -> Self {
        Self::plain(403, "Forbidden")
    }

    /// 429 plain text.
    pub fn too_many_requests() -> Self {
        Self::plain(429, "Too Many Requests")
    }

    /// 500 plain text.
    pub fn internal_server_error() -> Self {
        Self::plain(500, "Internal Server Error")
    }

    /// 502 plain text.
    pub fn bad_gateway() -> Self {
        Self::plain(502, "Bad Gateway")
    }

    /// 503 plain text.
    pub fn service_unavailable() -> Self {
        Self::plain(503, "Service Unavailable")
    }

    /// 200 claiming `application/json` but carrying an HTML page.
    pub fn ok_non_json() -> Self {
        Self::status(200, "<html><body>Gateway login page</body></html>", JSON)
    }

    /// 200 with a token-shaped JSON body but `Content-Type: text/html`. The tokens in it
    /// are bogus: a client that accepts them will later get `invalid_grant`.
    pub fn ok_wrong_content_type() -> Self {
        let body = json!({
            "id_token": "bogus.id.token",
            "access_token": "bogus.access.token",
            "refresh_token": "bogus-refresh-token",
            "token_type": "Bearer",
            "expires_in": 3600,
        });
        Self::status(200, body.to_string(), "text/html; charset=utf-8")
    }

    /// Every named preset, for scripts (`{"kind":"preset","name":…}`) and for tests that
    /// want to sweep the whole table.
    pub const PRESETS: &'static [&'static str] = &[
        "refresh_token_expired",
        "refresh_token_reused",
        "refresh_token_invalidated",
        "refresh_token_expired_string",
        "refresh_token_reused_string",
        "refresh_token_invalidated_string",
        "unauthorized_empty",
        "unauthorized_unknown_code",
        "invalid_grant",
        "bad_request_other",
        "bad_request_empty",
        "forbidden_plain",
        "too_many_requests",
        "internal_server_error",
        "bad_gateway",
        "service_unavailable",
        "ok_non_json",
        "ok_wrong_content_type",
    ];

    /// Looks up a preset by name (the constructor's name; `_string` suffix selects the
    /// string-shaped body for the three refresh codes, with status 401).
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "refresh_token_expired" => Self::refresh_token_expired(),
            "refresh_token_reused" => Self::refresh_token_reused(),
            "refresh_token_invalidated" => Self::refresh_token_invalidated(),
            "refresh_token_expired_string" => Self::error_code_string(401, "refresh_token_expired"),
            "refresh_token_reused_string" => Self::error_code_string(401, "refresh_token_reused"),
            "refresh_token_invalidated_string" => Self::error_code_string(401, "refresh_token_invalidated"),
            "unauthorized_empty" => Self::unauthorized_empty(),
            "unauthorized_unknown_code" => Self::unauthorized_unknown_code(),
            "invalid_grant" => Self::invalid_grant(),
            "bad_request_other" => Self::bad_request_other(),
            "bad_request_empty" => Self::bad_request_empty(),
            "forbidden_plain" => Self::forbidden_plain(),
            "too_many_requests" => Self::too_many_requests(),
            "internal_server_error" => Self::internal_server_error(),
            "bad_gateway" => Self::bad_gateway(),
            "service_unavailable" => Self::service_unavailable(),
            "ok_non_json" => Self::ok_non_json(),
            "ok_wrong_content_type" => Self::ok_wrong_content_type(),
            _ => return None,
        })
    }

    /// Same fault with another status (only meaningful for `Status`).
    pub fn with_status(self, new_status: u16) -> Self {
        match self {
            Fault::Status { body, content_type, .. } => Fault::Status { status: new_status, body, content_type },
            other => other,
        }
    }

    /// Short name for logs and stats.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Status { .. } => "status",
            Fault::Delay(_) => "delay",
            Fault::Reset => "reset",
            Fault::Garbage => "garbage",
            Fault::Oversized(_) => "oversized",
            Fault::Slowloris { .. } => "slowloris",
            Fault::RotateThenReset => "rotate_then_reset",
            Fault::Hang => "hang",
        }
    }
}

/// Wire form of [`Fault`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultRepr {
    Status {
        status: u16,
        #[serde(default)]
        body: String,
        #[serde(default)]
        content_type: String,
    },
    /// Deserialise-only shorthand for a named constructor; `status` overrides its status.
    Preset {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
    },
    Delay {
        ms: u64,
    },
    Reset,
    Garbage,
    Oversized {
        bytes: usize,
    },
    Slowloris {
        byte_interval_ms: u64,
    },
    RotateThenReset,
    Hang,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<Fault> for FaultRepr {
    fn from(f: Fault) -> Self {
        match f {
            Fault::Status { status, body, content_type } => FaultRepr::Status { status, body, content_type },
            Fault::Delay(d) => FaultRepr::Delay { ms: millis(d) },
            Fault::Reset => FaultRepr::Reset,
            Fault::Garbage => FaultRepr::Garbage,
            Fault::Oversized(bytes) => FaultRepr::Oversized { bytes },
            Fault::Slowloris { byte_interval } => FaultRepr::Slowloris { byte_interval_ms: millis(byte_interval) },
            Fault::RotateThenReset => FaultRepr::RotateThenReset,
            Fault::Hang => FaultRepr::Hang,
        }
    }
}

impl TryFrom<FaultRepr> for Fault {
    type Error = String;

    fn try_from(r: FaultRepr) -> Result<Self, String> {
        Ok(match r {
            FaultRepr::Status { status, body, content_type } => Fault::Status { status, body, content_type },
            FaultRepr::Preset { name, status } => {
                let f = Fault::preset(&name).ok_or_else(|| format!("unknown preset {name:?}"))?;
                match status {
                    Some(s) => f.with_status(s),
                    None => f,
                }
            }
            FaultRepr::Delay { ms } => Fault::Delay(Duration::from_millis(ms)),
            FaultRepr::Reset => Fault::Reset,
            FaultRepr::Garbage => Fault::Garbage,
            FaultRepr::Oversized { bytes } => Fault::Oversized(bytes),
            FaultRepr::Slowloris { byte_interval_ms } => {
                Fault::Slowloris { byte_interval: Duration::from_millis(byte_interval_ms) }
            }
            FaultRepr::RotateThenReset => Fault::RotateThenReset,
            FaultRepr::Hang => Fault::Hang,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_json(f: &Fault) -> Value {
        match f {
            Fault::Status { body, .. } => serde_json::from_str(body).unwrap(),
            other => panic!("not a status fault: {other:?}"),
        }
    }

    #[test]
    fn object_and_string_shapes() {
        let f = Fault::error_code(403, "refresh_token_reused");
        assert!(matches!(f, Fault::Status { status: 403, .. }));
        let v = body_json(&f);
        assert_eq!(v["error"]["code"], "refresh_token_reused");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["param"].is_null());

        let v = body_json(&Fault::error_code_string(500, "refresh_token_expired"));
        assert_eq!(v["error"], "refresh_token_expired");
        assert!(v["error_description"].is_string());
    }

    #[test]
    fn every_preset_resolves() {
        for name in Fault::PRESETS {
            assert!(Fault::preset(name).is_some(), "{name}");
        }
        assert_eq!(Fault::preset("nope"), None);
    }

    #[test]
    fn serde_round_trip_of_every_variant() {
        let all = vec![
            Fault::too_many_requests(),
            Fault::Delay(Duration::from_millis(250)),
            Fault::Reset,
            Fault::Garbage,
            Fault::Oversized(1 << 20),
            Fault::Slowloris { byte_interval: Duration::from_millis(5) },
            Fault::RotateThenReset,
            Fault::Hang,
        ];
        for f in all {
            let s = serde_json::to_string(&f).unwrap();
            let back: Fault = serde_json::from_str(&s).unwrap();
            assert_eq!(back, f, "{s}");
        }
    }

    #[test]
    fn hand_written_json_forms() {
        let f: Fault = serde_json::from_str(r#"{"kind":"delay","ms":50}"#).unwrap();
        assert_eq!(f, Fault::Delay(Duration::from_millis(50)));
        let f: Fault = serde_json::from_str(r#"{"kind":"preset","name":"refresh_token_reused","status":403}"#).unwrap();
        assert_eq!(f, Fault::error_code(403, "refresh_token_reused"));
        let f: Fault = serde_json::from_str(r#"{"kind":"status","status":502}"#).unwrap();
        assert_eq!(f, Fault::status(502, "", ""));
        assert!(serde_json::from_str::<Fault>(r#"{"kind":"preset","name":"x"}"#).is_err());
        assert!(serde_json::from_str::<Fault>(r#"{"kind":"delay","millis":5}"#).is_err());
    }
}
