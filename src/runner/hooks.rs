//! Operator hooks (`on_success` / `on_failure`): after each recorded refresh or preflight
//! outcome, run the configured command as the account's Unix user — no shell, stdin
//! /dev/null, stdout to our stderr, an environment of exactly ACCOUNT, OUTCOME,
//! FAILURE_CLASS, REASON, PATH and HOME (never a token) — and kill its process group
//! after `hook_timeout`. Its exit status is only logged: a hook never changes an outcome.
//!
//! `on_success` runs after `refreshed` and `preflight_ok`; `on_failure` after `failed` and
//! `preflight_failed`. `fresh` and `inert` (nothing happened) run no hook.

use crate::config::AccountSettings;
use crate::core::outcome::{FailureClass, Outcome, Report};
use crate::core::outcome::{PreflightReport, RunnerState};
use crate::core::task::Identity;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// The PATH a hook gets.
pub const HOOK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Longest REASON passed to a hook, in bytes.
const MAX_REASON: usize = 1024;

/// One recorded outcome, as a hook sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookEvent {
    pub account: String,
    pub outcome: HookOutcome,
    pub failure_class: Option<FailureClass>,
    pub reason: String,
}

/// What happened, as `$OUTCOME` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookOutcome {
    /// A refresh run's outcome (refreshed, failed; fresh and inert run nothing).
    Run(Outcome),
    PreflightOk,
    PreflightFailed,
}

impl HookOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            HookOutcome::Run(o) => o.as_str(),
            HookOutcome::PreflightOk => "preflight_ok",
            HookOutcome::PreflightFailed => "preflight_failed",
        }
    }

    pub fn failed(self) -> bool {
        matches!(self, HookOutcome::Run(Outcome::Failed) | HookOutcome::PreflightFailed)
    }
}

impl HookEvent {
    pub fn from_report(r: &Report) -> HookEvent {
        HookEvent {
            account: r.account.clone(),
            outcome: HookOutcome::Run(r.outcome),
            failure_class: r.class(),
            reason: r.reason.clone(),
        }
    }

    pub fn from_preflight(r: &PreflightReport) -> HookEvent {
        let ok = r.state == RunnerState::Ok;
        HookEvent {
            account: r.account.clone(),
            outcome: if ok { HookOutcome::PreflightOk } else { HookOutcome::PreflightFailed },
            failure_class: r.failure.as_ref().map(|f| f.class),
            reason: r.reason.clone(),
        }
    }
}

/// Which command (if any) `event` calls for (pure).
pub fn command_for<'a>(acct: &'a AccountSettings, event: &HookEvent) -> Option<&'a [String]> {
    let argv = match event.outcome {
        HookOutcome::Run(Outcome::Failed) | HookOutcome::PreflightFailed => &acct.hooks.on_failure,
        HookOutcome::Run(Outcome::Refreshed) | HookOutcome::PreflightOk => &acct.hooks.on_success,
        HookOutcome::Run(_) => return None,
    };
    argv.as_deref()
}

/// The hook's whole environment (pure).
pub fn environment(event: &HookEvent, id: &Identity) -> Vec<(&'static str, String)> {
    let clean = |s: &str| s.replace('\0', "");
    let mut reason = clean(&event.reason);
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    vec![
        ("ACCOUNT", clean(&event.account)),
        ("OUTCOME", event.outcome.as_str().to_string()),
        ("FAILURE_CLASS", event.failure_class.map(FailureClass::as_str).unwrap_or_default().to_string()),
        ("REASON", reason),
        ("PATH", HOOK_PATH.to_string()),
        ("HOME", id.home.to_string_lossy().replace('\0', "")),
    ]
}

/// Run the hook `event` calls for, if any, and wait for it (at most `hook_timeout`).
/// Problems are warnings.
pub fn run(acct: &AccountSettings, event: &HookEvent) {
    let Some(argv) = command_for(acct, event) else { return };
    let which = if event.outcome.failed() { "on_failure" } else { "on_success" };
    let warn = |msg: String| tracing::warn!(account = %event.account, "{which} hook {:?}: {msg}", argv[0]);
    let id = match Identity::lookup(&acct.user) {
        Ok(id) => id,
        Err(e) => return warn(format!("not run: {e}")),
    };
    let mut cmd = match command(argv, event, &id) {
        Ok(c) => c,
        Err(e) => return warn(format!("not run: {e}")),
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return warn(format!("could not start: {e}")),
    };
    let limit = acct.hooks.hook_timeout;
    match crate::sys::process::wait_or_kill_group(&mut child, limit) {
        None => warn(format!("still running after {} and killed", humantime::format_duration(limit))),
        Some(status) if !status.success() => warn(format!("exited with {status}")),
        Some(_) => tracing::debug!(account = %event.account, "{which} hook finished"),
    }
}

/// The hook's Command: as `id` (dropped in the child before exec when we are root), in its
/// own process group, with only [`environment`].
fn command(argv: &[String], event: &HookEvent, id: &Identity) -> Result<Command, String> {
    let euid = nix::unistd::geteuid();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(environment(event, id))
        .current_dir("/")
        .stdin(Stdio::null())
        .process_group(0);
    // Our stdout may carry --json lines: the hook's output goes to stderr (the journal).
    match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => cmd.stdout(fd),
        Err(_) => cmd.stdout(Stdio::null()),
    };
    if euid.as_raw() == id.uid {
        return Ok(cmd);
    }
    if !euid.is_root() {
        return Err(format!("must run as root or as user {} to run it as that user", id.user));
    }
    // Everything the child needs is computed here; between fork and exec it makes only
    // the three async-signal-safe syscalls below.
    let groups: Vec<libc::gid_t> = crate::sys::user::groups_of(id)?;
    let (uid, gid) = (id.uid, id.gid);
    // SAFETY: the closure only calls setgroups/setresgid/setresuid (async-signal-safe) on
    // data allocated before the fork, and reads errno on failure.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len() as _, groups.as_ptr()) != 0
                || libc::setresgid(gid, gid, gid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Env};
    use crate::core::outcome::Failure;

    fn account(on_success: Option<&str>, on_failure: Option<&str>) -> AccountSettings {
        let t = tempfile::tempdir().unwrap();
        let mut s = config::single_user(t.path(), "root", t.path().to_path_buf(), &Env::default()).unwrap();
        let mut a = s.accounts.remove("default").unwrap();
        let split = |s: Option<&str>| s.map(|s| shlex::split(s).unwrap());
        (a.hooks.on_success, a.hooks.on_failure) = (split(on_success), split(on_failure));
        a
    }

    #[test]
    fn the_outcome_picks_the_hook() {
        let a = account(Some("/bin/ok"), Some("/bin/page 'on call'"));
        let pick = |e: &HookEvent| command_for(&a, e).map(|v| v.join("|"));
        let mut r = Report::new("default", Outcome::Refreshed, "");
        assert_eq!(pick(&HookEvent::from_report(&r)).as_deref(), Some("/bin/ok"));
        for o in [Outcome::Fresh, Outcome::Inert, Outcome::WouldRefresh] {
            r.outcome = o;
            assert_eq!(pick(&HookEvent::from_report(&r)), None, "{o:?}");
        }
        let failed = Report::failed("default", Failure::permanent("log in again"));
        assert_eq!(pick(&HookEvent::from_report(&failed)).as_deref(), Some("/bin/page|on call"));
        let pf = PreflightReport::failed("default", Failure::transient("codex exec timed out"));
        let e = HookEvent::from_preflight(&pf);
        assert_eq!((e.outcome.as_str(), e.failure_class), ("preflight_failed", Some(FailureClass::Transient)));
        assert_eq!(pick(&e).as_deref(), Some("/bin/page|on call"));
        let mut ok = pf.clone();
        (ok.state, ok.failure) = (RunnerState::Ok, None);
        assert_eq!(pick(&HookEvent::from_preflight(&ok)).as_deref(), Some("/bin/ok"));
        assert_eq!(command_for(&account(None, None), &HookEvent::from_report(&failed)), None);
    }

    #[test]
    fn the_environment_is_exactly_six_keys() {
        let id = Identity { user: "u".into(), uid: 1, gid: 1, home: "/home/u".into() };
        let mut e = HookEvent::from_report(&Report::failed("a", Failure::permanent("x\0y")));
        e.reason.push_str(&"é".repeat(MAX_REASON));
        let env = environment(&e, &id);
        let keys: Vec<_> = env.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["ACCOUNT", "OUTCOME", "FAILURE_CLASS", "REASON", "PATH", "HOME"]);
        assert_eq!((env[1].1.as_str(), env[2].1.as_str()), ("failed", "permanent"));
        assert!(env[3].1.starts_with("xy") && env[3].1.len() <= MAX_REASON);
        assert_eq!(env[5].1, "/home/u");
    }
}
