//! Decoding the JWT claims Codex reads. No signature check: we only schedule refreshes
//! from these claims, the server remains the judge of validity.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::Value;

/// Claims Codex uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    pub exp: Option<DateTime<Utc>>,
    pub email: Option<String>,
    pub chatgpt_account_id: Option<String>,
    pub plan: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("is not a JWT (expected three dot-separated parts)")]
    Shape,
    #[error("is not a JWT (payload is not base64url)")]
    Base64,
    #[error("is not a JWT (payload is not a JSON object)")]
    Json,
}

/// The decoded payload object of a JWT.
pub fn payload(token: &str) -> Result<serde_json::Map<String, Value>, JwtError> {
    let mut parts = token.split('.');
    let (Some(_), Some(p), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Shape);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(p.trim_end_matches('='))
        .map_err(|_| JwtError::Base64)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(JwtError::Json),
    }
}

/// The claims Codex reads, from any JWT.
pub fn claims(token: &str) -> Result<Claims, JwtError> {
    let p = payload(token)?;
    let auth = p.get("https://api.openai.com/auth");
    let auth_str = |k: &str| auth.and_then(|a| a.get(k)).and_then(Value::as_str).map(str::to_string);
    let email = p
        .get("email")
        .and_then(Value::as_str)
        .or_else(|| p.get("https://api.openai.com/profile").and_then(|pr| pr.get("email")).and_then(Value::as_str))
        .map(str::to_string);
    let exp = p
        .get("exp")
        .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
        .and_then(|s| DateTime::from_timestamp(s, 0));
    Ok(Claims { exp, email, chatgpt_account_id: auth_str("chatgpt_account_id"), plan: auth_str("chatgpt_plan_type") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn decodes_claims() {
        let t = format!(
            "{}.{}.x",
            enc("{}"),
            enc(concat!(
                r#"{"exp":1700000000,"https://api.openai.com/profile":{"email":"p@e"},"#,
                r#""https://api.openai.com/auth":{"chatgpt_account_id":"a","chatgpt_plan_type":"plus"}}"#
            ))
        );
        let c = claims(&t).unwrap();
        assert_eq!(c.exp.unwrap().timestamp(), 1_700_000_000);
        assert_eq!(c.email.as_deref(), Some("p@e"));
        assert_eq!(c.chatgpt_account_id.as_deref(), Some("a"));
        assert_eq!(c.plan.as_deref(), Some("plus"));
    }

    #[test]
    fn rejects_non_jwts() {
        assert_eq!(claims("abc").unwrap_err(), JwtError::Shape);
        assert_eq!(claims("a.b.c.d").unwrap_err(), JwtError::Shape);
        assert_eq!(claims("a.!!!.c").unwrap_err(), JwtError::Base64);
        assert_eq!(claims(&format!("a.{}.c", enc("[1]"))).unwrap_err(), JwtError::Json);
        // Padded payloads are accepted.
        assert!(claims(&format!("a.{}==.c", enc("{}"))).is_ok());
    }
}
