//! The preflight (the seed's "auth runner"): prove an account's login works by running
//! the real `codex exec "Reply Banana if this works." …` on a throwaway copy of its
//! auth.json, as the account's user. ok = exit 0 and "banana" on stdout; otherwise a
//! classified failure (timeout, exit code, or Codex's refresh error). If Codex refreshed
//! inside the throwaway home it spent the canonical refresh token, so its new credential
//! is adopted into the real CODEX_HOME through the worker's commit — whatever the probe's
//! verdict. Holds our cycle lock throughout, so no refresh of ours races Codex's.

use crate::authfile::dir::{DirError, SafeDir};
use crate::authfile::{AuthFile, sha256_hex};
use crate::clock::Clock;
use crate::codexrun::{self, AuthChange, CodexSetup, Ended, TempHome};
use crate::outcome::{Failure, FailureClass, exit};
use crate::pending::PendingCredential;
use crate::refresh::classify;
use crate::worker::{
    self, AUTH_FILE, CODEX_LOCK_WAIT, COMMIT_LOCK_WAIT, CYCLE_LOCK, Committed, Supervisor, dir_failure,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The probe's prompt, as the auth runner sends it.
pub const PROMPT: &str = "Reply Banana if this works.";
/// Everything after the binary: no token, no path, nothing account-specific.
pub const EXEC_ARGS: [&str; 6] =
    ["exec", PROMPT, "--dangerously-bypass-approvals-and-sandbox", "-s", "danger-full-access", "--skip-git-repo-check"];

/// What one preflight needs; sent to the worker child like a refresh job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PreflightJob {
    pub account: String,
    pub codex_home: PathBuf,
    /// The uid that must own CODEX_HOME and auth.json.
    pub owner_uid: u32,
    /// `preflight_timeout`: past it codex exec's whole process group is killed.
    pub timeout: Duration,
    /// How long to wait for another cycle of ours (a refresh or a preflight).
    pub lock_wait: Duration,
    pub codex_bin: String,
    pub codex_base_url: String,
    pub token_url: String,
    /// Parent of the throwaway home.
    pub temp_dir: PathBuf,
}

impl PreflightJob {
    /// After this the parent kills the worker: every wait, bounded.
    pub fn deadline(&self) -> Duration {
        self.lock_wait + self.timeout + CODEX_LOCK_WAIT + COMMIT_LOCK_WAIT + Duration::from_secs(10)
    }

    pub fn codex_setup(&self) -> CodexSetup {
        CodexSetup::new(&self.codex_bin, &self.codex_base_url, &self.token_url, &self.temp_dir)
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
}

impl PreflightReport {
    fn new(account: &str, verdict: Result<String, Failure>) -> Self {
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

/// Judge a finished `codex exec` (pure): ok is exit 0 with "banana" on stdout; failures
/// carry Codex's refresh classification when its log shows one.
pub fn verdict(ended: Ended, stdout: &str, stderr: &str, timeout: Duration) -> Result<String, Failure> {
    let from_log = || classify::from_codex_log(stderr);
    match ended {
        Ended::Exited(0) if stdout.to_lowercase().contains("banana") => Ok("codex exec answered Banana".into()),
        Ended::Exited(0) => Err(from_log()
            .unwrap_or_else(|| Failure::transient("codex exec exited 0 without answering Banana; will retry"))),
        Ended::Exited(code) => Err(match from_log() {
            Some(mut f) => {
                f.reason = format!("codex exec exited with code {code}: {}", f.reason);
                f
            }
            None => Failure::transient(format!("codex exec exited with code {code}; will retry")),
        }),
        Ended::Signalled => Err(Failure::transient("codex exec was killed by a signal; will retry")),
        Ended::TimedOut => Err(Failure::transient(format!(
            "codex exec did not finish within {} and was killed; will retry",
            humantime::format_duration(timeout)
        ))),
    }
}

/// Run one preflight as the account's user. Never panics on bad input.
pub fn run(job: &PreflightJob, clock: &dyn Clock, sup: &dyn Supervisor) -> PreflightReport {
    let started = Instant::now();
    let mut report = match SafeDir::open(&job.codex_home, job.owner_uid) {
        Ok(home) => Probe { job, home: &home, clock, sup }.run(),
        Err(e) => PreflightReport::failed(&job.account, dir_failure(e)),
    };
    report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    report
}

struct Probe<'a> {
    job: &'a PreflightJob,
    home: &'a SafeDir,
    clock: &'a dyn Clock,
    sup: &'a dyn Supervisor,
}

/// A finished probe: the verdict and Codex's copy of auth.json afterwards.
struct Probed {
    verdict: Result<String, Failure>,
    copy: Option<Vec<u8>>,
}

/// What became of Codex's copy of auth.json.
enum Adoption {
    /// Codex did not rewrite it.
    NotNeeded,
    /// Codex refreshed; its credential is now the canonical one.
    Adopted(Vec<u8>, AuthFile),
    /// Codex refreshed, but the canonical file changed meanwhile; it was kept.
    KeptOnDisk(Vec<u8>),
    /// Codex's copy belongs to another account.
    Refused,
    /// Codex refreshed but saving failed: the canonical file holds a spent token.
    Failed(Failure),
}

impl Probe<'_> {
    fn failed(&self, f: Failure) -> PreflightReport {
        PreflightReport::failed(&self.job.account, f)
    }

    fn run(&self) -> PreflightReport {
        let _cycle = match self.home.lock(CYCLE_LOCK, Some(self.job.lock_wait)) {
            Ok(l) => l,
            Err(DirError::Busy { .. }) => {
                return self.failed(Failure::transient(
                    "another refresh or preflight of this account is still running (busy); will retry",
                ));
            }
            Err(e) => return self.failed(dir_failure(e)),
        };
        let (bytes, before) = match self.canonical() {
            Ok(x) => x,
            Err(f) => return self.failed(f),
        };
        let probed = self.exec(&bytes).unwrap_or_else(|f| Probed { verdict: Err(f), copy: None });
        let adoption = self.adopt(&bytes, &before, probed.copy.as_deref());
        self.report(probed.verdict, adoption, &bytes, &before)
    }

    /// The canonical auth.json, read with the same refusals as a refresh.
    fn canonical(&self) -> Result<(Vec<u8>, AuthFile), Failure> {
        let path = self.job.codex_home.join(AUTH_FILE);
        let Some(f) = self.home.read(AUTH_FILE).map_err(dir_failure)? else {
            return Err(Failure::permanent(format!(
                "{} is missing; log in as the account's user (codex login --device-auth) or install a seed",
                path.display()
            )));
        };
        let auth =
            AuthFile::parse(&f.bytes, &path).map_err(|e| Failure::permanent(format!("invalid auth.json: {e}")))?;
        Ok((f.bytes, auth))
    }

    /// codex exec in a throwaway home (removed before this returns).
    fn exec(&self, bytes: &[u8]) -> Result<Probed, Failure> {
        let setup = self.job.codex_setup();
        codexrun::remove_stale(&setup.temp_dir, self.job.owner_uid, self.clock.now());
        let bin = codexrun::resolve_bin(&setup.bin, std::env::var_os("PATH").as_deref())?;
        let temp = TempHome::create(&setup.temp_dir, self.job.owner_uid)?;
        temp.install(bytes, &codexrun::offline_config(&setup.base_url))?;
        let mut cmd = temp.command(&bin, &setup);
        cmd.args(EXEC_ARGS);
        let done = codexrun::run_to_end(cmd, self.job.timeout)?;
        Ok(Probed {
            verdict: verdict(done.ended, &done.stdout, &done.stderr, self.job.timeout),
            copy: temp.read_auth(),
        })
    }

    /// Adopt Codex's refreshed credential into the canonical file: its tokens and
    /// last_refresh merged into our copy (fields Codex drops survive), through the commit.
    fn adopt(&self, bytes: &[u8], before: &AuthFile, copy: Option<&[u8]>) -> Adoption {
        let new = match codexrun::compare(before, copy) {
            AuthChange::Unchanged | AuthChange::Unreadable => return Adoption::NotNeeded,
            AuthChange::OtherAccount => return Adoption::Refused,
            AuthChange::Refreshed(new) => new,
        };
        let mut merged = before.clone();
        merged.apply_refresh(&new.tokens(), new.last_refresh().unwrap_or_else(|| self.clock.now()));
        let merged_bytes = merged.to_bytes();
        // Codex spent the canonical token: keep its successor before trying the commit,
        // so a failed commit is finished by the next refresh instead of losing the login.
        let pending = PendingCredential::new(sha256_hex(bytes), &merged_bytes, self.clock.now(), merged.token_fp());
        if let Err(e) = self.sup.keep(&pending) {
            tracing::warn!(account = %self.job.account, "could not keep a copy of the credential Codex refreshed: {e}");
        }
        match worker::commit(self.home, Some(bytes), &merged_bytes, None) {
            Ok(Committed::Written) => Adoption::Adopted(merged_bytes, merged),
            Ok(Committed::Changed(on_disk)) => Adoption::KeptOnDisk(on_disk),
            Err(f) => Adoption::Failed(f),
        }
    }

    fn report(
        &self,
        verdict: Result<String, Failure>,
        adoption: Adoption,
        bytes: &[u8],
        before: &AuthFile,
    ) -> PreflightReport {
        let path = self.job.codex_home.join(AUTH_FILE);
        let pending_left = matches!(adoption, Adoption::Failed(_));
        let (verdict, note, adopted, now_on_disk) = match adoption {
            Adoption::NotNeeded => (verdict, None, false, Some((bytes.to_vec(), before.clone()))),
            Adoption::Adopted(b, a) => (verdict, Some("adopted the credential Codex refreshed"), true, Some((b, a))),
            Adoption::KeptOnDisk(b) => (
                verdict,
                Some("Codex refreshed, but auth.json changed meanwhile; kept the on-disk credential"),
                false,
                AuthFile::parse(&b, &path).ok().map(|a| (b, a)),
            ),
            Adoption::Refused => (
                verdict,
                Some("Codex's copy holds another account's credential; not adopted"),
                false,
                Some((bytes.to_vec(), before.clone())),
            ),
            // The canonical file now holds a spent token; its successor is kept (pending)
            // and written by the next refresh run.
            Adoption::Failed(f) => (
                Err(Failure::transient(format!(
                    "Codex refreshed the token during the preflight but writing it to auth.json failed ({}); the new credential is kept in the agent's state and the next refresh writes it (the old token is not sent again)",
                    f.reason
                ))),
                None,
                false,
                Some((bytes.to_vec(), before.clone())),
            ),
        };
        let verdict = match (verdict, note) {
            (Ok(r), Some(n)) => Ok(format!("{r}; {n}")),
            (Err(mut f), Some(n)) => {
                f.reason = format!("{}; {n}", f.reason);
                Err(f)
            }
            (v, None) => v,
        };
        let mut r = PreflightReport::new(&self.job.account, verdict);
        r.adopted = adopted;
        r.pending_left = Some(pending_left);
        if let Some((b, a)) = now_on_disk {
            r.expires_at = a.access_expires_at();
            r.last_refresh = a.last_refresh();
            r.token_fp = a.token_fp();
            r.auth_sha256 = Some(sha256_hex(&b));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FailureClass::*;

    const T: Duration = Duration::from_secs(120);

    #[test]
    fn ok_needs_exit_zero_and_banana() {
        assert!(verdict(Ended::Exited(0), "Banana\n", "", T).is_ok());
        assert!(verdict(Ended::Exited(0), "BANANA!", "", T).is_ok());
        let f = verdict(Ended::Exited(0), "Apple\n", "", T).unwrap_err();
        assert!(f.class == Transient && f.reason.contains("without answering Banana"), "{}", f.reason);
        let f = verdict(Ended::Exited(1), "Banana", "", T).unwrap_err();
        assert!(f.class == Transient && f.reason.contains("code 1"), "{}", f.reason);
    }

    #[test]
    fn failures_carry_codex_classification_never_its_text() {
        let stderr = "ERROR codex_login::auth::manager: Failed to refresh token status=401 Unauthorized\n\
                      ERROR: Your access token could not be refreshed because your refresh token has expired. Please log out and sign in again.\n";
        let f = verdict(Ended::Exited(1), "", stderr, T).unwrap_err();
        assert_eq!((f.class, f.http_status), (Permanent, Some(401)));
        assert!(f.reason.contains("code 1") && f.reason.contains("refresh_token_expired"), "{}", f.reason);
        assert!(!f.reason.contains("ERROR"), "{}", f.reason);
        let f = verdict(Ended::Exited(1), "", "ERROR: Reconnecting... 5/5\nERROR: stream disconnected", T).unwrap_err();
        assert_eq!(f.class, Transient);
        assert!(!f.reason.contains("stream"), "{}", f.reason);
        let f = verdict(Ended::TimedOut, "", "", Duration::from_secs(3)).unwrap_err();
        assert!(f.class == Transient && f.reason.contains("3s") && f.reason.contains("killed"), "{}", f.reason);
        assert_eq!(verdict(Ended::Signalled, "", "", T).unwrap_err().class, Transient);
    }

    #[test]
    fn report_lines_and_exit_codes() {
        let ok = PreflightReport::new("a", Ok("codex exec answered Banana".into()));
        assert_eq!((ok.outcome(), ok.exit_code()), ("preflight_ok", 0));
        let v: serde_json::Value = serde_json::from_str(&ok.json_line()).unwrap();
        assert_eq!(v["runner_state"], "ok");
        assert!(v["class"].is_null() && v["adopted"] == false);
        for (f, code) in [(Failure::permanent("p"), 3), (Failure::transient("t"), 4), (Failure::unsafe_file("u"), 5)] {
            let r = PreflightReport::failed("a", f);
            assert_eq!((r.outcome(), r.exit_code(), r.state), ("preflight_failed", code, RunnerState::Fail));
        }
        assert!(ok.human_line().starts_with("a: preflight_ok: codex exec answered Banana"));
    }
}
