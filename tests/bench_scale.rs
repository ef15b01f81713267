//! Scale: the daemon refreshes 1, 100 and 1 000 accounts (RefreshAll(force) over a private
//! bus) while the mock answers every token request 50 ms late; total time per
//! `max_parallel` against the ideal ⌈accounts / max_parallel⌉ × 50 ms, the daemon's peak
//! RSS (VmHWM, reset before each setting) and, from one extra sampled run, the workers'.
//! A benchmark, not a test: #[ignore], asserts only that every account was refreshed.
//! Run (release build, as root):
//! `cargo test --release --test bench_scale -- --ignored --nocapture --test-threads 1`
//! (`BENCH_RUNS=N`: runs per setting, default 11; a setting whose ideal is ≥ 10 s runs 3
//! times; `BENCH_ACCOUNTS=1,100` for other account counts, `BENCH_MAX_PARALLEL=8` for other
//! settings). Each line also gives the CPU time per refresh (daemon; workers, from the
//! daemon's cutime/cstime once it has reaped them all: it keeps some for a next task
//! while it runs) and what one durable commit (file + directory fsync) costs on
//! this disk meanwhile: a refresh makes three (pending.json and status.json in the daemon,
//! auth.json in the worker). Figures go to docs/PERFORMANCE.md.

mod support;

use mock_openai::{MockConfig, MockServer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::bench::*;
use support::dbus::*;
use support::*;

const LATENCY: Duration = Duration::from_millis(50);

/// What a sampler saw of the daemon's worker children.
#[derive(Default, Debug, Clone, Copy)]
struct Workers {
    /// Most workers alive at one sample.
    most_at_once: usize,
    /// Largest VmHWM of any worker, KiB.
    peak_kib: u64,
    /// Largest VmRSS of the daemon plus all its workers at one sample, KiB.
    tree_kib: u64,
}

/// The daemon's children (/proc/<pid>/task/*/children) that run `codex-auth-agent worker`
/// already (one between spawn and exec shares or copies the daemon's memory).
fn workers_of(daemon: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{daemon}/task")).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        kids.extend(text.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    kids.retain(|k| {
        let argv = std::fs::read(format!("/proc/{k}/cmdline")).unwrap_or_default();
        argv.split(|b| *b == 0).nth(1) == Some(b"worker".as_slice())
    });
    kids
}

/// Wait until the daemon has reaped every worker (the ones it keeps for a next task end
/// once nothing runs): only a reaped child's CPU is in the daemon's cutime/cstime.
async fn workers_reaped(daemon: u32) {
    let t0 = Instant::now();
    while !workers_of(daemon).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(10), "the daemon's workers did not end once it was idle");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Samples the daemon's workers every 10 ms until stopped.
fn sample_workers(daemon: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Workers> {
    std::thread::spawn(move || {
        let mut w = Workers::default();
        while !stop.load(Ordering::SeqCst) {
            let kids = workers_of(daemon);
            let mut tree = status_kib(daemon, "VmRSS:");
            for k in &kids {
                w.peak_kib = w.peak_kib.max(status_kib(*k, "VmHWM:"));
                tree += status_kib(*k, "VmRSS:");
            }
            w.most_at_once = w.most_at_once.max(kids.len());
            w.tree_kib = w.tree_kib.max(tree);
            std::thread::sleep(Duration::from_millis(10));
        }
        w
    })
}

/// RefreshAll(force = true); checks every account was refreshed, returns the wall time.
async fn refresh_all(m: &zbus::Proxy<'_>, mock: &MockServer, n: usize) -> Duration {
    let before = mock.token_requests();
    let t0 = Instant::now();
    let out: Vec<(String, String, String)> = m.call("RefreshAll", &(true,)).await.unwrap();
    let took = t0.elapsed();
    assert_eq!(out.len(), n);
    assert!(out.iter().all(|(_, o, _)| o == "refreshed"), "{:?}", out.iter().find(|(_, o, _)| o != "refreshed"));
    assert_eq!(mock.token_requests() - before, n as u64);
    took
}

/// A comma-separated list of numbers from the environment, else `default`.
fn list_env(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .map(|v| v.split(',').map(|n| n.trim().parse().unwrap()).collect())
        .unwrap_or_else(|_| default.to_vec())
}

#[tokio::test]
#[ignore]
async fn refresh_all_vs_max_parallel() {
    let rows = Arc::new(Mutex::new(Vec::new()));
    let counts = list_env("BENCH_ACCOUNTS", &[1, 100, 1000]);
    let parallel = list_env("BENCH_MAX_PARALLEL", &[1, 4, 8, 16, 64]);
    for n in counts {
        let (mock, s) = (MockServer::start(MockConfig::default()), Scratch::new());
        let bus = PrivateBus::start(s.path());
        let accounts = fresh_accounts(&s, &mock, n);
        let cfg = s.config(&format!("max_parallel = 1\n\n{accounts}"));
        let d = AgentDaemon::start(&s, &mock, &cfg, &bus);
        let pid = d.child.as_ref().unwrap().id();
        let conn = zbus::connection::Builder::address(bus.address.as_str()).unwrap().build().await.unwrap();
        let m = manager(&conn).await;
        wait_all_checked(&conn).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = status_kib(pid, "VmRSS:");
        mock.set_latency(LATENCY);
        for &mp in &parallel {
            if mp > n {
                continue; // more parallelism than accounts changes nothing
            }
            s.config(&format!("max_parallel = {mp}\n\n{accounts}"));
            let () = m.call("Reload", &()).await.unwrap();
            let ideal = LATENCY * n.div_ceil(mp) as u32;
            let runs = if ideal >= Duration::from_secs(10) { 3.min(runs()) } else { runs() };
            workers_reaped(pid).await;
            reset_hwm(pid);
            let cpu0 = cpu_ms(pid);
            let mut times = Vec::new();
            for _ in 0..runs {
                times.push(refresh_all(&m, &mock, n).await.as_secs_f64() * 1000.0);
            }
            let hwm = status_kib(pid, "VmHWM:");
            workers_reaped(pid).await;
            let cpu1 = cpu_ms(pid);
            let per_refresh = |a: f64, b: f64| (b - a) / (runs * n) as f64;
            let (daemon_cpu, worker_cpu) = (per_refresh(cpu0.0, cpu1.0), per_refresh(cpu0.1, cpu1.1));
            // One more run, sampled, for the workers (the sampling is not in the timings).
            let stop = Arc::new(AtomicBool::new(false));
            let sampler = sample_workers(pid, stop.clone());
            refresh_all(&m, &mock, n).await;
            stop.store(true, Ordering::SeqCst);
            let w = sampler.join().unwrap();
            let fsync = fsync_probe_ms(s.path());
            let med = median(times.clone());
            let load = std::fs::read_to_string("/proc/loadavg").unwrap();
            let load = load.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
            let line = format!(
                "BENCH accounts={n:>4} max_parallel={mp:>3}: median {med:8.1} ms over {runs} runs (min {:.1}, \
                    max {:.1}); ideal {:6.0} ms; ratio {:.2}; CPU per refresh: daemon {daemon_cpu:.2} ms + worker \
                    {worker_cpu:.2} ms; file+dir fsync {fsync:.1} ms; daemon VmHWM {} KiB (idle VmRSS {idle} KiB); \
                    workers: up to {} at once, peak {} KiB each, daemon+workers up to {} KiB; loadavg {load}",
                times.iter().cloned().fold(f64::INFINITY, f64::min),
                times.iter().cloned().fold(0.0, f64::max),
                ideal.as_secs_f64() * 1000.0,
                med / (ideal.as_secs_f64() * 1000.0),
                hwm,
                w.most_at_once,
                w.peak_kib,
                w.tree_kib,
            );
            println!("{line}");
            rows.lock().unwrap().push(line);
        }
    }
    println!("BENCH summary:");
    for l in rows.lock().unwrap().iter() {
        println!("{l}");
    }
}
