//! Fleet mode: many hosts share one Codex login through Vault/OpenBao KV v2 (seed document
//! 002). Per account a human-owned seed key and an automation-owned rotating key; exactly
//! one refresher (guarded by a CAS-written lease) refreshes and writes the rotating key
//! with check-and-set; everyone else follows, installing the rotating key's newest version.
//! Vault I/O happens here, in the caller (root); every file in a CODEX_HOME is still
//! written by the worker as the account's user (`Job::store` with `materialize`).

use crate::config::{AccountSettings, AgentSettings, FleetRole, FleetSettings, HostIdSource, Settings};
use crate::core::authfile::{hex, sha256_hex};
use crate::core::lease::{self, Collision, LeaseDecision, LeaseRecord, Me};
use crate::core::outcome::{Event, Failure, Outcome, Report};
use crate::core::seed::SeedInput;
use crate::core::task::Job;
use crate::core::task::{Identity, Install, Mode};
use crate::runner::account::{self, RefreshOptions, Runtime};
use crate::runner::vault::{Entry, Secret, Vault, VaultError};
use crate::store::status;
use crate::sys::safedir::SafeDir;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub const FLEET_FILE: &str = "fleet.json";
/// This agent's instance id, in state_dir (root, 0600): with `agent.host_id` it names the
/// lease holder, so two agents that share a host_id are told apart.
pub const INSTANCE_FILE: &str = "instance-id";

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
    /// The nonce of our last lease write that Vault confirmed (or that we read back).
    pub lease_nonce: Option<String>,
    /// The nonce of a lease write whose answer we have not seen (saved before the write,
    /// so a write that reached Vault is still recognised as ours after a crash).
    pub lease_nonce_unconfirmed: Option<String>,
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
    if let Err(e) = try_save_state(settings, account, st) {
        tracing::warn!(account = %account, "could not save {FLEET_FILE}: {e}");
    }
}

fn try_save_state(settings: &Settings, account: &str, st: &FleetState) -> Result<(), crate::sys::safedir::DirError> {
    SafeDir::create_private(&status::account_dir(&settings.agent.state_dir, account))
        .and_then(|d| d.write_atomic(FLEET_FILE, &serde_json::to_vec_pretty(st).unwrap_or_default()))
}

/// `bytes` random bytes as lowercase hex, from the kernel's generator (fastrand only if
/// /dev/urandom cannot be read): instance ids and lease nonces must differ between two
/// copies of one machine, whatever their clocks and pids.
fn random_hex(bytes: usize) -> String {
    use std::io::Read as _;
    let mut buf = vec![0u8; bytes];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).is_err() {
        buf.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    hex(&buf)
}

/// This agent's instance id (state_dir/instance-id), generated on first use; of several
/// runs racing to generate it exactly one file wins and every run uses that one.
pub fn instance_id(state_dir: &Path) -> Result<String, String> {
    let path = state_dir.join(INSTANCE_FILE);
    let dir = SafeDir::create_private(state_dir).map_err(|e| e.to_string())?;
    for _ in 0..2 {
        if let Some(f) = dir.read(INSTANCE_FILE).map_err(|e| e.to_string())? {
            let id = String::from_utf8_lossy(&f.bytes).trim().to_string();
            let valid =
                (8..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !valid {
                return Err(format!(
                    "{} does not hold an instance id (hex digits); remove it and the next run generates a new one",
                    path.display()
                ));
            }
            return Ok(id);
        }
        dir.write_new(INSTANCE_FILE, format!("{}\n", random_hex(16)).as_bytes()).map_err(|e| e.to_string())?;
    }
    Err(format!("{} vanished right after it was created; will retry", path.display()))
}

/// How to fix a shared identity, by where host_id came from.
fn collision_fix(agent: &AgentSettings) -> String {
    match &agent.host_id_source {
        HostIdSource::Config(file) => format!(
            "set agent.host_id (now {} in {}) to a name of its own on one of them",
            agent.host_id,
            file.display()
        ),
        HostIdSource::MachineId => "set agent.host_id to a name of its own on one of them, or give the clone a \
            machine id of its own (rm /etc/machine-id && systemd-machine-id-setup, then restart the agent)"
            .into(),
        HostIdSource::Hostname => {
            "set agent.host_id to a name of its own on one of them (it defaults to the hostname here)".into()
        }
    }
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
    rt: &Runtime<'_>,
) -> bool {
    let Some(v) = settings.vault.as_ref().and_then(|vs| rt.vault.get(vs).ok()) else { return false };
    let read = |key: &str| v.read(key, rt.clock.now());
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
    rt: &Runtime<'_>,
) -> Report {
    with_run(settings, acct, fleet, opts, rt, |run, v, st| match v {
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
    rt: &Runtime<'_>,
) -> Report {
    with_run(settings, acct, fleet, opts, rt, |run, v, st| run.store(v, st, input))
}

/// Set up a run of `acct`, let `f` do it with the Vault client and fleet.json's state,
/// then save the state and say what Vault holds. Never returns token material.
fn with_run(
    settings: &Settings,
    acct: &AccountSettings,
    fleet: &FleetSettings,
    opts: RefreshOptions,
    rt: &Runtime<'_>,
    f: impl FnOnce(&Run, Result<Arc<Vault>, VaultError>, &mut FleetState) -> Report,
) -> Report {
    let Some(vs) = &settings.vault else {
        return Report::failed(&acct.name, Failure::permanent("fleet_role is set but [vault] is not configured"));
    };
    let id = match Identity::lookup(&acct.user) {
        Ok(id) => id,
        Err(e) => return Report::failed(&acct.name, Failure::permanent(e)),
    };
    let run = Run { settings, acct, fleet, opts, rt, id, lease_until: Default::default() };
    let mut st = load_state(settings, &acct.name);
    let mut report = f(&run, rt.vault.get(vs), &mut st);
    save_state(settings, &acct.name, &st);
    report.auth_b64 = None;
    report.store_version = st.version;
    report.lease_holder = st.lease_holder.clone();
    report
}

/// Who holds the lease, as [`Run::lease`] found or made it.
enum Held {
    /// We do: this agent as it wrote the lease.
    Ours(Me),
    /// Another host (its host_id): follow.
    Other(String),
    /// A lease with our host_id that we did not write.
    Collision(Collision),
}

struct Run<'a> {
    settings: &'a Settings,
    acct: &'a AccountSettings,
    fleet: &'a FleetSettings,
    opts: RefreshOptions,
    rt: &'a Runtime<'a>,
    id: Identity,
    /// Until when the lease this run wrote keeps other refreshers away (None: not ours).
    lease_until: std::cell::Cell<Option<chrono::DateTime<chrono::Utc>>>,
}

impl Run<'_> {
    fn name(&self) -> &str {
        &self.acct.name
    }

    /// A worker job for this account, adjusted by `f`.
    fn work(&self, f: impl FnOnce(&mut Job)) -> Report {
        self.work_gated(f, &|| Ok(()))
    }

    /// Like [`Run::work`], with `before_post` asked right before the token is spent (the
    /// worker's pre-spend gate, answered here in the root parent).
    fn work_gated(&self, f: impl FnOnce(&mut Job), before_post: &dyn Fn() -> Result<(), Failure>) -> Report {
        let mut job = account::job_for(self.settings, self.acct, &self.id, self.opts, self.rt);
        f(&mut job);
        account::run_job_checked(self.settings, &self.id, &job, self.rt, before_post)
    }

    /// Install `entry` locally (only written when auth.json differs), never refreshing.
    fn materialize(&self, entry: &Entry) -> Report {
        self.work(|j| {
            j.store = Some(Install::Fleet(SeedInput::from_bytes(&entry.value.0)));
            j.mode = Mode::Follow { hand_back: false };
        })
    }

    /// The rotating key, else (followers, and refreshers before the first rotation) the seed.
    fn source(&self, v: &Vault, mirror: bool) -> Result<Option<Entry>, VaultError> {
        let now = self.rt.clock.now();
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
                tracing::info!(account = %self.name(), "fleet: mirrored the seed key into the rotating key \
                    (version {version})");
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

    /// This agent as a lease holder, with the nonces fleet.json remembers.
    fn me(&self, instance: &str, st: &FleetState) -> Me {
        Me {
            host_id: self.settings.agent.host_id.clone(),
            instance: instance.to_string(),
            nonces: st.lease_nonce.iter().chain(&st.lease_nonce_unconfirmed).cloned().collect(),
        }
    }

    /// Take or renew the lease. Each write carries a fresh nonce, saved in fleet.json
    /// before the write (a write that reached Vault must be recognised as ours even if we
    /// never see its answer) and confirmed after it.
    fn lease(&self, v: &Vault, st: &mut FleetState) -> Result<Held, Failure> {
        let key = lease::lease_key(self.name());
        let instance = instance_id(&self.settings.agent.state_dir)
            .map_err(|e| Failure::transient(format!("fleet: no instance id for the lease: {e}")))?;
        for _ in 0..3 {
            let now = self.rt.clock.now();
            let me = self.me(&instance, st);
            let current = v.read(&key, now).map_err(|e| vault_failure(&e))?;
            let record = current.as_ref().and_then(|e| LeaseRecord::parse(&e.value.0));
            let cas = match lease::decide(current.as_ref().map(|e| (record.as_ref(), e.version)), &me, now) {
                LeaseDecision::Follow { holder, .. } => return Ok(Held::Other(holder)),
                LeaseDecision::Collision(c) => return Ok(Held::Collision(c)),
                LeaseDecision::Renew { cas } => {
                    // What Vault holds is ours: its nonce is the confirmed one now.
                    if let Some(n) = record.and_then(|r| r.nonce) {
                        st.lease_nonce = Some(n);
                    }
                    cas
                }
                LeaseDecision::Take { cas } => cas,
            };
            let nonce = random_hex(16);
            st.lease_nonce_unconfirmed = Some(nonce.clone());
            try_save_state(self.settings, self.name(), st).map_err(|e| {
                Failure::transient(format!(
                    "fleet: could not save {FLEET_FILE} before writing the lease ({e}); not refreshing; will retry"
                ))
            })?;
            let mine = LeaseRecord::new(&me, &nonce, now, self.settings.agent.lease_ttl);
            match v.write(&key, &mine.to_bytes(), cas, now) {
                Ok(_) => {
                    let ttl = chrono::Duration::from_std(self.settings.agent.lease_ttl).unwrap_or_default();
                    self.lease_until.set(Some(now + ttl));
                    st.lease_nonce = Some(nonce.clone());
                    st.lease_nonce_unconfirmed = None;
                    return Ok(Held::Ours(Me { nonces: vec![nonce], ..me }));
                }
                // Someone wrote the lease between our read and write (ours was refused, so
                // its nonce is not in Vault): look again.
                Err(VaultError::CasMismatch { .. }) => st.lease_nonce_unconfirmed = None,
                // The write may or may not have happened: keep its nonce as possibly ours.
                Err(e) => return Err(vault_failure(&e)),
            }
        }
        Err(vault_failure(&VaultError::CasMismatch { key }))
    }

    /// A shared identity: `followed` (the rotating key installed like a follower would)
    /// turned into the transient failure that names both holders and the fix.
    fn collision(&self, c: &Collision, mut followed: Report) -> Report {
        let why = format!(
            "fleet: identity collision on {}: {c}; fix: {}; meanwhile this agent follows the rotating key",
            lease::lease_key(self.name()),
            collision_fix(&self.settings.agent)
        );
        tracing::warn!(account = %self.name(), "{why}");
        match followed.failure.as_mut() {
            Some(f) => {
                f.reason = format!("{why}; {}", f.reason);
                followed.reason = f.reason.clone();
                followed
            }
            None => {
                let reason = format!("{why}; {}", followed.reason);
                pending_failure(followed, reason)
            }
        }
    }

    /// How long the lease must still last at the moment of the POST: the refresh step,
    /// Codex's commit locks, and the upload with its re-read after a conflict.
    fn spend_window(&self) -> Duration {
        let r = &self.acct.refresh;
        let vault = self.settings.vault.as_ref().map_or(Duration::ZERO, |v| v.request_timeout);
        crate::core::task::refresh_limit(r.refresh_method, r.request_timeout)
            + crate::core::contract::CODEX_LOCK_WAIT
            + crate::core::contract::COMMIT_LOCK_WAIT
            + vault * 2
    }

    /// The pre-spend check, right before the POST: re-read the rotating key and the lease,
    /// and refuse to spend the refresh token of version `entry_version` unless that is still
    /// the current version and the lease is still ours (written by us, see [`Me`]) for long
    /// enough to finish ([`Run::spend_window`]). Vault not answering is a refusal too: the
    /// token is spent only when Vault says it may be. Transient, so the next run retries.
    fn may_spend(&self, v: &Vault, entry_version: u64, me: &Me) -> Result<(), Failure> {
        let refuse =
            |why: String| Failure::transient(format!("fleet: not spending the refresh token: {why}; will retry"));
        let now = self.rt.clock.now();
        let rotating = v.read(&self.fleet.vault_rotating_key, now).map_err(|e| refuse(e.to_string()))?;
        let lease = v.read(&lease::lease_key(self.name()), now).map_err(|e| refuse(e.to_string()))?;
        let record = lease.as_ref().and_then(|e| LeaseRecord::parse(&e.value.0));
        let current = lease.as_ref().map(|e| (record.as_ref(), e.version));
        lease::may_spend(
            rotating.map(|e| e.version),
            entry_version,
            current,
            me,
            self.rt.clock.now(),
            self.spend_window(),
        )
        .map_err(|r| refuse(r.to_string()))
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
        let seed = match v.read(&self.fleet.vault_seed_key, self.rt.clock.now())? {
            Some(s) if newer_login(&s, &rotating) => s,
            _ => return Ok((rotating, None)),
        };
        let key = &self.fleet.vault_rotating_key;
        match v.write(key, &seed.value.0, rotating.version, self.rt.clock.now()) {
            Ok(version) => {
                let note = format!(
                    "{} version {} is newer than {key} version {}: published it as a new login ({key} version \
                        {version})",
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
        v.read(key, self.rt.clock.now())?.ok_or_else(|| VaultError::NotFound { key: key.clone() })
    }

    /// The refresher's cycle on the rotating credential `entry`: lease, install, refresh
    /// when due, publish.
    fn rotate(&self, v: &Vault, st: &mut FleetState, entry: Entry) -> Report {
        let held = match self.lease(v, st) {
            Ok(h) => h,
            Err(f) => return Report::failed(self.name(), f),
        };
        let me = match held {
            Held::Ours(me) => {
                st.lease_holder = Some(self.settings.agent.host_id.clone());
                me
            }
            Held::Other(other) => {
                st.lease_holder = Some(other.clone());
                let mut r = self.follow_entry(st, entry);
                if r.failure.is_none() {
                    r.reason = format!("lease held by {other}: following, not refreshing; {}", r.reason);
                }
                return r;
            }
            Held::Collision(c) => {
                st.lease_holder = Some(c.host_id.clone());
                let followed = self.follow_entry(st, entry);
                return self.collision(&c, followed);
            }
        };
        // Right before the POST the worker asks again: is this still the current version,
        // and still our lease?
        let gate = || self.may_spend(v, entry.version, &me);
        let report = self.work_gated(
            |j| {
                j.store = Some(Install::Fleet(SeedInput::from_bytes(&entry.value.0)));
                j.mode = Mode::Lead { force: self.opts.force };
            },
            &gate,
        );
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
        match self.write_retrying(v, key, &bytes, base.version) {
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
                        "{key} was rotated by another host while we refreshed (check-and-set conflict): adopted \
                            its version {}",
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
                        "fleet: refreshed locally but could not write {key} ({e}); the local auth.json is \
                            current and is uploaded on the next run"
                    ),
                )
            }
        }
    }

    /// The check-and-set write of a credential this run just received. The refresh token it
    /// replaces is spent, so while Vault does not answer the write is tried again, for up to
    /// `vault.publish_retry` and never closer than two requests to the end of our lease
    /// (after it, another refresher may spend the token Vault still holds): a pod's state dir
    /// dies with it, and its next run could not upload what this one received.
    fn write_retrying(&self, v: &Vault, key: &str, bytes: &[u8], cas: u64) -> Result<u64, VaultError> {
        let clock = self.rt.clock;
        let vs = self.settings.vault.as_ref();
        let (retry, timeout) = vs.map_or((Duration::ZERO, Duration::ZERO), |s| (s.publish_retry, s.request_timeout));
        let as_chrono = |d: Duration| chrono::Duration::from_std(d).unwrap_or_default();
        let give_up = match self.lease_until.get() {
            Some(until) => (clock.now() + as_chrono(retry)).min(until - as_chrono(timeout * 2)),
            None => clock.now(),
        };
        let mut pause = Duration::from_millis(500);
        loop {
            match v.write(key, bytes, cas, clock.now()) {
                Err(e @ VaultError::Unreachable { .. }) if clock.now() + as_chrono(pause + timeout) < give_up => {
                    let ms = pause.as_millis();
                    tracing::warn!(account = %self.name(), "{e}; trying again in {ms}ms (a new credential waits)");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                r => return r,
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
            tracing::warn!(account = %self.name(), "fleet: the rotating key moved on while our refresh was \
                pending; Vault wins");
            st.pending = None;
            return Ok((entry, None));
        }
        let local = self.work(|j| j.mode = Mode::Follow { hand_back: true });
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
            v.write(key, &bytes, p.base_version, self.rt.clock.now())
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
            let current = v.read(key, self.rt.clock.now())?;
            if let Some(e) = &current {
                *seen = Some(e.version);
                if e.value.0 == bytes {
                    return Ok(e.version);
                }
            }
            match v.write(key, bytes, current.map_or(0, |e| e.version), self.rt.clock.now()) {
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
        let login = input.login;
        let mut report = self.work(|j| {
            j.store = Some(Install::Operator(input));
            // A follower never calls the token endpoint, not even right after a Store.
            j.mode = if refresher { Mode::Lead { force: self.opts.force } } else { Mode::Follow { hand_back: false } };
        });
        if report.failure.is_some() {
            return report;
        }
        if !refresher {
            // A login's own command says what publishes it (`--publish`, or the refresher).
            let share = if login {
                "codex-authctl login --publish puts it in the seed key".to_string()
            } else {
                format!("run `codex-authctl store {}` on the refresher to share it", self.name())
            };
            report.reason = format!(
                "stored locally only: this host follows the fleet, so it is not written to Vault ({share}); {}",
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
            let lease = v.read(&lease::lease_key(self.name()), self.rt.clock.now()).ok().flatten();
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
            let mut r = self.work(|j| j.mode = Mode::Follow { hand_back: false });
            if r.failure.is_none() && r.auth_sha256.is_some() && r.auth_sha256 != st.sha256 {
                r.reason = format!(
                    "auth.json differs from Vault version {} (changed locally, e.g. a human stored one); not \
                        written back to Vault; {}",
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

    /// Building a job runs nothing.
    struct NoExec;

    impl crate::core::task::Executor for NoExec {
        fn run(
            &self,
            _: &Identity,
            _: crate::core::task::Task,
            _: &dyn crate::core::clock::Clock,
            _: &dyn crate::core::task::Supervisor,
        ) -> crate::core::task::TaskReport {
            unreachable!("job_for starts no task")
        }
    }

    #[test]
    fn the_instance_id_is_made_once_private_and_kept() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let state = t.path().join("state");
        let id = instance_id(&state).unwrap();
        assert_eq!(id.len(), 32, "{id}");
        assert_eq!(instance_id(&state).unwrap(), id, "generated once, then read");
        let md = std::fs::metadata(state.join(INSTANCE_FILE)).unwrap();
        assert_eq!((md.mode() & 0o777, md.uid()), (0o600, nix::unistd::geteuid().as_raw()));
        assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
        let other = t.path().join("other");
        assert_ne!(instance_id(&other).unwrap(), id, "another state dir, another agent");
        std::fs::write(state.join(INSTANCE_FILE), "not hex\n").unwrap();
        let e = instance_id(&state).unwrap_err();
        assert!(e.contains("does not hold an instance id") && e.contains("remove it"), "{e}");
        // Runs of one agent racing to create it agree on one id.
        let fresh = t.path().join("fresh");
        let ids: std::collections::BTreeSet<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8).map(|_| s.spawn(|| instance_id(&fresh).unwrap())).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(ids.len(), 1, "{ids:?}");
    }

    #[test]
    fn the_lease_ttl_minimum_uses_the_workers_own_deadline() {
        // config::worker_deadline repeats Job::deadline's sum; they must not drift apart.
        let t = tempfile::tempdir().unwrap();
        let id = Identity::current().unwrap();
        for (method, timeout) in [("oauth", "30s"), ("app-server", "45s"), ("oauth", "10m")] {
            let text = format!(
                "[agent]\nstate_dir = \"{}\"\n[accounts.a]\nuser = \"{}\"\nrefresh_method = \
                    \"{method}\"\nrequest_timeout = \"{timeout}\"\n",
                t.path().join("state").display(),
                id.user
            );
            let cfg = t.path().join("config.toml");
            std::fs::write(&cfg, text).unwrap();
            let s = crate::config::load(&cfg, &crate::config::Env::default()).unwrap();
            let a = &s.accounts["a"];
            let (exec, mem, vault) = (NoExec, crate::store::Memory::default(), Default::default());
            let rt = Runtime { clock: &crate::core::clock::SystemClock, exec: &exec, mem: &mem, vault: &vault };
            let job = account::job_for(&s, a, &id, RefreshOptions::default(), &rt);
            assert_eq!(crate::config::worker_deadline(&a.refresh), job.deadline(), "{method} {timeout}");
        }
    }

    #[test]
    fn fleet_state_without_lease_nonces_parses() {
        let old = br#"{"version":3,"sha256":"ab","pending":null,"lease_holder":"vm-0"}"#;
        let st: FleetState = serde_json::from_slice(old).unwrap();
        assert_eq!(
            (st.version, st.lease_nonce.as_deref(), st.lease_nonce_unconfirmed.as_deref()),
            (Some(3), None, None)
        );
    }

    #[test]
    fn the_collision_fix_depends_on_where_host_id_came_from() {
        let mut agent = crate::config::single_user(Path::new("/tmp/x"), "root", "/tmp/s".into(), &Default::default())
            .unwrap()
            .agent;
        agent.host_id = "vm-7".into();
        agent.host_id_source = HostIdSource::Config("/etc/codex-auth-agent/config.d/10-host.toml".into());
        assert_eq!(
            collision_fix(&agent),
            "set agent.host_id (now vm-7 in /etc/codex-auth-agent/config.d/10-host.toml) to a name of its own \
                on one of them"
        );
        agent.host_id_source = HostIdSource::MachineId;
        assert!(collision_fix(&agent).contains("rm /etc/machine-id && systemd-machine-id-setup"));
        agent.host_id_source = HostIdSource::Hostname;
        assert!(collision_fix(&agent).contains("defaults to the hostname"));
    }

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
