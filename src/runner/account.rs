//! One account's run from the caller's side (the CLI or the daemon, typically root):
//! read the root-only inputs (status, seed) → run the job as the account's user → record
//! the outcome (status.json, journal). Blocking; the daemon calls it on a blocking thread.

use crate::config::{AccountSettings, Settings};
use crate::core::clock::Clock;
use crate::core::outcome::PreflightReport;
use crate::core::outcome::{Failure, Report};
use crate::core::pending::PendingCredential;
use crate::core::task::{self, Executor, Identity, Job, Mode, PreflightJob, Supervisor};
use crate::runner::privsep;
use crate::runner::seed;
use crate::runner::vault::Clients;
use crate::store::Memory;
use crate::store::pending::{self, Keeper};
use crate::store::status;
use std::path::PathBuf;
use std::sync::Arc;

/// What a run needs from its front end: the one rt, and the executor that runs tasks as
/// the account's user (in a worker child, or in-process in single-user mode).
#[derive(Clone, Copy)]
pub struct Runtime<'a> {
    pub clock: &'a dyn Clock,
    pub exec: &'a dyn Executor,
    pub mem: &'a Memory,
    pub vault: &'a Clients,
}

/// A [`Runtime`] that owns its parts, for a thread that outlives its caller's borrow.
#[derive(Clone)]
pub struct Shared {
    pub clock: Arc<dyn Clock>,
    pub exec: Arc<dyn Executor>,
    pub mem: Arc<Memory>,
    pub vault: Arc<Clients>,
}

impl Shared {
    pub fn rt(&self) -> Runtime<'_> {
        Runtime { clock: &*self.clock, exec: &*self.exec, mem: &self.mem, vault: &self.vault }
    }
}

/// Flags of one refresh request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefreshOptions {
    pub force: bool,
    pub dry_run: bool,
}

impl RefreshOptions {
    /// The mode of a local account's cycle.
    pub fn mode(self) -> Mode {
        if self.dry_run { Mode::DryRun { force: self.force } } else { Mode::Local { force: self.force } }
    }
}

/// Build the worker's job for `acct`: the seed is read here (root-only file) and travels
/// to the worker inside the job.
pub fn job_for(
    settings: &Settings,
    acct: &AccountSettings,
    id: &Identity,
    opts: RefreshOptions,
    rt: &Runtime<'_>,
) -> Job {
    let st = rt.mem.statuses.reload(&settings.agent.state_dir, &acct.name);
    let kept = acct.seed.as_ref().and_then(|_| status::seed_applied(&settings.agent.state_dir, &acct.name));
    let applied = [st.seed_sha256.as_deref(), kept.as_deref()];
    let seed = acct.seed.as_deref().and_then(|p| match seed::load(p, &applied) {
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
        mode: opts.mode(),
        seed,
        store: None,
        refresh_method: acct.refresh.refresh_method,
        codex_bin: settings.agent.codex_bin.clone(),
        codex_base_url: acct.refresh.codex_base_url.clone(),
        temp_dir: std::env::temp_dir(),
        login_client_id: acct.refresh.login_client_id.clone(),
        preflight_timeout: acct.refresh.preflight_timeout,
        pending: pending::current(&settings.agent.state_dir, &rt.mem.held, &acct.name),
        quarantined: st.dead_auth_sha256.clone(),
    }
}

/// The caller's answers to a cycle's questions: `before_post` (a fleet refresher's own
/// check), then room for a durable copy of the new credential and the new seed marked as
/// applied; that copy after the POST.
struct CallerSupervisor<'a> {
    keeper: Keeper,
    before_post: &'a dyn Fn() -> Result<(), Failure>,
    seed: Option<SeedMark<'a>>,
}

/// A new seed the job carries. A cycle installs it before anything else, so when the
/// worker asks to spend a token the seed is auth.json and its refresh token is the one
/// about to be spent: it is marked applied first, durably. Recorded only after the run, a
/// kill in between left it looking new, and a later run installed the spent token again.
struct SeedMark<'a> {
    state_dir: &'a std::path::Path,
    account: &'a str,
    sha256: &'a str,
}

impl Supervisor for CallerSupervisor<'_> {
    fn may_spend(&self, auth_len: u64) -> Result<(), Failure> {
        (self.before_post)()?;
        self.keeper.reserve(auth_len).map_err(|e| {
            Failure::transient(format!(
                "cannot make room to keep the new credential in the agent's state ({e}); no token request was \
                    sent (the refresh token is unspent); will retry"
            ))
        })?;
        let Some(m) = &self.seed else { return Ok(()) };
        status::keep_seed_applied(m.state_dir, m.account, m.sha256).map_err(|e| {
            Failure::transient(format!(
                "cannot record that the new seed was applied ({e}); no token request was sent (the seed's refresh \
                    token is unspent); will retry"
            ))
        })
    }

    fn keep(&self, p: &PendingCredential) -> Result<PathBuf, String> {
        self.keeper.keep(p)
    }
}

/// Run a refresh `job` as `id` with this process keeping what the POST returns until
/// auth.json holds it (see `pending`).
pub fn run_job(settings: &Settings, id: &Identity, job: &Job, rt: &Runtime<'_>) -> Report {
    run_job_checked(settings, id, job, rt, &|| Ok(()))
}

/// Like [`run_job`], asking `before_post` right before the token is spent.
pub fn run_job_checked(
    settings: &Settings,
    id: &Identity,
    job: &Job,
    rt: &Runtime<'_>,
    before_post: &dyn Fn() -> Result<(), Failure>,
) -> Report {
    let state_dir = &settings.agent.state_dir;
    let seed = job.seed.as_ref().filter(|s| s.is_new && job.store.is_none() && !job.mode.dry_run());
    let seed = seed.map(|s| SeedMark { state_dir, account: &job.account, sha256: &s.sha256 });
    let sup = CallerSupervisor { keeper: Keeper::new(state_dir, &job.account), before_post, seed };
    let report = privsep::run_as(rt.exec, id, job, rt.clock, &sup);
    if !job.mode.dry_run() {
        pending::settle(state_dir, &rt.mem.held, &job.account, &sup.keeper, report.pending_left);
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
        lock_wait: task::cycle_lock_wait(task::refresh_limit(r.refresh_method, r.request_timeout), r.preflight_timeout),
        codex_bin: settings.agent.codex_bin.clone(),
        codex_base_url: r.codex_base_url.clone(),
        token_url: r.token_url.clone(),
        temp_dir: std::env::temp_dir(),
    }
}

/// Run the preflight of `acct` as `id`, keeping what Codex refreshed until auth.json holds it.
pub fn run_preflight_job(
    settings: &Settings,
    acct: &AccountSettings,
    id: &Identity,
    rt: &Runtime<'_>,
) -> PreflightReport {
    let state_dir = &settings.agent.state_dir;
    let sup = CallerSupervisor { keeper: Keeper::new(state_dir, &acct.name), before_post: &|| Ok(()), seed: None };
    let report = privsep::preflight_as(rt.exec, id, &preflight_job_for(settings, acct, id), rt.clock, &sup);
    pending::settle(state_dir, &rt.mem.held, &acct.name, &sup.keeper, report.pending_left);
    report
}
