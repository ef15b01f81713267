//! Local seeds: an operator drops a fresh auth.json (from `codex login`) at the account's
//! seed path and we install it. A seed is applied once, remembered by its sha256: an old
//! seed's refresh token is spent after our first refresh, so re-applying it over a rotated
//! credential would kill the account; a NEW seed (different hash) is an operator re-login
//! and replaces whatever is there.

use crate::authfile::{AuthFile, sha256_hex};
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A seed handed to the worker (through its stdin, never argv or env).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedInput {
    /// base64 of the seed file's bytes.
    pub b64: String,
    pub sha256: String,
    /// Not applied before (its hash differs from the last applied one).
    pub is_new: bool,
}

impl std::fmt::Debug for SeedInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeedInput").field("sha256", &self.sha256).field("is_new", &self.is_new).finish()
    }
}

impl SeedInput {
    /// An auth.json handed over whole (Store, fleet): counts as new.
    pub fn from_bytes(bytes: &[u8]) -> SeedInput {
        SeedInput {
            b64: base64::engine::general_purpose::STANDARD.encode(bytes),
            sha256: crate::authfile::sha256_hex(bytes),
            is_new: true,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(&self.b64).unwrap_or_default()
    }
}

/// Read the seed at `path` if there is one. `applied` is the hash of the seed applied
/// last. Problems are warnings: a broken seed must not stop refreshing a good auth.json.
pub fn load(path: &Path, applied: Option<&str>) -> Result<Option<SeedInput>, String> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("seed {}: cannot be read: {e}", path.display())),
    };
    if !meta.file_type().is_file() {
        return Err(format!("seed {}: is not a regular file; ignored", path.display()));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "seed {}: is readable by group or others (mode {:o}); chmod 600 it — ignored until then",
            path.display(),
            meta.mode() & 0o777
        ));
    }
    if meta.len() > crate::authfile::MAX_AUTH_BYTES {
        return Err(format!("seed {}: is larger than 1 MiB; ignored", path.display()));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("seed {}: cannot be read: {e}", path.display()))?;
    AuthFile::parse(&bytes, path).map_err(|e| format!("seed {e}; ignored"))?;
    let sha256 = sha256_hex(&bytes);
    let is_new = applied != Some(sha256.as_str());
    Ok(Some(SeedInput { is_new, ..SeedInput::from_bytes(&bytes) }))
}

/// What the current auth.json looks like, for the seed decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Current {
    Usable,
    Missing,
    Invalid,
}

/// What to do about the seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Install the seed as auth.json.
    Install,
    /// Keep auth.json as it is.
    Keep,
    /// auth.json is missing or unusable and there is no usable seed.
    NoCredential,
}

/// Pure: decide what to do with the seed.
pub fn plan(current: Current, seed: Option<&SeedInput>) -> Plan {
    match (current, seed) {
        (_, Some(s)) if s.is_new => Plan::Install,
        (Current::Usable, _) => Plan::Keep,
        (Current::Missing | Current::Invalid, _) => Plan::NoCredential,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn seed(is_new: bool) -> SeedInput {
        SeedInput { b64: String::new(), sha256: "x".into(), is_new }
    }

    #[test]
    fn plan_table() {
        use Current::*;
        assert_eq!(plan(Usable, None), Plan::Keep);
        assert_eq!(plan(Usable, Some(&seed(false))), Plan::Keep);
        assert_eq!(plan(Usable, Some(&seed(true))), Plan::Install);
        assert_eq!(plan(Missing, Some(&seed(true))), Plan::Install);
        assert_eq!(plan(Invalid, Some(&seed(true))), Plan::Install);
        assert_eq!(plan(Missing, Some(&seed(false))), Plan::NoCredential);
        assert_eq!(plan(Missing, None), Plan::NoCredential);
        assert_eq!(plan(Invalid, None), Plan::NoCredential);
    }

    #[test]
    fn load_checks_mode_and_content_and_hash() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("a.json");
        assert!(load(&p, None).unwrap().is_none());
        std::fs::write(&p, br#"{"OPENAI_API_KEY":"sk-SECRET"}"#).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(&p, None).unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = load(&p, None).unwrap().unwrap();
        assert!(s.is_new);
        assert_eq!(s.bytes(), br#"{"OPENAI_API_KEY":"sk-SECRET"}"#);
        assert!(!format!("{s:?}").contains("SECRET"));
        assert!(!load(&p, Some(&s.sha256)).unwrap().unwrap().is_new);
        std::fs::write(&p, b"not json SECRET").unwrap();
        let e = load(&p, None).unwrap_err();
        assert!(e.contains("ignored") && !e.contains("SECRET"), "{e}");
    }
}
