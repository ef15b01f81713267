//! `codex-auth-agent worker`: the child a root caller starts for one task. It reads the
//! request on stdin, drops to the account's user, runs the task here, and asks its parent
//! the cycle's questions (Supervisor) over its pipes.

use crate::core::clock::Clock;
use crate::core::outcome::{Failure, exit};
use crate::core::pending::PendingCredential;
use crate::core::task::{Executor, FromWorker, MAX_PIPE_BYTES, Supervisor, ToWorker, WORKER_NAME, WorkerRequest};
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

/// Entry point of `codex-auth-agent worker`: read the request, drop privileges, run,
/// print the report as one JSON line.
pub fn main(clock: &dyn Clock) -> i32 {
    harden_process();
    set_process_name(WORKER_NAME);
    let mut stdin = std::io::stdin().lock();
    let mut input = Vec::new();
    if let Err(e) = (&mut stdin).take(MAX_PIPE_BYTES).read_until(b'\n', &mut input) {
        eprintln!("codex-auth-agent worker: reading the job failed: {e}");
        return exit::USAGE;
    }
    let req: WorkerRequest = match serde_json::from_slice(&input) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "codex-auth-agent worker: the job is not valid (line {}, column {}); this command is internal",
                e.line(),
                e.column()
            );
            return exit::USAGE;
        }
    };
    let sup = PipeSupervisor { input: std::sync::Mutex::new(stdin) };
    let report = match drop_privileges(&req.identity, req.groups.as_deref()) {
        Ok(()) => super::Local.run(&req.identity, req.task, clock, &sup),
        Err(e) => req.task.failed(Failure::transient(format!("cannot run as {}: {e}", req.identity.user))),
    };
    println!("{}", serde_json::to_string(&FromWorker::Done(Box::new(report))).unwrap_or_default());
    exit::OK
}
