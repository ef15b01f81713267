//! Logging: journald (structured, with the contract's field names) when running under
//! systemd, stderr otherwise. A redaction guard masks anything that looks like a JWT or an
//! opaque token before it reaches stderr — defence in depth, since no code path logs
//! token values in the first place.

use crate::core::outcome::PreflightReport;
use crate::core::outcome::{Event, Failure, FailureClass, Report};
use crate::core::redact::redact;
use crate::sys::journal::JOURNAL_SOCKET;
use chrono::SecondsFormat;
use std::io::{self, Write};
use tracing::Level;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, filter::LevelFilter};

pub const SYSLOG_IDENTIFIER: &str = "codex-auth-agent";
/// `journal`, `stderr` or `both` overrides the automatic choice.
pub const LOG_ENV: &str = "CODEX_AUTH_AGENT_LOG";

/// Where logs go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sinks {
    pub journal: bool,
    pub stderr: bool,
}

/// Pure choice of sinks from the environment: under a unit (JOURNAL_STREAM) the journal
/// only; on a systemd host interactively, both; elsewhere stderr.
pub fn choose_sinks(override_: Option<&str>, journal_stream: bool, socket_present: bool) -> Sinks {
    match override_ {
        Some("journal") => Sinks { journal: true, stderr: false },
        Some("stderr") => Sinks { journal: false, stderr: true },
        Some("both") => Sinks { journal: true, stderr: true },
        _ => Sinks { journal: journal_stream || socket_present, stderr: !journal_stream },
    }
}

/// Whether outcome entries (those with an OUTCOME field) also go to stderr: not when the
/// command prints each outcome itself (`prints_outcomes`) and both stdout and stderr are a
/// terminal, where the human can see it once; they still go to the journal.
pub fn outcomes_on_stderr(prints_outcomes: bool, stdout_tty: bool, stderr_tty: bool) -> bool {
    !(prints_outcomes && stdout_tty && stderr_tty)
}

/// Install the global subscriber. Safe to call once per process. `prints_outcomes`: the
/// command prints a line per outcome on stdout (refresh, preflight).
pub fn init(verbose: bool, prints_outcomes: bool) {
    use std::io::IsTerminal;
    let sinks = choose_sinks(
        std::env::var(LOG_ENV).ok().as_deref(),
        std::env::var_os("JOURNAL_STREAM").is_some(),
        std::path::Path::new(JOURNAL_SOCKET).exists(),
    );
    let level = if verbose { LevelFilter::DEBUG } else { LevelFilter::INFO };
    let journal = sinks
        .journal
        .then(|| {
            crate::sys::journal::JournalLayer::connect(std::path::Path::new(JOURNAL_SOCKET), SYSLOG_IDENTIFIER).ok()
        })
        .flatten()
        .map(|l| l.with_filter(level));
    let outcomes = outcomes_on_stderr(prints_outcomes, io::stdout().is_terminal(), io::stderr().is_terminal());
    // Without a working journal, stderr is the fallback.
    let stderr = (sinks.stderr || journal.is_none()).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(|| RedactingWriter(io::stderr()))
            .with_target(false)
            .without_time()
            .with_ansi(false)
            .with_filter(tracing_subscriber::filter::filter_fn(move |m| {
                level >= *m.level() && (outcomes || m.fields().field("outcome").is_none())
            }))
    });
    let _ = tracing_subscriber::registry().with(journal).with(stderr).try_init();
}

/// Writes through `redact`. The fmt layer hands over one whole event per write call.
struct RedactingWriter<W: Write>(W);

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// One structured entry per cycle (plus one per secondary event), with the contract's
/// fields: ACCOUNT, OUTCOME, FAILURE_CLASS, REASON, HTTP_STATUS, TOKEN_FP, EXPIRES_AT.
pub fn log_report(r: &Report) {
    for e in &r.events {
        let (outcome, msg) = match e {
            Event::Adopted => ("adopted", "adopted the credential on disk"),
            Event::Seeded => ("seeded", "installed a new seed"),
            Event::Stored => ("stored", "installed the stored auth.json"),
            Event::LoggedIn => ("login", "installed a new login (codex-authctl login)"),
        };
        log_event(&r.account, outcome, r.token_fp.as_deref(), msg);
    }
    let main = Entry::new(&r.account, r.outcome.as_str(), r.failure.as_ref(), &r.reason, r.human_line());
    log_entry(&Entry {
        token_fp: r.token_fp.as_deref(),
        expires_at: r.expires_at,
        store_version: r.store_version,
        ..main
    });
}

/// One preflight's entries: OUTCOME=adopted when Codex's refreshed credential was
/// adopted, then OUTCOME=preflight_ok or preflight_failed.
pub fn log_preflight(r: &PreflightReport) {
    if r.adopted {
        log_event(
            &r.account,
            "adopted",
            r.token_fp.as_deref(),
            "adopted the credential Codex refreshed in the preflight",
        );
    }
    let main = Entry::new(&r.account, r.outcome(), r.failure.as_ref(), &r.reason, r.human_line());
    log_entry(&Entry { token_fp: r.token_fp.as_deref(), expires_at: r.expires_at, ..main });
}

/// A secondary event (info): ACCOUNT, OUTCOME, TOKEN_FP.
fn log_event(account: &str, outcome: &str, token_fp: Option<&str>, msg: &str) {
    tracing::info!(account = %account, outcome, token_fp, "{account}: {msg}");
}

/// The contract's fields of one main journal entry.
struct Entry<'a> {
    account: &'a str,
    outcome: &'a str,
    class: Option<FailureClass>,
    reason: &'a str,
    http_status: Option<u16>,
    token_fp: Option<&'a str>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Fleet mode: the rotating key's version (STORE_VERSION).
    store_version: Option<u64>,
    /// The human line; redacted before it is written.
    message: String,
}

impl<'a> Entry<'a> {
    /// An entry without credential facts (token_fp, expires_at).
    fn new(account: &'a str, outcome: &'a str, failure: Option<&Failure>, reason: &'a str, message: String) -> Self {
        Entry {
            account,
            outcome,
            class: failure.map(|f| f.class),
            reason,
            http_status: failure.and_then(|f| f.http_status),
            token_fp: None,
            expires_at: None,
            store_version: None,
            message,
        }
    }
}

/// Write one main entry at the priority its class calls for.
fn log_entry(e: &Entry) {
    let level = match e.class {
        Some(FailureClass::Permanent) => Level::ERROR,
        Some(_) => Level::WARN,
        None => Level::INFO,
    };
    let expires = e.expires_at.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true));
    let msg = redact(&e.message).into_owned();
    macro_rules! emit {
        ($lvl:expr) => {
            tracing::event!(
                $lvl,
                account = %e.account,
                outcome = e.outcome,
                failure_class = e.class.map(FailureClass::as_str),
                reason = %redact(e.reason),
                http_status = e.http_status,
                token_fp = e.token_fp,
                expires_at = expires.as_deref(),
                store_version = e.store_version,
                "{msg}"
            )
        };
    }
    match level {
        Level::ERROR => emit!(Level::ERROR),
        Level::WARN => emit!(Level::WARN),
        _ => emit!(Level::INFO),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_choice() {
        assert_eq!(choose_sinks(None, true, true), Sinks { journal: true, stderr: false });
        assert_eq!(choose_sinks(None, false, true), Sinks { journal: true, stderr: true });
        assert_eq!(choose_sinks(None, false, false), Sinks { journal: false, stderr: true });
        assert_eq!(choose_sinks(Some("stderr"), true, true), Sinks { journal: false, stderr: true });
    }

    #[test]
    fn an_outcome_reaches_a_terminal_once() {
        assert!(!outcomes_on_stderr(true, true, true), "refresh on a terminal: its own line only");
        assert!(outcomes_on_stderr(true, false, true), "stdout redirected: the terminal still hears of it");
        assert!(outcomes_on_stderr(true, true, false), "stderr captured: logs keep everything");
        assert!(outcomes_on_stderr(false, true, true), "the daemon in a terminal prints no outcome lines itself");
    }
}
