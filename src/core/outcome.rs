//! What one account's cycle ended with, how that maps to exit codes, and the one-line JSON
//! the `--json` flag prints. Nothing here ever holds a token value.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Exit codes from the contract.
pub mod exit {
    pub const OK: i32 = 0;
    pub const USAGE: i32 = 2;
    pub const PERMANENT: i32 = 3;
    pub const TRANSIENT: i32 = 4;
    pub const UNSAFE: i32 = 5;
    pub const CONFIG: i32 = 78;

    /// Which of two exit codes is worse (for `--all`): config > permanent > unsafe >
    /// transient > ok. Permanent ranks first because only a human login fixes it.
    pub fn worst(a: i32, b: i32) -> i32 {
        fn rank(c: i32) -> u8 {
            match c {
                OK => 0,
                TRANSIENT => 1,
                UNSAFE => 2,
                PERMANENT => 3,
                CONFIG => 4,
                _ => 5,
            }
        }
        if rank(b) > rank(a) { b } else { a }
    }
}

/// How a cycle ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// We obtained and wrote new tokens.
    Refreshed,
    /// Nothing to do, or someone else's newer credential was adopted.
    Fresh,
    /// Not a credential we manage (API key, externally managed, no refresh token).
    Inert,
    /// `--dry-run` only: a refresh is due.
    WouldRefresh,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Refreshed => "refreshed",
            Outcome::Fresh => "fresh",
            Outcome::Inert => "inert",
            Outcome::WouldRefresh => "would_refresh",
            Outcome::Failed => "failed",
        }
    }
}

/// Why a failure happened, as far as retrying is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// A human must log in again; retrying cannot help.
    Permanent,
    /// Retry later.
    Transient,
    /// We refused to touch an unsafe file or directory.
    Unsafe,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Permanent => "permanent",
            FailureClass::Transient => "transient",
            FailureClass::Unsafe => "unsafe",
        }
    }

    pub fn exit_code(self) -> i32 {
        match self {
            FailureClass::Permanent => exit::PERMANENT,
            FailureClass::Transient => exit::TRANSIENT,
            FailureClass::Unsafe => exit::UNSAFE,
        }
    }
}

/// A classified failure with an operator-facing reason (never a token value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub class: FailureClass,
    pub reason: String,
    pub http_status: Option<u16>,
}

impl Failure {
    pub fn new(class: FailureClass, reason: impl Into<String>) -> Self {
        Failure { class, reason: reason.into(), http_status: None }
    }
    pub fn permanent(reason: impl Into<String>) -> Self {
        Self::new(FailureClass::Permanent, reason)
    }
    pub fn transient(reason: impl Into<String>) -> Self {
        Self::new(FailureClass::Transient, reason)
    }
    pub fn unsafe_file(reason: impl Into<String>) -> Self {
        Self::new(FailureClass::Unsafe, reason)
    }
    pub fn with_status(mut self, status: u16) -> Self {
        self.http_status = Some(status);
        self
    }
}

/// Secondary events of a cycle that the journal reports with their own OUTCOME.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The on-disk credential changed under us and we kept it instead of ours.
    Adopted,
    /// A seed was installed as auth.json.
    Seeded,
    /// An auth.json handed to the daemon (Store) was installed.
    Stored,
    /// A new login (`codex-authctl login`, the daemon's Login) was installed.
    LoggedIn,
}

/// The full result of one account's cycle: what the worker hands back to its parent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub account: String,
    pub outcome: Outcome,
    pub failure: Option<Failure>,
    pub reason: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_refresh: Option<DateTime<Utc>>,
    pub token_fp: Option<String>,
    /// sha256 of auth.json as it is on disk after the cycle (change detection).
    pub auth_sha256: Option<String>,
    /// sha256 of the seed installed during this cycle, if any.
    pub seed_applied: Option<String>,
    /// The ChatGPT account id of the credential on disk (not a secret; Store checks it).
    #[serde(default)]
    pub account_id: Option<String>,
    pub events: Vec<Event>,
    /// Fleet mode: the KV version of the rotating key this host's credential matches.
    #[serde(default)]
    pub store_version: Option<u64>,
    /// Fleet mode: the host holding the refresher lease, when known.
    #[serde(default)]
    pub lease_holder: Option<String>,
    /// Fleet mode only (`Job::return_auth`): the committed auth.json, base64, handed from
    /// the worker to its parent over the private stdout pipe. Never printed: `json_line`,
    /// `human_line`, logs and status.json leave it out, and `Debug` redacts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_b64: Option<AuthBytes>,
    /// Set by a worker that ran its cycle to the end: whether a new credential received
    /// from the token endpoint is still not in auth.json (the caller keeps its pending
    /// copy) or not (the caller may drop it). None — a report made up by the caller
    /// (worker killed, never started): nothing is known, so nothing is dropped.
    #[serde(default)]
    pub pending_left: Option<bool>,
    /// The Codex CLI version an app-server refresh ran (`0.169.0`); None for oauth.
    #[serde(default)]
    pub codex_version: Option<String>,
}

/// A credential in transit from the worker (base64 of auth.json).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AuthBytes(pub String);

impl std::fmt::Debug for AuthBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthBytes(<redacted>)")
    }
}

impl Report {
    pub fn new(account: &str, outcome: Outcome, reason: impl Into<String>) -> Self {
        Report {
            account: account.to_string(),
            outcome,
            failure: None,
            reason: reason.into(),
            expires_at: None,
            last_refresh: None,
            token_fp: None,
            auth_sha256: None,
            seed_applied: None,
            account_id: None,
            events: Vec::new(),
            store_version: None,
            lease_holder: None,
            auth_b64: None,
            pending_left: None,
            codex_version: None,
        }
    }

    pub fn failed(account: &str, failure: Failure) -> Self {
        let mut r = Report::new(account, Outcome::Failed, failure.reason.clone());
        r.failure = Some(failure);
        r
    }

    pub fn class(&self) -> Option<FailureClass> {
        self.failure.as_ref().map(|f| f.class)
    }

    pub fn exit_code(&self) -> i32 {
        self.class().map_or(exit::OK, FailureClass::exit_code)
    }

    /// The contract's `--json` line.
    pub fn json_line(&self) -> String {
        let ts = |t: &Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true));
        serde_json::json!({
            "account": self.account,
            "outcome": self.outcome.as_str(),
            "class": self.class().map(FailureClass::as_str),
            "reason": self.reason,
            "expires_at": ts(&self.expires_at),
            "last_refresh": ts(&self.last_refresh),
            "token_fp": self.token_fp,
            "codex_version": self.codex_version,
        })
        .to_string()
    }

    /// One human line for a terminal.
    pub fn human_line(&self) -> String {
        let mut s = format!("{}: {}", self.account, self.outcome.as_str());
        if let Some(c) = self.class() {
            s.push_str(&format!(" ({})", c.as_str()));
        }
        if !self.reason.is_empty() {
            s.push_str(&format!(": {}", self.reason));
        }
        if let Some(t) = self.expires_at {
            s.push_str(&format!("; access token expires {}", t.to_rfc3339_opts(SecondsFormat::Secs, true)));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_exit_code_orders_by_severity() {
        assert_eq!(exit::worst(exit::OK, exit::TRANSIENT), exit::TRANSIENT);
        assert_eq!(exit::worst(exit::PERMANENT, exit::UNSAFE), exit::PERMANENT);
        assert_eq!(exit::worst(exit::UNSAFE, exit::TRANSIENT), exit::UNSAFE);
        assert_eq!(exit::worst(exit::CONFIG, exit::PERMANENT), exit::CONFIG);
        assert_eq!(exit::worst(exit::OK, exit::OK), exit::OK);
    }

    #[test]
    fn json_line_has_contract_keys_and_null_class_on_success() {
        let r = Report::new("alice", Outcome::Fresh, "");
        let v: serde_json::Value = serde_json::from_str(&r.json_line()).unwrap();
        for k in ["account", "outcome", "class", "reason", "expires_at", "last_refresh", "token_fp"] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert!(v["class"].is_null());
        let f = Report::failed("bob", Failure::permanent("x"));
        let v: serde_json::Value = serde_json::from_str(&f.json_line()).unwrap();
        assert_eq!(v["class"], "permanent");
        assert_eq!(f.exit_code(), exit::PERMANENT);
    }
}

/// The runner's state as status.json and D-Bus show it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerState {
    Ok,
    Fail,
    /// Never checked.
    #[default]
    Unknown,
}

impl RunnerState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerState::Ok => "ok",
            RunnerState::Fail => "fail",
            RunnerState::Unknown => "unknown",
        }
    }

    /// The state a `RunnerState` value names; anything else is `Unknown`.
    pub fn parse(s: &str) -> RunnerState {
        [RunnerState::Ok, RunnerState::Fail].into_iter().find(|r| r.as_str() == s).unwrap_or_default()
    }
}

/// The result of one preflight; never holds a token value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightReport {
    pub account: String,
    pub state: RunnerState,
    pub failure: Option<Failure>,
    pub reason: String,
    /// Codex refreshed inside the throwaway home and its credential is now the canonical one.
    pub adopted: bool,
    pub duration_ms: u64,
    /// The canonical credential after the preflight.
    pub expires_at: Option<DateTime<Utc>>,
    pub last_refresh: Option<DateTime<Utc>>,
    pub token_fp: Option<String>,
    pub auth_sha256: Option<String>,
    /// Like `Report::pending_left`: whether the credential Codex refreshed is kept but not
    /// yet in auth.json (None: unknown, the probe did not run to its end).
    #[serde(default)]
    pub pending_left: Option<bool>,
    /// The Codex CLI version that ran (`0.169.0`), when known.
    #[serde(default)]
    pub codex_version: Option<String>,
}

impl PreflightReport {
    pub fn new(account: &str, verdict: Result<String, Failure>) -> Self {
        let (state, reason, failure) = match verdict {
            Ok(reason) => (RunnerState::Ok, reason, None),
            Err(f) => (RunnerState::Fail, f.reason.clone(), Some(f)),
        };
        PreflightReport {
            account: account.to_string(),
            state,
            failure,
            reason,
            adopted: false,
            duration_ms: 0,
            expires_at: None,
            last_refresh: None,
            token_fp: None,
            auth_sha256: None,
            pending_left: None,
            codex_version: None,
        }
    }

    pub fn failed(account: &str, failure: Failure) -> Self {
        Self::new(account, Err(failure))
    }

    pub fn class(&self) -> Option<FailureClass> {
        self.failure.as_ref().map(|f| f.class)
    }

    /// 0 ok, 3 permanent, 4 transient, 5 unsafe — like refresh.
    pub fn exit_code(&self) -> i32 {
        self.class().map_or(exit::OK, FailureClass::exit_code)
    }

    /// The journal's OUTCOME: `preflight_ok` or `preflight_failed`.
    pub fn outcome(&self) -> &'static str {
        match self.state {
            RunnerState::Ok => "preflight_ok",
            _ => "preflight_failed",
        }
    }

    /// The `--json` line: the refresh line's keys plus `adopted` and `runner_state`.
    pub fn json_line(&self) -> String {
        let ts = |t: &Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true));
        serde_json::json!({
            "account": self.account,
            "outcome": self.outcome(),
            "class": self.class().map(FailureClass::as_str),
            "reason": self.reason,
            "adopted": self.adopted,
            "runner_state": self.state.as_str(),
            "duration_ms": self.duration_ms,
            "codex_version": self.codex_version,
            "expires_at": ts(&self.expires_at),
            "last_refresh": ts(&self.last_refresh),
            "token_fp": self.token_fp,
        })
        .to_string()
    }

    pub fn human_line(&self) -> String {
        let mut s = format!("{}: {}", self.account, self.outcome());
        if let Some(c) = self.class() {
            s.push_str(&format!(" ({})", c.as_str()));
        }
        s.push_str(&format!(": {} ({:.1}s)", self.reason, self.duration_ms as f64 / 1000.0));
        s
    }
}

/// The sidecar in CODEX_HOME the seed's watchdog wrote, so existing scrapers keep working.
pub const SIDECAR_FILE: &str = "auth_refresh_status.json";

/// The sidecar the seed watchdog wrote, so existing scrapers keep working.
pub fn sidecar_bytes(r: &Report, now: DateTime<Utc>) -> Vec<u8> {
    let iso = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let v = serde_json::json!({
        "account": r.account,
        "last_refresh": r.last_refresh.map(iso),
        "last_refresh_age_seconds": r.last_refresh.map(|t| (now - t).num_seconds().max(0)),
        "watchdog_last_outcome": r.outcome.as_str(),
        "watchdog_last_failure_class": r.class().map(FailureClass::as_str),
        "watchdog_last_run_iso": iso(now),
        "token_fp": r.token_fp,
        "expires_at": r.expires_at.map(iso),
    });
    serde_json::to_vec_pretty(&v).unwrap_or_default()
}
