//! The auth.json model. We keep the file as an ordered JSON map so every field we do not
//! understand (top level and inside `tokens`) survives our rewrite — Codex drops them, we
//! don't. Validation mirrors what makes Codex refuse to load the file, and error messages
//! name the field, never its value.

pub mod jwt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};

pub use jwt::Claims;

/// Largest auth.json we read; real ones are a few KiB.
pub const MAX_AUTH_BYTES: u64 = 1024 * 1024;

/// How the file says Codex should authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthMode {
    ChatGpt,
    ApiKey,
    /// Any other mode (chatgptAuthTokens, headers, …): not ours to refresh.
    Other(String),
}

/// [`InvalidAuth::problem`] of a file with nothing but whitespace in it.
pub const EMPTY: &str = "is not valid JSON (it is empty)";

/// auth.json could not be used; says which file and field, and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidAuth {
    pub path: PathBuf,
    pub field: String,
    pub problem: String,
    /// Empty or ending mid-document: what a reader sees while Codex 0.130 rewrites the
    /// file in place (truncate, then write), so not by itself a broken login.
    pub incomplete: bool,
}

impl fmt::Display for InvalidAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: field `{}` {}; fix: log in again (codex login --device-auth) or install a seed",
            self.path.display(),
            self.field,
            self.problem
        )
    }
}

impl std::error::Error for InvalidAuth {}

/// Token fields a refresh response may carry; each present one replaces the old value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NewTokens {
    pub id_token: Option<String>,
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
}

impl fmt::Debug for NewTokens {
    // Never print token values, even in debug output or panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewTokens")
            .field("id_token", &self.id_token.as_ref().map(|_| "<redacted>"))
            .field("access_token", &self.access_token.as_ref().map(|_| "<redacted>"))
            .field("refresh_token", &self.refresh_token.as_deref().map(fingerprint))
            .finish()
    }
}

/// A parsed, validated auth.json.
#[derive(Clone, PartialEq)]
pub struct AuthFile {
    doc: Map<String, Value>,
}

impl fmt::Debug for AuthFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthFile")
            .field("mode", &self.mode())
            .field("token_fp", &self.token_fp())
            .finish_non_exhaustive()
    }
}

/// The facts the refresh decision needs, extracted from an [`AuthFile`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthFacts {
    pub mode: AuthMode,
    pub has_refresh_token: bool,
    pub access_expires_at: Option<DateTime<Utc>>,
    pub last_refresh: Option<DateTime<Utc>>,
}

impl AuthFile {
    /// Parse and validate; `path` is only used in error messages.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<AuthFile, InvalidAuth> {
        let bad = |field: &str, problem: &str| InvalidAuth {
            path: path.to_path_buf(),
            field: field.to_string(),
            problem: problem.to_string(),
            incomplete: false,
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(InvalidAuth { incomplete: true, ..bad("(file)", EMPTY) });
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            let why = format!("is not valid JSON (line {}, column {})", e.line(), e.column());
            InvalidAuth { incomplete: e.is_eof(), ..bad("(file)", &why) }
        })?;
        let Value::Object(doc) = value else {
            return Err(bad("(file)", "is not a JSON object"));
        };
        for key in ["auth_mode", "OPENAI_API_KEY", "last_refresh"] {
            match doc.get(key) {
                None | Some(Value::Null) | Some(Value::String(_)) => {}
                Some(_) => return Err(bad(key, "must be a string or null")),
            }
        }
        if let Some(Value::String(lr)) = doc.get("last_refresh") {
            // Codex refuses a timestamp without a timezone; so do we.
            DateTime::parse_from_rfc3339(lr)
                .map_err(|_| bad("last_refresh", "is not an RFC 3339 timestamp with a timezone"))?;
        }
        match doc.get("tokens") {
            None | Some(Value::Null) => {}
            Some(Value::Object(tokens)) => {
                for key in ["id_token", "access_token", "refresh_token"] {
                    match tokens.get(key) {
                        Some(Value::String(_)) => {}
                        None | Some(Value::Null) if key != "id_token" => {}
                        None => return Err(bad(&format!("tokens.{key}"), "is missing")),
                        Some(_) => return Err(bad(&format!("tokens.{key}"), "must be a string")),
                    }
                }
                if let Some(Value::String(id)) = tokens.get("id_token") {
                    jwt::payload(id).map_err(|e| bad("tokens.id_token", &e.to_string()))?;
                }
                match tokens.get("account_id") {
                    None | Some(Value::Null) | Some(Value::String(_)) => {}
                    Some(_) => return Err(bad("tokens.account_id", "must be a string or null")),
                }
            }
            Some(_) => return Err(bad("tokens", "must be an object")),
        }
        Ok(AuthFile { doc })
    }

    fn str_field(&self, key: &str) -> Option<&str> {
        self.doc.get(key).and_then(Value::as_str)
    }

    fn token(&self, key: &str) -> Option<&str> {
        self.doc.get("tokens").and_then(|t| t.get(key)).and_then(Value::as_str).filter(|s| !s.is_empty())
    }

    pub fn mode(&self) -> AuthMode {
        match self.str_field("auth_mode") {
            Some("chatgpt") => AuthMode::ChatGpt,
            Some("apikey") => AuthMode::ApiKey,
            Some(other) => AuthMode::Other(other.to_string()),
            // Absent: Codex infers an API-key login when a key is present.
            None if self.str_field("OPENAI_API_KEY").is_some_and(|k| !k.is_empty()) => AuthMode::ApiKey,
            None => AuthMode::ChatGpt,
        }
    }

    pub fn refresh_token(&self) -> Option<&str> {
        self.token("refresh_token")
    }

    /// `tokens.account_id` exactly as stored (no fallback to the id_token's claim): Codex
    /// needs it to refresh.
    pub fn stored_account_id(&self) -> Option<&str> {
        self.token("account_id")
    }

    /// The three token values, as a refresh response carrying all of them (to adopt a
    /// credential Codex refreshed itself through the same merge as our own refresh).
    pub fn tokens(&self) -> NewTokens {
        let owned = |k| self.token(k).map(str::to_string);
        NewTokens {
            id_token: owned("id_token"),
            access_token: owned("access_token"),
            refresh_token: owned("refresh_token"),
        }
    }

    pub fn access_claims(&self) -> Option<Claims> {
        self.token("access_token").and_then(|t| jwt::claims(t).ok())
    }

    pub fn id_claims(&self) -> Option<Claims> {
        self.token("id_token").and_then(|t| jwt::claims(t).ok())
    }

    /// `tokens.account_id`, else the id_token's `chatgpt_account_id` claim.
    pub fn account_id(&self) -> Option<String> {
        self.token("account_id").map(str::to_string).or_else(|| self.id_claims().and_then(|c| c.chatgpt_account_id))
    }

    pub fn last_refresh(&self) -> Option<DateTime<Utc>> {
        self.str_field("last_refresh").and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc))
    }

    pub fn access_expires_at(&self) -> Option<DateTime<Utc>> {
        self.access_claims().and_then(|c| c.exp)
    }

    pub fn token_fp(&self) -> Option<String> {
        self.refresh_token().map(fingerprint)
    }

    pub fn facts(&self) -> AuthFacts {
        AuthFacts {
            mode: self.mode(),
            has_refresh_token: self.refresh_token().is_some(),
            access_expires_at: self.access_expires_at(),
            last_refresh: self.last_refresh(),
        }
    }

    /// Apply a refresh response: only the fields it carries replace ours, and
    /// last_refresh becomes `now` (RFC 3339 UTC with nanoseconds, as Codex writes it).
    pub fn apply_refresh(&mut self, new: &NewTokens, now: DateTime<Utc>) {
        let tokens = self.doc.entry("tokens").or_insert_with(|| Value::Object(Map::new()));
        if !tokens.is_object() {
            *tokens = Value::Object(Map::new());
        }
        if let Value::Object(t) = tokens {
            for (key, val) in [
                ("id_token", &new.id_token),
                ("access_token", &new.access_token),
                ("refresh_token", &new.refresh_token),
            ] {
                if let Some(v) = val {
                    t.insert(key.to_string(), Value::String(v.clone()));
                }
            }
        }
        self.doc.insert("last_refresh".to_string(), Value::String(now.to_rfc3339_opts(SecondsFormat::Nanos, true)));
    }

    /// Serialized the way Codex writes it (pretty-printed), with unknown fields kept.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing a Map of Values cannot fail.
        serde_json::to_vec_pretty(&self.doc).unwrap_or_default()
    }
}

/// First 12 hex digits of sha256(token): safe to log, enough to tell tokens apart.
pub fn fingerprint(token: &str) -> String {
    sha256_hex(token.as_bytes())[..12].to_string()
}

/// Full hex sha256 of some bytes (content hashes of files and seeds).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex, two digits a byte (without a `format!` per byte: a fresh check hashes
/// auth.json twice and this was a tenth of its instructions).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * bytes.len());
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn jwt(payload: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.sig", e.encode(r#"{"alg":"none"}"#), e.encode(payload))
    }

    fn sample() -> String {
        format!(
            r#"{{"auth_mode":"chatgpt","OPENAI_API_KEY":null,"extra_top":{{"keep":1}},
            "tokens":{{"id_token":"{}","access_token":"{}","refresh_token":"SECRET-RT","account_id":"acc-1",
                "extra_tok":"k"}},
            "last_refresh":"2026-11-20T03:55:51.863408880Z"}}"#,
            jwt(concat!(
                r#"{"email":"a@example.com","#,
                r#""https://api.openai.com/auth":{"chatgpt_account_id":"acc-1","chatgpt_plan_type":"pro"}}"#
            )),
            jwt(r#"{"exp":1800000000}"#)
        )
    }

    #[test]
    fn parses_and_extracts_facts() {
        let a = AuthFile::parse(sample().as_bytes(), Path::new("/x/auth.json")).unwrap();
        assert_eq!(a.mode(), AuthMode::ChatGpt);
        assert_eq!(a.refresh_token(), Some("SECRET-RT"));
        assert_eq!(a.account_id().as_deref(), Some("acc-1"));
        assert_eq!(a.access_expires_at().unwrap().timestamp(), 1_800_000_000);
        assert_eq!(a.id_claims().unwrap().email.as_deref(), Some("a@example.com"));
        assert_eq!(a.id_claims().unwrap().plan.as_deref(), Some("pro"));
        assert!(!format!("{a:?}").contains("SECRET-RT"));
    }

    #[test]
    fn apply_keeps_unknown_fields_and_unreturned_tokens() {
        let mut a = AuthFile::parse(sample().as_bytes(), Path::new("a")).unwrap();
        let now = DateTime::parse_from_rfc3339("2026-11-23T00:00:00Z").unwrap().with_timezone(&Utc);
        a.apply_refresh(&NewTokens { refresh_token: Some("NEW-RT".into()), ..Default::default() }, now);
        let out: Value = serde_json::from_slice(&a.to_bytes()).unwrap();
        assert_eq!(out["extra_top"]["keep"], 1);
        assert_eq!(out["tokens"]["extra_tok"], "k");
        assert_eq!(out["tokens"]["refresh_token"], "NEW-RT");
        assert_eq!(out["tokens"]["access_token"].as_str().unwrap(), jwt(r#"{"exp":1800000000}"#));
        assert_eq!(out["last_refresh"], "2026-11-23T00:00:00.000000000Z");
        let keys: Vec<_> = out.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys[0], "auth_mode", "field order preserved");
    }

    #[test]
    fn invalid_files_name_the_field_and_never_the_value() {
        let cases = [
            (r#"[1]"#, "(file)"),
            (r#"{"tokens":{"id_token":"SECRETVALUE","refresh_token":"r"}}"#, "tokens.id_token"),
            (r#"{"tokens":{"refresh_token":"r"}}"#, "tokens.id_token"),
            (r#"{"last_refresh":"2026-11-20T03:55:51"}"#, "last_refresh"),
            (r#"{"tokens":"SECRETVALUE"}"#, "tokens"),
            (r#"{"auth_mode":5}"#, "auth_mode"),
            ("{not json SECRETVALUE", "(file)"),
        ];
        for (text, field) in cases {
            let e = AuthFile::parse(text.as_bytes(), Path::new("/h/auth.json")).unwrap_err();
            assert_eq!(e.field, field, "for {text}");
            let msg = e.to_string();
            assert!(msg.contains("/h/auth.json") && msg.contains(field), "{msg}");
            assert!(!msg.contains("SECRETVALUE"), "{msg}");
        }
    }

    #[test]
    fn an_empty_or_cut_off_file_is_incomplete_and_a_broken_one_is_not() {
        let full = sample();
        for text in ["", "  \n", &full[..full.len() / 2], &full[..full.len() - 1], "{"] {
            let e = AuthFile::parse(text.as_bytes(), Path::new("a")).unwrap_err();
            assert!(e.incomplete, "{text:?}: {e}");
        }
        for text in ["[1]", "{not json", r#"{"tokens":{"refresh_token":"r"}}"#, "{}}"] {
            let e = AuthFile::parse(text.as_bytes(), Path::new("a")).unwrap_err();
            assert!(!e.incomplete, "{text:?}: {e}");
        }
    }

    #[test]
    fn mode_inference_matches_codex() {
        let p = Path::new("a");
        let m = |s: &str| AuthFile::parse(s.as_bytes(), p).unwrap().mode();
        assert_eq!(m(r#"{"OPENAI_API_KEY":"sk-1"}"#), AuthMode::ApiKey);
        assert_eq!(m(r#"{"OPENAI_API_KEY":null}"#), AuthMode::ChatGpt);
        assert_eq!(m(r#"{"auth_mode":"chatgptAuthTokens"}"#), AuthMode::Other("chatgptAuthTokens".into()));
    }

    #[test]
    fn fingerprint_is_12_hex() {
        let fp = fingerprint("abc");
        assert_eq!(fp, "ba7816bf8f01");
    }

    #[test]
    fn sha256_hex_is_the_standard_digest() {
        // FIPS 180-2's test vectors (the software implementation is forced: `force-soft`).
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let two_blocks = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        assert_eq!(sha256_hex(two_blocks), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
