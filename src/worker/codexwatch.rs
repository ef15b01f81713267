//! A Codex of this account running beside the agent, and what a refresh does about it
//! (issue #11 part 3: "Codex and the agent refresh the same expired token at once").
//!
//! Codex refreshes lazily and POSTs before it takes any lock (codex-contract), so no lock of
//! ours can stop it and us from sending the same single-use refresh token; timing and
//! knowledge can:
//!
//! - **Yield.** When the credential is already inside Codex's own refresh window (expired,
//!   or expiring within Codex's margin: 5 min since 0.169, none in 0.130) and a Codex process
//!   runs with this CODEX_HOME, that Codex is about to refresh or is refreshing. We wait for
//!   it — at most `request_timeout` (its POST and its commit), less if every such Codex exits
//!   — re-read auth.json and adopt what it wrote (`fresh`, `Event::Adopted`). We POST only
//!   when no such Codex runs, or it did not refresh in time. Outside that window nothing
//!   changes: Codex does not refresh there, so there is nothing to race.
//! - **Verify.** While our POST is in flight we keep looking for such a Codex. If one ran, it
//!   may have sent the same token, and the refresh is verified, not assumed: after our commit
//!   (from then on a Codex that reloads auth.json before refreshing finds the new token and
//!   skips its POST) we wait until its attempt is over — every such process has exited, or
//!   twice our POST's duration plus a second has passed, so a POST it sent before our commit
//!   has been decided; never longer than `request_timeout` — and refresh once more with the
//!   NEW refresh token. The token endpoint accepts that only while the login is alive: if the
//!   collision revoked it the report is a permanent failure naming the collision and
//!   refresh_token_reused, never `refreshed`. A Codex POST decided after our verification (a
//!   Codex whose request took longer than that wait) would still revoke the login unseen:
//!   the residual, measured in docs/RELIABILITY.md with the smaller window before it.
//!
//! The scan reads /proc as the worker's user (the account's), which sees exactly the Codex
//! processes that can write this CODEX_HOME; processes that vanish or cannot be read are
//! skipped. The agent's own throwaway Codex homes never count.

use crate::core::authfile::{AuthFile, NewTokens, sha256_hex};
use crate::core::clock::Clock;
use crate::core::outcome::{Event, Failure, FailureClass, Outcome, Report};
use crate::sys::safedir::{FileRead, SafeDir};
use chrono::{DateTime, Utc};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The same name as `worker::AUTH_FILE`, repeated so this module does not import the worker.
const AUTH_FILE: &str = "auth.json";
/// Prefix of the agent's throwaway Codex homes (`codexrun::HOME_PREFIX`; a test keeps them equal).
const THROWAWAY_PREFIX: &str = "codex-auth-agent-";
/// Codex 0.169/0.171 refresh when the access token expires within this (290 s refreshed,
/// 310 s did not: codex-contract).
pub const CODEX_MARGIN: Duration = Duration::from_secs(300);
/// Without a readable `exp`, Codex refreshes when last_refresh is older than this.
pub const CODEX_MAX_AGE: Duration = Duration::from_secs(8 * 24 * 3600);
/// How often the waits look at /proc and auth.json.
const POLL: Duration = Duration::from_millis(50);

// --- pure parts -------------------------------------------------------------------------

/// A Codex CLI version (`0.169.0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// `0.169.0`, `0.169.0-linux-x64` or `v0.171.0` → the three numbers.
pub fn parse_version(s: &str) -> Option<Version> {
    let core = s.trim().trim_start_matches('v').split(['-', '+']).next()?;
    let mut n = core.split('.').map(|p| p.parse::<u32>().ok());
    let v = Version(n.next()??, n.next()??, n.next()??);
    n.next().is_none().then_some(v)
}

/// How long before the access token's expiry this Codex refreshes on its own: none up to
/// 0.130 (only once expired), 5 min since 0.169. Unknown and in-between versions get the
/// 5 min: yielding for nothing costs a bounded wait, not yielding may cost the login.
pub fn refresh_margin(v: Option<Version>) -> Duration {
    match v {
        Some(Version(0, minor, _)) if minor <= 130 => Duration::ZERO,
        _ => CODEX_MARGIN,
    }
}

/// The two times of a credential that Codex's refresh decision reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Times {
    pub expires_at: Option<DateTime<Utc>>,
    pub last_refresh: Option<DateTime<Utc>>,
}

impl Times {
    pub fn of(auth: &AuthFile) -> Times {
        Times { expires_at: auth.access_expires_at(), last_refresh: auth.last_refresh() }
    }
}

fn chrono_of(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Would a Codex with `margin` refresh this credential itself at `now`? Codex's rule:
/// exp − now ≤ margin; without exp, last_refresh older than 8 days; knowing neither, we
/// assume it would.
pub fn in_codex_window(t: Times, margin: Duration, now: DateTime<Utc>) -> bool {
    match (t.expires_at, t.last_refresh) {
        (Some(exp), _) => exp.signed_duration_since(now) <= chrono_of(margin),
        (None, Some(lr)) => now.signed_duration_since(lr) > chrono_of(CODEX_MAX_AGE),
        (None, None) => true,
    }
}

/// Is this process a Codex CLI? The native binary (`…/codex`), or Node.js running the npm
/// launcher (`node …/@openai/codex/bin/codex.js`, or `node …/.bin/codex` when started
/// through the symlink's shebang). Returns the program's path, which locates its package.
pub fn codex_program(argv: &[String], exe: Option<&Path>) -> Option<PathBuf> {
    let name = |p: &str| Path::new(p).file_name().map(|n| n.to_string_lossy().into_owned());
    let exe_name = exe.and_then(|e| name(&e.to_string_lossy()));
    if exe_name.as_deref() == Some("codex") {
        return exe.map(Path::to_path_buf);
    }
    let argv0 = argv.first().and_then(|a| name(a));
    if argv0.as_deref() == Some("codex") {
        return Some(exe.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(&argv[0])));
    }
    let is_node = |n: &Option<String>| n.as_deref().is_some_and(|n| n == "node" || n.starts_with("node"));
    if !is_node(&exe_name) && !is_node(&argv0) {
        return None;
    }
    // Node's own options come first; the script is one of the next few arguments.
    argv.iter().skip(1).take(4).find(|a| matches!(name(a).as_deref(), Some("codex.js" | "codex"))).map(PathBuf::from)
}

/// One `KEY=value` of a NUL-separated /proc environ.
fn env_var<'e>(environ: &'e [u8], key: &str) -> Option<&'e [u8]> {
    environ.split(|b| *b == 0).find_map(|kv| kv.strip_prefix(key.as_bytes())?.strip_prefix(b"="))
}

/// The CODEX_HOME a Codex process uses: its `CODEX_HOME`, else `$HOME/.codex`, else the
/// passwd home's `.codex`; a relative one is taken from its working directory.
pub fn codex_home_of(
    environ: &[u8],
    cwd: Option<&Path>,
    passwd_home: impl FnOnce() -> Option<PathBuf>,
) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let path = |b: &[u8]| PathBuf::from(std::ffi::OsStr::from_bytes(b));
    let home = match env_var(environ, "CODEX_HOME").filter(|v| !v.is_empty()) {
        Some(v) => path(v),
        None => match env_var(environ, "HOME").filter(|v| !v.is_empty()) {
            Some(h) => path(h).join(".codex"),
            None => passwd_home()?.join(".codex"),
        },
    };
    if home.is_absolute() { Some(home) } else { cwd.map(|c| c.join(home)) }
}

/// A throwaway home of the agent (preflight, app-server): never the account's CODEX_HOME.
pub fn is_throwaway(home: &Path) -> bool {
    home.components().any(|c| matches!(c, Component::Normal(n) if n.to_string_lossy().starts_with(THROWAWAY_PREFIX)))
}

/// What the wait for a yielded-to Codex sees on one look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileSeen {
    /// auth.json is byte-identical to what we read.
    Same,
    /// Someone wrote a valid auth.json.
    Changed,
    /// auth.json is missing, unreadable or not valid (perhaps half-written by Codex 0.130,
    /// which truncates it in place).
    Broken,
}

/// What to do next while yielding to Codex.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Wait,
    /// Codex (or another writer) replaced the credential: keep it.
    Adopt,
    /// Refresh ourselves after all.
    Post(WhyPost),
    /// auth.json stayed broken: neither adopt nor spend the token we read.
    GiveUp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhyPost {
    /// Every Codex of this home exited without refreshing.
    CodexGone,
    /// Codex still runs but did not refresh within the wait.
    TimedOut,
}

/// One step of the yield: pure in (what the file is, whether a Codex of this home still
/// runs, how long we waited, the limit).
pub fn yield_step(file: FileSeen, codex_running: bool, waited: Duration, limit: Duration) -> Step {
    match file {
        FileSeen::Changed => Step::Adopt,
        FileSeen::Broken if codex_running && waited < limit => Step::Wait,
        FileSeen::Broken => Step::GiveUp,
        FileSeen::Same if !codex_running => Step::Post(WhyPost::CodexGone),
        FileSeen::Same if waited >= limit => Step::Post(WhyPost::TimedOut),
        FileSeen::Same => Step::Wait,
    }
}

/// How long to let a racing Codex finish its attempt after our commit: twice our POST's
/// duration (its POST left before our commit, the endpoint answers it about as fast as ours)
/// plus a second, never more than `request_timeout`.
pub fn settle_limit(post_took: Duration, request_timeout: Duration) -> Duration {
    (post_took.saturating_mul(2) + Duration::from_secs(1)).min(request_timeout)
}

/// A failure that means the token was spent by someone else, or the login revoked for it.
pub fn is_reuse(f: &Failure) -> bool {
    f.class == FailureClass::Permanent
        && ["(refresh_token_reused", "(refresh_token_invalidated"].iter().any(|c| f.reason.contains(c))
}

fn pid_list(procs: &[CodexProc]) -> String {
    let mut pids: Vec<i32> = procs.iter().map(|p| p.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    pids.iter().map(i32::to_string).collect::<Vec<_>>().join(", ")
}

/// Our own POST failed as reused/revoked while a Codex of this home ran: say it collided.
pub fn explain_first_post(mut f: Failure, racing: &[CodexProc]) -> Failure {
    if !racing.is_empty() && is_reuse(&f) {
        f.reason = format!(
            "refresh collided with a running Codex of this account (pid {}) that sent the same refresh token at \
                the same moment: {}",
            pid_list(racing),
            f.reason
        );
    }
    f
}

/// The verifying refresh (with the new token) failed: permanent means the collision revoked
/// the login; anything else leaves the question open.
pub fn verification_failure(f: Failure, racing: &[CodexProc]) -> Failure {
    let pids = pid_list(racing);
    let reason = match f.class {
        FailureClass::Permanent => format!(
            "refresh collided with a running Codex of this account (pid {pids}) that sent the same refresh \
                token (refresh_token_reused): the token endpoint revoked the login, and the new refresh token was \
                refused when we verified it: {}",
            f.reason
        ),
        _ => format!(
            "refreshed, but a Codex of this account (pid {pids}) ran during the refresh and the check that the \
                login survived it failed (if that check reached the endpoint, its answer is lost and the login is \
                spent): {}",
            f.reason
        ),
    };
    Failure { reason, ..f }
}

// --- /proc ------------------------------------------------------------------------------

/// One Codex process of this account's CODEX_HOME.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodexProc {
    pub pid: i32,
    /// Start time (clock ticks since boot): tells a live process from a reused pid.
    pub start: u64,
    pub version: Option<Version>,
}

/// Finds the Codex processes whose CODEX_HOME is one directory.
pub struct Scanner {
    home: PathBuf,
    canonical: Option<PathBuf>,
    euid: u32,
}

/// `/proc/<pid>/stat` → (state, start time); None when gone.
fn stat_of(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split(' ');
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(18)?.parse().ok()?))
}

/// The version of the Codex CLI `agent.codex_bin` names, from its npm package files (no
/// exec: a few small reads, cheap enough for every refresh); for a Codex installed some
/// other way (no package.json beside it), what `codex --version` prints. None when neither
/// tells.
pub fn codex_bin_version(bin: &str) -> Option<Version> {
    let resolved = crate::worker::codexrun::resolve_bin(bin, std::env::var_os("PATH").as_deref()).ok()?;
    let program = std::fs::canonicalize(&resolved).unwrap_or(resolved);
    version_near(&program).or_else(|| version_printed(&program))
}

/// `codex --version` ("codex-cli 0.171.0"), given a few seconds, its whole process group
/// killed after them.
fn version_printed(program: &Path) -> Option<Version> {
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(program)
        .arg("--version")
        .env_clear()
        .envs(std::env::var_os("PATH").map(|p| ("PATH", p)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .ok()?;
    let stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::Read::take(stdout, 4096), &mut text);
        text
    });
    crate::sys::process::wait_or_kill_group(&mut child, Duration::from_secs(5))?;
    version_in(&reader.join().ok()?)
}

/// The version in the first line `codex --version` prints.
fn version_in(text: &str) -> Option<Version> {
    text.lines().next()?.split_whitespace().find_map(parse_version)
}

/// The `@openai/codex` package version next to a Codex program (native binary or launcher).
fn version_near(program: &Path) -> Option<Version> {
    for dir in program.ancestors().skip(1).take(6) {
        let Ok(text) = std::fs::read(dir.join("package.json")) else { continue };
        if text.len() > 64 * 1024 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
        if v["name"].as_str().is_some_and(|n| n.starts_with("@openai/codex")) {
            return v["version"].as_str().and_then(parse_version);
        }
    }
    None
}

impl Scanner {
    pub fn new(codex_home: &Path) -> Scanner {
        Scanner {
            home: codex_home.to_path_buf(),
            canonical: std::fs::canonicalize(codex_home).ok(),
            euid: nix::unistd::geteuid().as_raw(),
        }
    }

    fn is_ours(&self, home: &Path) -> bool {
        if is_throwaway(home) {
            return false;
        }
        let theirs = std::fs::canonicalize(home).ok();
        match (&self.canonical, &theirs) {
            (Some(a), Some(b)) => a == b,
            _ => home.components().eq(self.home.components()),
        }
    }

    /// Every running Codex of this CODEX_HOME now.
    pub fn scan(&self) -> Vec<CodexProc> {
        let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
        rd.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).filter_map(|p| self.look(p)).collect()
    }

    /// One process, if it is a live Codex of this home. Anything unreadable: not ours,
    /// except a Codex of our own uid whose environment we may not read (it made itself
    /// undumpable): it may be this account's, and yielding for nothing only costs a wait.
    fn look(&self, pid: i32) -> Option<CodexProc> {
        use std::os::unix::fs::MetadataExt;
        let dir = PathBuf::from(format!("/proc/{pid}"));
        let argv: Vec<String> = std::fs::read(dir.join("cmdline"))
            .ok()?
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let exe = std::fs::read_link(dir.join("exe")).ok();
        let program = codex_program(&argv, exe.as_deref())?;
        let ours = match read_environ(&dir) {
            // Still inside execve() (neither its arguments nor its environment set up yet):
            // most likely a Codex that is just starting; the next look tells for sure.
            Ok(environ) if environ.is_empty() && argv.is_empty() => true,
            Ok(environ) => {
                let cwd = std::fs::read_link(dir.join("cwd")).ok();
                let uid = std::fs::metadata(&dir).ok()?.uid();
                let passwd = || nix::unistd::User::from_uid(uid.into()).ok().flatten().map(|u| u.dir);
                codex_home_of(&environ, cwd.as_deref(), passwd).is_some_and(|h| self.is_ours(&h))
            }
            Err(_) => std::fs::metadata(&dir).ok()?.uid() == self.euid,
        };
        let (state, start) = stat_of(pid)?;
        (ours && state != 'Z' && state != 'X').then(|| CodexProc { pid, start, version: version_near(&program) })
    }
}

/// /proc/<pid>/environ. A process caught inside execve() (the binary already switched, its
/// new stack not yet set up; seen for up to 10 ms with Codex 0.169) shows an empty one: look
/// again for up to 20 ms before believing it, or a Codex that has just started would count
/// as another home's.
fn read_environ(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut environ = std::fs::read(dir.join("environ"))?;
    for _ in 0..20 {
        if !environ.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
        environ = std::fs::read(dir.join("environ"))?;
    }
    Ok(environ)
}

/// Is this exact process (pid and start time) still running?
fn alive(p: &CodexProc) -> bool {
    stat_of(p.pid).is_some_and(|(state, start)| start == p.start && state != 'Z' && state != 'X')
}

// --- the cycle's side -------------------------------------------------------------------

/// What the watch needs from the cycle.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub account: &'a str,
    pub codex_home: &'a Path,
    pub home: &'a SafeDir,
    pub request_timeout: Duration,
    pub clock: &'a dyn Clock,
}

/// What [`before_post`] decided.
pub enum Before<'a> {
    /// Finished without a POST of ours (Codex's credential adopted, or auth.json broken).
    Done(Report),
    /// Refresh: through [`Watch::post`], then [`Watch::verify`].
    Post(Watch<'a>),
}

/// Our knowledge of Codex processes around one refresh of ours.
pub struct Watch<'a> {
    ctx: Ctx<'a>,
    scanner: Scanner,
    times: Times,
    /// The credential is (nearly) inside a Codex's refresh window: look for Codex at all.
    watching: bool,
    /// Every Codex of this home, inside its refresh window for the credential we read, seen
    /// from our decision to the end of our POST: each may have sent the same token.
    racing: Vec<CodexProc>,
    /// We yielded and then refreshed anyway: why (for the reason).
    yielded: Option<String>,
    post_took: Duration,
}

/// The report fields that describe a credential (as `worker`'s `describe`).
fn describe(mut r: Report, bytes: &[u8], auth: &AuthFile) -> Report {
    r.expires_at = auth.access_expires_at();
    r.last_refresh = auth.last_refresh();
    r.token_fp = auth.token_fp();
    r.auth_sha256 = Some(sha256_hex(bytes));
    r.account_id = auth.account_id();
    r
}

fn read_auth(home: &SafeDir) -> Option<FileRead> {
    home.read(AUTH_FILE).ok().flatten()
}

/// Look for a Codex of this account before our POST; when the credential is inside its
/// refresh window, wait for it to refresh and adopt what it wrote.
pub fn before_post<'a>(ctx: Ctx<'a>, bytes: &[u8], auth: &AuthFile) -> Before<'a> {
    let scanner = Scanner::new(ctx.codex_home);
    let times = Times::of(auth);
    let now = ctx.clock.now();
    let inside = |p: &CodexProc| in_codex_window(times, refresh_margin(p.version), now);
    // Outside every Codex's window (the usual case: our margin is far wider) no Codex
    // refreshes before our POST is over, so there is nothing to look for.
    let watching = in_codex_window(times, CODEX_MARGIN + ctx.request_timeout, now);
    let racing: Vec<CodexProc> =
        if watching { scanner.scan().into_iter().filter(inside).collect() } else { Vec::new() };
    let mut watch = Watch { ctx, scanner, times, watching, racing, yielded: None, post_took: Duration::ZERO };
    if watch.racing.is_empty() {
        return Before::Post(watch);
    }
    let limit = ctx.request_timeout;
    tracing::info!(
        account = %ctx.account,
        "the credential is inside Codex's own refresh window and Codex (pid {}) runs with this CODEX_HOME: \
            waiting up to {}s for it to refresh",
        pid_list(&watch.racing),
        limit.as_secs_f32()
    );
    let started = Instant::now();
    loop {
        std::thread::sleep(POLL);
        let running: Vec<CodexProc> = watch.scanner.scan().into_iter().filter(inside).collect();
        watch.remember(&running);
        let (file, changed) = match read_auth(ctx.home) {
            Some(f) if f.bytes == bytes => (FileSeen::Same, None),
            Some(f) => match AuthFile::parse(&f.bytes, &ctx.codex_home.join(AUTH_FILE)) {
                Ok(a) => (FileSeen::Changed, Some((f.bytes, a))),
                Err(_) => (FileSeen::Broken, None),
            },
            None => (FileSeen::Broken, None),
        };
        match yield_step(file, !running.is_empty(), started.elapsed(), limit) {
            Step::Wait => {}
            Step::Adopt => {
                if let Some((b, a)) = changed {
                    return Before::Done(watch.adopted(&b, &a, started.elapsed()));
                }
            }
            Step::Post(why) => {
                let pids = pid_list(&watch.racing);
                let waited = started.elapsed().as_secs_f32();
                watch.yielded = Some(match why {
                    WhyPost::CodexGone => format!("Codex (pid {pids}) exited after {waited:.1}s without refreshing"),
                    WhyPost::TimedOut => format!("Codex (pid {pids}) did not refresh within {waited:.1}s"),
                });
                let yielded = watch.yielded.as_deref().unwrap_or("");
                tracing::info!(account = %ctx.account, "{yielded}: refreshing ourselves");
                return Before::Post(watch);
            }
            Step::GiveUp => {
                return Before::Done(Report::failed(
                    ctx.account,
                    Failure::transient(format!(
                        "auth.json changed while we waited for the running Codex of this account (pid {}) to \
                            refresh it, and is not a valid auth.json now; will retry",
                        pid_list(&watch.racing)
                    )),
                ));
            }
        }
    }
}

impl Watch<'_> {
    fn remember(&mut self, procs: &[CodexProc]) {
        for p in procs {
            if !self.racing.iter().any(|q| q.pid == p.pid && q.start == p.start) {
                self.racing.push(p.clone());
            }
        }
    }

    fn adopted(&self, bytes: &[u8], auth: &AuthFile, waited: Duration) -> Report {
        let mut r = Report::new(
            self.ctx.account,
            Outcome::Fresh,
            format!(
                "the credential was inside Codex's own refresh window and a Codex of this account (pid {}) was \
                    running, so we let it refresh: auth.json changed after {:.1}s; kept the on-disk credential",
                pid_list(&self.racing),
                waited.as_secs_f32()
            ),
        );
        r.events.push(Event::Adopted);
        tracing::info!(account = %self.ctx.account, "{}", r.reason);
        describe(r, bytes, auth)
    }

    /// Run our refresh step `f`, looking for a Codex of this home that starts or runs
    /// meanwhile. A reuse failure while one ran is reported as the collision it is.
    pub fn post<T>(&mut self, f: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
        if !self.watching {
            return f();
        }
        let now = self.ctx.clock.now();
        let times = self.times;
        let inside = |p: &CodexProc| in_codex_window(times, refresh_margin(p.version), now);
        let started = Instant::now();
        let seen = Mutex::new(Vec::new());
        let (stop, stopped) = mpsc::channel::<()>();
        let result = std::thread::scope(|s| {
            let (scanner, seen) = (&self.scanner, &seen);
            s.spawn(move || {
                loop {
                    let found: Vec<CodexProc> = scanner.scan().into_iter().filter(inside).collect();
                    seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(found);
                    // Disconnected (our POST answered) ends the loop at once.
                    if stopped.recv_timeout(POLL) != Err(mpsc::RecvTimeoutError::Timeout) {
                        break;
                    }
                }
            });
            let r = f();
            drop(stop);
            r
        });
        self.post_took = started.elapsed();
        let mut seen = seen.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        // And one look after the answer: a Codex that started at its very end.
        seen.extend(self.scanner.scan().into_iter().filter(inside));
        self.remember(&seen);
        result.map_err(|f| explain_first_post(f, &self.racing))
    }

    /// After our commit (`report`): when a Codex of this home may have raced our POST, let
    /// its attempt end, then refresh once more with the new token (`refresh`, committed by
    /// `save`) to prove the login survived.
    pub fn verify(
        self,
        report: Report,
        refresh: impl FnOnce(&[u8], &AuthFile) -> Result<NewTokens, Failure>,
        save: impl FnOnce(Vec<u8>, AuthFile, &NewTokens) -> Report,
    ) -> Report {
        if self.racing.is_empty() || report.outcome != Outcome::Refreshed {
            return report;
        }
        let pids = pid_list(&self.racing);
        let limit = settle_limit(self.post_took, self.ctx.request_timeout);
        let started = Instant::now();
        while started.elapsed() < limit && self.racing.iter().any(alive) {
            std::thread::sleep(POLL);
        }
        let settled = started.elapsed().as_secs_f32();
        let path = self.ctx.codex_home.join(AUTH_FILE);
        let Some((file, auth)) =
            read_auth(self.ctx.home).and_then(|f| AuthFile::parse(&f.bytes, &path).ok().map(|a| (f, a)))
        else {
            return report;
        };
        if Some(sha256_hex(&file.bytes)) != report.auth_sha256 {
            let mut r = Report::new(
                self.ctx.account,
                Outcome::Fresh,
                format!(
                    "refreshed while a Codex of this account (pid {pids}) was running, then auth.json changed \
                        before we could verify the new login; kept the on-disk credential"
                ),
            );
            r.events.push(Event::Adopted);
            return describe(r, &file.bytes, &auth);
        }
        tracing::info!(
            account = %self.ctx.account,
            "a Codex of this account (pid {pids}) ran during our refresh: verifying the new login with a second \
                refresh after {settled:.1}s"
        );
        let yielded = self.yielded.map(|y| format!("; {y}")).unwrap_or_default();
        match refresh(&file.bytes, &auth) {
            Ok(tokens) => {
                let mut r = save(file.bytes, auth, &tokens);
                if r.outcome == Outcome::Refreshed {
                    r.reason = format!(
                        "{}{yielded}; verified: a Codex of this account (pid {pids}) ran during the refresh, so \
                            once its attempt was over ({settled:.1}s later) the new login was refreshed once more and \
                            is alive",
                        r.reason
                    );
                }
                r
            }
            Err(f) => {
                let f = verification_failure(f, &self.racing);
                tracing::warn!(account = %self.ctx.account, "{}", f.reason);
                describe(Report::failed(self.ctx.account, f), &file.bytes, &auth)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_codex_prints_is_read() {
        assert_eq!(version_in("codex-cli 0.171.0\n"), Some(Version(0, 171, 0)));
        assert_eq!(version_in("codex-cli 0.130.0-alpha.1"), Some(Version(0, 130, 0)));
        assert_eq!(version_in("error: unknown flag\ncodex-cli 1.2.3"), None);
        assert_eq!(version_in(""), None);
    }

    #[test]
    fn a_codex_without_its_npm_package_is_asked_for_its_version() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("codex");
        std::fs::write(&bin, "#!/bin/sh\n[ \"$1\" = --version ] && echo 'codex-cli 0.171.0'\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(codex_bin_version(bin.to_str().unwrap()), Some(Version(0, 171, 0)));
        std::fs::write(&bin, "#!/bin/sh\nexit 1\n").unwrap();
        assert_eq!(codex_bin_version(bin.to_str().unwrap()), None);
    }
    use crate::core::classify::classify_http;
    use std::os::unix::process::CommandExt;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn times(exp: Option<i64>, lr: Option<i64>) -> Times {
        Times { expires_at: exp.map(at), last_refresh: lr.map(at) }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn versions_parse_from_npm_and_cli_forms() {
        assert_eq!(parse_version("0.169.0"), Some(Version(0, 169, 0)));
        assert_eq!(parse_version("0.169.0-linux-x64"), Some(Version(0, 169, 0)));
        assert_eq!(parse_version("v0.171.2+build"), Some(Version(0, 171, 2)));
        for bad in ["", "0.169", "0.169.x", "a.b.c", "0.1.2.3"] {
            assert_eq!(parse_version(bad), None, "{bad}");
        }
    }

    #[test]
    fn codex_margin_by_version() {
        assert_eq!(refresh_margin(Some(Version(0, 130, 0))), Duration::ZERO);
        assert_eq!(refresh_margin(Some(Version(0, 99, 9))), Duration::ZERO);
        for v in [Some(Version(0, 169, 0)), Some(Version(0, 171, 0)), Some(Version(0, 150, 0)), Some(Version(1, 0, 0))]
        {
            assert_eq!(refresh_margin(v), CODEX_MARGIN, "{v:?}");
        }
        assert_eq!(refresh_margin(None), CODEX_MARGIN, "unknown: assume the window");
    }

    #[test]
    fn codex_window_follows_codexs_own_rule() {
        let now = 1_000_000;
        let inside = |t, m| in_codex_window(t, m, at(now));
        // 0.169: exp − now ≤ 5 min (290 s refreshed, 310 s did not).
        assert!(inside(times(Some(now + 290), None), CODEX_MARGIN));
        assert!(inside(times(Some(now + 300), None), CODEX_MARGIN));
        assert!(!inside(times(Some(now + 310), None), CODEX_MARGIN));
        assert!(inside(times(Some(now - 100), None), CODEX_MARGIN));
        // 0.130: only once expired.
        assert!(!inside(times(Some(now + 10), None), Duration::ZERO));
        assert!(inside(times(Some(now), None), Duration::ZERO));
        assert!(inside(times(Some(now - 1), None), Duration::ZERO));
        // exp wins over last_refresh.
        assert!(!inside(times(Some(now + 3600), Some(now - 30 * 86_400)), CODEX_MARGIN));
        // No exp: last_refresh older than 8 days.
        assert!(inside(times(None, Some(now - 9 * 86_400)), CODEX_MARGIN));
        assert!(!inside(times(None, Some(now - 7 * 86_400)), CODEX_MARGIN));
        assert!(inside(times(None, None), CODEX_MARGIN), "knowing neither: assume Codex refreshes");
    }

    #[test]
    fn codex_processes_are_recognised_by_program() {
        let native =
            Path::new("/opt/n/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex");
        assert_eq!(codex_program(&strings(&["codex", "exec", "hi"]), Some(native)), Some(native.to_path_buf()));
        // exe unreadable: argv[0] decides.
        assert_eq!(
            codex_program(&strings(&["/usr/local/bin/codex", "app-server"]), None),
            Some("/usr/local/bin/codex".into())
        );
        let node = Path::new("/usr/bin/node");
        let js = "/usr/lib/node_modules/@openai/codex/bin/codex.js";
        assert_eq!(codex_program(&strings(&["node", js, "exec"]), Some(node)), Some(js.into()));
        assert_eq!(codex_program(&strings(&["node", "--max-old-space-size=4096", js]), Some(node)), Some(js.into()));
        assert_eq!(
            codex_program(&strings(&["node", "/home/a/.npm/bin/.bin/codex", "exec"]), Some(node)),
            Some("/home/a/.npm/bin/.bin/codex".into())
        );
        for (argv, exe) in [
            (vec!["node", "/srv/app/server.js"], Some(node)),
            (vec!["codex-auth-agent", "refresh"], Some(Path::new("/usr/bin/codex-auth-agent"))),
            (vec!["bash", "-c", "codex exec"], Some(Path::new("/usr/bin/bash"))),
            (vec!["vim", "codex.js"], Some(Path::new("/usr/bin/vim"))),
            (vec![], None),
        ] {
            assert_eq!(codex_program(&strings(&argv), exe), None, "{argv:?}");
        }
    }

    #[test]
    fn codex_home_of_a_process() {
        let none = || None;
        let cwd = Some(Path::new("/work"));
        assert_eq!(codex_home_of(b"A=1\0CODEX_HOME=/srv/c\0HOME=/h\0", cwd, none), Some("/srv/c".into()));
        assert_eq!(codex_home_of(b"HOME=/home/alice\0", cwd, none), Some("/home/alice/.codex".into()));
        assert_eq!(codex_home_of(b"CODEX_HOME=\0HOME=/h\0", cwd, none), Some("/h/.codex".into()), "empty is unset");
        assert_eq!(codex_home_of(b"CODEX_HOME=rel/c\0", cwd, none), Some("/work/rel/c".into()));
        assert_eq!(codex_home_of(b"CODEX_HOME=rel/c\0", None, none), None);
        assert_eq!(codex_home_of(b"PATH=/bin\0", cwd, || Some("/home/bob".into())), Some("/home/bob/.codex".into()));
        assert_eq!(codex_home_of(b"", cwd, none), None);
        assert_eq!(codex_home_of(b"XCODEX_HOME=/x\0HOME=/h", cwd, none), Some("/h/.codex".into()), "whole keys only");
    }

    #[test]
    fn the_agents_throwaway_homes_never_count() {
        assert_eq!(THROWAWAY_PREFIX, crate::core::contract::HOME_PREFIX);
        assert!(is_throwaway(Path::new("/tmp/codex-auth-agent-1000-x1y2/.codex")));
        assert!(!is_throwaway(Path::new("/home/alice/.codex")));
        assert!(!is_throwaway(Path::new("/srv/codex-auth/.codex")));
    }

    #[test]
    fn yield_steps() {
        let (s, lim) = (Duration::from_secs(1), Duration::from_secs(30));
        use FileSeen::*;
        assert_eq!(yield_step(Same, true, s, lim), Step::Wait);
        assert_eq!(yield_step(Same, true, lim, lim), Step::Post(WhyPost::TimedOut));
        assert_eq!(yield_step(Same, false, s, lim), Step::Post(WhyPost::CodexGone));
        assert_eq!(yield_step(Changed, true, s, lim), Step::Adopt);
        assert_eq!(yield_step(Changed, false, lim, lim), Step::Adopt, "a change wins even at the limit");
        assert_eq!(yield_step(Broken, true, s, lim), Step::Wait, "Codex 0.130 may be mid-write");
        assert_eq!(yield_step(Broken, true, lim, lim), Step::GiveUp);
        assert_eq!(yield_step(Broken, false, s, lim), Step::GiveUp);
    }

    #[test]
    fn settle_time_is_bounded_by_the_request_timeout() {
        let t = Duration::from_secs(30);
        assert_eq!(settle_limit(Duration::from_millis(300), t), Duration::from_millis(1600));
        assert_eq!(settle_limit(Duration::from_secs(20), t), t);
        assert_eq!(settle_limit(Duration::ZERO, Duration::from_millis(500)), Duration::from_millis(500));
    }

    fn procs(pids: &[i32]) -> Vec<CodexProc> {
        pids.iter().map(|&pid| CodexProc { pid, start: 1, version: None }).collect()
    }

    #[test]
    fn collisions_are_named_and_other_failures_kept() {
        let reused = classify_http(401, br#"{"error":{"code":"refresh_token_reused"}}"#);
        let revoked = classify_http(401, br#"{"error":"refresh_token_invalidated"}"#);
        let expired = classify_http(401, br#"{"error":{"code":"refresh_token_expired"}}"#);
        let busy = classify_http(503, b"");
        assert!(is_reuse(&reused) && is_reuse(&revoked));
        assert!(!is_reuse(&expired) && !is_reuse(&busy));

        let f = explain_first_post(reused.clone(), &procs(&[42, 7, 42]));
        assert_eq!(f.class, FailureClass::Permanent);
        assert!(
            f.reason.starts_with("refresh collided with a running Codex of this account (pid 7, 42)"),
            "{}",
            f.reason
        );
        assert!(f.reason.contains("refresh_token_reused") && f.reason.contains("codex login --device-auth"));
        assert_eq!(explain_first_post(reused.clone(), &[]), reused, "no Codex ran: no collision claimed");
        assert_eq!(explain_first_post(expired.clone(), &procs(&[7])), expired);

        let v = verification_failure(revoked, &procs(&[9]));
        assert_eq!((v.class, v.http_status), (FailureClass::Permanent, Some(401)));
        for part in ["collided", "pid 9", "refresh_token_reused", "revoked the login", "refresh_token_invalidated"] {
            assert!(v.reason.contains(part), "{part}: {}", v.reason);
        }
        let v = verification_failure(busy, &procs(&[9]));
        assert_eq!(v.class, FailureClass::Transient);
        assert!(v.reason.contains("could not") || v.reason.contains("failed"), "{}", v.reason);
        assert!(v.reason.contains("will retry"), "{}", v.reason);
    }

    #[test]
    fn package_version_next_to_the_program() {
        let d = tempfile::tempdir().unwrap();
        let pkg = d.path().join("node_modules/@openai/codex-linux-x64");
        let bin = pkg.join("vendor/x86_64-unknown-linux-musl/codex");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(pkg.join("package.json"), r#"{"name":"@openai/codex","version":"0.130.0-linux-x64"}"#).unwrap();
        assert_eq!(version_near(&bin.join("codex")), Some(Version(0, 130, 0)));
        std::fs::write(pkg.join("package.json"), r#"{"name":"left-pad","version":"1.0.0"}"#).unwrap();
        assert_eq!(version_near(&bin.join("codex")), None);
        assert_eq!(version_near(Path::new("/nonexistent/bin/codex")), None);
    }

    /// A process that looks like Codex: `sleep` started through a symlink named `codex`.
    fn fake_codex(dir: &Path, env: &[(&str, &Path)]) -> std::process::Child {
        let link = dir.join("bin/codex");
        if !link.exists() {
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink("/bin/sleep", &link).unwrap();
        }
        let mut c = std::process::Command::new(&link);
        c.arg0(&link).arg("30").env_clear();
        for (k, v) in env {
            c.env(k, v);
        }
        c.spawn().unwrap()
    }

    #[test]
    fn the_scan_finds_codex_of_this_home_only() {
        let d = tempfile::tempdir().unwrap();
        let (home, other) = (d.path().join("acct/.codex"), d.path().join("other/.codex"));
        let throwaway = d.path().join("codex-auth-agent-0-abc/.codex");
        for h in [&home, &other, &throwaway] {
            std::fs::create_dir_all(h).unwrap();
        }
        let scanner = Scanner::new(&home);
        let mut by_codex_home = fake_codex(d.path(), &[("CODEX_HOME", &home)]);
        let mut by_home = fake_codex(d.path(), &[("HOME", &d.path().join("acct"))]);
        let mut others: Vec<_> =
            [&other, &throwaway].iter().map(|h| fake_codex(d.path(), &[("CODEX_HOME", h)])).collect();
        // The same directory by another spelling is the same home.
        let mut dotted = fake_codex(d.path(), &[("CODEX_HOME", &d.path().join("other/../acct/.codex"))]);
        let want: Vec<i32> = [&by_codex_home, &by_home, &dotted].iter().map(|c| c.id() as i32).collect();
        let t = Instant::now();
        let (found, pids) = loop {
            let found = scanner.scan();
            let pids: Vec<i32> = found.iter().map(|p| p.pid).collect();
            if want.iter().all(|w| pids.contains(w)) || t.elapsed() > Duration::from_secs(5) {
                break (found, pids);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        for w in &want {
            assert!(pids.contains(w), "{w} in {pids:?}");
        }
        for c in &others {
            assert!(!pids.contains(&(c.id() as i32)), "{pids:?}");
        }
        let first = found.iter().find(|p| p.pid == by_codex_home.id() as i32).unwrap().clone();
        assert!(alive(&first));
        assert!(!alive(&CodexProc { start: first.start + 1, ..first.clone() }), "a reused pid is another process");
        by_codex_home.kill().unwrap();
        // Killed but not reaped yet: a zombie, which is not alive either.
        let t = Instant::now();
        while alive(&first) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!alive(&first), "an exited Codex is not alive");
        assert!(!scanner.scan().iter().any(|p| p.pid == first.pid), "nor found by the scan");
        by_codex_home.wait().unwrap();
        for c in [&mut by_home, &mut dotted].into_iter().chain(others.iter_mut()) {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        assert!(scanner.scan().is_empty(), "all gone");
    }
}
