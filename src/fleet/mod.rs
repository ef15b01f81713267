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
use crate::privsep::{self, Identity};
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
    /// Refreshed here, but the Vault write failed: upload it next time if the rotating key
    /// is still at `base_version` (our token is then the only live one).
    pub pending: Option<Pending>,
    pub lease_holder: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub base_version: u64,
    pub sha256: String,
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

/// One fleet cycle for `acct` (role from its settings). Never returns token material.
pub fn run(
    settings: &Settings,
    acct: &AccountSettings,
    fleet: &FleetSettings,
    opts: RefreshOptions,
    clock: &dyn Clock,
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
    let mut report = match client(vs) {
        Ok(v) => match fleet.fleet_role {
            FleetRole::Refresher => run.refresher(&v, &mut st),
            FleetRole::Follower => run.follower(&v, &mut st),
        },
        Err(e) => Report::failed(&acct.name, vault_failure(&e)),
    };
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
        privsep::run_as(&self.id, &job, self.clock)
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
                Ok(Some(Entry { value: seed.value, version }))
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
        let entry = match self.upload_pending(v, st, entry) {
            Ok(e) => e,
            Err(r) => return *r,
        };
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

    /// Write a fresh refresh result to the rotating key with cas = the version we used.
    fn publish(&self, v: &Vault, st: &mut FleetState, base: &Entry, mut report: Report) -> Report {
        let bytes = returned_auth(&report);
        let sha = sha256_hex(&bytes);
        if bytes.is_empty() || report.auth_sha256.as_deref() != Some(sha.as_str()) {
            return Report::failed(
                self.name(),
                Failure::transient("fleet: the worker did not return the refreshed credential"),
            );
        }
        let key = &self.fleet.vault_rotating_key;
        match v.write(key, &bytes, base.version, self.clock.now()) {
            Ok(version) => {
                st.version = Some(version);
                st.sha256 = Some(sha);
                st.pending = None;
                report.reason = format!("{}; wrote {key} version {version}", report.reason);
                report
            }
            Err(VaultError::CasMismatch { .. }) => {
                // Someone else rotated since we read: theirs is the fleet's credential now.
                let theirs = match v.read(key, self.clock.now()) {
                    Ok(Some(e)) => e,
                    Ok(None) => return self.nothing_in_vault(),
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
                st.pending = Some(Pending { base_version: base.version, sha256: sha });
                report.outcome = Outcome::Failed;
                let f = Failure::transient(format!(
                    "fleet: refreshed locally but could not write {key} ({e}); the local auth.json is current and is uploaded on the next run"
                ));
                report.reason = f.reason.clone();
                report.failure = Some(f);
                report
            }
        }
    }

    /// A refresh whose Vault write failed earlier: if the rotating key has not moved, our
    /// local credential is the only live one; upload it before anything else.
    fn upload_pending(&self, v: &Vault, st: &mut FleetState, entry: Entry) -> Result<Entry, Box<Report>> {
        let Some(p) = st.pending.clone() else { return Ok(entry) };
        if entry.version != p.base_version {
            tracing::warn!(account = %self.name(), "fleet: the rotating key moved on while our refresh was pending; Vault wins");
            st.pending = None;
            return Ok(entry);
        }
        let local = self.work(|j| {
            j.follow = true;
            j.return_auth = true;
        });
        if local.failure.is_some() {
            return Err(Box::new(local));
        }
        if local.auth_sha256.as_deref() != Some(p.sha256.as_str()) {
            tracing::warn!(account = %self.name(), "fleet: auth.json changed since the pending refresh; Vault wins");
            st.pending = None;
            return Ok(entry);
        }
        let bytes = returned_auth(&local);
        match v.write(&self.fleet.vault_rotating_key, &bytes, p.base_version, self.clock.now()) {
            Ok(version) => {
                tracing::info!(account = %self.name(), "fleet: uploaded the credential refreshed while Vault was unreachable (version {version})");
                st.pending = None;
                st.version = Some(version);
                st.sha256 = Some(p.sha256);
                Ok(Entry { value: Secret(bytes), version })
            }
            Err(VaultError::CasMismatch { .. }) => {
                st.pending = None;
                match v.read(&self.fleet.vault_rotating_key, self.clock.now()) {
                    Ok(Some(e)) => Ok(e),
                    Ok(None) => Err(Box::new(self.nothing_in_vault())),
                    Err(e) => Err(Box::new(Report::failed(self.name(), vault_failure(&e)))),
                }
            }
            Err(e) => Err(Box::new(Report::failed(self.name(), vault_failure(&e)))),
        }
    }

    fn follower(&self, v: &Vault, st: &mut FleetState) -> Report {
        let entry = match self.source(v, false) {
            Ok(Some(e)) => e,
            Ok(None) => return self.nothing_in_vault(),
            Err(e) => return Report::failed(self.name(), vault_failure(&e)),
        };
        // The lease holder is informational for followers; a read failure is not fatal.
        let lease = v.read(&lease::lease_key(self.name()), self.clock.now()).ok().flatten();
        st.lease_holder = lease.and_then(|e| LeaseRecord::parse(&e.value.0)).map(|r| r.host_id);
        self.follow_entry(st, entry)
    }

    /// Install `entry` when its version is new here; otherwise just look at the local file
    /// and say when it differs from what we installed (never written back).
    fn follow_entry(&self, st: &mut FleetState, entry: Entry) -> Report {
        // Version and content: before the first rotation a follower installs the seed key,
        // whose version number the rotating key's own versions later reuse.
        let installed = st.version == Some(entry.version) && st.sha256 == Some(sha256_hex(&entry.value.0));
        if installed && st.pending.is_none() {
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
            r.reason = format!("installed {} version {}; {}", self.fleet.vault_rotating_key, entry.version, r.reason);
        }
        r
    }
}
