//! Running a job as the account's Unix user. Root never opens a path inside a user's
//! CODEX_HOME: it re-executes itself (/proc/self/exe) as `codex-auth-agent worker`, hands
//! the job over a pipe (seed bytes included — never argv or env), and the child drops to
//! the user (setgroups with the groups resolved here → setgid → setuid, verified
//! irreversible, not dumpable) before it touches anything. A child past its deadline is
//! killed with its whole process group.

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
use std::process::{Command, Stdio};
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
/// flat whatever the accounts hold).
pub struct Workers<E> {
    pub local: E,
    pub always: bool,
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
        let deadline = task.deadline();
        // Resolved here: NSS modules stay loaded in this process, the worker loads none.
        let groups = match crate::sys::user::groups_of(id) {
            Ok(g) => Some(g),
            Err(e) => return task.failed(Failure::transient(format!("cannot run as {}: {e}", id.user))),
        };
        spawn_worker(&WorkerRequest { identity: id.clone(), groups, task }, deadline, sup)
    }
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

fn spawn_worker(req: &WorkerRequest, deadline: Duration, sup: &dyn Supervisor) -> TaskReport {
    let fail = |why: String| req.task.failed(Failure::transient(why));
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
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start the worker ({OWN_EXECUTABLE}): {e}")),
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
            Ok(FromWorker::Done(r)) => break Some(*r),
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
