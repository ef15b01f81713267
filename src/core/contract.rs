//! Codex's names and numbers we must match: files, locks and their waits, the OAuth client, the
//! token endpoint, the preflight's command line. Facts from shared/notes/codex-contract.md.

use std::time::Duration;

/// Codex's credential file in CODEX_HOME.
pub const AUTH_FILE: &str = "auth.json";
/// Our own lock: held for the whole cycle so one agent never refreshes an account twice.
pub const CYCLE_LOCK: &str = "codex-auth-agent.lock";
/// Codex's commit locks (codex-contract: auth.lock blocking, then auth.json.lock).
pub const CODEX_LOCK: &str = "auth.lock";
pub const CODEX_COMMIT_LOCK: &str = "auth.json.lock";
/// Codex holds auth.lock only around its own commit; a minute means something is stuck.
pub const CODEX_LOCK_WAIT: Duration = Duration::from_secs(60);
/// Codex retries auth.json.lock for about 5 s; we match it.
pub const COMMIT_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Codex's OAuth client id; the token endpoint only accepts refresh tokens it issued.
pub const CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";

/// The default token endpoint.
pub const DEFAULT_TOKEN_URL: &str = "https://auth.openai.com/oauth/token";

/// Env var that replaces the token URL (Codex honours the same one).
pub const TOKEN_URL_ENV: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";

/// The probe's prompt, as the auth runner sends it.
pub const PROMPT: &str = "Reply Banana if this works.";
/// Everything after the binary: no token, no path, nothing account-specific.
pub const EXEC_ARGS: [&str; 6] =
    ["exec", PROMPT, "--dangerously-bypass-approvals-and-sandbox", "-s", "danger-full-access", "--skip-git-repo-check"];

/// Prefix of our throwaway Codex homes (`<prefix><uid>-<random>` in the temp dir); a Codex
/// running in one is ours, not the account's.
pub const HOME_PREFIX: &str = "codex-auth-agent-";

/// The Codex CLI releases the test matrix runs (docs/CODEX-COMPAT.md, tests/codex-compat.sh):
/// from the oldest supported to the newest tested.
pub const CODEX_TESTED: ((u32, u32, u32), (u32, u32, u32)) = ((0, 130, 0), (0, 171, u32::MAX));

/// The tested range in words, for the journal.
pub const CODEX_TESTED_RANGE: &str = "0.130.0 to 0.171.x";

/// Is this `x.y.z` Codex version inside [`CODEX_TESTED`]? (pure; unparsable: no)
pub fn codex_version_tested(version: &str) -> bool {
    let mut n = version.split('.').map(|p| p.parse::<u32>().ok());
    match (n.next().flatten(), n.next().flatten(), n.next().flatten()) {
        (Some(a), Some(b), Some(c)) => (CODEX_TESTED.0..=CODEX_TESTED.1).contains(&(a, b, c)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tested_codex_range() {
        for v in ["0.130.0", "0.169.0", "0.171.0", "0.171.9"] {
            assert!(codex_version_tested(v), "{v}");
        }
        for v in ["0.129.9", "0.172.0", "1.0.0", "", "0.171", "x.y.z"] {
            assert!(!codex_version_tested(v), "{v}");
        }
    }
}
