//! Local seeds: an operator drops a fresh auth.json (from `codex login`) at the account's
//! seed path and we install it. A seed is applied once, remembered by its sha256: an old
//! seed's refresh token is spent after our first refresh, so re-applying it over a rotated
//! credential would kill the account; a NEW seed (different hash) is an operator re-login
//! and replaces whatever is there.

use base64::Engine;
use serde::{Deserialize, Serialize};

/// A seed handed to the worker (through its stdin, never argv or env).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedInput {
    /// base64 of the seed file's bytes.
    pub b64: String,
    pub sha256: String,
    /// Not applied before (its hash differs from the last applied one).
    pub is_new: bool,
    /// A Store that is a new login (`codex-authctl login`): the journal says `login`.
    #[serde(default)]
    pub login: bool,
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
            sha256: crate::core::authfile::sha256_hex(bytes),
            is_new: true,
            login: false,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(&self.b64).unwrap_or_default()
    }
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

    fn seed(is_new: bool) -> SeedInput {
        SeedInput { b64: String::new(), sha256: "x".into(), is_new, login: false }
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
}
