//! Checks of configured paths against the machine: hook programs an attacker could swap,
//! Codex homes in system or agent directories or owned by someone else. Each returns the
//! problem and its fix as a sentence; the validator adds the file and the key.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// System and agent directories a codex_home must not be in: the service cannot write
/// them (ProtectSystem=strict), a login there would be readable or replaceable by the
/// system's own tools, and /tmp, /var/tmp are private to the service (PrivateTmp=yes),
/// so the user's file there is never the one the service sees; /dev/shm likewise
/// (PrivateDevices=yes gives the service its own), while a one-shot or test run may use it.
const SYSTEM_DIRS: [&str; 12] =
    ["/etc", "/usr", "/boot", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sys", "/dev"];
const TMP_DIRS: [&str; 3] = ["/tmp", "/var/tmp", "/dev/shm"];

/// Who may own a hook and the directories above it: root, and the agent's own user when
/// it does not run as root (a file it owns gives it nothing it does not have).
fn trusted(uid: u32, euid: u32) -> bool {
    uid == 0 || uid == euid
}

/// Why `prog` (an absolute hook program) is unsafe to run as every account's user, with the
/// fix; None when it is a regular executable file that only root (or the agent's own user)
/// can change, in directories that only they can change — the rule cron and sudo apply.
/// A world-writable hook would let any local user run code as the accounts' users.
pub fn hook_problem(prog: &Path, euid: u32) -> Option<String> {
    let real = match std::fs::canonicalize(prog) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!("{} does not exist; install it there or remove the key", prog.display()));
        }
        Err(e) => return Some(format!("{} cannot be checked: {e}", prog.display())),
    };
    let shown =
        if real == prog { prog.display().to_string() } else { format!("{} (→ {})", prog.display(), real.display()) };
    let md = match std::fs::metadata(&real) {
        Ok(m) => m,
        Err(e) => return Some(format!("{shown} cannot be checked: {e}")),
    };
    if !md.is_file() {
        return Some(format!("{shown} is not a regular file; point the key at the program itself"));
    }
    if !trusted(md.uid(), euid) {
        return Some(format!(
            "{shown} is owned by uid {}: a hook runs as every account's user, so only root may be able to change \
             it; fix: chown root:root {}",
            md.uid(),
            real.display()
        ));
    }
    if md.mode() & 0o022 != 0 {
        return Some(format!(
            "{shown} is writable by group or others (mode {:04o}): anyone who can write it runs code as every \
             account's user; fix: chmod go-w {}",
            md.mode() & 0o7777,
            real.display()
        ));
    }
    if md.mode() & 0o111 == 0 {
        return Some(format!("{shown} is not executable; fix: chmod 755 {}", real.display()));
    }
    // Every directory above it: whoever can write one can rename the hook away and put
    // another in its place. A sticky directory (/tmp) only lets an entry's owner do that.
    let mut child = real.clone();
    for dir in real.ancestors().skip(1) {
        let Ok(d) = std::fs::metadata(dir) else { break };
        let child_owner = std::fs::symlink_metadata(&child).map(|m| m.uid()).unwrap_or(u32::MAX);
        let open = d.mode() & 0o022 != 0;
        let sticky_guarded = d.mode() & 0o1000 != 0 && trusted(child_owner, euid);
        if !trusted(d.uid(), euid) || (open && !sticky_guarded) {
            return Some(format!(
                "{shown} is in {}, which {} (owner uid {}, mode {:04o}): they could replace the hook; move it to a \
                 root-owned directory such as /usr/local/bin, or fix: chown root {1} && chmod go-w {1}",
                dir.display(),
                if open { "others can write" } else { "is not owned by root" },
                d.uid(),
                d.mode() & 0o7777,
            ));
        }
        child = dir.to_path_buf();
    }
    None
}

/// Why `home` can never be the codex_home of `user`, with the fix. `agent_dirs`: the
/// agent's state and config directories; `service`: the config is the packaged service's
/// (its state directory is the unit's StateDirectory=), whose /tmp is private.
pub fn home_problem(home: &Path, user: &str, agent_dirs: &[PathBuf], service: bool) -> Option<String> {
    if let Some(why) = crate::core::sandbox::unit_word_problem(home) {
        return Some(format!(
            "{} {why}: the service's sandbox settings cannot name it; use a path without it",
            home.display()
        ));
    }
    // The path as written and where its symlinks lead.
    let real = std::fs::canonicalize(home).ok();
    for p in std::iter::once(home).chain(real.as_deref()) {
        if p == Path::new("/") {
            return Some("/ is not a Codex home; use the user's own directory, e.g. ~USER/.codex".into());
        }
        let tmp = TMP_DIRS.iter().filter(|_| service);
        let shm = Path::new("/dev/shm");
        let system = SYSTEM_DIRS.iter().filter(|d| !(p.starts_with(shm) && **d == "/dev"));
        if let Some(d) = tmp.chain(system).find(|d| p.starts_with(d)) {
            return Some(format!(
                "{} is in the system directory {d}; a Codex home belongs to its user: use e.g. ~{user}/.codex or \
                 /srv/{user}/.codex{}",
                p.display(),
                if TMP_DIRS.contains(d) {
                    format!(" (the service has a private {d}: it would never see this one)")
                } else {
                    String::new()
                }
            ));
        }
        if let Some(d) = agent_dirs.iter().find(|d| p.starts_with(d) || d.starts_with(p)) {
            return Some(format!(
                "{} overlaps the agent's own directory {}; use the user's own directory, e.g. ~{user}/.codex",
                p.display(),
                d.display()
            ));
        }
    }
    None
}

/// Why an existing `home` cannot be used by `user` (uid `uid`) today: another owner, or
/// a mode that locks its owner out.
pub fn home_owner_problem(home: &Path, user: &str, uid: u32) -> Option<String> {
    let md = std::fs::metadata(home).ok()?;
    if md.uid() != uid {
        let owner = nix::unistd::User::from_uid(md.uid().into())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| md.uid().to_string());
        return Some(format!(
            "{} is owned by {owner}, not by {user} (this account's user): the worker runs as {user}; set user = \
             \"{owner}\", or fix: chown -R {user} {}",
            home.display(),
            home.display()
        ));
    }
    if md.mode() & 0o700 != 0o700 {
        return Some(format!(
            "{} has mode {:04o}: its owner {user} cannot read and write it; fix: chmod 700 {}",
            home.display(),
            md.mode() & 0o7777,
            home.display()
        ));
    }
    None
}
