//! The idle daemon: RSS and wake-ups over 5 minutes (context switches of every thread
//! from /proc/<pid>/task/*/status, sampled after start-up has settled and 5 minutes
//! later), without a watchdog, with the unit's WatchdogSec=60s (WATCHDOG_USEC, pings
//! counted on the test's NOTIFY_SOCKET), and with 1 000 accounts. The three daemons run
//! side by side. A benchmark, not a test: #[ignore], asserts nothing about the figures.
//! Run (release build): `cargo test --release --test bench_idle -- --ignored --nocapture`
//! (`BENCH_IDLE_SECS=N` for another window than 300 s). Figures go to docs/PERFORMANCE.md.

mod support;

use mock_openai::{MockConfig, MockServer};
use std::collections::BTreeMap;
use std::time::Duration;
use support::bench::*;
use support::dbus::*;
use support::*;

/// systemd/codex-auth-agent.service: WatchdogSec=60s.
const WATCHDOG_USEC: &str = "60000000";
/// Longer than tokio's blocking-pool keep-alive (10 s), so the threads left from the
/// start-up checks are gone before the window opens.
const SETTLE: Duration = Duration::from_secs(15);

struct Idle {
    what: &'static str,
    d: AgentDaemon,
    _bus: PrivateBus,
    _mock: MockServer,
    _s: Scratch,
}

async fn start(what: &'static str, n: usize, env: &[(&str, &str)]) -> Idle {
    let (mock, s) = (MockServer::start(MockConfig::default()), Scratch::new());
    let bus = PrivateBus::start(s.path());
    let cfg = s.config(&fresh_accounts(&s, &mock, n));
    let d = AgentDaemon::start_with_env(&s, &mock, &cfg, &bus, env);
    let conn = zbus::connection::Builder::address(bus.address.as_str()).unwrap().build().await.unwrap();
    wait_all_checked(&conn).await;
    Idle { what, d, _bus: bus, _mock: mock, _s: s }
}

fn pings(d: &AgentDaemon) -> usize {
    d.notes().iter().filter(|n| n.as_str() == "WATCHDOG=1").count()
}

#[tokio::test]
#[ignore]
async fn idle_wakeups_over_5_minutes() {
    let window = Duration::from_secs(std::env::var("BENCH_IDLE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(300));
    let watchdog = [("WATCHDOG_USEC", WATCHDOG_USEC)];
    let daemons = [
        start("1 account, no watchdog", 1, &[]).await,
        start("1 account, WATCHDOG_USEC=60s", 1, &watchdog).await,
        start("1000 accounts, WATCHDOG_USEC=60s", 1000, &watchdog).await,
    ];
    tokio::time::sleep(SETTLE).await;
    let before: Vec<_> = daemons.iter().map(|i| (thread_switches(pid(i)), pings(&i.d))).collect();
    tokio::time::sleep(window).await;
    let minutes = window.as_secs_f64() / 60.0;
    for (i, (threads0, pings0)) in daemons.iter().zip(before) {
        let threads1 = thread_switches(pid(i));
        let pinged = pings(&i.d) - pings0;
        let mut total = 0u64;
        let mut per_thread = BTreeMap::new();
        for t in &threads1 {
            let t0 = threads0.iter().find(|o| o.tid == t.tid);
            // A thread born inside the window: every switch it made counts.
            let (v0, i0) = t0.map(|o| (o.voluntary, o.involuntary)).unwrap_or((0, 0));
            let (dv, di) = (t.voluntary - v0, t.involuntary - i0);
            total += dv + di;
            per_thread.insert(format!("{}:{}", t.tid, t.name), format!("+{dv} voluntary, +{di} involuntary"));
        }
        let gone: Vec<_> = threads0.iter().filter(|o| !threads1.iter().any(|t| t.tid == o.tid)).collect();
        println!(
            "BENCH idle {}: VmRSS {} KiB, VmHWM {} KiB; over {:.0} s: {} context switches ({:.1}/min), {} \
                watchdog pings ({:.1}/min), beyond pings {:.1}/min; threads {:?}; threads gone during the window {:?}",
            i.what,
            status_kib(pid(i), "VmRSS:"),
            status_kib(pid(i), "VmHWM:"),
            window.as_secs_f64(),
            total,
            total as f64 / minutes,
            pinged,
            pinged as f64 / minutes,
            (total as f64 - pinged as f64) / minutes,
            per_thread,
            gone.iter().map(|t| format!("{}:{}", t.tid, t.name)).collect::<Vec<_>>(),
        );
    }
}

fn pid(i: &Idle) -> u32 {
    i.d.child.as_ref().unwrap().id()
}
