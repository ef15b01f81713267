//! Request routing: one function per route, chosen by a match on (method, path), and the
//! execution of whatever a route decided (including transport faults). Codex's backend
//! (`/backend-api/...`, bodies in `backend.rs`) shares the fault machinery of the token
//! endpoint but has its own fault queue, and answers expired or unknown access tokens 401.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::json;

use crate::backend::{self, ACCOUNTS_CHECK_PATH, RESPONSES_PATH, USAGE_PATH};
use crate::fault::{Fault, object_error_body};
use crate::http::{self, Request, Response};
use crate::server::{Shared, lock};

/// Upper bound on a `Hang` so a forgotten fault cannot pin a thread forever.
const HANG_CAP: Duration = Duration::from_secs(120);

/// What to do with the connection once a route has decided.
pub(crate) enum Reply {
    Respond(Response),
    /// Close with RST, no answer.
    Reset,
    Garbage,
    Oversized(usize),
    Slowloris(Response, Duration),
    Hang,
    /// Plain close without an answer (server stopping mid-delay).
    Close,
}

impl Reply {
    pub(crate) fn logged_status(&self) -> Option<u16> {
        match self {
            Reply::Respond(r) | Reply::Slowloris(r, _) => Some(r.status),
            Reply::Oversized(_) => Some(200),
            Reply::Reset | Reply::Garbage | Reply::Hang | Reply::Close => None,
        }
    }
}

/// A route's decision plus what the request log should say about it.
pub(crate) struct Routed {
    pub reply: Reply,
    pub account: Option<String>,
    pub fault: Option<&'static str>,
    pub log: bool,
}

impl Routed {
    fn plain(reply: Reply) -> Self {
        Routed { reply, account: None, fault: None, log: true }
    }
}

pub(crate) fn error_json(status: u16, error: &str, description: &str) -> Response {
    Response::json(status, &json!({"error": error, "error_description": description}))
}

/// One arm per route; new Codex backend endpoints slot in here.
pub(crate) fn route(shared: &Shared, req: &Request, peer: Option<SocketAddr>) -> Routed {
    let path = req.path();
    if path == "/__admin" || path.starts_with("/__admin/") {
        let reply = if !shared.admin {
            error_json(404, "not_found", "No such route.")
        } else if !peer.is_some_and(|p| p.ip().is_loopback()) {
            error_json(403, "forbidden", "The admin API is only served to loopback peers.")
        } else {
            crate::admin::handle(shared, req)
        };
        return Routed { log: false, ..Routed::plain(Reply::Respond(reply)) };
    }
    match (req.method.as_str(), path) {
        ("POST", "/oauth/token") => oauth_token(shared, req),
        (_, "/oauth/token") => Routed::plain(Reply::Respond(error_json(405, "invalid_request", "Use POST."))),
        ("POST", "/api/accounts/deviceauth/usercode") => {
            Routed::plain(Reply::Respond(lock(&shared.state).devices.usercode(&req.body)))
        }
        ("POST", "/api/accounts/deviceauth/token") => {
            Routed::plain(Reply::Respond(lock(&shared.state).devices.poll(&req.body)))
        }
        ("POST", RESPONSES_PATH) => backend_call(shared, req, responses),
        ("GET", ACCOUNTS_CHECK_PATH) => backend_call(shared, req, accounts_check),
        ("GET", USAGE_PATH) => backend_call(shared, req, usage),
        (_, p) if p.starts_with(backend::BACKEND_PREFIX) => {
            backend_call(shared, req, |_, _| error_json(404, "not_found", "No such backend route."))
        }
        _ => Routed::plain(Reply::Respond(error_json(404, "not_found", "No such route."))),
    }
}

/// Carry out `fault` (if any) around the route's real `answer`.
fn with_fault(shared: &Shared, fault: Option<Fault>, answer: impl FnOnce() -> Response) -> Reply {
    match fault {
        None => Reply::Respond(answer()),
        Some(Fault::Status { status, body, content_type }) => {
            Reply::Respond(Response::raw(status, &content_type, body))
        }
        Some(Fault::Delay(d)) => {
            if shared.stop.sleep(d) {
                Reply::Respond(answer())
            } else {
                Reply::Close
            }
        }
        Some(Fault::Reset) => Reply::Reset,
        Some(Fault::Garbage) => Reply::Garbage,
        Some(Fault::Oversized(n)) => Reply::Oversized(n),
        Some(Fault::Slowloris { byte_interval }) => Reply::Slowloris(
            Response::raw(503, "application/json", object_error_body("server_overloaded")),
            byte_interval,
        ),
        // The server acts (a rotation, a model answer) but the client never hears of it.
        Some(Fault::RotateThenReset) => {
            answer();
            Reply::Reset
        }
        Some(Fault::Hang) => Reply::Hang,
    }
}

/// A `/backend-api/...` request: count it, apply its fault, then demand a live access
/// token before `answer` (which gets the token's account id and the reply text).
fn backend_call(shared: &Shared, req: &Request, answer: fn(&str, &str) -> Response) -> Routed {
    let plan = lock(&shared.state).begin_backend_request(req.path(), backend::bearer(req.header("authorization")));
    let fault = plan.fault.as_ref().map(Fault::kind);
    let reply = with_fault(shared, plan.fault.clone(), || {
        if !plan.authorized {
            return Response::json(401, &backend::unauthorized_body());
        }
        answer(plan.account.as_deref().unwrap_or_default(), &plan.reply_text)
    });
    Routed { reply, account: plan.account.clone(), fault, log: true }
}

/// `POST /backend-api/codex/responses`: the SSE stream saying the configured reply.
fn responses(_account: &str, reply_text: &str) -> Response {
    let id = format!("resp_{}", crate::jwt::random_hex16());
    Response::raw(200, "text/event-stream", backend::responses_sse(reply_text, &id))
}

/// `GET /backend-api/wham/accounts/check`.
fn accounts_check(account: &str, _reply_text: &str) -> Response {
    Response::json(200, &backend::accounts_check_body(account))
}

/// `GET /backend-api/wham/usage`.
fn usage(_account: &str, _reply_text: &str) -> Response {
    let now = crate::state::wall_now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Response::json(200, &backend::usage_body(now))
}

/// `POST /oauth/token`: faults first, then the real rotation logic.
fn oauth_token(shared: &Shared, req: &Request) -> Routed {
    let plan = lock(&shared.state).begin_token_request(&req.headers, &req.body);
    let fault_kind = plan.fault.as_ref().map(Fault::kind);
    let done = |reply| Routed { reply, account: plan.account.clone(), fault: fault_kind, log: true };
    if !plan.latency.is_zero() && !shared.stop.sleep(plan.latency) {
        return done(Reply::Close);
    }
    let refresh = || lock(&shared.state).refresh(&req.body);
    done(with_fault(shared, plan.fault.clone(), refresh))
}

pub(crate) fn send(shared: &Shared, mut stream: TcpStream, reply: Reply) {
    match reply {
        Reply::Respond(r) => {
            let _ = stream.write_all(&r.to_bytes());
            http::close_gracefully(&mut stream);
        }
        Reply::Reset => http::close_with_reset(stream),
        Reply::Garbage => {
            let _ = stream.write_all(b"\x00\x16\x03\x01 SSH-2.0-nope \xff\xfe\xfd\r\n\r\n\x00");
            http::close_gracefully(&mut stream);
        }
        Reply::Oversized(n) => {
            let _ = write_oversized(shared, &mut stream, n);
            http::close_gracefully(&mut stream);
        }
        Reply::Slowloris(r, interval) => {
            for b in r.to_bytes() {
                if stream.write_all(&[b]).is_err() || !shared.stop.sleep(interval) {
                    break;
                }
            }
            http::close_gracefully(&mut stream);
        }
        Reply::Hang => {
            shared.stop.sleep(HANG_CAP);
        }
        Reply::Close => {}
    }
}

/// Streams `n` body bytes that open like a token response, so size limits (not the JSON
/// parser) are what a client must trip on.
fn write_oversized(shared: &Shared, stream: &mut TcpStream, n: usize) -> io::Result<()> {
    stream.write_all(Response::head(200, "application/json", n).as_bytes())?;
    let prefix = br#"{"access_token":""#;
    let start = &prefix[..prefix.len().min(n)];
    stream.write_all(start)?;
    let mut left = n - start.len();
    let chunk = vec![b'A'; 64 * 1024];
    while left > 0 {
        if shared.stop.is_stopped() {
            return Ok(());
        }
        let k = left.min(chunk.len());
        stream.write_all(&chunk[..k])?;
        left -= k;
    }
    Ok(())
}
