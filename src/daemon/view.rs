//! The daemon's projection of (settings, status, schedule) into the Account object's view.

use crate::api::view::AccountView;
use crate::config::AccountSettings;
use crate::core::schedule::Schedule;
use crate::store::status::AccountStatus;
use chrono::{DateTime, Utc};

fn secs(t: Option<DateTime<Utc>>) -> u64 {
    t.map_or(0, |t| t.timestamp().max(0) as u64)
}

pub fn account_view(acct: &AccountSettings, st: &AccountStatus, sch: &Schedule) -> AccountView {
    AccountView {
        name: acct.name.clone(),
        user: acct.user.clone(),
        codex_home: acct.codex_home.display().to_string(),
        state: sch.state,
        access_token_expires_at: secs(st.expires_at),
        last_refresh: secs(st.last_refresh),
        last_attempt: secs(st.last_attempt),
        last_outcome: st.outcome.map(|o| o.as_str().to_string()).unwrap_or_default(),
        last_error: if st.class.is_some() { st.reason.clone() } else { String::new() },
        consecutive_failures: st.consecutive_failures,
        next_attempt: secs(sch.next_attempt),
        token_fingerprint: st.token_fp.clone().unwrap_or_default(),
        refresh_method: Some(acct.refresh.refresh_method),
        runner_state: st.runner_state,
        runner_last_ok: secs(st.runner_last_ok),
        runner_last_fail: secs(st.runner_last_fail),
        runner_last_check: secs(st.runner_last_check),
        runner_boot_id: st.runner_boot_id.clone().unwrap_or_default(),
        runner_last_reason: st.runner_last_reason.clone(),
        codex_version: st.codex_version.clone().unwrap_or_default(),
        fleet_role: acct.fleet.as_ref().map(|f| f.fleet_role.as_str().to_string()).unwrap_or_default(),
        store_version: st.store_version.unwrap_or_default(),
        lease_holder: st.lease_holder.clone().unwrap_or_default(),
    }
}
