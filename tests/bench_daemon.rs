//! Daemon benchmarks (not tests: every function is #[ignore] and asserts nothing about
//! time). Run: `cargo test --release --test bench_daemon -- --ignored --nocapture --test-threads 1`.
//! Prints idle RSS with 1 and 1000 accounts, property Get latency p50/p99 over 10 000
//! calls on a private bus, and start-to-READY=1 (median of 7 starts). Figures go to
//! docs/PERFORMANCE.md.

mod support;

use codex_auth_agent::api::names::{ACCOUNT_IFACE, BUS_NAME, account_path};
use mock_openai::{MockConfig, MockServer};
use std::time::{Duration, Instant};
use support::bench::*;
use support::dbus::*;
use support::*;

fn accounts(s: &Scratch, m: &MockServer, n: usize) -> std::path::PathBuf {
    s.config(&fresh_accounts(s, m, n))
}

#[tokio::test]
#[ignore]
async fn idle_rss_with_1_and_1000_accounts() {
    for n in [1usize, 1000] {
        let (m, s) = (MockServer::start(MockConfig::default()), Scratch::new());
        let bus = PrivateBus::start(s.path());
        let cfg = accounts(&s, &m, n);
        let d = AgentDaemon::start(&s, &m, &cfg, &bus);
        let conn = zbus::connection::Builder::address(bus.address.as_str()).unwrap().build().await.unwrap();
        let t0 = Instant::now();
        wait_all_checked(&conn).await;
        let checked = t0.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pid = d.child.as_ref().unwrap().id();
        println!(
            "BENCH idle accounts={n}: VmRSS={} KiB VmHWM={} KiB (first check of all accounts took {:?})",
            status_kib(pid, "VmRSS:"),
            status_kib(pid, "VmHWM:"),
            checked
        );
    }
}

#[tokio::test]
#[ignore]
async fn property_get_latency_over_10000_calls() {
    let (m, s) = (MockServer::start(MockConfig::default()), Scratch::new());
    let bus = PrivateBus::start(s.path());
    let cfg = accounts(&s, &m, 1);
    let _d = AgentDaemon::start(&s, &m, &cfg, &bus);
    let conn = zbus::connection::Builder::address(bus.address.as_str()).unwrap().build().await.unwrap();
    let props = zbus::fdo::PropertiesProxy::builder(&conn)
        .destination(BUS_NAME)
        .unwrap()
        .path(account_path("a0"))
        .unwrap()
        .build()
        .await
        .unwrap();
    let iface = zbus::names::InterfaceName::from_static_str_unchecked(ACCOUNT_IFACE);
    let mut lat = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        let t = Instant::now();
        props.get(iface.clone(), "State").await.unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    println!("BENCH Get(State) x10000: p50={:?} p99={:?} max={:?}", lat[5_000], lat[9_900], lat[9_999]);
}

#[test]
#[ignore]
fn start_to_ready() {
    let (m, s) = (MockServer::start(MockConfig::default()), Scratch::new());
    let bus = PrivateBus::start(s.path());
    let cfg = accounts(&s, &m, 1);
    let mut times = Vec::new();
    for _ in 0..7 {
        let mut d = AgentDaemon::start(&s, &m, &cfg, &bus);
        times.push(d.note_at("READY=1").unwrap() - d.started);
        d.stop();
    }
    times.sort();
    println!("BENCH start to READY=1 (spawn to notify received, median of 7): {:?} (min {:?})", times[3], times[0]);
}
