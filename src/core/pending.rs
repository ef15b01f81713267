//! A new credential received from the token endpoint but not yet in auth.json (see
//! store::pending for where it is kept).

use crate::core::outcome::AuthBytes;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The credential to write, and what it replaces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCredential {
    /// sha256 of the auth.json whose refresh token was spent to get `auth`.
    pub base_sha256: String,
    /// The new auth.json, base64 (`Debug` redacts it).
    pub auth: AuthBytes,
    pub received_at: DateTime<Utc>,
    /// Fingerprint of the new refresh token (for messages; not a secret).
    pub token_fp: Option<String>,
}

impl PendingCredential {
    pub fn new(base_sha256: String, auth: &[u8], received_at: DateTime<Utc>, token_fp: Option<String>) -> Self {
        let auth = AuthBytes(base64::engine::general_purpose::STANDARD.encode(auth));
        PendingCredential { base_sha256, auth, received_at, token_fp }
    }

    /// The auth.json bytes (empty if the copy is corrupt, which `load` already refuses).
    pub fn bytes(&self) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(&self.auth.0).unwrap_or_default()
    }
}
