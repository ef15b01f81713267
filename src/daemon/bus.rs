//! The D-Bus face of the daemon: the Manager object, one Account object per account,
//! PropertiesChanged on every change, and access control from the CALLER's credentials
//! (asked of the bus, not trusted from the message): Refresh/Preflight/Reload need root or
//! group `codex-auth`, Store/Login/Seed/SeedVersion/PublishSeed need root. Objects hold only a handle to the core.

use super::core::{Core, Event, Publish, Request};
use crate::api::names::{
    ACCOUNT_IFACE, BUS_NAME, BusChoice, MANAGER_IFACE, MANAGER_PATH, OPERATOR_GROUP, account_path,
};
use crate::api::view::{AccountView, Published};
use crate::core::authfile::{AuthFile, MAX_AUTH_BYTES};
use crate::core::outcome::Report;
use crate::core::seed::SeedInput;
use crate::core::task::RefreshMethod;
use crate::sys::fdread::{self, Stopped};
use crate::sys::safedir::SafeDir;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zbus::message::Header;
use zbus::names::InterfaceName;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{OwnedFd, OwnedObjectPath, Value};
use zbus::{Connection, fdo, interface};

/// What a method needs from its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    /// root or a member of `codex-auth`
    Operator,
    Root,
}

/// Pure: may a caller with `uid` and `gids` do what needs `need`?
fn allowed(need: Need, uid: u32, gids: &[u32], operator_gid: Option<u32>) -> bool {
    uid == 0 || (need == Need::Operator && operator_gid.is_some_and(|g| gids.contains(&g)))
}

/// The caller's uid and groups, asked of the bus daemon.
async fn caller(conn: &Connection, hdr: &Header<'_>) -> fdo::Result<(u32, Vec<u32>)> {
    let sender = hdr.sender().ok_or_else(|| fdo::Error::AccessDenied("the call has no sender".into()))?;
    let creds = fdo::DBusProxy::new(conn).await?.get_connection_credentials(sender.clone().into()).await?;
    let uid =
        creds.unix_user_id().ok_or_else(|| fdo::Error::AccessDenied("the bus did not tell the caller's uid".into()))?;
    let gids = match creds.unix_group_ids() {
        Some(g) => g.clone(),
        // Older buses do not report groups: use the user's groups from the user database.
        None => nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .and_then(|u| {
                let name = std::ffi::CString::new(u.name).ok()?;
                nix::unistd::getgrouplist(&name, u.gid).ok()
            })
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default(),
    };
    Ok((uid, gids))
}

/// The daemon's count of denied calls, shared by its objects.
pub type Denials = Arc<std::sync::Mutex<RateLimit>>;

async fn authorize(conn: &Connection, hdr: &Header<'_>, need: Need, what: &str, denials: &Denials) -> fdo::Result<()> {
    let (uid, gids) = caller(conn, hdr).await?;
    let gid = nix::unistd::Group::from_name(OPERATOR_GROUP).ok().flatten().map(|g| g.gid.as_raw());
    if allowed(need, uid, &gids, gid) {
        return Ok(());
    }
    let needs = match need {
        Need::Operator => format!("root or membership in group {OPERATOR_GROUP}"),
        Need::Root => "root".to_string(),
    };
    // A caller looping on a denied call must not flood the journal (journald's rate limit
    // would then drop the daemon's own entries too): a few per minute, then a count.
    let (log, dropped) = denials.lock().unwrap_or_else(|p| p.into_inner()).admit(std::time::Instant::now());
    if dropped > 0 {
        tracing::warn!(
            "access denied to {dropped} more calls in the last {}s (not logged one by one)",
            DENIAL_WINDOW.as_secs()
        );
    }
    if log {
        tracing::warn!(caller_uid = uid, method = what, "access denied: {what} needs {needs}");
    }
    Err(fdo::Error::AccessDenied(format!("{what} needs {needs}")))
}

const DENIAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// At most `per_window` admitted events per `window`; the rest are counted.
pub struct RateLimit {
    per_window: u32,
    window: std::time::Duration,
    start: Option<std::time::Instant>,
    used: u32,
    dropped: u64,
}

impl Default for RateLimit {
    /// The daemon's: a few denied calls a minute are logged one by one, the rest counted.
    fn default() -> RateLimit {
        RateLimit::new(5, DENIAL_WINDOW)
    }
}

impl RateLimit {
    const fn new(per_window: u32, window: std::time::Duration) -> RateLimit {
        RateLimit { per_window, window, start: None, used: 0, dropped: 0 }
    }

    /// Whether to log the event at `now`, and how many were dropped in the window that
    /// just ended (reported once, with the first event of the next window).
    fn admit(&mut self, now: std::time::Instant) -> (bool, u64) {
        let mut ended = 0;
        if self.start.is_none_or(|s| now.duration_since(s) >= self.window) {
            ended = std::mem::take(&mut self.dropped);
            self.start = Some(now);
            self.used = 0;
        }
        if self.used < self.per_window {
            self.used += 1;
            (true, ended)
        } else {
            self.dropped += 1;
            (false, ended)
        }
    }
}

fn pair(r: Report) -> (String, String) {
    (r.outcome.as_str().to_string(), r.reason)
}

pub struct Manager {
    core: Arc<Core>,
    denials: Denials,
}

#[interface(name = "org.codexauth.Agent1.Manager")]
impl Manager {
    #[zbus(property)]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_string()
    }

    #[zbus(property)]
    fn boot_id(&self) -> String {
        boot_id()
    }

    #[zbus(property)]
    fn summary(&self) -> String {
        self.core.summary()
    }

    #[zbus(property)]
    fn accounts(&self) -> Vec<OwnedObjectPath> {
        self.core.names().iter().filter_map(|n| OwnedObjectPath::try_from(account_path(n)).ok()).collect()
    }

    async fn refresh_all(
        &self,
        force: bool,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<Vec<(String, String, String)>> {
        authorize(conn, &hdr, Need::Operator, "RefreshAll", &self.denials).await?;
        Ok(self
            .core
            .refresh_all(force)
            .await
            .into_iter()
            .map(|r| (r.account.clone(), r.outcome.as_str().into(), r.reason))
            .collect())
    }

    async fn preflight_all(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<Vec<(String, String, String)>> {
        authorize(conn, &hdr, Need::Operator, "PreflightAll", &self.denials).await?;
        Ok(self
            .core
            .preflight_all()
            .await
            .into_iter()
            .map(|r| (r.account.clone(), r.outcome().into(), r.reason))
            .collect())
    }

    async fn reload(&self, #[zbus(header)] hdr: Header<'_>, #[zbus(connection)] conn: &Connection) -> fdo::Result<()> {
        authorize(conn, &hdr, Need::Operator, "Reload", &self.denials).await?;
        self.core.reload().map_err(|e| fdo::Error::Failed(e.to_string()))
    }
}

pub struct Account {
    core: Arc<Core>,
    name: String,
    denials: Denials,
}

impl Account {
    fn v(&self) -> AccountView {
        self.core.view(&self.name).unwrap_or_default()
    }
}

#[interface(name = "org.codexauth.Agent1.Account")]
impl Account {
    #[zbus(property)]
    fn name(&self) -> String {
        self.name.clone()
    }
    #[zbus(property)]
    fn user(&self) -> String {
        self.v().user
    }
    #[zbus(property)]
    fn codex_home(&self) -> String {
        self.v().codex_home
    }
    #[zbus(property)]
    fn state(&self) -> String {
        self.v().state.as_str().to_string()
    }
    #[zbus(property)]
    fn access_token_expires_at(&self) -> u64 {
        self.v().access_token_expires_at
    }
    #[zbus(property)]
    fn last_refresh(&self) -> u64 {
        self.v().last_refresh
    }
    #[zbus(property)]
    fn last_attempt(&self) -> u64 {
        self.v().last_attempt
    }
    #[zbus(property)]
    fn last_outcome(&self) -> String {
        self.v().last_outcome
    }
    #[zbus(property)]
    fn last_error(&self) -> String {
        self.v().last_error
    }
    #[zbus(property)]
    fn consecutive_failures(&self) -> u32 {
        self.v().consecutive_failures
    }
    #[zbus(property)]
    fn next_attempt(&self) -> u64 {
        self.v().next_attempt
    }
    #[zbus(property)]
    fn token_fingerprint(&self) -> String {
        self.v().token_fingerprint
    }
    #[zbus(property)]
    fn refresh_method(&self) -> String {
        self.v().refresh_method.map_or("", RefreshMethod::as_str).to_string()
    }
    #[zbus(property)]
    fn runner_state(&self) -> String {
        self.v().runner_state.as_str().to_string()
    }
    #[zbus(property)]
    fn runner_last_ok(&self) -> u64 {
        self.v().runner_last_ok
    }
    #[zbus(property)]
    fn runner_last_fail(&self) -> u64 {
        self.v().runner_last_fail
    }
    #[zbus(property)]
    fn runner_last_check(&self) -> u64 {
        self.v().runner_last_check
    }
    #[zbus(property)]
    fn runner_boot_id(&self) -> String {
        self.v().runner_boot_id
    }
    #[zbus(property)]
    fn fleet_role(&self) -> String {
        self.v().fleet_role
    }
    #[zbus(property)]
    fn store_version(&self) -> u64 {
        self.v().store_version
    }
    #[zbus(property)]
    fn lease_holder(&self) -> String {
        self.v().lease_holder
    }
    #[zbus(property)]
    fn runner_last_reason(&self) -> String {
        self.v().runner_last_reason
    }
    #[zbus(property)]
    fn codex_version(&self) -> String {
        self.v().codex_version
    }

    async fn refresh(
        &self,
        force: bool,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<(String, String)> {
        authorize(conn, &hdr, Need::Operator, "Refresh", &self.denials).await?;
        let req = Request { force, ..Default::default() };
        self.core.refresh(&self.name, req).await.map(pair).ok_or_else(|| gone(&self.name))
    }

    /// Run the real Codex once against a throwaway copy (adopting what it refreshed).
    async fn preflight(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<(String, String)> {
        authorize(conn, &hdr, Need::Operator, "Preflight", &self.denials).await?;
        let r = self.core.preflight(&self.name).await.ok_or_else(|| gone(&self.name))?;
        Ok((r.outcome().to_string(), r.reason))
    }

    /// Install the auth.json read from `fd` (at most 1 MiB) through the worker.
    async fn store(
        &self,
        fd: OwnedFd,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<(String, String)> {
        authorize(conn, &hdr, Need::Root, "Store", &self.denials).await?;
        let input = self.read_credential(fd).await?;
        self.install(input).await
    }

    /// Like `Store`, for a new login (`codex-authctl login`): the journal's OUTCOME is `login`.
    async fn login(
        &self,
        fd: OwnedFd,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<(String, String)> {
        authorize(conn, &hdr, Need::Root, "Login", &self.denials).await?;
        let input = SeedInput { login: true, ..self.read_credential(fd).await? };
        self.install(input).await
    }

    /// A fleet follower's seed key version now (0: absent): the check-and-set base that
    /// `codex-authctl login --publish` reads before the login starts and hands to PublishSeed.
    async fn seed_version(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<u64> {
        authorize(conn, &hdr, Need::Root, "SeedVersion", &self.denials).await?;
        match self.core.seed_version(&self.name).await.ok_or_else(|| gone(&self.name))? {
            Ok(v) => Ok(v),
            Err(Publish::Usage(why)) => Err(fdo::Error::InvalidArgs(why)),
            Err(Publish::Vault(why)) => Err(fdo::Error::Failed(why)),
        }
    }

    /// Write the auth.json read from `fd` to a fleet follower's Vault seed key if the key is
    /// still at version `cas` (`codex-authctl login --publish`, after Login installed it):
    /// ("published", "wrote <key> version N") or ("failed", what to do).
    async fn publish_seed(
        &self,
        fd: OwnedFd,
        cas: u64,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<(String, String)> {
        authorize(conn, &hdr, Need::Root, "PublishSeed", &self.denials).await?;
        let input = self.read_credential(fd).await?;
        let key = self.core.account_settings(&self.name).and_then(|a| a.fleet).map(|f| f.vault_seed_key);
        match self.core.publish_seed(&self.name, input.bytes(), cas).await.ok_or_else(|| gone(&self.name))? {
            Ok(v) => Ok(("published".into(), format!("wrote {} version {v}", key.unwrap_or_default()))),
            Err(Publish::Usage(why)) => Err(fdo::Error::InvalidArgs(why)),
            Err(Publish::Vault(why)) => Ok(("failed".into(), why)),
        }
    }

    /// Make the auth.json read from `fd` the account's seed, then install it (no preflight).
    async fn seed(
        &self,
        fd: OwnedFd,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<(String, String)> {
        authorize(conn, &hdr, Need::Root, "Seed", &self.denials).await?;
        let input = self.read_credential(fd).await?;
        let acct = self.core.account_settings(&self.name).ok_or_else(|| gone(&self.name))?;
        if let Some(fleet) = &acct.fleet {
            // Fleet runs take their credential from Vault; a local seed would be ignored.
            return Err(fdo::Error::Failed(format!(
                "account {} is in fleet mode: its seed is the Vault key {} (base64 of auth.json in field \
                    `value`); put the new login there, or run `codex-authctl store {}` on the account's refresher",
                self.name, fleet.vault_seed_key, self.name
            )));
        }
        let path = acct.seed.ok_or_else(|| fdo::Error::Failed(format!("account {} has no seed path", self.name)))?;
        let bytes = input.bytes();
        tokio::task::spawn_blocking(move || {
            let dir = path.parent().ok_or_else(|| "seed path has no directory".to_string())?;
            let name =
                path.file_name().and_then(|n| n.to_str()).ok_or_else(|| "seed path has no file name".to_string())?;
            SafeDir::create_private(dir).and_then(|d| d.write_atomic(name, &bytes)).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| fdo::Error::Failed(e.to_string()))?
        .map_err(|e| fdo::Error::Failed(format!("writing the seed failed: {e}")))?;
        let req = Request { skip_gate: true, ..Default::default() };
        self.core.refresh(&self.name, req).await.map(pair).ok_or_else(|| gone(&self.name))
    }
}

impl Account {
    /// Install `input` through the worker (Store, Login): no backoff or quarantine gate,
    /// then what a Store triggers (a preflight).
    async fn install(&self, input: SeedInput) -> fdo::Result<(String, String)> {
        let req = Request { store: Some(input), skip_gate: true, ..Default::default() };
        let report = self.core.refresh(&self.name, req).await.ok_or_else(|| gone(&self.name))?;
        self.core.after_store(&self.name, &report);
        Ok(pair(report))
    }

    /// Read and validate an auth.json for this account from a caller's fd.
    async fn read_credential(&self, fd: OwnedFd) -> fdo::Result<SeedInput> {
        let fd: std::os::fd::OwnedFd = fd.into();
        let bytes =
            tokio::task::spawn_blocking(move || read_limited(fd, MAX_AUTH_BYTES as usize, Duration::from_secs(10)))
                .await
                .map_err(|e| fdo::Error::Failed(e.to_string()))?
                .map_err(fdo::Error::InvalidArgs)?;
        let auth = AuthFile::parse(&bytes, std::path::Path::new("the passed auth.json"))
            .map_err(|e| fdo::Error::InvalidArgs(e.to_string()))?;
        if auth.refresh_token().is_none() {
            return Err(fdo::Error::InvalidArgs(
                "the passed auth.json has no refresh token (not a ChatGPT login)".into(),
            ));
        }
        match (self.core.account_id(&self.name), auth.account_id()) {
            (Some(old), Some(new)) if old != new => {
                tracing::warn!(account = %self.name, "the passed auth.json belongs to ChatGPT account {new}, \
                    not {old}: the login changes");
            }
            _ => {}
        }
        Ok(SeedInput::from_bytes(&bytes))
    }
}

fn gone(name: &str) -> fdo::Error {
    fdo::Error::UnknownObject(format!("account {name} is no longer configured"))
}

/// Read at most `max` bytes until EOF, giving up after `timeout` (a writer that never
/// closes must not hold a daemon thread forever).
fn read_limited(fd: std::os::fd::OwnedFd, max: usize, timeout: Duration) -> Result<Vec<u8>, String> {
    fdread::read_to_end_before(fd, max, Instant::now() + timeout).map_err(|e| match e {
        Stopped::Deadline => {
            format!("the passed file descriptor did not reach end of file within {}s", timeout.as_secs())
        }
        Stopped::TooLarge => format!("the passed auth.json is larger than {} KiB", max / 1024),
        Stopped::Io(e) => format!("reading the passed file descriptor failed: {e}"),
    })
}

pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Connect, export the manager and account objects, then own the well-known name.
pub async fn serve(bus: &BusChoice, core: Arc<Core>, denials: &Denials) -> zbus::Result<Connection> {
    let conn = bus
        .builder()?
        .serve_at(MANAGER_PATH, Manager { core: core.clone(), denials: denials.clone() })?
        .build()
        .await?;
    for name in core.names() {
        conn.object_server()
            .at(account_path(&name), Account { core: core.clone(), name, denials: denials.clone() })
            .await?;
    }
    conn.request_name(BUS_NAME).await?;
    Ok(conn)
}

/// Follows core events: keeps the exported objects in step with the config and emits
/// PropertiesChanged for exactly the properties that changed.
pub struct Publisher {
    conn: Connection,
    core: Arc<Core>,
    /// What each account's object last published.
    views: HashMap<String, Published>,
    summary: String,
    exported: HashSet<String>,
    denials: Denials,
}

impl Publisher {
    pub fn new(conn: Connection, core: Arc<Core>, denials: Denials) -> Publisher {
        let exported: HashSet<String> = core.names().into_iter().collect();
        let views = exported.iter().filter_map(|n| core.view(n).map(|v| (n.clone(), v.published()))).collect();
        let summary = core.summary();
        Publisher { conn, core, views, summary, exported, denials }
    }

    async fn emit(&self, path: &str, iface: &'static str, changed: Vec<(&'static str, Value<'static>)>) {
        if changed.is_empty() {
            return;
        }
        let Ok(emitter) = SignalEmitter::new(&self.conn, path.to_string()) else { return };
        let map: HashMap<&str, Value<'_>> = changed.into_iter().collect();
        let iface = InterfaceName::from_static_str_unchecked(iface);
        if let Err(e) = fdo::Properties::properties_changed(&emitter, iface, map, std::borrow::Cow::Borrowed(&[])).await
        {
            tracing::debug!("PropertiesChanged on {path} failed: {e}");
        }
    }

    /// Publish one core event; true when the summary (STATUS=) changed.
    /// Publish what `events` changed: each account's properties, then the Manager's once.
    /// The caller passes every event already queued, so a burst of run ends (RefreshAll)
    /// computes the all-accounts Summary once, not once per event. True if Summary changed.
    pub async fn handle(&mut self, events: Vec<Event>) -> bool {
        let mut manager_changes = Vec::new();
        for event in events {
            self.apply(event, &mut manager_changes).await;
        }
        let summary = self.core.summary();
        let summary_changed = summary != self.summary;
        if summary_changed {
            manager_changes.push(("Summary", Value::from(summary.clone())));
            self.summary = summary;
        }
        self.emit(MANAGER_PATH, MANAGER_IFACE, manager_changes).await;
        summary_changed
    }

    async fn apply(&mut self, event: Event, manager_changes: &mut Vec<(&'static str, Value<'static>)>) {
        match event {
            Event::Account(name) => {
                if let Some(v) = self.core.view(&name) {
                    let changed = v.changed_since(self.views.get(&name));
                    self.emit(&account_path(&name), ACCOUNT_IFACE, changed).await;
                    self.views.insert(name, v.published());
                }
            }
            Event::Accounts => {
                let now: HashSet<String> = self.core.names().into_iter().collect();
                let server = self.conn.object_server();
                for gone in self.exported.difference(&now) {
                    let _ = server.remove::<Account, _>(account_path(gone)).await;
                    self.views.remove(gone);
                }
                for new in now.difference(&self.exported) {
                    let obj = Account { core: self.core.clone(), name: new.clone(), denials: self.denials.clone() };
                    if let Err(e) = server.at(account_path(new), obj).await {
                        tracing::error!(account = %new, "cannot export the account object: {e}");
                    }
                }
                if now != self.exported {
                    let paths: Vec<OwnedObjectPath> =
                        now.iter().filter_map(|n| OwnedObjectPath::try_from(account_path(n)).ok()).collect();
                    manager_changes.push(("Accounts", Value::from(paths)));
                }
                self.exported = now;
                for name in self.exported.clone() {
                    if let Some(v) = self.core.view(&name) {
                        let changed = v.changed_since(self.views.get(&name));
                        self.emit(&account_path(&name), ACCOUNT_IFACE, changed).await;
                        self.views.insert(name, v.published());
                    }
                }
            }
        }
    }

    pub fn summary(&self) -> &str {
        &self.summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_are_rate_limited_and_counted() {
        let t0 = std::time::Instant::now();
        let mut r = RateLimit::new(5, DENIAL_WINDOW);
        let logged = (0..10_000).filter(|_| r.admit(t0).0).count();
        assert_eq!(logged, 5);
        // The next window: logged again, with the count of the ones dropped before.
        assert_eq!(r.admit(t0 + DENIAL_WINDOW), (true, 9_995));
        assert_eq!(r.admit(t0 + DENIAL_WINDOW), (true, 0));
    }

    #[test]
    fn access_rules() {
        assert!(allowed(Need::Root, 0, &[], None));
        assert!(allowed(Need::Operator, 0, &[], None));
        assert!(allowed(Need::Operator, 1000, &[5, 77], Some(77)));
        assert!(!allowed(Need::Root, 1000, &[77], Some(77)));
        assert!(!allowed(Need::Operator, 1000, &[5], Some(77)));
        assert!(!allowed(Need::Operator, 1000, &[5], None));
    }

    #[test]
    fn read_limited_caps_size_and_time() {
        let (r, mut w) = std::io::pipe().unwrap();
        std::io::Write::write_all(&mut w, b"{}").unwrap();
        drop(w);
        assert_eq!(read_limited(r.into(), 10, Duration::from_secs(1)).unwrap(), b"{}");
        let (r, mut w) = std::io::pipe().unwrap();
        std::io::Write::write_all(&mut w, &[b' '; 64]).unwrap();
        drop(w);
        assert!(read_limited(r.into(), 10, Duration::from_secs(1)).unwrap_err().contains("larger"));
        let (r, _w) = std::io::pipe().unwrap();
        assert!(read_limited(r.into(), 10, Duration::from_millis(200)).unwrap_err().contains("end of file"));
    }
}
