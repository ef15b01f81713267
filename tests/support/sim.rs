//! What the simulated-time daemon suites (tests/faultrate.rs, tests/clocksteps.rs) share:
//! a wall clock the test sets, and one simulated account.

use chrono::{DateTime, Utc};
use codex_auth_agent::core::clock::Clock;
use codex_auth_agent::daemon::core::Core;
use mock_openai::MockServer;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// The daemon's wall clock, which the test moves.
pub struct SimClock(pub Mutex<DateTime<Utc>>);

impl Clock for SimClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

/// One account: its name, the mock account id, and its CODEX_HOME.
pub struct Acct {
    pub name: String,
    pub id: String,
    pub home: PathBuf,
}

/// Token requests the mock has seen so far, per account id.
pub fn counts(mock: &MockServer, accounts: &[Acct]) -> BTreeMap<String, u64> {
    accounts.iter().map(|a| (a.id.clone(), mock.token_requests_for(&a.id))).collect()
}

/// Kick `names` and wait until no run is in flight (the daemon does not wait; the
/// simulation must, or its clock would jump past runs still going).
pub async fn kick_and_settle(core: &std::sync::Arc<Core>, names: Vec<String>) {
    core.kick(names);
    // Let the kicked tasks register as in flight before looking.
    tokio::time::sleep(Duration::from_millis(2)).await;
    while core.busy() > 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
