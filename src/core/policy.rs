//! The refresh decision: a pure function of (auth facts, thresholds, now, force). No I/O,
//! no clock reads, so it is tested exhaustively with property tests.

use crate::core::authfile::{AuthFacts, AuthMode};
use chrono::{DateTime, Duration, Utc};

/// The two thresholds that decide when a credential is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Thresholds {
    /// Refresh when the access token expires within this.
    pub refresh_before_expiry: std::time::Duration,
    /// Refresh when last_refresh is older than this.
    pub max_age: std::time::Duration,
}

/// Why a refresh is due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshReason {
    Forced,
    Expiring {
        expires_at: DateTime<Utc>,
    },
    TooOld {
        last_refresh: DateTime<Utc>,
    },
    /// Neither the access token's exp nor last_refresh could be read.
    Unknown,
}

impl std::fmt::Display for RefreshReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefreshReason::Forced => write!(f, "forced"),
            RefreshReason::Expiring { expires_at } => {
                write!(f, "access token expires at {}", expires_at.to_rfc3339())
            }
            RefreshReason::TooOld { last_refresh } => {
                write!(f, "last refresh at {} is older than max_age", last_refresh.to_rfc3339())
            }
            RefreshReason::Unknown => {
                write!(f, "neither token expiry nor last_refresh is readable")
            }
        }
    }
}

/// Why a login whose `auth_mode` is not `chatgpt` is left alone, naming what manages it
/// (the modes Codex 0.130–0.171 know; docs/CODEX-COMPAT.md).
fn other_mode(mode: &str) -> String {
    let managed_by = match mode {
        "chatgptAuthTokens" => "tokens handed to Codex by the application that embeds it, which refreshes them",
        "agentIdentity" => "an agent identity (auth.json's agent_identity), which Codex manages itself",
        "personalAccessToken" => "a personal access token (personal_access_token), which does not expire by refresh",
        "headers" => "HTTP headers configured for Codex, managed by whoever configured them",
        "bedrockApiKey" | "bedrockAccessKeys" => "AWS Bedrock credentials (bedrock_*), managed through AWS",
        _ => "a login mode this agent does not know; Codex and whoever set it up manage it",
    };
    let mode: String = mode.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(40).collect();
    format!("auth_mode {mode}: {managed_by}; only ChatGPT logins (auth_mode chatgpt) are refreshed here")
}

/// What to do with one account now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not a credential we refresh; the reason says why.
    Inert(String),
    /// Nothing to do until `due_at`.
    Fresh {
        due_at: DateTime<Utc>,
    },
    Refresh(RefreshReason),
}

fn chrono(d: std::time::Duration) -> Duration {
    Duration::from_std(d).unwrap_or(Duration::MAX)
}

/// Decide for one account.
pub fn decide(facts: &AuthFacts, t: &Thresholds, now: DateTime<Utc>, force: bool) -> Decision {
    match &facts.mode {
        AuthMode::ChatGpt => {}
        AuthMode::ApiKey => return Decision::Inert("API-key login (auth_mode apikey): nothing to refresh".into()),
        AuthMode::Other(mode) => return Decision::Inert(other_mode(mode)),
    }
    if !facts.has_refresh_token {
        return Decision::Inert("no refresh token in auth.json".into());
    }
    if force {
        return Decision::Refresh(RefreshReason::Forced);
    }
    let expiry_due = facts
        .access_expires_at
        .map(|exp| (exp, exp.checked_sub_signed(chrono(t.refresh_before_expiry)).unwrap_or(DateTime::<Utc>::MIN_UTC)));
    let age_due =
        facts.last_refresh.map(|lr| (lr, lr.checked_add_signed(chrono(t.max_age)).unwrap_or(DateTime::<Utc>::MAX_UTC)));
    if let Some((expires_at, due)) = expiry_due {
        if now >= due {
            return Decision::Refresh(RefreshReason::Expiring { expires_at });
        }
    }
    if let Some((last_refresh, due)) = age_due {
        if now >= due {
            return Decision::Refresh(RefreshReason::TooOld { last_refresh });
        }
    }
    match (expiry_due, age_due) {
        (None, None) => Decision::Refresh(RefreshReason::Unknown),
        (a, b) => {
            let due_at = [a.map(|x| x.1), b.map(|x| x.1)].into_iter().flatten().min().unwrap_or(now);
            Decision::Fresh { due_at }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: u64 = 86_400;

    fn th(rbe: u64, max_age: u64) -> Thresholds {
        Thresholds {
            refresh_before_expiry: std::time::Duration::from_secs(rbe),
            max_age: std::time::Duration::from_secs(max_age),
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn facts(exp: Option<i64>, lr: Option<i64>) -> AuthFacts {
        AuthFacts {
            mode: AuthMode::ChatGpt,
            has_refresh_token: true,
            access_expires_at: exp.map(at),
            last_refresh: lr.map(at),
        }
    }

    #[test]
    fn examples() {
        let now = 1_000_000_000;
        let t = th(DAY, 7 * DAY);
        assert_eq!(
            decide(&facts(Some(now + 2 * DAY as i64), Some(now)), &t, at(now), false),
            Decision::Fresh { due_at: at(now + DAY as i64) }
        );
        assert!(matches!(
            decide(&facts(Some(now + 100), Some(now)), &t, at(now), false),
            Decision::Refresh(RefreshReason::Expiring { .. })
        ));
        assert!(matches!(
            decide(&facts(Some(now + 30 * DAY as i64), Some(now - 8 * DAY as i64)), &t, at(now), false),
            Decision::Refresh(RefreshReason::TooOld { .. })
        ));
        assert_eq!(decide(&facts(None, None), &t, at(now), false), Decision::Refresh(RefreshReason::Unknown));
        assert_eq!(
            decide(&facts(Some(now + 30 * DAY as i64), None), &t, at(now), true),
            Decision::Refresh(RefreshReason::Forced)
        );
        let mut api = facts(None, None);
        api.mode = AuthMode::ApiKey;
        assert!(matches!(decide(&api, &t, at(now), true), Decision::Inert(_)));
        let mut no_rt = facts(None, None);
        no_rt.has_refresh_token = false;
        assert!(matches!(decide(&no_rt, &t, at(now), true), Decision::Inert(_)));
        for (mode, names) in [
            ("chatgptAuthTokens", "application that embeds it"),
            ("agentIdentity", "agent_identity"),
            ("personalAccessToken", "personal_access_token"),
            ("headers", "HTTP headers"),
            ("bedrockApiKey", "AWS Bedrock"),
            ("bedrockAccessKeys", "AWS Bedrock"),
            ("somethingNew\u{1b}[31m", "does not know"),
        ] {
            let mut other = facts(None, None);
            other.mode = AuthMode::Other(mode.into());
            let Decision::Inert(why) = decide(&other, &t, at(now), true) else { panic!("{mode} is not ours") };
            assert!(why.contains(names) && why.contains("only ChatGPT logins"), "{mode}: {why}");
            assert!(why.starts_with(&format!("auth_mode {}", mode.split('\u{1b}').next().unwrap())), "{why}");
            assert!(!why.contains('\u{1b}'), "{why}");
        }
    }

    proptest! {
        #[test]
        fn decision_matches_the_rules(
            exp in proptest::option::of(-40i64 * DAY as i64..40 * DAY as i64),
            lr in proptest::option::of(-40i64 * DAY as i64..DAY as i64),
            rbe in 0u64..10 * DAY,
            max_age in 0u64..20 * DAY,
            force in any::<bool>(),
            mode in 0u8..3,
            has_rt in any::<bool>(),
        ) {
            let now = 1_800_000_000i64;
            let mut f = facts(exp.map(|e| now + e), lr.map(|l| now + l));
            f.mode = match mode {
                0 => AuthMode::ChatGpt,
                1 => AuthMode::ApiKey,
                _ => AuthMode::Other("headers".into()),
            };
            f.has_refresh_token = has_rt;
            let d = decide(&f, &th(rbe, max_age), at(now), force);
            let managed = f.mode == AuthMode::ChatGpt && has_rt;
            let expiring = exp.is_some_and(|e| e <= rbe as i64);
            let too_old = lr.is_some_and(|l| -l >= max_age as i64);
            let unknown = exp.is_none() && lr.is_none();
            match d {
                Decision::Inert(_) => prop_assert!(!managed),
                Decision::Refresh(_) => {
                    prop_assert!(managed && (force || expiring || too_old || unknown), "refresh without cause")
                }
                Decision::Fresh { due_at } => {
                    prop_assert!(managed && !force && !expiring && !too_old && !unknown, "fresh despite cause");
                    prop_assert!(due_at > at(now));
                }
            }
        }

        #[test]
        fn fresh_becomes_due_exactly_at_due_at(
            exp in 1i64..40 * DAY as i64,
            lr in -40i64 * DAY as i64..0,
            rbe in 0u64..10 * DAY,
            max_age in 1u64..20 * DAY,
        ) {
            let now = 1_800_000_000i64;
            let f = facts(Some(now + exp), Some(now + lr));
            let t = th(rbe, max_age);
            if let Decision::Fresh { due_at } = decide(&f, &t, at(now), false) {
                prop_assert!(matches!(decide(&f, &t, due_at, false), Decision::Refresh(_)), "not due at due_at");
                let early = decide(&f, &t, due_at - Duration::seconds(1), false);
                prop_assert!(matches!(early, Decision::Fresh { .. }), "due one second early");
            }
        }
    }
}
