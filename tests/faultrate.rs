//! Endpoint-fault rate end to end: the daemon's real scheduling core (`daemon::core::Core`)
//! drives real refresh cycles against the mock over simulated hours. The loop below is the
//! daemon's main loop (src/daemon/mod.rs) with a settable clock: sleep until
//! `next_wakeup()` (at most an hour), kick what is `due`, wait until nothing is in flight;
//! plus the shipped refresh timer (`codex-authctl refresh --all` = RefreshAll every 6 h).
//! The cycles run in this process (the account is the invoking user's, and this process
//! never calls `always_use_workers`), so they read the simulated clock too; a daemon's
//! worker runs the same `Task::run`.

mod support;

use chrono::{DateTime, Duration as Span, Utc};
use codex_auth_agent::config::{self, Env};
use codex_auth_agent::core::clock::Clock;
use codex_auth_agent::core::schedule::{BACKOFF_CAP, QUARANTINE_PROBE, State};
use codex_auth_agent::daemon::core::{Core, Event};
use mock_openai::{Credentials, Fault, MockConfig, MockServer};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use support::sim::{Acct, SimClock};
use support::*;

/// The daemon's longest sleep between looks at the schedule (daemon::MAX_SLEEP).
const MAX_SLEEP: Span = Span::hours(1);
/// The shipped codex-auth-refresh.timer period (OnUnitActiveSec=6h).
const TIMER: Span = Span::hours(6);
/// The issue's ceiling under a persistent endpoint fault.
const MAX_PER_HOUR: usize = 12;

struct Sim {
    mock: MockServer,
    s: Scratch,
    clock: Arc<SimClock>,
    core: Arc<Core>,
    _events: tokio::sync::mpsc::UnboundedReceiver<Event>,
    accounts: Vec<Acct>,
    next_timer: DateTime<Utc>,
    /// Simulated time of every token request, per mock account id.
    requests: BTreeMap<String, Vec<DateTime<Utc>>>,
}

impl Sim {
    /// Accounts `names` (each a due login of its own), `defaults` added to [defaults].
    fn new(names: &[&str], defaults: &str) -> Sim {
        let (mock, s) = (MockServer::start(MockConfig::default()), Scratch::new());
        let mut body = format!("[defaults]\nrequest_timeout = \"3s\"\npreflight = false\n{defaults}\n");
        let mut accounts = Vec::new();
        for n in names {
            let id = format!("acct-{n}");
            let home = s.codex_home(n, Some(&auth_json(&mock.issue_family(&id), OLD)));
            body.push_str(&format!("[accounts.{n}]\nuser = \"{}\"\ncodex_home = \"{}\"\n", me(), home.display()));
            accounts.push(Acct { name: n.to_string(), id, home });
        }
        let path = s.config(&body);
        let settings = config::load(&path, &Env { token_url_override: Some(mock.token_url()) }).unwrap();
        // Start at the mock's clock so the JWTs it mints and our decisions agree.
        let start: DateTime<Utc> = mock.now().into();
        let clock = Arc::new(SimClock(Mutex::new(start)));
        let (core, events) = Core::new(path, settings, clock.clone());
        Sim { mock, s, clock, core, _events: events, accounts, next_timer: start + TIMER, requests: BTreeMap::new() }
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Move both clocks to `t`.
    fn set_time(&self, t: DateTime<Utc>) {
        let now = self.now();
        if t > now {
            self.mock.advance_clock((t - now).to_std().unwrap());
            *self.clock.0.lock().unwrap() = t;
        }
    }

    /// Note the token requests that happened at the current simulated time.
    fn record(&mut self, before: &BTreeMap<String, u64>) {
        let now = self.now();
        for a in &self.accounts {
            let n = self.mock.token_requests_for(&a.id) - before[&a.id];
            self.requests.entry(a.id.clone()).or_default().extend(std::iter::repeat_n(now, n as usize));
        }
    }

    fn counts(&self) -> BTreeMap<String, u64> {
        support::sim::counts(&self.mock, &self.accounts)
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

    /// Run the daemon loop and the refresh timer until `until`.
    async fn run_until(&mut self, until: DateTime<Utc>) {
        loop {
            let now = self.now();
            let wake = self.core.next_wakeup().unwrap_or(now + MAX_SLEEP).clamp(now, now + MAX_SLEEP);
            let t = wake.min(self.next_timer);
            if t > until {
                self.set_time(until);
                return;
            }
            self.set_time(t);
            let before = self.counts();
            if t == self.next_timer {
                self.next_timer = t + TIMER;
                self.core.refresh_all(false).await;
            } else {
                let due = self.core.due(t, false);
                self.kick_and_settle(due).await;
            }
            self.record(&before);
        }
    }

    fn times(&self, id: &str) -> Vec<DateTime<Utc>> {
        self.requests.get(id).cloned().unwrap_or_default()
    }

    /// Most token requests of `id` in any one-hour window.
    fn max_per_hour(&self, id: &str) -> usize {
        let t = self.times(id);
        t.iter()
            .map(|start| t.iter().filter(|x| *x >= start && **x < *start + Span::hours(1)).count())
            .max()
            .unwrap_or(0)
    }

    /// Token requests of `id` in each whole simulated hour since `from`.
    fn per_hour(&self, id: &str, from: DateTime<Utc>, hours: i64) -> Vec<usize> {
        let t = self.times(id);
        (0..hours)
            .map(|h| {
                let (a, b) = (from + Span::hours(h), from + Span::hours(h + 1));
                t.iter().filter(|x| **x >= a && **x < b).count()
            })
            .collect()
    }

    fn state(&self, name: &str) -> String {
        self.core.view(name).unwrap().state.as_str().to_string()
    }

    fn acct(&self, name: &str) -> &Acct {
        self.accounts.iter().find(|a| a.name == name).unwrap()
    }
}

fn file_rt(a: &Acct) -> String {
    read_json(&a.home.join("auth.json"))["tokens"]["refresh_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_persistent_5xx_costs_at_most_12_requests_an_hour_and_a_permanent_error_none_until_the_file_changes() {
    let mut sim = Sim::new(&["alice"], "");
    let a = sim.acct("alice");
    let (id, auth) = (a.id.clone(), std::fs::read(a.home.join("auth.json")).unwrap());
    sim.mock.set_sticky_fault_for(&id, Some(Fault::service_unavailable()));
    let t0 = sim.now();
    sim.start().await;
    sim.run_until(t0 + Span::hours(6)).await;
    let hours = sim.per_hour(&id, t0, 6);
    let worst = sim.max_per_hour(&id);
    println!("persistent 503, requests per simulated hour: {hours:?}; most in any 1 h window: {worst}");
    assert!(worst <= MAX_PER_HOUR, "{worst} token requests within one hour: {:?}", sim.times(&id));
    // It keeps retrying: never longer apart than the capped backoff with its jitter.
    let t = sim.times(&id);
    let cap = BACKOFF_CAP * 6 / 5;
    assert!(t.len() >= 6 && t.windows(2).all(|w| w[1] - w[0] <= cap), "retries stopped: {t:?}");
    assert_eq!(sim.state("alice"), State::FailedTransient.as_str());
    assert_eq!(std::fs::read(sim.acct("alice").home.join("auth.json")).unwrap(), auth, "auth.json untouched");

    // The endpoint now says the login is dead: one more request learns it, then none.
    sim.mock.set_sticky_fault_for(&id, Some(Fault::refresh_token_expired()));
    let t1 = sim.now();
    sim.run_until(t1 + MAX_SLEEP + Span::minutes(15)).await;
    assert_eq!(sim.times(&id).iter().filter(|t| **t >= t1).count(), 1, "one request learns it is permanent");
    assert_eq!(sim.state("alice"), State::FailedPermanent.as_str());
    let n = sim.mock.token_requests_for(&id);
    let t2 = sim.now();
    sim.run_until(t2 + Span::hours(24)).await;
    assert_eq!(sim.mock.token_requests_for(&id), n, "no token request in 24 h of quarantine (4 timer runs included)");
    assert_eq!(sim.state("alice"), State::FailedPermanent.as_str());

    // A human logs in again: the next quarantine probe (a dry run, ≤ 15 min) sees the new
    // file and the account works again, well before the refresh timer.
    sim.mock.set_sticky_fault_for(&id, None);
    let fresh: Credentials = sim.mock.issue_family(&id);
    std::fs::write(sim.acct("alice").home.join("auth.json"), auth_json(&fresh, OLD)).unwrap();
    let t3 = sim.now();
    sim.run_until(t3 + QUARANTINE_PROBE + Span::minutes(1)).await;
    let after: Vec<_> = sim.times(&id).into_iter().filter(|t| *t > t3).collect();
    println!("after the file changed: {} request(s), first after {} min", after.len(), (after[0] - t3).num_minutes());
    assert_eq!(after.len(), 1, "exactly one refresh once the file changed: {after:?}");
    assert_eq!(sim.state("alice"), State::Ok.as_str());
    assert!(sim.mock.is_live_refresh_token(&file_rt(sim.acct("alice"))));
    assert_no_secrets(
        &non_credential_files(sim.s.path()).iter().map(|(n, t)| (n.as_str(), t.as_str())).collect::<Vec<_>>(),
        &[secrets(&fresh)].concat(),
    );
}

#[tokio::test]
async fn one_account_under_a_persistent_5xx_does_not_hold_back_the_others() {
    // max_age 1h: healthy accounts refresh every simulated hour, so "normally" is visible.
    let mut sim = Sim::new(&["alice", "bob", "carol"], "max_age = \"1h\"");
    let broken = sim.acct("bob").id.clone();
    sim.mock.set_sticky_fault_for(&broken, Some(Fault::bad_gateway()));
    let t0 = sim.now();
    sim.start().await;
    sim.run_until(t0 + Span::hours(6)).await;
    let worst = sim.max_per_hour(&broken);
    println!("bob (persistent 502) per hour: {:?}, worst 1 h window {worst}", sim.per_hour(&broken, t0, 6));
    assert!(worst <= MAX_PER_HOUR, "{worst} requests within one hour");
    assert!(worst > 0);
    assert_eq!(sim.state("bob"), State::FailedTransient.as_str());
    for name in ["alice", "carol"] {
        let a = sim.acct(name);
        let hours = sim.per_hour(&a.id, t0, 6);
        println!("{name} (healthy) per hour: {hours:?}");
        // Refreshed at start and then once per max_age: at least 6 in 6 h, every one a success.
        assert!(hours.iter().all(|n| *n >= 1), "{name} refreshed every hour: {hours:?}");
        assert!(sim.max_per_hour(&a.id) <= 2, "{name} is not retried like a failing account");
        assert_eq!(sim.state(name), State::Ok.as_str());
        assert!(sim.mock.is_live_refresh_token(&file_rt(a)), "{name}'s file holds the live token");
    }
    let ok = sim.mock.successful_refreshes() as usize;
    let healthy: usize = ["alice", "carol"].iter().map(|n| sim.times(&sim.acct(n).id).len()).sum();
    assert_eq!(ok, healthy, "every request of a healthy account succeeded");
}
