//! `codex-auth-agent login` (what `codex-authctl login <account>` runs): Codex's own
//! device-code login (`codex login --device-auth`) for one configured account, as the
//! account's Unix user in a private throwaway home, its output relayed to the caller's
//! terminal (stderr); the auth.json Codex writes there is the result, which codex-authctl
//! hands to the daemon's Store — the one commit path (locks, atomic write, status, journal,
//! quarantine lifted, fleet upload).
//!
//! Why in the caller and not inside the daemon: the login is interactive and lives exactly
//! as long as the operator's terminal — Ctrl-C or a vanished caller ends it, nothing is left
//! running in the daemon — and the URL and one-time code only ever travel from Codex's
//! stdout to that terminal (never a D-Bus message, the journal or argv).

use super::codexrun::{self, MINIMAL_PATH};
use crate::config::{AccountSettings, Settings};
use crate::core::authfile::{AuthFile, MAX_AUTH_BYTES};
use crate::core::contract::{AUTH_FILE, DEFAULT_TOKEN_URL, HOME_PREFIX};
use crate::core::task::Identity;
use crate::sys::safedir::SafeDir;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Codex's own limit for a device code (it stops polling after 15 minutes).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// How a login ended without a credential to install.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginError {
    /// Setup failed (user, directories, Codex missing): the message says what to fix.
    Setup(String),
    /// Codex exited without writing a login (denied, expired code, network).
    Codex(String),
    TimedOut(Duration),
    Cancelled,
}

impl std::fmt::Display for LoginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginError::Setup(m) => write!(f, "{m}"),
            LoginError::Codex(m) => write!(f, "codex login failed: {m}; nothing was installed"),
            LoginError::TimedOut(d) => write!(
                f,
                "no approval within {}: the login was cancelled, nothing was installed; run it again",
                humantime::format_duration(*d)
            ),
            LoginError::Cancelled => write!(f, "cancelled: nothing was installed"),
        }
    }
}

/// Codex's issuer for a token URL (`https://auth.openai.com/oauth/token` → its origin);
/// None for the default issuer, which Codex knows itself.
pub fn issuer_for(token_url: &str) -> Option<String> {
    if token_url.is_empty() || token_url == DEFAULT_TOKEN_URL {
        return None;
    }
    let t = token_url.trim_end_matches('/');
    Some(t.strip_suffix("/oauth/token").unwrap_or(t).to_string())
}

/// The throwaway home's config: Codex's offline-clean settings, and the file store, so the
/// login lands in auth.json (not the keyring) where we can take it.
fn login_config(base_url: &str) -> String {
    format!("cli_auth_credentials_store = \"file\"\n{}", codexrun::offline_config(base_url))
}

/// A throwaway HOME for `id` (`<temp>/codex-auth-agent-<uid>-<random>`, 0700, the user's),
/// removed on drop; named like the preflight's so a leftover is cleaned the same way.
struct LoginHome {
    root: PathBuf,
}

impl LoginHome {
    fn create(temp_dir: &Path, id: &Identity, config: &str) -> Result<LoginHome, LoginError> {
        let setup = |what: &str, e: std::io::Error| LoginError::Setup(format!("cannot prepare {what}: {e}"));
        let root = temp_dir.join(format!("{HOME_PREFIX}{}-{:016x}", id.uid, fastrand::u64(..)));
        std::fs::DirBuilder::new().mode(0o700).create(&root).map_err(|e| setup(&root.display().to_string(), e))?;
        let home = LoginHome { root };
        let codex = home.codex_dir();
        std::fs::DirBuilder::new().mode(0o700).create(&codex).map_err(|e| setup(".codex", e))?;
        let cfg = codex.join("config.toml");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&cfg)
            .and_then(|mut f| f.write_all(config.as_bytes()))
            .map_err(|e| setup("config.toml", e))?;
        // Created by us (root) with nobody else inside: hand the three to the user.
        for p in [&home.root, &codex, &cfg] {
            std::os::unix::fs::lchown(p, Some(id.uid), Some(id.gid)).map_err(|e| setup("the throwaway home", e))?;
        }
        Ok(home)
    }

    fn codex_dir(&self) -> PathBuf {
        self.root.join(".codex")
    }

    /// The auth.json Codex wrote, read safely (owned by the user, no symlink, bounded).
    fn auth(&self, uid: u32) -> Option<Vec<u8>> {
        let dir = SafeDir::open(&self.codex_dir(), uid).ok()?;
        dir.read(AUTH_FILE).ok().flatten().map(|f| f.bytes).filter(|b| b.len() as u64 <= MAX_AUTH_BYTES)
    }
}

impl Drop for LoginHome {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            eprintln!("codex-authctl: could not remove the throwaway home {}: {e}", self.root.display());
        }
    }
}

/// Copy Codex's output to our stderr as it comes (the URL and the code must appear at
/// once); our stdout is for the result alone.
fn relay(mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = std::io::stderr().write_all(&buf[..n]).and_then(|_| std::io::stderr().flush());
        }
    })
}

/// Run `codex login --device-auth` for `acct` as its user and return the auth.json it
/// wrote. `cancel` (Ctrl-C) or `timeout` kill Codex's whole process group; the throwaway
/// home is removed on every path.
pub fn device_login(
    settings: &Settings,
    acct: &AccountSettings,
    timeout: Duration,
    cancel: &AtomicBool,
) -> Result<Vec<u8>, LoginError> {
    let id = Identity::lookup(&acct.user)
        .map_err(|e| LoginError::Setup(format!("account {}: user {}: {e}", acct.name, acct.user)))?;
    let bin = codexrun::resolve_bin(&settings.agent.codex_bin, std::env::var_os("PATH").as_deref())
        .map_err(|f| LoginError::Setup(f.reason))?;
    let temp_dir = std::env::temp_dir();
    codexrun::remove_stale(&temp_dir, id.uid, crate::core::clock::Clock::now(&crate::core::clock::SystemClock));
    let home = LoginHome::create(&temp_dir, &id, &login_config(&acct.refresh.codex_base_url))?;
    let mut cmd = Command::new(&bin);
    cmd.args(["login", "--device-auth"]);
    if let Some(issuer) = issuer_for(&acct.refresh.token_url) {
        cmd.args(["--experimental_issuer", &issuer]);
    }
    cmd.env_clear()
        .envs(codexrun::child_env(&home.root, &acct.refresh.token_url))
        .env("PATH", MINIMAL_PATH)
        .current_dir(&home.root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .uid(id.uid)
        .gid(id.gid)
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; the closure touches no memory of the parent.
    // A Codex orphaned by a killed codex-authctl dies with it (its group escapes ours).
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| LoginError::Setup(format!("cannot start {}: {e}", bin.display())))?;
    let out = relay(child.stdout.take().expect("piped"));
    let err = relay(child.stderr.take().expect("piped"));
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let t0 = Instant::now();
    let ended = loop {
        if let Some(status) = child.try_wait().map_err(|e| LoginError::Setup(e.to_string()))? {
            break Ok(status);
        }
        let stop = if cancel.load(Ordering::SeqCst) {
            Some(LoginError::Cancelled)
        } else if t0.elapsed() >= timeout {
            Some(LoginError::TimedOut(timeout))
        } else {
            None
        };
        if let Some(why) = stop {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            break Err(why);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Whatever Codex left running in its group goes too.
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = (out.join(), err.join());
    let status = ended?;
    if !status.success() {
        return Err(LoginError::Codex(format!("codex exited with {status}")));
    }
    let bytes = home.auth(id.uid).ok_or_else(|| LoginError::Codex("Codex wrote no auth.json".into()))?;
    AuthFile::parse(&bytes, &home.codex_dir().join(AUTH_FILE))
        .map_err(|e| LoginError::Codex(format!("the auth.json Codex wrote is unusable: {e}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_is_the_token_urls_origin_and_absent_for_openai() {
        assert_eq!(issuer_for(DEFAULT_TOKEN_URL), None);
        assert_eq!(issuer_for(""), None);
        assert_eq!(issuer_for("http://127.0.0.1:9/oauth/token").as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(issuer_for("https://sso.example/auth/oauth/token/").as_deref(), Some("https://sso.example/auth"));
    }

    #[test]
    fn the_login_config_uses_the_file_store() {
        let c: toml::Table = toml::from_str(&login_config("")).unwrap();
        assert_eq!(c["cli_auth_credentials_store"].as_str(), Some("file"));
        assert_eq!(c["check_for_update_on_startup"].as_bool(), Some(false));
    }
}
