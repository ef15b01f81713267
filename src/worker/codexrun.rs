//! Running the real Codex CLI for one account without touching its CODEX_HOME, shared by
//! the preflight (`codex exec`) and `refresh_method = "app-server"`: a private throwaway
//! HOME (0700) in the temp dir holding a copy of auth.json (0600) and an offline-clean
//! config.toml, a scrubbed environment (no token ever in argv or env), its own process
//! group that dies with us, bounded output capture, and removal of the throwaway home on
//! every path. A home left by a killed agent is removed by the next run of the same user.
//! Runs as the account's user (inside the worker), never as root for someone else.

use crate::core::authfile::{AuthFile, MAX_AUTH_BYTES};
use crate::core::contract::{AUTH_FILE, DEFAULT_TOKEN_URL, TOKEN_URL_ENV};
use crate::core::outcome::Failure;
use crate::sys::safedir::{DirError, Lock, SafeDir};
use chrono::{DateTime, Utc};
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

/// Throwaway homes are `<temp dir>/codex-auth-agent-<uid>-<random>`: recognisable, per
/// user, unguessable.
pub const HOME_PREFIX: &str = "codex-auth-agent-";
/// Held (flock) in a throwaway home while it is in use, so cleanup never removes a live one.
const IN_USE_LOCK: &str = ".codex-auth-agent.lock";
/// A home younger than this is never treated as stale: it may be between mkdir and lock.
const STALE_AFTER: Duration = Duration::from_secs(60);
/// The only PATH Codex sees: enough for `/bin/sh` and friends, nothing user-controlled.
pub const MINIMAL_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// We keep at most this much of Codex's stdout and stderr (the rest is read and dropped,
/// so a chatty Codex never blocks on a full pipe).
const OUTPUT_CAP: usize = 256 * 1024;

/// Which Codex to run and where to point it; the same for the preflight and app-server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodexSetup {
    /// `agent.codex_bin`: a path, or a name looked up in PATH.
    pub bin: String,
    /// `codex_base_url`: empty = Codex's own backend.
    pub base_url: String,
    /// Where Codex refreshes; passed as CODEX_REFRESH_TOKEN_URL_OVERRIDE when not the default.
    pub token_url: String,
    /// Parent of the throwaway homes (the agent's TMPDIR, else /tmp).
    pub temp_dir: PathBuf,
}

impl CodexSetup {
    pub fn new(bin: &str, base_url: &str, token_url: &str, temp_dir: &Path) -> Self {
        CodexSetup {
            bin: bin.to_string(),
            base_url: base_url.to_string(),
            token_url: token_url.to_string(),
            temp_dir: temp_dir.to_path_buf(),
        }
    }
}

/// Codex's `chatgpt_base_url` and the provider `base_url` for a `codex_base_url`, which may
/// name the origin (`https://h`) or its `/backend-api` (both are accepted).
pub fn backend_urls(base_url: &str) -> Option<(String, String)> {
    let origin = base_url.trim().trim_end_matches('/');
    let origin = origin.strip_suffix("/backend-api").unwrap_or(origin);
    (!origin.is_empty()).then(|| (format!("{origin}/backend-api/"), format!("{origin}/backend-api/codex")))
}

/// The throwaway config.toml: Codex's offline-clean settings (no update checks,
/// analytics, telemetry or plugin fetches — codex-contract), plus, when `base_url` is set,
/// a provider that uses the ChatGPT login against that backend.
pub fn offline_config(base_url: &str) -> String {
    use toml::Value;
    let mut top = toml::Table::new();
    let table = |pairs: &[(&str, Value)]| {
        Value::Table(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<toml::Table>())
    };
    top.insert("check_for_update_on_startup".into(), Value::Boolean(false));
    top.insert("analytics".into(), table(&[("enabled", Value::Boolean(false))]));
    top.insert("otel".into(), table(&[("metrics_exporter", Value::String("none".into()))]));
    top.insert(
        "features".into(),
        table(&[
            ("plugins", Value::Boolean(false)),
            ("apps", Value::Boolean(false)),
            ("remote_plugin", Value::Boolean(false)),
        ]),
    );
    if let Some((chatgpt, provider)) = backend_urls(base_url) {
        top.insert("model_provider".into(), Value::String("codex-auth-agent".into()));
        top.insert("chatgpt_base_url".into(), Value::String(chatgpt));
        let p = table(&[
            ("name", Value::String("codex-auth-agent".into())),
            ("base_url", Value::String(provider)),
            ("requires_openai_auth", Value::Boolean(true)),
            ("supports_websockets", Value::Boolean(false)),
        ]);
        top.insert("model_providers".into(), table(&[("codex-auth-agent", p)]));
    }
    // Serializing a table of plain values cannot fail.
    toml::to_string(&top).unwrap_or_default()
}

/// The complete environment of the Codex child: HOME and CODEX_HOME in the throwaway
/// home, the sync switches the auth runner used, a minimal PATH, and the token URL only
/// when it is not the default. Nothing inherited, nothing secret.
pub fn child_env(root: &Path, token_url: &str) -> Vec<(&'static str, OsString)> {
    let mut env = vec![
        ("HOME", root.as_os_str().to_owned()),
        ("CODEX_HOME", root.join(".codex").into_os_string()),
        ("CODEX_SYNC_OPTIONAL", "1".into()),
        ("CODEX_SYNC_BAKED", "0".into()),
        ("PATH", MINIMAL_PATH.into()),
    ];
    if !token_url.is_empty() && token_url != DEFAULT_TOKEN_URL {
        env.push((TOKEN_URL_ENV, token_url.into()));
    }
    env
}

/// How Codex's copy of auth.json compares with the one we gave it.
#[derive(Clone, Debug, PartialEq)]
pub enum AuthChange {
    /// Same refresh token and last_refresh: Codex did not refresh.
    Unchanged,
    /// Codex refreshed (new refresh token or newer last_refresh) for the same account.
    Refreshed(Box<AuthFile>),
    /// Codex wrote a credential of another account: never adopted.
    OtherAccount,
    /// Gone or no longer a valid auth.json.
    Unreadable,
}

/// Did Codex rewrite its copy with a newer credential of the same account? (pure)
pub fn compare(before: &AuthFile, after: Option<&[u8]>) -> AuthChange {
    let Some(after) = after.and_then(|b| AuthFile::parse(b, Path::new(AUTH_FILE)).ok()) else {
        return AuthChange::Unreadable;
    };
    let newer = match (after.last_refresh(), before.last_refresh()) {
        (Some(a), Some(b)) => a > b,
        (Some(_), None) => true,
        _ => false,
    };
    if after.refresh_token() == before.refresh_token() && !newer {
        return AuthChange::Unchanged;
    }
    if after.account_id() != before.account_id() {
        return AuthChange::OtherAccount;
    }
    AuthChange::Refreshed(Box::new(after))
}

/// `codex_bin` as an absolute path: a path is taken as is, a bare name is looked up in
/// `path_env` (the agent's PATH).
pub fn resolve_bin(bin: &str, path_env: Option<&std::ffi::OsStr>) -> Result<PathBuf, Failure> {
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0);
    let found = if bin.contains('/') {
        Some(PathBuf::from(bin)).filter(|p| executable(p))
    } else {
        let path = path_env.filter(|p| !p.is_empty()).unwrap_or(MINIMAL_PATH.as_ref());
        std::env::split_paths(path).map(|d| d.join(bin)).find(|p| p.is_absolute() && executable(p))
    };
    found.map(|p| native_of_npm_launcher(&p).unwrap_or(p)).ok_or_else(|| {
        Failure::transient(format!(
            "the Codex CLI `{bin}` (agent.codex_bin) was not found or is not executable; install @openai/codex \
                or set agent.codex_bin to its path"
        ))
    })
}

/// npm installs `codex` as a Node.js launcher (`@openai/codex/bin/codex.js`) that starts
/// the native binary from the platform package. Run that binary directly: it saves a
/// Node.js process, and the packaged service's MemoryDenyWriteExecute stops Node.js.
pub fn native_of_npm_launcher(launcher: &Path) -> Option<PathBuf> {
    let script = std::fs::canonicalize(launcher).ok()?;
    if !script.ends_with("@openai/codex/bin/codex.js") {
        return None;
    }
    let package = script.parent()?.parent()?;
    let (platform, triple) = match std::env::consts::ARCH {
        "x86_64" => ("codex-linux-x64", "x86_64-unknown-linux-musl"),
        "aarch64" => ("codex-linux-arm64", "aarch64-unknown-linux-musl"),
        _ => return None,
    };
    let rel = Path::new("@openai").join(platform).join("vendor").join(triple).join("bin/codex");
    // The platform package sits beside @openai/codex (hoisted) or inside its node_modules.
    [package.join("node_modules").join(&rel), package.parent()?.parent()?.join(&rel)]
        .into_iter()
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
}

/// Is `name` a throwaway home of `uid` (by name)?
fn is_home_of(name: &str, uid: u32) -> bool {
    name.strip_prefix(HOME_PREFIX).and_then(|r| r.strip_prefix(&format!("{uid}-"))).is_some_and(|r| !r.is_empty())
}

/// Remove throwaway homes of `uid` left behind by a killed agent: ours by name and owner,
/// older than a minute, and not locked by a live run. Returns how many were removed.
pub fn remove_stale(temp_dir: &Path, uid: u32, now: DateTime<Utc>) -> usize {
    let Ok(entries) = std::fs::read_dir(temp_dir) else { return 0 };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str().filter(|n| is_home_of(n, uid)) else { continue };
        let path = temp_dir.join(name);
        let Ok(md) = std::fs::symlink_metadata(&path) else { continue };
        // Either way from now: a home left before the clock stepped back has an mtime in the
        // future, and would otherwise stay until the clock caught up. Use is the lock's say.
        let age = DateTime::from_timestamp(md.mtime(), 0).map(|t| (now - t).abs()).and_then(|d| d.to_std().ok());
        if !md.is_dir() || md.uid() != uid || age.is_none_or(|a| a < STALE_AFTER) {
            continue;
        }
        let Ok(dir) = SafeDir::open(&path, uid) else { continue };
        // A live run holds this lock for as long as it uses the home.
        if let Ok(_lock) = dir.lock(IN_USE_LOCK, None) {
            make_removable(&path);
            if std::fs::remove_dir_all(&path).is_ok() {
                removed += 1;
            }
        }
    }
    if removed > 0 {
        tracing::info!("removed {removed} stale Codex home(s) of uid {uid} under {}", temp_dir.display());
    }
    removed
}

/// Codex can leave read-only directories behind; give the owner write access back so the
/// whole tree can be removed. Does not follow symlinks.
fn make_removable(path: &Path) {
    let Ok(md) = std::fs::symlink_metadata(path) else { return };
    if !md.is_dir() {
        return;
    }
    if md.mode() & 0o700 != 0o700 {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(md.mode() | 0o700));
    }
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            make_removable(&e.path());
        }
    }
}

/// Check the parent of throwaway homes: a directory, and when others can write to it, a
/// sticky one (like /tmp), so nobody else can rename or remove our home.
fn check_temp_dir(temp_dir: &Path) -> Result<(), Failure> {
    let md = std::fs::metadata(temp_dir).map_err(|e| {
        Failure::transient(format!("temp dir {} is not usable ({e}); set TMPDIR to a directory", temp_dir.display()))
    })?;
    if !md.is_dir() || !temp_dir.is_absolute() {
        return Err(Failure::unsafe_file(format!(
            "temp dir {} is not an absolute directory; set TMPDIR to one such as /tmp",
            temp_dir.display()
        )));
    }
    if md.mode() & 0o002 != 0 && md.mode() & 0o1000 == 0 {
        return Err(Failure::unsafe_file(format!(
            "temp dir {} is writable by others without the sticky bit; chmod +t it or set TMPDIR elsewhere",
            temp_dir.display()
        )));
    }
    Ok(())
}

fn dir_error(what: &str, e: DirError) -> Failure {
    Failure::transient(format!("cannot prepare the throwaway Codex home ({what}): {e}; will retry"))
}

/// A private throwaway HOME with `.codex/` inside; removed when dropped.
pub struct TempHome {
    root: PathBuf,
    codex: SafeDir,
    /// Held while the home exists: tells `remove_stale` it is in use.
    _in_use: Lock,
}

impl TempHome {
    /// Create `<temp dir>/codex-auth-agent-<uid>-<random>` (0700) and `.codex/` (0700).
    pub fn create(temp_dir: &Path, uid: u32) -> Result<TempHome, Failure> {
        check_temp_dir(temp_dir)?;
        for _ in 0..16 {
            let root = temp_dir.join(format!("{HOME_PREFIX}{uid}-{:016x}", fastrand::u64(..)));
            match std::fs::DirBuilder::new().mode(0o700).create(&root) {
                Ok(()) => return Self::prepare(root, uid),
                // Someone squatted the name: take another, never reuse theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(Failure::transient(format!(
                        "cannot create a throwaway Codex home in {}: {e}; will retry",
                        temp_dir.display()
                    )));
                }
            }
        }
        Err(Failure::transient(format!("could not find a free throwaway home name in {}", temp_dir.display())))
    }

    fn prepare(root: PathBuf, uid: u32) -> Result<TempHome, Failure> {
        // From here on, the directory is removed if anything fails.
        let cleanup = RemoveOnDrop(Some(root.clone()));
        let dir = SafeDir::open(&root, uid).map_err(|e| dir_error("open", e))?;
        let in_use = dir.lock(IN_USE_LOCK, None).map_err(|e| dir_error("lock", e))?;
        let codex_path = root.join(".codex");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&codex_path)
            .map_err(|source| dir_error(".codex", DirError::Io { path: codex_path.clone(), source }))?;
        let codex = SafeDir::open(&codex_path, uid).map_err(|e| dir_error(".codex", e))?;
        std::mem::forget(cleanup);
        Ok(TempHome { root, codex, _in_use: in_use })
    }

    /// The throwaway HOME.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Put the credential copy (0600) and the config in `.codex/`: plain O_EXCL creates in
    /// our own fresh 0700 directory, without fsync (a throwaway copy needs no durability,
    /// and the fsyncs were a measurable part of the preflight's overhead).
    pub fn install(&self, auth: &[u8], config: &str) -> Result<(), Failure> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        for (name, bytes) in [(AUTH_FILE, auth), ("config.toml", config.as_bytes())] {
            let path = self.root.join(".codex").join(name);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
                .and_then(|mut f| {
                    // The umask may have narrowed the mode; make it exactly 0600.
                    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
                    f.write_all(bytes)
                })
                .map_err(|source| dir_error(name, DirError::Io { path, source }))?;
        }
        Ok(())
    }

    /// Codex's copy of auth.json now (None when it is gone or unusable).
    pub fn read_auth(&self) -> Option<Vec<u8>> {
        self.codex.read(AUTH_FILE).ok().flatten().map(|f| f.bytes).filter(|b| b.len() as u64 <= MAX_AUTH_BYTES)
    }

    /// The Codex command: scrubbed env, cwd in the throwaway home, stdin from /dev/null,
    /// stdout/stderr piped, its own process group, killed if its parent dies.
    pub fn command(&self, bin: &Path, setup: &CodexSetup) -> Command {
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .envs(child_env(&self.root, &setup.token_url))
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; the closure touches no memory of the parent.
        // Without it a Codex orphaned by a killed worker would keep running (its own group
        // escapes the worker's group kill).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                Ok(())
            });
        }
        cmd
    }
}

impl Drop for TempHome {
    fn drop(&mut self) {
        if std::fs::remove_dir_all(&self.root).is_ok() {
            return;
        }
        make_removable(&self.root);
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            tracing::warn!("could not remove the throwaway Codex home {}: {e}", self.root.display());
        }
    }
}

/// Removes a half-prepared home unless forgotten.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Read all of `r` on a thread, keeping the first [`OUTPUT_CAP`] bytes.
pub fn capture(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let (mut kept, mut buf) = (Vec::new(), [0u8; 8192]);
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break kept,
                Ok(n) => {
                    let room = OUTPUT_CAP.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
    })
}

/// How a Codex run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signalled,
    /// Past its time limit; its whole process group was killed.
    TimedOut,
}

impl Ended {
    pub fn from_status(status: Option<ExitStatus>) -> Ended {
        match status {
            None => Ended::TimedOut,
            Some(s) => s.code().map_or(Ended::Signalled, Ended::Exited),
        }
    }
}

/// A finished non-interactive Codex run.
pub struct Finished {
    pub ended: Ended,
    pub stdout: String,
    pub stderr: String,
}

/// Run `cmd` to the end within `limit` (its process group is killed past it).
pub fn run_to_end(mut cmd: Command, limit: Duration) -> Result<Finished, Failure> {
    let mut child =
        cmd.spawn().map_err(|e| Failure::transient(format!("cannot start the Codex CLI: {e}; will retry")))?;
    let out = capture(child.stdout.take().expect("stdout was piped"));
    let err = capture(child.stderr.take().expect("stderr was piped"));
    let status = crate::sys::process::wait_or_kill_group(&mut child, limit);
    let text = |h: JoinHandle<Vec<u8>>| String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned();
    Ok(Finished { ended: Ended::from_status(status), stdout: text(out), stderr: strip_ansi(&text(err)) })
}

/// Codex colours its log lines even into a pipe; drop the escape sequences before matching.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, then one final byte in @..~.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn jwt(payload: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.sig", e.encode(r#"{"alg":"none"}"#), e.encode(payload))
    }

    fn auth(rt: &str, account: &str, last_refresh: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "auth_mode": "chatgpt",
            "tokens": {"id_token": jwt("{}"), "access_token": "a", "refresh_token": rt, "account_id": account},
            "last_refresh": last_refresh,
        }))
        .unwrap()
    }

    fn now() -> DateTime<Utc> {
        use crate::core::clock::Clock;
        crate::core::clock::SystemClock.now()
    }

    fn parse(b: &[u8]) -> AuthFile {
        AuthFile::parse(b, Path::new("a")).unwrap()
    }

    #[test]
    fn config_is_offline_and_points_at_the_backend_when_set() {
        let plain: toml::Table = toml::from_str(&offline_config("")).unwrap();
        assert_eq!(plain["check_for_update_on_startup"].as_bool(), Some(false));
        assert_eq!(plain["analytics"]["enabled"].as_bool(), Some(false));
        assert_eq!(plain["otel"]["metrics_exporter"].as_str(), Some("none"));
        for f in ["plugins", "apps", "remote_plugin"] {
            assert_eq!(plain["features"][f].as_bool(), Some(false), "{f}");
        }
        assert!(!plain.contains_key("model_provider") && !plain.contains_key("chatgpt_base_url"));
        for base in ["http://127.0.0.1:9/", "http://127.0.0.1:9/backend-api", "http://127.0.0.1:9/backend-api/"] {
            let t: toml::Table = toml::from_str(&offline_config(base)).unwrap();
            assert_eq!(t["chatgpt_base_url"].as_str(), Some("http://127.0.0.1:9/backend-api/"), "{base}");
            let name = t["model_provider"].as_str().unwrap();
            let p = &t["model_providers"][name];
            assert_eq!(p["base_url"].as_str(), Some("http://127.0.0.1:9/backend-api/codex"));
            assert_eq!(p["requires_openai_auth"].as_bool(), Some(true));
            assert_eq!(p["supports_websockets"].as_bool(), Some(false));
        }
        // A quote in the URL cannot break out of the TOML string.
        let t: toml::Table = toml::from_str(&offline_config("https://h\"\nx = 1")).unwrap();
        assert!(!t.contains_key("x"));
    }

    #[test]
    fn child_env_is_exactly_the_contract() {
        let env = child_env(Path::new("/tmp/h"), DEFAULT_TOKEN_URL);
        let keys: Vec<_> = env.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["HOME", "CODEX_HOME", "CODEX_SYNC_OPTIONAL", "CODEX_SYNC_BAKED", "PATH"]);
        assert_eq!(env[1].1, "/tmp/h/.codex");
        let env = child_env(Path::new("/tmp/h"), "http://127.0.0.1:9/oauth/token");
        assert_eq!(env.last().unwrap(), &(TOKEN_URL_ENV, OsString::from("http://127.0.0.1:9/oauth/token")));
    }

    #[test]
    fn auth_change_rules() {
        let before = parse(&auth("rt1", "acct", "2026-01-01T00:00:00Z"));
        assert_eq!(compare(&before, Some(&auth("rt1", "acct", "2026-01-01T00:00:00Z"))), AuthChange::Unchanged);
        assert!(matches!(
            compare(&before, Some(&auth("rt2", "acct", "2026-01-02T00:00:00Z"))),
            AuthChange::Refreshed(_)
        ));
        assert!(matches!(
            compare(&before, Some(&auth("rt1", "acct", "2026-01-02T00:00:00Z"))),
            AuthChange::Refreshed(_)
        ));
        // An older last_refresh with the same token is not an update.
        assert_eq!(compare(&before, Some(&auth("rt1", "acct", "2025-01-01T00:00:00Z"))), AuthChange::Unchanged);
        assert_eq!(compare(&before, Some(&auth("rt2", "other", "2026-01-02T00:00:00Z"))), AuthChange::OtherAccount);
        assert_eq!(compare(&before, Some(b"{not json")), AuthChange::Unreadable);
        assert_eq!(compare(&before, None), AuthChange::Unreadable);
    }

    #[test]
    fn backend_urls_accept_origin_or_backend_api() {
        assert_eq!(backend_urls(""), None);
        assert_eq!(backend_urls("/"), None);
        assert_eq!(
            backend_urls("https://chatgpt.com/backend-api/"),
            Some(("https://chatgpt.com/backend-api/".into(), "https://chatgpt.com/backend-api/codex".into()))
        );
    }

    #[test]
    fn stale_names_and_ansi() {
        assert!(is_home_of("codex-auth-agent-1000-00ff", 1000));
        assert!(!is_home_of("codex-auth-agent-10000-00ff", 1000));
        assert!(!is_home_of("codex-auth-agent-1000-", 1000));
        assert!(!is_home_of("other", 1000));
        assert_eq!(strip_ansi("\u{1b}[31mERROR\u{1b}[0m x \u{1b}[2m"), "ERROR x ");
    }

    #[test]
    fn temp_home_is_private_and_removed() {
        let t = tempfile::tempdir().unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        let root = {
            let h = TempHome::create(t.path(), uid).unwrap();
            h.install(b"{}", "x = 1\n").unwrap();
            let root = h.root().to_path_buf();
            assert_eq!(std::fs::metadata(&root).unwrap().mode() & 0o777, 0o700);
            assert_eq!(std::fs::metadata(root.join(".codex/auth.json")).unwrap().mode() & 0o777, 0o600);
            assert_eq!(h.read_auth().unwrap(), b"{}");
            // In use: not stale even when old.
            let later = now() + chrono::Duration::hours(1);
            assert_eq!(remove_stale(t.path(), uid, later), 0);
            root
        };
        assert!(!root.exists(), "removed on drop");
    }

    #[test]
    fn stale_homes_are_removed_only_when_old_and_unlocked() {
        let t = tempfile::tempdir().unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        let stale = t.path().join(format!("{HOME_PREFIX}{uid}-abc"));
        std::fs::create_dir_all(stale.join(".codex/ro")).unwrap();
        std::fs::write(stale.join(".codex/auth.json"), "x").unwrap();
        std::fs::set_permissions(stale.join(".codex/ro"), std::fs::Permissions::from_mode(0o500)).unwrap();
        let other = t.path().join(format!("{HOME_PREFIX}{}-abc", uid + 1));
        std::fs::create_dir(&other).unwrap();
        let now = now();
        assert_eq!(remove_stale(t.path(), uid, now), 0, "too young");
        assert_eq!(remove_stale(t.path(), uid, now + chrono::Duration::hours(1)), 1);
        assert!(!stale.exists());
        std::fs::create_dir(&stale).unwrap();
        assert_eq!(remove_stale(t.path(), uid, now - chrono::Duration::days(30)), 1, "left before a step back");
        assert!(!stale.exists());
        assert!(other.exists(), "another uid's name is left alone");
    }

    #[test]
    fn temp_dir_must_be_safe() {
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = TempHome::create(t.path(), nix::unistd::geteuid().as_raw()).err().unwrap();
        assert!(e.reason.contains("sticky"), "{}", e.reason);
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(TempHome::create(t.path(), nix::unistd::geteuid().as_raw()).is_ok());
    }

    #[test]
    fn resolve_bin_by_path_or_name() {
        assert!(resolve_bin("/bin/sh", None).is_ok());
        assert_eq!(resolve_bin("sh", Some("/nonexistent:/bin".as_ref())).unwrap(), PathBuf::from("/bin/sh"));
        let e = resolve_bin("no-such-codex", Some("/bin".as_ref())).unwrap_err();
        assert!(e.reason.contains("agent.codex_bin"), "{}", e.reason);
        assert!(resolve_bin("/etc/passwd", None).is_err(), "not executable");
    }

    #[test]
    fn an_npm_launcher_resolves_to_the_native_binary() {
        let t = tempfile::tempdir().unwrap();
        let nm = t.path().join("lib/node_modules");
        let script = nm.join("@openai/codex/bin/codex.js");
        std::fs::create_dir_all(script.parent().unwrap()).unwrap();
        std::fs::write(&script, "#!/usr/bin/env node\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = t.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(&script, bin.join("codex")).unwrap();
        // No platform package: the launcher itself.
        assert_eq!(resolve_bin("codex", Some(bin.as_os_str())).unwrap(), bin.join("codex"));
        let (platform, triple) = match std::env::consts::ARCH {
            "aarch64" => ("codex-linux-arm64", "aarch64-unknown-linux-musl"),
            _ => ("codex-linux-x64", "x86_64-unknown-linux-musl"),
        };
        let native = nm.join("@openai").join(platform).join("vendor").join(triple).join("bin/codex");
        std::fs::create_dir_all(native.parent().unwrap()).unwrap();
        std::fs::write(&native, "").unwrap();
        std::fs::set_permissions(&native, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(resolve_bin("codex", Some(bin.as_os_str())).unwrap(), native);
    }
}
