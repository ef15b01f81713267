//! The bodies of Codex's ChatGPT backend endpoints (`/backend-api/...`) as the Codex CLI
//! 0.169 accepts them: the Responses SSE stream that `codex exec` reads, and the two
//! `wham` answers `codex app-server` asks for. Pure builders; routing and faults live in
//! `routes.rs`, authorization in `state.rs`.

use serde_json::{Value, json};

/// Prefix every backend route shares; `chatgpt_base_url` points at `{url}/backend-api/`.
pub const BACKEND_PREFIX: &str = "/backend-api/";
/// `POST`: the model call of `codex exec` (provider `base_url` = `{url}/backend-api/codex`).
pub const RESPONSES_PATH: &str = "/backend-api/codex/responses";
/// `GET`: what `account/read` asks after refreshing.
pub const ACCOUNTS_CHECK_PATH: &str = "/backend-api/wham/accounts/check";
/// `GET`: what `account/rateLimits/read` asks.
pub const USAGE_PATH: &str = "/backend-api/wham/usage";

/// What the assistant says by default: the word the preflight looks for.
pub const DEFAULT_REPLY: &str = "Banana";

/// One SSE event: a `data:` line and the blank line that ends it.
fn event(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// A finished assistant message saying `text`.
fn message_done(text: &str) -> Value {
    json!({
        "type": "response.output_item.done",
        "item": {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]},
    })
}

/// The minimal Responses stream Codex accepts: one finished assistant message saying
/// `text`, then `response.completed` with an id (without it Codex retries and fails).
pub fn responses_sse(text: &str, response_id: &str) -> String {
    let completed = json!({"type": "response.completed", "response": {"id": response_id}});
    event(&message_done(text)) + &event(&completed)
}

/// The same stream cut before `response.completed`: Codex treats it as a dropped stream.
pub fn responses_sse_incomplete(text: &str) -> String {
    event(&message_done(text))
}

/// `GET /wham/accounts/check`: the one account the access token belongs to.
pub fn accounts_check_body(account_id: &str) -> Value {
    json!({
        "accounts": [{
            "id": account_id,
            "workspace_backend_origin": "https://chatgpt.com",
            "account_routing_override": "NO_CONSTRAINT",
        }]
    })
}

/// `GET /wham/usage`: a plausible pro plan with two windows, resets relative to `now`.
/// Codex 0.169 refuses the body without `rate_limit.allowed`/`limit_reached` and windows
/// without `reset_after_seconds` (the contract note's body lacks them).
pub fn usage_body(now_unix: u64) -> Value {
    let window = |used: u64, secs: u64| {
        json!({
            "used_percent": used,
            "limit_window_seconds": secs,
            "reset_after_seconds": secs / 2,
            "reset_at": now_unix + secs / 2,
        })
    };
    json!({
        "plan_type": "pro",
        "rate_limit": {
            "allowed": true,
            "limit_reached": false,
            "primary_window": window(12, 18_000),
            "secondary_window": window(3, 604_800),
        },
        "credits": {"has_credits": false, "unlimited": false, "balance": "0"},
    })
}

/// The body of a backend 401: what ChatGPT answers an expired or revoked access token.
pub fn unauthorized_body() -> Value {
    json!({
        "error": {
            "message": "Your authentication token has expired. Please try signing in again.",
            "type": "invalid_request_error",
            "param": null,
            "code": "token_expired",
        }
    })
}

/// The bearer token of an `authorization` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let h = header?.trim();
    let (scheme, token) = h.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(sse: &str) -> Vec<Value> {
        sse.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn sse_has_the_two_events_codex_needs() {
        let sse = responses_sse("Banana", "resp_1");
        assert!(sse.ends_with("\n\n"));
        let ev = events(&sse);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0]["type"], "response.output_item.done");
        assert_eq!(ev[0]["item"]["content"][0]["text"], "Banana");
        assert_eq!(ev[1], json!({"type": "response.completed", "response": {"id": "resp_1"}}));
        let cut = events(&responses_sse_incomplete("Banana"));
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0]["type"], "response.output_item.done");
    }

    #[test]
    fn wham_bodies() {
        assert_eq!(accounts_check_body("a1")["accounts"][0]["id"], "a1");
        let u = usage_body(1000);
        assert_eq!(u["rate_limit"]["primary_window"]["reset_at"], 10_000);
        assert_eq!(u["rate_limit"]["primary_window"]["reset_after_seconds"], 9_000);
        assert_eq!(u["credits"]["balance"], "0");
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }
}
