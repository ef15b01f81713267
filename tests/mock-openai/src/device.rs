//! Codex's device-code login (`codex login --device-auth`), as a traced run of Codex
//! 0.169 shows it (docs: /work/shared/notes/codex-contract.md):
//! 1. `POST /api/accounts/deviceauth/usercode` `{"client_id"}` → `{"device_auth_id",
//!    "user_code","interval"}` (interval a string of seconds);
//! 2. `POST /api/accounts/deviceauth/token` `{"device_auth_id","user_code"}`, polled every
//!    interval: 403 while the user has not approved, 200 `{"authorization_code",
//!    "code_challenge","code_verifier"}` once approved; any other status aborts the login
//!    (a denied code answers 401 here);
//! 3. `POST /oauth/token` form-encoded `grant_type=authorization_code&client_id&code&
//!    redirect_uri={issuer}/deviceauth/callback&code_verifier` → a new token family.
//!
//! The user's side (opening `{issuer}/codex/device` and typing the code) is the test's
//! [`crate::MockServer::approve_device`] / [`crate::MockServer::deny_device`].

use serde_json::{Value, json};
use std::collections::HashMap;

use crate::http::Response;
use crate::jwt::random_hex16;
use crate::state::CLIENT_ID;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Decision {
    Pending,
    Approved { account_id: String, code: String },
    Denied,
}

struct DeviceCode {
    device_auth_id: String,
    user_code: String,
    decision: Decision,
    polls: u64,
}

/// An authorization code handed out to an approved device code, until it is exchanged.
struct AuthCode {
    account_id: String,
    verifier: String,
}

#[derive(Default)]
pub(crate) struct Devices {
    codes: Vec<DeviceCode>,
    auth_codes: HashMap<String, AuthCode>,
}

fn bad(status: u16, error: &str, why: &str) -> Response {
    Response::json(status, &json!({"error": error, "error_description": why}))
}

/// A user code shaped like OpenAI's (two groups of four, no look-alike characters).
fn user_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let hex = random_hex16();
    let chars: Vec<char> = hex
        .as_bytes()
        .chunks(2)
        .take(8)
        .map(|pair| {
            let v = u8::from_str_radix(std::str::from_utf8(pair).unwrap_or("0"), 16).unwrap_or(0);
            ALPHABET[usize::from(v) % ALPHABET.len()] as char
        })
        .collect();
    format!("{}-{}", chars[..4].iter().collect::<String>(), chars[4..].iter().collect::<String>())
}

impl Devices {
    /// Step 1: a new pending device code.
    pub fn usercode(&mut self, body: &[u8]) -> Response {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        if v.get("client_id").and_then(Value::as_str) != Some(CLIENT_ID) {
            return bad(400, "invalid_request", "Unknown or missing client_id.");
        }
        let code = DeviceCode {
            device_auth_id: format!("deviceauth_{}", random_hex16()),
            user_code: user_code(),
            decision: Decision::Pending,
            polls: 0,
        };
        let answer = json!({"device_auth_id": code.device_auth_id, "user_code": code.user_code, "interval": "1"});
        self.codes.push(code);
        Response::json(200, &answer)
    }

    /// Step 2: one poll.
    pub fn poll(&mut self, body: &[u8]) -> Response {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let (id, uc) = (v["device_auth_id"].as_str(), v["user_code"].as_str());
        let Some(code) = self.codes.iter_mut().find(|c| Some(c.device_auth_id.as_str()) == id) else {
            return bad(404, "not_found", "Unknown device_auth_id.");
        };
        if Some(code.user_code.as_str()) != uc {
            return bad(400, "invalid_request", "user_code does not match device_auth_id.");
        }
        code.polls += 1;
        match &code.decision {
            Decision::Pending => bad(403, "authorization_pending", "The user has not approved this code yet."),
            Decision::Denied => bad(401, "access_denied", "The user denied this code."),
            Decision::Approved { account_id, code: auth_code } => {
                let verifier = format!("verifier_{}", random_hex16());
                self.auth_codes
                    .insert(auth_code.clone(), AuthCode { account_id: account_id.clone(), verifier: verifier.clone() });
                Response::json(
                    200,
                    &json!({"authorization_code": auth_code, "code_challenge": format!("challenge_{}", random_hex16()),
                        "code_verifier": verifier}),
                )
            }
        }
    }

    /// Step 3's check: the account an authorization code was approved for (the code is
    /// spent), or the error to answer.
    pub fn exchange(&mut self, form: &HashMap<String, String>) -> Result<String, Response> {
        let field = |k: &str| form.get(k).map(String::as_str);
        if field("client_id") != Some(CLIENT_ID) {
            return Err(bad(400, "invalid_request", "Unknown or missing client_id."));
        }
        if !field("redirect_uri").is_some_and(|u| u.ends_with("/deviceauth/callback")) {
            return Err(bad(400, "invalid_request", "redirect_uri must be {issuer}/deviceauth/callback."));
        }
        let Some(code) = field("code").and_then(|c| self.auth_codes.remove(c)) else {
            return Err(bad(400, "invalid_grant", "Unknown or already used authorization code."));
        };
        if field("code_verifier") != Some(code.verifier.as_str()) {
            return Err(bad(400, "invalid_grant", "code_verifier does not match."));
        }
        Ok(code.account_id)
    }

    /// User codes nobody has approved or denied yet, oldest first.
    pub fn pending(&self) -> Vec<String> {
        self.codes.iter().filter(|c| c.decision == Decision::Pending).map(|c| c.user_code.clone()).collect()
    }

    /// Polls received for `user_code` so far.
    pub fn polls(&self, user_code: &str) -> u64 {
        self.codes.iter().find(|c| c.user_code == user_code).map_or(0, |c| c.polls)
    }

    /// The user approves (`Some(account)`: logs in as that ChatGPT account) or denies a
    /// pending code; false when there is no such pending code.
    pub fn decide(&mut self, user_code: &str, account_id: Option<&str>) -> bool {
        let Some(c) = self.codes.iter_mut().find(|c| c.user_code == user_code && c.decision == Decision::Pending)
        else {
            return false;
        };
        c.decision = match account_id {
            Some(a) => Decision::Approved { account_id: a.to_string(), code: format!("ac_{}", random_hex16()) },
            None => Decision::Denied,
        };
        true
    }
}

/// `application/x-www-form-urlencoded` → map (`+` is a space, `%XX` a byte); None when
/// the body is not a form with a `grant_type`.
pub(crate) fn parse_form(body: &[u8]) -> Option<HashMap<String, String>> {
    let text = std::str::from_utf8(body).ok()?;
    let decode = |s: &str| -> Option<String> {
        let mut out = Vec::with_capacity(s.len());
        let mut bytes = s.bytes();
        while let Some(b) = bytes.next() {
            match b {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex = [bytes.next()?, bytes.next()?];
                    out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
                }
                b => out.push(b),
            }
        }
        String::from_utf8(out).ok()
    };
    let form: HashMap<String, String> = text
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((decode(k)?, decode(v)?))
        })
        .collect::<Option<_>>()?;
    form.contains_key("grant_type").then_some(form)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_of(r: &Response) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn approve_then_exchange_once() {
        let mut d = Devices::default();
        let r = d.usercode(json!({"client_id": CLIENT_ID}).to_string().as_bytes());
        let v = json_of(&r);
        let (id, uc) = (v["device_auth_id"].as_str().unwrap(), v["user_code"].as_str().unwrap());
        assert_eq!((r.status, v["interval"].as_str()), (200, Some("1")));
        assert_eq!(uc.len(), 9);
        let poll = json!({"device_auth_id": id, "user_code": uc}).to_string();
        assert_eq!(d.poll(poll.as_bytes()).status, 403, "pending");
        assert_eq!(d.pending(), [uc]);
        assert!(d.decide(uc, Some("acct-1")));
        assert!(!d.decide(uc, None), "decided already");
        let form = |ok: &Value, verifier: Option<&str>| {
            HashMap::from([
                ("client_id".to_string(), CLIENT_ID.to_string()),
                ("code".into(), ok["authorization_code"].as_str().unwrap().into()),
                ("code_verifier".into(), verifier.unwrap_or(ok["code_verifier"].as_str().unwrap()).into()),
                ("redirect_uri".into(), "http://x/deviceauth/callback".into()),
            ])
        };
        let ok = json_of(&d.poll(poll.as_bytes()));
        assert_eq!(d.exchange(&form(&ok, Some("wrong"))).unwrap_err().status, 400);
        // A wrong verifier spends the code; a new poll of the approved code gives it again.
        let ok = json_of(&d.poll(poll.as_bytes()));
        assert_eq!(d.exchange(&form(&ok, None)).unwrap(), "acct-1");
        assert_eq!(d.exchange(&form(&ok, None)).unwrap_err().status, 400, "spent");
        assert_eq!(d.polls(uc), 3);
    }

    #[test]
    fn denied_and_unknown_codes_abort() {
        let mut d = Devices::default();
        assert_eq!(d.usercode(b"{}").status, 400);
        let v = json_of(&d.usercode(json!({"client_id": CLIENT_ID}).to_string().as_bytes()));
        let uc = v["user_code"].as_str().unwrap();
        assert!(d.decide(uc, None));
        let poll = json!({"device_auth_id": v["device_auth_id"], "user_code": uc}).to_string();
        assert_eq!(d.poll(poll.as_bytes()).status, 401);
        assert_eq!(d.poll(br#"{"device_auth_id":"nope","user_code":"x"}"#).status, 404);
        assert!(d.pending().is_empty());
    }

    #[test]
    fn forms_decode() {
        let f = parse_form(b"grant_type=authorization_code&redirect_uri=http%3A%2F%2Fh%2Fx&a=b+c").unwrap();
        assert_eq!((f["redirect_uri"].as_str(), f["a"].as_str()), ("http://h/x", "b c"));
        assert!(parse_form(br#"{"grant_type":"refresh_token"}"#).is_none());
        assert!(parse_form(b"grant_type=x&bad=%G1").is_none());
    }
}
