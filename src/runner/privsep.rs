//! Running a job as the account's Unix user. Root never opens a path inside a user's
//! CODEX_HOME: it re-executes itself (/proc/self/exe) as `codex-auth-agent worker`, hands
//! the job over a pipe (seed bytes included — never argv or env), and the child drops to
//! the user (setgroups with the groups resolved here → setgid → setuid, verified
//! irreversible, not dumpable) before it touches anything. A child past its deadline is
//! killed with its whole process group. A worker that ran a refresh by our own token
//! request (no process of its own) may take its user's next task: the drop, once made,
//! holds for it, and the worker refuses a request for anyone else.

use crate::core::clock::Clock;
use crate::core::outcome::{Failure, PreflightReport, Report};
use crate::core::task::{
    Executor, FromWorker, Identity, Job, MAX_PIPE_BYTES, PreflightJob, Supervisor, Task, TaskReport, ToWorker,
    WORKER_NAME, WorkerRequest,
};
use crate::sys::fdread::{self, Stopped};
use crate::sys::process::wait_or_kill_group;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A worker answering a different kind of task than it was given is a bug of ours.
const MISMATCH: &str = "the worker answered with a report of the wrong kind; will retry";

/// Run the refresh `job` as `id`: in-process when we already are that user, else in a
/// worker child (which needs root); `sup` answers the cycle's questions here, in this
/// process, either way. Always returns a report.
pub fn run_as(exec: &dyn Executor, id: &Identity, job: &Job, clock: &dyn Clock, sup: &dyn Supervisor) -> Report {
    match exec.run(id, Task::Refresh(Box::new(job.clone())), clock, sup) {
        TaskReport::Refresh(r) => r,
        TaskReport::Preflight(_) => Report::failed(&job.account, Failure::transient(MISMATCH)),
    }
}

/// Run the preflight `job` as `id`, like [`run_as`].
pub fn preflight_as(
    exec: &dyn Executor,
    id: &Identity,
    job: &PreflightJob,
    clock: &dyn Clock,
    sup: &dyn Supervisor,
) -> PreflightReport {
    match exec.run(id, Task::Preflight(job.clone()), clock, sup) {
        TaskReport::Preflight(r) => r,
        TaskReport::Refresh(_) => PreflightReport::failed(&job.account, Failure::transient(MISMATCH)),
    }
}

/// The executor of a root caller: a task for another user runs in a worker child that
/// drops to that user; a task for our own user runs in `local`, unless `always` (the
/// daemon: the long-lived process never opens a user's files itself, and its memory stays
/// flat whatever the accounts hold). A worker that ends a task fit for reuse waits in
/// `pool` for its user's next one (see [`Pool`]).
pub struct Workers<E> {
    pub local: E,
    pub always: bool,
    pool: Pool,
}

impl<E> Workers<E> {
    pub const fn new(local: E, always: bool) -> Workers<E> {
        Workers { local, always, pool: Pool::new() }
    }
}

impl<E: Executor> Executor for Workers<E> {
    fn run(&self, id: &Identity, task: Task, clock: &dyn Clock, sup: &dyn Supervisor) -> TaskReport {
        let euid = nix::unistd::geteuid();
        if euid.as_raw() == id.uid && !self.always {
            return self.local.run(id, task, clock, sup);
        }
        if !euid.is_root() && euid.as_raw() != id.uid {
            return task.failed(Failure::permanent(format!(
                "must run as root or as user {} to work on this account",
                id.user
            )));
        }
        // Resolved here: NSS modules stay loaded in this process, the worker loads none.
        let groups = match crate::sys::user::groups_of(id) {
            Ok(g) => Some(g),
            Err(e) => return task.failed(Failure::transient(format!("cannot run as {}: {e}", id.user))),
        };
        let until = Instant::now() + task.deadline();
        let reusable = task.leaves_worker_reusable();
        let req = WorkerRequest { identity: id.clone(), groups, task };
        let key = Key::of(&req);
        // A kept worker may have died while it waited (its user can signal it): if it took
        // nothing from the conversation, the task goes to a new one.
        while let Some(mut w) = self.pool.take(&key) {
            match w.converse(&req, until, sup) {
                Talk::Silent => end_workers(vec![w]),
                talk => return self.end(w, talk, reusable.then_some(key), &req, until),
            }
        }
        let mut w = match Live::start() {
            Ok(w) => w,
            Err(e) => return req.task.failed(Failure::transient(e)),
        };
        let talk = w.converse(&req, until, sup);
        self.end(w, talk, reusable.then_some(key), &req, until)
    }

    fn idle(&self) {
        self.pool.close_all();
    }
}

impl<E> Workers<E> {
    /// The report of a conversation with `w`, which is kept for the next task of `keep`'s
    /// user when it answered, and otherwise ended (killed past `until`).
    fn end(&self, w: Live, talk: Talk, keep: Option<Key>, req: &WorkerRequest, until: Instant) -> TaskReport {
        let fail = |why: String| req.task.failed(Failure::transient(why));
        let timed_out = || {
            fail(format!("worker did not finish within {}s and was killed; will retry", req.task.deadline().as_secs()))
        };
        let report = match (talk, keep) {
            (Talk::Done(r), Some(key)) => {
                self.pool.put(key, w);
                return *r;
            }
            (Talk::Done(r), None) => Some(*r),
            (Talk::Silent | Talk::Ended, _) => None,
            (Talk::Stopped(e), _) => {
                w.close(Duration::ZERO);
                return match e {
                    Stopped::Deadline => timed_out(),
                    Stopped::TooLarge => {
                        fail(format!("the worker's report is larger than {} MiB; will retry", MAX_PIPE_BYTES >> 20))
                    }
                    Stopped::Io(e) => fail(format!("reading the worker's report failed: {e}; will retry")),
                };
            }
        };
        let Some(status) = w.close(until.saturating_duration_since(Instant::now())) else {
            return timed_out();
        };
        report.unwrap_or_else(|| fail(format!("worker exited ({status}) without a report; will retry")))
    }
}

/// Who a worker runs as, once it has dropped: its tasks must all be this user's.
#[derive(Clone, PartialEq, Eq)]
struct Key {
    identity: Identity,
    groups: Option<Vec<u32>>,
}

impl Key {
    fn of(req: &WorkerRequest) -> Key {
        Key { identity: req.identity.clone(), groups: req.groups.clone() }
    }
}

/// How long a worker waits for its user's next task. Within a pass over many accounts
/// the next one comes at once; a worker kept longer would only hold memory.
const IDLE_LIMIT: Duration = Duration::from_secs(2);

/// At most this many workers wait at once (max_parallel's default is 8).
const POOL_LIMIT: usize = 64;

/// Workers that finished a refresh by our own token request and wait for another task of
/// the same user. Starting a worker (exec, the loader, its page faults) costs about as
/// much CPU as the refresh it runs; a pass over many accounts of one user reuses a few.
/// The daemon closes them all whenever nothing runs ([`Executor::idle`]).
pub struct Pool(Mutex<Vec<(Key, Live, Instant)>>);

impl Pool {
    pub const fn new() -> Pool {
        Pool(Mutex::new(Vec::new()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Key, Live, Instant)>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A waiting worker of `key`'s user that is still alive.
    fn take(&self, key: &Key) -> Option<Live> {
        loop {
            let (found, stale) = self.changed(|idle| {
                let i = idle.iter().position(|(k, _, _)| k == key)?;
                Some(idle.remove(i).1)
            });
            end_workers(stale);
            let mut w = found?;
            if matches!(w.child.try_wait(), Ok(None)) {
                return Some(w);
            }
            end_workers(vec![w]);
        }
    }

    fn put(&self, key: Key, w: Live) {
        let ((), stale) = self.changed(|idle| idle.push((key, w, Instant::now())));
        end_workers(stale);
    }

    /// Apply `f` to the waiting workers, then take out those waiting longer than
    /// [`IDLE_LIMIT`] or past [`POOL_LIMIT`] (the oldest) for closing, off the lock.
    fn changed<T>(&self, f: impl FnOnce(&mut Vec<(Key, Live, Instant)>) -> T) -> (T, Vec<Live>) {
        let mut idle = self.lock();
        let out = f(&mut idle);
        let (now, over) = (Instant::now(), idle.len().saturating_sub(POOL_LIMIT));
        let (keep, stale): (Vec<_>, Vec<_>) = std::mem::take(&mut *idle)
            .into_iter()
            .enumerate()
            .partition(|(i, (_, _, since))| *i >= over && now.duration_since(*since) < IDLE_LIMIT);
        *idle = keep.into_iter().map(|(_, e)| e).collect();
        (out, stale.into_iter().map(|(_, (_, w, _))| w).collect())
    }

    /// End every waiting worker.
    pub fn close_all(&self) {
        end_workers(std::mem::take(&mut *self.lock()).into_iter().map(|(_, w, _)| w).collect());
    }
}

/// End waiting workers: every stdin is closed first, so they all exit at once, then each
/// is reaped (its group killed after a second).
fn end_workers(mut workers: Vec<Live>) {
    for w in &mut workers {
        drop(w.stdin.take());
    }
    for w in workers {
        let _ = w.close(Duration::from_secs(1));
    }
}

impl Default for Pool {
    fn default() -> Pool {
        Pool::new()
    }
}

/// How a conversation with a worker about one task ended.
enum Talk {
    /// Its report.
    Done(Box<TaskReport>),
    /// It took the request but ended its output without a report.
    Ended,
    /// It ended before it said or took anything (a kept worker that died meanwhile).
    Silent,
    /// Past the deadline, a line over the cap or an unreadable pipe.
    Stopped(Stopped),
}

/// A running worker child and its pipes.
struct Live {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: fdread::Lines,
}

/// Env the worker may see: nothing secret, just enough to log and find binaries.
#[cfg(not(feature = "fault-injection"))]
const PASSTHROUGH_ENV: &[&str] = &["PATH", "JOURNAL_STREAM", "CODEX_AUTH_AGENT_LOG", "RUST_LOG", "LANG", "LC_ALL"];
/// A test build also hands its fault hook's variable on (src/sys/fault.rs).
#[cfg(feature = "fault-injection")]
const PASSTHROUGH_ENV: &[&str] =
    &["PATH", "JOURNAL_STREAM", "CODEX_AUTH_AGENT_LOG", "RUST_LOG", "LANG", "LC_ALL", "CODEX_AUTH_AGENT_FAULT"];

/// The worker is this very executable, not the file at the path it was started from: a
/// package upgrade renames a new one over that path while the daemon runs (postinst
/// restarts it afterwards), and a daemon must neither fail to start workers meanwhile nor
/// hand its requests to another version.
const OWN_EXECUTABLE: &str = "/proc/self/exe";

impl Live {
    fn start() -> Result<Live, String> {
        let mut cmd = Command::new(OWN_EXECUTABLE);
        // argv[0] as ours, so ps shows the worker as before.
        cmd.arg0(std::env::args_os().next().unwrap_or_else(|| WORKER_NAME.into()))
            .arg("worker")
            .env_clear()
            .envs(PASSTHROUGH_ENV.iter().filter_map(|k| std::env::var_os(k).map(|v| (k, v))))
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| format!("cannot start the worker ({OWN_EXECUTABLE}): {e}"))?;
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take().expect("stdout was piped"));
        Ok(Live { child, stdin, lines: fdread::Lines::new(stdout.into()) })
    }

    /// One line to the worker; false when it cannot take it (it died: its exit status
    /// tells the story).
    fn send(&mut self, line: &[u8]) -> bool {
        let Some(w) = self.stdin.as_mut() else { return false };
        w.write_all(line).and_then(|()| w.write_all(b"\n")).and_then(|()| w.flush()).is_ok()
    }

    /// Hand `req` over and read the worker's lines on this thread up to `until`, answering
    /// its questions, until its report. One thread per run for its whole length instead
    /// of three (a reader and a waiter beside this one): measured as daemon RSS growth with
    /// max_parallel.
    fn converse(&mut self, req: &WorkerRequest, until: Instant, sup: &dyn Supervisor) -> Talk {
        let sent = self.send(&serde_json::to_vec(req).unwrap_or_default());
        let mut said = false;
        loop {
            let line = match self.lines.next_before(MAX_PIPE_BYTES as usize, until) {
                Ok(Some(line)) => line,
                Ok(None) if !sent || !said => return Talk::Silent,
                Ok(None) => return Talk::Ended,
                Err(e) => return Talk::Stopped(e),
            };
            said = true;
            let answer = match serde_json::from_slice::<FromWorker>(&line) {
                Ok(FromWorker::Done(r)) => return Talk::Done(r),
                Ok(FromWorker::MaySpend(len)) => ToWorker::MaySpend(sup.may_spend(len)),
                Ok(FromWorker::Keep(p)) => ToWorker::Kept(sup.keep(&p)),
                Err(_) => return Talk::Ended,
            };
            self.send(&serde_json::to_vec(&answer).unwrap_or_default());
        }
    }

    /// End the worker: close its stdin (a waiting worker exits on it), wait at most
    /// `limit`, then kill its process group. None when the limit was hit.
    fn close(mut self, limit: Duration) -> Option<ExitStatus> {
        drop(self.stdin.take());
        wait_or_kill_group(&mut self.child, limit)
    }
}
