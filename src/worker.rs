//! One account's cycle, run as the account's own Unix user (never root in a user's
//! CODEX_HOME): take our cycle lock → read auth.json safely → seed → decide → refresh →
//! commit under Codex's lock protocol → sidecar. Every failure leaves auth.json
//! byte-identical; the report says what happened without any token value.

use crate::authfile::dir::{DirError, FileRead, SafeDir};
use crate::authfile::{AuthFile, NewTokens, sha256_hex};
use crate::clock::Clock;
use crate::codexrun::CodexSetup;
use crate::codexwatch;
use crate::config::RefreshMethod;
use crate::outcome::{AuthBytes, Event, Failure, Outcome, Report};
use crate::policy::{self, Decision, Thresholds};
use crate::refresh::{appserver, oauth};
use crate::seed::{self, SeedInput};
use crate::status;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

pub const AUTH_FILE: &str = "auth.json";
/// Our own lock: held for the whole cycle so one agent never refreshes an account twice.
pub const CYCLE_LOCK: &str = "codex-auth-agent.lock";
/// Codex's commit locks (codex-contract: auth.lock blocking, then auth.json.lock).
pub const CODEX_LOCK: &str = "auth.lock";
pub const CODEX_COMMIT_LOCK: &str = "auth.json.lock";
/// Codex holds auth.lock only around its own commit; a minute means something is stuck.
pub const CODEX_LOCK_WAIT: Duration = Duration::from_secs(60);
/// Codex retries auth.json.lock for about 5 s; we match it.
pub const COMMIT_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Everything one cycle needs; sent to the worker child as JSON on its stdin.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub account: String,
    pub codex_home: PathBuf,
    /// The uid that must own CODEX_HOME and auth.json.
    pub owner_uid: u32,
    pub thresholds: Thresholds,
    pub token_url: String,
    pub request_timeout: Duration,
    pub force: bool,
    pub dry_run: bool,
    pub seed: Option<SeedInput>,
    /// An auth.json to install first, whatever is on disk (the daemon's Store).
    #[serde(default)]
    pub store: Option<SeedInput>,
    /// How the refresh step gets new tokens: our OAuth request or Codex's app-server.
    pub refresh_method: RefreshMethod,
    /// `agent.codex_bin`, `codex_base_url` and the parent of throwaway Codex homes, for
    /// `refresh_method = "app-server"`.
    pub codex_bin: String,
    pub codex_base_url: String,
    pub temp_dir: PathBuf,
    /// A preflight holds our cycle lock this long at most; a refresh may wait for it.
    pub preflight_timeout: Duration,
    /// Fleet mode: `store` is the fleet's credential from Vault; write it only when
    /// auth.json differs, and do not report it as an operator's Store.
    #[serde(default)]
    pub materialize: bool,
    /// Fleet follower (or a refresher that lost the lease): never call the token endpoint.
    #[serde(default)]
    pub follow: bool,
    /// Fleet refresher: put the committed auth.json in the report (`Report::auth_b64`)
    /// so the parent can write it to Vault.
    #[serde(default)]
    pub return_auth: bool,
}

/// The longest the refresh step itself may take with `method`.
pub fn refresh_limit(method: RefreshMethod, request_timeout: Duration) -> Duration {
    match method {
        RefreshMethod::Oauth => request_timeout,
        RefreshMethod::AppServer => appserver::time_limit(request_timeout),
    }
}

/// How long one cycle of ours waits for another on the same account: a refresh (its
/// refresh step) or a preflight (which holds the same lock), plus the commit waits.
pub fn cycle_lock_wait(refresh_limit: Duration, preflight_timeout: Duration) -> Duration {
    refresh_limit.max(preflight_timeout) + CODEX_LOCK_WAIT + COMMIT_LOCK_WAIT + Duration::from_secs(5)
}

impl Job {
    /// The longest the refresh step itself may take.
    pub fn refresh_limit(&self) -> Duration {
        refresh_limit(self.refresh_method, self.request_timeout)
    }

    /// How long to wait for another cycle of ours on the same account.
    pub fn lock_wait(&self) -> Duration {
        cycle_lock_wait(self.refresh_limit(), self.preflight_timeout)
    }

    /// After this the parent kills the worker: every wait above, bounded.
    pub fn deadline(&self) -> Duration {
        self.lock_wait() + self.refresh_limit() + CODEX_LOCK_WAIT + COMMIT_LOCK_WAIT + Duration::from_secs(10)
    }

    /// What the app-server refresh runs.
    pub fn codex_setup(&self) -> CodexSetup {
        CodexSetup::new(&self.codex_bin, &self.codex_base_url, &self.token_url, &self.temp_dir)
    }
}

pub(crate) fn dir_failure(e: DirError) -> Failure {
    match e {
        DirError::Unsafe { .. } => Failure::unsafe_file(format!("refused: {e}")),
        DirError::Missing { path } => Failure::permanent(format!(
            "{} does not exist; log in as the account's user (codex login --device-auth) or fix codex_home",
            path.display()
        )),
        DirError::Busy { .. } => Failure::transient(format!("{e}; will retry")),
        DirError::Io { .. } => Failure::transient(format!("{e}; will retry")),
    }
}

/// Run one cycle and write the sidecar. Never panics on bad input.
pub fn run(job: &Job, clock: &dyn Clock) -> Report {
    let home = match SafeDir::open(&job.codex_home, job.owner_uid) {
        Ok(h) => h,
        Err(e) => return Report::failed(&job.account, dir_failure(e)),
    };
    let report = Cycle { job, home: &home, clock }.run();
    if !job.dry_run && report.class() != Some(crate::outcome::FailureClass::Unsafe) {
        if let Err(e) = home.write_atomic(status::SIDECAR_FILE, &status::sidecar_bytes(&report, clock.now())) {
            tracing::warn!(account = %job.account, "could not write the status sidecar: {e}");
        }
    }
    report
}

struct Cycle<'a> {
    job: &'a Job,
    home: &'a SafeDir,
    clock: &'a dyn Clock,
}

/// The on-disk credential this cycle works from.
struct Snapshot {
    bytes: Vec<u8>,
    auth: AuthFile,
}

impl Cycle<'_> {
    fn account(&self) -> &str {
        &self.job.account
    }

    fn auth_path(&self) -> PathBuf {
        self.job.codex_home.join(AUTH_FILE)
    }

    fn failed(&self, f: Failure) -> Report {
        Report::failed(self.account(), f)
    }

    /// Fill the credential facts of a report from the file now on disk.
    fn describe(&self, mut r: Report, bytes: &[u8], auth: &AuthFile) -> Report {
        r.expires_at = auth.access_expires_at();
        r.last_refresh = auth.last_refresh();
        r.token_fp = auth.token_fp();
        r.auth_sha256 = Some(sha256_hex(bytes));
        r.account_id = auth.account_id();
        r
    }

    fn run(&self) -> Report {
        if let Some(store) = self.credentials_store_elsewhere() {
            return Report::new(
                self.account(),
                Outcome::Inert,
                format!(
                    "Codex keeps this login in the {store} store (cli_auth_credentials_store), not in auth.json; set it to \"file\" to have it refreshed"
                ),
            );
        }
        // Hash before waiting: if another cycle of ours changes the file while we wait,
        // its result is ours too.
        let before = self.home.read(AUTH_FILE).ok().flatten().map(|f| sha256_hex(&f.bytes));
        let lock = match self.home.lock(CYCLE_LOCK, Some(self.job.lock_wait())) {
            Ok(l) => l,
            Err(DirError::Busy { .. }) => {
                return self
                    .failed(Failure::transient("another refresh of this account is still running (busy); will retry"));
            }
            Err(e) => return self.failed(dir_failure(e)),
        };
        crate::fault::point(crate::fault::Step::AfterLock);
        self.home.remove_stale_temps(AUTH_FILE);
        let mut report = self.run_locked(before, lock.waited);
        if self.job.return_auth && report.failure.is_none() && !self.job.dry_run {
            // Read under the cycle lock: exactly what this cycle left on disk.
            if let Ok(Some(f)) = self.home.read(AUTH_FILE) {
                use base64::Engine as _;
                report.auth_sha256 = Some(sha256_hex(&f.bytes));
                report.auth_b64 = Some(AuthBytes(base64::engine::general_purpose::STANDARD.encode(&f.bytes)));
            }
        }
        drop(lock);
        report
    }

    fn run_locked(&self, before: Option<String>, waited: bool) -> Report {
        let (snapshot, seeded) = match self.current_credential() {
            Ok(x) => x,
            Err(f) => return self.failed(f),
        };
        crate::fault::point(crate::fault::Step::AfterRead);
        if waited && !seeded && before.as_deref() != Some(sha256_hex(&snapshot.bytes).as_str()) {
            let mut r = Report::new(
                self.account(),
                Outcome::Fresh,
                "another refresh of this account finished while we waited; using its result",
            );
            r.events.push(Event::Adopted);
            return self.describe(r, &snapshot.bytes, &snapshot.auth);
        }
        let mut report = self.decide_and_refresh(snapshot);
        if self.job.store.is_some() && !self.job.materialize {
            report.events.insert(0, Event::Stored);
        }
        if seeded {
            report.events.insert(0, Event::Seeded);
            report.seed_applied = self.job.seed.as_ref().map(|s| s.sha256.clone());
        }
        report
    }

    /// `cli_auth_credentials_store` from CODEX_HOME/config.toml when it is not "file".
    fn credentials_store_elsewhere(&self) -> Option<String> {
        let f = self.home.read("config.toml").ok().flatten()?;
        let v: toml::Value = toml::from_str(std::str::from_utf8(&f.bytes).ok()?).ok()?;
        match v.get("cli_auth_credentials_store")?.as_str()? {
            // auto falls back to the file when there is no keyring; we can only judge the file.
            s @ ("keyring" | "ephemeral") => Some(s.to_string()),
            _ => None,
        }
    }

    /// The usable credential, installing the seed when the seed rules say so.
    fn current_credential(&self) -> Result<(Snapshot, bool), Failure> {
        let read = self.home.read(AUTH_FILE).map_err(dir_failure)?;
        if let Some(stored) = &self.job.store {
            return self.install(stored, read.as_ref(), "stored").map(|s| (s, false));
        }
        let parsed = read.as_ref().map(|f| AuthFile::parse(&f.bytes, &self.auth_path()));
        let current = match &parsed {
            None => seed::Current::Missing,
            Some(Ok(_)) => seed::Current::Usable,
            Some(Err(_)) => seed::Current::Invalid,
        };
        match seed::plan(current, self.job.seed.as_ref()) {
            seed::Plan::Keep => {
                let (Some(f), Some(Ok(auth))) = (read, parsed) else { unreachable!("Keep implies a usable file") };
                Ok((Snapshot { bytes: f.bytes, auth }, false))
            }
            seed::Plan::Install => {
                let seed = self.job.seed.as_ref().expect("Install implies a seed");
                self.install(seed, read.as_ref(), "seeded").map(|s| (s, true))
            }
            seed::Plan::NoCredential => Err(match parsed {
                Some(Err(invalid)) => Failure::permanent(format!("invalid auth.json: {invalid}")),
                _ if self.job.seed.is_some() => Failure::permanent(format!(
                    "{} is missing and the seed was already applied (its refresh token is spent); log in again (codex login --device-auth) or install a new seed",
                    self.auth_path().display()
                )),
                _ => Failure::permanent(format!(
                    "{} is missing; log in as the account's user (codex login --device-auth) or install a seed",
                    self.auth_path().display()
                )),
            }),
        }
    }

    /// Install `input` (a seed or a stored auth.json) as auth.json through the commit.
    fn install(&self, input: &SeedInput, current: Option<&FileRead>, what: &'static str) -> Result<Snapshot, Failure> {
        let bytes = input.bytes();
        let auth = AuthFile::parse(&bytes, std::path::Path::new(what))
            .map_err(|e| Failure::permanent(format!("the {what} credential is not a valid auth.json: {e}")))?;
        if self.job.dry_run || (self.job.materialize && current.is_some_and(|f| f.bytes == bytes)) {
            return Ok(Snapshot { bytes, auth });
        }
        match commit(self.home, current.map(|f| f.bytes.as_slice()), &bytes) {
            Ok(Committed::Written) => {
                tracing::debug!(account = %self.account(), "{what}: installed as auth.json");
                Ok(Snapshot { bytes, auth })
            }
            Ok(Committed::Changed(_)) => {
                Err(Failure::transient(format!("auth.json changed while installing the {what} credential; will retry")))
            }
            Err(f) => Err(f),
        }
    }

    fn decide_and_refresh(&self, snap: Snapshot) -> Report {
        let now = self.clock.now();
        let reason = match policy::decide(&snap.auth.facts(), &self.job.thresholds, now, self.job.force) {
            Decision::Inert(why) => {
                return self.describe(Report::new(self.account(), Outcome::Inert, why), &snap.bytes, &snap.auth);
            }
            Decision::Fresh { due_at } => {
                let r =
                    Report::new(self.account(), Outcome::Fresh, format!("next refresh due {}", due_at.to_rfc3339()));
                return self.describe(r, &snap.bytes, &snap.auth);
            }
            Decision::Refresh(reason) => reason,
        };
        if self.job.follow {
            let r = Report::new(
                self.account(),
                Outcome::Fresh,
                format!("due ({reason}), but this host follows the fleet: the refresher refreshes it"),
            );
            return self.describe(r, &snap.bytes, &snap.auth);
        }
        if self.job.dry_run {
            let r = Report::new(self.account(), Outcome::WouldRefresh, format!("dry run: would refresh: {reason}"));
            return self.describe(r, &snap.bytes, &snap.auth);
        }
        let ctx = codexwatch::Ctx {
            account: self.account(),
            codex_home: &self.job.codex_home,
            home: self.home,
            request_timeout: self.job.request_timeout,
            clock: self.clock,
        };
        let mut watch = match codexwatch::before_post(ctx, &snap.bytes, &snap.auth) {
            codexwatch::Before::Done(r) => return r,
            codexwatch::Before::Post(w) => w,
        };
        let tokens = match watch.post(|| self.refresh_tokens(&snap)) {
            Ok(t) => {
                crate::fault::point(crate::fault::Step::AfterPost);
                t
            }
            Err(f) => {
                let r = self.failed(f);
                return self.describe(Report { outcome: Outcome::Failed, ..r }, &snap.bytes, &snap.auth);
            }
        };
        let report = self.save(snap, &tokens, reason.clone());
        watch.verify(
            report,
            |bytes, auth| self.refresh_tokens(&Snapshot { bytes: bytes.to_vec(), auth: auth.clone() }),
            |bytes, auth, tokens| self.save(Snapshot { bytes, auth }, tokens, reason),
        )
    }

    /// The refresh step by `refresh_method`: our own OAuth request, or Codex's app-server
    /// refreshing a throwaway copy. Either way the new tokens then take the same commit.
    fn refresh_tokens(&self, snap: &Snapshot) -> Result<NewTokens, Failure> {
        match self.job.refresh_method {
            RefreshMethod::Oauth => {
                let Some(refresh_token) = snap.auth.refresh_token() else {
                    unreachable!("decide() refreshes only with a refresh token")
                };
                oauth::refresh(&self.job.token_url, refresh_token, self.job.request_timeout)
            }
            RefreshMethod::AppServer => appserver::refresh(
                &self.job.codex_setup(),
                self.job.owner_uid,
                (&snap.bytes, &snap.auth),
                self.job.request_timeout,
                self.clock.now(),
            ),
        }
    }

    fn save(&self, snap: Snapshot, tokens: &NewTokens, reason: policy::RefreshReason) -> Report {
        let mut updated = snap.auth.clone();
        updated.apply_refresh(tokens, self.clock.now());
        let new_bytes = updated.to_bytes();
        match commit(self.home, Some(&snap.bytes), &new_bytes) {
            Ok(Committed::Written) => {
                let r = Report::new(self.account(), Outcome::Refreshed, format!("refreshed ({reason})"));
                self.describe(r, &new_bytes, &updated)
            }
            Ok(Committed::Changed(on_disk)) => {
                let mut r = Report::new(
                    self.account(),
                    Outcome::Fresh,
                    "auth.json changed during the refresh (Codex or another writer); kept the on-disk credential",
                );
                r.events.push(Event::Adopted);
                match AuthFile::parse(&on_disk, &self.auth_path()) {
                    Ok(a) => self.describe(r, &on_disk, &a),
                    Err(_) => r,
                }
            }
            Err(mut f) => {
                // The POST already rotated the token: say so, or fixing the file and
                // retrying would look like a fix and then fail as refresh_token_reused.
                f.reason = format!(
                    "the refresh succeeded but the new tokens could not be saved, so the refresh token read from auth.json is spent; once the cause below is fixed, log in again (codex login --device-auth) unless auth.json holds a newer login by then: {}",
                    f.reason
                );
                let r = self.failed(f);
                self.describe(r, &snap.bytes, &snap.auth)
            }
        }
    }
}

/// Codex's commit protocol, the one way anything of ours writes auth.json (refresh, seed,
/// store, preflight adoption): auth.lock → re-read (changed? keep theirs) →
/// auth.json.lock → atomic write. `expected` is the content we started from (None: no
/// file). Call with our cycle lock held.
pub fn commit(home: &SafeDir, expected: Option<&[u8]>, new: &[u8]) -> Result<Committed, Failure> {
    let _codex = home.lock(CODEX_LOCK, Some(CODEX_LOCK_WAIT)).map_err(dir_failure)?;
    let on_disk = home.read(AUTH_FILE).map_err(dir_failure)?;
    if on_disk.as_ref().map(|f| f.bytes.as_slice()) != expected {
        return Ok(Committed::Changed(on_disk.map(|f| f.bytes).unwrap_or_default()));
    }
    let _commit = home.lock(CODEX_COMMIT_LOCK, Some(COMMIT_LOCK_WAIT)).map_err(|e| match e {
        DirError::Busy { .. } => Failure::transient("credential commit lock (auth.json.lock) timed out; will retry"),
        e => dir_failure(e),
    })?;
    home.write_atomic(AUTH_FILE, new).map_err(dir_failure)?;
    Ok(Committed::Written)
}

/// What [`commit`] did.
pub enum Committed {
    Written,
    /// Someone else changed auth.json since we read it: its bytes now.
    Changed(Vec<u8>),
}
