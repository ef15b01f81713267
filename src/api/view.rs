//! What the D-Bus Account object shows, as the contract's properties; codex-authctl reads
//! them back into the same `AccountView` (daemon::view builds one).

use crate::core::outcome::RunnerState;
use crate::core::schedule::State;
use crate::core::task::RefreshMethod;
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
    pub state: State,
    pub access_token_expires_at: u64,
    pub last_refresh: u64,
    pub last_attempt: u64,
    pub last_outcome: String,
    pub last_error: String,
    pub consecutive_failures: u32,
    pub next_attempt: u64,
    pub token_fingerprint: String,
    /// None: a method this build does not know.
    pub refresh_method: Option<RefreshMethod>,
    pub runner_state: RunnerState,
    pub runner_last_ok: u64,
    pub runner_last_fail: u64,
    pub runner_last_check: u64,
    pub runner_boot_id: String,
    pub runner_last_reason: String,
    /// The Codex CLI version the last preflight ran ("" = not known yet).
    pub codex_version: String,
    /// Fleet mode ("" = local only), the rotating key's version here, the lease holder.
    pub fleet_role: String,
    pub store_version: u64,
    pub lease_holder: String,
}

impl AccountView {
    /// (D-Bus property name, value) pairs in the contract's order.
    pub fn properties(&self) -> Vec<(&'static str, Value<'static>)> {
        vec![
            ("Name", Value::from(self.name.clone())),
            ("User", Value::from(self.user.clone())),
            ("CodexHome", Value::from(self.codex_home.clone())),
            ("State", Value::from(self.state.as_str())),
            ("AccessTokenExpiresAt", Value::from(self.access_token_expires_at)),
            ("LastRefresh", Value::from(self.last_refresh)),
            ("LastAttempt", Value::from(self.last_attempt)),
            ("LastOutcome", Value::from(self.last_outcome.clone())),
            ("LastError", Value::from(self.last_error.clone())),
            ("ConsecutiveFailures", Value::from(self.consecutive_failures)),
            ("NextAttempt", Value::from(self.next_attempt)),
            ("TokenFingerprint", Value::from(self.token_fingerprint.clone())),
            ("RefreshMethod", Value::from(self.refresh_method.map_or("", RefreshMethod::as_str))),
            ("RunnerState", Value::from(self.runner_state.as_str())),
            ("RunnerLastOk", Value::from(self.runner_last_ok)),
            ("RunnerLastFail", Value::from(self.runner_last_fail)),
            ("RunnerLastCheck", Value::from(self.runner_last_check)),
            ("RunnerBootId", Value::from(self.runner_boot_id.clone())),
            ("RunnerLastReason", Value::from(self.runner_last_reason.clone())),
            ("CodexVersion", Value::from(self.codex_version.clone())),
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
            // A state this build does not know reads as stale: nothing is known to be fine.
            state: State::parse(&s("State")).unwrap_or_default(),
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
            refresh_method: RefreshMethod::parse(&s("RefreshMethod")),
            runner_state: RunnerState::parse(&s("RunnerState")),
            runner_last_ok: t("RunnerLastOk"),
            runner_last_fail: t("RunnerLastFail"),
            runner_last_check: t("RunnerLastCheck"),
            runner_boot_id: s("RunnerBootId"),
            runner_last_reason: s("RunnerLastReason"),
            codex_version: s("CodexVersion"),
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
            state: State::Ok,
            next_attempt: 7,
            consecutive_failures: 2,
            ..Default::default()
        };
        let map: HashMap<String, OwnedValue> =
            v.properties().into_iter().map(|(k, val)| (k.to_string(), OwnedValue::try_from(val).unwrap())).collect();
        assert_eq!(AccountView::from_properties(&map), v);
        assert_eq!(v.properties().len(), 23);
        let mut w = v.clone();
        w.state = State::Refreshing;
        let changed: Vec<_> = w.changed_since(Some(&v.published())).into_iter().map(|(k, _)| k).collect();
        assert_eq!(changed, ["State"]);
        assert_eq!(w.changed_since(None).len(), 23);
    }
}
