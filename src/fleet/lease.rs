//! The refresher lease: one KV entry per account (`codex-auth-lease-<account>`) holding
//! `{host_id, expires_at}`, written with check-and-set so that of two hosts racing for it
//! exactly one write succeeds. Pure: the caller reads the record, asks [`decide`], writes
//! with the returned CAS version and carries out the answer. Time is a parameter.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The KV key of an account's lease.
pub fn lease_key(account: &str) -> String {
    format!("codex-auth-lease-{account}")
}

/// What the lease key holds (JSON, no secrets).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub host_id: String,
    pub expires_at: DateTime<Utc>,
}

impl LeaseRecord {
    /// The record `me` writes to hold the lease for `ttl` from `now`.
    pub fn new(me: &str, now: DateTime<Utc>, ttl: Duration) -> LeaseRecord {
        let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        LeaseRecord {
            host_id: me.to_string(),
            expires_at: now.checked_add_signed(ttl).unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn parse(bytes: &[u8]) -> Option<LeaseRecord> {
        serde_json::from_slice(bytes).ok()
    }
}

/// What to do about the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Nobody holds a live lease: write ours with `cas` (0 = create).
    Take { cas: u64 },
    /// We hold it: extend it with `cas`.
    Renew { cas: u64 },
    /// Another host holds a live lease: do not refresh, follow.
    Follow { holder: String, until: DateTime<Utc> },
}

/// Decide from the current lease (record and its KV version; `None` = no key) who refreshes.
/// An unreadable record counts as free, so a corrupted key cannot block the fleet forever;
/// the CAS write still guarantees a single winner.
pub fn decide(current: Option<(Option<&LeaseRecord>, u64)>, me: &str, now: DateTime<Utc>) -> LeaseDecision {
    match current {
        None => LeaseDecision::Take { cas: 0 },
        Some((Some(r), version)) if r.host_id == me => LeaseDecision::Renew { cas: version },
        Some((Some(r), _)) if r.expires_at > now => {
            LeaseDecision::Follow { holder: r.host_id.clone(), until: r.expires_at }
        }
        Some((_, version)) => LeaseDecision::Take { cas: version },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn free_own_live_and_expired_leases() {
        assert_eq!(decide(None, "a", t(0)), LeaseDecision::Take { cas: 0 });
        let mine = LeaseRecord::new("a", t(0), Duration::from_secs(60));
        assert_eq!(mine.expires_at, t(60));
        assert_eq!(decide(Some((Some(&mine), 4)), "a", t(30)), LeaseDecision::Renew { cas: 4 });
        assert_eq!(decide(Some((Some(&mine), 4)), "a", t(90)), LeaseDecision::Renew { cas: 4 });
        assert_eq!(
            decide(Some((Some(&mine), 4)), "b", t(59)),
            LeaseDecision::Follow { holder: "a".into(), until: t(60) }
        );
        assert_eq!(decide(Some((Some(&mine), 4)), "b", t(60)), LeaseDecision::Take { cas: 4 });
        assert_eq!(decide(Some((None, 7)), "b", t(0)), LeaseDecision::Take { cas: 7 });
    }

    #[test]
    fn record_round_trips_and_huge_ttl_saturates() {
        let r = LeaseRecord::new("vm-1", t(0), Duration::from_secs(900));
        assert_eq!(LeaseRecord::parse(&r.to_bytes()), Some(r));
        assert!(LeaseRecord::parse(b"not json").is_none());
        let far = LeaseRecord::new("x", t(0), Duration::MAX);
        assert!(far.expires_at > t(1_000_000_000));
        assert_eq!(lease_key("team"), "codex-auth-lease-team");
    }
}
