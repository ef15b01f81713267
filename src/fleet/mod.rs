//! Fleet mode: many hosts share one Codex login through Vault/OpenBao KV v2 (seed document
//! 002). Per account a human-owned seed key and an automation-owned rotating key; exactly
//! one refresher (guarded by a CAS-written lease) refreshes and writes the rotating key
//! with check-and-set; everyone else follows, installing the rotating key's newest version.
//! Vault I/O happens here, in the caller (root); every file in a CODEX_HOME is still
//! written by the worker as the account's user (`Job::store` with `materialize`).

pub mod lease;
pub mod vault;

use crate::account::{self, RefreshOptions};
use crate::authfile::dir::SafeDir;
use crate::authfile::sha256_hex;
use crate::clock::Clock;
use crate::config::{AccountSettings, FleetRole, FleetSettings, Settings, VaultSettings};
use crate::outcome::{Event, Failure, Outcome, Report};
use crate::privsep::Identity;
use crate::seed::SeedInput;
use crate::status;
use crate::worker::Job;
use base64::Engine as _;
use lease::{LeaseDecision, LeaseRecord};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, PoisonError};
use vault::{Entry, Secret, Vault, VaultError};

pub const FLEET_FILE: &str = "fleet.json";

/// What this host remembers per fleet account (state_dir/accounts/<name>/fleet.json, no secrets).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FleetState {
    /// The rotating key's version last installed here (or written by us).
    pub version: Option<u64>,
    /// sha256 of that credential as installed.
    pub sha256: Option<String>,
    /// Refreshed or stored here, but the Vault write failed: upload it on the next run (a
    /// refresh only if the rotating key is still at `base_version`; a Store in any case).
    pub pending: Option<Pending>,
    pub lease_holder: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub base_version: u64,
    pub sha256: String,
    /// An operator's Store rather than our refresh: uploaded whatever version the rotating
    /// key has reached meanwhile (see `Run::store`). Absent in older files: a refresh.
    #[serde(default)]
    pub stored: bool,
}

impl FleetState {
    /// We wrote `version` of the rotating key, holding the credential with hash `sha256`.
    fn wrote(&mut self, version: u64, sha256: String) {
        self.version = Some(version);
        self.sha256 = Some(sha256);
        self.pending = None;
    }
}

pub fn load_state(settings: &Settings, account: &str) -> FleetState {
    std::fs::read(status::account_dir(&settings.agent.state_dir, account).join(FLEET_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_state(settings: &Settings, account: &str, st: &FleetState) {
    let r = SafeDir::create_private(&status::account_dir(&settings.agent.state_dir, account))
        .and_then(|d| d.write_atomic(FLEET_FILE, &serde_json::to_vec_pretty(st).unwrap_or_default()));
    if let Err(e) = r {
        tracing::warn!(account = %account, "could not save {FLEET_FILE}: {e}");
    }
}

/// One client per process and Vault config, so the daemon keeps its AppRole login.
fn client(settings: &VaultSettings) -> Result<Arc<Vault>, VaultError> {
    static CLIENT: Mutex<Option<(VaultSettings, Arc<Vault>)>> = Mutex::new(None);
    let mut c = CLIENT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((s, v)) = c.as_ref() {
        if s == settings {
            return Ok(v.clone());
        }
    }
    let v = Arc::new(Vault::new(settings)?);
    *c = Some((settings.clone(), v.clone()));
    Ok(v)
}

/// The auth.json a `return_auth` worker handed back (empty if none).
fn returned_auth(r: &Report) -> Vec<u8> {
    r.auth_b64.as_ref().and_then(|b| base64::engine::general_purpose::STANDARD.decode(&b.0).ok()).unwrap_or_default()
}

fn vault_failure(e: &VaultError) -> Failure {
    // Every Vault problem is retried with backoff: a fixed policy or a returning server
    // must heal the account without a new login (a permanent class would quarantine it).
    Failure::transient(format!("fleet: {e}"))
}

/// Whether `seed` is a login put in the seed key after `rotating` was written (by Vault's
/// own `created_time` of both versions).
fn newer_login(seed: &Entry, rotating: &Entry) -> bool {
    let newer = matches!((seed.created, rotating.created), (Some(s), Some(r)) if s > r);
    newer && seed.value != rotating.value
}

/// For the daemon's quarantine probe of a fleet account: whether Vault now holds a login
/// other than the one that failed (`failed_sha256`): the rotating key holds another
/// credential (a Store on the refresher, another host), or a newer seed waits to be
/// published. Without this a new login put in Vault would never lift the quarantine (the
/// probe only hashes local files). Reads only; false when Vault cannot be asked.
pub fn new_login_in_vault(
    settings: &Settings,
    fleet: &FleetSettings,
    failed_sha256: Option<&str>,
    clock: &dyn Clock,
) -> bool {
    let Some(v) = settings.vault.as_ref().and_then(|vs| client(vs).ok()) else { return false };
    let read = |key: &str| v.read(key, clock.now());
    let (Ok(rotating), Ok(seed)) = (read(&fleet.vault_rotating_key), read(&fleet.vault_seed_key)) else {
        return false;
    };
    let other = |e: &Entry| failed_sha256 != Some(sha256_hex(&e.value.0).as_str());
    match (rotating, seed) {
        (Some(r), seed) => other(&r) || seed.is_some_and(|s| newer_login(&s, &r)),
        (None, seed) => seed.is_some_and(|s| other(&s)),
    }
}

/// `report` turned into the transient failure `reason`: the local auth.json is fine, but
/// Vault does not have it yet (the daemon retries with backoff; the next run uploads it).
fn pending_failure(mut report: Report, reason: String) -> Report {
    let f = Failure::transient(reason);
    report.outcome = Outcome::Failed;
    report.reason = f.reason.clone();
    report.failure = Some(f);
    report
}

/// One fleet cycle for `acct` (role from its settings). Never returns token material.
pub fn run(
    settings: &Settings,
    acct: &AccountSettings,
    fleet: &FleetSettings,
    opts: RefreshOptions,
    clock: &dyn Clock,
) -> Report {
    with_run(settings, acct, fleet, opts, clock, |run, v, st| match v {
        Ok(v) => match fleet.fleet_role {
            FleetRole::Refresher => run.refresher(&v, st),
            FleetRole::Follower => run.follower(&v, st),
        },
        Err(e) => Report::failed(&acct.name, vault_failure(&e)),
    })
}

/// An operator's Store (`codex-authctl store`) on a fleet account: installed here, and on
/// a refresher written to the rotating key too (see `Run::store`).
pub fn store(
    settings: &Settings,
    acct: &AccountSettings,
    fleet: &FleetSettings,
    input: SeedInput,
    opts: RefreshOptions,
    clock: &dyn Clock,
) -> Report {
    with_run(settings, acct, fleet, opts, clock, |run, v, st| run.store(v, st, input))
}

/// Set up a run of `acct`, let `f` do it with the Vault client and fleet.json's state,
/// then save the state and say what Vault holds. Never returns token material.
fn with_run(
    settings: &Settings,
    acct: &AccountSettings,
    fleet: &FleetSettings,
    opts: RefreshOptions,
    clock: &dyn Clock,
    f: impl FnOnce(&Run, Result<Arc<Vault>, VaultError>, &mut FleetState) -> Report,
) -> Report {
    let Some(vs) = &settings.vault else {
        return Report::failed(&acct.name, Failure::permanent("fleet_role is set but [vault] is not configured"));
    };
    let id = match Identity::lookup(&acct.user) {
        Ok(id) => id,
        Err(e) => return Report::failed(&acct.name, Failure::permanent(e)),
    };
    let run = Run { settings, acct, fleet, opts, clock, id };
    let mut st = load_state(settings, &acct.name);
    let mut report = f(&run, client(vs), &mut st);
    save_state(settings, &acct.name, &st);
    report.auth_b64 = None;
    report.store_version = st.version;
    report.lease_holder = st.lease_holder.clone();
    report
}

struct Run<'a> {
    settings: &'a Settings,
    acct: &'a AccountSettings,
    fleet: &'a FleetSettings,
    opts: RefreshOptions,
    clock: &'a dyn Clock,
    id: Identity,
}

impl Run<'_> {
    fn name(&self) -> &str {
        &self.acct.name
    }

    /// A worker job for this account, adjusted by `f`.
    fn work(&self, f: impl FnOnce(&mut Job)) -> Report {
        let mut job = account::job_for(self.settings, self.acct, &self.id, self.opts);
        f(&mut job);
        account::run_job(self.settings, &self.id, &job, self.clock)
    }

    /// Install `entry` locally (only written when auth.json differs), never refreshing.
    fn materialize(&self, entry: &Entry) -> Report {
        self.work(|j| {
            j.store = Some(SeedInput::from_bytes(&entry.value.0));
            j.materialize = true;
            j.follow = true;
        })
    }

    /// The rotating key, else (followers, and refreshers before the first rotation) the seed.
    fn source(&self, v: &Vault, mirror: bool) -> Result<Option<Entry>, VaultError> {
        let now = self.clock.now();
        if let Some(e) = v.read(&self.fleet.vault_rotating_key, now)? {
            return Ok(Some(e));
        }
        let Some(seed) = v.read(&self.fleet.vault_seed_key, now)? else { return Ok(None) };
        if !mirror {
            return Ok(Some(seed));
        }
        // Mirror the seed once into the rotating key (cas=0: only if still absent), so
        // every later write can be a CAS on the rotating key's version.
        match v.write(&self.fleet.vault_rotating_key, &seed.value.0, 0, now) {
            Ok(version) => {
                tracing::info!(account = %self.name(), "fleet: mirrored the seed key into the rotating key (version {version})");
                let key = self.fleet.vault_rotating_key.clone();
                Ok(Some(Entry { key, value: seed.value, version, created: None }))
            }
            Err(VaultError::CasMismatch { .. }) => v.read(&self.fleet.vault_rotating_key, now),
            Err(e) => Err(e),
        }
    }

    fn nothing_in_vault(&self) -> Report {
        Report::failed(
            self.name(),
            Failure::transient(format!(
                "fleet: neither {} nor {} exists in Vault; store base64(auth.json) in field `value` of the seed key",
                self.fleet.vault_rotating_key, self.fleet.vault_seed_key
            )),
        )
    }

    /// Take or renew the lease; `Ok(None)` = we hold it, `Ok(Some(holder))` = follow.
    fn lease(&self, v: &Vault) -> Result<Option<String>, VaultError> {
        let key = lease::lease_key(self.name());
        let me = &self.settings.agent.host_id;
        for _ in 0..3 {
            let now = self.clock.now();
            let current = v.read(&key, now)?;
            let record = current.as_ref().and_then(|e| LeaseRecord::parse(&e.value.0));
            let cas = match lease::decide(current.as_ref().map(|e| (record.as_ref(), e.version)), me, now) {
                LeaseDecision::Follow { holder, .. } => return Ok(Some(holder)),
                LeaseDecision::Take { cas } | LeaseDecision::Renew { cas } => cas,
            };
            let mine = LeaseRecord::new(me, now, self.settings.agent.lease_ttl);
            match v.write(&key, &mine.to_bytes(), cas, now) {
                Ok(_) => return Ok(None),
                // Someone wrote the lease between our read and write: look again.
                Err(VaultError::CasMismatch { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(VaultError::CasMismatch { key })
    }

    fn refresher(&self, v: &Vault, st: &mut FleetState) -> Report {
        let entry = match self.source(v, true) {
            Ok(Some(e)) => e,
            Ok(None) => return self.nothing_in_vault(),
            Err(e) => return Report::failed(self.name(), vault_failure(&e)),
        };
        // Before a pending upload: a human's new seed makes a refresh of ours pending from
        // before it moot (Vault wins), while a pending Store still overrides it.
        let (entry, relogin) = match self.newer_seed(v, entry) {
            Ok(x) => x,
            Err(e) => return Report::failed(self.name(), vault_failure(&e)),
        };
        let (entry, uploaded) = match self.upload_pending(v, st, entry) {
            Ok(x) => x,
            Err(r) => return *r,
        };
        let mut r = self.rotate(v, st, entry);
        for note in [uploaded, relogin].into_iter().flatten() {
            r.reason = format!("{note}; {}", r.reason);
        }
        r
    }

    /// A seed key written after the rotating key's current version is a new login put there
    /// by a human (`bao kv put` of a fresh auth.json): it replaces the rotating credential,
    /// with CAS on the version read (a conflict: another host rotated or published it
    /// first; theirs is read instead). Judged by Vault's own `created_time` of both
    /// versions, so it needs no memory here and works on a new refresher host too.
    fn newer_seed(&self, v: &Vault, rotating: Entry) -> Result<(Entry, Option<String>), VaultError> {
        if rotating.created.is_none() {
            return Ok((rotating, None));
        }
        let seed = match v.read(&self.fleet.vault_seed_key, self.clock.now())? {
            Some(s) if newer_login(&s, &rotating) => s,
            _ => return Ok((rotating, None)),
        };
        let key = &self.fleet.vault_rotating_key;
        match v.write(key, &seed.value.0, rotating.version, self.clock.now()) {
            Ok(version) => {
                let note = format!(
                    "{} version {} is newer than {key} version {}: published it as a new login ({key} version {version})",
                    seed.key, seed.version, rotating.version
                );
                tracing::info!(account = %self.name(), "fleet: {note}");
                Ok((Entry { key: key.clone(), value: seed.value, version, created: None }, Some(note)))
            }
            Err(VaultError::CasMismatch { .. }) => Ok((self.reread_rotating(v)?, None)),
            Err(e) => Err(e),
        }
    }

    /// The rotating key as it is now, after a check-and-set conflict said it moved.
    fn reread_rotating(&self, v: &Vault) -> Result<Entry, VaultError> {
        let key = &self.fleet.vault_rotating_key;
        v.read(key, self.clock.now())?.ok_or_else(|| VaultError::NotFound { key: key.clone() })
    }

    /// The refresher's cycle on the rotating credential `entry`: lease, install, refresh
    /// when due, publish.
    fn rotate(&self, v: &Vault, st: &mut FleetState, entry: Entry) -> Report {
        let holder = match self.lease(v) {
            Ok(h) => h,
            Err(e) => return Report::failed(self.name(), vault_failure(&e)),
        };
        st.lease_holder = Some(holder.clone().unwrap_or_else(|| self.settings.agent.host_id.clone()));
        if let Some(other) = holder {
            let mut r = self.follow_entry(st, entry);
            if r.failure.is_none() {
                r.reason = format!("lease held by {other}: following, not refreshing; {}", r.reason);
            }
            return r;
        }
        let report = self.work(|j| {
            j.store = Some(SeedInput::from_bytes(&entry.value.0));
            j.materialize = true;
            j.return_auth = true;
        });
        if report.outcome != Outcome::Refreshed {
            if report.failure.is_none() && report.auth_sha256.as_deref() == Some(&sha256_hex(&entry.value.0)) {
                st.version = Some(entry.version);
                st.sha256 = report.auth_sha256.clone();
            }
            return report;
        }
        self.publish(v, st, &entry, report)
    }

    /// The auth.json a `return_auth` worker committed, with its sha256 (checked against the
    /// report's), or the failure to report.
    fn committed(&self, report: &Report, what: &str) -> Result<(Vec<u8>, String), Box<Report>> {
        let bytes = returned_auth(report);
        let sha = sha256_hex(&bytes);
        if bytes.is_empty() || report.auth_sha256.as_deref() != Some(sha.as_str()) {
            let f = Failure::transient(format!("fleet: the worker did not return the {what} credential"));
            return Err(Box::new(Report::failed(self.name(), f)));
        }
        Ok((bytes, sha))
    }

    /// Write a fresh refresh result to the rotating key with cas = the version we used.
    fn publish(&self, v: &Vault, st: &mut FleetState, base: &Entry, mut report: Report) -> Report {
        let (bytes, sha) = match self.committed(&report, "refreshed") {
            Ok(x) => x,
            Err(r) => return *r,
        };
        let key = &self.fleet.vault_rotating_key;
        match v.write(key, &bytes, base.version, self.clock.now()) {
            Ok(version) => {
                st.wrote(version, sha);
                report.reason = format!("{}; wrote {key} version {version}", report.reason);
                report
            }
            Err(VaultError::CasMismatch { .. }) => {
                // Someone else rotated since we read: theirs is the fleet's credential now.
                let theirs = match self.reread_rotating(v) {
                    Ok(e) => e,
                    Err(e) => return Report::failed(self.name(), vault_failure(&e)),
                };
                let mut r = self.follow_entry(st, theirs);
                r.events.push(Event::Adopted);
                if r.failure.is_none() {
                    r.reason = format!(
                        "{key} was rotated by another host while we refreshed (check-and-set conflict): adopted its version {}",
                        st.version.unwrap_or_default()
                    );
                }
                r
            }
            Err(e) => {
                // Our token is now the only live one and it is safe in auth.json; upload it
                // on the next run (if nobody rotated meanwhile). Report the failure.
                st.pending = Some(Pending { base_version: base.version, sha256: sha, stored: false });
                pending_failure(
                    report,
                    format!(
                        "fleet: refreshed locally but could not write {key} ({e}); the local auth.json is current and is uploaded on the next run"
                    ),
                )
            }
        }
    }

    /// A refresh or Store whose Vault write failed earlier: upload it before anything else.
    /// A refresh of ours counts only while the rotating key has not moved (then our token
    /// is the only live one); an operator's Store overrides whatever Vault holds (see
    /// `store`), so its upload cannot be lost to a rotation that happened meanwhile.
    /// Returns the rotating key's entry after it, and what was uploaded (for the report).
    fn upload_pending(
        &self,
        v: &Vault,
        st: &mut FleetState,
        entry: Entry,
    ) -> Result<(Entry, Option<String>), Box<Report>> {
        let Some(p) = st.pending.clone() else { return Ok((entry, None)) };
        if !p.stored && entry.version != p.base_version {
            tracing::warn!(account = %self.name(), "fleet: the rotating key moved on while our refresh was pending; Vault wins");
            st.pending = None;
            return Ok((entry, None));
        }
        let local = self.work(|j| {
            j.follow = true;
            j.return_auth = true;
        });
        if local.failure.is_some() {
            return Err(Box::new(local));
        }
        // After a Store, auth.json can only have moved on from the stored login (Codex
        // refreshing it; nothing from Vault is installed while the upload is pending), so
        // what is there now is uploaded.
        if !p.stored && local.auth_sha256.as_deref() != Some(p.sha256.as_str()) {
            tracing::warn!(account = %self.name(), "fleet: auth.json changed since the pending refresh; Vault wins");
            st.pending = None;
            return Ok((entry, None));
        }
        let bytes = returned_auth(&local);
        let key = &self.fleet.vault_rotating_key;
        let written = if p.stored {
            self.overwrite(v, &bytes, &mut None)
        } else {
            v.write(key, &bytes, p.base_version, self.clock.now())
        };
        let what = if p.stored { "stored" } else { "refreshed" };
        match written {
            Ok(version) => {
                let note = format!(
                    "uploaded the credential {what} while Vault was unreachable: wrote {key} version {version}"
                );
                tracing::info!(account = %self.name(), "fleet: {note}");
                st.wrote(version, sha256_hex(&bytes));
                Ok((Entry { key: key.clone(), value: Secret(bytes), version, created: None }, Some(note)))
            }
            Err(VaultError::CasMismatch { .. }) if !p.stored => {
                st.pending = None;
                self.reread_rotating(v)
                    .map(|e| (e, None))
                    .map_err(|e| Box::new(Report::failed(self.name(), vault_failure(&e))))
            }
            Err(e) if p.stored => Err(Box::new(Report::failed(
                self.name(),
                Failure::transient(format!("fleet: stored locally; upload to Vault pending: {e}")),
            ))),
            Err(e) => Err(Box::new(Report::failed(self.name(), vault_failure(&e)))),
        }
    }

    /// Write `bytes` over the rotating key whatever version it holds: check-and-set on the
    /// version just read, once more if another host wrote in between. `seen` gets the
    /// version read (a pending upload records it).
    fn overwrite(&self, v: &Vault, bytes: &[u8], seen: &mut Option<u64>) -> Result<u64, VaultError> {
        let key = &self.fleet.vault_rotating_key;
        for _ in 0..2 {
            let current = v.read(key, self.clock.now())?;
            if let Some(e) = &current {
                *seen = Some(e.version);
                if e.value.0 == bytes {
                    return Ok(e.version);
                }
            }
            match v.write(key, bytes, current.map_or(0, |e| e.version), self.clock.now()) {
                Err(VaultError::CasMismatch { .. }) => continue,
                written => return written,
            }
        }
        Err(VaultError::CasMismatch { key: key.clone() })
    }

    /// An operator's Store, installed here through the worker like any Store (validated,
    /// committed as the account's user). On a refresher it is also the operator's word
    /// that this login is the fleet's from now on: it is written over whatever version the
    /// rotating key holds, even one a concurrent rotation just wrote — a fresh login is a
    /// token family of its own, so nothing the fleet still needs is lost, and without the
    /// override the next run would install Vault's credential over it. A follower keeps it
    /// local and says so; it is replaced once Vault has a newer version (`follow_entry`).
    fn store(&self, v: Result<Arc<Vault>, VaultError>, st: &mut FleetState, input: SeedInput) -> Report {
        let refresher = self.fleet.fleet_role == FleetRole::Refresher;
        let mut report = self.work(|j| {
            j.store = Some(input);
            // A follower never calls the token endpoint, not even right after a Store.
            j.follow = !refresher;
            j.return_auth = refresher;
        });
        if report.failure.is_some() {
            return report;
        }
        if !refresher {
            report.reason = format!(
                "stored locally only: this host follows the fleet, so it is not written to Vault (run `codex-authctl store {}` on the refresher to share it); {}",
                self.name(),
                report.reason
            );
            return report;
        }
        let (bytes, sha) = match self.committed(&report, "stored") {
            Ok(x) => x,
            Err(r) => return *r,
        };
        let key = &self.fleet.vault_rotating_key;
        let mut seen = st.version;
        match v.and_then(|v| self.overwrite(&v, &bytes, &mut seen)) {
            Ok(version) => {
                st.wrote(version, sha);
                report.reason = format!("stored; wrote {key} version {version}; {}", report.reason);
                report
            }
            Err(e) => {
                st.pending = Some(Pending { base_version: seen.unwrap_or_default(), sha256: sha, stored: true });
                pending_failure(
                    report,
                    format!("stored locally; upload to Vault pending: {e}; the next run writes it to {key}"),
                )
            }
        }
    }

    fn follower(&self, v: &Vault, st: &mut FleetState) -> Report {
        let entry = match self.source(v, false) {
            Ok(Some(e)) => e,
            Ok(None) => return self.nothing_in_vault(),
            Err(e) => return Report::failed(self.name(), vault_failure(&e)),
        };
        let installed = st.version;
        let report = self.follow_entry(st, entry);
        // The lease holder is informational for followers: read it when a new version came
        // (the holder is who rotated it) or none is known, not on every run — it was half
        // of every follower's Vault reads (docs/PERFORMANCE.md, Fleet). A read failure is
        // not fatal.
        if st.version != installed || st.lease_holder.is_none() {
            let lease = v.read(&lease::lease_key(self.name()), self.clock.now()).ok().flatten();
            st.lease_holder = lease.and_then(|e| LeaseRecord::parse(&e.value.0)).map(|r| r.host_id);
        }
        report
    }

    /// Install `entry` when it is new here (version or content); otherwise just look at the local file
    /// and say when it differs from what we installed (never written back).
    fn follow_entry(&self, st: &mut FleetState, entry: Entry) -> Report {
        // Same version *and* content: a follower that installed the seed's version N must
        // still install the rotating key's version N.
        let unchanged = st.version == Some(entry.version) && st.sha256.as_deref() == Some(&sha256_hex(&entry.value.0));
        if unchanged && st.pending.is_none() {
            let mut r = self.work(|j| j.follow = true);
            if r.failure.is_none() && r.auth_sha256.is_some() && r.auth_sha256 != st.sha256 {
                r.reason = format!(
                    "auth.json differs from Vault version {} (changed locally, e.g. a human stored one); not written back to Vault; {}",
                    entry.version, r.reason
                );
            }
            return r;
        }
        let mut r = self.materialize(&entry);
        if r.failure.is_none() {
            st.version = Some(entry.version);
            st.sha256 = Some(sha256_hex(&entry.value.0));
            r.reason = format!("installed {} version {}; {}", entry.key, entry.version, r.reason);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_upload_saved_before_stores_existed_is_a_refresh() {
        let old = br#"{"version":2,"sha256":"ab","pending":{"base_version":2,"sha256":"cd"},"lease_holder":"vm-0"}"#;
        let st: FleetState = serde_json::from_slice(old).unwrap();
        assert_eq!(st.pending, Some(Pending { base_version: 2, sha256: "cd".into(), stored: false }));
        let stored = FleetState { pending: Some(Pending { stored: true, ..st.pending.clone().unwrap() }), ..st };
        let back: FleetState = serde_json::from_slice(&serde_json::to_vec(&stored).unwrap()).unwrap();
        assert_eq!(back, stored);
    }
}
