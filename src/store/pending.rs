//! A new credential the token endpoint gave us that is not yet in auth.json. After a
//! successful POST the old refresh token is spent and the new tokens are the only live
//! credential in the world, so they are kept durably before the commit is tried:
//! `state_dir/accounts/<name>/pending.json` (the caller's side: root-only under the
//! packaged service, the user's state dir in single-user mode; 0600, fsync). The next run
//! writes it into auth.json before anything else and never sends the old token again.
//! Space for it is reserved before the POST, like the temp file of auth.json itself.

use crate::core::pending::PendingCredential;
use crate::store::status;
use crate::sys::safedir::{Reserved, SafeDir};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

pub const PENDING_FILE: &str = "pending.json";

pub fn path(state_dir: &Path, account: &str) -> PathBuf {
    status::account_dir(state_dir, account).join(PENDING_FILE)
}

/// The kept credential of `account`, if any. A file that cannot be read or parsed is an
/// error (it may hold the only live token: never ignored silently).
pub fn load(state_dir: &Path, account: &str) -> Result<Option<PendingCredential>, String> {
    let p = path(state_dir, account);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", p.display())),
    };
    match serde_json::from_slice::<PendingCredential>(&bytes) {
        Ok(c) if !c.bytes().is_empty() => Ok(Some(c)),
        _ => Err(format!(
            "{} is not a pending credential written by this agent; move it away if auth.json holds a working login",
            p.display()
        )),
    }
}

/// Drop the kept copy once auth.json holds it (or a newer login replaced it).
pub fn clear(state_dir: &Path, account: &str) {
    let p = path(state_dir, account);
    // Without a directory fsync: a power cut may bring the copy back, and the next run then
    // finds auth.json already holding it and drops it again (`finish_pending`); the fsync
    // was one of a refresh's seven.
    match std::fs::remove_file(&p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(account = %account, "could not remove {}: {e}", p.display()),
    }
}

/// This process's memory of kept credentials: the daemon lives on between runs, so a
/// credential it received survives here even when pending.json could not be written.
#[derive(Default)]
pub struct Held(Mutex<BTreeMap<String, PendingCredential>>);

impl Held {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PendingCredential>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The kept credential of `account`: the durable copy, else this process's memory.
/// An unreadable copy counts as none here; `Keeper::reserve` refuses to spend a token
/// while it exists.
pub fn current(state_dir: &Path, held: &Held, account: &str) -> Option<PendingCredential> {
    load(state_dir, account).ok().flatten().or_else(|| held.map().get(account).cloned())
}

/// After a run whose worker said what is left (`pending_left`): drop both copies once
/// auth.json holds the credential; keep the one in memory while it does not.
pub fn settle(state_dir: &Path, held: &Held, account: &str, keeper: &Keeper, pending_left: Option<bool>) {
    let mut held = held.map();
    match pending_left {
        Some(false) => {
            held.remove(account);
            clear(state_dir, account);
        }
        _ => {
            if let Some(p) = keeper.kept() {
                held.insert(account.to_string(), p);
            }
            if held.contains_key(account) && !path(state_dir, account).exists() {
                tracing::error!(
                    account = %account,
                    "a new credential could not be written to auth.json nor kept in {}; only this process's \
                        memory holds it: if the agent stops before the next run writes it, a new login is needed \
                        (codex login --device-auth)",
                    status::account_dir(state_dir, account).display()
                );
            }
        }
    }
}

/// Room for a pending copy at most this large (auth.json is capped at 1 MiB; the copy is
/// its base64 plus a few fields).
fn reservation(auth_len: u64) -> u64 {
    (auth_len * 2 + 4096).min(2 * crate::core::authfile::MAX_AUTH_BYTES)
}

/// The caller's side of one run: reserves room for the pending copy before the POST,
/// writes it after, and remembers it in memory too (the daemon keeps it across runs).
pub struct Keeper {
    state_dir: PathBuf,
    account: String,
    reserved: Mutex<Option<Reserved>>,
    kept: Mutex<Option<PendingCredential>>,
}

impl Keeper {
    pub fn new(state_dir: &Path, account: &str) -> Keeper {
        Keeper {
            state_dir: state_dir.to_path_buf(),
            account: account.to_string(),
            reserved: Mutex::new(None),
            kept: Mutex::new(None),
        }
    }

    /// Before the POST: make sure a copy of up to `auth_len` bytes of auth.json can be
    /// kept. Refused while an earlier copy exists that cannot be read (it may hold the
    /// only live token).
    pub fn reserve(&self, auth_len: u64) -> Result<(), String> {
        load(&self.state_dir, &self.account)?;
        let dir =
            SafeDir::create_private(&status::account_dir(&self.state_dir, &self.account)).map_err(|e| e.to_string())?;
        dir.remove_stale_temps(PENDING_FILE);
        let r = dir.reserve(PENDING_FILE, reservation(auth_len)).map_err(|e| e.to_string())?;
        *self.reserved.lock().unwrap_or_else(PoisonError::into_inner) = Some(r);
        Ok(())
    }

    /// After the POST: keep `p` in memory and durably; the path written, or why not.
    pub fn keep(&self, p: &PendingCredential) -> Result<PathBuf, String> {
        *self.kept.lock().unwrap_or_else(PoisonError::into_inner) = Some(p.clone());
        let bytes = serde_json::to_vec(p).unwrap_or_default();
        let target = path(&self.state_dir, &self.account);
        let reserved = self.reserved.lock().unwrap_or_else(PoisonError::into_inner).take();
        let written = match reserved {
            Some(r) => r.replace(&bytes),
            None => SafeDir::create_private(&status::account_dir(&self.state_dir, &self.account))
                .and_then(|d| d.write_atomic(PENDING_FILE, &bytes)),
        };
        written.map(|()| target).map_err(|e| e.to_string())
    }

    /// What this run handed over, if anything (for the daemon's memory).
    pub fn kept(&self) -> Option<PendingCredential> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn kept_copy_round_trips_private_and_clears() {
        let t = tempfile::tempdir().unwrap();
        let k = Keeper::new(t.path(), "alice");
        k.reserve(300).unwrap();
        let p = PendingCredential::new("abc".into(), b"{\"tokens\":{}}", DateTime::UNIX_EPOCH, None);
        let written = k.keep(&p).unwrap();
        assert_eq!(std::fs::metadata(&written).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load(t.path(), "alice").unwrap(), Some(p.clone()));
        assert_eq!(k.kept(), Some(p));
        assert!(!format!("{:?}", k.kept()).contains("tokens"), "Debug redacts the credential");
        clear(t.path(), "alice");
        assert_eq!(load(t.path(), "alice").unwrap(), None);
        let dir = status::account_dir(t.path(), "alice");
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0, "no temp left behind");
    }

    #[test]
    fn a_reservation_that_is_not_used_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let k = Keeper::new(t.path(), "bob");
        k.reserve(300).unwrap();
        drop(k);
        assert_eq!(std::fs::read_dir(status::account_dir(t.path(), "bob")).unwrap().count(), 0);
    }

    #[test]
    fn a_corrupt_copy_is_an_error_not_nothing() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(status::account_dir(t.path(), "c")).unwrap();
        std::fs::write(path(t.path(), "c"), b"garbage").unwrap();
        let e = load(t.path(), "c").unwrap_err();
        assert!(e.contains("pending.json") && e.contains("move it away"), "{e}");
    }
}
