//! The `codex-auth-agent` command line: argument parsing, the one-shot commands (each with
//! the executor and process memory it injects into the runner), the daemon and the internal
//! worker as subcommands, and the mapping of results to the contract's exit codes.

use crate::runner::account::Runtime;
use crate::runner::privsep::Workers;
use crate::runner::run;
use crate::runner::vault::Clients;
use crate::store::Memory;
use crate::worker::Local;

/// The one-shot commands' executor: a worker child for another user's account, in-process
/// for our own.
static WORKERS: Workers<Local> = Workers::new(Local, false);
use crate::config::{self, AccountSettings, Env, Settings};
use crate::core::clock::SystemClock;
use crate::core::outcome::exit;
use crate::core::task::{Executor, Identity};
use crate::sys::args::say;
use crate::sys::logging;
use clap::{ArgGroup, Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Parser, Debug)]
#[command(
    name = "codex-auth-agent",
    version,
    about = "Keeps Codex CLI ChatGPT credentials (auth.json) alive: one writer per account"
)]
pub struct Cli {
    /// Main config file (drop-ins are read from config.d/ beside it)
    #[arg(long, global = true, value_name = "PATH", env = config::CONFIG_ENV)]
    pub config: Option<PathBuf>,
    /// More detailed logs
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate the configuration and print it resolved (exit 0, or 78 on errors)
    CheckConfig,
    /// Refresh the credentials that are due, in this process (no daemon needed)
    Refresh(RefreshArgs),
    /// Prove each login works: `codex exec` on a throwaway copy, as the account's user
    /// (`--all` skips accounts with preflight = false)
    Preflight(PreflightArgs),
    /// Run the agent: D-Bus service, schedules, sd-notify (what the systemd unit starts)
    Daemon {
        /// `system`, `session`, or a D-Bus address such as unix:path=/run/x
        #[arg(long, value_name = "BUS", default_value = "system")]
        bus: crate::api::names::BusChoice,
    },
    /// Log an account in again with Codex's device-code login, run as its user in a
    /// throwaway home; Codex's instructions go to stderr, the new auth.json to stdout (a
    /// pipe, e.g. into `codex-authctl store NAME`; `codex-authctl login NAME` does both)
    Login {
        /// The configured account
        #[arg(long, value_name = "NAME")]
        account: String,
        /// Give up (and print nothing) when the code is not approved within this
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Refuse unless the account runs as this Unix user (codex-authctl passes the daemon's)
        #[arg(long, value_name = "USER")]
        expect_user: Option<String>,
    },
    /// Internal: one account's job as its user (job on stdin, report on stdout)
    #[command(hide = true)]
    Worker,
    /// Internal: the systemd generator (opens the configured Codex homes in the sandbox)
    #[command(hide = true)]
    SystemdGenerator { dirs: Vec<PathBuf> },
}

/// Which accounts a one-shot command works on.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("target").required(true).args(["account", "all", "codex_home"])))]
pub struct Target {
    /// A configured account
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// Every configured account (exit code: the worst)
    #[arg(long)]
    pub all: bool,
    /// Single-user mode: this CODEX_HOME, as the invoking user, no config file needed
    #[arg(long, value_name = "DIR")]
    pub codex_home: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RefreshArgs {
    #[command(flatten)]
    pub target: Target,
    /// Refresh even when the credential is fresh
    #[arg(long)]
    pub force: bool,
    /// Say what would happen; send and write nothing
    #[arg(long)]
    pub dry_run: bool,
    /// One JSON object per account and line
    #[arg(long)]
    pub json: bool,
}

/// `--all` skips accounts with `preflight = false`; `--account` runs regardless.
#[derive(Args, Debug)]
pub struct PreflightArgs {
    #[command(flatten)]
    pub target: Target,
    /// One JSON object per account and line
    #[arg(long)]
    pub json: bool,
}

/// Run the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli: Cli = match crate::sys::args::parse() {
        Ok(c) => c,
        Err(code) => return code,
    };
    crate::sys::process::harden_process();
    logging::init(cli.verbose, matches!(cli.command, Command::Refresh(_) | Command::Preflight(_)));
    let clock = SystemClock;
    let (mem, vault) = (Memory::default(), Clients::default());
    let code = match cli.command {
        Command::Worker => crate::worker::child::main(&clock),
        Command::SystemdGenerator { dirs } => systemd_generator(&dirs),
        Command::CheckConfig => check_config(cli.config.as_deref()),
        Command::Daemon { bus } => crate::daemon::main(cli.config.as_deref(), bus),
        Command::Refresh(args) => {
            refresh(cli.config.as_deref(), &args, &Runtime { clock: &clock, exec: &WORKERS, mem: &mem, vault: &vault })
        }
        Command::Preflight(args) => preflight(
            cli.config.as_deref(),
            &args,
            &Runtime { clock: &clock, exec: &WORKERS, mem: &mem, vault: &vault },
        ),
        Command::Login { account, timeout, expect_user } => {
            login(cli.config.as_deref(), &account, timeout, expect_user.as_deref())
        }
    };
    // Workers kept for a next task exit on their closed stdin anyway; this reaps them.
    WORKERS.idle();
    code
}

/// Set by SIGINT/SIGTERM/SIGHUP during `login`: the login is cancelled cleanly.
static LOGIN_CANCELLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn cancel_login(_: libc::c_int) {
    LOGIN_CANCELLED.store(true, Ordering::SeqCst);
}

fn login(flag: Option<&Path>, account: &str, timeout: std::time::Duration, expect_user: Option<&str>) -> i32 {
    use crate::worker::login::{LoginError, device_login};
    use std::io::{IsTerminal, Write};
    if std::io::stdout().is_terminal() {
        eprintln!(
            "codex-auth-agent login writes the new auth.json to stdout: pipe it, e.g. \
             codex-auth-agent login --account {account} | codex-authctl store {account} \
             (codex-authctl login {account} does this)"
        );
        return exit::USAGE;
    }
    let path = config::config_path(flag);
    let settings = match config::load(&path, &Env::from_process()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return exit::CONFIG;
        }
    };
    let Some(acct) = settings.accounts.get(account) else {
        eprintln!("{account}: no such account in {}", path.display());
        return exit::USAGE;
    };
    if let Some(u) = expect_user.filter(|u| *u != acct.user) {
        eprintln!(
            "{account}: the daemon runs it as user {u} but {} says {}: pass the daemon's config with --config",
            path.display(),
            acct.user
        );
        return exit::USAGE;
    }
    let me = nix::unistd::geteuid();
    if !me.is_root() && Identity::current().map(|i| i.user) != Ok(acct.user.clone()) {
        eprintln!("{account}: run this as root or as user {} (Codex runs as the account's user)", acct.user);
        return 77;
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, cancel_login as *const () as libc::sighandler_t) };
    }
    eprintln!(
        "codex-auth-agent: logging in account {account} as user {} \
         (Codex device-code login; waits up to {}; Ctrl-C cancels)",
        acct.user,
        humantime::format_duration(timeout)
    );
    match device_login(&settings, acct, timeout, &LOGIN_CANCELLED) {
        Ok(bytes) => {
            let mut out = std::io::stdout().lock();
            match out.write_all(&bytes).and_then(|_| out.flush()) {
                Ok(()) => exit::OK,
                Err(e) => {
                    eprintln!("{account}: cannot write the login to stdout: {e}");
                    exit::TRANSIENT
                }
            }
        }
        Err(LoginError::Cancelled) => {
            eprintln!("{account}: login cancelled: nothing was installed");
            130
        }
        Err(e) => {
            eprintln!("{account}: {e}");
            exit::TRANSIENT
        }
    }
}

/// The systemd generator: `codex-auth-agent systemd-generator NORMAL_DIR [EARLY LATE]`
/// writes the sandbox drop-in for the configured homes (core::sandbox). Never fails the
/// boot: a config that does not load writes nothing (the service then fails to start with
/// the config error, which is where the operator looks).
fn systemd_generator(dirs: &[PathBuf]) -> i32 {
    use crate::core::sandbox::{DROPIN, UNIT, dropin};
    let Some(normal) = dirs.first() else {
        eprintln!("usage: codex-auth-agent systemd-generator NORMAL_DIR [EARLY_DIR LATE_DIR]");
        return exit::USAGE;
    };
    let path = config::config_path(None);
    let settings = match config::load(&path, &Env::default()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("codex-auth-agent-generator: no sandbox drop-in: {e}");
            return exit::OK;
        }
    };
    let homes = settings.accounts.values().map(|a| (a.name.as_str(), a.codex_home.as_path()));
    let Some(text) = dropin(homes, &path) else { return exit::OK };
    let dir = normal.join(format!("{UNIT}.d"));
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join(DROPIN), text)) {
        eprintln!("codex-auth-agent-generator: cannot write {}: {e}", dir.join(DROPIN).display());
    }
    exit::OK
}

fn check_config(flag: Option<&Path>) -> i32 {
    let path = config::config_path(flag);
    match config::load(&path, &Env::from_process()) {
        Ok(s) if !s.home_problems.is_empty() => {
            for e in &s.home_problems {
                eprintln!("{e}");
            }
            exit::CONFIG
        }
        Ok(s) => {
            for w in &s.warnings {
                eprintln!("warning: {w}");
            }
            say(&s.render());
            exit::OK
        }
        Err(e) => {
            eprintln!("{e}");
            exit::CONFIG
        }
    }
}

/// Where single-user mode keeps its status: `$XDG_STATE_HOME` or `~/.local/state`.
fn user_state_dir(me: &Identity) -> PathBuf {
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| me.home.join(".local/state"))
        .join("codex-auth-agent")
}

/// The settings and the accounts to work on, or an exit code.
fn select(flag: Option<&Path>, target: &Target) -> Result<(Settings, Vec<String>), i32> {
    let env = Env::from_process();
    if let Some(home) = &target.codex_home {
        let me = Identity::current().map_err(|e| {
            eprintln!("{e}");
            exit::USAGE
        })?;
        let home = std::env::current_dir().map(|d| d.join(home)).unwrap_or_else(|_| home.clone());
        let s = config::single_user(&home, &me.user, user_state_dir(&me), &env).map_err(|e| {
            eprintln!("{e}");
            exit::CONFIG
        })?;
        return Ok((s, vec!["default".to_string()]));
    }
    let path = config::config_path(flag);
    let settings = config::load(&path, &env).map_err(|e| {
        eprintln!("{e}");
        exit::CONFIG
    })?;
    for w in &settings.warnings {
        eprintln!("warning: {w}");
    }
    for e in &settings.home_problems {
        eprintln!("warning: {e}");
    }
    let names: Vec<String> = match &target.account {
        Some(name) if settings.accounts.contains_key(name) => vec![name.clone()],
        Some(name) => {
            let known: Vec<&str> = settings.accounts.keys().map(String::as_str).collect();
            eprintln!("no account named {name:?} in {}; configured: {}", path.display(), known.join(", "));
            return Err(exit::USAGE);
        }
        None => settings.accounts.keys().cloned().collect(),
    };
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        for n in &names {
            let user = &settings.accounts[n].user;
            if Identity::lookup(user).map(|i| i.uid) != Ok(euid.as_raw()) {
                eprintln!("account {n} belongs to user {user}: run as root or as {user}");
                return Err(exit::USAGE);
            }
        }
    }
    Ok((settings, names))
}

fn refresh(flag: Option<&Path>, args: &RefreshArgs, rt: &Runtime<'_>) -> i32 {
    let (settings, names) = match select(flag, &args.target) {
        Ok(x) => x,
        Err(code) => return code,
    };
    if names.is_empty() {
        eprintln!("no accounts configured; add [accounts.NAME] sections to the config");
        return exit::OK;
    }
    let reports = run_parallel(&settings, &names, settings.agent.max_parallel, |a| {
        run::refresh(&settings, a, run::RefreshOptions { force: args.force, dry_run: args.dry_run }, rt)
    });
    let mut code = exit::OK;
    for r in &reports {
        say(&format!("{}\n", if args.json { r.json_line() } else { r.human_line() }));
        code = exit::worst(code, r.exit_code());
    }
    code
}

fn preflight(flag: Option<&Path>, args: &PreflightArgs, rt: &Runtime<'_>) -> i32 {
    let (settings, mut names) = match select(flag, &args.target) {
        Ok(x) => x,
        Err(code) => return code,
    };
    if args.target.all {
        names.retain(|n| {
            let on = settings.accounts[n].refresh.preflight;
            if !on {
                eprintln!("account {n}: skipped (preflight = false)");
            }
            on
        });
    }
    if names.is_empty() {
        eprintln!("no accounts to preflight; add [accounts.NAME] sections (with preflight = true) to the config");
        return exit::OK;
    }
    let reports = run_parallel(&settings, &names, settings.agent.max_parallel, |a| run::preflight(&settings, a, rt));
    let mut code = exit::OK;
    for r in &reports {
        say(&format!("{}\n", if args.json { r.json_line() } else { r.human_line() }));
        code = exit::worst(code, r.exit_code());
    }
    code
}

/// Run `f` for each named account with at most `parallel` at once; results in order.
fn run_parallel<R, F>(settings: &Settings, names: &[String], parallel: usize, f: F) -> Vec<R>
where
    R: Send,
    F: Fn(&AccountSettings) -> R + Sync,
{
    if parallel <= 1 || names.len() <= 1 {
        // One at a time: no thread (its stack and malloc arena cost a short run more than it does).
        return names.iter().map(|n| f(&settings.accounts[n])).collect();
    }
    let next = AtomicUsize::new(0);
    let slots: Mutex<Vec<Option<R>>> = Mutex::new(names.iter().map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..parallel.min(names.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(name) = names.get(i) else { break };
                    let r = f(&settings.accounts[name]);
                    slots.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
                }
            });
        }
    });
    slots.into_inner().unwrap_or_else(|p| p.into_inner()).into_iter().flatten().collect()
}
