//! Recording an outcome once a run is over: status.json, the journal, the metrics
//! textfile, and the account's hook (returned to be run when the caller is ready).

use crate::config::Settings;
use crate::core::outcome::{Outcome, PreflightReport, Report};
use crate::runner::account::Runtime;
use crate::runner::hooks;
use crate::store::{metrics, status};
use crate::sys::logging;

/// Fold a preflight into status.json (runner fields), write its journal entries and the
/// metrics textfile; returns the hook to run, if one is configured.
pub fn record_preflight(settings: &Settings, report: &PreflightReport, rt: &Runtime<'_>) -> Option<hooks::HookEvent> {
    let (now, boot) = (rt.clock.now(), status::boot_id());
    rt.mem.statuses.update(&settings.agent.state_dir, &report.account, true, |st| {
        warn_untested_codex(&report.account, st.codex_version.as_deref(), report.codex_version.as_deref());
        st.update_runner(report, now, boot.as_deref())
    });
    logging::log_preflight(report);
    after_outcome(settings, rt, hooks::HookEvent::from_preflight(report))
}

/// One journal warning when an account's Codex becomes a version outside the tested
/// range: once per version seen (status.json remembers the last), not once per run.
fn warn_untested_codex(account: &str, before: Option<&str>, now: Option<&str>) {
    use crate::core::contract::{CODEX_TESTED_RANGE, codex_version_tested};
    if let Some(v) = now
        && before != Some(v)
        && !codex_version_tested(v)
    {
        tracing::warn!(
            account = %account,
            codex_version = %v,
            "Codex CLI {v} is outside the versions codex-auth-agent is tested with ({CODEX_TESTED_RANGE}); \
             it may behave differently: see docs/CODEX-COMPAT.md, or install a tested release"
        );
    }
}

/// Fold a report into status.json, write its journal entry and the metrics textfile;
/// returns the hook to run, if one is configured.
pub fn record(settings: &Settings, report: &Report, rt: &Runtime<'_>) -> Option<hooks::HookEvent> {
    let state_dir = &settings.agent.state_dir;
    if let Some(sha) = &report.seed_applied
        && let Err(e) = status::keep_seed_applied(state_dir, &report.account, sha)
    {
        tracing::warn!(account = %report.account, "could not keep the applied seed's hash: {e}");
    }
    // A fresh check changes nothing worth an fsync; every other outcome is kept durably.
    let durable = !matches!(report.outcome, Outcome::Fresh | Outcome::Inert);
    let now = rt.clock.now();
    rt.mem.statuses.update(state_dir, &report.account, durable, |st| {
        warn_untested_codex(&report.account, st.codex_version.as_deref(), report.codex_version.as_deref());
        st.update(report, now)
    });
    logging::log_report(report);
    after_outcome(settings, rt, hooks::HookEvent::from_report(report))
}

/// What every recorded outcome triggers once status.json holds it: the metrics textfile
/// is rewritten now; the account's hook, if the outcome calls for one, is returned for
/// [`run_hook`]. Neither can change the outcome.
fn after_outcome(settings: &Settings, rt: &Runtime<'_>, event: hooks::HookEvent) -> Option<hooks::HookEvent> {
    metrics::update(settings, rt.mem);
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
