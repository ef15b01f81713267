//! Just enough HTTP/1.1 to serve one request per connection, written by hand so faults can
//! misbehave below the HTTP layer (resets, garbage, byte-at-a-time writes).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// Request bodies above this are refused with 413.
pub const MAX_BODY: usize = 1024 * 1024;
/// Request heads above this are refused with 431.
const MAX_HEAD: usize = 64 * 1024;

/// A parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Request target as sent, including any query string.
    pub target: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// Target without the query string, for routing.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

/// Why a request could not be read; the first two still deserve an answer.
#[derive(Debug)]
pub enum ReadError {
    /// Malformed request line, headers or chunking → 400.
    Malformed(&'static str),
    /// Head or body over the caps → 413 / 431.
    TooLarge(u16),
    /// Peer vanished or timed out; nothing to answer (so the cause is not kept).
    Io,
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> Self {
        ReadError::Io
    }
}

/// Reads one request (head plus `Content-Length` or chunked body).
pub fn read_request(stream: &mut TcpStream) -> Result<Request, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::TooLarge(431));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(ReadError::Io);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| ReadError::Malformed("head"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) if !m.is_empty() && t.starts_with('/') => (m, t, v),
        _ => return Err(ReadError::Malformed("request line")),
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::Malformed("version"));
    }
    let mut headers = Vec::new();
    for line in lines {
        let (k, v) = line.split_once(':').ok_or(ReadError::Malformed("header"))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut req = Request { method: method.to_string(), target: target.to_string(), headers, body: vec![] };
    let already = buf.split_off(head_end + 4);

    let chunked = req.header("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    let content_length = match req.header("content-length") {
        Some(v) => Some(v.parse::<usize>().map_err(|_| ReadError::Malformed("content-length"))?),
        None => None,
    };
    if content_length.is_some_and(|n| n > MAX_BODY) {
        return Err(ReadError::TooLarge(413));
    }
    // curl waits a second for this before sending large bodies; answer so it doesn't.
    if req.header("expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue")) {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    req.body = if chunked {
        read_chunked(stream, already)?
    } else {
        let len = content_length.unwrap_or(0);
        let mut body = already;
        body.truncate(len);
        while body.len() < len {
            let mut chunk = vec![0u8; (len - body.len()).min(64 * 1024)];
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(ReadError::Io);
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body
    };
    Ok(req)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a chunked body; `buf` holds bytes already read past the head.
fn read_chunked(stream: &mut TcpStream, mut buf: Vec<u8>) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    let mut pos = 0;
    let mut fill = |buf: &mut Vec<u8>| -> Result<(), ReadError> {
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(ReadError::Io);
        }
        buf.extend_from_slice(&chunk[..n]);
        Ok(())
    };
    loop {
        let line_end = loop {
            if let Some(i) = find(&buf[pos..], b"\r\n") {
                break pos + i;
            }
            if buf.len() - pos > 1024 {
                return Err(ReadError::Malformed("chunk size"));
            }
            fill(&mut buf)?;
        };
        let line = std::str::from_utf8(&buf[pos..line_end]).map_err(|_| ReadError::Malformed("chunk"))?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| ReadError::Malformed("chunk"))?;
        pos = line_end + 2;
        if size == 0 {
            // Trailers are ignored; read up to the blank line that ends them.
            loop {
                if let Some(i) = find(&buf[pos..], b"\r\n") {
                    if i == 0 {
                        return Ok(body);
                    }
                    pos += i + 2;
                    continue;
                }
                if buf.len() - pos > MAX_HEAD {
                    return Err(ReadError::TooLarge(431));
                }
                fill(&mut buf)?;
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(ReadError::TooLarge(413));
        }
        while buf.len() < pos + size + 2 {
            fill(&mut buf)?;
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err(ReadError::Malformed("chunk terminator"));
        }
        pos += size + 2;
    }
}

/// A complete answer, always sent with `Content-Length` and `Connection: close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Omitted from the head when empty.
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        Response { status, content_type: "application/json".into(), body: body.to_string().into_bytes() }
    }

    pub fn raw(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Response { status, content_type: content_type.into(), body: body.into() }
    }

    /// The head alone (used directly when the body is streamed).
    pub fn head(status: u16, content_type: &str, content_length: usize) -> String {
        let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        if !content_type.is_empty() {
            head.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        head.push_str(&format!("Content-Length: {content_length}\r\nConnection: close\r\n\r\n"));
        head
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Self::head(self.status, &self.content_type, self.body.len()).into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Ends a connection after a full answer: half-close, then drain briefly so unread request
/// bytes (e.g. a refused oversized body) don't turn our close into a reset that destroys
/// the answer before the client reads it.
pub fn close_gracefully(stream: &mut TcpStream) {
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + Duration::from_secs(2);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 16 * 1024];
    let mut drained = 0usize;
    while Instant::now() < deadline && drained < 8 * MAX_BODY {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// Closes so the peer sees `ECONNRESET`: `SO_LINGER` with a zero timeout makes `close`
/// send RST instead of FIN. std has no stable setter, so call `setsockopt` directly.
pub fn close_with_reset(stream: TcpStream) {
    set_linger_zero(&stream);
    drop(stream);
}

#[cfg(any(target_os = "linux", target_os = "android", target_os = "macos"))]
fn set_linger_zero(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    use std::os::raw::{c_int, c_void};

    #[repr(C)]
    struct Linger {
        l_onoff: c_int,
        l_linger: c_int,
    }
    unsafe extern "C" {
        fn setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: u32) -> c_int;
    }
    #[cfg(not(target_os = "macos"))]
    const SOL_SOCKET: c_int = 1;
    #[cfg(not(target_os = "macos"))]
    const SO_LINGER: c_int = 13;
    #[cfg(target_os = "macos")]
    const SOL_SOCKET: c_int = 0xffff;
    #[cfg(target_os = "macos")]
    const SO_LINGER: c_int = 0x0080;

    let linger = Linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: the fd is owned by `stream` and open for the duration of the call; the
    // pointer and length describe a live, correctly laid out `struct linger`.
    unsafe {
        setsockopt(
            stream.as_raw_fd(),
            SOL_SOCKET,
            SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<Linger>() as u32,
        );
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "macos")))]
fn set_linger_zero(stream: &TcpStream) {
    // Best effort elsewhere: an abrupt close without an answer.
    let _ = stream.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn parse(raw: &[u8]) -> Result<Request, ReadError> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.write_all(raw).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        read_request(&mut server)
    }

    #[test]
    fn parses_content_length_body() {
        let r = parse(b"POST /oauth/token?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello").unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path(), "/oauth/token");
        assert_eq!(r.header("HOST"), Some("a"));
        assert_eq!(r.body, b"hello");
    }

    #[test]
    fn parses_chunked_body() {
        let r = parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!(r.body, b"abcde");
    }

    #[test]
    fn refuses_big_and_malformed() {
        let big = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert!(matches!(parse(big.as_bytes()), Err(ReadError::TooLarge(413))));
        assert!(matches!(parse(b"garbage\r\n\r\n"), Err(ReadError::Malformed(_))));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Err(ReadError::Io)));
    }

    #[test]
    fn response_head_has_length_and_close() {
        let bytes = Response::raw(401, "", "").to_bytes();
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(text, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }
}
