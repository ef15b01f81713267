//! What a caller hands to the code that runs as an account's user, and what comes back:
//! the jobs, their time budgets, the two questions a cycle asks its caller (Supervisor),
//! the worker pipe's messages, and the Executor that runs a task somewhere.

use crate::core::clock::Clock;
use crate::core::contract::{CODEX_LOCK_WAIT, COMMIT_LOCK_WAIT};
use crate::core::outcome::{Failure, PreflightReport, Report};
use crate::core::pending::PendingCredential;
use crate::core::policy::Thresholds;
use crate::core::seed::SeedInput;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// How an account gets new tokens: our OAuth request or Codex's app-server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefreshMethod {
    Oauth,
    AppServer,
}

impl RefreshMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshMethod::Oauth => "oauth",
            RefreshMethod::AppServer => "app-server",
        }
    }

    pub fn parse(s: &str) -> Option<RefreshMethod> {
        [RefreshMethod::Oauth, RefreshMethod::AppServer].into_iter().find(|m| m.as_str() == s)
    }
}

/// What one cycle may do. One value instead of independent flags (force, dry run,
/// follow, hand back), so a combination that means nothing cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Say what a run would do; write nothing, spend nothing (`force`: as if forced).
    DryRun { force: bool },
    /// A local account: refresh when due (`force`: now, even a quarantined token).
    Local { force: bool },
    /// Fleet follower, a refresher without the lease, or one whose upload is pending: never
    /// call the token endpoint. `hand_back`: put auth.json in the report for Vault.
    Follow { hand_back: bool },
    /// Fleet refresher holding the lease: refresh when due (`force`: now), and put the
    /// committed auth.json in the report (`Report::auth_b64`) for the parent to publish.
    Lead { force: bool },
}

impl Mode {
    pub fn force(self) -> bool {
        matches!(self, Mode::DryRun { force: true } | Mode::Local { force: true } | Mode::Lead { force: true })
    }

    pub fn dry_run(self) -> bool {
        matches!(self, Mode::DryRun { .. })
    }

    /// Whether the token endpoint may be called at all.
    pub fn follows(self) -> bool {
        matches!(self, Mode::Follow { .. })
    }

    pub fn hands_back(self) -> bool {
        matches!(self, Mode::Follow { hand_back: true } | Mode::Lead { .. })
    }
}

/// An auth.json a cycle installs before anything else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Install {
    /// An operator's Store or Login: installed whatever is on disk, reported as such.
    Operator(SeedInput),
    /// The fleet's credential from Vault: written only when auth.json differs (CODEX_HOME
    /// made when missing), and not reported as an operator's Store.
    Fleet(SeedInput),
}

impl Install {
    pub fn input(&self) -> &SeedInput {
        match self {
            Install::Operator(i) | Install::Fleet(i) => i,
        }
    }

    pub fn is_fleet(&self) -> bool {
        matches!(self, Install::Fleet(_))
    }
}

/// A Unix account to run as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Everything one cycle needs; sent to the worker child as JSON on its stdin.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub account: String,
    pub codex_home: PathBuf,
    /// The uid that must own CODEX_HOME and auth.json.
    pub owner_uid: u32,
    pub thresholds: Thresholds,
    pub token_url: String,
    pub request_timeout: Duration,
    /// What this cycle may write and spend.
    pub mode: Mode,
    pub seed: Option<SeedInput>,
    /// An auth.json to install first (the daemon's Store, or the fleet's credential).
    #[serde(default)]
    pub store: Option<Install>,
    /// How the refresh step gets new tokens: our OAuth request or Codex's app-server.
    pub refresh_method: RefreshMethod,
    /// `agent.codex_bin`, `codex_base_url` and the parent of throwaway Codex homes, for
    /// `refresh_method = "app-server"`.
    pub codex_bin: String,
    pub codex_base_url: String,
    pub temp_dir: PathBuf,
    /// `login_client_id`: the client id our refresh sends instead of Codex's.
    #[serde(default)]
    pub login_client_id: Option<String>,
    /// A preflight holds our cycle lock this long at most; a refresh may wait for it.
    pub preflight_timeout: Duration,
    /// A credential an earlier run received but could not write: written first, before
    /// anything else; while it is not, no token request is sent.
    #[serde(default)]
    pub pending: Option<PendingCredential>,
    /// sha256 of the auth.json whose refresh failed permanently last time: while auth.json
    /// is still that file, its dead token is not sent again (unless `force`).
    #[serde(default)]
    pub quarantined: Option<String>,
}

/// What a cycle asks of whoever started it, at the two moments that decide a refresh
/// token's fate. Answered in-process, or by the parent over the worker's pipes.
pub trait Supervisor {
    /// Right before the POST, after this account's own checks passed: may the token be
    /// spent? The caller makes sure it can keep a copy of up to `auth_len` bytes of
    /// auth.json (and, in fleet mode, that the token is still the fleet's current one).
    fn may_spend(&self, auth_len: u64) -> Result<(), Failure>;
    /// Right after the POST, before the commit: keep `p`, now the only live credential.
    /// The path of the durable copy, or why there is none.
    fn keep(&self, p: &PendingCredential) -> Result<PathBuf, String>;
}

/// Codex starts in well under a second; this covers a cold disk cache on a busy host.
const STARTUP_ALLOWANCE: Duration = Duration::from_secs(10);
/// After we close its stdin Codex exits promptly; past this its group is killed.
pub const EXIT_GRACE: Duration = Duration::from_secs(3);

/// The conversation's budget: start-up plus two requests' worth of `request_timeout`
/// (account/read does the token request and a backend call).
pub fn conversation_limit(request_timeout: Duration) -> Duration {
    STARTUP_ALLOWANCE + 2 * request_timeout
}

/// The longest a whole app-server refresh may take, exit included.
pub fn app_server_limit(request_timeout: Duration) -> Duration {
    conversation_limit(request_timeout) + EXIT_GRACE
}

/// The longest the refresh step itself may take with `method`.
pub fn refresh_limit(method: RefreshMethod, request_timeout: Duration) -> Duration {
    match method {
        RefreshMethod::Oauth => request_timeout,
        RefreshMethod::AppServer => app_server_limit(request_timeout),
    }
}

/// How long one cycle of ours waits for another on the same account: a refresh (its
/// refresh step) or a preflight (which holds the same lock), plus the commit waits.
pub fn cycle_lock_wait(refresh_limit: Duration, preflight_timeout: Duration) -> Duration {
    refresh_limit.max(preflight_timeout) + CODEX_LOCK_WAIT + COMMIT_LOCK_WAIT + Duration::from_secs(5)
}

/// The longest one cycle may take before its parent kills it: the wait for another
/// cycle; a yield to a running Codex (up to the request timeout); a spend — Codex's two
/// locks before the POST (checked) and again at the commit, and the refresh step; when
/// a Codex raced it, the wait for that Codex (up to the request timeout) and a verifying
/// second spend; and some slack.
pub fn cycle_deadline(method: RefreshMethod, request_timeout: Duration, preflight_timeout: Duration) -> Duration {
    let refresh = refresh_limit(method, request_timeout);
    let spend = (CODEX_LOCK_WAIT + COMMIT_LOCK_WAIT) * 2 + refresh;
    cycle_lock_wait(refresh, preflight_timeout) + request_timeout * 2 + spend * 2 + Duration::from_secs(10)
}

impl Job {
    /// The longest the refresh step itself may take.
    pub fn refresh_limit(&self) -> Duration {
        refresh_limit(self.refresh_method, self.request_timeout)
    }

    /// How long to wait for another cycle of ours on the same account.
    pub fn lock_wait(&self) -> Duration {
        cycle_lock_wait(self.refresh_limit(), self.preflight_timeout)
    }

    /// After this the parent kills the worker: every wait above, bounded.
    pub fn deadline(&self) -> Duration {
        cycle_deadline(self.refresh_method, self.request_timeout, self.preflight_timeout)
    }
}

/// What one preflight needs; sent to the worker child like a refresh job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PreflightJob {
    pub account: String,
    pub codex_home: PathBuf,
    /// The uid that must own CODEX_HOME and auth.json.
    pub owner_uid: u32,
    /// `preflight_timeout`: past it codex exec's whole process group is killed.
    pub timeout: Duration,
    /// How long to wait for another cycle of ours (a refresh or a preflight).
    pub lock_wait: Duration,
    pub codex_bin: String,
    pub codex_base_url: String,
    pub token_url: String,
    /// Parent of the throwaway home.
    pub temp_dir: PathBuf,
}

impl PreflightJob {
    /// After this the parent kills the worker: every wait, bounded.
    pub fn deadline(&self) -> Duration {
        self.lock_wait + self.timeout + CODEX_LOCK_WAIT + COMMIT_LOCK_WAIT + Duration::from_secs(10)
    }
}

/// One unit of work done as the account's user.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Refresh(Box<Job>),
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
    pub fn account(&self) -> &str {
        match self {
            Task::Refresh(j) => &j.account,
            Task::Preflight(j) => &j.account,
        }
    }

    /// Whether a worker may take another task after this one: only a refresh by our own
    /// token request, which starts no process (app-server runs Codex, a preflight `codex
    /// exec`). A worker that started one is killed with its process group when it ends, so
    /// nothing it started outlives it; a worker kept for the next task could not be.
    pub fn leaves_worker_reusable(&self) -> bool {
        matches!(self, Task::Refresh(j) if j.refresh_method == RefreshMethod::Oauth)
    }

    /// After this the parent kills the worker.
    pub fn deadline(&self) -> Duration {
        match self {
            Task::Refresh(j) => j.deadline(),
            Task::Preflight(j) => j.deadline(),
        }
    }

    /// A failed report of the matching kind.
    pub fn failed(&self, f: Failure) -> TaskReport {
        match self {
            Task::Refresh(_) => TaskReport::Refresh(Report::failed(self.account(), f)),
            Task::Preflight(_) => TaskReport::Preflight(PreflightReport::failed(self.account(), f)),
        }
    }
}

/// Largest job or report we accept over the pipe.
pub const MAX_PIPE_BYTES: u64 = 4 * 1024 * 1024;

/// The worker's process name (and its argv[0] when ours is unknown). It is started
/// through /proc/self/exe (the running executable, whatever now lies at its path), which
/// would name it "exe" in top, pgrep and the journal's _COMM.
pub const WORKER_NAME: &str = "codex-auth-agent";

/// What the parent sends the worker child (one line on its stdin; the answers to its
/// questions follow as lines).
#[derive(Serialize, Deserialize)]
pub struct WorkerRequest {
    pub identity: Identity,
    /// The user's supplementary groups, resolved by the parent (which has NSS loaded
    /// already) so the worker's drop is three syscalls; absent from an older parent's
    /// request, then the worker resolves them itself.
    #[serde(default)]
    pub groups: Option<Vec<u32>>,
    pub task: Task,
}

/// A line from the worker on its stdout: a question for its [`Supervisor`], or the end.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromWorker {
    MaySpend(u64),
    Keep(PendingCredential),
    Done(Box<TaskReport>),
}

/// The parent's answer to a question, on the worker's stdin.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToWorker {
    MaySpend(Result<(), Failure>),
    Kept(Result<PathBuf, String>),
}

/// Runs a task as its account's user: in this process, or in a worker child that drops to
/// that user. The front ends choose one and hand it to the runner.
pub trait Executor: Send + Sync {
    fn run(&self, who: &Identity, task: Task, clock: &dyn Clock, sup: &dyn Supervisor) -> TaskReport;

    /// Nothing runs now: let go of what was kept for the next task (waiting workers).
    fn idle(&self) {}
}

#[cfg(test)]
mod tests {
    use super::{Identity, Mode, PreflightJob, Task, WorkerRequest};
    use std::time::Duration;

    /// A request from a parent of an older release (no `groups`) still parses: the worker
    /// then looks the groups up itself. A current one carries them.
    #[test]
    fn a_worker_request_without_groups_parses_and_leaves_them_to_the_worker() {
        let job = PreflightJob {
            account: "a".into(),
            codex_home: "/h".into(),
            owner_uid: 1000,
            timeout: Duration::from_secs(1),
            lock_wait: Duration::from_secs(1),
            codex_bin: "codex".into(),
            codex_base_url: String::new(),
            token_url: String::new(),
            temp_dir: "/tmp".into(),
        };
        let identity = Identity { user: "u".into(), uid: 1000, gid: 1000, home: "/h".into() };
        let req = WorkerRequest { identity, groups: Some(vec![1000, 27]), task: Task::Preflight(job) };
        let mut v = serde_json::to_value(&req).unwrap();
        assert_eq!(v["groups"], serde_json::json!([1000, 27]));
        v.as_object_mut().unwrap().remove("groups");
        let old: WorkerRequest = serde_json::from_value(v).unwrap();
        assert_eq!(old.groups, None);
        assert_eq!(old.task.account(), "a");
    }

    #[test]
    fn modes_say_what_a_cycle_may_do() {
        // (mode, force, dry_run, follows, hands_back)
        let table = [
            (Mode::DryRun { force: false }, false, true, false, false),
            (Mode::DryRun { force: true }, true, true, false, false),
            (Mode::Local { force: false }, false, false, false, false),
            (Mode::Local { force: true }, true, false, false, false),
            (Mode::Follow { hand_back: false }, false, false, true, false),
            (Mode::Follow { hand_back: true }, false, false, true, true),
            (Mode::Lead { force: false }, false, false, false, true),
            (Mode::Lead { force: true }, true, false, false, true),
        ];
        for (m, force, dry, follows, back) in table {
            assert_eq!((m.force(), m.dry_run(), m.follows(), m.hands_back()), (force, dry, follows, back), "{m:?}");
        }
        // The worker pipe carries it as JSON.
        let json = serde_json::to_string(&Mode::Follow { hand_back: true }).unwrap();
        assert_eq!(serde_json::from_str::<Mode>(&json).unwrap(), Mode::Follow { hand_back: true });
    }
}
