//! `/__admin/*`: the out-of-process control surface used by benchmarks and container
//! tests through the `mock-openai` binary. Served only when enabled, only to loopback
//! peers, and never logged or counted as token traffic.

use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::fault::Fault;
use crate::http::{Request, Response};
use crate::routes::error_json;
use crate::server::{Shared, lock};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountBody {
    account_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultBody {
    /// `null` with `sticky: true` clears the sticky fault.
    fault: Option<Fault>,
    #[serde(default)]
    sticky: bool,
    #[serde(default)]
    account_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyBody {
    ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockBody {
    advance_secs: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecsBody {
    secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    refresh_token: Option<String>,
    access_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyBody {
    /// Account id or numeric family id.
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceBody {
    user_code: String,
    /// Approve as this ChatGPT account; absent: deny.
    #[serde(default)]
    account_id: Option<String>,
}

fn parse<T: DeserializeOwned>(req: &Request) -> Result<T, Response> {
    serde_json::from_slice(&req.body).map_err(|e| error_json(400, "invalid_request", &format!("Bad admin body: {e}")))
}

fn ok() -> Response {
    Response::json(200, &json!({"ok": true}))
}

/// Dispatches one admin request; the caller has already checked enablement and peer.
pub(crate) fn handle(shared: &Shared, req: &Request) -> Response {
    match dispatch(shared, req) {
        Ok(r) | Err(r) => r,
    }
}

fn dispatch(shared: &Shared, req: &Request) -> Result<Response, Response> {
    let state = || lock(&shared.state);
    Ok(match (req.method.as_str(), req.path()) {
        ("POST", "/__admin/families") => {
            let b: AccountBody = parse(req)?;
            let creds = state().issue_family(&b.account_id);
            Response::json(200, &serde_json::to_value(creds).unwrap_or(Value::Null))
        }
        ("POST", "/__admin/fault") => {
            let b: FaultBody = parse(req)?;
            let mut s = state();
            match (b.fault, b.sticky, b.account_id) {
                (f, true, None) => s.set_sticky_fault(f),
                (f, true, Some(acct)) => s.set_sticky_fault_for(&acct, f),
                (Some(f), false, None) => s.push_fault(f),
                (Some(f), false, Some(acct)) => s.push_fault_for(&acct, f),
                (None, false, _) => {
                    return Err(error_json(400, "invalid_request", "A one-shot fault needs `fault`."));
                }
            }
            ok()
        }
        ("POST", "/__admin/clear") => {
            let mut s = state();
            s.clear_faults();
            s.set_latency(Duration::ZERO);
            ok()
        }
        ("POST", "/__admin/reset-counters") => {
            state().reset_counters();
            ok()
        }
        ("POST", "/__admin/latency") => {
            let b: LatencyBody = parse(req)?;
            state().set_latency(Duration::from_millis(b.ms));
            ok()
        }
        ("POST", "/__admin/clock") => {
            let b: ClockBody = parse(req)?;
            state().advance_clock(Duration::from_secs(b.advance_secs));
            ok()
        }
        ("POST", "/__admin/access-lifetime") => {
            let b: SecsBody = parse(req)?;
            let Some(secs) = b.secs else {
                return Err(error_json(400, "invalid_request", "`secs` is required."));
            };
            state().set_access_lifetime(Duration::from_secs(secs));
            ok()
        }
        ("POST", "/__admin/refresh-lifetime") => {
            let b: SecsBody = parse(req)?;
            state().set_refresh_token_lifetime(b.secs.map(Duration::from_secs));
            ok()
        }
        ("GET", "/__admin/stats") => Response::json(200, &serde_json::to_value(state().stats()).unwrap_or(Value::Null)),
        ("GET", "/__admin/log") => {
            let log = state().requests_log();
            Response::json(200, &serde_json::to_value(log).unwrap_or(Value::Null))
        }
        ("POST", "/__admin/check") => {
            let b: CheckBody = parse(req)?;
            let s = state();
            let live = match (b.refresh_token, b.access_token) {
                (Some(rt), None) => s.is_live_refresh_token(&rt),
                (None, Some(at)) => s.is_live_access_token(&at),
                _ => {
                    return Err(error_json(
                        400,
                        "invalid_request",
                        "Give exactly one of `refresh_token`, `access_token`.",
                    ));
                }
            };
            Response::json(200, &json!({"live": live}))
        }
        ("POST", "/__admin/current") => {
            let b: KeyBody = parse(req)?;
            let s = state();
            Response::json(
                200,
                &json!({
                    "refresh_token": s.current_refresh_token(&b.key),
                    "revoked": s.family_revoked(&b.key),
                }),
            )
        }
        ("POST", "/__admin/revoke") => {
            let b: KeyBody = parse(req)?;
            Response::json(200, &json!({"revoked": state().revoke_family(&b.key)}))
        }
        ("GET", "/__admin/device") => Response::json(200, &json!({"pending": state().devices.pending()})),
        ("POST", "/__admin/device") => {
            let b: DeviceBody = parse(req)?;
            Response::json(200, &json!({"decided": state().devices.decide(&b.user_code, b.account_id.as_deref())}))
        }
        _ => error_json(404, "not_found", "No such admin route."),
    })
}
