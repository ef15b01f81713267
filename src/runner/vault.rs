//! A small Vault/OpenBao KV v2 client over ureq: read a key (value bytes + version), write
//! it with check-and-set, and log in with a token file or AppRole. Values are
//! base64(bytes) in the field `value` (seed document 002). Tokens and values never appear
//! in an error, a log line or a `Debug` output; response bodies are read with a cap.

use crate::config::{VaultAuth, VaultSettings};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

/// Largest Vault answer we read (auth.json is far below this).
const MAX_BODY: u64 = 1024 * 1024;
/// Log in again when less than this share of the token's TTL is left…
const RELOGIN_FRACTION: f64 = 1.0 / 3.0;
/// …or less than this, whichever is larger.
const RELOGIN_MARGIN: chrono::Duration = chrono::Duration::seconds(30);

/// Bytes that must never be printed (a credential or a Vault token).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

/// One read of a KV entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The key it was read from (the seed's and the rotating key's versions are unrelated).
    pub key: String,
    pub value: Secret,
    pub version: u64,
    /// When Vault wrote this version (its own clock; None when we did not read it back).
    pub created: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    #[error("{key} does not exist in Vault")]
    NotFound { key: String },
    #[error("check-and-set conflict on {key}: someone else wrote it since we read it")]
    CasMismatch { key: String },
    #[error(
        "Vault denied access to {path} (HTTP 403): the token lacks the \"{capability}\" capability on it (or is \
            invalid or expired); grant it in the policy (see docs/fleet-policies/)"
    )]
    Denied { key: String, path: String, capability: &'static str },
    #[error("Vault at {address} is unreachable ({why}); local files keep working; will retry")]
    Unreachable { address: String, why: String },
    #[error(
        "the TLS certificate of Vault at {address} is not trusted ({why}): {trusted}; set ca_file in [vault] to \
            the PEM file of the CA that signed it; local files keep working; will retry"
    )]
    Untrusted { address: String, trusted: String, why: String },
    #[error("Vault login failed: {0}")]
    Login(String),
    #[error("Vault answered unexpectedly for {key}: {why}")]
    Invalid { key: String, why: String },
}

/// One client per Vault config for the life of the process, so the daemon keeps its
/// AppRole login across runs instead of logging in for each.
#[derive(Default)]
pub struct Clients(Mutex<Option<(VaultSettings, Arc<Vault>)>>);

impl Clients {
    pub fn get(&self, settings: &VaultSettings) -> Result<Arc<Vault>, VaultError> {
        let mut c = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((s, v)) = c.as_ref() {
            if s == settings {
                return Ok(v.clone());
            }
        }
        let v = Arc::new(Vault::new(settings)?);
        *c = Some((settings.clone(), v.clone()));
        Ok(v)
    }
}

/// A login token and when it stops working (None: a static token from a file).
#[derive(Clone)]
struct Token {
    value: String,
    obtained: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
}

/// Whether a cached token can still be used at `now` (pure). Log in again once less than a
/// third of its TTL (at least 30 s) is left, so a request never races the expiry.
pub fn token_usable(obtained: DateTime<Utc>, expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    let Some(exp) = expires_at else { return true };
    let ttl = exp - obtained;
    let margin = chrono::Duration::milliseconds((ttl.num_milliseconds() as f64 * RELOGIN_FRACTION) as i64);
    now.checked_add_signed(margin.max(RELOGIN_MARGIN)).is_some_and(|t| t < exp)
}

/// When a login answer's `lease_duration` (seconds, from the server) ends; None for no
/// lease. Any number is accepted: one past what time can hold means "never".
pub fn lease_expiry(now: DateTime<Utc>, lease_duration: Option<i64>) -> Option<DateTime<Utc>> {
    let lease = lease_duration.filter(|l| *l > 0)?;
    Some(
        chrono::Duration::try_seconds(lease)
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
    )
}

pub struct Vault {
    agent: ureq::Agent,
    settings: VaultSettings,
    token: Mutex<Option<Token>>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault").field("address", &self.settings.address).field("mount", &self.settings.mount).finish()
    }
}

impl Vault {
    pub fn new(settings: &VaultSettings) -> Result<Vault, VaultError> {
        let mut b = ureq::AgentBuilder::new().timeout(settings.request_timeout).redirects(0);
        if settings.address.starts_with("https://") {
            b = b.tls_config(crate::sys::tls::client_config(settings.ca_file.as_deref()).map_err(VaultError::Login)?);
        }
        Ok(Vault { agent: b.build(), settings: settings.clone(), token: Mutex::new(None) })
    }

    pub fn address(&self) -> &str {
        &self.settings.address
    }

    fn data_path(&self, key: &str) -> String {
        format!("{}/data/{key}", self.settings.mount)
    }

    fn unreachable(&self, why: impl Into<String>) -> VaultError {
        VaultError::Unreachable { address: self.settings.address.clone(), why: why.into() }
    }

    /// A request that got no HTTP answer: an untrusted certificate says so (with the fix),
    /// anything else is "unreachable".
    fn transport(&self, t: &ureq::Transport) -> VaultError {
        let Some(why) = certificate_problem(t) else { return self.unreachable(t.kind().to_string()) };
        let trusted = match &self.settings.ca_file {
            Some(ca) => format!("neither ca_file {} nor the system's roots vouch for it", ca.display()),
            None => "no ca_file is set and the system's roots do not vouch for it".to_string(),
        };
        VaultError::Untrusted { address: self.settings.address.clone(), trusted, why }
    }

    /// A usable token: the file's, or a cached AppRole login renewed before it expires.
    fn token(&self, now: DateTime<Utc>) -> Result<String, VaultError> {
        let mut cached = self.token.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = cached.as_ref().filter(|t| token_usable(t.obtained, t.expires_at, now)) {
            return Ok(t.value.clone());
        }
        let t = match &self.settings.auth {
            VaultAuth::Token { token_file } => {
                Token { value: read_secret(token_file)?, obtained: now, expires_at: None }
            }
            VaultAuth::AppRole { approle_role_id_file, approle_secret_id_file } => {
                self.approle_login(&read_secret(approle_role_id_file)?, &read_secret(approle_secret_id_file)?, now)?
            }
            VaultAuth::Kubernetes { kubernetes_role, kubernetes_mount, kubernetes_token_file } => {
                self.kubernetes_login(kubernetes_role, kubernetes_mount, kubernetes_token_file, now)?
            }
        };
        *cached = Some(t.clone());
        Ok(t.value)
    }

    /// Forget the cached token (after a 403 it may have been revoked or expired early).
    fn forget_token(&self) {
        *self.token.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn approle_login(&self, role_id: &str, secret_id: &str, now: DateTime<Utc>) -> Result<Token, VaultError> {
        let body = json!({"role_id": role_id, "secret_id": secret_id});
        let fix = "check approle_role_id_file and approle_secret_id_file and that the approle auth method is enabled";
        self.login("approle", "AppRole", body, fix, now)
    }

    /// `POST /v1/auth/<mount>/login {role, jwt}`: Vault's `kubernetes` and `jwt` methods
    /// take the same request. The token file is read at every login: the kubelet rotates it.
    fn kubernetes_login(
        &self,
        role: &str,
        mount: &str,
        token_file: &Path,
        now: DateTime<Utc>,
    ) -> Result<Token, VaultError> {
        let jwt = read_secret(token_file)?;
        let body = json!({"role": role, "jwt": jwt});
        let fix = format!(
            "check that auth/{mount} is a kubernetes (or jwt) auth method whose role {role} is bound to this \
                pod's service account and namespace (kubernetes_token_file {})",
            token_file.display()
        );
        self.login(mount, "Kubernetes", body, &fix, now)
    }

    /// One login request; the answer's client token and when it stops working.
    fn login(&self, mount: &str, what: &str, body: Value, fix: &str, now: DateTime<Utc>) -> Result<Token, VaultError> {
        let url = format!("{}/v1/auth/{mount}/login", self.settings.address);
        let v = match self.agent.post(&url).send_json(body) {
            Ok(resp) => read_json(resp).map_err(|why| VaultError::Login(format!("unreadable answer: {why}")))?,
            Err(ureq::Error::Status(code, _)) if code < 500 && code != 429 => {
                return Err(VaultError::Login(format!("{what} login refused (HTTP {code}); {fix}")));
            }
            Err(ureq::Error::Status(code, _)) => return Err(self.unreachable(format!("HTTP {code} on {what} login"))),
            Err(ureq::Error::Transport(t)) => return Err(self.transport(&t)),
        };
        let auth = &v["auth"];
        let Some(token) = auth["client_token"].as_str().filter(|t| !t.is_empty()) else {
            return Err(VaultError::Login(format!("the {what} login answer holds no client_token")));
        };
        let expires_at = lease_expiry(now, auth["lease_duration"].as_i64());
        Ok(Token { value: token.to_string(), obtained: now, expires_at })
    }

    /// Send one request with the token; a 403 is retried once with a fresh login.
    fn call(
        &self,
        key: &str,
        capability: &'static str,
        body: Option<&Value>,
        now: DateTime<Utc>,
    ) -> Result<Value, VaultError> {
        let url = format!("{}/v1/{}", self.settings.address, self.data_path(key));
        let mut relogged = false;
        loop {
            let token = self.token(now)?;
            let req = match body {
                Some(_) => self.agent.post(&url),
                None => self.agent.get(&url),
            }
            .set("X-Vault-Token", &token);
            let result = match body {
                Some(b) => req.send_json(b.clone()),
                None => req.call(),
            };
            return match result {
                Ok(resp) => read_json(resp).map_err(|why| VaultError::Invalid { key: key.to_string(), why }),
                Err(ureq::Error::Status(403, _))
                    if !relogged && !matches!(self.settings.auth, VaultAuth::Token { .. }) =>
                {
                    self.forget_token();
                    relogged = true;
                    continue;
                }
                Err(ureq::Error::Status(403, _)) => {
                    Err(VaultError::Denied { key: key.to_string(), path: self.data_path(key), capability })
                }
                Err(ureq::Error::Status(404, _)) => Err(VaultError::NotFound { key: key.to_string() }),
                Err(ureq::Error::Status(400, resp)) if body.is_some() => {
                    let text = read_json(resp).map(|v| v.to_string()).unwrap_or_default();
                    if text.contains("check-and-set") {
                        Err(VaultError::CasMismatch { key: key.to_string() })
                    } else {
                        Err(VaultError::Invalid { key: key.to_string(), why: "HTTP 400 on write".into() })
                    }
                }
                Err(ureq::Error::Status(code, _)) if code >= 500 || code == 429 => {
                    Err(self.unreachable(format!("HTTP {code}")))
                }
                Err(ureq::Error::Status(code, _)) => {
                    Err(VaultError::Invalid { key: key.to_string(), why: format!("HTTP {code}") })
                }
                Err(ureq::Error::Transport(t)) => Err(self.transport(&t)),
            };
        }
    }

    /// Read `key`: its value and version, or None when it does not exist (or its newest
    /// version is deleted).
    pub fn read(&self, key: &str, now: DateTime<Utc>) -> Result<Option<Entry>, VaultError> {
        let v = match self.call(key, "read", None, now) {
            Ok(v) => v,
            Err(VaultError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let invalid = |why: &str| VaultError::Invalid { key: key.to_string(), why: why.to_string() };
        let version = v["data"]["metadata"]["version"].as_u64().ok_or_else(|| invalid("no data.metadata.version"))?;
        let Some(text) = v["data"]["data"]["value"].as_str() else {
            return Err(invalid("no field `value` (expected base64 of the content)"));
        };
        let value = B64.decode(text.trim()).map_err(|_| invalid("field `value` is not base64"))?;
        let created = v["data"]["metadata"]["created_time"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        Ok(Some(Entry { key: key.to_string(), value: Secret(value), version, created }))
    }

    /// Write `value` to `key` if its current version is `cas` (0: only if absent); returns
    /// the new version.
    pub fn write(&self, key: &str, value: &[u8], cas: u64, now: DateTime<Utc>) -> Result<u64, VaultError> {
        let body = json!({"data": {"value": B64.encode(value)}, "options": {"cas": cas}});
        let v = self.call(key, "create/update", Some(&body), now)?;
        v["data"]["version"]
            .as_u64()
            .ok_or_else(|| VaultError::Invalid { key: key.to_string(), why: "no data.version in the answer".into() })
    }
}

/// The rustls certificate error behind a failed TLS handshake, if that is what failed
/// (ureq wraps it in an io::Error, whose `source` skips the wrapped error itself).
fn certificate_problem(t: &ureq::Transport) -> Option<String> {
    use std::error::Error;
    let mut next: Option<&(dyn Error + 'static)> = t.source();
    while let Some(e) = next {
        let wrapped =
            e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).map(|w| w as &(dyn Error + 'static));
        for candidate in [Some(e), wrapped].into_iter().flatten() {
            if let Some(rustls::Error::InvalidCertificate(c)) = candidate.downcast_ref::<rustls::Error>() {
                return Some(format!("{c:?}"));
            }
        }
        next = e.source();
    }
    None
}

/// A capped JSON body.
fn read_json(resp: ureq::Response) -> Result<Value, String> {
    let mut buf = Vec::new();
    resp.into_reader().take(MAX_BODY).read_to_end(&mut buf).map_err(|e| e.kind().to_string())?;
    serde_json::from_slice(&buf).map_err(|_| "not JSON".to_string())
}

/// A one-line secret from a file (root-only ones are checked by the config too), trimmed.
fn read_secret(path: &Path) -> Result<String, VaultError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| VaultError::Login(format!("cannot read {}: {e}", path.display())))?;
    let t = text.trim();
    if t.is_empty() {
        return Err(VaultError::Login(format!("{} is empty", path.display())));
    }
    Ok(t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn tokens_are_renewed_before_they_expire() {
        assert!(token_usable(t(0), None, t(1_000_000)), "static tokens never expire here");
        // 1 h TTL: usable until 40 min are gone (a third left).
        assert!(token_usable(t(0), Some(t(3600)), t(2399)));
        assert!(!token_usable(t(0), Some(t(3600)), t(2400)));
        // 60 s TTL: the 30 s minimum margin applies.
        assert!(token_usable(t(0), Some(t(60)), t(29)));
        assert!(!token_usable(t(0), Some(t(60)), t(30)));
    }

    #[test]
    fn any_lease_duration_from_the_server_is_safe() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        for lease in [i64::MIN, -1, 0, 1, 3600, i64::MAX / 1000, i64::MAX / 1000 + 1, i64::MAX] {
            let exp = lease_expiry(now, Some(lease));
            assert_eq!(exp.is_some(), lease > 0, "{lease}");
            // A token with any lease is judged without overflowing.
            let _ = token_usable(now, exp, now);
            let _ = token_usable(DateTime::<Utc>::MIN_UTC, exp, DateTime::<Utc>::MAX_UTC);
        }
        assert_eq!(lease_expiry(now, Some(3600)), Some(now + chrono::Duration::seconds(3600)));
        assert_eq!(lease_expiry(now, Some(i64::MAX)), Some(DateTime::<Utc>::MAX_UTC));
        assert_eq!(lease_expiry(now, None), None);
    }

    /// A Vault that answers `n` logins with a 1 s token and tells what each one sent.
    fn fake_login_server(n: usize) -> (String, std::thread::JoinHandle<Vec<Value>>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..n {
                let (stream, _) = listener.accept().unwrap();
                let mut r = BufReader::new(stream.try_clone().unwrap());
                let (mut line, mut len, mut path) = (String::new(), 0usize, String::new());
                r.read_line(&mut path).unwrap();
                while r.read_line(&mut line).unwrap() > 2 {
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    line.clear();
                }
                let mut body = vec![0; len];
                std::io::Read::read_exact(&mut r, &mut body).unwrap();
                let mut v: Value = serde_json::from_slice(&body).unwrap();
                v["path"] = json!(path.split_whitespace().nth(1));
                seen.push(v);
                let answer = r#"{"auth":{"client_token":"s.fake","lease_duration":1}}"#;
                let mut s = stream;
                write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                    answer.len()
                )
                .unwrap();
            }
            seen
        });
        (addr, h)
    }

    #[test]
    fn kubernetes_login_reads_the_token_file_again_at_each_login() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "jwt-one\n").unwrap();
        let (address, server) = fake_login_server(2);
        let v = Vault::new(&VaultSettings {
            address,
            mount: "secret".into(),
            auth: VaultAuth::Kubernetes {
                kubernetes_role: "codex-auth-refresher-team".into(),
                kubernetes_mount: "k8s/prod".into(),
                kubernetes_token_file: file.clone(),
            },
            ca_file: None,
            request_timeout: Duration::from_secs(5),
            publish_retry: Duration::from_secs(1),
        })
        .unwrap();
        assert_eq!(v.token(t(0)).unwrap(), "s.fake");
        // The kubelet rotated the projected token; the 1 s Vault token has run out.
        std::fs::write(&file, "jwt-two").unwrap();
        assert_eq!(v.token(t(10)).unwrap(), "s.fake");
        let seen = server.join().unwrap();
        let sent: Vec<(&str, &str, &str)> = seen
            .iter()
            .map(|b| (b["path"].as_str().unwrap(), b["role"].as_str().unwrap(), b["jwt"].as_str().unwrap()))
            .collect();
        assert_eq!(
            sent,
            [
                ("/v1/auth/k8s/prod/login", "codex-auth-refresher-team", "jwt-one"),
                ("/v1/auth/k8s/prod/login", "codex-auth-refresher-team", "jwt-two")
            ]
        );
    }

    #[test]
    fn secrets_and_clients_do_not_print_their_content() {
        let s = Secret(b"hvs.very-secret".to_vec());
        assert!(!format!("{s:?}").contains("very-secret"));
        let v = Vault::new(&VaultSettings {
            address: "http://127.0.0.1:1".into(),
            mount: "secret".into(),
            auth: VaultAuth::Token { token_file: "/nonexistent".into() },
            ca_file: None,
            request_timeout: Duration::from_secs(1),
            publish_retry: Duration::from_secs(1),
        })
        .unwrap();
        assert!(format!("{v:?}").contains("127.0.0.1:1"));
        let e = v.read("k", t(0)).unwrap_err();
        assert!(matches!(e, VaultError::Login(_)), "{e}");
    }
}
