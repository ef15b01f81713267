//! What the D-Bus Account object shows: a pure projection of (settings, status, schedule)
//! into the contract's properties, also used by codex-authctl to read them back.

use super::machine::Schedule;
use crate::config::{AccountSettings, RefreshMethod};
use crate::status::AccountStatus;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use zbus::zvariant::{OwnedValue, Value};

/// Hashes of published property values, in [`AccountView::properties`] order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Published(Vec<u64>);

fn value_hash(v: &Value<'_>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{v:?}").hash(&mut h);
    h.finish()
}

/// The account's properties (times are unix seconds, 0 = never). No token material.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub name: String,
    pub user: String,
    pub codex_home: String,
    pub state: String,
    pub access_token_expires_at: u64,
    pub last_refresh: u64,
    pub last_attempt: u64,
    pub last_outcome: String,
    pub last_error: String,
    pub consecutive_failures: u32,
    pub next_attempt: u64,
    pub token_fingerprint: String,
    pub refresh_method: String,
    pub runner_state: String,
    pub runner_last_ok: u64,
    pub runner_last_fail: u64,
    pub runner_last_check: u64,
    pub runner_boot_id: String,
    pub runner_last_reason: String,
    /// Fleet mode ("" = local only), the rotating key's version here, the lease holder.
    pub fleet_role: String,
    pub store_version: u64,
    pub lease_holder: String,
}

fn secs(t: Option<DateTime<Utc>>) -> u64 {
    t.map_or(0, |t| t.timestamp().max(0) as u64)
}

impl AccountView {
    pub fn new(acct: &AccountSettings, st: &AccountStatus, sch: &Schedule) -> AccountView {
        AccountView {
            name: acct.name.clone(),
            user: acct.user.clone(),
            codex_home: acct.codex_home.display().to_string(),
            state: sch.state.as_str().to_string(),
            access_token_expires_at: secs(st.expires_at),
            last_refresh: secs(st.last_refresh),
            last_attempt: secs(st.last_attempt),
            last_outcome: st.outcome.map(|o| o.as_str().to_string()).unwrap_or_default(),
            last_error: if st.class.is_some() { st.reason.clone() } else { String::new() },
            consecutive_failures: st.consecutive_failures,
            next_attempt: secs(sch.next_attempt),
            token_fingerprint: st.token_fp.clone().unwrap_or_default(),
            refresh_method: match acct.refresh.refresh_method {
                RefreshMethod::Oauth => "oauth",
                RefreshMethod::AppServer => "app-server",
            }
            .to_string(),
            runner_state: st.runner_state.as_str().to_string(),
            runner_last_ok: secs(st.runner_last_ok),
            runner_last_fail: secs(st.runner_last_fail),
            runner_last_check: secs(st.runner_last_check),
            runner_boot_id: st.runner_boot_id.clone().unwrap_or_default(),
            runner_last_reason: st.runner_last_reason.clone(),
            fleet_role: acct.fleet.as_ref().map(|f| f.fleet_role.as_str().to_string()).unwrap_or_default(),
            store_version: st.store_version.unwrap_or_default(),
            lease_holder: st.lease_holder.clone().unwrap_or_default(),
        }
    }

    /// (D-Bus property name, value) pairs in the contract's order.
    pub fn properties(&self) -> Vec<(&'static str, Value<'static>)> {
        vec![
            ("Name", Value::from(self.name.clone())),
            ("User", Value::from(self.user.clone())),
            ("CodexHome", Value::from(self.codex_home.clone())),
            ("State", Value::from(self.state.clone())),
            ("AccessTokenExpiresAt", Value::from(self.access_token_expires_at)),
            ("LastRefresh", Value::from(self.last_refresh)),
            ("LastAttempt", Value::from(self.last_attempt)),
            ("LastOutcome", Value::from(self.last_outcome.clone())),
            ("LastError", Value::from(self.last_error.clone())),
            ("ConsecutiveFailures", Value::from(self.consecutive_failures)),
            ("NextAttempt", Value::from(self.next_attempt)),
            ("TokenFingerprint", Value::from(self.token_fingerprint.clone())),
            ("RefreshMethod", Value::from(self.refresh_method.clone())),
            ("RunnerState", Value::from(self.runner_state.clone())),
            ("RunnerLastOk", Value::from(self.runner_last_ok)),
            ("RunnerLastFail", Value::from(self.runner_last_fail)),
            ("RunnerLastCheck", Value::from(self.runner_last_check)),
            ("RunnerBootId", Value::from(self.runner_boot_id.clone())),
            ("RunnerLastReason", Value::from(self.runner_last_reason.clone())),
            ("FleetRole", Value::from(self.fleet_role.clone())),
            ("StoreVersion", Value::from(self.store_version)),
            ("LeaseHolder", Value::from(self.lease_holder.clone())),
        ]
    }

    /// What was published, compactly: one hash per property (a daemon with 1 000 accounts
    /// keeps this instead of a second copy of every view).
    pub fn published(&self) -> Published {
        Published(self.properties().iter().map(|(_, v)| value_hash(v)).collect())
    }

    /// The properties whose values differ from what was `published` before.
    pub fn changed_since(&self, published: Option<&Published>) -> Vec<(&'static str, Value<'static>)> {
        self.properties()
            .into_iter()
            .enumerate()
            .filter(|(i, (_, v))| published.and_then(|p| p.0.get(*i)) != Some(&value_hash(v)))
            .map(|(_, prop)| prop)
            .collect()
    }

    /// Rebuild from a GetAll answer (codex-authctl). Missing or mistyped properties stay
    /// at their defaults, so an older daemon still yields a readable view.
    pub fn from_properties(p: &HashMap<String, OwnedValue>) -> AccountView {
        let s = |k: &str| p.get(k).and_then(|v| String::try_from(v.clone()).ok()).unwrap_or_default();
        let t = |k: &str| p.get(k).and_then(|v| u64::try_from(v.clone()).ok()).unwrap_or_default();
        AccountView {
            name: s("Name"),
            user: s("User"),
            codex_home: s("CodexHome"),
            state: s("State"),
            access_token_expires_at: t("AccessTokenExpiresAt"),
            last_refresh: t("LastRefresh"),
            last_attempt: t("LastAttempt"),
            last_outcome: s("LastOutcome"),
            last_error: s("LastError"),
            consecutive_failures: p
                .get("ConsecutiveFailures")
                .and_then(|v| u32::try_from(v.clone()).ok())
                .unwrap_or_default(),
            next_attempt: t("NextAttempt"),
            token_fingerprint: s("TokenFingerprint"),
            refresh_method: s("RefreshMethod"),
            runner_state: s("RunnerState"),
            runner_last_ok: t("RunnerLastOk"),
            runner_last_fail: t("RunnerLastFail"),
            runner_last_check: t("RunnerLastCheck"),
            runner_boot_id: s("RunnerBootId"),
            runner_last_reason: s("RunnerLastReason"),
            fleet_role: s("FleetRole"),
            store_version: t("StoreVersion"),
            lease_holder: s("LeaseHolder"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_properties_and_diffs() {
        let v = AccountView {
            name: "a".into(),
            state: "ok".into(),
            next_attempt: 7,
            consecutive_failures: 2,
            ..Default::default()
        };
        let map: HashMap<String, OwnedValue> =
            v.properties().into_iter().map(|(k, val)| (k.to_string(), OwnedValue::try_from(val).unwrap())).collect();
        assert_eq!(AccountView::from_properties(&map), v);
        assert_eq!(v.properties().len(), 22);
        let mut w = v.clone();
        w.state = "refreshing".into();
        let changed: Vec<_> = w.changed_since(Some(&v.published())).into_iter().map(|(k, _)| k).collect();
        assert_eq!(changed, ["State"]);
        assert_eq!(w.changed_since(None).len(), 22);
    }
}
