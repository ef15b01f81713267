//! `codex-auth-agent daemon`: owns org.codexauth.Agent1, serves status and control on
//! D-Bus, runs each account on its own schedule (and on request) through workers that
//! drop to the account's user, and reports to systemd (READY, STATUS, WATCHDOG).
//! The daemon never opens a file in a user's CODEX_HOME.

/// Manager and Account objects, access control, PropertiesChanged.
pub mod bus;
/// Entries, single-flight runs, quarantine probe, reload.
pub mod core;
/// sd-notify wrapper.
pub mod notify;
/// The Account object's view, projected from settings, status and schedule (pure).
pub mod view;

use crate::api::names::BusChoice;
use crate::config::{self, Env};
use crate::core::clock::SystemClock;
use crate::core::outcome::exit;
use crate::runner::account::Shared;
use crate::runner::privsep::Workers;
use crate::worker::Local;
use chrono::{DateTime, Utc};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};

/// Longest wait between looks at the schedule.
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// How long SIGTERM waits for runs in flight.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Run the daemon until SIGTERM; returns the exit code.
pub fn main(config_flag: Option<&Path>, bus: BusChoice) -> i32 {
    let path = config::config_path(config_flag);
    let settings = match config::load(&path, &Env::from_process()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            return exit::CONFIG;
        }
    };
    for w in &settings.warnings {
        tracing::warn!("{w}");
    }
    // The blocking pool's threads would each get a glibc malloc arena; one arena keeps a
    // long-lived daemon's memory flat (it allocates little, and never on a hot path).
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return 1;
        }
    };
    rt.block_on(run(path.as_path(), settings, bus))
}

async fn run(path: &Path, settings: config::Settings, bus: BusChoice) -> i32 {
    // Every task in a worker child, even for an account of the daemon's own user: the
    // long-lived daemon never opens a user's files itself, and its memory stays flat.
    let exec = Arc::new(Workers::new(Local, true));
    let shared = Shared { clock: Arc::new(SystemClock), exec, mem: Arc::default(), vault: Arc::default() };
    let (core, mut events) = core::Core::with_executor(path.to_path_buf(), settings, shared);
    let denials = bus::Denials::default();
    let conn = match bus::serve(&bus, core.clone(), &denials).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cannot serve {} on the {bus:?} bus: {e}", crate::api::names::BUS_NAME);
            return 1;
        }
    };
    let mut publisher = bus::Publisher::new(conn, core.clone(), denials);
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::hangup()), signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers");
        return 1;
    };
    notify::ready(publisher.summary());
    tracing::info!("started: {}", publisher.summary());
    // First look at every account: runs only what is due (or never checked).
    core.kick(core.due(core.now(), true));
    let clock = match notify::watchdog_interval().map(notify::PingClock::new).transpose() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cannot start the watchdog clock: {e}");
            return 1;
        }
    };
    if clock.is_some() {
        notify::watchdog();
    }
    // The textfile heartbeat: written now and every metrics_interval even with nothing to
    // record, so its timestamp going stale means the daemon is not running.
    let mut heartbeat = tokio::time::Instant::now();
    loop {
        let now = core.now();
        let wake = core.next_wakeup().unwrap_or(DateTime::<Utc>::MAX_UTC).min(now + MAX_SLEEP);
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let _ = core.reload();
            }
            Some(ev) = events.recv() => {
                let mut batch = vec![ev];
                while let Ok(ev) = events.try_recv() {
                    batch.push(ev);
                }
                if publisher.handle(batch).await {
                    notify::status(publisher.summary());
                }
            }
            _ = tokio::time::sleep((wake - now).to_std().unwrap_or(Duration::ZERO)) => {
                core.kick(core.due(core.now(), false));
            }
            _ = next_ping(clock.as_ref()) => notify::watchdog(),
            _ = tokio::time::sleep_until(heartbeat) => {
                let settings = core.settings();
                heartbeat = tokio::time::Instant::now() + settings.agent.metrics_interval;
                if settings.agent.metrics_textfile.is_some() {
                    let core = core.clone();
                    tokio::task::spawn_blocking(move || core.write_metrics());
                }
            }
        }
    }
    notify::stopping();
    tracing::info!("stopping; waiting for {} run(s) in flight", core.busy());
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    while core.busy() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    exit::OK
}

/// When the watchdog wants its next ping; never without a watchdog. A failing clock
/// stops the pings, so systemd restarts the daemon.
async fn next_ping(clock: Option<&notify::PingClock>) {
    match clock.map(|c| c.tick()) {
        Some(tick) => {
            if let Err(e) = tick.await {
                tracing::error!("the watchdog clock failed: {e}");
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}
