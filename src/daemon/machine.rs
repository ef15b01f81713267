//! Per-account scheduling state: an enum with guarded transitions plus the backoff and
//! quarantine rules. Pure (time and jitter are parameters), persisted as
//! `state_dir/accounts/<name>/schedule.json` so a restart shows the same state.

use crate::authfile::{AuthFacts, AuthMode};
use crate::outcome::{FailureClass, Outcome, Report};
use crate::policy::{self, Decision, Thresholds};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// The `State` property values from the contract.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Ok,
    Refreshing,
    /// Not checked yet (or interrupted): we do not know whether it is fine.
    #[default]
    Stale,
    FailedTransient,
    FailedPermanent,
    Inert,
    Unsafe,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Refreshing => "refreshing",
            State::Stale => "stale",
            State::FailedTransient => "failed_transient",
            State::FailedPermanent => "failed_permanent",
            State::Inert => "inert",
            State::Unsafe => "unsafe",
        }
    }
}

/// A refused transition (a bug or a race in the caller, never silently applied).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("illegal state transition {from:?} -> {to:?}")]
pub struct IllegalTransition {
    pub from: State,
    pub to: State,
}

/// What a permanent failure looked like; the quarantine lifts when either hash changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    pub auth_sha256: Option<String>,
    pub seed_sha256: Option<String>,
}

/// Whether a requested run may go ahead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    Run,
    /// Permanent failure: only a changed auth.json or seed lifts it.
    Quarantined(Quarantine),
    /// Transient failure: wait until then unless forced.
    BackingOff(DateTime<Utc>),
}

/// Backoff after transient failures: ≈1 min doubling to a 1 h cap, ±20 % jitter.
pub const BACKOFF_FIRST: Duration = Duration::seconds(60);
pub const BACKOFF_CAP: Duration = Duration::seconds(3600);

/// How often a quarantined account is looked at: a dry run as its user that only hashes
/// auth.json and the seed (no token request), so a new login lifts the quarantine within
/// minutes instead of at the next refresh timer.
pub const QUARANTINE_PROBE: Duration = Duration::minutes(15);

/// `jitter` in [0, 1) spreads retries over ±20 %.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(12);
    let base = (BACKOFF_FIRST * 2i32.pow(exp)).min(BACKOFF_CAP);
    let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
    Duration::milliseconds((base.num_milliseconds() as f64 * factor) as i64)
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Schedule {
    pub state: State,
    /// When the daemon runs this account next on its own (None: only on request).
    pub next_attempt: Option<DateTime<Utc>>,
    pub failures: u32,
    pub quarantine: Option<Quarantine>,
    /// Runs in a row that found the credential due and left it so (a fleet follower waiting
    /// for the refresher's rotation): the next look backs off like a failure would.
    #[serde(skip_serializing_if = "is_zero")]
    pub overdue: u32,
    /// When a quarantined account's files are looked at next (see QUARANTINE_PROBE).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_probe: Option<DateTime<Utc>>,
}

impl Schedule {
    /// A state loaded from disk: an interrupted run counts as not checked.
    pub fn loaded(mut self) -> Schedule {
        if self.state == State::Refreshing {
            self.state = State::Stale;
        }
        if self.state == State::FailedPermanent && self.next_probe.is_none() {
            // Quarantined by an older version: look at the files at once.
            self.next_probe = Some(DateTime::<Utc>::UNIX_EPOCH);
        }
        self
    }

    /// When the daemon wants to look at this account next on its own.
    pub fn wakes_at(&self) -> Option<DateTime<Utc>> {
        match self.state {
            State::Refreshing => None,
            State::FailedPermanent => self.next_probe,
            _ => self.next_attempt,
        }
    }

    /// Does the schedule say "now"? `all_unchecked`: also accounts never checked since start.
    pub fn is_due(&self, now: DateTime<Utc>, all_unchecked: bool) -> bool {
        match self.state {
            State::Refreshing => false,
            State::FailedPermanent => self.next_probe.is_some_and(|t| t <= now),
            State::Stale if all_unchecked => true,
            _ => {
                self.next_attempt.is_some_and(|t| t <= now)
                    || (all_unchecked && self.next_attempt.is_none() && self.state != State::Inert)
            }
        }
    }

    /// A quarantined account was looked at and nothing changed: next look later.
    pub fn probed(&mut self, now: DateTime<Utc>) {
        if self.state == State::FailedPermanent {
            self.next_probe = Some(now + QUARANTINE_PROBE);
        }
    }

    fn go(&mut self, to: State) -> Result<(), IllegalTransition> {
        let from = self.state;
        let ok = match (from, to) {
            (State::Refreshing, State::Refreshing) => false,
            (_, State::Refreshing) => true,
            (State::Refreshing, _) => true,
            (State::Stale, State::Stale) => true,
            _ => false,
        };
        if !ok {
            return Err(IllegalTransition { from, to });
        }
        self.state = to;
        Ok(())
    }

    /// May a run start now?
    pub fn gate(&self, now: DateTime<Utc>, force: bool) -> Gate {
        if let (State::FailedPermanent, Some(q)) = (self.state, &self.quarantine) {
            return Gate::Quarantined(q.clone());
        }
        match self.next_attempt {
            Some(t) if !force && self.state == State::FailedTransient && t > now => Gate::BackingOff(t),
            _ => Gate::Run,
        }
    }

    /// A run starts.
    pub fn begin(&mut self) -> Result<(), IllegalTransition> {
        self.go(State::Refreshing)
    }

    /// A run ended with `report`. `seed_sha256` is the seed file's hash now (for the
    /// quarantine); `jitter` in [0, 1).
    pub fn finish(
        &mut self,
        report: &Report,
        thresholds: &Thresholds,
        seed_sha256: Option<String>,
        now: DateTime<Utc>,
        jitter: f64,
    ) -> Result<(), IllegalTransition> {
        let to = match (report.outcome, report.class()) {
            (Outcome::Refreshed | Outcome::Fresh, _) => State::Ok,
            (Outcome::Inert, _) => State::Inert,
            (Outcome::WouldRefresh, _) => State::Stale,
            (Outcome::Failed, Some(FailureClass::Permanent)) => State::FailedPermanent,
            (Outcome::Failed, Some(FailureClass::Unsafe)) => State::Unsafe,
            (Outcome::Failed, _) => State::FailedTransient,
        };
        self.go(to)?;
        self.quarantine = None;
        self.next_attempt = None;
        self.next_probe = None;
        let overdue = std::mem::take(&mut self.overdue);
        match to {
            State::Ok | State::Stale => {
                self.failures = 0;
                self.next_attempt = match becomes_due(report, thresholds, now) {
                    Some(t) if t > now => Some(t),
                    // Due already and still so after this run: a follower waiting for the
                    // refresher (which may be down for a day) or a server handing out tokens
                    // shorter-lived than refresh_before_expiry. Look again, less and less often.
                    Some(_) => {
                        self.overdue = overdue + 1;
                        Some(now + backoff(self.overdue, jitter))
                    }
                    None => None,
                };
            }
            State::Inert => self.failures = 0,
            State::FailedPermanent => {
                self.failures += 1;
                self.quarantine = Some(Quarantine { auth_sha256: report.auth_sha256.clone(), seed_sha256 });
                self.next_probe = Some(now + QUARANTINE_PROBE);
            }
            State::FailedTransient | State::Unsafe => {
                self.failures += 1;
                self.next_attempt = Some(now + backoff(self.failures, jitter));
            }
            State::Refreshing => unreachable!("finish never goes to refreshing"),
        }
        Ok(())
    }

    /// A run that was not started after all (quarantine or backoff answered it).
    pub fn cancel(&mut self, back_to: State) {
        self.state = back_to;
    }
}

/// When the credential described by `report` becomes due by the refresh policy (`now` when
/// it is due already; None when it never is).
fn becomes_due(report: &Report, thresholds: &Thresholds, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let facts = AuthFacts {
        mode: AuthMode::ChatGpt,
        has_refresh_token: true,
        access_expires_at: report.expires_at,
        last_refresh: report.last_refresh,
    };
    match policy::decide(&facts, thresholds, now, false) {
        Decision::Fresh { due_at } => Some(due_at),
        Decision::Refresh(_) => Some(now),
        Decision::Inert(_) => None,
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The one-line STATUS= / Summary text, e.g.
/// "3 accounts: 2 ok, 1 failed_permanent (bob); next refresh 2026-11-23 10:00 UTC".
pub fn summary<'a>(accounts: impl IntoIterator<Item = (&'a str, &'a Schedule)>, problem: Option<&str>) -> String {
    let mut counts: std::collections::BTreeMap<&'static str, Vec<&str>> = Default::default();
    let mut next: Option<DateTime<Utc>> = None;
    let mut total = 0;
    for (name, s) in accounts {
        total += 1;
        counts.entry(s.state.as_str()).or_default().push(name);
        if s.state != State::FailedPermanent {
            next = match (next, s.next_attempt) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }
    let order = ["ok", "refreshing", "stale", "inert", "failed_transient", "unsafe", "failed_permanent"];
    let parts: Vec<String> = order
        .iter()
        .filter_map(|k| counts.get(k).map(|names| (k, names)))
        .map(|(k, names)| match *k {
            "ok" | "inert" | "refreshing" | "stale" => format!("{} {k}", names.len()),
            _ => format!("{} {k} ({})", names.len(), names.join(", ")),
        })
        .collect();
    let mut s = format!("{total} account{}", if total == 1 { "" } else { "s" });
    if !parts.is_empty() {
        s.push_str(&format!(": {}", parts.join(", ")));
    }
    if let Some(t) = next {
        s.push_str(&format!("; next refresh {}", t.format("%Y-%m-%d %H:%M UTC")));
    }
    if let Some(p) = problem {
        s.push_str(&format!("; {p}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Failure;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn th() -> Thresholds {
        Thresholds {
            refresh_before_expiry: std::time::Duration::from_secs(86400),
            max_age: std::time::Duration::from_secs(7 * 86400),
        }
    }

    fn ok_report() -> Report {
        let mut r = Report::new("a", Outcome::Refreshed, "");
        r.expires_at = Some(at(10 * 86400));
        r.last_refresh = Some(at(0));
        r
    }

    #[test]
    fn transitions_are_guarded() {
        let mut s = Schedule::default();
        s.begin().unwrap();
        assert_eq!(s.begin(), Err(IllegalTransition { from: State::Refreshing, to: State::Refreshing }));
        s.finish(&ok_report(), &th(), None, at(0), 0.5).unwrap();
        assert_eq!(s.state, State::Ok);
        // finishing without having begun is refused
        assert!(s.finish(&ok_report(), &th(), None, at(0), 0.5).is_err());
        assert_eq!(Schedule { state: State::Refreshing, ..Default::default() }.loaded().state, State::Stale);
    }

    #[test]
    fn ok_schedules_the_due_time() {
        let mut s = Schedule::default();
        s.begin().unwrap();
        s.finish(&ok_report(), &th(), None, at(0), 0.5).unwrap();
        // expires at +10d, refresh 1d before → +9d; max_age 7d after last_refresh → +7d
        assert_eq!(s.next_attempt, Some(at(7 * 86400)));
        assert_eq!(s.gate(at(1), false), Gate::Run);
    }

    #[test]
    fn transient_failures_back_off_exponentially_to_a_cap() {
        let mut s = Schedule::default();
        let mut delays = vec![];
        for _ in 0..9 {
            s.begin().unwrap();
            s.finish(&Report::failed("a", Failure::transient("503")), &th(), None, at(0), 0.5).unwrap();
            delays.push((s.next_attempt.unwrap() - at(0)).num_seconds());
        }
        assert_eq!(delays, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert!(matches!(s.gate(at(10), false), Gate::BackingOff(_)));
        assert_eq!(s.gate(at(10), true), Gate::Run, "force overrides backoff");
        assert_eq!(s.gate(at(3601), false), Gate::Run);
        // jitter stays within ±20 %
        assert_eq!(backoff(1, 0.0).num_seconds(), 48);
        assert_eq!(backoff(1, 0.999_999).num_seconds(), 71);
        s.begin().unwrap();
        s.finish(&ok_report(), &th(), None, at(0), 0.5).unwrap();
        assert_eq!(s.failures, 0);
    }

    #[test]
    fn a_credential_that_stays_due_is_looked_at_less_and_less_often() {
        // A follower whose refresher is down: every run says "due, the refresher refreshes it".
        let mut waiting = Report::new("a", Outcome::Fresh, "due, but this host follows the fleet");
        waiting.expires_at = Some(at(3600));
        waiting.last_refresh = Some(at(-7 * 86400));
        let (mut s, mut delays) = (Schedule::default(), vec![]);
        for _ in 0..8 {
            s.begin().unwrap();
            s.finish(&waiting, &th(), None, at(0), 0.5).unwrap();
            delays.push((s.next_attempt.unwrap() - at(0)).num_seconds());
        }
        assert_eq!(delays, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!((s.state, s.failures), (State::Ok, 0), "waiting is not failing");
        // The rotation arrives: back to the policy's due time, and the next wait starts at 60 s.
        s.begin().unwrap();
        s.finish(&ok_report(), &th(), None, at(0), 0.5).unwrap();
        assert_eq!((s.next_attempt, s.overdue), (Some(at(7 * 86400)), 0));
        s.begin().unwrap();
        s.finish(&waiting, &th(), None, at(0), 0.5).unwrap();
        assert_eq!(s.next_attempt, Some(at(60)));
    }

    #[test]
    fn at_most_twelve_attempts_per_hour_under_persistent_failure() {
        let (mut s, mut now, mut attempts) = (Schedule::default(), at(0), 0);
        while now < at(3600) {
            s.begin().unwrap();
            attempts += 1;
            s.finish(&Report::failed("a", Failure::transient("503")), &th(), None, now, 0.0).unwrap();
            now = s.next_attempt.unwrap();
        }
        assert!(attempts <= 12, "{attempts}");
    }

    #[test]
    fn permanent_failure_quarantines_even_forced_runs() {
        let mut s = Schedule::default();
        s.begin().unwrap();
        let mut r = Report::failed("a", Failure::permanent("reused"));
        r.auth_sha256 = Some("h1".into());
        s.finish(&r, &th(), Some("seed1".into()), at(0), 0.5).unwrap();
        let q = Quarantine { auth_sha256: Some("h1".into()), seed_sha256: Some("seed1".into()) };
        assert_eq!(s.gate(at(86400), true), Gate::Quarantined(q));
        assert_eq!(s.next_attempt, None);
    }

    #[test]
    fn a_quarantined_account_is_probed_every_quarter_hour_and_never_otherwise_due() {
        let mut s = Schedule::default();
        s.begin().unwrap();
        s.finish(&Report::failed("a", Failure::permanent("reused")), &th(), None, at(0), 0.5).unwrap();
        assert_eq!(s.wakes_at(), Some(at(900)));
        assert!(!s.is_due(at(899), true));
        assert!(s.is_due(at(900), false));
        s.probed(at(900));
        assert_eq!(s.wakes_at(), Some(at(1800)));
        assert!(!s.is_due(at(1000), true));
        // a state saved before probes existed is looked at once at start
        let old = Schedule { state: State::FailedPermanent, ..Default::default() }.loaded();
        assert!(old.is_due(at(0), false));
        // any other outcome ends the probing
        s.begin().unwrap();
        s.finish(&ok_report(), &th(), None, at(2000), 0.5).unwrap();
        assert_eq!(s.next_probe, None);
        assert_eq!(s.wakes_at(), s.next_attempt);
    }

    #[test]
    fn summary_line() {
        let ok = Schedule { state: State::Ok, next_attempt: Some(at(3600)), ..Default::default() };
        let bad = Schedule { state: State::FailedPermanent, ..Default::default() };
        let s = summary([("alice", &ok), ("carol", &ok), ("bob", &bad)], None);
        assert_eq!(s, "3 accounts: 2 ok, 1 failed_permanent (bob); next refresh 2027-01-15 09:00 UTC");
        assert_eq!(summary([], Some("config error: x")), "0 accounts; config error: x");
    }
}
