//! The runner's entry points used by the front ends: refresh or preflight one account
//! (locally, or through the fleet when the account has `[fleet]`) and record the outcome.

use crate::config::{AccountSettings, Settings};
use crate::core::outcome::{Failure, PreflightReport, Report};
use crate::core::seed::SeedInput;
use crate::core::task::{Identity, Install, Job};
use crate::runner::account::{self, Runtime};
use crate::runner::record::{record, record_preflight, run_hook};
use crate::runner::{fleet, hooks};
use crate::store::pending;

pub use crate::runner::account::RefreshOptions;

/// Preflight one account (`codex exec` on a throwaway copy, as its user) and record the
/// runner status. Blocking, up to `preflight_timeout` plus lock waits. Runs whatever the
/// account's `preflight` key says: that key only gates the automatic triggers.
pub fn preflight(settings: &Settings, acct: &AccountSettings, rt: &Runtime<'_>) -> PreflightReport {
    let (report, hook) = preflight_deferred(settings, acct, rt);
    run_hook(settings, hook);
    report
}

/// Like [`preflight`], but the hook is handed back instead of run (see [`refresh_deferred`]).
pub fn preflight_deferred(
    settings: &Settings,
    acct: &AccountSettings,
    rt: &Runtime<'_>,
) -> (PreflightReport, Option<hooks::HookEvent>) {
    let report = match Identity::lookup(&acct.user) {
        Ok(id) => preflight_with(settings, acct, &id, rt),
        Err(e) => PreflightReport::failed(&acct.name, Failure::permanent(e)),
    };
    let hook = record_preflight(settings, &report, rt);
    (report, hook)
}

/// A preflight on a file whose successor is still pending would hand Codex a spent
/// token: write the pending credential first (a refresh run does that before anything
/// else), and preflight only once it is in auth.json.
fn preflight_with(settings: &Settings, acct: &AccountSettings, id: &Identity, rt: &Runtime<'_>) -> PreflightReport {
    let state_dir = &settings.agent.state_dir;
    if pending::current(state_dir, &rt.mem.held, &acct.name).is_some() {
        let r = refresh(settings, acct, RefreshOptions::default(), rt);
        if pending::current(state_dir, &rt.mem.held, &acct.name).is_some() {
            return PreflightReport::failed(
                &acct.name,
                Failure::transient(format!("not run: a new credential is still waiting to be written ({})", r.reason)),
            );
        }
    }
    account::run_preflight_job(settings, acct, id, rt)
}

/// Refresh one account and record the outcome.
pub fn refresh(settings: &Settings, acct: &AccountSettings, opts: RefreshOptions, rt: &Runtime<'_>) -> Report {
    refresh_with(settings, acct, opts, None, rt)
}

/// Like [`refresh`], installing `store` (an auth.json handed to the daemon) first.
pub fn refresh_with(
    settings: &Settings,
    acct: &AccountSettings,
    opts: RefreshOptions,
    store: Option<SeedInput>,
    rt: &Runtime<'_>,
) -> Report {
    let (report, hook) = refresh_deferred(settings, acct, opts, store, rt);
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
    rt: &Runtime<'_>,
) -> (Report, Option<hooks::HookEvent>) {
    let report = match &acct.fleet {
        // Fleet mode: Vault is the source of truth; a refresher writes an operator's Store
        // there too (else its next run would install Vault's credential over it). A dry
        // run stays local.
        Some(fleet) if !opts.dry_run => match store {
            Some(input) => fleet::store(settings, acct, fleet, input, opts, rt),
            None => fleet::run(settings, acct, fleet, opts, rt),
        },
        _ => {
            let id = match Identity::lookup(&acct.user) {
                Ok(id) => id,
                Err(e) => return (Report::failed(&acct.name, Failure::permanent(e)), None),
            };
            let job = Job { store: store.map(Install::Operator), ..account::job_for(settings, acct, &id, opts, rt) };
            account::run_job(settings, &id, &job, rt)
        }
    };
    let hook = if opts.dry_run { None } else { record(settings, &report, rt) };
    (report, hook)
}
