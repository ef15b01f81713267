//! A deliberately tiny blocking HTTP/1.1 client for tests and scripts that talk to the mock
//! (one request per connection, read to EOF). It reports transport faults as `io::Error`
//! instead of hiding them, which is what fault tests need to observe.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};

use crate::state::CLIENT_ID;

/// Default per-operation timeout of the helpers below.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A complete answer.
#[derive(Clone, Debug)]
pub struct ClientResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ClientResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    /// Body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request and reads the answer to EOF. `timeout` bounds connect and each read
/// or write.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
    timeout: Duration,
) -> io::Result<ClientResponse> {
    request_with_headers(addr, method, path, &[], body, timeout)
}

/// [`request`] with extra headers (e.g. `authorization` for the backend routes).
pub fn request_with_headers(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
    timeout: Duration,
) -> io::Result<ClientResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some((content_type, bytes)) = body {
        out.push_str(&format!("Content-Type: {content_type}\r\nContent-Length: {}\r\n", bytes.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if let Some((_, b)) = body {
        bytes.extend_from_slice(b);
    }
    stream.write_all(&bytes)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

/// Parses a complete `Connection: close` answer.
pub fn parse_response(raw: &[u8]) -> io::Result<ClientResponse> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| invalid("no HTTP head"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| invalid("head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") {
        return Err(invalid("not an HTTP status line"));
    }
    let status = code.parse().map_err(|_| invalid("bad status code"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let resp = ClientResponse { status, headers, body: Vec::new() };
    if let Some(len) = resp.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if body.len() < len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body shorter than Content-Length"));
        }
        body.truncate(len);
    }
    Ok(ClientResponse { body, ..resp })
}

/// `GET path`.
pub fn get(addr: SocketAddr, path: &str) -> io::Result<ClientResponse> {
    request(addr, "GET", path, None, DEFAULT_TIMEOUT)
}

/// `POST path` with a JSON body.
pub fn post_json(addr: SocketAddr, path: &str, body: &Value) -> io::Result<ClientResponse> {
    let bytes = body.to_string().into_bytes();
    request(addr, "POST", path, Some(("application/json", &bytes)), DEFAULT_TIMEOUT)
}

/// The exact body Codex sends to refresh.
pub fn refresh_body(refresh_token: &str) -> Value {
    json!({"client_id": CLIENT_ID, "grant_type": "refresh_token", "refresh_token": refresh_token})
}

/// `POST /oauth/token` as Codex would.
pub fn refresh(addr: SocketAddr, refresh_token: &str) -> io::Result<ClientResponse> {
    post_json(addr, "/oauth/token", &refresh_body(refresh_token))
}
