//! One account's cycle, run as the account's own Unix user (never root in a user's
//! CODEX_HOME): take our cycle lock → read auth.json safely → seed → decide → refresh →
//! commit under Codex's lock protocol → sidecar. Every failure leaves auth.json
//! byte-identical; the report says what happened without any token value.

use crate::core::authfile::{AuthFile, InvalidAuth, NewTokens, sha256_hex};
use crate::core::clock::Clock;
use crate::core::contract::{AUTH_FILE, CODEX_COMMIT_LOCK, CODEX_LOCK, CODEX_LOCK_WAIT, COMMIT_LOCK_WAIT, CYCLE_LOCK};
use crate::core::outcome::{AuthBytes, Event, Failure, Outcome, Report, SIDECAR_FILE, sidecar_bytes};
use crate::core::pending::PendingCredential;
use crate::core::policy::{self, Decision, RefreshReason};
use crate::core::seed::{self, SeedInput};
use crate::core::task::{Install, Job, RefreshMethod, Supervisor};
use crate::sys::safedir::{DirError, FileRead, Reserved, SafeDir};
use crate::worker::codexrun::CodexSetup;
use crate::worker::codexwatch;
use crate::worker::{appserver, oauth};
use nix::errno::Errno;
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Room reserved for the new auth.json before a POST: twice today's size and some, so a
/// longer token still fits.
fn commit_room(len: usize) -> u64 {
    (len as u64 * 2 + 4096).min(crate::core::authfile::MAX_AUTH_BYTES)
}

/// How often, and how far apart, an empty or cut-off auth.json is read again before it
/// is believed: Codex 0.130 truncates and rewrites it in place, which takes milliseconds.
const TORN_READS: u32 = 10;
const TORN_PAUSE: Duration = Duration::from_millis(50);

/// auth.json and its parse; an incomplete one is read again for up to ≈0.5 s.
pub(crate) fn read_auth_settled(home: &SafeDir, path: &Path) -> Result<Option<(FileRead, Parsed)>, Failure> {
    for _ in 1..TORN_READS {
        let Some(f) = home.read(AUTH_FILE).map_err(dir_failure)? else { return Ok(None) };
        match AuthFile::parse(&f.bytes, path) {
            Err(e) if e.incomplete => std::thread::sleep(TORN_PAUSE),
            parsed => return Ok(Some((f, parsed))),
        }
    }
    let read = home.read(AUTH_FILE).map_err(dir_failure)?;
    Ok(read.map(|f| {
        let parsed = AuthFile::parse(&f.bytes, path);
        (f, parsed)
    }))
}

/// auth.json as [`AuthFile::parse`] left it.
pub(crate) type Parsed = Result<AuthFile, InvalidAuth>;

/// An auth.json still empty or cut off after [`read_auth_settled`]: retried later, because
/// it may be a Codex writing it, never "log in again" from what may be one unlucky read.
pub(crate) fn torn_failure(e: &InvalidAuth) -> Failure {
    Failure::transient(format!(
        "{} {} on every read for {} ms: it may be Codex writing it (Codex 0.130 rewrites it in place); \
         if it stays so, log in again (codex login --device-auth); will retry",
        e.path.display(),
        if e.problem == crate::core::authfile::EMPTY {
            "is empty".to_string()
        } else {
            format!("ends mid-way ({})", e.problem)
        },
        (TORN_READS - 1) * TORN_PAUSE.as_millis() as u32
    ))
}

pub(crate) fn dir_failure(e: DirError) -> Failure {
    match e {
        DirError::Unsafe { .. } => Failure::unsafe_file(format!("refused: {e}")),
        DirError::Missing { path } => Failure::permanent(format!(
            "{} does not exist; log in as the account's user (codex login --device-auth) or fix codex_home{}",
            path.display(),
            // Outside /home the service's sandbox opens the home only if it existed at start.
            if crate::core::sandbox::access(&path) == crate::core::sandbox::Access::Home {
                ""
            } else {
                "; if it does exist, the service started before it did: run `sudo codex-authctl reload`"
            }
        )),
        DirError::Busy { .. } => Failure::transient(format!("{e}; will retry")),
        // Retrying cannot help until someone changes the file system: say what to change.
        DirError::Io { ref path, ref source } => match source.raw_os_error().map(Errno::from_raw) {
            Some(Errno::EACCES | Errno::EPERM) => Failure::permanent(format!(
                "{e}: the account's user cannot use {0}; fix: as its owner, chmod u+rwx {0} (the user must also \
                 be able to enter every directory above it)",
                path.display()
            )),
            Some(Errno::EROFS) => Failure::permanent(format!(
                "{e}: the codex_home is read-only here; under the packaged service a codex_home outside /home is \
                 opened by its generator: run `sudo codex-authctl reload` (or remount the file system read-write)"
            )),
            _ => Failure::transient(format!("{e}; will retry")),
        },
    }
}

/// Run one cycle and write the sidecar. Never panics on bad input.
pub fn run(job: &Job, clock: &dyn Clock, sup: &dyn Supervisor) -> Report {
    let home = match SafeDir::open(&job.codex_home, job.owner_uid) {
        Ok(h) => h,
        // Fleet mode brings the credential from Vault, so a fresh machine or a pod's
        // emptyDir may lack CODEX_HOME: make it (0700, as the user; its parent must exist).
        Err(DirError::Missing { .. }) if job.store.as_ref().is_some_and(Install::is_fleet) && !job.mode.dry_run() => {
            use std::os::unix::fs::DirBuilderExt;
            // A failure shows in the open below (parent missing, raced, not ours).
            if std::fs::DirBuilder::new().mode(0o700).create(&job.codex_home).is_ok() {
                tracing::info!(account = %job.account, "created codex_home {}", job.codex_home.display());
            }
            match SafeDir::open(&job.codex_home, job.owner_uid) {
                Ok(h) => h,
                Err(e) => return Report::failed(&job.account, dir_failure(e)),
            }
        }
        Err(e) => return Report::failed(&job.account, dir_failure(e)),
    };
    let cycle = Cycle { job, home: &home, clock, sup, pending_open: Cell::new(job.pending.is_some()) };
    let mut report = cycle.run();
    report.pending_left = Some(cycle.pending_open.get());
    if job.refresh_method == RefreshMethod::AppServer {
        report.codex_version = codexwatch::codex_bin_version(&job.codex_bin).map(|v| v.to_string());
    }
    if !job.mode.dry_run() && report.class() != Some(crate::core::outcome::FailureClass::Unsafe) {
        if let Err(e) = home.replace_quietly(SIDECAR_FILE, &sidecar_bytes(&report, clock.now())) {
            tracing::warn!(account = %job.account, "could not write the status sidecar: {e}");
        }
    }
    report
}

struct Cycle<'a> {
    job: &'a Job,
    home: &'a SafeDir,
    clock: &'a dyn Clock,
    sup: &'a dyn Supervisor,
    /// A new credential exists that auth.json does not hold yet (the job's pending one,
    /// or ours after a failed commit).
    pending_open: Cell<bool>,
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
                    "Codex keeps this login in the {store} store (cli_auth_credentials_store), not in \
                        auth.json; set it to \"file\" to have it refreshed"
                ),
            );
        }
        // Read before waiting: if another cycle of ours changes the file while we wait,
        // its result is ours too.
        let before = self.home.read(AUTH_FILE).ok().flatten().map(|f| f.bytes);
        let lock = match self.home.lock(CYCLE_LOCK, Some(self.job.lock_wait())) {
            Ok(l) => l,
            Err(DirError::Busy { .. }) => {
                return self
                    .failed(Failure::transient("another refresh of this account is still running (busy); will retry"));
            }
            Err(e) => return self.failed(dir_failure(e)),
        };
        crate::sys::fault::point(crate::sys::fault::Step::AfterLock);
        self.home.remove_stale_temps(AUTH_FILE);
        let mut report = self.run_locked(before, lock.waited);
        if self.job.mode.hands_back() && report.failure.is_none() {
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

    fn run_locked(&self, before: Option<Vec<u8>>, waited: bool) -> Report {
        if let Some(p) = self.job.pending.as_ref().filter(|_| !self.job.mode.dry_run()) {
            if let Some(done) = self.finish_pending(p) {
                return done;
            }
        }
        let (snapshot, seeded) = match self.current_credential() {
            Ok(x) => x,
            Err(f) => return self.failed(f),
        };
        crate::sys::fault::point(crate::sys::fault::Step::AfterRead);
        if waited && !seeded && before.as_deref() != Some(&snapshot.bytes[..]) {
            let mut r = Report::new(
                self.account(),
                Outcome::Fresh,
                "another refresh of this account finished while we waited; using its result",
            );
            r.events.push(Event::Adopted);
            return self.describe(r, &snapshot.bytes, &snapshot.auth);
        }
        let mut report = self.decide_and_refresh(snapshot);
        if let Some(Install::Operator(store)) = &self.job.store {
            report.events.insert(0, if store.login { Event::LoggedIn } else { Event::Stored });
        }
        if seeded {
            report.events.insert(0, Event::Seeded);
            report.seed_applied = self.job.seed.as_ref().map(|s| s.sha256.clone());
        }
        report
    }

    /// Write a credential an earlier run received but could not save, before anything
    /// else. Some(report) ends the cycle (written now or found written, or still pending);
    /// None: a newer login replaced it and the cycle goes on with that.
    fn finish_pending(&self, p: &PendingCredential) -> Option<Report> {
        let new = p.bytes();
        let since = p.received_at.to_rfc3339();
        let still_pending = |f: Failure| {
            let mut f = f;
            f.reason = format!(
                "a new credential received at {since} is not yet written to {}: {}; it is kept in the agent's \
                    state and will be written by the next run (the old refresh token is not sent again)",
                self.auth_path().display(),
                f.reason
            );
            Some(self.failed(f))
        };
        let current = match self.home.read(AUTH_FILE) {
            Ok(c) => c,
            Err(e) => return still_pending(dir_failure(e)),
        };
        // The credential it replaces: auth.json as it was, or (fleet) Vault's copy of it.
        let base_is = |b: &[u8]| sha256_hex(b) == p.base_sha256;
        let replaces = match (&self.job.store, &current) {
            (Some(s), _) => base_is(&s.input().bytes()),
            (None, Some(f)) => f.bytes == new || base_is(&f.bytes),
            (None, None) => true,
        };
        if !replaces {
            tracing::warn!(account = %self.account(), "a new login replaced the credential kept since {since} \
                (never written); dropped it");
            self.pending_open.set(false);
            return None;
        }
        let auth = match AuthFile::parse(&new, &self.auth_path()) {
            Ok(a) => a,
            Err(e) => return still_pending(Failure::permanent(format!("the kept credential does not parse: {e}"))),
        };
        // Written already: the run that wrote it was killed before dropping the copy, or a
        // power cut brought back a removal that was not fsynced (see `pending::clear`).
        let written = current.as_ref().is_some_and(|f| f.bytes == new);
        if !written {
            match commit(self.home, current.as_ref().map(|f| f.bytes.as_slice()), &new, None) {
                Ok(Committed::Written) => {}
                Ok(Committed::Changed(_)) => return still_pending(Failure::transient("auth.json changed meanwhile")),
                Err(f) => return still_pending(f),
            }
        }
        self.pending_open.set(false);
        let (outcome, reason) = if written {
            (
                Outcome::Fresh,
                format!("auth.json already holds the credential received at {since}; dropped the agent's copy of it"),
            )
        } else {
            (
                Outcome::Refreshed,
                format!("wrote the credential received at {since}, which an earlier run could not save"),
            )
        };
        Some(self.describe(Report::new(self.account(), outcome, reason), &new, &auth))
    }

    /// `cli_auth_credentials_store` from CODEX_HOME/config.toml when it is not "file".
    fn credentials_store_elsewhere(&self) -> Option<String> {
        let f = self.home.read("config.toml").ok().flatten()?;
        let v: toml::Value = toml::from_str(std::str::from_utf8(&f.bytes).ok()?).ok()?;
        match v.get("cli_auth_credentials_store")?.as_str()? {
            s @ ("keyring" | "ephemeral") => Some(s.to_string()),
            // auto uses the keyring when there is one and the file otherwise: a file present
            // is the login (ours to refresh); none means the keyring holds it.
            "auto" if !matches!(self.home.read(AUTH_FILE), Ok(Some(_))) => Some("keyring (auto)".to_string()),
            _ => None,
        }
    }

    /// The usable credential, installing the seed when the seed rules say so.
    fn current_credential(&self) -> Result<(Snapshot, bool), Failure> {
        if let Some(stored) = &self.job.store {
            let read = self.home.read(AUTH_FILE).map_err(dir_failure)?;
            let only_if_changed = stored.is_fleet();
            return self.install(stored.input(), read.as_ref(), "stored", only_if_changed).map(|s| (s, false));
        }
        let (read, parsed) = match read_auth_settled(self.home, &self.auth_path())? {
            Some((f, p)) => (Some(f), Some(p)),
            None => (None, None),
        };
        // Before the seed plan: a seed must never be installed over Codex's half-written file.
        if let Some(Err(e)) = &parsed
            && e.incomplete
        {
            return Err(torn_failure(e));
        }
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
                self.install(seed, read.as_ref(), "seeded", false).map(|s| (s, true))
            }
            seed::Plan::NoCredential => Err(match parsed {
                Some(Err(invalid)) => Failure::permanent(format!("invalid auth.json: {invalid}")),
                _ if self.job.seed.is_some() => Failure::permanent(format!(
                    "{} is missing and the seed was already applied (its refresh token is spent); log in again \
                        (codex login --device-auth) or install a new seed",
                    self.auth_path().display()
                )),
                _ => Failure::permanent(format!(
                    "{} is missing; log in as the account's user (codex login --device-auth) or install a seed",
                    self.auth_path().display()
                )),
            }),
        }
    }

    /// Install `input` (a seed or a stored auth.json) as auth.json through the commit;
    /// `only_if_changed`: not rewritten when auth.json already holds it.
    fn install(
        &self,
        input: &SeedInput,
        current: Option<&FileRead>,
        what: &'static str,
        only_if_changed: bool,
    ) -> Result<Snapshot, Failure> {
        let bytes = input.bytes();
        let auth = AuthFile::parse(&bytes, std::path::Path::new(what))
            .map_err(|e| Failure::permanent(format!("the {what} credential is not a valid auth.json: {e}")))?;
        if self.job.mode.dry_run() || (only_if_changed && current.is_some_and(|f| f.bytes == bytes)) {
            return Ok(Snapshot { bytes, auth });
        }
        match commit(self.home, current.map(|f| f.bytes.as_slice()), &bytes, None) {
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
        let reason = match policy::decide(&snap.auth.facts(), &self.job.thresholds, now, self.job.mode.force()) {
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
        if self.job.mode.follows() {
            let r = Report::new(
                self.account(),
                Outcome::Fresh,
                format!("due ({reason}), but this host follows the fleet: the refresher refreshes it"),
            );
            return self.describe(r, &snap.bytes, &snap.auth);
        }
        if self.job.mode.dry_run() {
            let r = Report::new(self.account(), Outcome::WouldRefresh, format!("dry run: would refresh: {reason}"));
            return self.describe(r, &snap.bytes, &snap.auth);
        }
        let unsent = |f: Failure| self.describe(self.failed(f), &snap.bytes, &snap.auth);
        if !self.job.mode.force() && self.job.quarantined.as_deref() == Some(sha256_hex(&snap.bytes).as_str()) {
            return unsent(Failure::permanent(
                "the last refresh of this auth.json failed permanently, so its refresh token is not sent again; \
                    log in again (codex login --device-auth), or --force to try anyway",
            ));
        }
        let ctx = codexwatch::Ctx {
            account: self.account(),
            codex_home: &self.job.codex_home,
            home: self.home,
            request_timeout: self.job.request_timeout,
            clock: self.clock,
        };
        // A running Codex about to refresh this credential itself goes first.
        let mut watch = match codexwatch::before_post(ctx, &snap.bytes, &snap.auth) {
            codexwatch::Before::Done(r) => return r,
            codexwatch::Before::Post(w) => w,
        };
        let room = match self.ready_to_spend(&snap) {
            Ok(Prepared::Room(r)) => r,
            Ok(Prepared::Changed(on_disk)) => {
                return self.kept_theirs(on_disk, "while we waited for Codex's lock, before any token request");
            }
            Err(f) => return unsent(f),
        };
        let tokens = match watch.post(|| self.refresh_tokens(&snap, &reason)) {
            Ok(t) => t,
            Err(f) => return unsent(f),
        };
        let report = self.save(snap, &tokens, reason.clone(), room);
        let again = reason.clone();
        // The verification's second refresh takes the same checks and commit as the first.
        let second_room = std::cell::RefCell::new(None);
        watch.verify(
            report,
            |bytes, auth| {
                let snap = Snapshot { bytes: bytes.to_vec(), auth: auth.clone() };
                match self.ready_to_spend(&snap)? {
                    Prepared::Room(r) => *second_room.borrow_mut() = Some(r),
                    Prepared::Changed(_) => return Err(Failure::transient("auth.json changed before the check")),
                }
                self.refresh_tokens(&snap, &again)
            },
            |bytes, auth, tokens| match second_room.borrow_mut().take() {
                Some(room) => self.save(Snapshot { bytes, auth }, tokens, reason, room),
                None => self.failed(Failure::transient("no room reserved for the verified credential")),
            },
        )
    }

    /// Every check before a token is spent: the commit's own ([`Self::prepare_commit`]),
    /// then the caller's (`Supervisor::may_spend`: room for the pending copy, fleet).
    fn ready_to_spend(&self, snap: &Snapshot) -> Result<Prepared, Failure> {
        let prepared = self.prepare_commit(snap)?;
        if matches!(prepared, Prepared::Room(_)) {
            self.sup.may_spend(snap.bytes.len() as u64)?;
        }
        Ok(prepared)
    }

    /// Everything the commit will need, checked before the token is spent: both of
    /// Codex's lock files are lock files we can take (auth.lock within its wait), and the
    /// new auth.json has room (its temp file is allocated now and written after the
    /// POST). Nothing stays locked across the POST, so Codex is never blocked by it.
    /// Waiting for auth.lock may outlast a commit of Codex's: auth.json is read again
    /// after it, and a change means Codex already spent the token we hold.
    fn prepare_commit(&self, snap: &Snapshot) -> Result<Prepared, Failure> {
        let unsent = |e: DirError| {
            let mut f = dir_failure(e);
            f.reason = format!("{}; no token request was sent (the refresh token is unspent)", f.reason);
            f
        };
        for (name, wait) in [(CODEX_LOCK, CODEX_LOCK_WAIT), (CODEX_COMMIT_LOCK, COMMIT_LOCK_WAIT)] {
            drop(self.home.lock(name, Some(wait)).map_err(unsent)?);
        }
        let room = self.home.reserve(AUTH_FILE, commit_room(snap.bytes.len())).map_err(unsent)?;
        match self.home.read(AUTH_FILE).map_err(unsent)? {
            Some(f) if f.bytes == snap.bytes => Ok(Prepared::Room(room)),
            other => Ok(Prepared::Changed(other.map(|f| f.bytes).unwrap_or_default())),
        }
    }

    /// Someone else (Codex, another writer) replaced auth.json since we read it: theirs
    /// stays, ours (if any) is discarded, as Codex's own commit does.
    fn kept_theirs(&self, on_disk: Vec<u8>, when: &str) -> Report {
        let mut r = Report::new(
            self.account(),
            Outcome::Fresh,
            format!(
                "auth.json changed during the refresh (Codex or another writer) {when}; kept the on-disk credential"
            ),
        );
        r.events.push(Event::Adopted);
        match AuthFile::parse(&on_disk, &self.auth_path()) {
            Ok(a) => self.describe(r, &on_disk, &a),
            Err(_) => r,
        }
    }

    /// The refresh step by `refresh_method`: our own OAuth request, or Codex's app-server
    /// refreshing a throwaway copy. Either way the new tokens then take the same commit.
    fn refresh_tokens(&self, snap: &Snapshot, reason: &RefreshReason) -> Result<NewTokens, Failure> {
        match self.job.refresh_method {
            RefreshMethod::Oauth => {
                let Some(refresh_token) = snap.auth.refresh_token() else {
                    unreachable!("decide() refreshes only with a refresh token")
                };
                let mut shape =
                    oauth::RequestShape::for_codex(codexwatch::codex_bin_version(&self.job.codex_bin), reason);
                if let Some(id) = &self.job.login_client_id {
                    shape.client_id = id.clone();
                }
                oauth::refresh(&self.job.token_url, refresh_token, self.job.request_timeout, &shape)
            }
            RefreshMethod::AppServer => appserver::refresh(
                &CodexSetup::new(
                    &self.job.codex_bin,
                    &self.job.codex_base_url,
                    &self.job.token_url,
                    &self.job.temp_dir,
                ),
                self.job.owner_uid,
                (&snap.bytes, &snap.auth),
                self.job.request_timeout,
                self.clock.now(),
            ),
        }
    }

    /// After the POST: keep the new credential, then commit it into `room`.
    fn save(&self, snap: Snapshot, tokens: &NewTokens, reason: policy::RefreshReason, room: Reserved) -> Report {
        let mut updated = snap.auth.clone();
        updated.apply_refresh(tokens, self.clock.now());
        let new_bytes = updated.to_bytes();
        let pending = PendingCredential::new(sha256_hex(&snap.bytes), &new_bytes, self.clock.now(), updated.token_fp());
        let kept = self.sup.keep(&pending);
        crate::sys::fault::point(crate::sys::fault::Step::AfterPost);
        match commit(self.home, Some(&snap.bytes), &new_bytes, Some(room)) {
            Ok(Committed::Written) => {
                let r = Report::new(self.account(), Outcome::Refreshed, format!("refreshed ({reason})"));
                self.describe(r, &new_bytes, &updated)
            }
            Ok(Committed::Changed(on_disk)) => self.kept_theirs(on_disk, "while our request was in flight"),
            Err(mut f) => {
                // The POST rotated the token: the new credential is the only live one.
                self.pending_open.set(true);
                let kept = match kept {
                    Ok(path) => format!(
                        "it is kept in {} and the next run writes it once that is fixed; the old refresh token \
                            is not sent again, so do not log in again",
                        path.display()
                    ),
                    Err(e) => format!(
                        "keeping a copy in the agent's state failed too ({e}), so only this process holds it; \
                            if it ends before the fix, log in again (codex login --device-auth)"
                    ),
                };
                f.reason = format!(
                    "the refresh succeeded (the refresh token read from auth.json is now spent) but the new \
                        credential could not be written to {}: {}; {kept}",
                    self.auth_path().display(),
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
/// file); `room`, space reserved before a POST (else a temp is made now). Call with our
/// cycle lock held.
pub fn commit(
    home: &SafeDir,
    expected: Option<&[u8]>,
    new: &[u8],
    room: Option<Reserved>,
) -> Result<Committed, Failure> {
    let _codex = home.lock(CODEX_LOCK, Some(CODEX_LOCK_WAIT)).map_err(dir_failure)?;
    let on_disk = home.read(AUTH_FILE).map_err(dir_failure)?;
    if on_disk.as_ref().map(|f| f.bytes.as_slice()) != expected {
        return Ok(Committed::Changed(on_disk.map(|f| f.bytes).unwrap_or_default()));
    }
    let _commit = home.lock(CODEX_COMMIT_LOCK, Some(COMMIT_LOCK_WAIT)).map_err(|e| match e {
        DirError::Busy { .. } => Failure::transient("credential commit lock (auth.json.lock) timed out; will retry"),
        e => dir_failure(e),
    })?;
    match room {
        Some(r) => r.replace(new),
        None => home.write_atomic(AUTH_FILE, new),
    }
    .map_err(dir_failure)?;
    Ok(Committed::Written)
}

/// What the checks before a POST found.
enum Prepared {
    /// All clear: the new auth.json's temp file, allocated.
    Room(Reserved),
    /// auth.json changed meanwhile: its bytes now.
    Changed(Vec<u8>),
}

/// What [`commit`] did.
pub enum Committed {
    Written,
    /// Someone else changed auth.json since we read it: its bytes now.
    Changed(Vec<u8>),
}
