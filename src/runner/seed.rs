//! Reading an operator's seed file (root-only, outside any user's home) into a
//! [`SeedInput`] for the worker; what to do with it is `core::seed::plan`.

use crate::core::authfile::{AuthFile, sha256_hex};
use crate::core::seed::SeedInput;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Read the seed at `path` if there is one. `applied`: the hashes of the seed applied
/// last as recorded (status.json and the durable `seed-applied`; either one matching
/// means applied). Problems are warnings: a broken seed must not stop refreshing a good
/// auth.json.
pub fn load(path: &Path, applied: &[Option<&str>]) -> Result<Option<SeedInput>, String> {
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
    if meta.len() > crate::core::authfile::MAX_AUTH_BYTES {
        return Err(format!("seed {}: is larger than 1 MiB; ignored", path.display()));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("seed {}: cannot be read: {e}", path.display()))?;
    AuthFile::parse(&bytes, path).map_err(|e| format!("seed {e}; ignored"))?;
    let sha256 = sha256_hex(&bytes);
    let is_new = !applied.contains(&Some(sha256.as_str()));
    Ok(Some(SeedInput { is_new, ..SeedInput::from_bytes(&bytes) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn load_checks_mode_and_content_and_hash() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("a.json");
        assert!(load(&p, &[]).unwrap().is_none());
        std::fs::write(&p, br#"{"OPENAI_API_KEY":"sk-SECRET"}"#).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(&p, &[None]).unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = load(&p, &[None, Some("another")]).unwrap().unwrap();
        assert!(s.is_new);
        assert_eq!(s.bytes(), br#"{"OPENAI_API_KEY":"sk-SECRET"}"#);
        assert!(!format!("{s:?}").contains("SECRET"));
        assert!(!load(&p, &[Some(&s.sha256)]).unwrap().unwrap().is_new);
        assert!(!load(&p, &[None, Some(&s.sha256)]).unwrap().unwrap().is_new, "either record is enough");
        std::fs::write(&p, b"not json SECRET").unwrap();
        let e = load(&p, &[]).unwrap_err();
        assert!(e.contains("ignored") && !e.contains("SECRET"), "{e}");
    }
}
