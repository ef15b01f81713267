//! `refresh_method = "app-server"`: let the real Codex refresh a throwaway copy of
//! auth.json through `codex app-server` (JSON-RPC, one object per line on stdio):
//! initialize → initialized → `account/read {"refreshToken": true}` → optionally
//! `account/rateLimits/read` as a verify. The RPC result alone cannot tell success
//! (codex-contract: refresh failures are only logged), so the outcome is decided by
//! re-reading Codex's copy: a new refresh token or a newer last_refresh for the same
//! account is success, and the new tokens go back to the worker, which commits them like
//! an OAuth answer. Failures are classified from the answer and Codex's log lines; the
//! real auth.json is never touched here.

use crate::core::authfile::{AuthFile, NewTokens};
use crate::core::classify::{self, RELOGIN};
use crate::core::outcome::{Failure, FailureClass};
use crate::core::task::{EXIT_GRACE, conversation_limit};
use crate::worker::codexrun::{self, AuthChange, CodexSetup, TempHome};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{ChildStdin, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// `clientInfo.name` we introduce ourselves with.
pub const CLIENT_NAME: &str = "codex-auth-agent";
/// Longest JSON-RPC line we keep (larger ones are skipped).
const MAX_LINE: usize = 1024 * 1024;

/// What `account/read` answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountRead {
    /// A result; `signed_in` is false when Codex reports no account, which it does after
    /// a refresh failure it considers permanent (it drops the login).
    Answered { signed_in: bool },
    /// A JSON-RPC error (its code only: messages can quote backend bodies).
    Error(i64),
    /// -32603 "workspace routing discovery failed" (0.169+): `/wham/accounts/check` was
    /// unreachable — about the backend, not the credential.
    RoutingUnavailable,
    /// No answer: why, in our own words.
    NoAnswer(String),
}

/// Can Codex refresh this credential at all? (pure) Without `tokens.account_id` it loads
/// the file but never refreshes (codex-contract; verified with 0.169), so asking it would
/// only ever report "did not refresh".
pub fn precheck(auth: &AuthFile) -> Result<(), Failure> {
    match auth.stored_account_id() {
        Some(_) => Ok(()),
        None => Err(Failure::permanent(format!(
            "auth.json has no tokens.account_id, without which Codex's app-server never refreshes; set \
                refresh_method = \"oauth\" for this account or {RELOGIN}"
        ))),
    }
}

/// Decide the refresh from Codex's copy of auth.json, its answer and its log (pure).
pub fn judge(change: AuthChange, read: &AccountRead, log: &str) -> Result<NewTokens, Failure> {
    let logged = classify::from_codex_log(log);
    match change {
        AuthChange::Refreshed(after) => return Ok(after.tokens()),
        AuthChange::OtherAccount => {
            return Err(Failure::transient(
                "Codex app-server wrote a credential of another account; not adopted; will retry",
            ));
        }
        AuthChange::Unchanged | AuthChange::Unreadable => {}
    }
    Err(match read {
        AccountRead::Answered { signed_in: false } => match logged {
            Some(f) if f.class == FailureClass::Permanent => f,
            other => {
                let status = other.and_then(|f| f.http_status);
                let mut f = Failure::permanent(format!(
                    "Codex app-server could not refresh and signed the login out{}; {RELOGIN}",
                    status.map(|s| format!(" (token endpoint answered HTTP {s})")).unwrap_or_default()
                ));
                f.http_status = status;
                f
            }
        },
        AccountRead::Answered { signed_in: true } => logged.unwrap_or_else(|| {
            Failure::transient("Codex app-server did not refresh the token (token endpoint not reachable?); will retry")
        }),
        AccountRead::RoutingUnavailable => logged.unwrap_or_else(|| {
            Failure::transient(
                "Codex app-server could not reach ChatGPT's workspace routing (/wham/accounts/check, JSON-RPC -32603) \
                 and did not refresh: not a credential failure; will retry",
            )
        }),
        AccountRead::Error(code) => logged.unwrap_or_else(|| {
            Failure::transient(format!("Codex app-server failed account/read (JSON-RPC error {code}); will retry"))
        }),
        AccountRead::NoAnswer(why) => {
            logged.unwrap_or_else(|| Failure::transient(format!("Codex app-server {why}; will retry")))
        }
    })
}

/// Refresh `current` (bytes and parsed) through `codex app-server` in a throwaway home of
/// `uid`; the new tokens on success. Runs as the account's user.
pub fn refresh(
    setup: &CodexSetup,
    uid: u32,
    current: (&[u8], &AuthFile),
    request_timeout: Duration,
    now: DateTime<Utc>,
) -> Result<NewTokens, Failure> {
    precheck(current.1)?;
    codexrun::remove_stale(&setup.temp_dir, uid, now);
    let bin = codexrun::resolve_bin(&setup.bin, std::env::var_os("PATH").as_deref())?;
    let home = TempHome::create(&setup.temp_dir, uid)?;
    home.install(current.0, &codexrun::offline_config(&setup.base_url))?;
    let mut cmd = home.command(&bin, setup);
    cmd.arg("app-server").stdin(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure::transient(format!("cannot start `{} app-server`: {e}; will retry", setup.bin)))?;
    let log = codexrun::capture(child.stderr.take().expect("stderr was piped"));
    let lines = read_lines(child.stdout.take().expect("stdout was piped"));
    let stdin = child.stdin.take().expect("stdin was piped");
    let read = converse(stdin, &lines, Instant::now() + conversation_limit(request_timeout));
    // converse closed stdin: Codex exits on EOF; its group is killed if it lingers.
    crate::sys::process::wait_or_kill_group(&mut child, EXIT_GRACE);
    let log = codexrun::strip_ansi(&String::from_utf8_lossy(&log.join().unwrap_or_default()));
    let change = codexrun::compare(current.1, home.read_auth().as_deref());
    judge(change, &read, &log)
}

/// Parse stdout into JSON messages on a thread; the channel closes when Codex does.
fn read_lines(stdout: impl Read + Send + 'static) -> Receiver<Value> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.by_ref().take(MAX_LINE as u64).read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if !line.ends_with(b"\n") && line.len() >= MAX_LINE => {
                    // Overlong: drop the rest of it.
                    let mut rest = Vec::new();
                    if r.read_until(b'\n', &mut rest).is_err() {
                        break;
                    }
                }
                Ok(_) => {
                    if let Ok(v) = serde_json::from_slice::<Value>(&line)
                        && tx.send(v).is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// Our side of the JSON-RPC conversation, within `deadline`.
struct Conversation<'a> {
    stdin: Option<ChildStdin>,
    lines: &'a Receiver<Value>,
    deadline: Instant,
    next_id: u64,
}

/// How one request ended.
enum Reply {
    Result(Value),
    Error(i64),
    RoutingUnavailable,
    NoAnswer(String),
}

impl Conversation<'_> {
    fn send(&mut self, msg: &Value) -> bool {
        let Some(stdin) = self.stdin.as_mut() else { return false };
        let mut line = msg.to_string().into_bytes();
        line.push(b'\n');
        stdin.write_all(&line).and_then(|()| stdin.flush()).is_ok()
    }

    fn request(&mut self, method: &str, params: Option<Value>) -> Reply {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method});
        if let Some(p) = params {
            msg["params"] = p;
        }
        if !self.send(&msg) {
            return Reply::NoAnswer(format!("exited before {method}"));
        }
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                // Notifications and requests from the server have a method; ignore them.
                Ok(m) if m.get("id").and_then(Value::as_u64) == Some(id) && m.get("method").is_none() => {
                    if let Some(e) = m.get("error") {
                        let code = e.get("code").and_then(Value::as_i64).unwrap_or(0);
                        // Matched, never repeated: the message is Codex's.
                        let msg = e.get("message").and_then(Value::as_str).unwrap_or_default();
                        if code == -32603 && msg.starts_with("workspace routing discovery") {
                            return Reply::RoutingUnavailable;
                        }
                        return Reply::Error(code);
                    }
                    return Reply::Result(m.get("result").cloned().unwrap_or(Value::Null));
                }
                // A request from the server (0.169's `currentTime/read`, or one a later Codex
                // adds) gets "method not found" rather than silence it might wait on.
                Ok(m) if m.get("method").is_some() && m.get("id").is_some_and(|i| !i.is_null()) => {
                    let unsupported = json!({"code": -32601, "message": "not supported by codex-auth-agent"});
                    self.send(&json!({"id": m["id"], "error": unsupported}));
                }
                // Notifications, unknown fields and values: ignored.
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => return Reply::NoAnswer(format!("did not answer {method} in time")),
                Err(RecvTimeoutError::Disconnected) => {
                    return Reply::NoAnswer(format!("exited before answering {method}"));
                }
            }
        }
    }
}

/// initialize → initialized → account/read {"refreshToken": true} → rateLimits verify.
fn converse(stdin: ChildStdin, lines: &Receiver<Value>, deadline: Instant) -> AccountRead {
    let mut c = Conversation { stdin: Some(stdin), lines, deadline, next_id: 0 };
    let info = json!({"clientInfo": {"name": CLIENT_NAME, "version": env!("CARGO_PKG_VERSION")}});
    let read = match c.request("initialize", Some(info)) {
        Reply::Result(_) => {
            c.send(&json!({"method": "initialized"}));
            match c.request("account/read", Some(json!({"refreshToken": true}))) {
                Reply::Result(r) => AccountRead::Answered { signed_in: r.get("account").is_some_and(|a| !a.is_null()) },
                Reply::Error(code) => AccountRead::Error(code),
                Reply::RoutingUnavailable => AccountRead::RoutingUnavailable,
                Reply::NoAnswer(why) => AccountRead::NoAnswer(why),
            }
        }
        Reply::Error(code) => AccountRead::NoAnswer(format!("refused initialize (JSON-RPC error {code})")),
        Reply::RoutingUnavailable => AccountRead::NoAnswer("refused initialize (JSON-RPC error -32603)".into()),
        Reply::NoAnswer(why) => AccountRead::NoAnswer(why),
    };
    if read == (AccountRead::Answered { signed_in: true }) {
        // Optional verify with the (possibly new) access token; the decision does not
        // depend on it, so only log it.
        match c.request("account/rateLimits/read", None) {
            Reply::Result(_) => tracing::debug!("app-server verify (account/rateLimits/read) succeeded"),
            Reply::Error(code) => {
                tracing::info!("app-server verify (account/rateLimits/read) failed: JSON-RPC error {code}")
            }
            Reply::RoutingUnavailable => {
                tracing::info!("app-server verify (account/rateLimits/read) failed: workspace routing unavailable")
            }
            Reply::NoAnswer(why) => tracing::info!("app-server verify (account/rateLimits/read): Codex {why}"),
        }
    }
    // EOF on stdin ends the app-server.
    c.stdin = None;
    read
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A stand-in app-server that sends what newer Codex releases may: unknown fields and
    /// notifications, an unknown enum value, and a request of its own that it waits on.
    const CHATTY_SERVER: &str = r#"
read l
echo '{"method":"some/new/notification","params":{"x":1},"emittedAtMs":1}'
echo '{"id":1,"result":{"userAgent":"x","newField":true}}'
read l; read l
echo '{"id":"srv-1","method":"currentTime/read","params":{}}'
read answer
case "$answer" in *srv-1*-32601*|*-32601*srv-1*) ;; *) echo '{"id":2,"result":{"account":null}}'; exit 0;; esac
echo '{"method":"account/updated","params":{"authMode":"chatgpt","reason":"somethingNew"}}'
echo '{"id":2,"result":{"account":{"type":"chatgpt","planType":"not-a-plan-yet"},"unknown":1}}'
read l
echo '{"id":3,"error":{"code":-32603,"message":"workspace routing discovery failed"}}'
"#;

    #[test]
    fn the_conversation_ignores_what_it_does_not_know_and_answers_server_requests() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", CHATTY_SERVER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = read_lines(child.stdout.take().unwrap());
        let read = converse(child.stdin.take().unwrap(), &lines, Instant::now() + Duration::from_secs(10));
        assert_eq!(read, AccountRead::Answered { signed_in: true });
        assert!(child.wait().unwrap().success());
    }

    fn auth(rt: &str) -> AuthFile {
        let id = "eyJhbGciOiJub25lIn0.e30.sig";
        let tokens = json!({"id_token": id, "access_token": "a", "refresh_token": rt, "account_id": "acct"});
        let text = json!({"auth_mode": "chatgpt", "tokens": tokens, "last_refresh": "2026-01-01T00:00:00Z"});
        AuthFile::parse(text.to_string().as_bytes(), Path::new("a")).unwrap()
    }

    #[test]
    fn codex_cannot_refresh_without_a_stored_account_id() {
        assert!(precheck(&auth("rt")).is_ok());
        let text = r#"{"tokens":{"id_token":"eyJhbGciOiJub25lIn0.e30.sig","refresh_token":"rt"}}"#;
        let f = precheck(&AuthFile::parse(text.as_bytes(), Path::new("a")).unwrap()).unwrap_err();
        assert!(f.class == FailureClass::Permanent && f.reason.contains("tokens.account_id"), "{}", f.reason);
    }

    const STATUS_401: &str = "ERROR codex_login::auth::manager: Failed to refresh token status=401 Unauthorized";
    const STATUS_400: &str = "ERROR codex_login::auth::manager: Failed to refresh token status=400 Bad Request";
    const STATUS_500: &str =
        "ERROR codex_login::auth::manager: Failed to refresh token status=500 Internal Server Error";

    #[test]
    fn a_new_copy_is_success_whatever_the_answer() {
        for read in [AccountRead::Answered { signed_in: true }, AccountRead::Error(-32603)] {
            let t = judge(AuthChange::Refreshed(Box::new(auth("rt2"))), &read, "").unwrap();
            assert_eq!(t.refresh_token.as_deref(), Some("rt2"));
        }
    }

    #[test]
    fn failures_as_codex_0_169_shows_them() {
        use FailureClass::*;
        let signed_out = AccountRead::Answered { signed_in: false };
        let signed_in = AccountRead::Answered { signed_in: true };
        let rows = [
            // Any 401 (expired, reused, invalidated, unknown): Codex drops the login.
            (&signed_out, STATUS_401, Permanent, Some(401)),
            // 400 invalid_grant and 403 with a refresh_token_* code: same, status only.
            (&signed_out, STATUS_400, Permanent, Some(400)),
            // Other 400, 5xx: the login stays.
            (&signed_in, STATUS_400, Transient, Some(400)),
            (&signed_in, STATUS_500, Transient, Some(500)),
            // Network errors are not even logged at the default level.
            (&signed_in, "", Transient, None),
        ];
        for (read, log, class, status) in rows {
            let f = judge(AuthChange::Unchanged, read, log).unwrap_err();
            assert_eq!((f.class, f.http_status), (class, status), "{read:?} {log}");
            if class == Permanent {
                assert!(f.reason.contains("codex login --device-auth"), "{}", f.reason);
            }
        }
        let f = judge(AuthChange::Unchanged, &AccountRead::NoAnswer("did not answer account/read in time".into()), "")
            .unwrap_err();
        assert!(f.class == Transient && f.reason.contains("in time"), "{}", f.reason);
        let f = judge(AuthChange::OtherAccount, &signed_in, "").unwrap_err();
        assert_eq!(f.class, Transient);
        assert_eq!(judge(AuthChange::Unreadable, &AccountRead::Error(-32603), "").unwrap_err().class, Transient);
        let routing = judge(AuthChange::Unchanged, &AccountRead::RoutingUnavailable, "").unwrap_err();
        assert_eq!(routing.class, Transient);
        assert!(routing.reason.contains("not a credential failure"), "{}", routing.reason);
    }
}
