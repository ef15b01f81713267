//! The Prometheus textfile (`[agent] metrics_textfile`): after every recorded outcome the
//! caller re-renders every configured account's status.json into the node_exporter
//! textfile-collector format and replaces the file atomically (temp file in the same
//! directory + rename, mode 0644). Rendering is a pure function of the statuses; the file
//! holds no token value (status.json has none to give). A failed write is only a warning.

use crate::config::{FleetRole, Settings};
use crate::core::outcome::{FailureClass, Outcome, RunnerState};
use crate::store::Memory;
use crate::store::status::AccountStatus;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

/// Outcomes a status can record (a dry run records nothing), one series each.
const OUTCOMES: &[Outcome] = &[Outcome::Refreshed, Outcome::Fresh, Outcome::Inert, Outcome::Failed];

/// Escape a label value: backslash, double quote and newline (exposition format).
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// What the textfile says about an account besides its status.json: from its config.
#[derive(Clone, Copy, Debug, Default)]
pub struct AccountFacts {
    pub refresh_before_expiry: std::time::Duration,
    pub fleet_role: Option<FleetRole>,
}

/// The textfile for `statuses` with each account's config facts, written at `now` (Unix
/// seconds) (pure). Series without a known value are left out.
pub fn render(accounts: &[(AccountStatus, AccountFacts)], now: i64) -> String {
    let statuses: Vec<&AccountStatus> = accounts.iter().map(|(s, _)| s).collect();
    let mut out = String::new();
    let mut family = |name: &str, help: &str, rows: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in rows {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    let acct = |s: &AccountStatus| format!("account=\"{}\"", escape_label(&s.account));
    family(
        "codex_auth_agent_access_token_expiry_timestamp_seconds",
        "When the account's access token expires (Unix time).",
        statuses.iter().filter_map(|s| Some((acct(s), s.expires_at?.timestamp().to_string()))).collect(),
    );
    family(
        "codex_auth_agent_last_refresh_timestamp_seconds",
        "The credential's last_refresh (Unix time).",
        statuses.iter().filter_map(|s| Some((acct(s), s.last_refresh?.timestamp().to_string()))).collect(),
    );
    family(
        "codex_auth_agent_last_outcome",
        "1 for the outcome of the account's last refresh cycle, 0 for the others.",
        statuses
            .iter()
            .filter(|s| s.outcome.is_some())
            .flat_map(|s| {
                OUTCOMES.iter().map(move |o| {
                    let v = if s.outcome == Some(*o) { "1" } else { "0" };
                    (format!("{},outcome=\"{}\"", acct(s), o.as_str()), v.to_string())
                })
            })
            .collect(),
    );
    family(
        "codex_auth_agent_consecutive_failures",
        "Refresh cycles failed in a row since the last success.",
        statuses.iter().map(|s| (acct(s), s.consecutive_failures.to_string())).collect(),
    );
    family(
        "codex_auth_agent_runner_ok",
        "1 when the last preflight (codex exec) passed, 0 when it failed; absent when never checked.",
        statuses
            .iter()
            .filter_map(|s| match s.runner_state {
                RunnerState::Ok => Some((acct(s), "1".to_string())),
                RunnerState::Fail => Some((acct(s), "0".to_string())),
                RunnerState::Unknown => None,
            })
            .collect(),
    );
    // The alert rules (packaging/prometheus) read the rest: a login only a human can fix,
    // the refresh margin, the fleet version installed here, and when this file was written.
    family(
        "codex_auth_agent_needs_login",
        "1 when the last refresh failed permanently: run codex-authctl login <account>.",
        statuses.iter().map(|s| (acct(s), u8::from(s.class == Some(FailureClass::Permanent)).to_string())).collect(),
    );
    family(
        "codex_auth_agent_refresh_before_expiry_seconds",
        "The account's refresh_before_expiry: it refreshes when the access token expires within this.",
        accounts.iter().map(|(s, f)| (acct(s), f.refresh_before_expiry.as_secs().to_string())).collect(),
    );
    family(
        "codex_auth_agent_fleet_version",
        "Fleet mode: the rotating key's version installed here (label role: refresher or follower).",
        accounts
            .iter()
            .filter_map(|(s, f)| {
                let labels = format!("{},role=\"{}\"", acct(s), f.fleet_role?.as_str());
                Some((labels, s.store_version?.to_string()))
            })
            .collect(),
    );
    family(
        "codex_auth_agent_codex_info",
        "1, labelled with the Codex CLI version the account's last preflight ran; absent when not known.",
        statuses
            .iter()
            .filter_map(|s| {
                let v = s.codex_version.as_deref()?;
                Some((format!("{},codex_version=\"{}\"", acct(s), escape_label(v)), "1".to_string()))
            })
            .collect(),
    );
    let _ = writeln!(
        out,
        "# HELP codex_auth_agent_textfile_timestamp_seconds When the agent wrote this file (Unix time).\n\
         # TYPE codex_auth_agent_textfile_timestamp_seconds gauge\n\
         codex_auth_agent_textfile_timestamp_seconds {now}"
    );
    out
}

/// Serializes writers within this process (the daemon records accounts in parallel), so
/// the last rename always carries the newest statuses.
#[derive(Default)]
pub struct Writer(std::sync::Mutex<()>);

/// Re-render every configured account into `[agent] metrics_textfile`, if set. Never fails
/// the caller: a problem is logged as a warning.
pub fn update(settings: &Settings, mem: &Memory) {
    let Some(path) = &settings.agent.metrics_textfile else { return };
    let _guard = mem.metrics.0.lock().unwrap_or_else(|e| e.into_inner());
    let state_dir = &settings.agent.state_dir;
    let accounts: Vec<(AccountStatus, AccountFacts)> = settings
        .accounts
        .iter()
        .map(|(name, a)| {
            let facts = AccountFacts {
                refresh_before_expiry: a.refresh.refresh_before_expiry,
                fleet_role: a.fleet.as_ref().map(|f| f.fleet_role),
            };
            (mem.statuses.get(state_dir, name), facts)
        })
        .collect();
    if let Err(e) = write_atomic(
        path,
        render(&accounts, crate::core::clock::Clock::now(&crate::core::clock::SystemClock).timestamp()).as_bytes(),
    ) {
        tracing::warn!("could not write the metrics textfile {}: {e}", path.display());
    }
}

/// Write `bytes` to `path` through a temp file in the same directory (not named *.prom, so
/// the collector never reads a partial file), mode 0644, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}-{}", std::process::id(), fastrand::u64(..)));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp)?;
        remove_old_temps(dir, &format!(".{name}.tmp-"), f.metadata()?.modified()?);
        // The daemon's umask is 0077: set the mode explicitly so node_exporter can read it.
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Remove temps (`prefix`…) a killed write left, once a minute older than `now` (the mtime
/// of our own new temp; a younger one may be another write in flight).
fn remove_old_temps(dir: &Path, prefix: &str, now: std::time::SystemTime) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let old = e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t + Duration::from_secs(60) < now);
        if old && e.file_name().to_string_lossy().starts_with(prefix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    #[test]
    fn renders_every_family_and_leaves_unknowns_out() {
        let t = |s| DateTime::from_timestamp(s, 0);
        let a = AccountStatus {
            account: "alice".into(),
            outcome: Some(Outcome::Failed),
            expires_at: t(1_800_000_000),
            last_refresh: t(1_799_000_000),
            consecutive_failures: 3,
            class: Some(FailureClass::Permanent),
            store_version: Some(7),
            runner_state: RunnerState::Fail,
            token_fp: Some("fp-not-a-metric".into()),
            ..Default::default()
        };
        let b = AccountStatus {
            account: "bob".into(),
            runner_state: RunnerState::Ok,
            class: Some(FailureClass::Transient),
            store_version: Some(9),
            codex_version: Some("0.130.0".into()),
            ..Default::default()
        };
        let day = std::time::Duration::from_secs(86_400);
        let fa = AccountFacts { refresh_before_expiry: day, fleet_role: Some(FleetRole::Follower) };
        // bob's store_version is left from a fleet config since removed: no fleet series.
        let text =
            render(&[(a, fa), (b, AccountFacts { refresh_before_expiry: day / 2, fleet_role: None })], 1_799_500_000);
        let expected = "\
# HELP codex_auth_agent_access_token_expiry_timestamp_seconds When the account's access token expires (Unix time).
# TYPE codex_auth_agent_access_token_expiry_timestamp_seconds gauge
codex_auth_agent_access_token_expiry_timestamp_seconds{account=\"alice\"} 1800000000
# HELP codex_auth_agent_last_refresh_timestamp_seconds The credential's last_refresh (Unix time).
# TYPE codex_auth_agent_last_refresh_timestamp_seconds gauge
codex_auth_agent_last_refresh_timestamp_seconds{account=\"alice\"} 1799000000
# HELP codex_auth_agent_last_outcome 1 for the outcome of the account's last refresh cycle, 0 for the others.
# TYPE codex_auth_agent_last_outcome gauge
codex_auth_agent_last_outcome{account=\"alice\",outcome=\"refreshed\"} 0
codex_auth_agent_last_outcome{account=\"alice\",outcome=\"fresh\"} 0
codex_auth_agent_last_outcome{account=\"alice\",outcome=\"inert\"} 0
codex_auth_agent_last_outcome{account=\"alice\",outcome=\"failed\"} 1
# HELP codex_auth_agent_consecutive_failures Refresh cycles failed in a row since the last success.
# TYPE codex_auth_agent_consecutive_failures gauge
codex_auth_agent_consecutive_failures{account=\"alice\"} 3
codex_auth_agent_consecutive_failures{account=\"bob\"} 0
# HELP codex_auth_agent_runner_ok 1 when the last preflight (codex exec) passed, 0 when it failed; absent when never \
checked.
# TYPE codex_auth_agent_runner_ok gauge
codex_auth_agent_runner_ok{account=\"alice\"} 0
codex_auth_agent_runner_ok{account=\"bob\"} 1
# HELP codex_auth_agent_needs_login 1 when the last refresh failed permanently: run codex-authctl login <account>.
# TYPE codex_auth_agent_needs_login gauge
codex_auth_agent_needs_login{account=\"alice\"} 1
codex_auth_agent_needs_login{account=\"bob\"} 0
# HELP codex_auth_agent_refresh_before_expiry_seconds The account's refresh_before_expiry: it refreshes when the \
access token expires within this.
# TYPE codex_auth_agent_refresh_before_expiry_seconds gauge
codex_auth_agent_refresh_before_expiry_seconds{account=\"alice\"} 86400
codex_auth_agent_refresh_before_expiry_seconds{account=\"bob\"} 43200
# HELP codex_auth_agent_fleet_version Fleet mode: the rotating key's version installed here (label role: refresher or \
follower).
# TYPE codex_auth_agent_fleet_version gauge
codex_auth_agent_fleet_version{account=\"alice\",role=\"follower\"} 7
# HELP codex_auth_agent_codex_info 1, labelled with the Codex CLI version the account's last preflight ran; absent \
when not known.
# TYPE codex_auth_agent_codex_info gauge
codex_auth_agent_codex_info{account=\"bob\",codex_version=\"0.130.0\"} 1
# HELP codex_auth_agent_textfile_timestamp_seconds When the agent wrote this file (Unix time).
# TYPE codex_auth_agent_textfile_timestamp_seconds gauge
codex_auth_agent_textfile_timestamp_seconds 1799500000
";
        assert_eq!(text, expected);
        assert!(!text.contains("fp-not-a-metric"));
        assert_eq!(render(&[], 0).lines().count(), 21, "HELP and TYPE even with no accounts");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        let s = AccountStatus { account: "x\"y".into(), ..Default::default() };
        assert!(
            render(&[(s, AccountFacts::default())], 0)
                .contains("codex_auth_agent_consecutive_failures{account=\"x\\\"y\"} 0\n")
        );
    }

    #[test]
    fn write_is_atomic_and_world_readable() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("codex_auth_agent.prom");
        std::fs::write(&p, "old").unwrap();
        let old = std::fs::metadata(&p).unwrap().ino();
        write_atomic(&p, b"new\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new\n");
        assert_ne!(std::fs::metadata(&p).unwrap().ino(), old, "replaced by rename");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o644);
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1, "no temp file left");
        assert!(write_atomic(&t.path().join("missing/x.prom"), b"x").is_err());
        // A killed write's temp goes at the next write once a minute old; others' files stay.
        let stale = t.path().join(".codex_auth_agent.prom.tmp-1-2");
        let other = t.path().join(".node.prom.tmp-1-2");
        for f in [&stale, &other] {
            std::fs::File::create(f)
                .unwrap()
                .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000))
                .unwrap();
        }
        write_atomic(&p, b"newer\n").unwrap();
        assert!(!stale.exists() && other.exists());
    }
}
