//! What we remember and publish per account, without token values: `status.json` in
//! state_dir (root-owned, for the daemon, ctl and the seed/quarantine rules) and the
//! seed-compatible sidecar `auth_refresh_status.json` in CODEX_HOME (owned by the user).

use crate::core::outcome::{FailureClass, Outcome, Report};
use crate::core::outcome::{PreflightReport, RunnerState};
use crate::sys::safedir::{DirError, SafeDir};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const STATUS_FILE: &str = "status.json";
/// The hash of the last seed applied, on its own and durable: status.json is replaced
/// without fsync after a fresh check, and a power cut that emptied or aged it must not make
/// an applied seed, whose refresh token is spent, look new.
pub const SEED_APPLIED_FILE: &str = "seed-applied";
/// Persistent per-account status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccountStatus {
    pub account: String,
    pub outcome: Option<Outcome>,
    pub class: Option<FailureClass>,
    pub reason: String,
    pub http_status: Option<u16>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_refresh: Option<DateTime<Utc>>,
    pub token_fp: Option<String>,
    pub auth_sha256: Option<String>,
    /// Hash of the last seed installed (a seed is never applied twice).
    pub seed_sha256: Option<String>,
    /// ChatGPT account id of the credential on disk (not a secret).
    pub account_id: Option<String>,
    pub last_attempt: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    pub consecutive_failures: u32,
    /// The preflight (runner): last verdict, when it last passed, failed and ran, the
    /// kernel boot id at the last check, and the last reason.
    pub runner_state: RunnerState,
    pub runner_last_ok: Option<DateTime<Utc>>,
    pub runner_last_fail: Option<DateTime<Utc>>,
    pub runner_last_check: Option<DateTime<Utc>>,
    pub runner_boot_id: Option<String>,
    pub runner_last_reason: String,
    /// The Codex CLI version the last preflight ran (`0.169.0`), when known.
    #[serde(default)]
    pub codex_version: Option<String>,
    /// Fleet mode: the rotating key's version installed here, and the lease holder.
    pub store_version: Option<u64>,
    pub lease_holder: Option<String>,
    /// sha256 of the auth.json whose refresh token the last run found dead (a permanent
    /// failure with the file read): not sent again while auth.json is that file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_auth_sha256: Option<String>,
}

impl AccountStatus {
    /// Fold one cycle's report in (pure).
    pub fn update(&mut self, r: &Report, now: DateTime<Utc>) {
        self.account = r.account.clone();
        self.outcome = Some(r.outcome);
        self.class = r.class();
        self.reason = r.reason.clone();
        self.http_status = r.failure.as_ref().and_then(|f| f.http_status);
        self.last_attempt = Some(now);
        if r.failure.is_some() {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        } else {
            self.consecutive_failures = 0;
            self.last_success = Some(now);
        }
        // Keep what we knew about the credential when a failure told us nothing new.
        if r.expires_at.is_some() || r.failure.is_none() {
            self.expires_at = r.expires_at;
        }
        if r.last_refresh.is_some() || r.failure.is_none() {
            self.last_refresh = r.last_refresh;
        }
        if r.token_fp.is_some() || r.failure.is_none() {
            self.token_fp = r.token_fp.clone();
        }
        if r.auth_sha256.is_some() {
            self.auth_sha256 = r.auth_sha256.clone();
        }
        if r.account_id.is_some() {
            self.account_id = r.account_id.clone();
        }
        if r.store_version.is_some() {
            self.store_version = r.store_version;
        }
        if r.lease_holder.is_some() {
            self.lease_holder = r.lease_holder.clone();
        }
        if r.seed_applied.is_some() {
            self.seed_sha256 = r.seed_applied.clone();
        }
        if r.codex_version.is_some() {
            self.codex_version = r.codex_version.clone();
        }
        self.dead_auth_sha256 = r.auth_sha256.clone().filter(|_| r.class() == Some(FailureClass::Permanent));
    }
}

impl AccountStatus {
    /// Fold one preflight's report in (pure). A preflight that adopted Codex's refreshed
    /// credential changed the canonical file, so its facts replace ours.
    pub fn update_runner(&mut self, r: &PreflightReport, now: DateTime<Utc>, boot_id: Option<&str>) {
        self.account = r.account.clone();
        self.runner_state = r.state;
        self.runner_last_check = Some(now);
        match r.state {
            RunnerState::Ok => self.runner_last_ok = Some(now),
            _ => self.runner_last_fail = Some(now),
        }
        self.runner_boot_id = boot_id.map(str::to_string);
        self.runner_last_reason = r.reason.clone();
        if r.codex_version.is_some() {
            self.codex_version = r.codex_version.clone();
        }
        if r.adopted {
            self.expires_at = r.expires_at;
            self.last_refresh = r.last_refresh;
            self.token_fp = r.token_fp.clone();
            self.auth_sha256 = r.auth_sha256.clone();
        }
    }
}

/// The kernel's boot id (changes on every boot), recorded with each preflight.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

pub fn account_dir(state_dir: &Path, account: &str) -> PathBuf {
    state_dir.join("accounts").join(account)
}

/// The stored status, or an empty one when there is none (or it is unreadable).
pub fn load(state_dir: &Path, account: &str) -> AccountStatus {
    SafeDir::open(&account_dir(state_dir, account), nix::unistd::geteuid().as_raw())
        .ok()
        .and_then(|d| d.read_locked(STATUS_FILE).ok().flatten())
        .and_then(|f| serde_json::from_slice(&f.bytes).ok())
        .unwrap_or_else(|| AccountStatus { account: account.to_string(), ..Default::default() })
}

/// The hash kept by [`keep_seed_applied`], if any (a file that is not one is none).
pub fn seed_applied(state_dir: &Path, account: &str) -> Option<String> {
    let dir = SafeDir::open(&account_dir(state_dir, account), nix::unistd::geteuid().as_raw()).ok()?;
    let f = dir.read(SEED_APPLIED_FILE).ok().flatten()?;
    let sha = std::str::from_utf8(&f.bytes).ok()?.trim();
    (sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit())).then(|| sha.to_string())
}

/// Remember durably that the seed with hash `sha` was applied to `account` (once: the
/// caller marks it before the POST and records it again after the run).
pub fn keep_seed_applied(state_dir: &Path, account: &str, sha: &str) -> Result<(), DirError> {
    if seed_applied(state_dir, account).as_deref() == Some(sha) {
        return Ok(());
    }
    let dir = SafeDir::create_private(&account_dir(state_dir, account))?;
    dir.write_atomic(SEED_APPLIED_FILE, format!("{sha}\n").as_bytes())
}

/// The statuses this process last read or wrote, so a run reads its account's status.json
/// once and the textfile is rendered without reading every account's file again.
#[derive(Default)]
pub struct Cache(std::sync::Mutex<std::collections::BTreeMap<String, AccountStatus>>);

impl Cache {
    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, AccountStatus>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Read `account`'s status.json again: a run starts from the file, which another
    /// process (a one-shot command beside the daemon) may have written.
    pub fn reload(&self, state_dir: &Path, account: &str) -> AccountStatus {
        let st = load(state_dir, account);
        self.map().insert(account.to_string(), st.clone());
        st
    }

    /// The status this process holds for `account`, read once if it holds none.
    pub fn get(&self, state_dir: &Path, account: &str) -> AccountStatus {
        if let Some(st) = self.map().get(account) {
            return st.clone();
        }
        self.reload(state_dir, account)
    }

    /// Change `account`'s status with `f` and save it; returns the new status. `durable`:
    /// fsync it (an outcome worth keeping through a power cut); else only replace it (a
    /// fresh check: a power cut may bring back an older version, or on a file system that
    /// orders nothing leave it unreadable; the applied seed's hash is kept apart for that).
    pub fn update(
        &self,
        state_dir: &Path,
        account: &str,
        durable: bool,
        f: impl FnOnce(&mut AccountStatus),
    ) -> AccountStatus {
        let mut st = self.get(state_dir, account);
        f(&mut st);
        if let Err(e) = save(state_dir, &st, durable) {
            tracing::warn!(account = %account, "could not save status: {e}");
        }
        self.map().insert(account.to_string(), st.clone());
        st
    }
}

/// Write status.json (0600, atomic) under state_dir/accounts/<name>/ (dirs 0700).
pub fn save(state_dir: &Path, status: &AccountStatus, durable: bool) -> Result<(), DirError> {
    let dir = SafeDir::create_private(&account_dir(state_dir, &status.account))?;
    let bytes = serde_json::to_vec_pretty(status).unwrap_or_default();
    if durable { dir.write_swapped(STATUS_FILE, &bytes) } else { dir.replace_quietly(STATUS_FILE, &bytes) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::outcome::Failure;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    #[test]
    fn failures_count_and_success_resets() {
        let mut s = AccountStatus::default();
        let mut ok = Report::new("a", Outcome::Refreshed, "");
        ok.token_fp = Some("fp1".into());
        s.update(&ok, now());
        assert_eq!(s.consecutive_failures, 0);
        s.update(&Report::failed("a", Failure::transient("x").with_status(503)), now());
        s.update(&Report::failed("a", Failure::transient("x")), now());
        assert_eq!(s.consecutive_failures, 2);
        assert_eq!(s.token_fp.as_deref(), Some("fp1"), "a failure keeps what we knew");
        assert_eq!(s.class, Some(FailureClass::Transient));
        s.update(&ok, now());
        assert_eq!(s.consecutive_failures, 0);
        assert_eq!(s.last_success, Some(now()));
    }

    #[test]
    fn runner_fields_follow_preflights() {
        use crate::core::outcome::Failure;
        let mut s = AccountStatus { token_fp: Some("old".into()), ..Default::default() };
        assert_eq!(s.runner_state, RunnerState::Unknown);
        let mut ok = PreflightReport::failed("a", Failure::transient("x"));
        (ok.state, ok.failure, ok.reason) = (RunnerState::Ok, None, "codex exec answered Banana".into());
        ok.token_fp = Some("new".into());
        s.update_runner(&ok, now(), Some("boot-1"));
        assert_eq!((s.runner_state, s.runner_last_ok, s.runner_last_fail), (RunnerState::Ok, Some(now()), None));
        assert_eq!(s.runner_boot_id.as_deref(), Some("boot-1"));
        assert_eq!(s.token_fp.as_deref(), Some("old"), "nothing adopted: credential facts kept");
        ok.adopted = true;
        s.update_runner(&ok, now(), None);
        assert_eq!(s.token_fp.as_deref(), Some("new"));
        let later = now() + chrono::Duration::seconds(60);
        s.update_runner(&PreflightReport::failed("a", Failure::permanent("gone")), later, Some("boot-2"));
        assert_eq!(
            (s.runner_state, s.runner_last_fail, s.runner_last_check),
            (RunnerState::Fail, Some(later), Some(later))
        );
        assert_eq!((s.runner_last_ok, s.runner_last_reason.as_str()), (Some(now()), "gone"));
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["runner_state"], "fail");
        // Old status files without runner fields still load.
        let old: AccountStatus = serde_json::from_str(r#"{"account":"a","consecutive_failures":2}"#).unwrap();
        assert_eq!(old.runner_state, RunnerState::Unknown);
    }

    #[test]
    fn save_and_load_round_trip_with_private_modes() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let mut s = AccountStatus { account: "a".into(), ..Default::default() };
        s.seed_sha256 = Some("h".into());
        save(t.path(), &s, true).unwrap();
        assert_eq!(load(t.path(), "a"), s);
        let f = account_dir(t.path(), "a").join(STATUS_FILE);
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(account_dir(t.path(), "a")).unwrap().mode() & 0o777, 0o700);
        assert_eq!(load(t.path(), "other").account, "other");
    }
}
