//! The preflight (the seed's "auth runner"): prove an account's login works by running
//! the real `codex exec "Reply Banana if this works." …` on a throwaway copy of its
//! auth.json, as the account's user. ok = exit 0 and "banana" on stdout; otherwise a
//! classified failure (timeout, exit code, or Codex's refresh error). If Codex refreshed
//! inside the throwaway home it spent the canonical refresh token, so its new credential
//! is adopted into the real CODEX_HOME through the worker's commit — whatever the probe's
//! verdict. Holds our cycle lock throughout, so no refresh of ours races Codex's.

use crate::core::authfile::{AuthFile, sha256_hex};
use crate::core::classify;
use crate::core::clock::Clock;
use crate::core::contract::{AUTH_FILE, CYCLE_LOCK, EXEC_ARGS};
use crate::core::outcome::Failure;
use crate::core::outcome::PreflightReport;
use crate::core::pending::PendingCredential;
use crate::core::task::{PreflightJob, Supervisor};
use crate::sys::safedir::{DirError, SafeDir};
use crate::worker::codexrun::{self, AuthChange, CodexSetup, Ended, TempHome};
use crate::worker::cycle::{self, Committed, dir_failure, read_auth_settled, torn_failure};
use std::time::{Duration, Instant};

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
    report.codex_version = crate::worker::codexwatch::codex_bin_version(&job.codex_bin).map(|v| v.to_string());
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
        let Some((f, parsed)) = read_auth_settled(self.home, &path)? else {
            return Err(Failure::permanent(format!(
                "{} is missing; log in as the account's user (codex login --device-auth) or install a seed",
                path.display()
            )));
        };
        let auth = parsed.map_err(|e| match e.incomplete {
            true => torn_failure(&e),
            false => Failure::permanent(format!("invalid auth.json: {e}")),
        })?;
        Ok((f.bytes, auth))
    }

    /// codex exec in a throwaway home (removed before this returns).
    fn exec(&self, bytes: &[u8]) -> Result<Probed, Failure> {
        let j = self.job;
        let setup = CodexSetup::new(&j.codex_bin, &j.codex_base_url, &j.token_url, &j.temp_dir);
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
        match cycle::commit(self.home, Some(bytes), &merged_bytes, None) {
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
                    "Codex refreshed the token during the preflight but writing it to auth.json failed ({}); \
                        the new credential is kept in the agent's state and the next refresh writes it (the old token \
                        is not sent again)",
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
    use crate::core::outcome::FailureClass::*;
    use crate::core::outcome::RunnerState;

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
                      ERROR: Your access token could not be refreshed because your refresh token has expired. Please \
                      log out and sign in again.\n";
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
