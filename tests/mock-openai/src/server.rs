//! The listener: accept loop, one thread per connection, request logging and prompt
//! shutdown. `MockServer` is also the in-process control surface.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime};

use crate::fault::Fault;
use crate::http::{self, ReadError};
use crate::routes::{error_json, route, send};
use crate::state::{Credentials, RequestLogEntry, Settings, State, Stats, wall_now};

/// Idle cap for reading a request or writing an answer.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start a [`MockServer`].
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Address to bind; port 0 picks an ephemeral port. Default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// Lifetime of access and id tokens (`exp - iat`, `expires_in`). Default 10 days.
    pub access_lifetime: Duration,
    /// Refresh tokens older than this get `refresh_token_expired`. Default: never.
    pub refresh_token_lifetime: Option<Duration>,
    /// Prefix of every refresh token and access-token `jti`, so leaks can be grepped.
    pub canary_prefix: String,
    /// Serve `/__admin/*` (to loopback peers only). Default off.
    pub admin: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            access_lifetime: Duration::from_secs(10 * 24 * 3600),
            refresh_token_lifetime: None,
            canary_prefix: "CANARY-".to_string(),
            admin: false,
        }
    }
}

impl MockConfig {
    /// Bind `127.0.0.1:port`.
    pub fn with_port(mut self, port: u16) -> Self {
        self.listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        self
    }

    /// Enable the admin API.
    pub fn with_admin(mut self) -> Self {
        self.admin = true;
        self
    }
}

/// Locks, recovering from poisoning: a panicking test thread must not wedge the mock for
/// every later request, and the state stays consistent between statements anyway.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Stop signal that sleeping threads can wait on, so delays and hangs end at shutdown.
#[derive(Default)]
pub(crate) struct Stop {
    stopped: Mutex<bool>,
    cv: Condvar,
}

impl Stop {
    pub fn is_stopped(&self) -> bool {
        *lock(&self.stopped)
    }

    fn trigger(&self) {
        *lock(&self.stopped) = true;
        self.cv.notify_all();
    }

    /// Sleeps for `d`; returns false if the server stopped first.
    pub fn sleep(&self, d: Duration) -> bool {
        let guard = lock(&self.stopped);
        let (guard, _) =
            self.cv.wait_timeout_while(guard, d, |stopped| !*stopped).unwrap_or_else(PoisonError::into_inner);
        !*guard
    }
}

pub(crate) struct Shared {
    pub state: Mutex<State>,
    pub stop: Stop,
    pub admin: bool,
    /// Clones of open connections, shut down at stop to unblock their threads.
    conns: Mutex<HashMap<u64, TcpStream>>,
}

/// A running mock. Dropping it (or [`MockServer::stop`]) stops it.
pub struct MockServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Mutex<Option<JoinHandle<()>>>,
    workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl MockServer {
    /// Starts the server; panics if it cannot bind (tests want a loud failure).
    pub fn start(config: MockConfig) -> MockServer {
        Self::try_start(config).expect("mock-openai: failed to start")
    }

    /// Starts the server, reporting bind errors.
    pub fn try_start(config: MockConfig) -> io::Result<MockServer> {
        let listener = TcpListener::bind(config.listen)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(Settings {
                canary_prefix: config.canary_prefix,
                access_lifetime: config.access_lifetime,
                refresh_token_lifetime: config.refresh_token_lifetime,
            })),
            stop: Stop::default(),
            admin: config.admin,
            conns: Mutex::new(HashMap::new()),
        });
        let workers = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (shared, workers) = (shared.clone(), workers.clone());
            thread::Builder::new()
                .name("mock-openai-accept".into())
                .spawn(move || accept_loop(listener, shared, workers))?
        };
        Ok(MockServer { shared, addr, accept: Mutex::new(Some(accept)), workers })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `{url}/oauth/token`
    pub fn token_url(&self) -> String {
        format!("{}/oauth/token", self.url())
    }

    /// `{url}/backend-api/`: Codex's `chatgpt_base_url` when pointed at the mock.
    pub fn backend_url(&self) -> String {
        format!("{}{}", self.url(), crate::backend::BACKEND_PREFIX)
    }

    // --- credentials ---------------------------------------------------------------

    /// Simulates a fresh login of `account_id`: a new family with generation-1 tokens.
    pub fn issue_family(&self, account_id: &str) -> Credentials {
        self.state().issue_family(account_id)
    }

    /// Current (unspent, unexpired) refresh token of a live family.
    pub fn is_live_refresh_token(&self, token: &str) -> bool {
        self.state().is_live_refresh_token(token)
    }

    /// Issued by us, family not revoked, `exp` not passed on the mock clock.
    pub fn is_live_access_token(&self, token: &str) -> bool {
        self.state().is_live_access_token(token)
    }

    /// `key` is an account id (its latest family) or a numeric family id. `None` when
    /// unknown or revoked.
    pub fn current_refresh_token(&self, key: &str) -> Option<String> {
        self.state().current_refresh_token(key)
    }

    /// `key` as for [`Self::current_refresh_token`]; false when unknown.
    pub fn family_revoked(&self, key: &str) -> bool {
        self.state().family_revoked(key)
    }

    /// Revokes a family as a logout or password change would. False when unknown.
    pub fn revoke_family(&self, key: &str) -> bool {
        self.state().revoke_family(key)
    }

    /// Family id (as used in token strings) of any refresh token we issued.
    pub fn family_id_of(&self, refresh_token: &str) -> Option<u64> {
        self.state().family_id_of(refresh_token)
    }

    // --- clock and settings --------------------------------------------------------

    /// The mock's notion of now (wall clock plus advances).
    pub fn now(&self) -> SystemTime {
        self.state().now()
    }

    /// Moves the mock clock forward (token `iat`/`exp`, expiry checks).
    pub fn advance_clock(&self, by: Duration) {
        self.state().advance_clock(by);
    }

    /// Lifetime of tokens minted from now on.
    pub fn set_access_lifetime(&self, d: Duration) {
        self.state().set_access_lifetime(d);
    }

    pub fn set_refresh_token_lifetime(&self, d: Option<Duration>) {
        self.state().set_refresh_token_lifetime(d);
    }

    /// Extra delay before every token-endpoint answer (faulted or not).
    pub fn set_latency(&self, d: Duration) {
        self.state().set_latency(d);
    }

    // --- faults --------------------------------------------------------------------

    /// Applies to the next token request only (FIFO).
    /// User codes of device logins (`codex login --device-auth`) awaiting the user.
    pub fn pending_device_codes(&self) -> Vec<String> {
        self.state().devices.pending()
    }

    /// Codex's polls for `user_code` so far.
    pub fn device_polls(&self, user_code: &str) -> u64 {
        self.state().devices.polls(user_code)
    }

    /// The user approves a pending device code, logging in as ChatGPT account `account_id`
    /// (its earlier families are revoked at the code exchange); false when not pending.
    pub fn approve_device(&self, user_code: &str, account_id: &str) -> bool {
        self.state().devices.decide(user_code, Some(account_id))
    }

    /// The user denies a pending device code: Codex's next poll gets 401 and gives up.
    pub fn deny_device(&self, user_code: &str) -> bool {
        self.state().devices.decide(user_code, None)
    }

    pub fn push_fault(&self, f: Fault) {
        self.state().push_fault(f);
    }

    /// Applies to every token request until cleared with `None`.
    pub fn set_sticky_fault(&self, f: Option<Fault>) {
        self.state().set_sticky_fault(f);
    }

    /// One-shot fault for requests whose refresh token belongs to `account_id`.
    pub fn push_fault_for(&self, account_id: &str, f: Fault) {
        self.state().push_fault_for(account_id, f);
    }

    /// Sticky fault for one account.
    pub fn set_sticky_fault_for(&self, account_id: &str, f: Option<Fault>) {
        self.state().set_sticky_fault_for(account_id, f);
    }

    /// Drops every queued and sticky fault (global and per-account, token and backend).
    pub fn clear_faults(&self) {
        self.state().clear_faults();
    }

    /// Applies to the next `/backend-api/...` request only (FIFO); token requests are
    /// unaffected. `Delay` answers normally afterwards, `Hang` never answers.
    pub fn push_backend_fault(&self, f: Fault) {
        self.state().push_backend_fault(f);
    }

    /// Applies to every backend request until cleared with `None`.
    pub fn set_sticky_backend_fault(&self, f: Option<Fault>) {
        self.state().set_sticky_backend_fault(f);
    }

    /// One-shot backend fault for requests whose access token belongs to `account_id`.
    pub fn push_backend_fault_for(&self, account_id: &str, f: Fault) {
        self.state().push_backend_fault_for(account_id, f);
    }

    /// What the assistant answers in `codex/responses` (default "Banana").
    pub fn set_reply_text(&self, text: &str) {
        self.state().set_reply_text(text);
    }

    // --- counters ------------------------------------------------------------------

    /// Every `POST /oauth/token` received, faulted or not.
    pub fn token_requests(&self) -> u64 {
        self.state().token_requests()
    }

    /// Token requests whose refresh token belongs to a family of `account_id`.
    pub fn token_requests_for(&self, account_id: &str) -> u64 {
        self.state().token_requests_for(account_id)
    }

    pub fn successful_refreshes(&self) -> u64 {
        self.state().successful_refreshes()
    }

    pub fn reuse_detections(&self) -> u64 {
        self.state().reuse_detections()
    }

    /// Every `/backend-api/...` request received, faulted or not.
    pub fn backend_requests(&self) -> u64 {
        self.state().backend_requests()
    }

    /// Backend requests to one path (e.g. [`crate::backend::RESPONSES_PATH`]).
    pub fn backend_requests_to(&self, path: &str) -> u64 {
        self.state().backend_requests_to(path)
    }

    /// Non-admin requests, oldest first (capped at the latest 100 000).
    pub fn requests_log(&self) -> Vec<RequestLogEntry> {
        self.state().requests_log()
    }

    /// What each token request since the last reset looked like (no token values).
    pub fn token_request_shapes(&self) -> Vec<crate::state::TokenRequestShape> {
        self.state().token_request_shapes()
    }

    /// Accept `id` as a client id too (Codex's own is always accepted).
    pub fn accept_client_id(&self, id: &str) {
        self.state().accept_client_id(id);
    }

    /// Zeroes the counters and clears the log (families and faults stay).
    pub fn reset_counters(&self) {
        self.state().reset_counters();
    }

    pub fn stats(&self) -> Stats {
        self.state().stats()
    }

    /// Wait until every connection opened before this call has been handled to its end, so
    /// a request sent by a client that was killed meanwhile has had its effect (a rotation)
    /// before the caller judges the outcome. False if `timeout` passed first.
    pub fn settle(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        // The accept loop takes connections in order: once a fresh connection has been
        // answered, every earlier one has been accepted and is in `conns`.
        let probe = || -> io::Result<()> {
            let mut c = TcpStream::connect_timeout(&wake_addr(self.addr), timeout)?;
            c.set_read_timeout(Some(timeout))?;
            c.write_all(b"GET /__settle HTTP/1.1\r\nHost: mock\r\nConnection: close\r\n\r\n")?;
            io::copy(&mut c, &mut io::sink()).map(|_| ())
        };
        if probe().is_err() {
            return false;
        }
        let earlier: Vec<u64> = lock(&self.shared.conns).keys().copied().collect();
        while earlier.iter().any(|id| lock(&self.shared.conns).contains_key(id)) {
            if std::time::Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(2));
        }
        true
    }

    // --- lifecycle -----------------------------------------------------------------

    /// Stops accepting, aborts in-flight connections (hangs and delays included) and
    /// joins every thread. Idempotent.
    pub fn stop(&self) {
        let Some(accept) = lock(&self.accept).take() else {
            return;
        };
        self.shared.stop.trigger();
        // Wake the blocking accept() with a throwaway connection.
        let _ = TcpStream::connect_timeout(&wake_addr(self.addr), Duration::from_secs(1));
        let _ = accept.join();
        for conn in lock(&self.shared.conns).values() {
            let _ = conn.shutdown(Shutdown::Both);
        }
        let workers = std::mem::take(&mut *lock(&self.workers));
        for w in workers {
            let _ = w.join();
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wake_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, workers: Arc<Mutex<Vec<JoinHandle<()>>>>) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(0);
    for conn in listener.incoming() {
        if shared.stop.is_stopped() {
            break;
        }
        let Ok(stream) = conn else {
            // E.g. EMFILE under a benchmark: back off instead of spinning.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = stream.try_clone() {
            lock(&shared.conns).insert(id, clone);
        }
        let shared2 = shared.clone();
        let spawned = thread::Builder::new()
            .name("mock-openai-conn".into())
            // Small stacks: scale benchmarks open thousands of connections.
            .stack_size(256 * 1024)
            .spawn(move || {
                handle_connection(&shared2, stream);
                lock(&shared2.conns).remove(&id);
            });
        let mut workers = lock(&workers);
        workers.retain(|h| !h.is_finished());
        match spawned {
            Ok(h) => workers.push(h),
            Err(_) => {
                lock(&shared.conns).remove(&id);
            }
        }
    }
}

fn handle_connection(shared: &Shared, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let peer = stream.peer_addr().ok();
    let req = match http::read_request(&mut stream) {
        Ok(req) => req,
        Err(ReadError::TooLarge(status)) => {
            let r = error_json(status, "request_too_large", "Request head or body too large.");
            let _ = stream.write_all(&r.to_bytes());
            http::close_gracefully(&mut stream);
            return;
        }
        Err(ReadError::Malformed(what)) => {
            let r = error_json(400, "invalid_request", &format!("Malformed HTTP {what}."));
            let _ = stream.write_all(&r.to_bytes());
            http::close_gracefully(&mut stream);
            return;
        }
        Err(ReadError::Io) => return,
    };
    if shared.stop.is_stopped() {
        return;
    }
    let routed = route(shared, &req, peer);
    if routed.log {
        lock(&shared.state).record(RequestLogEntry {
            at: wall_now(),
            method: req.method.clone(),
            path: req.path().to_string(),
            status: routed.reply.logged_status(),
            account_id: routed.account,
            fault: routed.fault.map(str::to_string),
        });
    }
    send(shared, stream, routed.reply);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<MockServer>();
    }

    #[test]
    fn lock_recovers_from_poison() {
        let m = Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }

    #[test]
    fn stop_sleep_returns_early() {
        let stop = Arc::new(Stop::default());
        let s2 = stop.clone();
        let t = std::time::Instant::now();
        let h = thread::spawn(move || s2.sleep(Duration::from_secs(30)));
        thread::sleep(Duration::from_millis(20));
        stop.trigger();
        assert!(!h.join().unwrap());
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(!stop.sleep(Duration::from_secs(30)));
    }
}
