//! What the benchmarks (tests/bench_*.rs, all #[ignore]) share: run counts, medians,
//! a child's wall time and peak RSS from wait4, /proc readings of a running daemon, and
//! waiting until the daemon's start-up pass has checked every account.

use super::dbus::manager;
use std::process::Child;
use std::time::{Duration, Instant};

/// Runs per measured variant: `BENCH_RUNS`, at least 11 by default.
pub fn runs() -> usize {
    std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(11)
}

/// Median of `v` (mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "median of nothing");
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// A field of /proc/<pid>/status in KiB (or a plain count), 0 when missing.
pub fn status_kib(pid: u32, key: &str) -> u64 {
    status_field(&format!("/proc/{pid}/status"), key)
}

fn status_field(file: &str, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Reset the peak RSS (VmHWM) of `pid` to its current RSS (`clear_refs` value 5).
pub fn reset_hwm(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

/// One thread's context switches (voluntary, involuntary) and its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadSwitches {
    pub tid: u32,
    pub name: String,
    pub voluntary: u64,
    pub involuntary: u64,
}

/// Context switches of every thread of `pid` now (/proc/<pid>/task/*/status).
pub fn thread_switches(pid: u32) -> Vec<ThreadSwitches> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let file = format!("/proc/{pid}/task/{tid}/status");
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        let name = text.lines().find_map(|l| l.strip_prefix("Name:")).unwrap_or("").trim().to_string();
        out.push(ThreadSwitches {
            tid,
            name,
            voluntary: status_field(&file, "voluntary_ctxt_switches:"),
            involuntary: status_field(&file, "nonvoluntary_ctxt_switches:"),
        });
    }
    out.sort_by_key(|t| t.tid);
    out
}

/// Wall time from spawn to reaping, and the peak RSS wait4 reports: the largest of the
/// process and every descendant it waited for (the kernel keeps the maximum, not a sum).
/// `cpu` is user + system time of the process and its reaped descendants (wait4's rusage).
pub struct Measured {
    pub wall: Duration,
    pub maxrss_kib: u64,
    pub code: i32,
    pub cpu: Duration,
}

/// Reap `child` (spawned at `started`) with wait4 for its rusage.
pub fn reap(child: Child, started: Instant) -> Measured {
    let pid = child.id() as libc::pid_t;
    let (mut status, mut ru) = (0, std::mem::MaybeUninit::<libc::rusage>::zeroed());
    // SAFETY: pid is our unreaped child; status and ru point to writable memory.
    let r = unsafe { libc::wait4(pid, &mut status, 0, ru.as_mut_ptr()) };
    let wall = started.elapsed();
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    // SAFETY: wait4 succeeded, so it filled in ru.
    let ru = unsafe { ru.assume_init() };
    drop(child); // closes its pipes; dropping a Child never waits
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    Measured { wall, maxrss_kib: ru.ru_maxrss as u64, code, cpu: tv(ru.ru_utime) + tv(ru.ru_stime) }
}

/// Wait until the daemon's start-up pass has checked every account (Summary has no
/// stale or refreshing account left).
pub async fn wait_all_checked(conn: &zbus::Connection) {
    let m = manager(conn).await;
    let t0 = Instant::now();
    loop {
        let s: String = m.get_property("Summary").await.unwrap();
        if !s.contains("stale") && !s.contains("refreshing") {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(600), "{s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `n` accounts a0…a{n-1} of the invoking user, each with a fresh login in its own
/// CODEX_HOME under `s`; the `[accounts.*]` TOML naming them.
pub fn fresh_accounts(s: &super::Scratch, m: &mock_openai::MockServer, n: usize) -> String {
    let mut body = String::new();
    for i in 0..n {
        let c = m.issue_family(&format!("acct-{i}"));
        let home = s.codex_home(&format!("h{i}"), Some(&super::auth_json(&c, &super::recent())));
        body.push_str(&format!("[accounts.a{i}]\nuser = \"{}\"\ncodex_home = \"{}\"\n", super::me(), home.display()));
    }
    body
}

/// CPU time of `pid` itself and of its reaped children (utime+stime, cutime+cstime from
/// /proc/<pid>/stat), in milliseconds.
pub fn cpu_ms(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which may contain spaces: state is field 3.
    let f: Vec<f64> = stat.rsplit_once(')').unwrap().1.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect();
    // SAFETY: sysconf has no memory arguments.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ms = |a: usize, b: usize| (f[a] + f[b]) * 1000.0 / hz;
    // utime, stime, cutime, cstime are fields 14..17, i.e. 11..14 counted from state.
    (ms(11, 12), ms(13, 14))
}

/// Median time (ms) of 11 small writes each made durable the way the agent commits a file
/// (fsync of the file, then of its directory) in `dir`: what one commit waits for on this
/// disk right now.
pub fn fsync_probe_ms(dir: &std::path::Path) -> f64 {
    use std::io::Write;
    let mut times = Vec::new();
    for i in 0..11 {
        let t0 = Instant::now();
        let mut f = std::fs::File::create(dir.join(format!("fsync-probe-{i}"))).unwrap();
        f.write_all(&[b'x'; 700]).unwrap();
        f.sync_all().unwrap();
        std::fs::File::open(dir).unwrap().sync_all().unwrap();
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    median(times)
}
