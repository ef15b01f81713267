//! The daemon's core: per-account entries (schedule + last status), single-flight runs
//! bounded by `max_parallel`, the quarantine probe, and config reloads. It never touches a
//! user's CODEX_HOME: every run goes through `account::refresh`, i.e. a worker process
//! running as the account's user. Changes are announced on an event channel that the
//! D-Bus layer and sd-notify follow.

use crate::api::view::AccountView;
use crate::config::{self, AccountSettings, ConfigError, Env, FleetRole, FleetSettings, Settings};
use crate::core::authfile::sha256_hex;
use crate::core::clock::Clock;
use crate::core::outcome::PreflightReport;
use crate::core::outcome::{Failure, Report};
use crate::core::policy::Thresholds;
use crate::core::schedule::{Gate, Schedule};
use crate::core::seed::SeedInput;
use crate::runner::account::Shared;
use crate::runner::hooks::HookEvent;
use crate::runner::privsep::Workers;
use crate::runner::record;
use crate::runner::run::{self, RefreshOptions};
use crate::store::status::{self, AccountStatus};
use crate::sys::safedir::SafeDir;
use crate::worker::Local;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

pub const SCHEDULE_FILE: &str = "schedule.json";

/// How long workers kept for a next task outlive the last run (see `join_or_start`).
const KEPT_WORKERS_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// What changed, for the D-Bus layer and STATUS=.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Account(String),
    /// Accounts were added or removed, or the config problem changed.
    Accounts,
}

/// What the daemon keeps per account besides its settings (those live once, in
/// `Core::settings`).
struct Entry {
    schedule: Schedule,
    status: AccountStatus,
}

/// Why a follower's seed-key request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Publish {
    /// The account is no follower: the caller's mistake.
    Usage(String),
    /// Vault refused or did not answer (the message says what to do).
    Vault(String),
}

/// One requested run.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub force: bool,
    /// Install this auth.json first (Store).
    pub store: Option<SeedInput>,
    /// An operator's Store or Seed: backoff and quarantine do not apply.
    pub skip_gate: bool,
}

/// Runs in flight, per account: callers arriving during a run get its result.
type Flights<T> = Mutex<HashMap<String, watch::Receiver<Option<T>>>>;

/// The result a single-flight receiver settles on (None: the run was dropped).
async fn settled<T: Clone>(mut rx: watch::Receiver<Option<T>>) -> Option<T> {
    rx.wait_for(Option::is_some).await.ok().and_then(|r| r.clone())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct Core {
    config_path: PathBuf,
    settings: RwLock<Arc<Settings>>,
    entries: Mutex<BTreeMap<String, Entry>>,
    inflight: Flights<Report>,
    preflights: Flights<PreflightReport>,
    /// Per account, the latest queued hook: (its sequence number, closed when it ends).
    hooks: Mutex<HashMap<String, (u64, oneshot::Receiver<()>)>>,
    hook_seq: std::sync::atomic::AtomicU64,
    permits: RwLock<Arc<Semaphore>>,
    problem: Mutex<Option<String>>,
    shared: Shared,
    events: mpsc::UnboundedSender<Event>,
}

fn load_schedule(state_dir: &Path, name: &str, status: &AccountStatus) -> Schedule {
    let mut s = std::fs::read(status::account_dir(state_dir, name).join(SCHEDULE_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<Schedule>(&b).ok())
        .unwrap_or_default()
        .loaded();
    if s.expires_at.is_none() && s.last_refresh.is_none() {
        // Saved before schedules kept the credential's times: status.json has them.
        (s.expires_at, s.last_refresh) = (status.expires_at, status.last_refresh);
    }
    s
}

/// Bring `name`'s deadlines within their rules (`Schedule::clamp`), saving and announcing a
/// change. Deadlines are wall-clock times, so this runs wherever one is compared with now.
fn clamp(core: &Core, state_dir: &Path, name: &str, e: &mut Entry, thresholds: &Thresholds, now: DateTime<Utc>) {
    let before = e.schedule.wakes_at();
    if e.schedule.clamp(now, thresholds, fastrand::f64()) {
        let show = |t: Option<DateTime<Utc>>| t.map_or("none".to_string(), |t| t.to_rfc3339());
        tracing::warn!(
            account = %name,
            "next look at {} is further away than its rule allows (the clock was set back?); now {}",
            show(before),
            show(e.schedule.wakes_at())
        );
        save_schedule(state_dir, name, &e.schedule);
        core.emit(Event::Account(name.to_string()));
    }
}

/// Rewritten after every run, so without fsync (a replace by rename: old or new, never torn):
/// after a crash an older schedule only means an earlier look; status.json is the record.
fn save_schedule(state_dir: &Path, name: &str, s: &Schedule) {
    save_schedule_bytes(state_dir, name, &serde_json::to_vec_pretty(s).unwrap_or_default());
}

fn save_schedule_bytes(state_dir: &Path, name: &str, bytes: &[u8]) {
    let r = SafeDir::create_private(&status::account_dir(state_dir, name))
        .and_then(|d| d.replace_quietly(SCHEDULE_FILE, bytes));
    if let Err(e) = r {
        tracing::warn!(account = %name, "could not save the schedule: {e}");
    }
}

/// sha256 of the account's seed file now (root reads it; it is not in a user's home).
fn seed_hash(acct: &AccountSettings) -> Option<String> {
    acct.seed.as_deref().and_then(|p| std::fs::read(p).ok()).map(|b| sha256_hex(&b))
}

impl Core {
    pub fn new(
        config_path: PathBuf,
        settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> (Arc<Core>, mpsc::UnboundedReceiver<Event>) {
        let exec = Arc::new(Workers::new(Local, false));
        Core::with_executor(config_path, settings, Shared { clock, exec, mem: Arc::default(), vault: Arc::default() })
    }

    /// Like [`Core::new`], with the runtime the front end chose (the daemon: every task in
    /// a worker child).
    pub fn with_executor(
        config_path: PathBuf,
        settings: Settings,
        shared: Shared,
    ) -> (Arc<Core>, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let core = Arc::new(Core {
            config_path,
            permits: RwLock::new(Arc::new(Semaphore::new(settings.agent.max_parallel))),
            settings: RwLock::new(Arc::new(Settings { accounts: BTreeMap::new(), ..settings.clone() })),
            entries: Mutex::new(BTreeMap::new()),
            inflight: Mutex::new(HashMap::new()),
            preflights: Mutex::new(HashMap::new()),
            hooks: Mutex::new(HashMap::new()),
            hook_seq: std::sync::atomic::AtomicU64::new(0),
            problem: Mutex::new(None),
            shared,
            events: tx,
        });
        core.apply(settings);
        (core, rx)
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Rewrite the metrics textfile now (the heartbeat: nothing to record). Blocking.
    pub fn write_metrics(&self) {
        crate::store::metrics::update(&self.settings(), &self.shared.mem);
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.shared.clock.now()
    }

    fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    /// Make `new` the running config: entries appear, disappear or change.
    fn apply(&self, new: Settings) {
        let state_dir = new.agent.state_dir.clone();
        {
            let mut entries = lock(&self.entries);
            entries.retain(|name, _| new.accounts.contains_key(name));
            let now = self.now();
            for (name, acct) in &new.accounts {
                let e = entries.entry(name.clone()).or_insert_with(|| {
                    let status = self.shared.mem.statuses.reload(&state_dir, name);
                    Entry { schedule: load_schedule(&state_dir, name, &status), status }
                });
                clamp(self, &state_dir, name, e, &acct.refresh.thresholds(), now);
            }
        }
        let old = self.settings();
        if old.agent.max_parallel != new.agent.max_parallel {
            *self.permits.write().unwrap_or_else(PoisonError::into_inner) =
                Arc::new(Semaphore::new(new.agent.max_parallel));
        }
        *self.settings.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(new);
    }

    /// Re-read the config. On error the running config stays and the problem is shown.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let result = config::load(&self.config_path, &Env::from_process());
        match &result {
            Ok(new) => {
                for w in &new.warnings {
                    tracing::warn!("{w}");
                }
                self.apply(new.clone());
                *lock(&self.problem) = None;
                tracing::info!("configuration reloaded: {} accounts", self.names().len());
            }
            Err(e) => {
                *lock(&self.problem) = Some(format!("config error, still running the previous config: {e}"));
                tracing::error!("reload failed, keeping the running configuration: {e}");
            }
        }
        self.emit(Event::Accounts);
        result.map(|_| ())
    }

    pub fn names(&self) -> Vec<String> {
        lock(&self.entries).keys().cloned().collect()
    }

    pub fn has(&self, name: &str) -> bool {
        lock(&self.entries).contains_key(name)
    }

    pub fn view(&self, name: &str) -> Option<AccountView> {
        let settings = self.settings();
        let acct = settings.accounts.get(name)?;
        lock(&self.entries).get(name).map(|e| super::view::account_view(acct, &e.status, &e.schedule))
    }

    pub fn summary(&self) -> String {
        let entries = lock(&self.entries);
        let problem = lock(&self.problem).clone();
        crate::core::schedule::summary(entries.iter().map(|(n, e)| (n.as_str(), &e.schedule)), problem.as_deref())
    }

    /// Clamp every account's deadlines against `now` (see `clamp`).
    fn clamp_all(&self, entries: &mut BTreeMap<String, Entry>, now: DateTime<Utc>) {
        let settings = self.settings();
        for (name, e) in entries.iter_mut() {
            if let Some(acct) = settings.accounts.get(name) {
                clamp(self, &settings.agent.state_dir, name, e, &acct.refresh.thresholds(), now);
            }
        }
    }

    /// When the earliest account wants its next run.
    pub fn next_wakeup(&self) -> Option<DateTime<Utc>> {
        let mut entries = lock(&self.entries);
        self.clamp_all(&mut entries, self.now());
        entries.values().filter_map(|e| e.schedule.wakes_at()).min()
    }

    /// Accounts whose own schedule says "now" (or never checked since start).
    pub fn due(&self, now: DateTime<Utc>, all_unchecked: bool) -> Vec<String> {
        let mut entries = lock(&self.entries);
        self.clamp_all(&mut entries, now);
        entries.iter().filter(|(_, e)| e.schedule.is_due(now, all_unchecked)).map(|(n, _)| n.clone()).collect()
    }

    /// Run (or join the run of) one account. Every caller that arrives while a run is in
    /// flight gets that run's report.
    pub async fn refresh(self: &Arc<Self>, name: &str, req: Request) -> Option<Report> {
        if !self.has(name) {
            return None;
        }
        // A Store carries its own content: it waits for a run in flight instead of joining it.
        let join = req.store.is_none();
        if !join {
            loop {
                let Some(running) = lock(&self.inflight).get(name).cloned() else { break };
                settled(running).await;
            }
        }
        let rx =
            self.join_or_start(|c| &c.inflight, name, join, move |me, name| async move { me.run(&name, req).await });
        let result = settled(rx).await;
        Some(result.unwrap_or_else(|| Report::failed(name, Failure::transient("the run was aborted; will retry"))))
    }

    /// Join the run of `name` in `flights` (when `join`), or start `work` as that run; the
    /// receiver yields its result. The single-flight mechanism of refreshes and preflights.
    fn join_or_start<T, Fut>(
        self: &Arc<Self>,
        flights: fn(&Core) -> &Flights<T>,
        name: &str,
        join: bool,
        work: impl FnOnce(Arc<Core>, String) -> Fut,
    ) -> watch::Receiver<Option<T>>
    where
        T: Clone + Send + Sync + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let mut map = lock(flights(self));
        if let (true, Some(rx)) = (join, map.get(name)) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        map.insert(name.to_string(), rx.clone());
        let run = work(self.clone(), name.to_string());
        let (me, name) = (self.clone(), name.to_string());
        tokio::spawn(async move {
            let result = run.await;
            lock(flights(&me)).remove(&name);
            let _ = tx.send(Some(result));
            if me.busy() == 0 {
                crate::sys::process::release_free_memory();
                // A pass at max_parallel 1 starts its next run right after this one: the
                // workers kept for it end only if nothing started meanwhile.
                tokio::time::sleep(KEPT_WORKERS_GRACE).await;
                if me.busy() == 0 {
                    let exec = me.shared.exec.clone();
                    let _ = tokio::task::spawn_blocking(move || exec.idle()).await;
                }
            }
        });
        rx
    }

    /// Run `f` for every name, at most max_parallel at a time, and collect the answers in
    /// name order. Runs wait for a permit anyway; not starting them all at once keeps a
    /// RefreshAll of 1 000 accounts from holding 1 000 waiting tasks (measured: +1.7 MiB).
    async fn for_each<T, Fut>(self: &Arc<Self>, names: Vec<String>, f: impl Fn(Arc<Core>, String) -> Fut) -> Vec<T>
    where
        T: Send + 'static,
        Fut: Future<Output = Option<T>> + Send + 'static,
    {
        let limit = self.settings().agent.max_parallel.max(1);
        let mut running = tokio::task::JoinSet::new();
        let mut out = Vec::new();
        for (i, n) in names.into_iter().enumerate() {
            if running.len() >= limit {
                if let Some(Ok((j, Some(x)))) = running.join_next().await {
                    out.push((j, x));
                }
            }
            let run = f(self.clone(), n);
            running.spawn(async move { (i, run.await) });
        }
        while let Some(r) = running.join_next().await {
            if let Ok((j, Some(x))) = r {
                out.push((j, x));
            }
        }
        out.sort_by_key(|(j, _)| *j);
        out.into_iter().map(|(_, x)| x).collect()
    }

    async fn run(self: &Arc<Self>, name: &str, req: Request) -> Report {
        let Some((acct, gate)) = ({
            let mut entries = lock(&self.entries);
            let (acct, now) = (self.account_settings(name), self.now());
            let state_dir = self.settings().agent.state_dir.clone();
            entries.get_mut(name).and_then(|e| {
                let a = acct?;
                clamp(self, &state_dir, name, e, &a.refresh.thresholds(), now);
                Some((a, e.schedule.gate(now, req.force)))
            })
        }) else {
            return Report::failed(name, Failure::transient("account was removed from the config"));
        };
        let settings = self.settings();
        if !req.skip_gate {
            match gate {
                Gate::Run => {}
                // A follower's run only reads Vault (never the token endpoint), so a request
                // such as `codex-authctl sync` goes ahead: after Vault or its policy is fixed
                // it heals now, not at the end of the backoff. Its timer still backs off.
                Gate::BackingOff(_) if acct.fleet.as_ref().is_some_and(|f| f.fleet_role == FleetRole::Follower) => {}
                Gate::BackingOff(until) => {
                    return Report::failed(
                        name,
                        Failure::transient(format!("backing off after failures; next attempt {}", until.to_rfc3339())),
                    );
                }
                Gate::Quarantined(q) => {
                    let (s, a, sh) = (settings.clone(), acct.clone(), self.shared.clone());
                    let changed = tokio::task::spawn_blocking(move || {
                        let probe = run::refresh(&s, &a, RefreshOptions { force: false, dry_run: true }, &sh.rt());
                        let in_vault =
                            |f| crate::runner::fleet::new_login_in_vault(&s, f, q.auth_sha256.as_deref(), &sh.rt());
                        probe.auth_sha256 != q.auth_sha256
                            || seed_hash(&a) != q.seed_sha256
                            || a.fleet.as_ref().is_some_and(in_vault)
                    })
                    .await
                    .unwrap_or(false);
                    if !changed {
                        if let Some(e) = lock(&self.entries).get_mut(name) {
                            e.schedule.probed(self.now());
                        }
                        let last = self.view(name).map(|v| v.last_error).unwrap_or_default();
                        return Report::failed(
                            name,
                            Failure::permanent(format!(
                                "quarantined, no token request until auth.json or the seed changes ({last}); \
                                    log in again: codex-authctl login {name}"
                            )),
                        );
                    }
                    tracing::info!(account = %name, "auth.json, the seed or (fleet) Vault's login changed: \
                        lifting the quarantine");
                }
            }
        }
        let permits = self.permits.read().unwrap_or_else(PoisonError::into_inner).clone();
        let _permit = permits.acquire_owned().await;
        if let Some(e) = lock(&self.entries).get_mut(name) {
            if let Err(err) = e.schedule.begin() {
                tracing::error!(account = %name, "{err}");
                return Report::failed(name, Failure::transient("another run of this account is in progress"));
            }
        }
        self.emit(Event::Account(name.to_string()));
        let (s, a, sh) = (settings.clone(), acct.clone(), self.shared.clone());
        let opts = RefreshOptions { force: req.force, dry_run: false };
        let report = tokio::task::spawn_blocking(move || {
            let (report, hook) = run::refresh_deferred(&s, &a, opts, req.store, &sh.rt());
            (report, hook, seed_hash(&a))
        })
        .await;
        drop(_permit);
        let (report, hook, seed) = match report {
            Ok(x) => x,
            Err(e) => (
                Report::failed(name, Failure::transient(format!("the run failed internally: {e}"))),
                None,
                seed_hash(&acct),
            ),
        };
        let schedule = {
            let mut entries = lock(&self.entries);
            entries.get_mut(name).map(|e| {
                e.status = self.shared.mem.statuses.get(&settings.agent.state_dir, name);
                if let Err(err) =
                    e.schedule.finish(&report, &acct.refresh.thresholds(), seed, self.now(), fastrand::f64())
                {
                    tracing::error!(account = %name, "{err}");
                }
                serde_json::to_vec_pretty(&e.schedule).unwrap_or_default()
            })
        };
        // Written off the lock and off the async threads: every account's run ends here.
        if let Some(bytes) = schedule {
            let (dir, n) = (settings.agent.state_dir.clone(), name.to_string());
            let _ = tokio::task::spawn_blocking(move || save_schedule_bytes(&dir, &n, &bytes)).await;
        }
        self.emit(Event::Account(name.to_string()));
        self.spawn_hook(settings, hook);
        report
    }

    /// Run a recorded outcome's hook off the run: the permit is already released and the
    /// caller gets its answer at once, so a slow hook (up to its hook_timeout) holds up
    /// neither other accounts nor the D-Bus reply. Hooks of one account run one at a time,
    /// in the order of their outcomes (each waits for the one queued before it).
    fn spawn_hook(self: &Arc<Self>, settings: Arc<Settings>, hook: Option<HookEvent>) {
        let Some(event) = hook else { return };
        let name = event.account.clone();
        let seq = self.hook_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (done, ended) = oneshot::channel::<()>();
        let before = lock(&self.hooks).insert(name.clone(), (seq, ended));
        let me = self.clone();
        tokio::spawn(async move {
            if let Some((_, before)) = before {
                let _ = before.await;
            }
            let _ = tokio::task::spawn_blocking(move || record::run_hook(&settings, Some(event))).await;
            let mut hooks = lock(&me.hooks);
            if hooks.get(&name).is_some_and(|(s, _)| *s == seq) {
                hooks.remove(&name);
            }
            drop(done);
        });
    }

    /// Run every account (RefreshAll), in name order of the results.
    pub async fn refresh_all(self: &Arc<Self>, force: bool) -> Vec<Report> {
        self.for_each(self.names(), move |me, n| async move {
            me.refresh(&n, Request { force, ..Default::default() }).await
        })
        .await
    }

    /// Start runs for accounts that are due, without waiting for them.
    pub fn kick(self: &Arc<Self>, names: Vec<String>) {
        for n in names {
            let me = self.clone();
            tokio::spawn(async move { me.refresh(&n, Request::default()).await });
        }
    }

    /// The account's settings (for Store/Seed validation).
    pub fn account_settings(&self, name: &str) -> Option<AccountSettings> {
        self.settings().accounts.get(name).cloned()
    }

    /// Runs in flight and accounts with hooks pending right now (SIGTERM waits for them).
    pub fn busy(&self) -> usize {
        lock(&self.inflight).len() + lock(&self.preflights).len() + lock(&self.hooks).len()
    }

    /// A successful Store is followed by a preflight that the Store's answer does not wait
    /// for (Seed never triggers one).
    pub fn after_store(self: &Arc<Self>, name: &str, report: &Report) {
        let wanted = self.account_settings(name).is_some_and(|a| a.refresh.preflight);
        if report.failure.is_none() && wanted {
            let (me, name) = (self.clone(), name.to_string());
            tokio::spawn(async move { me.preflight(&name).await });
        }
    }

    /// Preflight one account (or join the one in flight). Bounded by max_parallel like
    /// refreshes: each runs a real Codex (≈150 MiB).
    pub async fn preflight(self: &Arc<Self>, name: &str) -> Option<PreflightReport> {
        let acct = self.account_settings(name)?;
        let rx = self.join_or_start(
            |c| &c.preflights,
            name,
            true,
            move |me, name| async move {
                let permits = me.permits.read().unwrap_or_else(PoisonError::into_inner).clone();
                let _permit = permits.acquire_owned().await;
                let (settings, sh, n) = (me.settings(), me.shared.clone(), name.clone());
                let s = settings.clone();
                let (report, hook) = tokio::task::spawn_blocking(move || run::preflight_deferred(&s, &acct, &sh.rt()))
                    .await
                    .unwrap_or_else(|e| {
                        let f = Failure::transient(format!("the preflight failed internally: {e}"));
                        (PreflightReport::failed(&n, f), None)
                    });
                drop(_permit);
                if let Some(e) = lock(&me.entries).get_mut(&name) {
                    e.status = me.shared.mem.statuses.get(&settings.agent.state_dir, &name);
                }
                me.emit(Event::Account(name));
                me.spawn_hook(settings, hook);
                report
            },
        );
        let result = settled(rx).await;
        Some(result.unwrap_or_else(|| PreflightReport::failed(name, Failure::transient("the preflight was aborted"))))
    }

    /// Preflight every account whose `preflight` key is on (PreflightAll, the daily timer).
    pub async fn preflight_all(self: &Arc<Self>) -> Vec<PreflightReport> {
        let names: Vec<String> = self
            .names()
            .into_iter()
            .filter(|n| self.account_settings(n).is_some_and(|a| a.refresh.preflight))
            .collect();
        self.for_each(names, |me, n| async move { me.preflight(&n).await }).await
    }

    /// A follower's `login --publish`: the seed key's version now (the check-and-set base),
    /// then [`Core::publish_seed`]. Err: a usage problem (not a follower) or Vault's answer.
    pub async fn seed_version(&self, name: &str) -> Option<Result<u64, Publish>> {
        self.with_follower(name, |s, a, f, sh| crate::runner::publish::seed_version(s, a, f, &sh.rt())).await
    }

    /// Write `auth` (validated) to the follower's seed key if it is still at version `cas`.
    pub async fn publish_seed(&self, name: &str, auth: Vec<u8>, cas: u64) -> Option<Result<u64, Publish>> {
        self.with_follower(name, move |s, a, f, sh| crate::runner::publish::publish_seed(s, a, f, &auth, cas, &sh.rt()))
            .await
    }

    /// Run `f` (blocking Vault I/O) for a fleet follower `name`; None when it is not configured.
    async fn with_follower(
        &self,
        name: &str,
        f: impl FnOnce(&Settings, &AccountSettings, &FleetSettings, &Shared) -> Result<u64, String> + Send + 'static,
    ) -> Option<Result<u64, Publish>> {
        let acct = self.account_settings(name)?;
        if let Some(why) = crate::runner::publish::not_a_follower(&acct) {
            return Some(Err(Publish::Usage(why)));
        }
        let (settings, shared) = (self.settings(), self.shared.clone());
        let done = tokio::task::spawn_blocking(move || {
            let fleet = acct.fleet.as_ref().expect("a follower has fleet settings");
            f(&settings, &acct, fleet, &shared)
        })
        .await;
        Some(done.unwrap_or_else(|e| Err(format!("internal error: {e}"))).map_err(Publish::Vault))
    }

    /// The account id last seen in the account's auth.json.
    pub fn account_id(&self, name: &str) -> Option<String> {
        lock(&self.entries).get(name).and_then(|e| e.status.account_id.clone())
    }
}
