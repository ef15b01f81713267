//! `codex-auth-agent worker`: the child a root caller starts for a task (or for several
//! of one user's tasks in a row). It reads the request on stdin, drops to the account's
//! user, runs the task here, and asks its parent the cycle's questions (Supervisor) over
//! its pipes.

use crate::core::clock::Clock;
use crate::core::outcome::{Failure, exit};
use crate::core::pending::PendingCredential;
use crate::core::task::{
    Executor, FromWorker, MAX_PIPE_BYTES, Supervisor, TaskReport, ToWorker, WORKER_NAME, WorkerRequest,
};
use crate::sys::process::{harden_process, set_process_name};
use crate::sys::user::drop_privileges;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;

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

impl PipeSupervisor {
    /// The next request on stdin: None at end of file (the parent is done with this
    /// worker), Err(exit code) for a request that cannot be read.
    fn next_request(&self) -> Result<Option<WorkerRequest>, i32> {
        let mut input = self.input.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut line = Vec::new();
        if let Err(e) = (&mut *input).take(MAX_PIPE_BYTES).read_until(b'\n', &mut line) {
            eprintln!("codex-auth-agent worker: reading the job failed: {e}");
            return Err(exit::USAGE);
        }
        if line.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&line).map(Some).map_err(|e| {
            eprintln!(
                "codex-auth-agent worker: the job is not valid (line {}, column {}); this command is internal",
                e.line(),
                e.column()
            );
            exit::USAGE
        })
    }
}

fn answer(report: TaskReport) {
    println!("{}", serde_json::to_string(&FromWorker::Done(Box::new(report))).unwrap_or_default());
    crate::sys::fault::point(crate::sys::fault::Step::AfterReport);
}

/// Entry point of `codex-auth-agent worker`: read a request, drop privileges, run, print
/// the report as one JSON line; then the next request, until stdin ends. A parent may hand
/// one worker several tasks of the same user in a row (runner::privsep's pool); the drop
/// cannot be undone, so a request for anyone else is refused.
pub fn main(clock: &dyn Clock) -> i32 {
    harden_process();
    set_process_name(WORKER_NAME);
    let sup = PipeSupervisor { input: std::sync::Mutex::new(std::io::stdin().lock()) };
    let mut req = match sup.next_request() {
        Ok(Some(r)) => r,
        Ok(None) => {
            eprintln!("codex-auth-agent worker: no job on stdin; this command is internal");
            return exit::USAGE;
        }
        Err(code) => return code,
    };
    let (who, groups) = (req.identity.clone(), req.groups.clone());
    if let Err(e) = drop_privileges(&who, groups.as_deref()) {
        answer(req.task.failed(Failure::transient(format!("cannot run as {}: {e}", who.user))));
        return exit::OK;
    }
    loop {
        answer(if req.identity == who && req.groups == groups {
            super::Local.run(&req.identity, req.task, clock, &sup)
        } else {
            req.task.failed(Failure::transient(format!(
                "this worker runs as {}, not as {}: a bug of the agent; will retry",
                who.user, req.identity.user
            )))
        });
        req = match sup.next_request() {
            Ok(Some(r)) => r,
            Ok(None) => return exit::OK,
            Err(code) => return code,
        };
    }
}
