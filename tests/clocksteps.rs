//! Clock steps end to end (issue #11, "Time"): the daemon's real scheduling core
//! (`daemon::core::Core`) drives real refresh cycles against the mock while the test steps
//! the daemon's wall clock away from true time, which is the mock's clock (it mints the
//! tokens and their expiry). The cases: an NTP correction of a clock that ran 30 days
//! ahead, with the daemon running or restarted after it; a clock that jumps 30 days ahead
//! and back; a paused or restored VM whose clock catches up 30 days at once.
//!
//! The loop is the daemon's main loop (src/daemon/mod.rs) with a settable clock, as in
//! tests/faultrate.rs: wait until `next_wakeup()` (at most an hour), kick what is `due`,
//! wait until nothing is in flight; plus the shipped refresh timer (RefreshAll every 6 h of
//! true time: systemd timers are monotonic). After a step the loop looks again at once, as
//! the daemon does (its wall-clock alarm ends a wait when the clock is set). The cycles run
//! in this process with the simulated clock (see tests/faultrate.rs).

mod support;

use chrono::{DateTime, Duration as Span, Utc};
use codex_auth_agent::config::{self, Env};
use codex_auth_agent::core::clock::Clock;
use codex_auth_agent::core::schedule::{BACKOFF_CAP, QUARANTINE_PROBE, State};
use codex_auth_agent::daemon::core::{Core, Event};
use mock_openai::{Fault, MockConfig, MockServer, decode_jwt_payload};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::sim::{Acct, SimClock};
use support::*;

/// The daemon's longest wait between looks at the schedule (daemon::MAX_SLEEP).
const MAX_SLEEP: Span = Span::hours(1);
/// The shipped codex-auth-refresh.timer period (OnUnitActiveSec=6h).
const TIMER: Span = Span::hours(6);
/// Access-token lifetime the mock hands out: a login that expires "in 5 days".
const LIFETIME: Span = Span::days(5);
/// The step of every case.
const STEP: Span = Span::days(30);

struct Sim {
    mock: MockServer,
    /// Holds the homes, config and state_dir.
    _scratch: Scratch,
    config: PathBuf,
    clock: Arc<SimClock>,
    core: Arc<Core>,
    _events: tokio::sync::mpsc::UnboundedReceiver<Event>,
    accounts: Vec<Acct>,
    /// True time of the next RefreshAll.
    next_timer: DateTime<Utc>,
    /// True time of every token request, per mock account id.
    requests: BTreeMap<String, Vec<DateTime<Utc>>>,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

impl Sim {
    /// Accounts `names`, each a fresh login whose last_refresh is the daemon's "now";
    /// `agent` goes into [agent]. The daemon's clock starts `offset` from true time.
    fn new(names: &[&str], agent: &str, offset: Span) -> Sim {
        let cfg = MockConfig { access_lifetime: LIFETIME.to_std().unwrap(), ..MockConfig::default() };
        let (mock, s) = (MockServer::start(cfg), Scratch::new());
        let start: DateTime<Utc> = DateTime::<Utc>::from(mock.now()) + offset;
        let mut body = format!("{agent}\n[defaults]\nrequest_timeout = \"3s\"\npreflight = false\n");
        let mut accounts = Vec::new();
        for n in names {
            let id = format!("acct-{n}");
            // Codex wrote last_refresh with the same (possibly wrong) clock.
            let home = s.codex_home(n, Some(&auth_json(&mock.issue_family(&id), &ts(start))));
            body.push_str(&format!("[accounts.{n}]\nuser = \"{}\"\ncodex_home = \"{}\"\n", me(), home.display()));
            accounts.push(Acct { name: n.to_string(), id, home });
        }
        let config = s.config(&body);
        let clock = Arc::new(SimClock(Mutex::new(start)));
        let (core, events) = Core::new(config.clone(), Self::settings(&mock, &config), clock.clone());
        let next_timer = DateTime::<Utc>::from(mock.now()) + TIMER;
        Sim { mock, _scratch: s, config, clock, core, _events: events, accounts, next_timer, requests: BTreeMap::new() }
    }

    fn settings(mock: &MockServer, config: &std::path::Path) -> config::Settings {
        config::load(config, &Env { token_url_override: Some(mock.token_url()) }).unwrap()
    }

    /// The daemon's clock.
    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// True time.
    fn truth(&self) -> DateTime<Utc> {
        self.mock.now().into()
    }

    /// Time passes: both clocks move by `d`.
    fn advance(&self, d: Span) {
        if d > Span::zero() {
            self.mock.advance_clock(d.to_std().unwrap());
            *self.clock.0.lock().unwrap() += d;
        }
    }

    /// The daemon's clock is set: it jumps by `d`, true time does not.
    fn step(&self, d: Span) {
        *self.clock.0.lock().unwrap() += d;
    }

    /// The daemon stops and starts again on the same config and state_dir (e.g. the
    /// reboot after a VM was restored): schedules come back from schedule.json.
    async fn restart(&mut self) {
        while self.core.busy() > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (core, events) =
            Core::new(self.config.clone(), Self::settings(&self.mock, &self.config), self.clock.clone());
        (self.core, self._events) = (core, events);
        self.next_timer = self.truth() + TIMER;
        self.start().await;
    }

    fn counts(&self) -> BTreeMap<String, u64> {
        support::sim::counts(&self.mock, &self.accounts)
    }

    fn record(&mut self, before: &BTreeMap<String, u64>) {
        let t = self.truth();
        for a in &self.accounts {
            let n = self.mock.token_requests_for(&a.id) - before[&a.id];
            self.requests.entry(a.id.clone()).or_default().extend(std::iter::repeat_n(t, n as usize));
        }
    }

    async fn kick_and_settle(&self, names: Vec<String>) {
        support::sim::kick_and_settle(&self.core, names).await
    }

    /// The daemon starting: every account not checked yet.
    async fn start(&mut self) {
        let before = self.counts();
        let due = self.core.due(self.now(), true);
        self.kick_and_settle(due).await;
        self.record(&before);
    }

    /// Run the daemon loop and the refresh timer for `d` of true time.
    async fn run_for(&mut self, d: Span) {
        let until = self.truth() + d;
        // Looks that find something due without time passing: a schedule that fires again and
        // again would spin here, so it fails instead.
        let mut at_once = 0;
        loop {
            let now = self.now();
            let wake = self.core.next_wakeup().unwrap_or(now + MAX_SLEEP).clamp(now, now + MAX_SLEEP);
            let wait = (wake - now).min(self.next_timer - self.truth());
            at_once = if wait > Span::zero() { 0 } else { at_once + 1 };
            assert!(at_once < 100, "the schedule keeps firing without time passing");
            if self.truth() + wait > until {
                self.advance(until - self.truth());
                return;
            }
            self.advance(wait);
            let before = self.counts();
            if self.truth() >= self.next_timer {
                self.next_timer = self.truth() + TIMER;
                self.core.refresh_all(false).await;
            } else {
                let due = self.core.due(self.now(), false);
                self.kick_and_settle(due).await;
            }
            self.record(&before);
        }
    }

    /// Run in one-minute steps until `name` is in `state`, at most `limit`; how long it took.
    async fn until_state(&mut self, name: &str, state: State, limit: Span) -> Span {
        let from = self.truth();
        while self.state(name) != state.as_str() && self.truth() - from < limit {
            self.run_for(Span::minutes(1)).await;
        }
        self.truth() - from
    }

    fn acct(&self, name: &str) -> &Acct {
        self.accounts.iter().find(|a| a.name == name).unwrap()
    }

    fn state(&self, name: &str) -> String {
        self.core.view(name).unwrap().state.as_str().to_string()
    }

    /// True times of `name`'s token requests at or after `from`.
    fn requests_since(&self, name: &str, from: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let id = &self.acct(name).id;
        self.requests.get(id).map(|v| v.iter().copied().filter(|t| *t >= from).collect()).unwrap_or_default()
    }

    /// Most token requests of `name` in any one-hour window since `from`.
    fn max_per_hour(&self, name: &str, from: DateTime<Utc>) -> usize {
        let t = self.requests_since(name, from);
        t.iter().map(|a| t.iter().filter(|x| *x >= a && **x < *a + Span::hours(1)).count()).max().unwrap_or(0)
    }

    fn tokens(&self, name: &str) -> serde_json::Value {
        read_json(&self.acct(name).home.join("auth.json"))["tokens"].clone()
    }

    /// The `exp` of the access token in `name`'s auth.json.
    fn expiry(&self, name: &str) -> DateTime<Utc> {
        let claims = decode_jwt_payload(self.tokens(name)["access_token"].as_str().unwrap()).unwrap();
        DateTime::from_timestamp(claims["exp"].as_i64().unwrap(), 0).unwrap()
    }

    fn holds_live_token(&self, name: &str) -> bool {
        self.mock.is_live_refresh_token(self.tokens(name)["refresh_token"].as_str().unwrap())
    }

    /// A new login family in `name`'s auth.json (a human logging in again).
    fn login(&self, name: &str, last_refresh: &str) {
        let a = self.acct(name);
        std::fs::write(a.home.join("auth.json"), auth_json(&self.mock.issue_family(&a.id), last_refresh)).unwrap();
    }
}

/// The capped backoff with its jitter: the longest any retry interval is.
fn cap() -> Span {
    BACKOFF_CAP * 6 / 5
}

#[tokio::test]
async fn after_ntp_steps_a_clock_30_days_ahead_back_no_backoff_outlives_the_token() {
    // The daemon's clock runs 30 days ahead: every login looks expired. alice's refresh
    // meets a 503 and backs off; carol's succeeds but the new token looks expired too, so
    // she keeps looking (the growing interval of a credential that stays due).
    let mut sim = Sim::new(&["alice", "carol"], "", STEP);
    sim.mock.set_sticky_fault_for(&sim.acct("alice").id.clone(), Some(Fault::service_unavailable()));
    let t0 = sim.truth();
    sim.start().await;
    sim.run_for(Span::hours(3)).await;
    assert_eq!(sim.state("alice"), State::FailedTransient.as_str());
    println!(
        "clock 30 d ahead, 3 h: alice (503) {} token requests, carol (fresh tokens look expired) {}, most in 1 h {}",
        sim.requests_since("alice", t0).len(),
        sim.requests_since("carol", t0).len(),
        sim.max_per_hour("carol", t0),
    );

    // NTP steps the clock back to true time; the endpoint has recovered.
    sim.step(-STEP);
    sim.mock.set_sticky_fault_for(&sim.acct("alice").id.clone(), None);
    let t1 = sim.truth();
    let expiry: BTreeMap<&str, DateTime<Utc>> = ["alice", "carol"].map(|n| (n, sim.expiry(n))).into();
    // Run until a minute before the earlier expiry.
    let end = *expiry.values().min().unwrap() - Span::minutes(1);
    sim.run_for(end - sim.truth()).await;
    for name in ["alice", "carol"] {
        let after = sim.requests_since(name, t1);
        println!(
            "{name}: after the step back, {} token request(s), first {} h after the step; token expiry was {} h \
                after it",
            after.len(),
            after.first().map_or(-1, |t| (*t - t1).num_hours()),
            (expiry[name] - t1).num_hours(),
        );
        assert!(
            sim.expiry(name) > expiry[name],
            "{name}: no refresh between the step back and the token's expiry at {}",
            expiry[name]
        );
        assert!(sim.holds_live_token(name), "{name}'s file holds the live token");
        assert_eq!(after.len(), 1, "{name}: one refresh, when due by the policy: {after:?}");
        assert_eq!(sim.state(name), State::Ok.as_str());
    }
    assert_eq!(sim.mock.reuse_detections(), 0, "no refresh token was presented twice");
}

#[tokio::test]
async fn a_daemon_restarted_after_the_step_back_keeps_neither_the_old_backoff_nor_the_old_quarantine() {
    // As above, but bob's endpoint says the login is dead (quarantine), and the daemon is
    // restarted after the correction: the deadlines come back from schedule.json.
    let mut sim = Sim::new(&["alice", "bob"], "", STEP);
    sim.mock.set_sticky_fault_for(&sim.acct("alice").id.clone(), Some(Fault::service_unavailable()));
    sim.mock.set_sticky_fault_for(&sim.acct("bob").id.clone(), Some(Fault::refresh_token_expired()));
    sim.start().await;
    sim.run_for(Span::hours(2)).await;
    assert_eq!(sim.state("alice"), State::FailedTransient.as_str());
    assert_eq!(sim.state("bob"), State::FailedPermanent.as_str());

    sim.step(-STEP);
    sim.mock.clear_faults();
    let expiry = sim.expiry("alice");
    sim.restart().await;
    let t1 = sim.truth();
    // A human logs in again on bob: the next quarantine probe notices.
    sim.login("bob", &ts(sim.now()));
    let bob = sim.until_state("bob", State::Ok, QUARANTINE_PROBE + Span::minutes(1)).await;
    assert_eq!(sim.state("bob"), State::Ok.as_str(), "bob's quarantine lifts within a probe interval of the new login");
    let alice = sim.until_state("alice", State::Ok, cap() + Span::minutes(1) - (sim.truth() - t1)).await + bob;
    assert_eq!(sim.state("alice"), State::Ok.as_str(), "alice is looked at within the backoff cap after the restart");
    println!(
        "restarted after the step back: bob's quarantine lifted after {} min, alice looked at after {} min",
        bob.num_minutes(),
        alice.num_minutes()
    );
    sim.run_for(expiry - Span::minutes(1) - sim.truth()).await;
    assert!(sim.expiry("alice") > expiry, "alice: no refresh before the token's expiry at {expiry}");
    for name in ["alice", "bob"] {
        assert!(sim.holds_live_token(name), "{name}'s file holds the live token");
        assert!(sim.requests_since(name, t1).len() <= 1, "{name}: {:?}", sim.requests_since(name, t1));
    }
    assert_eq!(sim.mock.reuse_detections(), 0);
}

#[tokio::test]
async fn a_clock_that_jumps_30_days_ahead_and_back_refreshes_each_account_about_hourly_not_in_a_burst() {
    let names = ["alice", "bob", "carol"];
    let mut sim = Sim::new(&names, "", Span::zero());
    sim.start().await;
    assert!(names.iter().all(|n| sim.requests_since(n, sim.truth() - Span::days(1)).is_empty()), "fresh logins");
    // The clock jumps ahead (a bad NTP server, a wrong RTC): every token looks expired, and
    // so does every new one the endpoint hands out.
    sim.step(STEP);
    let t0 = sim.truth();
    sim.run_for(Span::hours(6)).await;
    for name in names {
        let (all, worst) = (sim.requests_since(name, t0), sim.max_per_hour(name, t0));
        let first = all.iter().filter(|t| **t < t0 + Span::hours(1)).count();
        println!(
            "{name}, clock 30 d ahead for 6 h: {} token requests, {first} in the first hour, most in 1 h {worst}",
            all.len()
        );
        assert!(first <= 2, "{name}: {first} refreshes in the first hour after the jump: {all:?}");
        // Looks at least 48 min apart, and the 6 h timer's run, which may come minutes after
        // one of them: at most 3 in an hour, 9 in 6 h.
        assert!(worst <= 3 && all.len() <= 9, "{name}: {all:?}");
        assert!(sim.holds_live_token(name));
    }
    // It is corrected: each account is refreshed once, before its token expires.
    sim.step(-STEP);
    let t1 = sim.truth();
    let expiry: Vec<_> = names.iter().map(|n| sim.expiry(n)).collect();
    sim.run_for(*expiry.iter().min().unwrap() - Span::minutes(1) - t1).await;
    for (name, exp) in names.iter().zip(expiry) {
        let after = sim.requests_since(name, t1);
        assert!(sim.expiry(name) > exp, "{name}: not refreshed before its token's expiry at {exp}");
        assert_eq!(after.len(), 1, "{name}: {after:?}");
        assert!(sim.holds_live_token(name));
    }
    assert_eq!(sim.mock.reuse_detections(), 0);
}

#[tokio::test]
async fn a_vm_paused_30_days_refreshes_each_account_once_at_most_max_parallel_at_a_time() {
    // max_parallel 2; dave's endpoint fails throughout, so his failure counter is at the cap.
    let names = ["alice", "bob", "carol", "dave", "erin", "frank"];
    let mut sim = Sim::new(&names, "max_parallel = 2", Span::zero());
    sim.mock.set_sticky_fault_for(&sim.acct("dave").id.clone(), Some(Fault::service_unavailable()));
    sim.login("dave", OLD);
    sim.start().await;
    sim.run_for(Span::hours(6)).await;
    assert_eq!(sim.state("dave"), State::FailedTransient.as_str());
    // The VM is paused (or restored from a snapshot): 30 days pass, its clock stands still;
    // every token has expired meanwhile. Then the guest clock is stepped to true time.
    sim.mock.advance_clock(STEP.to_std().unwrap());
    let latency = Duration::from_millis(200);
    sim.mock.set_latency(latency);
    let log_from = sim.mock.requests_log().len();
    sim.step(STEP);
    let t1 = sim.truth();
    sim.run_for(Span::hours(1)).await;
    for name in names.iter().filter(|n| **n != "dave") {
        assert_eq!(sim.requests_since(name, t1).len(), 1, "{name}: one refresh after the step");
        assert!(sim.holds_live_token(name), "{name}");
        assert_eq!(sim.state(name), State::Ok.as_str());
    }
    let dave = sim.requests_since("dave", t1);
    assert!(dave.len() <= 2, "dave keeps his backoff level after the step: {dave:?}");
    // Answers come after the latency: with at most 2 requests at a time, any 3 in a row
    // span at least one latency.
    let mut at: Vec<_> = sim.mock.requests_log()[log_from..].iter().map(|e| e.at).collect();
    at.sort();
    let tightest = at.windows(3).map(|w| w[2].duration_since(w[0]).unwrap()).min().unwrap();
    println!("after a 30 d pause: {} token requests, tightest 3 in a row {tightest:?}", at.len());
    assert!(tightest >= latency - Duration::from_millis(5), "more than max_parallel requests at once: {tightest:?}");
    // The next day: nothing more for the healthy accounts, dave at his capped rate.
    sim.mock.set_latency(Duration::ZERO);
    sim.run_for(Span::hours(24)).await;
    for name in names.iter().filter(|n| **n != "dave") {
        assert_eq!(sim.requests_since(name, t1).len(), 1, "{name}");
    }
    assert!(sim.max_per_hour("dave", t1) <= 2);
    let gaps: Vec<_> = sim.requests_since("dave", t1).windows(2).map(|w| w[1] - w[0]).collect();
    println!(
        "dave (503 throughout) after the step: {} requests in 25 h, gaps {:?} min",
        gaps.len() + 1,
        gaps.iter().map(|g| g.num_minutes()).collect::<Vec<_>>()
    );
    assert!(gaps.iter().all(|g| *g >= BACKOFF_CAP * 4 / 5 && *g <= cap()), "dave's retries at the cap: {gaps:?}");
    assert_eq!(sim.mock.reuse_detections(), 0);
}
