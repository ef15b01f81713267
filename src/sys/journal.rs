//! A journald sink speaking the native protocol (datagrams of `KEY=value` fields to
//! /run/systemd/journal/socket). Written here rather than using tracing-journald because
//! every field value must pass the redaction guard before it leaves the process, and
//! tracing-journald writes values as they come. Field names are the tracing field names
//! upper-cased (`account` → `ACCOUNT`), so `journalctl ACCOUNT=alice OUTCOME=failed` works.

use crate::core::redact::redact;
use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
/// Longest value we send; real entries are a few hundred bytes.
const MAX_VALUE: usize = 16 * 1024;

pub struct JournalLayer {
    socket: UnixDatagram,
    identifier: String,
}

impl JournalLayer {
    /// Connect to the journal socket at `path`.
    pub fn connect(path: &Path, identifier: &str) -> std::io::Result<JournalLayer> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        // A stuck journald must not stall refreshes for long.
        socket.set_write_timeout(Some(Duration::from_secs(1)))?;
        Ok(JournalLayer { socket, identifier: identifier.to_string() })
    }
}

/// syslog priority of a tracing level: err, warning, info, debug.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// A journal field name from a tracing field name: upper case, `[A-Z0-9_]`, no leading `_`
/// (those are trusted fields journald sets itself).
pub fn field_name(name: &str) -> String {
    let mut out: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    while out.starts_with('_') {
        out.remove(0);
    }
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 'F');
    }
    out
}

/// Append one field in the native format: `KEY=value\n`, or for values with a newline
/// `KEY\n` + little-endian u64 length + value + `\n`.
pub fn put(buf: &mut Vec<u8>, key: &str, value: &str) {
    let mut end = value.len().min(MAX_VALUE);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let value = &value[..end];
    buf.extend_from_slice(key.as_bytes());
    if value.contains('\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value.as_bytes());
    buf.push(b'\n');
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.fields.push((field_name(field.name()), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        self.record_str(field, &s);
    }
}

/// The datagram for one event (pure, for tests).
pub fn encode(level: &Level, identifier: &str, event_fields: impl FnOnce(&mut dyn Visit)) -> Vec<u8> {
    let mut f = Fields::default();
    event_fields(&mut f);
    let mut buf = Vec::with_capacity(256);
    put(&mut buf, "PRIORITY", &priority(level).to_string());
    put(&mut buf, "SYSLOG_IDENTIFIER", identifier);
    put(&mut buf, "MESSAGE", &redact(&f.message));
    for (k, v) in &f.fields {
        put(&mut buf, k, &redact(v));
    }
    buf
}

impl<S: Subscriber> Layer<S> for JournalLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let buf = encode(event.metadata().level(), &self.identifier, |v| event.record(v));
        // Logging must never fail the work; a lost line is reported nowhere else.
        let _ = self.socket.send(&buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    /// Parse native-protocol datagrams back into fields.
    fn parse(mut d: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while !d.is_empty() {
            let nl = d.iter().position(|&b| b == b'\n').unwrap();
            let line = &d[..nl];
            if let Some(eq) = line.iter().position(|&b| b == b'=') {
                out.push((
                    String::from_utf8_lossy(&line[..eq]).into(),
                    String::from_utf8_lossy(&line[eq + 1..]).into(),
                ));
                d = &d[nl + 1..];
            } else {
                let key = String::from_utf8_lossy(line).into_owned();
                let len = u64::from_le_bytes(d[nl + 1..nl + 9].try_into().unwrap()) as usize;
                out.push((key, String::from_utf8_lossy(&d[nl + 9..nl + 9 + len]).into()));
                d = &d[nl + 9 + len + 1..];
            }
        }
        out
    }

    #[test]
    fn events_become_redacted_journal_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let layer = JournalLayer::connect(&path, "codex-auth-agent").unwrap();
        let subscriber = tracing_subscriber::registry().with(layer);
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDB9.c2lnbmF0dXJl";
        let rt = "CANARY-rt_12_3_0a1b2c3d4e5f6a7b";
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(
                account = "alice",
                outcome = "failed",
                failure_class = "permanent",
                http_status = 401u16,
                reason = %format!("leaked {rt}"),
                "token {jwt}\nsecond line"
            );
            tracing::info!(account = "bob", "fine");
        });
        let mut buf = vec![0u8; 65536];
        let n = server.recv(&mut buf).unwrap();
        let fields = parse(&buf[..n]);
        let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone()).unwrap_or_default();
        assert_eq!(get("PRIORITY"), "3");
        assert_eq!(get("SYSLOG_IDENTIFIER"), "codex-auth-agent");
        assert_eq!(get("ACCOUNT"), "alice");
        assert_eq!(get("OUTCOME"), "failed");
        assert_eq!(get("FAILURE_CLASS"), "permanent");
        assert_eq!(get("HTTP_STATUS"), "401");
        assert!(get("MESSAGE").contains("second line"), "multi-line values survive");
        let all = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(!all.contains(jwt) && !all.contains(rt), "redacted: {all}");
        assert!(get("REASON").contains("[REDACTED]"));
        let n = server.recv(&mut buf).unwrap();
        let fields = parse(&buf[..n]);
        assert!(fields.contains(&("PRIORITY".into(), "6".into())));
    }

    #[test]
    fn field_names_are_journal_safe() {
        assert_eq!(field_name("account"), "ACCOUNT");
        assert_eq!(field_name("token_fp"), "TOKEN_FP");
        assert_eq!(field_name("_secret"), "SECRET");
        assert_eq!(field_name("9x"), "F9X");
        assert_eq!(field_name("a.b"), "A_B");
    }
}
