//! `codex-authctl`: the client of the daemon over D-Bus. Reads properties, calls methods,
//! passes auth.json to Store/Login/Seed/PublishSeed as a file descriptor (never as bytes in
//! argv or a message), and maps results to the contract's exit codes (plus 69 unreachable, 77 denied).

use crate::api::names::{ACCOUNT_IFACE, BUS_NAME, BusChoice, MANAGER_IFACE, MANAGER_PATH, account_path};
use crate::api::view::AccountView;
use crate::core::clock::{Clock, SystemClock};
use crate::core::outcome::exit;
use crate::core::schedule::State;
use crate::sys::args::say;
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use zbus::zvariant::{Fd, OwnedObjectPath, OwnedValue};
use zbus::{Connection, Proxy};

pub const UNREACHABLE: i32 = 69;
pub const DENIED: i32 = 77;

#[derive(Parser, Debug)]
#[command(
    name = "codex-authctl",
    version,
    about = "Talk to codex-auth-agent over D-Bus: status, refresh, preflight, store, seed, login, reload"
)]
pub struct Cli {
    #[command(flatten)]
    pub bus: BusArgs,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Args, Debug)]
pub struct BusArgs {
    /// Use the system bus (default)
    #[arg(long, global = true, conflicts_with_all = ["user", "address"])]
    pub system: bool,
    /// Use the session bus of the invoking user
    #[arg(long, global = true, conflicts_with = "address")]
    pub user: bool,
    /// Use this D-Bus address (e.g. unix:path=/run/test-bus)
    #[arg(long, global = true, value_name = "ADDR")]
    pub address: Option<String>,
}

impl BusArgs {
    fn choice(&self) -> BusChoice {
        match (&self.address, self.user) {
            (Some(a), _) => BusChoice::Address(a.clone()),
            (None, true) => BusChoice::Session,
            _ => BusChoice::System,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// Show every account (or one): state, expiry, last refresh, runner, next attempt
    Status {
        /// Only this account (default: all)
        account: Option<String>,
        /// One JSON object per account and line
        #[arg(long)]
        json: bool,
    },
    /// Refresh one account or all (only what is due, unless --force)
    Refresh {
        /// The account to refresh
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        account: Option<String>,
        /// Every account (exit code: the worst)
        #[arg(long)]
        all: bool,
        /// Refresh even when the credential is fresh (backoff does not apply; a quarantine does)
        #[arg(long)]
        force: bool,
    },
    /// Fleet mode: install the newest credential from Vault now (the daemon's Refresh without
    /// force: a follower syncs, a refresher syncs and refreshes what is due)
    Sync {
        /// The account to sync
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        account: Option<String>,
        /// Every account
        #[arg(long)]
        all: bool,
    },
    /// Run the real Codex against a throwaway copy of the credential (one account or all)
    Preflight {
        /// The account to check
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        account: Option<String>,
        /// Every account whose `preflight` key is on (what the daily timer runs)
        #[arg(long)]
        all: bool,
    },
    /// Install the auth.json given on stdin as the account's credential (a preflight follows)
    Store {
        /// The account whose auth.json is replaced
        account: String,
    },
    /// Log the account in again (root): Codex's device-code login as the account's user —
    /// open the URL it prints, enter the code — then install it like `store` (fleet: a
    /// refresher publishes it to Vault; a follower with --publish writes the seed key)
    Login {
        /// The account to log in
        account: String,
        /// Fleet follower: also write the new login to the account's Vault seed key
        /// (check-and-set), from where the refresher publishes it to the fleet
        #[arg(long)]
        publish: bool,
        /// The daemon's config file (for the account's user, codex_bin and issuer)
        #[arg(long, value_name = "PATH")]
        config: Option<std::path::PathBuf>,
        /// Give up (and install nothing) when the code is not approved within this
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Make the auth.json given on stdin the account's seed and install it (no preflight)
    Seed {
        /// The account whose seed is replaced
        account: String,
    },
    /// Re-read the daemon's configuration
    Reload,
}

/// An error with its exit code.
struct Fail(i32, String);

fn classify(e: zbus::Error, what: &str) -> Fail {
    if let zbus::Error::MethodError(name, msg, _) = &e {
        let msg = msg.clone().unwrap_or_default();
        return match name.as_str() {
            "org.freedesktop.DBus.Error.AccessDenied" => Fail(DENIED, format!("permission denied: {msg}")),
            "org.freedesktop.DBus.Error.ServiceUnknown" | "org.freedesktop.DBus.Error.NameHasNoOwner" => {
                unreachable_(&msg)
            }
            "org.freedesktop.DBus.Error.UnknownObject" | "org.freedesktop.DBus.Error.UnknownMethod" => {
                Fail(exit::USAGE, format!("{what}: no such account ({msg})"))
            }
            "org.freedesktop.DBus.Error.InvalidArgs" => Fail(exit::USAGE, format!("{what}: {msg}")),
            _ => Fail(exit::TRANSIENT, format!("{what}: {name}: {msg}")),
        };
    }
    match e {
        zbus::Error::InputOutput(_) | zbus::Error::Address(_) | zbus::Error::Handshake(_) => {
            unreachable_(&e.to_string())
        }
        e => Fail(exit::TRANSIENT, format!("{what}: {e}")),
    }
}

fn unreachable_(detail: &str) -> Fail {
    Fail(
        UNREACHABLE,
        format!("cannot reach codex-auth-agent ({detail}); is it running? try: systemctl start codex-auth-agent"),
    )
}

async fn proxy<'a>(conn: &'a Connection, path: String, iface: &'static str) -> Result<Proxy<'a>, Fail> {
    Proxy::new(conn, BUS_NAME, path, iface).await.map_err(|e| classify(e, "connecting"))
}

async fn account_names(conn: &Connection) -> Result<Vec<String>, Fail> {
    let m = proxy(conn, MANAGER_PATH.into(), MANAGER_IFACE).await?;
    let paths: Vec<OwnedObjectPath> = m.get_property("Accounts").await.map_err(|e| classify(e, "listing accounts"))?;
    let mut names = Vec::new();
    for p in paths {
        let a = proxy(conn, p.as_str().to_string(), ACCOUNT_IFACE).await?;
        names.push(a.get_property::<String>("Name").await.map_err(|e| classify(e, "listing accounts"))?);
    }
    Ok(names)
}

async fn view(conn: &Connection, name: &str) -> Result<AccountView, Fail> {
    let props = zbus::fdo::PropertiesProxy::builder(conn)
        .destination(BUS_NAME)
        .and_then(|b| b.path(account_path(name)))
        .map_err(|e| classify(e, name))?
        .build()
        .await
        .map_err(|e| classify(e, name))?;
    let iface = zbus::names::InterfaceName::from_static_str_unchecked(ACCOUNT_IFACE);
    let all: HashMap<String, OwnedValue> = props.get_all(iface).await.map_err(|e| classify(e.into(), name))?;
    if all.is_empty() {
        return Err(Fail(exit::USAGE, format!("{name}: no such account")));
    }
    Ok(AccountView::from_properties(&all))
}

/// Exit code implied by an account's state after a run that failed.
fn state_code(state: State) -> i32 {
    match state {
        State::FailedPermanent => exit::PERMANENT,
        State::Unsafe => exit::UNSAFE,
        _ => exit::TRANSIENT,
    }
}

fn when(secs: u64) -> String {
    match DateTime::<Utc>::from_timestamp(secs as i64, 0) {
        Some(t) if secs > 0 => t.format("%Y-%m-%d %H:%M UTC").to_string(),
        _ => "-".into(),
    }
}

/// "3d 4h", "-2h 5m" (expired), "-" (unknown).
pub fn relative(secs: u64, now: DateTime<Utc>) -> String {
    if secs == 0 {
        return "-".into();
    }
    let d = secs as i64 - now.timestamp();
    let (sign, a) = if d < 0 { ("-", -d) } else { ("", d) };
    let (days, hours, mins) = (a / 86400, a % 86400 / 3600, a % 3600 / 60);
    if days > 0 { format!("{sign}{days}d {hours}h") } else { format!("{sign}{hours}h {mins}m") }
}

/// The status table (pure, for tests).
pub fn table(views: &[AccountView], now: DateTime<Utc>) -> String {
    let rows: Vec<[String; 6]> = views
        .iter()
        .map(|v| {
            [
                v.name.clone(),
                v.state.as_str().to_string(),
                relative(v.access_token_expires_at, now),
                when(v.last_refresh),
                v.runner_state.as_str().to_string(),
                when(v.next_attempt),
            ]
        })
        .collect();
    let head = ["ACCOUNT", "STATE", "EXPIRES IN", "LAST REFRESH", "RUNNER", "NEXT ATTEMPT"].map(String::from);
    let mut widths = head.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    std::iter::once(&head)
        .chain(rows.iter())
        .map(|r| {
            let cells: Vec<String> = r.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
            cells.join("  ").trim_end().to_string() + "\n"
        })
        .collect()
}

async fn run(cli: Cli) -> Result<i32, Fail> {
    let system_bus = matches!(cli.bus.choice(), BusChoice::System);
    let conn = cli
        .bus
        .choice()
        .builder()
        .map_err(|e| unreachable_(&e.to_string()))?
        .build()
        .await
        .map_err(|e| unreachable_(&e.to_string()))?;
    // `sync` is Refresh(false): in fleet mode every run starts by reading Vault.
    let command = match cli.command {
        CtlCommand::Sync { account, all } => CtlCommand::Refresh { account, all, force: false },
        c => c,
    };
    match command {
        CtlCommand::Status { account, json } => {
            let names = match account {
                Some(a) => vec![a],
                None => account_names(&conn).await?,
            };
            let mut views = Vec::new();
            for n in &names {
                views.push(view(&conn, n).await?);
            }
            if json {
                for v in &views {
                    say(&format!("{}\n", serde_json::to_string(v).unwrap_or_default()));
                }
            } else {
                let m = proxy(&conn, MANAGER_PATH.into(), MANAGER_IFACE).await?;
                let summary: String = m.get_property("Summary").await.map_err(|e| classify(e, "status"))?;
                say(&format!("{summary}\n\n"));
                say(&table(&views, SystemClock.now()));
            }
            Ok(exit::OK)
        }
        CtlCommand::Refresh { account: Some(a), force, .. } => {
            let p = proxy(&conn, account_path(&a), ACCOUNT_IFACE).await?;
            let (outcome, reason): (String, String) =
                p.call("Refresh", &(force,)).await.map_err(|e| classify(e, &a))?;
            say(&result_line(&a, &outcome, &reason));
            finish(&conn, &[(a, outcome)]).await
        }
        CtlCommand::Refresh { account: None, force, .. } => {
            let m = proxy(&conn, MANAGER_PATH.into(), MANAGER_IFACE).await?;
            let results: Vec<(String, String, String)> =
                m.call("RefreshAll", &(force,)).await.map_err(|e| classify(e, "refresh --all"))?;
            for (a, o, r) in &results {
                say(&result_line(a, o, r));
            }
            finish(&conn, &results.into_iter().map(|(a, o, _)| (a, o)).collect::<Vec<_>>()).await
        }
        CtlCommand::Sync { .. } => unreachable!("mapped to Refresh above"),
        CtlCommand::Preflight { account: Some(a), .. } => {
            let p = proxy(&conn, account_path(&a), ACCOUNT_IFACE).await?;
            let (outcome, reason): (String, String) = p.call("Preflight", &()).await.map_err(|e| classify(e, &a))?;
            say(&result_line(&a, &outcome, &reason));
            Ok(if outcome == "preflight_ok" { exit::OK } else { exit::TRANSIENT })
        }
        CtlCommand::Preflight { account: None, .. } => {
            let m = proxy(&conn, MANAGER_PATH.into(), MANAGER_IFACE).await?;
            let results: Vec<(String, String, String)> =
                m.call("PreflightAll", &()).await.map_err(|e| classify(e, "preflight --all"))?;
            for (a, o, r) in &results {
                say(&result_line(a, o, r));
            }
            let failed = results.iter().any(|(_, o, _)| o != "preflight_ok");
            Ok(if failed { exit::TRANSIENT } else { exit::OK })
        }
        CtlCommand::Store { account } => pass_fd(&conn, &account, "Store").await,
        CtlCommand::Login { account, publish, config, timeout } => {
            login(&conn, &account, publish, config.as_deref(), timeout).await
        }
        CtlCommand::Seed { account } => pass_fd(&conn, &account, "Seed").await,
        CtlCommand::Reload => {
            if system_bus {
                match resync_sandbox() {
                    Some(Ok(said)) => {
                        say(&format!("{said}\n"));
                        return Ok(exit::OK);
                    }
                    Some(Err(e)) => return Err(Fail(1, e)),
                    None => {}
                }
            }
            let m = proxy(&conn, MANAGER_PATH.into(), MANAGER_IFACE).await?;
            m.call::<_, _, ()>("Reload", &()).await.map_err(|e| classify(e, "reload"))?;
            say("reloaded\n");
            Ok(exit::OK)
        }
    }
}

/// `reload` as root on a systemd host: `systemctl daemon-reload` re-runs the generator
/// (the sandbox drop-in for the configured homes); when the running daemon's mount
/// namespace lacks a path the new drop-in opens, a SIGHUP cannot add it: restart the
/// service. Returns what was done when it restarted, None when a plain Reload is enough.
fn resync_sandbox() -> Option<Result<String, String>> {
    use crate::core::sandbox::{DROPIN, GENERATOR_DIR, UNIT, mount_points, opened_paths};
    if !nix::unistd::geteuid().is_root() || !std::path::Path::new("/run/systemd/system").exists() {
        return None;
    }
    let systemctl = |args: &[&str]| std::process::Command::new("systemctl").args(args).output();
    match systemctl(&["daemon-reload"]) {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!("codex-authctl: systemctl daemon-reload failed: {}", String::from_utf8_lossy(&o.stderr).trim());
            return None;
        }
        Err(e) => {
            eprintln!("codex-authctl: cannot run systemctl daemon-reload: {e}");
            return None;
        }
    }
    let pid = systemctl(&["show", "-P", "MainPID", UNIT]).ok()?;
    let pid = String::from_utf8_lossy(&pid.stdout).trim().parse::<u32>().ok().filter(|p| *p != 0)?;
    let dropin = std::fs::read_to_string(format!("{GENERATOR_DIR}/{UNIT}.d/{DROPIN}")).unwrap_or_default();
    let mounts = mount_points(&std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?);
    let missing: Vec<String> = opened_paths(&dropin)
        .into_iter()
        .filter(|p| p.is_dir() && !mounts.contains(p))
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        return None;
    }
    match systemctl(&["restart", UNIT]) {
        Ok(o) if o.status.success() => {
            Some(Ok(format!("reloaded: restarted {UNIT} so that its sandbox opens {}", missing.join(", "))))
        }
        _ => Some(Err(format!("systemctl restart {UNIT} failed; see systemctl status {UNIT}"))),
    }
}

/// `ACCOUNT: OUTCOME[: REASON]` and a newline.
fn result_line(account: &str, outcome: &str, reason: &str) -> String {
    if reason.is_empty() { format!("{account}: {outcome}\n") } else { format!("{account}: {outcome}: {reason}\n") }
}

/// Worst exit code of a batch of (account, outcome); failed ones are judged by State.
async fn finish(conn: &Connection, results: &[(String, String)]) -> Result<i32, Fail> {
    let mut code = exit::OK;
    for (a, outcome) in results {
        if outcome == "failed" {
            let state = view(conn, a).await.map(|v| v.state).unwrap_or_default();
            code = exit::worst(code, state_code(state));
        }
    }
    Ok(code)
}

async fn pass_fd(conn: &Connection, account: &str, method: &str) -> Result<i32, Fail> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(Fail(
            exit::USAGE,
            format!("pipe the auth.json on stdin, e.g. codex-authctl {} {account} < auth.json", method.to_lowercase()),
        ));
    }
    let p = proxy(conn, account_path(account), ACCOUNT_IFACE).await?;
    let fd = Fd::from(stdin.as_fd());
    let (outcome, reason): (String, String) = p.call(method, &(fd,)).await.map_err(|e| classify(e, account))?;
    say(&result_line(account, &outcome, &reason));
    finish(conn, &[(account.to_string(), outcome)]).await
}

/// The `codex-auth-agent` binary beside this one (the package installs both in /usr/bin).
fn agent_binary() -> std::path::PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("codex-auth-agent")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| std::path::PathBuf::from("/usr/bin/codex-auth-agent"))
}

/// A memfd holding `bytes`, rewound: what Store reads (no file on disk, nothing in argv).
fn memfd_with(bytes: &[u8]) -> std::io::Result<std::fs::File> {
    use std::io::{Seek, Write};
    use std::os::fd::FromRawFd;
    // SAFETY: a plain syscall with a constant name; the fd it returns is ours alone.
    let fd = unsafe { libc::memfd_create(c"codex-authctl-login".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, open descriptor nobody else owns.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(bytes)?;
    f.rewind()?;
    Ok(f)
}

/// `login`: `codex-auth-agent login` (Codex's device login as the account's user, in this
/// terminal: worker/login.rs says why not in the daemon) hands us the new auth.json on a
/// pipe; it goes to the daemon's Store like `store` does.
async fn login(
    conn: &Connection,
    account: &str,
    publish: bool,
    config: Option<&std::path::Path>,
    timeout: std::time::Duration,
) -> Result<i32, Fail> {
    use std::io::Read;
    if !nix::unistd::geteuid().is_root() {
        return Err(Fail(DENIED, "login must run as root: it runs Codex as the account's user, then stores".into()));
    }
    let v = view(conn, account).await?;
    let seed_base = if publish { publish_base(conn, account, &v.fleet_role).await? } else { None };
    let mut cmd = std::process::Command::new(agent_binary());
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.args(["login", "--account", account, "--expect-user", &v.user, "--timeout"])
        .arg(humantime::format_duration(timeout).to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    let mut child =
        cmd.spawn().map_err(|e| Fail(exit::TRANSIENT, format!("cannot start codex-auth-agent login: {e}")))?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut stdout = child.stdout.take().expect("piped");
    let mut task = tokio::task::spawn_blocking(move || {
        let mut bytes = Vec::new();
        let read = (&mut stdout).take(1 << 20).read_to_end(&mut bytes);
        (read.map(|_| bytes), child.wait())
    });
    let (bytes, status) = loop {
        tokio::select! {
            r = &mut task => break r.map_err(|e| Fail(exit::TRANSIENT, format!("{account}: {e}")))?,
            // A terminal's Ctrl-C reaches both of us; a signal to us alone is passed on.
            _ = tokio::signal::ctrl_c() => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            }
        }
    };
    let status = status.map_err(|e| Fail(exit::TRANSIENT, format!("{account}: {e}")))?;
    match status.code() {
        Some(0) => {}
        // It said why on stderr (the terminal) already.
        Some(code) => return Ok(code),
        None => return Err(Fail(exit::TRANSIENT, format!("{account}: codex-auth-agent login was killed ({status})"))),
    }
    let bytes = bytes.map_err(|e| Fail(exit::TRANSIENT, format!("{account}: reading the login: {e}")))?;
    let memfd = || memfd_with(&bytes).map_err(|e| Fail(exit::TRANSIENT, format!("memfd: {e}")));
    let file = memfd()?;
    let p = proxy(conn, account_path(account), ACCOUNT_IFACE).await?;
    let fd = Fd::from(file.as_fd());
    let (outcome, reason): (String, String) = p.call("Login", &(fd,)).await.map_err(|e| classify(e, account))?;
    drop(file);
    println!(
        "{account}: logged in; installed: {outcome}{}",
        if reason.is_empty() { String::new() } else { format!(": {reason}") }
    );
    let code = finish(conn, &[(account.to_string(), outcome.clone())]).await?;
    match seed_base {
        // Not installed here: nothing to publish either.
        Some(_) if outcome == "failed" => {
            eprintln!("codex-authctl: {account}: the login was not installed, so it was not published either");
            Ok(code)
        }
        Some(base) => {
            let file = memfd()?;
            drop(bytes);
            let fd = Fd::from(file.as_fd());
            let (outcome, reason): (String, String) =
                p.call("PublishSeed", &(fd, base)).await.map_err(|e| classify(e, account))?;
            if outcome == "published" {
                println!(
                    "{account}: published to the seed key: {reason}; the refresher's next run makes it the fleet's \
                     login (then every host's next sync installs it)"
                );
                Ok(code)
            } else {
                Err(Fail(exit::worst(code, exit::TRANSIENT), format!("{account}: not published: {reason}")))
            }
        }
        None if v.fleet_role == "follower" => {
            println!(
                "{account}: this host is a fleet follower: the login is installed here only and Vault still holds \
                 the old one; the other hosts get it when it is published: run codex-authctl login {account} \
                 --publish here (its Vault token needs create/update on the seed key), or codex-authctl login \
                 {account} on the refresher instead, or put this login in the seed key (README: Fleet mode, \
                 Re-login)"
            );
            Ok(code)
        }
        None => Ok(code),
    }
}

/// `login --publish`: on a follower, the seed key's version now (the check-and-set base of
/// PublishSeed after the login, so a write by anyone else meanwhile is refused); read
/// before the login starts, so that a Vault that cannot be asked costs no login. None
/// on a refresher, which publishes by itself; a usage error elsewhere.
async fn publish_base(conn: &Connection, account: &str, role: &str) -> Result<Option<u64>, Fail> {
    match role {
        "follower" => {}
        "refresher" => {
            eprintln!(
                "codex-authctl: {account}: --publish is not needed here: this host is the account's refresher, so \
                 the install writes the login to the rotating key itself"
            );
            return Ok(None);
        }
        _ => {
            return Err(Fail(
                exit::USAGE,
                format!(
                    "{account}: --publish applies to fleet followers only, and account {account} is not in fleet \
                     mode (no Vault seed key); run codex-authctl login {account} without it"
                ),
            ));
        }
    }
    let p = proxy(conn, account_path(account), ACCOUNT_IFACE).await?;
    match p.call::<_, _, u64>("SeedVersion", &()).await {
        Ok(v) => Ok(Some(v)),
        Err(zbus::Error::MethodError(name, msg, _)) if name.as_str() == "org.freedesktop.DBus.Error.Failed" => {
            Err(Fail(
                exit::TRANSIENT,
                format!(
                    "{account}: cannot read the seed key before the login ({}); nothing was started",
                    msg.unwrap_or_default()
                ),
            ))
        }
        Err(e) => Err(classify(e, account)),
    }
}

/// Run codex-authctl; returns the exit code.
pub fn main() -> i32 {
    let cli: Cli = match crate::sys::args::parse() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("codex-authctl: {e}");
            return 1;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(Fail(code, msg)) => {
            eprintln!("codex-authctl: {msg}");
            code
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::outcome::RunnerState;

    #[test]
    fn relative_times() {
        let now = DateTime::from_timestamp(1_000_000, 0).unwrap();
        assert_eq!(relative(0, now), "-");
        assert_eq!(relative(1_000_000 + 3 * 86400 + 7200, now), "3d 2h");
        assert_eq!(relative(1_000_000 - 3660, now), "-1h 1m");
    }

    #[test]
    fn table_aligns_columns() {
        let v = AccountView {
            name: "alice".into(),
            state: State::Ok,
            runner_state: RunnerState::Unknown,
            ..Default::default()
        };
        let t = table(&[v], DateTime::from_timestamp(0, 0).unwrap());
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ACCOUNT  STATE"));
        assert!(lines[1].starts_with("alice    ok"));
    }
}
