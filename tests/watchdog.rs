//! The daemon's systemd watchdog: with WATCHDOG_USEC it pings WATCHDOG=1 every half
//! period from its own timerfd clock (one wake-up per ping, docs/PERFORMANCE.md);
//! without it, or when WATCHDOG_PID names another process, it never pings.

mod support;

use mock_openai::{MockConfig, MockServer};
use std::time::{Duration, Instant};
use support::bench::fresh_accounts;
use support::dbus::*;
use support::*;

fn pings(d: &AgentDaemon) -> usize {
    d.notes().iter().filter(|n| n.as_str() == "WATCHDOG=1").count()
}

/// A daemon with its own scratch area and bus (each owns the bus name), and `env`.
fn daemon(m: &MockServer, env: &[(&str, &str)]) -> (AgentDaemon, PrivateBus, Scratch) {
    let s = Scratch::new();
    let bus = PrivateBus::start(s.path());
    let cfg = s.config(&fresh_accounts(&s, m, 1));
    (AgentDaemon::start_with_env(&s, m, &cfg, &bus, env), bus, s)
}

#[test]
fn pings_only_when_systemd_asks() {
    let m = MockServer::start(MockConfig::default());
    // 400 ms: a ping every 200 ms.
    let (on, _b1, _s1) = daemon(&m, &[("WATCHDOG_USEC", "400000")]);
    let (off, _b2, _s2) = daemon(&m, &[]);
    let (other, _b3, _s3) = daemon(&m, &[("WATCHDOG_USEC", "400000"), ("WATCHDOG_PID", "1")]);
    let t0 = Instant::now();
    while pings(&on) < 5 {
        assert!(t0.elapsed() < Duration::from_secs(30), "only {} pings; log:\n{}", pings(&on), on.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(pings(&off), 0, "no WATCHDOG_USEC: no ping");
    assert_eq!(pings(&other), 0, "WATCHDOG_PID of another process: no ping");
}
