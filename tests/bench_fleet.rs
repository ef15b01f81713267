//! Fleet benchmark (issue #6): N agents × M accounts sharing one real OpenBao dev server
//! over simulated days. Every run is the library's real path (`runner::run::refresh` →
//! `fleet::run` → worker, in-process as the invoking user), with one injected simulated
//! clock that the mock token endpoint's clock follows. Each agent talks to OpenBao through
//! its own counting loopback proxy, so Vault requests are counted per agent and kind.
//!
//! When an agent runs an account follows the packaged setup: at boot the daemon checks
//! every account; `codex-auth-refresh.timer` asks for all accounts 5 min after boot and
//! then 6 h + up to 30 min after each run; in daemon mode each account is also checked
//! again when its schedule says so (`core::schedule::Schedule`: when the credential becomes
//! due, then after 60 s, 2, 4 … up to 60 min while it stays due). Agents whose runs fall on
//! the same instant run concurrently (real races for the lease and the check-and-set writes).
//!
//! The figures: `cargo test --release --test bench_fleet -- --ignored --nocapture`
//! (docs/PERFORMANCE.md, "Fleet"). The small non-ignored smoke run asserts the invariants.

mod support;

use chrono::{DateTime, Utc};
use codex_auth_agent::config::{self, Env, Settings};
use codex_auth_agent::core::authfile::sha256_hex;
use codex_auth_agent::core::clock::Clock;
use codex_auth_agent::core::outcome::{Outcome, Report};
use codex_auth_agent::core::schedule;
use codex_auth_agent::runner::account::Runtime;
use codex_auth_agent::runner::privsep::Workers;
use codex_auth_agent::runner::run::{self, RefreshOptions};
use codex_auth_agent::runner::vault::Clients;
use codex_auth_agent::store::Memory;
use codex_auth_agent::worker::Local;
use mock_openai::{MockConfig, MockServer};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::openbao::Bao;
use support::*;

const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/fleet-policies");
const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// The refresh timer: OnBootSec=5min, OnUnitActiveSec=6h, RandomizedDelaySec=30min.
const TIMER_BOOT: i64 = 5 * MINUTE;
const TIMER_PERIOD: i64 = 6 * HOUR;
const TIMER_SPREAD: i64 = 30 * MINUTE;
/// Shortened access-token lifetime: with the default refresh_before_expiry (1 d) every
/// credential is due 12 h after it was issued, so 30 days hold ≈60 rotations per account.
const ACCESS_LIFETIME: i64 = 36 * HOUR;
const REFRESH_BEFORE_EXPIRY: i64 = DAY;

/// The simulated time every decision reads (unix milliseconds), set by the driver.
struct SimClock(AtomicI64);

impl Clock for SimClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.0.load(Ordering::SeqCst)).unwrap()
    }
}

/// HTTP requests seen by one proxy, by "METHOD kind" (kind: rotating, lease, seed, login,
/// other, unparsed).
type Counts = Arc<Mutex<BTreeMap<String, u64>>>;

/// A loopback TCP proxy in front of OpenBao that counts the HTTP/1.1 requests passing
/// through (request line, headers, Content-Length body; keep-alive aware).
struct CountingProxy {
    addr: String,
    counts: Counts,
}

impl CountingProxy {
    fn start(upstream: SocketAddr) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let counts = Counts::default();
        let c = counts.clone();
        // Lives until the test process exits (a blocked accept holds nothing but the port).
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let c = c.clone();
                std::thread::spawn(move || relay(client, upstream, &c));
            }
        });
        CountingProxy { addr, counts }
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts.lock().unwrap().clone()
    }
}

fn kind_of(request_line: &str) -> String {
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("?"), parts.next().unwrap_or(""));
    let kind = if path.contains("/data/codex-auth-lease-") {
        "lease"
    } else if path.contains("/data/codex-auth-json-b64-rotating-") {
        "rotating"
    } else if path.contains("/data/codex-auth-json-b64") {
        "seed"
    } else if path.starts_with("/v1/auth/") {
        "login"
    } else {
        "other"
    };
    format!("{method} {kind}")
}

fn relay(client: TcpStream, upstream: SocketAddr, counts: &Mutex<BTreeMap<String, u64>>) {
    let Ok(mut server) = TcpStream::connect(upstream) else { return };
    // No Nagle delays: the proxy must not add latency that OpenBao alone would not have.
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let (mut from_server, mut to_client) = (server.try_clone().unwrap(), client.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_server, &mut to_client);
        let _ = to_client.shutdown(Shutdown::Write);
    });
    let mut reader = BufReader::new(client);
    let count = |k: String| *counts.lock().unwrap().entry(k).or_default() += 1;
    'requests: loop {
        let mut head = String::new();
        if reader.read_line(&mut head).unwrap_or(0) == 0 {
            break;
        }
        let kind = kind_of(&head);
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break 'requests;
            }
            head.push_str(&line);
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("transfer-encoding:") {
                // Not framed by Content-Length: counted as unparsed; the bench asserts none.
                count("unparsed".into());
                let _ = server.write_all(head.as_bytes());
                let _ = std::io::copy(&mut reader, &mut server);
                break 'requests;
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            break;
        }
        count(kind);
        let mut request = head.into_bytes();
        request.extend_from_slice(&body);
        if server.write_all(&request).is_err() {
            break;
        }
    }
    let _ = server.shutdown(Shutdown::Write);
}

/// How the agents are scheduled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// The packaged setup: the daemon's own schedule plus the 6-hourly timer.
    Daemon,
    /// Only `refresh --all` from the 6-hourly timer (no daemon).
    TimerOnly,
}

struct Scenario {
    name: &'static str,
    agents: usize,
    accounts: usize,
    days: i64,
    mode: Mode,
    /// Which agents claim `fleet_role = "refresher"` for account `a`.
    refreshers: fn(account: usize, agents: usize) -> Vec<usize>,
    seed: u64,
    /// (agent, from day, to day): that VM is off; it boots again at the end.
    down: Option<(usize, i64, i64)>,
}

/// One configured refresher per account, spread over the agents.
fn one_refresher(a: usize, agents: usize) -> Vec<usize> {
    vec![a % agents]
}

/// Misconfigured: every agent claims refresher for every account.
fn everyone_refreshes(_: usize, agents: usize) -> Vec<usize> {
    (0..agents).collect()
}

/// One simulated VM.
struct Agent {
    scratch: Scratch,
    settings: Settings,
    proxy: CountingProxy,
    hosts_refresher: bool,
    /// The agent's Vault client, kept across its runs like a daemon's.
    vault: Clients,
}

/// A scratch area on tmpfs when there is one: 20 simulated VMs would otherwise queue their
/// fsyncs on one shared disk (each real VM has its own), and that queue, not the agent,
/// would set the wall time.
fn scratch() -> Scratch {
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        return Scratch::new();
    }
    let dir = tempfile::Builder::new().prefix("caa-bench-").tempdir_in(shm).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    Scratch { dir }
}

fn account_name(a: usize) -> String {
    format!("team-{a:02}")
}

fn secret_file(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

impl Agent {
    fn new(i: usize, sc: &Scenario, bao: &Bao, mock: &MockServer, tokens: &(String, String)) -> Agent {
        let scratch = scratch();
        let proxy = CountingProxy::start(format!("127.0.0.1:{}", bao.port).parse().unwrap());
        let roles: Vec<bool> = (0..sc.accounts).map(|a| (sc.refreshers)(a, sc.agents).contains(&i)).collect();
        let hosts_refresher = roles.iter().any(|r| *r);
        let token = if hosts_refresher { &tokens.0 } else { &tokens.1 };
        let token_file = secret_file(scratch.path(), "vault-token", token);
        let mut body = format!(
            "host_id = \"vm-{i:02}\"\n\n[vault]\naddress = \"{}\"\ntoken_file = \"{}\"\nrequest_timeout = \"10s\"\n\n\
             [defaults]\nrequest_timeout = \"10s\"\n",
            proxy.addr,
            token_file.display()
        );
        for (a, refresher) in roles.iter().enumerate() {
            let name = account_name(a);
            let home = scratch.codex_home(&name, None);
            let role = if *refresher { "refresher" } else { "follower" };
            body.push_str(&format!(
                "\n[accounts.{name}]\nuser = \"{}\"\ncodex_home = \"{}\"\nfleet_role = \"{role}\"\n",
                me(),
                home.display()
            ));
        }
        let path = scratch.config(&body);
        let settings = config::load(&path, &Env { token_url_override: Some(mock.token_url()) }).unwrap();
        Agent { scratch, settings, proxy, hosts_refresher, vault: Clients::default() }
    }

    fn run(&self, a: usize, clock: &SimClock) -> Report {
        let acct = &self.settings.accounts[&account_name(a)];
        let exec = Workers::new(Local, false);
        run::refresh(
            &self.settings,
            acct,
            RefreshOptions::default(),
            &Runtime { clock, exec: &exec, mem: &Memory::default(), vault: &self.vault },
        )
    }

    fn auth(&self, a: usize) -> Vec<u8> {
        std::fs::read(self.scratch.path().join(account_name(a)).join("auth.json")).unwrap_or_default()
    }
}

/// A run's result in a word, from its outcome and reason.
fn what_happened_in(r: &Report) -> &'static str {
    match r.outcome {
        _ if r.failure.is_some() => "failed",
        Outcome::Refreshed => "refreshed",
        _ if r.reason.contains("check-and-set conflict") => "lost the check-and-set race",
        _ if r.reason.contains("lease held by") && r.reason.contains("installed") => "lease held elsewhere, installed",
        _ if r.reason.contains("lease held by") => "lease held elsewhere, nothing new",
        _ if r.reason.contains("installed") => "installed",
        _ if r.reason.contains("but this host follows") => "due, waiting for the refresher",
        _ => "fresh, nothing new",
    }
}

/// One rotation of an account's credential.
struct Rotation {
    at: i64,
    holders: BTreeSet<usize>,
    /// When the last agent installed it (or a later one).
    all_at: Option<i64>,
}

#[derive(Debug)]
struct Figures {
    name: &'static str,
    agents: usize,
    accounts: usize,
    days: i64,
    mode: Mode,
    runs: u64,
    failures: u64,
    what_happened: BTreeMap<&'static str, u64>,
    token_calls: u64,
    rotations: u64,
    /// Rotations a refresher waking exactly when due would make in the same window.
    rotations_if_on_time: u64,
    reuse: u64,
    min_spacing_h: f64,
    requests: BTreeMap<String, u64>,
    per_agent_hour: f64,
    per_agent_hour_refresher_hosts: f64,
    per_agent_hour_followers_only: f64,
    /// Simulated minutes from a rotation until every agent has it (after the first).
    convergence_min: Vec<f64>,
    first_convergence_min: Vec<f64>,
    unconverged: usize,
    wall: Duration,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

impl Figures {
    fn print(&self) {
        let mut c = self.convergence_min.clone();
        c.sort_by(f64::total_cmp);
        let total: u64 = self.requests.values().sum();
        println!(
            "BENCH fleet {}: {} agents × {} accounts, {} simulated days, mode {:?}, wall {:.1} s ({:.1} ms per run)",
            self.name,
            self.agents,
            self.accounts,
            self.days,
            self.mode,
            self.wall.as_secs_f64(),
            self.wall.as_secs_f64() * 1000.0 / self.runs as f64
        );
        println!(
            "BENCH   runs {} (failed {}), token calls {}, rotations {} (on-time ideal {}), refresh_token_reused \
                {}, min spacing between rotations {:.1} h",
            self.runs,
            self.failures,
            self.token_calls,
            self.rotations,
            self.rotations_if_on_time,
            self.reuse,
            self.min_spacing_h
        );
        println!("BENCH   runs by result: {:?}", self.what_happened);
        println!(
            "BENCH   Vault requests {total}: {:?}; per agent-hour {:.2} (agents hosting a refresher {:.2}, \
                followers only {:.2})",
            self.requests, self.per_agent_hour, self.per_agent_hour_refresher_hosts, self.per_agent_hour_followers_only
        );
        println!(
            "BENCH   convergence (rotation → every agent has it, simulated minutes): p50 {:.1}, p95 {:.1}, max \
                {:.1} over {} rotations; {} not yet everywhere at the end",
            percentile(&c, 0.5),
            percentile(&c, 0.95),
            c.last().copied().unwrap_or(f64::NAN),
            c.len(),
            self.unconverged
        );
        let mut f = self.first_convergence_min.clone();
        f.sort_by(f64::total_cmp);
        println!(
            "BENCH   first rotation while the fleet boots: everywhere after max {:.1} simulated minutes",
            f.last().copied().unwrap_or(f64::NAN)
        );
    }
}

/// An event: (time, tie-breaker, agent, account or TIMER or BOOT).
type Event = Reverse<(i64, u64, usize, usize)>;
/// The refresh timer fires: every account, and the timer's next run is scheduled.
const TIMER: usize = usize::MAX;
/// The daemon starts: every account (its start-up pass).
const BOOT: usize = usize::MAX - 1;

/// One OpenBao dev server with the shipped policies, the mock token endpoint, a due seed
/// per account in Vault, and the agents (nothing has run yet).
struct Fleet {
    bao: Bao,
    mock: MockServer,
    agents: Vec<Agent>,
}

fn fleet(sc: &Scenario) -> Option<Fleet> {
    let bao = Bao::start(sc.name)?;
    let mock = MockServer::start(MockConfig {
        access_lifetime: Duration::from_millis(ACCESS_LIFETIME as u64),
        ..MockConfig::default()
    });
    bao.cli(&["policy", "write", "fleet-refresher", &format!("{POLICIES}/refresher.hcl")]);
    bao.cli(&["policy", "write", "fleet-follower", &format!("{POLICIES}/follower.hcl")]);
    let tokens = (bao.token(&["fleet-refresher"]), bao.token(&["fleet-follower"]));
    for a in 0..sc.accounts {
        let c = mock.issue_family(&format!("acct-{}", account_name(a)));
        bao.put(&seed_key(a), auth_json(&c, OLD).as_bytes());
    }
    let agents: Vec<Agent> = (0..sc.agents).map(|i| Agent::new(i, sc, &bao, &mock, &tokens)).collect();
    Some(Fleet { bao, mock, agents })
}

fn seed_key(a: usize) -> String {
    format!("codex-auth-json-b64-{}", account_name(a))
}

fn rotating_key(a: usize) -> String {
    format!("codex-auth-json-b64-rotating-{}", account_name(a))
}

/// The mock's clock (the real one plus what the bench advanced), unix milliseconds.
fn mock_now(mock: &MockServer) -> i64 {
    mock.now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn simulate(sc: &Scenario) -> Option<Figures> {
    let Fleet { bao, mock, agents } = fleet(sc)?;
    let start = mock_now(&mock);
    let end = start + sc.days * DAY;
    let clock = SimClock(AtomicI64::new(start));
    let mut rng = fastrand::Rng::with_seed(sc.seed);
    let wall = Instant::now();

    let mut queue: BinaryHeap<Event> = BinaryHeap::new();
    for i in 0..sc.agents {
        // The fleet is deployed within half an hour; the daemon checks everything at start.
        let boot = start + rng.i64(0..TIMER_SPREAD);
        if sc.mode == Mode::Daemon {
            queue.push(Reverse((boot, rng.u64(..), i, BOOT)));
        }
        queue.push(Reverse((boot + TIMER_BOOT + rng.i64(0..TIMER_SPREAD), rng.u64(..), i, TIMER)));
    }
    let down = sc.down.map(|(agent, from, to)| (agent, start + from * DAY, start + to * DAY));
    if let Some((agent, _, back)) = down {
        if sc.mode == Mode::Daemon {
            queue.push(Reverse((back, rng.u64(..), agent, BOOT)));
        }
    }
    let mut next_wake: Vec<Vec<Option<i64>>> = vec![vec![None; sc.accounts]; sc.agents];
    // The daemon's own per-account schedule (backoff, overdue backoff) decides its wake-ups.
    let mut schedules = vec![vec![schedule::Schedule::default(); sc.accounts]; sc.agents];
    let mut rotations: Vec<Vec<Rotation>> = (0..sc.accounts).map(|_| Vec::new()).collect();
    let mut by_sha: HashMap<String, (usize, usize)> = HashMap::new();
    let mut held: Vec<Vec<Option<usize>>> = vec![vec![None; sc.accounts]; sc.agents];
    let (mut runs, mut failures) = (0u64, 0u64);
    let mut what_happened: BTreeMap<&'static str, u64> = BTreeMap::new();

    while let Some(Reverse((now, ..))) = queue.peek().copied() {
        if now > end {
            break;
        }
        // Everything due at this instant.
        let mut work: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        while let Some(Reverse((t, _, agent, what))) = queue.peek().copied() {
            if t != now {
                break;
            }
            queue.pop();
            if let Some((_, _, back)) = down.filter(|&(a, from, back)| a == agent && from <= now && now < back) {
                // A VM that is off misses its runs; its timer starts again after boot.
                if what == TIMER {
                    queue.push(Reverse((back + TIMER_BOOT + rng.i64(0..TIMER_SPREAD), rng.u64(..), agent, TIMER)));
                }
                continue;
            }
            if what == BOOT {
                work.entry(agent).or_default().extend(0..sc.accounts);
            } else if what == TIMER {
                work.entry(agent).or_default().extend(0..sc.accounts);
                let next = now + TIMER_PERIOD + rng.i64(0..TIMER_SPREAD);
                queue.push(Reverse((next, rng.u64(..), agent, TIMER)));
            } else if next_wake[agent][what] == Some(now) {
                work.entry(agent).or_default().insert(what);
            }
        }
        clock.0.store(now, Ordering::SeqCst);
        let behind = now - mock_now(&mock);
        if behind > 0 {
            mock.advance_clock(Duration::from_millis(behind as u64));
        }
        let mut results = run_concurrently(&agents, work, &clock, &mut rng);
        // Rotations first, so that a follower installing one at the same instant counts.
        results.sort_by_key(|(_, _, r)| r.outcome != Outcome::Refreshed);
        for (agent, a, r) in results {
            runs += 1;
            *what_happened.entry(what_happened_in(&r)).or_default() += 1;
            if r.failure.is_some() {
                failures += 1;
                println!("FAILED vm-{agent:02} {}: {}", account_name(a), r.reason);
            }
            if sc.mode == Mode::Daemon {
                let thresholds = agents[agent].settings.accounts[&account_name(a)].refresh.thresholds();
                let schedule = &mut schedules[agent][a];
                schedule.begin().expect("one run per account at a time");
                schedule.finish(&r, &thresholds, None, clock.now(), rng.f64()).expect("finish after begin");
                let at = schedule.wakes_at().map(|t| t.timestamp_millis().max(now + 1));
                next_wake[agent][a] = at;
                if let Some(t) = at {
                    queue.push(Reverse((t, rng.u64(..), agent, a)));
                }
            }
            let Some(sha) = r.auth_sha256.clone() else { continue };
            if r.outcome == Outcome::Refreshed {
                by_sha.insert(sha.clone(), (a, rotations[a].len()));
                rotations[a].push(Rotation { at: now, holders: BTreeSet::new(), all_at: None });
            }
            let Some(&(_, idx)) = by_sha.get(&sha) else { continue };
            let from = held[agent][a].map_or(0, |h| h + 1);
            if from > idx {
                continue;
            }
            held[agent][a] = Some(idx);
            for rot in &mut rotations[a][from..=idx] {
                rot.holders.insert(agent);
                if rot.holders.len() == sc.agents {
                    rot.all_at = Some(now);
                }
            }
        }
    }
    let wall = wall.elapsed();
    let counts: Vec<BTreeMap<String, u64>> = agents.iter().map(|a| a.proxy.snapshot()).collect();
    let token_calls = mock.token_requests();

    // Two final passes of every agent over every account (a refresher may rotate in the
    // first): all then hold Vault's credential, which is the live one at the endpoint.
    clock.0.store(end, Ordering::SeqCst);
    let mut late_rotations = 0;
    for _ in 0..2 {
        for (i, agent) in agents.iter().enumerate() {
            for a in 0..sc.accounts {
                let r = agent.run(a, &clock);
                assert!(r.failure.is_none(), "final pass vm-{i:02} {}: {}", account_name(a), r.reason);
                if r.outcome == Outcome::Refreshed {
                    late_rotations += 1;
                    by_sha.insert(r.auth_sha256.clone().unwrap(), (a, usize::MAX));
                }
            }
        }
    }
    assert_eq!(mock.token_requests(), token_calls + late_rotations, "one token call per late rotation");
    for a in 0..sc.accounts {
        let (vault, _) = bao.get(&rotating_key(a)).unwrap();
        for (i, agent) in agents.iter().enumerate() {
            assert_eq!(agent.auth(a), vault, "vm-{i:02} {} holds Vault's credential", account_name(a));
        }
        let v: serde_json::Value = serde_json::from_slice(&vault).unwrap();
        assert!(mock.is_live_refresh_token(v["tokens"]["refresh_token"].as_str().unwrap()));
        assert_eq!(by_sha.get(&sha256_hex(&vault)).map(|x| x.0), Some(a), "Vault holds the last rotation");
    }

    let hours = (sc.days * DAY) as f64 / HOUR as f64;
    let sum = |pick: &dyn Fn(&Agent) -> bool| -> (u64, usize) {
        let picked: Vec<usize> = (0..sc.agents).filter(|&i| pick(&agents[i])).collect();
        (picked.iter().map(|&i| counts[i].values().sum::<u64>()).sum(), picked.len())
    };
    let rate = |(n, agents): (u64, usize)| if agents == 0 { f64::NAN } else { n as f64 / agents as f64 / hours };
    let mut requests = BTreeMap::new();
    for c in &counts {
        for (k, n) in c {
            *requests.entry(k.clone()).or_default() += n;
        }
    }
    let due_every = ACCESS_LIFETIME - REFRESH_BEFORE_EXPIRY;
    let mut min_spacing = i64::MAX;
    let mut on_time = 0;
    for rots in &rotations {
        for w in rots.windows(2) {
            min_spacing = min_spacing.min(w[1].at - w[0].at);
        }
        if let Some(first) = rots.first() {
            on_time += 1 + ((end - first.at) / due_every) as u64;
        }
    }
    let all: Vec<&Rotation> = rotations.iter().flatten().collect();
    // The first rotation happens while the fleet boots (agents come up over 30 minutes):
    // its convergence measures the deployment, not the steady state.
    let first: Vec<&Rotation> = rotations.iter().filter_map(|r| r.first()).collect();
    let later: Vec<&Rotation> = rotations.iter().flat_map(|r| r.iter().skip(1)).collect();
    Some(Figures {
        name: sc.name,
        agents: sc.agents,
        accounts: sc.accounts,
        days: sc.days,
        mode: sc.mode,
        runs,
        failures,
        what_happened,
        token_calls,
        rotations: all.len() as u64,
        rotations_if_on_time: on_time,
        reuse: mock.reuse_detections(),
        min_spacing_h: min_spacing as f64 / HOUR as f64,
        requests,
        per_agent_hour: rate(sum(&|_| true)),
        per_agent_hour_refresher_hosts: rate(sum(&|a| a.hosts_refresher)),
        per_agent_hour_followers_only: rate(sum(&|a| !a.hosts_refresher)),
        first_convergence_min: first
            .iter()
            .filter_map(|r| r.all_at.map(|t| (t - r.at) as f64 / MINUTE as f64))
            .collect(),
        convergence_min: later.iter().filter_map(|r| r.all_at.map(|t| (t - r.at) as f64 / MINUTE as f64)).collect(),
        unconverged: all.iter().filter(|r| r.all_at.is_none()).count(),
        wall,
    })
}

/// Run each agent's accounts (in order) while different agents run at once, as separate
/// VMs would; returns (agent, account, report).
fn run_concurrently(
    agents: &[Agent],
    work: BTreeMap<usize, BTreeSet<usize>>,
    clock: &SimClock,
    rng: &mut fastrand::Rng,
) -> Vec<(usize, usize, Report)> {
    let mut jobs: Vec<(usize, BTreeSet<usize>)> = work.into_iter().collect();
    rng.shuffle(&mut jobs);
    let jobs = Mutex::new(jobs);
    let out = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                loop {
                    // Not in a `while let`: that would hold the lock for the whole body.
                    let next = jobs.lock().unwrap().pop();
                    let Some((agent, accounts)) = next else { break };
                    for a in accounts {
                        let r = agents[agent].run(a, clock);
                        out.lock().unwrap().push((agent, a, r));
                    }
                }
            });
        }
    });
    out.into_inner().unwrap()
}

/// The invariants every scenario must keep.
fn assert_invariants(f: &Figures) {
    assert_eq!(f.failures, 0, "no run failed");
    assert_eq!(f.reuse, 0, "no refresh_token_reused");
    assert!(f.rotations > 0);
    assert_eq!(f.token_calls, f.rotations, "exactly one token call per rotation");
    // JWT `exp` has whole seconds: a rotation may come up to 1 s earlier than exactly due.
    assert!(
        f.min_spacing_h * HOUR as f64 >= (ACCESS_LIFETIME - REFRESH_BEFORE_EXPIRY - 1000) as f64,
        "no account was refreshed before it was due again: {} h",
        f.min_spacing_h
    );
    assert_eq!(f.requests.get("unparsed"), None, "every Vault request was counted");
    assert_eq!(
        (f.convergence_min.len() + f.first_convergence_min.len() + f.unconverged) as u64,
        f.rotations,
        "every rotation is accounted for"
    );
}

#[test]
fn smoke_three_agents_two_accounts_two_days_converge_with_one_token_call_per_rotation() {
    // Account 0 has one refresher; account 1 is claimed by two agents (a misconfiguration
    // the lease and check-and-set must absorb).
    let sc = Scenario {
        name: "smoke_three_agents_two_accounts_two_days_converge_with_one_token_call_per_rotation",
        agents: 3,
        accounts: 2,
        days: 2,
        mode: Mode::Daemon,
        refreshers: |a, _| if a == 0 { vec![0] } else { vec![1, 2] },
        seed: 1,
        down: None,
    };
    let Some(f) = simulate(&sc) else { return };
    f.print();
    assert_invariants(&f);
    assert!(f.rotations >= 2 * 3, "the shortened lifetime gives several rotations per account: {}", f.rotations);
    assert!(f.unconverged <= sc.accounts, "only a rotation in the last minutes may be unfinished");
}

#[test]
fn a_follower_that_installed_a_reseeded_seed_still_installs_the_first_rotation() {
    // The seed key is at version 2 (a human stored a login twice) when a follower installs
    // it; the refresher's first refresh is then version 2 of the rotating key. Versions of
    // two different keys must not be taken for the same credential.
    let sc = Scenario {
        name: "a_follower_that_installed_a_reseeded_seed_still_installs_the_first_rotation",
        agents: 2,
        accounts: 1,
        days: 0,
        mode: Mode::Daemon,
        refreshers: |_, _| vec![0],
        seed: 0,
        down: None,
    };
    let Some(Fleet { bao, mock, agents }) = fleet(&sc) else { return };
    let again = mock.issue_family("acct-team-00-login-2");
    assert_eq!(bao.put(&seed_key(0), auth_json(&again, OLD).as_bytes()), 2);
    let clock = SimClock(AtomicI64::new(mock_now(&mock)));
    let (refresher, follower) = (&agents[0], &agents[1]);
    let r = follower.run(0, &clock);
    assert!(r.failure.is_none() && r.reason.contains("version 2"), "{}", r.reason);
    let r = refresher.run(0, &clock);
    assert_eq!(r.outcome, Outcome::Refreshed, "{}", r.reason);
    let (rotated, version) = bao.get(&rotating_key(0)).unwrap();
    assert_eq!(version, 2, "mirrored seed (1), then the refresh (2)");
    let r = follower.run(0, &clock);
    assert!(r.failure.is_none(), "{}", r.reason);
    assert!(follower.auth(0) == rotated, "the follower did not install the rotation: {}", r.reason);
    assert_eq!(mock.token_requests(), 1);
}

#[test]
#[ignore = "benchmark: cargo test --release --test bench_fleet -- --ignored --nocapture"]
fn bench_twenty_agents_ten_accounts_thirty_days() {
    let base = |name, mode, refreshers, seed| Scenario {
        name,
        agents: 20,
        accounts: 10,
        days: 30,
        mode,
        refreshers,
        seed,
        down: None,
    };
    let scenarios = [
        base("daemon, one refresher per account", Mode::Daemon, one_refresher as fn(usize, usize) -> Vec<usize>, 6),
        base("daemon, all 20 agents claim refresher for every account", Mode::Daemon, everyone_refreshes, 7),
        base("timer only (no daemon), one refresher per account", Mode::TimerOnly, one_refresher, 8),
        // Same seed as the first: the same fleet, except that team-00's refresher is off for a day.
        Scenario {
            down: Some((0, 10, 11)),
            ..base(
                "daemon, one refresher per account, team-00's refresher off on day 10",
                Mode::Daemon,
                one_refresher,
                6,
            )
        },
    ];
    for sc in &scenarios {
        let Some(f) = simulate(sc) else { return };
        f.print();
        assert_invariants(&f);
    }
}
