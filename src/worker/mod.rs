//! What runs as the account's own Unix user: the refresh cycle and its commit, the
//! preflight, the real Codex CLI in a throwaway home, and the two token sources (our OAuth
//! request, Codex's app-server). Never imports the runner: the privilege boundary is this
//! module's boundary.

pub mod appserver;
pub mod child;
pub mod codexrun;
pub mod codexwatch;
pub mod cycle;
pub mod login;
pub mod oauth;
pub mod preflight;
#[cfg(test)]
mod proptests;

use crate::core::clock::Clock;
use crate::core::task::{Executor, Identity, Supervisor, Task, TaskReport};

/// Runs a task right here, as whoever this process is (the caller made sure that is the
/// account's user).
pub struct Local;

impl Executor for Local {
    fn run(&self, _who: &Identity, task: Task, clock: &dyn Clock, sup: &dyn Supervisor) -> TaskReport {
        match task {
            Task::Refresh(job) => TaskReport::Refresh(cycle::run(&job, clock, sup)),
            Task::Preflight(job) => TaskReport::Preflight(preflight::run(&job, clock, sup)),
        }
    }
}
