//! Getting new tokens: the OAuth refresh grant (oauth.rs), Codex's own app-server
//! refreshing a throwaway copy (appserver.rs), and Codex's classification of failures
//! (classify.rs).

pub mod appserver;
pub mod classify;
pub mod oauth;
#[cfg(test)]
mod proptests;

/// Codex's OAuth client id; the token endpoint only accepts refresh tokens it issued.
pub const CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";

/// The default token endpoint.
pub const DEFAULT_TOKEN_URL: &str = "https://auth.openai.com/oauth/token";

/// Env var that replaces the token URL (Codex honours the same one).
pub const TOKEN_URL_ENV: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";
