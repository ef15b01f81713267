//! Unix users: looking one up, and dropping root to one for good.

use super::process::harden_process;
use crate::core::task::Identity;
use nix::unistd::{Gid, Uid, User};
use std::ffi::CString;

impl Identity {
    pub fn lookup(user: &str) -> Result<Identity, String> {
        match User::from_name(user) {
            Ok(Some(u)) => Ok(Identity { user: u.name, uid: u.uid.as_raw(), gid: u.gid.as_raw(), home: u.dir }),
            Ok(None) => Err(format!("user {user:?} does not exist; create it or fix `user` in the config")),
            Err(e) => Err(format!("looking up user {user:?} failed: {e}")),
        }
    }

    /// Whoever this process runs as.
    pub fn current() -> Result<Identity, String> {
        let uid = nix::unistd::geteuid();
        match User::from_uid(uid) {
            Ok(Some(u)) => Ok(Identity { user: u.name, uid: u.uid.as_raw(), gid: u.gid.as_raw(), home: u.dir }),
            _ => Err(format!("uid {uid} has no passwd entry")),
        }
    }
}

/// `id`'s supplementary groups, as initgroups would set them (every NSS source).
pub fn groups_of(id: &Identity) -> Result<Vec<u32>, String> {
    let name = CString::new(id.user.as_str()).map_err(|_| "user name contains NUL".to_string())?;
    let groups = nix::unistd::getgrouplist(&name, Gid::from_raw(id.gid))
        .map_err(|e| format!("getgrouplist({}) failed: {e}", id.user))?;
    Ok(groups.into_iter().map(Gid::as_raw).collect())
}

/// Drop root to `id` for good, and prove it cannot be undone. `groups`: the supplementary
/// groups ([`groups_of`], resolved by the caller), or None to resolve them here.
pub fn drop_privileges(id: &Identity, groups: Option<&[u32]>) -> Result<(), String> {
    // Already exactly that user (a daemon running as the account's own user): nothing to drop.
    if id.uid != 0 && nix::unistd::getuid().as_raw() == id.uid && nix::unistd::geteuid().as_raw() == id.uid {
        harden_process();
        return Ok(());
    }
    let (uid, gid) = (Uid::from_raw(id.uid), Gid::from_raw(id.gid));
    let groups: Vec<Gid> = match groups {
        Some(g) => g.to_vec(),
        None => groups_of(id)?,
    }
    .into_iter()
    .map(Gid::from_raw)
    .collect();
    nix::unistd::setgroups(&groups).map_err(|e| format!("setgroups({}) failed: {e}", id.user))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setresgid({gid}) failed: {e}"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setresuid({uid}) failed: {e}"))?;
    let r = nix::unistd::getresuid().map_err(|e| e.to_string())?;
    let g = nix::unistd::getresgid().map_err(|e| e.to_string())?;
    if [r.real, r.effective, r.saved] != [uid; 3] || [g.real, g.effective, g.saved] != [gid; 3] {
        return Err("privilege drop did not take effect".into());
    }
    if id.uid != 0 && (nix::unistd::setuid(Uid::from_raw(0)).is_ok() || nix::unistd::setgid(Gid::from_raw(0)).is_ok()) {
        return Err("privilege drop is reversible; refusing to continue".into());
    }
    // setuid resets dumpability to the sysctl default; make sure it is off.
    harden_process();
    Ok(())
}
