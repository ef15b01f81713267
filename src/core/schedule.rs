//! Per-account scheduling state: an enum with guarded transitions plus the backoff and
//! quarantine rules. Pure (time and jitter are parameters), persisted as
//! `state_dir/accounts/<name>/schedule.json` so a restart shows the same state.

use crate::core::authfile::{AuthFacts, AuthMode};
use crate::core::outcome::{FailureClass, Outcome, Report};
use crate::core::policy::{self, Decision, Thresholds};
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

    /// The state a `State` property value names (None: a value this build does not know).
    pub fn parse(s: &str) -> Option<State> {
        const ALL: [State; 7] = [
            State::Ok,
            State::Refreshing,
            State::Stale,
            State::FailedTransient,
            State::FailedPermanent,
            State::Inert,
            State::Unsafe,
        ];
        ALL.into_iter().find(|st| st.as_str() == s)
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

/// The jitter that gives the longest backoff: what a deadline's bound is computed with.
const LONGEST: f64 = 1.0;

/// The growing interval's step that reaches BACKOFF_CAP (60 s · 2⁶ ≥ 1 h).
const STEP_AT_CAP: u32 = 7;

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
    /// The credential as the last run that read it found it (access-token expiry, last
    /// refresh): what bounds a fine account's next look after a clock step (`clamp`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_refresh: Option<DateTime<Utc>>,
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

    /// The latest its own rule lets this schedule's next look be, seen from `now`: a backoff
    /// for its failure count (or its growing interval) at the longest jitter, the next
    /// quarantine probe, or the credential's due time while it is fine. None: no deadline of
    /// its own (in a run, or inert).
    pub fn latest_wake(&self, now: DateTime<Utc>, thresholds: &Thresholds) -> Option<DateTime<Utc>> {
        match self.state {
            State::Refreshing | State::Inert => None,
            State::FailedPermanent => Some(now + QUARANTINE_PROBE),
            State::FailedTransient | State::Unsafe => Some(now + backoff(self.failures, LONGEST)),
            State::Ok | State::Stale if self.overdue > 0 => Some(now + backoff(self.overdue, LONGEST)),
            State::Ok | State::Stale => Some(self.credential_due(thresholds, now)),
        }
    }

    /// Deadlines are absolute wall-clock times: one set before the clock stepped back (NTP
    /// correcting a clock that ran ahead, a VM restored from a snapshot) can lie days beyond
    /// what its rule allows, and the account would wait that long while its token expires.
    /// Such a deadline is set again as its rule sets it now (a new backoff with `jitter` in
    /// [0, 1), the next probe, the credential's due time). A deadline within its bound is
    /// left alone: a step forward changes nothing here (what it makes due runs once, bounded
    /// by max_parallel), and the failure count and growing interval are kept, so a clamped
    /// account goes on at the rate it had. Every bound moves forward with `now`, so a
    /// clamped deadline is not clamped again. Returns whether anything changed.
    pub fn clamp(&mut self, now: DateTime<Utc>, thresholds: &Thresholds, jitter: f64) -> bool {
        let Some(latest) = self.latest_wake(now, thresholds) else { return false };
        let again = match self.state {
            State::FailedPermanent => now + QUARANTINE_PROBE,
            State::FailedTransient | State::Unsafe => now + backoff(self.failures, jitter),
            _ if self.overdue > 0 => now + backoff(self.overdue, jitter),
            _ => latest,
        };
        let deadline = match self.state {
            State::FailedPermanent => &mut self.next_probe,
            _ => &mut self.next_attempt,
        };
        match deadline {
            Some(t) if *t > latest => {
                *t = again;
                true
            }
            _ => false,
        }
    }

    /// The credential's own due time by the policy, from what the last run learned of it. A
    /// last_refresh later than `now` was written before the clock stepped back and counts as
    /// `now`, so it defers nothing beyond max_age (the expiry, an absolute time from the
    /// issuer, is unaffected by our steps). Knowing neither: `now + max_age`, so a schedule
    /// without them gets the account looked at within max_age, not at once and again.
    pub fn credential_due(&self, thresholds: &Thresholds, now: DateTime<Utc>) -> DateTime<Utc> {
        let max_age = Duration::from_std(thresholds.max_age).unwrap_or(Duration::MAX);
        let unknown = now.checked_add_signed(max_age).unwrap_or(DateTime::<Utc>::MAX_UTC);
        if self.expires_at.is_none() && self.last_refresh.is_none() {
            return unknown;
        }
        due_by_policy(self.expires_at, self.last_refresh.map(|t| t.min(now)), thresholds, now).unwrap_or(unknown)
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
                (self.expires_at, self.last_refresh) = (report.expires_at, report.last_refresh);
                self.next_attempt = match becomes_due(report, thresholds, now) {
                    Some(t) if t > now => Some(t),
                    // Due already and still so after this run: a follower waiting for the
                    // refresher (which may be down for a day) or a server handing out tokens
                    // shorter-lived than refresh_before_expiry. Look again, less and less often.
                    // A token handed out just now that has expired already says this clock runs
                    // ahead of the issuer's (a step forward): refreshing sooner cannot make it
                    // look fresh, so wait as long as the growing interval ever does.
                    Some(_) => {
                        let ahead = report.outcome == Outcome::Refreshed && report.expires_at.is_some_and(|e| e <= now);
                        self.overdue = if ahead { (overdue + 1).max(STEP_AT_CAP) } else { overdue + 1 };
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
}

/// When the credential described by `report` becomes due by the refresh policy (`now` when
/// it is due already; None when it never is).
fn becomes_due(report: &Report, thresholds: &Thresholds, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    due_by_policy(report.expires_at, report.last_refresh, thresholds, now)
}

fn due_by_policy(
    expires_at: Option<DateTime<Utc>>,
    last_refresh: Option<DateTime<Utc>>,
    thresholds: &Thresholds,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let facts =
        AuthFacts { mode: AuthMode::ChatGpt, has_refresh_token: true, access_expires_at: expires_at, last_refresh };
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
    use crate::core::outcome::Failure;
    use proptest::prelude::*;

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

    const DAY: i64 = 86400;

    fn failing(n: u32, class: fn(&'static str) -> Failure, now: DateTime<Utc>) -> Schedule {
        let mut s = Schedule::default();
        for _ in 0..n {
            s.begin().unwrap();
            s.finish(&Report::failed("a", class("x")), &th(), None, now, 0.5).unwrap();
        }
        s
    }

    #[test]
    fn a_deadline_set_before_the_clock_stepped_back_is_set_again_by_its_rule() {
        // Set while the clock read 30 days ahead; now it reads at(0).
        let ahead = at(30 * DAY);
        let mut s = failing(9, Failure::transient, ahead);
        assert_eq!(s.next_attempt, Some(ahead + BACKOFF_CAP));
        assert!(s.clamp(at(0), &th(), 0.5));
        assert_eq!((s.next_attempt, s.failures), (Some(at(3600)), 9), "a new capped backoff; the count is kept");
        assert!(!s.clamp(at(0), &th(), 0.5), "a clamped deadline stays");
        assert!(!s.clamp(at(1800), &th(), 0.5), "and time passing does not clamp it again");

        let mut q = failing(1, Failure::permanent, ahead);
        assert!(q.clamp(at(0), &th(), 0.5));
        assert_eq!(q.wakes_at(), Some(at(900)), "the next quarantine probe");

        // A credential that stays due (a follower waiting): its growing interval, kept.
        let mut waiting = Report::new("a", Outcome::Fresh, "due, but this host follows the fleet");
        (waiting.expires_at, waiting.last_refresh) = (Some(at(0)), Some(at(0)));
        let mut w = Schedule::default();
        for _ in 0..3 {
            w.begin().unwrap();
            w.finish(&waiting, &th(), None, ahead, 0.5).unwrap();
        }
        assert!(w.clamp(at(0), &th(), 0.0));
        assert_eq!((w.next_attempt, w.overdue), (Some(at(192)), 3), "240 s with -20 % jitter");

        // Fine, due by max_age from a last_refresh written 30 days "later": from now instead.
        let mut fine = Report::new("a", Outcome::Refreshed, "");
        fine.last_refresh = Some(ahead);
        let mut f = Schedule::default();
        f.begin().unwrap();
        f.finish(&fine, &th(), None, ahead, 0.5).unwrap();
        assert_eq!(f.next_attempt, Some(ahead + Duration::days(7)));
        assert!(f.clamp(at(0), &th(), 0.5));
        assert_eq!(f.next_attempt, Some(at(7 * DAY)));
        // The expiry is the issuer's absolute time: a due time by it is never clamped.
        let mut r = ok_report();
        (r.expires_at, r.last_refresh) = (Some(at(3 * DAY)), Some(ahead));
        f.begin().unwrap();
        f.finish(&r, &th(), None, at(DAY), 0.5).unwrap();
        assert_eq!(f.next_attempt, Some(at(2 * DAY)));
        assert!(!f.clamp(at(0), &th(), 0.5));
    }

    #[test]
    fn a_step_forward_moves_no_deadline() {
        let mut s = failing(9, Failure::transient, at(0));
        let before = s.clone();
        assert!(!s.clamp(at(30 * DAY), &th(), 0.5));
        assert_eq!(s, before);
        assert!(s.is_due(at(30 * DAY), false), "it is due once");
        let mut ok = Schedule::default();
        ok.begin().unwrap();
        ok.finish(&ok_report(), &th(), None, at(0), 0.5).unwrap();
        assert!(!ok.clamp(at(30 * DAY), &th(), 0.5));
    }

    #[test]
    fn a_schedule_that_knows_nothing_of_its_credential_waits_at_most_max_age() {
        let mut s = Schedule { state: State::Ok, next_attempt: Some(at(60 * DAY)), ..Default::default() };
        assert!(s.clamp(at(0), &th(), 0.5));
        assert_eq!(s.next_attempt, Some(at(7 * DAY)));
        // An inert account or one in a run has no deadline to clamp.
        for state in [State::Inert, State::Refreshing] {
            let mut s = Schedule { state, next_attempt: Some(at(60 * DAY)), ..Default::default() };
            assert!(!s.clamp(at(0), &th(), 0.5));
        }
    }

    #[test]
    fn a_token_that_arrives_expired_waits_as_long_as_the_growing_interval_ever_does() {
        // The clock runs 30 days ahead of the issuer: the token it just minted looks expired.
        let mut r = Report::new("a", Outcome::Refreshed, "");
        (r.expires_at, r.last_refresh) = (Some(at(5 * DAY)), Some(at(30 * DAY)));
        let mut s = Schedule::default();
        s.begin().unwrap();
        s.finish(&r, &th(), None, at(30 * DAY), 0.5).unwrap();
        assert_eq!((s.next_attempt, s.overdue), (Some(at(30 * DAY) + BACKOFF_CAP), STEP_AT_CAP));
        assert!(backoff(STEP_AT_CAP - 1, 0.5) < BACKOFF_CAP, "the first step at the cap");
        assert_eq!(backoff(STEP_AT_CAP, 0.5), BACKOFF_CAP);
        // A short-lived token that has not expired yet still starts at a minute.
        r.expires_at = Some(at(30 * DAY + 3600));
        let mut s = Schedule::default();
        s.begin().unwrap();
        s.finish(&r, &th(), None, at(30 * DAY), 0.5).unwrap();
        assert_eq!(s.next_attempt, Some(at(30 * DAY + 60)));
    }

    fn report_strategy() -> impl Strategy<Value = Report> {
        let t = proptest::option::of((-40 * DAY..40 * DAY).prop_map(at));
        (0u8..6, t.clone(), t).prop_map(|(kind, exp, lr)| {
            let mut r = match kind {
                0 => Report::new("a", Outcome::Refreshed, ""),
                1 => Report::new("a", Outcome::Fresh, ""),
                2 => Report::failed("a", Failure::transient("503")),
                3 => Report::failed("a", Failure::permanent("reused")),
                4 => Report::failed("a", Failure::unsafe_file("symlink")),
                _ => Report::new("a", Outcome::Inert, ""),
            };
            (r.expires_at, r.last_refresh) = (exp, lr);
            r
        })
    }

    proptest! {
        /// Whatever ran before and however far the clock then steps, the next wake-up is
        /// never later than the longest rule (capped backoff with jitter) or the
        /// credential's own due time, after now; and the clamp makes nothing due at once
        /// unless the credential is.
        #[test]
        fn after_any_step_the_next_wake_up_is_within_its_rule_or_the_credential_due_time(
            runs in proptest::collection::vec((report_strategy(), 0.0f64..1.0), 1..12),
            step in -60 * DAY..60 * DAY,
            jitter in 0.0f64..1.0,
        ) {
            let (mut s, t0) = (Schedule::default(), at(0));
            let mut known = (None, None);
            for (r, j) in &runs {
                s.begin().unwrap();
                s.finish(r, &th(), None, t0, *j).unwrap();
                if r.failure.is_none() && r.outcome != Outcome::Inert {
                    known = (r.expires_at, r.last_refresh);
                }
            }
            let now = t0 + Duration::seconds(step);
            let before = s.clone();
            let changed = s.clamp(now, &th(), jitter);
            // The credential's due time, worked out apart from the code under test.
            let credential = match known {
                (None, None) => now + Duration::days(7),
                (exp, lr) => [exp.map(|e| e - Duration::days(1)), lr.map(|l| l.min(now) + Duration::days(7))]
                    .into_iter().flatten().min().unwrap(),
            };
            let bound = (now + BACKOFF_CAP * 6 / 5).max(credential);
            if let Some(w) = s.wakes_at() {
                prop_assert!(w <= bound, "wakes at {w}, bound {bound} ({s:?})");
            }
            if changed {
                let w = s.wakes_at().unwrap();
                prop_assert!(before.wakes_at().unwrap() > w, "a clamp only moves a deadline nearer");
                prop_assert!(w > now || credential <= now, "made due at once: {s:?}");
            } else {
                prop_assert_eq!(&s, &before);
            }
            // Settled: neither the same instant nor later ones move it again.
            prop_assert!(!s.clone().clamp(now, &th(), jitter));
            prop_assert!(!s.clone().clamp(now + Duration::minutes(30), &th(), jitter));
            prop_assert_eq!((s.failures, s.overdue, s.state), (before.failures, before.overdue, before.state));
        }
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
