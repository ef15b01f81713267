//! One account's run from the caller's side (the CLI or the daemon, typically root):
//! read the root-only inputs (status, seed) → run the job as the account's user → record
//! the outcome (status.json, journal). Blocking; the daemon calls it on a blocking thread.

use crate::clock::Clock;
use crate::config::{AccountSettings, Settings};
use crate::hooks;
use crate::logging;
use crate::metrics;
use crate::outcome::{Failure, Report};
use crate::pending::{self, Keeper, PendingCredential};
use crate::preflight::{PreflightJob, PreflightReport};
use crate::privsep::{self, Identity};
use crate::seed::{self, SeedInput};
use crate::status;
use crate::worker::{self, Job, Supervisor};
use std::path::PathBuf;

/// Flags of one refresh request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefreshOptions {
    pub force: bool,
    pub dry_run: bool,
}

/// Build the worker's job for `acct`: the seed is read here (root-only file) and travels
/// to the worker inside the job.
pub fn job_for(settings: &Settings, acct: &AccountSettings, id: &Identity, opts: RefreshOptions) -> Job {
    let st = status::load(&settings.agent.state_dir, &acct.name);
    let seed = acct.seed.as_deref().and_then(|p| match seed::load(p, st.seed_sha256.as_deref()) {
        Ok(s) => s,
        Err(w) => {
            tracing::warn!(account = %acct.name, "{w}");
            None
        }
    });
    Job {
        account: acct.name.clone(),
        codex_home: acct.codex_home.clone(),
        owner_uid: id.uid,
        thresholds: acct.refresh.thresholds(),
        token_url: acct.refresh.token_url.clone(),
        request_timeout: acct.refresh.request_timeout,
        force: opts.force,
        dry_run: opts.dry_run,
        seed,
        store: None,
        refresh_method: acct.refresh.refresh_method,
        codex_bin: settings.agent.codex_bin.clone(),
        codex_base_url: acct.refresh.codex_base_url.clone(),
        temp_dir: std::env::temp_dir(),
        preflight_timeout: acct.refresh.preflight_timeout,
        materialize: false,
        follow: false,
        return_auth: false,
        pending: pending::current(&settings.agent.state_dir, &acct.name),
        quarantined: st.dead_auth_sha256.clone(),
    }
}

/// The caller's answers to a cycle's questions: `before_post` (a fleet refresher's own
/// check), then room for a durable copy of the new credential; that copy after the POST.
struct CallerSupervisor<'a> {
    keeper: Keeper,
    before_post: &'a dyn Fn() -> Result<(), Failure>,
}

impl Supervisor for CallerSupervisor<'_> {
    fn may_spend(&self, auth_len: u64) -> Result<(), Failure> {
        (self.before_post)()?;
        self.keeper.reserve(auth_len).map_err(|e| {
            Failure::transient(format!(
                "cannot make room to keep the new credential in the agent's state ({e}); no token request was sent (the refresh token is unspent); will retry"
            ))
        })
    }

    fn keep(&self, p: &PendingCredential) -> Result<PathBuf, String> {
        self.keeper.keep(p)
    }
}

/// Run a refresh `job` as `id` with this process keeping what the POST returns until
/// auth.json holds it (see `pending`).
pub fn run_job(settings: &Settings, id: &Identity, job: &Job, clock: &dyn Clock) -> Report {
    run_job_checked(settings, id, job, clock, &|| Ok(()))
}

/// Like [`run_job`], asking `before_post` right before the token is spent.
pub fn run_job_checked(
    settings: &Settings,
    id: &Identity,
    job: &Job,
    clock: &dyn Clock,
    before_post: &dyn Fn() -> Result<(), Failure>,
) -> Report {
    let state_dir = &settings.agent.state_dir;
    let sup = CallerSupervisor { keeper: Keeper::new(state_dir, &job.account), before_post };
    let report = privsep::run_as(id, job, clock, &sup);
    if !job.dry_run {
        pending::settle(state_dir, &job.account, &sup.keeper, report.pending_left);
    }
    report
}

/// Build the preflight job for `acct` (no root-only input: it works on auth.json as is).
pub fn preflight_job_for(settings: &Settings, acct: &AccountSettings, id: &Identity) -> PreflightJob {
    let r = &acct.refresh;
    PreflightJob {
        account: acct.name.clone(),
        codex_home: acct.codex_home.clone(),
        owner_uid: id.uid,
        timeout: r.preflight_timeout,
        lock_wait: worker::cycle_lock_wait(
            worker::refresh_limit(r.refresh_method, r.request_timeout),
            r.preflight_timeout,
        ),
        codex_bin: settings.agent.codex_bin.clone(),
        codex_base_url: r.codex_base_url.clone(),
        token_url: r.token_url.clone(),
        temp_dir: std::env::temp_dir(),
    }
}

/// Preflight one account (`codex exec` on a throwaway copy, as its user) and record the
/// runner status. Blocking, up to `preflight_timeout` plus lock waits. Runs whatever the
/// account's `preflight` key says: that key only gates the automatic triggers.
pub fn preflight(settings: &Settings, acct: &AccountSettings, clock: &dyn Clock) -> PreflightReport {
    let (report, hook) = preflight_deferred(settings, acct, clock);
    run_hook(settings, hook);
    report
}

/// Like [`preflight`], but the hook is handed back instead of run (see [`refresh_deferred`]).
pub fn preflight_deferred(
    settings: &Settings,
    acct: &AccountSettings,
    clock: &dyn Clock,
) -> (PreflightReport, Option<hooks::HookEvent>) {
    let report = match Identity::lookup(&acct.user) {
        Ok(id) => preflight_with(settings, acct, &id, clock),
        Err(e) => PreflightReport::failed(&acct.name, Failure::permanent(e)),
    };
    let hook = record_preflight(settings, &report, clock);
    (report, hook)
}

/// A preflight on a file whose successor is still pending would hand Codex a spent
/// token: write the pending credential first (a refresh run does that before anything
/// else), and preflight only once it is in auth.json.
fn preflight_with(settings: &Settings, acct: &AccountSettings, id: &Identity, clock: &dyn Clock) -> PreflightReport {
    let state_dir = &settings.agent.state_dir;
    if pending::current(state_dir, &acct.name).is_some() {
        let r = refresh(settings, acct, RefreshOptions::default(), clock);
        if pending::current(state_dir, &acct.name).is_some() {
            return PreflightReport::failed(
                &acct.name,
                Failure::transient(format!("not run: a new credential is still waiting to be written ({})", r.reason)),
            );
        }
    }
    let sup = CallerSupervisor { keeper: Keeper::new(state_dir, &acct.name), before_post: &|| Ok(()) };
    let report = privsep::preflight_as(id, &preflight_job_for(settings, acct, id), clock, &sup);
    pending::settle(state_dir, &acct.name, &sup.keeper, report.pending_left);
    report
}

/// Fold a preflight into status.json (runner fields), write its journal entries and the
/// metrics textfile; returns the hook to run, if one is configured.
pub fn record_preflight(settings: &Settings, report: &PreflightReport, clock: &dyn Clock) -> Option<hooks::HookEvent> {
    let state_dir = &settings.agent.state_dir;
    let mut st = status::load(state_dir, &report.account);
    st.update_runner(report, clock.now(), status::boot_id().as_deref());
    if let Err(e) = status::save(state_dir, &st) {
        tracing::warn!(account = %report.account, "could not save status: {e}");
    }
    logging::log_preflight(report);
    after_outcome(settings, hooks::HookEvent::from_preflight(report))
}

/// Refresh one account and record the outcome.
pub fn refresh(settings: &Settings, acct: &AccountSettings, opts: RefreshOptions, clock: &dyn Clock) -> Report {
    refresh_with(settings, acct, opts, None, clock)
}

/// Like [`refresh`], installing `store` (an auth.json handed to the daemon) first.
pub fn refresh_with(
    settings: &Settings,
    acct: &AccountSettings,
    opts: RefreshOptions,
    store: Option<SeedInput>,
    clock: &dyn Clock,
) -> Report {
    let (report, hook) = refresh_deferred(settings, acct, opts, store, clock);
    run_hook(settings, hook);
    report
}

/// Like [`refresh_with`], but the hook is handed back instead of run: the daemon runs it
/// after it has released the run's permit and answered the caller, so a slow hook (up to
/// its hook_timeout) holds up neither other accounts nor the D-Bus reply.
pub fn refresh_deferred(
    settings: &Settings,
    acct: &AccountSettings,
    opts: RefreshOptions,
    store: Option<SeedInput>,
    clock: &dyn Clock,
) -> (Report, Option<hooks::HookEvent>) {
    let report = match &acct.fleet {
        // Fleet mode: Vault is the source of truth; a refresher writes an operator's Store
        // there too (else its next run would install Vault's credential over it). A dry
        // run stays local.
        Some(fleet) if !opts.dry_run => match store {
            Some(input) => crate::fleet::store(settings, acct, fleet, input, opts, clock),
            None => crate::fleet::run(settings, acct, fleet, opts, clock),
        },
        _ => {
            let id = match Identity::lookup(&acct.user) {
                Ok(id) => id,
                Err(e) => return (Report::failed(&acct.name, Failure::permanent(e)), None),
            };
            let job = Job { store, ..job_for(settings, acct, &id, opts) };
            run_job(settings, &id, &job, clock)
        }
    };
    let hook = if opts.dry_run { None } else { record(settings, &report, clock) };
    (report, hook)
}

/// Fold a report into status.json, write its journal entry and the metrics textfile;
/// returns the hook to run, if one is configured.
pub fn record(settings: &Settings, report: &Report, clock: &dyn Clock) -> Option<hooks::HookEvent> {
    let state_dir = &settings.agent.state_dir;
    let mut st = status::load(state_dir, &report.account);
    st.update(report, clock.now());
    if let Err(e) = status::save(state_dir, &st) {
        tracing::warn!(account = %report.account, "could not save status: {e}");
    }
    logging::log_report(report);
    after_outcome(settings, hooks::HookEvent::from_report(report))
}

/// What every recorded outcome triggers once status.json holds it: the metrics textfile
/// is rewritten now; the account's hook, if the outcome calls for one, is returned for
/// [`run_hook`]. Neither can change the outcome.
fn after_outcome(settings: &Settings, event: hooks::HookEvent) -> Option<hooks::HookEvent> {
    metrics::update(settings);
    let acct = settings.accounts.get(&event.account)?;
    hooks::command_for(acct, &event).map(|_| event)
}

/// Run a hook returned by [`record`] or [`record_preflight`] (blocking, at most the
/// account's hook_timeout).
pub fn run_hook(settings: &Settings, event: Option<hooks::HookEvent>) {
    let Some(event) = event else { return };
    if let Some(acct) = settings.accounts.get(&event.account) {
        hooks::run(acct, &event);
    }
}
