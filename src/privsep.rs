//! Running a job as the account's Unix user. Root never opens a path inside a user's
//! CODEX_HOME: it re-executes itself as `codex-auth-agent worker`, hands the job over a
//! pipe (seed bytes included — never argv or env), and the child drops to the user
//! (initgroups → setgid → setuid, verified irreversible, not dumpable) before it touches
//! anything. A child past its deadline is killed with its whole process group.

use crate::clock::Clock;
use crate::fdread::{self, Stopped};
use crate::outcome::{Failure, Report};
use crate::pending::PendingCredential;
use crate::preflight::{self, PreflightJob, PreflightReport};
use crate::worker::{self, Job, Supervisor};
use nix::unistd::{Gid, Uid, User};
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::io::{BufRead, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Largest job or report we accept over the pipe.
const MAX_PIPE_BYTES: u64 = 4 * 1024 * 1024;

/// A Unix account to run as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl Identity {
    pub fn lookup(user: &str) -> Result<Identity, String> {
        match User::from_name(user) {
            Ok(Some(u)) => Ok(Identity { user: u.name, uid: u.uid.as_raw(), gid: u.gid.as_raw(), home: u.dir }),
            Ok(None) => Err(format!("user {user:?} does not exist; create it or fix `user` in the config")),
            Err(e) => Err(format!("looking up user {user:?} failed: {e}")),
        }
    }

    /// Whoever this process runs as.
    pub fn current() -> Result<Identity, String> {
        let uid = nix::unistd::geteuid();
        match User::from_uid(uid) {
            Ok(Some(u)) => Ok(Identity { user: u.name, uid: u.uid.as_raw(), gid: u.gid.as_raw(), home: u.dir }),
            _ => Err(format!("uid {uid} has no passwd entry")),
        }
    }
}

/// One unit of work done as the account's user.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Refresh(Job),
    Preflight(PreflightJob),
}

/// The result of a [`Task`], of the matching kind.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskReport {
    Refresh(Report),
    Preflight(PreflightReport),
}

impl Task {
    fn account(&self) -> &str {
        match self {
            Task::Refresh(j) => &j.account,
            Task::Preflight(j) => &j.account,
        }
    }

    /// After this the parent kills the worker.
    fn deadline(&self) -> Duration {
        match self {
            Task::Refresh(j) => j.deadline(),
            Task::Preflight(j) => j.deadline(),
        }
    }

    /// Do it here, as whoever this process is now.
    fn run(&self, clock: &dyn Clock, sup: &dyn Supervisor) -> TaskReport {
        match self {
            Task::Refresh(j) => TaskReport::Refresh(worker::run(j, clock, sup)),
            Task::Preflight(j) => TaskReport::Preflight(preflight::run(j, clock, sup)),
        }
    }

    /// A failed report of the matching kind.
    fn failed(&self, f: Failure) -> TaskReport {
        match self {
            Task::Refresh(_) => TaskReport::Refresh(Report::failed(self.account(), f)),
            Task::Preflight(_) => TaskReport::Preflight(PreflightReport::failed(self.account(), f)),
        }
    }
}

/// What the parent sends the worker child (one line on its stdin; the answers to its
/// questions follow as lines).
#[derive(Serialize, Deserialize)]
pub struct WorkerRequest {
    pub identity: Identity,
    pub task: Task,
}

/// A line from the worker on its stdout: a question for its [`Supervisor`], or the end.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FromWorker {
    MaySpend(u64),
    Keep(PendingCredential),
    Done(TaskReport),
}

/// The parent's answer to a question, on the worker's stdin.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ToWorker {
    MaySpend(Result<(), Failure>),
    Kept(Result<PathBuf, String>),
}

/// The worker's side of its [`Supervisor`]: each question goes to the parent as a line
/// on stdout and waits for its answer on stdin. No answer (the parent died) is a no.
struct PipeSupervisor {
    input: std::sync::Mutex<std::io::StdinLock<'static>>,
}

impl PipeSupervisor {
    fn ask(&self, question: &FromWorker) -> Option<ToWorker> {
        let mut input = self.input.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string(question).ok()?).ok()?;
        out.flush().ok()?;
        let mut line = String::new();
        (&mut *input).take(MAX_PIPE_BYTES).read_line(&mut line).ok()?;
        serde_json::from_str(&line).ok()
    }
}

const NO_ANSWER: &str = "the agent that started this worker did not answer";

impl Supervisor for PipeSupervisor {
    fn may_spend(&self, auth_len: u64) -> Result<(), Failure> {
        match self.ask(&FromWorker::MaySpend(auth_len)) {
            Some(ToWorker::MaySpend(r)) => r,
            _ => Err(Failure::transient(format!("{NO_ANSWER}; no token request was sent; will retry"))),
        }
    }

    fn keep(&self, p: &PendingCredential) -> Result<PathBuf, String> {
        match self.ask(&FromWorker::Keep(p.clone())) {
            Some(ToWorker::Kept(r)) => r,
            _ => Err(NO_ANSWER.to_string()),
        }
    }
}

/// A worker answering a different kind of task than it was given is a bug of ours.
const MISMATCH: &str = "the worker answered with a report of the wrong kind; will retry";

/// Make this process undumpable and core-less: it may hold tokens in memory.
pub fn harden_process() {
    // SAFETY: plain syscalls with constant arguments; failure only loses hardening.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &zero);
    }
}

/// Drop root to `id` for good, and prove it cannot be undone.
pub fn drop_privileges(id: &Identity) -> Result<(), String> {
    // Already exactly that user (a daemon running as the account's own user): nothing to drop.
    if id.uid != 0 && nix::unistd::getuid().as_raw() == id.uid && nix::unistd::geteuid().as_raw() == id.uid {
        harden_process();
        return Ok(());
    }
    let (uid, gid) = (Uid::from_raw(id.uid), Gid::from_raw(id.gid));
    let name = CString::new(id.user.as_str()).map_err(|_| "user name contains NUL".to_string())?;
    nix::unistd::initgroups(&name, gid).map_err(|e| format!("initgroups({}) failed: {e}", id.user))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setresgid({gid}) failed: {e}"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setresuid({uid}) failed: {e}"))?;
    let r = nix::unistd::getresuid().map_err(|e| e.to_string())?;
    let g = nix::unistd::getresgid().map_err(|e| e.to_string())?;
    if [r.real, r.effective, r.saved] != [uid; 3] || [g.real, g.effective, g.saved] != [gid; 3] {
        return Err("privilege drop did not take effect".into());
    }
    if id.uid != 0 && (nix::unistd::setuid(Uid::from_raw(0)).is_ok() || nix::unistd::setgid(Gid::from_raw(0)).is_ok()) {
        return Err("privilege drop is reversible; refusing to continue".into());
    }
    // setuid resets dumpability to the sysctl default; make sure it is off.
    harden_process();
    Ok(())
}

/// Run the refresh `job` as `id`: in-process when we already are that user, else in a
/// worker child (which needs root); `sup` answers the cycle's questions here, in this
/// process, either way. Always returns a report.
pub fn run_as(id: &Identity, job: &Job, clock: &dyn Clock, sup: &dyn Supervisor) -> Report {
    match run_task(id, Task::Refresh(job.clone()), clock, sup) {
        TaskReport::Refresh(r) => r,
        TaskReport::Preflight(_) => Report::failed(&job.account, Failure::transient(MISMATCH)),
    }
}

/// Run the preflight `job` as `id`, like [`run_as`].
pub fn preflight_as(id: &Identity, job: &PreflightJob, clock: &dyn Clock, sup: &dyn Supervisor) -> PreflightReport {
    match run_task(id, Task::Preflight(job.clone()), clock, sup) {
        TaskReport::Preflight(r) => r,
        TaskReport::Refresh(_) => PreflightReport::failed(&job.account, Failure::transient(MISMATCH)),
    }
}

/// Set once by the daemon: every task runs in a worker process, even for an account of
/// the daemon's own user, so the long-lived daemon never opens a user's files itself and
/// its memory stays flat whatever the accounts hold.
static ALWAYS_WORKER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Make every later task of this process run in a worker child.
pub fn always_use_workers() {
    ALWAYS_WORKER.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// The one path for every task: in-process as its user, or in a dropped worker child.
fn run_task(id: &Identity, task: Task, clock: &dyn Clock, sup: &dyn Supervisor) -> TaskReport {
    let euid = nix::unistd::geteuid();
    let isolate = ALWAYS_WORKER.load(std::sync::atomic::Ordering::SeqCst);
    if euid.as_raw() == id.uid && !isolate {
        return task.run(clock, sup);
    }
    if !euid.is_root() && euid.as_raw() != id.uid {
        return task
            .failed(Failure::permanent(format!("must run as root or as user {} to work on this account", id.user)));
    }
    let deadline = task.deadline();
    spawn_worker(&WorkerRequest { identity: id.clone(), task }, deadline, sup)
}

/// Wait for `child` at most `limit`; past it, SIGKILL its whole process group (it was
/// started with `process_group(0)`). The group is killed once the leader has exited too,
/// so nothing it started outlives it. None when the limit was hit.
pub fn wait_or_kill_group(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        // A blocking wait on a helper thread sees the exit at once (polling cost ~2.5 ms a
        // run on average, which is most of the preflight's overhead budget).
        s.spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = match rx.recv_timeout(limit) {
            Ok(Ok(status)) => Some(status),
            // Past the limit (or wait failed): the kill below lets the helper reap it.
            _ => None,
        };
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        status
    })
}

/// Env the worker may see: nothing secret, just enough to log and find binaries.
const PASSTHROUGH_ENV: &[&str] =
    &["PATH", "JOURNAL_STREAM", "CODEX_AUTH_AGENT_LOG", "RUST_LOG", "LANG", "LC_ALL", "CODEX_AUTH_AGENT_FAULT"];

fn spawn_worker(req: &WorkerRequest, deadline: Duration, sup: &dyn Supervisor) -> TaskReport {
    let fail = |why: String| req.task.failed(Failure::transient(why));
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return fail(format!("cannot locate our own executable: {e}")),
    };
    let mut cmd = Command::new(exe);
    cmd.arg("worker")
        .env_clear()
        .envs(PASSTHROUGH_ENV.iter().filter_map(|k| std::env::var_os(k).map(|v| (k, v))))
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start the worker: {e}")),
    };
    let mut stdin = child.stdin.take();
    let mut send = |line: Vec<u8>| {
        // A worker that died early closes the pipe; its exit status tells the story.
        if let Some(w) = stdin.as_mut() {
            let _ = w.write_all(&line).and_then(|()| w.write_all(b"\n")).and_then(|()| w.flush());
        }
    };
    send(serde_json::to_vec(req).unwrap_or_default());
    // Read the worker's lines on this thread up to the deadline, answering its questions;
    // only then wait for the exit (which follows the end of its stdout). One thread per
    // run for its whole length instead of three (a reader and a waiter beside this one) —
    // measured as daemon RSS growth with max_parallel.
    let until = Instant::now() + deadline;
    let timed_out = || fail(format!("worker did not finish within {}s and was killed; will retry", deadline.as_secs()));
    let mut lines = fdread::Lines::new(child.stdout.take().expect("stdout was piped").into());
    let report = loop {
        let line = match lines.next_before(MAX_PIPE_BYTES as usize, until) {
            Ok(Some(line)) => line,
            Ok(None) => break None,
            Err(e) => {
                // Past the deadline, a line over the cap or an unreadable pipe: stop it now.
                let _ = wait_or_kill_group(&mut child, Duration::ZERO);
                return match e {
                    Stopped::Deadline => timed_out(),
                    Stopped::TooLarge => {
                        fail(format!("the worker's report is larger than {} MiB; will retry", MAX_PIPE_BYTES >> 20))
                    }
                    Stopped::Io(e) => fail(format!("reading the worker's report failed: {e}; will retry")),
                };
            }
        };
        let answer = match serde_json::from_slice::<FromWorker>(&line) {
            Ok(FromWorker::Done(r)) => break Some(r),
            Ok(FromWorker::MaySpend(len)) => ToWorker::MaySpend(sup.may_spend(len)),
            Ok(FromWorker::Keep(p)) => ToWorker::Kept(sup.keep(&p)),
            Err(_) => break None,
        };
        send(serde_json::to_vec(&answer).unwrap_or_default());
    };
    drop(stdin);
    let Some(status) = wait_or_kill_group(&mut child, until.saturating_duration_since(Instant::now())) else {
        return timed_out();
    };
    report.unwrap_or_else(|| fail(format!("worker exited ({status}) without a report; will retry")))
}

/// Entry point of `codex-auth-agent worker`: read the request, drop privileges, run,
/// print the report as one JSON line.
pub fn worker_main(clock: &dyn Clock) -> i32 {
    harden_process();
    let mut stdin = std::io::stdin().lock();
    let mut input = Vec::new();
    if let Err(e) = (&mut stdin).take(MAX_PIPE_BYTES).read_until(b'\n', &mut input) {
        eprintln!("codex-auth-agent worker: reading the job failed: {e}");
        return crate::outcome::exit::USAGE;
    }
    let req: WorkerRequest = match serde_json::from_slice(&input) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "codex-auth-agent worker: the job is not valid (line {}, column {}); this command is internal",
                e.line(),
                e.column()
            );
            return crate::outcome::exit::USAGE;
        }
    };
    let sup = PipeSupervisor { input: std::sync::Mutex::new(stdin) };
    let report = match drop_privileges(&req.identity) {
        Ok(()) => req.task.run(clock, &sup),
        Err(e) => req.task.failed(Failure::transient(format!("cannot run as {}: {e}", req.identity.user))),
    };
    println!("{}", serde_json::to_string(&FromWorker::Done(report)).unwrap_or_default());
    crate::outcome::exit::OK
}
