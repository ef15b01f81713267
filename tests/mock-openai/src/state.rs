//! Everything the mock remembers: credential families, the adjustable clock, queued
//! faults, counters and the request log. Pure data plus the token-endpoint decision, so it
//! can be unit-tested without sockets.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::fault::{Fault, object_error_body};
use crate::http::Response;
use crate::jwt::{decode_jwt_payload, make_jwt, random_hex16, user_id_for};

/// The only `client_id` the token endpoint accepts (Codex CLI's).
pub const CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";

/// Oldest log entries are dropped past this so long benchmarks don't grow without bound.
const LOG_CAP: usize = 100_000;

/// One login's tokens, as `auth.json` would hold them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub id_token: String,
    pub access_token: String,
    pub refresh_token: String,
    pub account_id: String,
}

/// One request as the log remembers it; token values are never recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestLogEntry {
    /// Real wall-clock time the answer was decided (not the offset mock clock).
    pub at: SystemTime,
    pub method: String,
    pub path: String,
    /// `None` when no HTTP answer was sent (reset, hang, garbage).
    pub status: Option<u16>,
    /// Account of the family the presented refresh token belongs to, when known.
    pub account_id: Option<String>,
    /// Kind of the fault applied, if any.
    pub fault: Option<String>,
}

/// What a token request looked like, without its token: every header except those that
/// could carry a secret or only describe the connection, the body's field names, and the
/// values of its fields that are not secret. Lets tests compare our request with Codex's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequestShape {
    /// Lower-case names, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The JSON body's field names, sorted; empty when it is not a JSON object.
    pub body_fields: Vec<String>,
    pub client_id: Option<String>,
    pub grant_type: Option<String>,
    pub refresh_reason: Option<String>,
}

impl TokenRequestShape {
    /// Headers left out: credentials, and what only the connection decides.
    pub const OMITTED_HEADERS: &[&str] = &["authorization", "cookie", "host", "content-length", "connection"];

    pub fn of(headers: &[(String, String)], body: &[u8]) -> Self {
        let headers = headers
            .iter()
            .filter(|(k, _)| !Self::OMITTED_HEADERS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let v = serde_json::from_slice::<Value>(body).ok().filter(Value::is_object).unwrap_or_default();
        let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let mut body_fields: Vec<String> = v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        body_fields.sort();
        TokenRequestShape {
            headers,
            body_fields,
            client_id: field("client_id"),
            grant_type: field("grant_type"),
            refresh_reason: field("refresh_reason"),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Counters snapshot (also the body of `GET /__admin/stats`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub token_requests: u64,
    pub successful_refreshes: u64,
    pub reuse_detections: u64,
    pub token_requests_by_account: BTreeMap<String, u64>,
    pub families: u64,
    pub revoked_families: u64,
    pub pending_faults: u64,
    pub latency_ms: u64,
    pub clock_offset_secs: u64,
    /// Requests to `/backend-api/...` (Codex's backend), faulted or not.
    pub backend_requests: u64,
    pub backend_requests_by_path: BTreeMap<String, u64>,
}

/// Real wall-clock time. The workspace bans `SystemTime::now` so the daemon's decisions
/// stay testable; the mock's own clock is made adjustable by an offset on top of this.
#[allow(clippy::disallowed_methods)]
pub(crate) fn wall_now() -> SystemTime {
    SystemTime::now()
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

struct Family {
    account_id: String,
    user_id: String,
    generation: u64,
    current_refresh: String,
    /// Mock time the current refresh token was issued (for refresh-token expiry).
    current_issued: SystemTime,
    revoked: bool,
}

#[derive(Default)]
struct Faults {
    one_shot: VecDeque<Fault>,
    sticky: Option<Fault>,
    one_shot_for: HashMap<String, VecDeque<Fault>>,
    sticky_for: HashMap<String, Fault>,
}

impl Faults {
    /// Per-account faults win over global ones so one account can fail in isolation.
    fn take(&mut self, account: Option<&str>) -> Option<Fault> {
        if let Some(acct) = account {
            if let Some(f) = self.one_shot_for.get_mut(acct).and_then(VecDeque::pop_front) {
                return Some(f);
            }
            if let Some(f) = self.sticky_for.get(acct) {
                return Some(f.clone());
            }
        }
        self.one_shot.pop_front().or_else(|| self.sticky.clone())
    }

    fn pending(&self) -> usize {
        self.one_shot.len()
            + self.one_shot_for.values().map(VecDeque::len).sum::<usize>()
            + usize::from(self.sticky.is_some())
            + self.sticky_for.len()
    }
}

#[derive(Default)]
struct Counters {
    token_requests: u64,
    by_account: BTreeMap<String, u64>,
    successful_refreshes: u64,
    reuse_detections: u64,
    backend_requests: u64,
    backend_by_path: BTreeMap<String, u64>,
}

/// What the server should do with an arriving token request, decided on arrival so
/// one-shot faults are consumed in arrival order.
pub(crate) struct TokenPlan {
    pub account: Option<String>,
    pub fault: Option<Fault>,
    pub latency: Duration,
}

/// What the server should do with an arriving backend request (`/backend-api/...`).
pub(crate) struct BackendPlan {
    /// Account the bearer access token was minted for, when it is one of ours.
    pub account: Option<String>,
    /// The bearer token is live (ours, family not revoked, `exp` not passed).
    pub authorized: bool,
    pub fault: Option<Fault>,
    /// What the assistant says in `codex/responses`.
    pub reply_text: String,
}

/// Runtime settings, initially taken from `MockConfig`.
pub(crate) struct Settings {
    pub canary_prefix: String,
    pub access_lifetime: Duration,
    pub refresh_token_lifetime: Option<Duration>,
}

pub(crate) struct State {
    settings: Settings,
    clock_offset: Duration,
    latency: Duration,
    families: Vec<Family>,
    latest_by_account: HashMap<String, usize>,
    /// Every refresh token ever issued → (family index, generation), so spent tokens are
    /// recognised as reuse rather than as unknown.
    refresh_tokens: HashMap<String, (usize, u64)>,
    /// Access-token `jti` → (family index, exp), for `is_live_access_token`.
    access_jtis: HashMap<String, (usize, u64)>,
    faults: Faults,
    /// Faults for `/backend-api/...`, kept apart so a backend fault never hits a refresh.
    backend_faults: Faults,
    reply_text: String,
    /// Device-code logins (`codex login --device-auth`).
    pub(crate) devices: crate::device::Devices,
    counters: Counters,
    log: VecDeque<RequestLogEntry>,
    /// Shapes of the token requests since the last counter reset (capped like the log).
    shapes: VecDeque<TokenRequestShape>,
    /// Client ids the token endpoint accepts besides Codex's own [`CLIENT_ID`] (what
    /// `CODEX_APP_SERVER_LOGIN_CLIENT_ID` may name).
    extra_client_ids: Vec<String>,
}

impl State {
    pub fn new(settings: Settings) -> Self {
        State {
            settings,
            clock_offset: Duration::ZERO,
            latency: Duration::ZERO,
            families: Vec::new(),
            latest_by_account: HashMap::new(),
            refresh_tokens: HashMap::new(),
            access_jtis: HashMap::new(),
            faults: Faults::default(),
            backend_faults: Faults::default(),
            reply_text: crate::backend::DEFAULT_REPLY.to_string(),
            devices: crate::device::Devices::default(),
            counters: Counters::default(),
            log: VecDeque::new(),
            shapes: VecDeque::new(),
            extra_client_ids: Vec::new(),
        }
    }

    // --- clock and settings --------------------------------------------------------

    pub fn now(&self) -> SystemTime {
        wall_now() + self.clock_offset
    }

    pub fn advance_clock(&mut self, by: Duration) {
        self.clock_offset += by;
    }

    pub fn set_access_lifetime(&mut self, d: Duration) {
        self.settings.access_lifetime = d;
    }

    pub fn set_refresh_token_lifetime(&mut self, d: Option<Duration>) {
        self.settings.refresh_token_lifetime = d;
    }

    pub fn set_latency(&mut self, d: Duration) {
        self.latency = d;
    }

    // --- families ------------------------------------------------------------------

    pub fn issue_family(&mut self, account_id: &str) -> Credentials {
        let idx = self.families.len();
        self.families.push(Family {
            account_id: account_id.to_string(),
            user_id: user_id_for(account_id),
            generation: 0,
            current_refresh: String::new(),
            current_issued: self.now(),
            revoked: false,
        });
        self.latest_by_account.insert(account_id.to_string(), idx);
        self.mint(idx)
    }

    /// Issues the next generation of a family and makes its refresh token current.
    fn mint(&mut self, idx: usize) -> Credentials {
        let now = self.now();
        let iat = unix_secs(now);
        let exp = iat + self.settings.access_lifetime.as_secs();
        let prefix = self.settings.canary_prefix.clone();
        let fam = &mut self.families[idx];
        fam.generation += 1;
        let (family_id, generation) = (idx + 1, fam.generation);
        let refresh = format!("{prefix}rt_{family_id}_{generation}_{}", random_hex16());
        fam.current_refresh = refresh.clone();
        fam.current_issued = now;
        let auth = json!({
            "chatgpt_account_id": fam.account_id,
            "chatgpt_plan_type": "pro",
            "chatgpt_user_id": fam.user_id,
        });
        let jti = format!("{prefix}at_{family_id}_{generation}_{}", random_hex16());
        let access_token = make_jwt(&json!({
            "exp": exp,
            "iat": iat,
            "https://api.openai.com/auth": auth,
            "jti": jti,
        }));
        let id_token = make_jwt(&json!({
            "email": format!("{}@example.com", fam.account_id),
            "exp": exp,
            "iat": iat,
            "https://api.openai.com/auth": auth,
        }));
        let account_id = fam.account_id.clone();
        self.refresh_tokens.insert(refresh.clone(), (idx, generation));
        self.access_jtis.insert(jti, (idx, exp));
        Credentials { id_token, access_token, refresh_token: refresh, account_id }
    }

    /// Account id first (its latest family), then a numeric family id.
    fn resolve(&self, key: &str) -> Option<usize> {
        if let Some(&idx) = self.latest_by_account.get(key) {
            return Some(idx);
        }
        let id: usize = key.parse().ok()?;
        (1..=self.families.len()).contains(&id).then(|| id - 1)
    }

    pub fn family_id_of(&self, refresh_token: &str) -> Option<u64> {
        self.refresh_tokens.get(refresh_token).map(|&(idx, _)| idx as u64 + 1)
    }

    pub fn current_refresh_token(&self, key: &str) -> Option<String> {
        let fam = &self.families[self.resolve(key)?];
        (!fam.revoked).then(|| fam.current_refresh.clone())
    }

    pub fn family_revoked(&self, key: &str) -> bool {
        self.resolve(key).is_some_and(|idx| self.families[idx].revoked)
    }

    pub fn revoke_family(&mut self, key: &str) -> bool {
        match self.resolve(key) {
            Some(idx) => {
                self.families[idx].revoked = true;
                true
            }
            None => false,
        }
    }

    fn refresh_expired(&self, fam: &Family) -> bool {
        self.settings
            .refresh_token_lifetime
            .is_some_and(|life| self.now().duration_since(fam.current_issued).unwrap_or(Duration::ZERO) >= life)
    }

    pub fn is_live_refresh_token(&self, token: &str) -> bool {
        match self.refresh_tokens.get(token) {
            Some(&(idx, generation)) => {
                let fam = &self.families[idx];
                !fam.revoked && fam.generation == generation && !self.refresh_expired(fam)
            }
            None => false,
        }
    }

    pub fn is_live_access_token(&self, token: &str) -> bool {
        let Some(payload) = decode_jwt_payload(token) else {
            return false;
        };
        let Some(jti) = payload.get("jti").and_then(Value::as_str) else {
            return false;
        };
        match self.access_jtis.get(jti) {
            Some(&(idx, exp)) => !self.families[idx].revoked && unix_secs(self.now()) < exp,
            None => false,
        }
    }

    // --- faults --------------------------------------------------------------------

    pub fn push_fault(&mut self, f: Fault) {
        self.faults.one_shot.push_back(f);
    }

    pub fn set_sticky_fault(&mut self, f: Option<Fault>) {
        self.faults.sticky = f;
    }

    pub fn push_fault_for(&mut self, account_id: &str, f: Fault) {
        self.faults.one_shot_for.entry(account_id.to_string()).or_default().push_back(f);
    }

    pub fn set_sticky_fault_for(&mut self, account_id: &str, f: Option<Fault>) {
        match f {
            Some(f) => self.faults.sticky_for.insert(account_id.to_string(), f),
            None => self.faults.sticky_for.remove(account_id),
        };
    }

    pub fn clear_faults(&mut self) {
        self.faults = Faults::default();
        self.backend_faults = Faults::default();
    }

    pub fn push_backend_fault(&mut self, f: Fault) {
        self.backend_faults.one_shot.push_back(f);
    }

    pub fn set_sticky_backend_fault(&mut self, f: Option<Fault>) {
        self.backend_faults.sticky = f;
    }

    pub fn push_backend_fault_for(&mut self, account_id: &str, f: Fault) {
        self.backend_faults.one_shot_for.entry(account_id.to_string()).or_default().push_back(f);
    }

    pub fn set_reply_text(&mut self, text: &str) {
        self.reply_text = text.to_string();
    }

    // --- counters and log ----------------------------------------------------------

    pub fn token_requests(&self) -> u64 {
        self.counters.token_requests
    }

    pub fn token_requests_for(&self, account_id: &str) -> u64 {
        self.counters.by_account.get(account_id).copied().unwrap_or(0)
    }

    pub fn successful_refreshes(&self) -> u64 {
        self.counters.successful_refreshes
    }

    pub fn reuse_detections(&self) -> u64 {
        self.counters.reuse_detections
    }

    pub fn backend_requests(&self) -> u64 {
        self.counters.backend_requests
    }

    pub fn backend_requests_to(&self, path: &str) -> u64 {
        self.counters.backend_by_path.get(path).copied().unwrap_or(0)
    }

    pub fn reset_counters(&mut self) {
        self.counters = Counters::default();
        self.log.clear();
        self.shapes.clear();
    }

    pub fn requests_log(&self) -> Vec<RequestLogEntry> {
        self.log.iter().cloned().collect()
    }

    pub fn record(&mut self, entry: RequestLogEntry) {
        if self.log.len() >= LOG_CAP {
            self.log.pop_front();
        }
        self.log.push_back(entry);
    }

    pub fn stats(&self) -> Stats {
        Stats {
            token_requests: self.counters.token_requests,
            successful_refreshes: self.counters.successful_refreshes,
            reuse_detections: self.counters.reuse_detections,
            token_requests_by_account: self.counters.by_account.clone(),
            families: self.families.len() as u64,
            revoked_families: self.families.iter().filter(|f| f.revoked).count() as u64,
            pending_faults: (self.faults.pending() + self.backend_faults.pending()) as u64,
            latency_ms: u64::try_from(self.latency.as_millis()).unwrap_or(u64::MAX),
            clock_offset_secs: self.clock_offset.as_secs(),
            backend_requests: self.counters.backend_requests,
            backend_requests_by_path: self.counters.backend_by_path.clone(),
        }
    }

    pub fn token_request_shapes(&self) -> Vec<TokenRequestShape> {
        self.shapes.iter().cloned().collect()
    }

    pub fn accept_client_id(&mut self, id: &str) {
        self.extra_client_ids.push(id.to_string());
    }

    // --- the token endpoint --------------------------------------------------------

    /// Counts an arriving `POST /oauth/token` and picks its fault. The body is parsed
    /// leniently here only to learn which account it concerns.
    pub fn begin_token_request(&mut self, headers: &[(String, String)], body: &[u8]) -> TokenPlan {
        if self.shapes.len() >= LOG_CAP {
            self.shapes.pop_front();
        }
        self.shapes.push_back(TokenRequestShape::of(headers, body));
        let account = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("refresh_token").and_then(Value::as_str).map(str::to_string))
            .and_then(|rt| self.refresh_tokens.get(&rt).map(|&(idx, _)| idx))
            .map(|idx| self.families[idx].account_id.clone());
        self.counters.token_requests += 1;
        if let Some(acct) = &account {
            *self.counters.by_account.entry(acct.clone()).or_default() += 1;
        }
        let fault = self.faults.take(account.as_deref());
        TokenPlan { account, fault, latency: self.latency }
    }

    /// Counts an arriving backend request, checks its bearer token and picks its fault.
    pub fn begin_backend_request(&mut self, path: &str, access_token: Option<&str>) -> BackendPlan {
        self.counters.backend_requests += 1;
        *self.counters.backend_by_path.entry(path.to_string()).or_default() += 1;
        let account = access_token
            .and_then(decode_jwt_payload)
            .and_then(|p| p["https://api.openai.com/auth"]["chatgpt_account_id"].as_str().map(str::to_string));
        let authorized = access_token.is_some_and(|t| self.is_live_access_token(t));
        let fault = self.backend_faults.take(account.as_deref());
        BackendPlan { account, authorized, fault, reply_text: self.reply_text.clone() }
    }

    /// The real endpoint's decision for a request body.
    pub fn refresh(&mut self, body: &[u8]) -> Response {
        let invalid_request =
            |why: &str| Response::json(400, &json!({"error": "invalid_request", "error_description": why}));
        if let Some(form) = crate::device::parse_form(body) {
            return self.authorization_code(&form);
        }
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return invalid_request("Request body must be a JSON object.");
        };
        let client = v.get("client_id").and_then(Value::as_str);
        if client != Some(CLIENT_ID) && !client.is_some_and(|c| self.extra_client_ids.iter().any(|e| e == c)) {
            return invalid_request("Unknown or missing client_id.");
        }
        if v.get("grant_type").and_then(Value::as_str) != Some("refresh_token") {
            return invalid_request("Unsupported or missing grant_type.");
        }
        let Some(rt) = v.get("refresh_token").and_then(Value::as_str) else {
            return invalid_request("Missing refresh_token.");
        };
        let Some(&(idx, generation)) = self.refresh_tokens.get(rt) else {
            return Response::json(
                400,
                &json!({"error": "invalid_grant", "error_description": "Invalid refresh token"}),
            );
        };
        let unauthorized = |code: &str| Response::raw(401, "application/json", object_error_body(code));
        let fam = &self.families[idx];
        if fam.revoked {
            return unauthorized("refresh_token_invalidated");
        }
        if generation < fam.generation {
            // Reuse of a spent token means it may have leaked: kill the whole login.
            self.families[idx].revoked = true;
            self.counters.reuse_detections += 1;
            return unauthorized("refresh_token_reused");
        }
        if self.refresh_expired(fam) {
            return unauthorized("refresh_token_expired");
        }
        let creds = self.mint(idx);
        self.counters.successful_refreshes += 1;
        self.tokens_response(&creds)
    }

    fn tokens_response(&self, creds: &Credentials) -> Response {
        Response::json(
            200,
            &json!({
                "id_token": creds.id_token,
                "access_token": creds.access_token,
                "refresh_token": creds.refresh_token,
                "token_type": "Bearer",
                "expires_in": self.settings.access_lifetime.as_secs(),
            }),
        )
    }

    /// The device login's code exchange: a new family for the approved account. Like the
    /// real service since mid-2026, a new login revokes the account's earlier grants.
    fn authorization_code(&mut self, form: &HashMap<String, String>) -> Response {
        if form.get("grant_type").map(String::as_str) != Some("authorization_code") {
            return Response::json(
                400,
                &json!({"error": "invalid_request", "error_description": "Unsupported or missing grant_type."}),
            );
        }
        let account_id = match self.devices.exchange(form) {
            Ok(a) => a,
            Err(r) => return r,
        };
        for fam in self.families.iter_mut().filter(|f| f.account_id == account_id) {
            fam.revoked = true;
        }
        let creds = self.issue_family(&account_id);
        self.tokens_response(&creds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State::new(Settings {
            canary_prefix: "CANARY-".into(),
            access_lifetime: Duration::from_secs(3600),
            refresh_token_lifetime: None,
        })
    }

    fn body(rt: &str) -> Vec<u8> {
        json!({"client_id": CLIENT_ID, "grant_type": "refresh_token", "refresh_token": rt}).to_string().into_bytes()
    }

    fn json_of(r: &Response) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn token_format() {
        let mut s = state();
        let c = s.issue_family("acct");
        let parts: Vec<&str> = c.refresh_token.split('_').collect();
        assert_eq!(parts[0], "CANARY-rt");
        assert_eq!(parts[1], "1");
        assert_eq!(parts[2], "1");
        assert_eq!(parts[3].len(), 16);
        assert_eq!(s.family_id_of(&c.refresh_token), Some(1));
        let at = decode_jwt_payload(&c.access_token).unwrap();
        assert!(at["jti"].as_str().unwrap().starts_with("CANARY-at_1_1_"));
        assert_eq!(at["exp"].as_u64().unwrap() - at["iat"].as_u64().unwrap(), 3600);
    }

    #[test]
    fn rotation_reuse_and_invalidation() {
        let mut s = state();
        let c = s.issue_family("acct");
        let r = s.refresh(&body(&c.refresh_token));
        assert_eq!(r.status, 200);
        let new_rt = json_of(&r)["refresh_token"].as_str().unwrap().to_string();
        assert!(new_rt.starts_with("CANARY-rt_1_2_"));
        assert!(!s.is_live_refresh_token(&c.refresh_token));
        assert!(s.is_live_refresh_token(&new_rt));

        let r = s.refresh(&body(&c.refresh_token));
        assert_eq!(r.status, 401);
        assert_eq!(json_of(&r)["error"]["code"], "refresh_token_reused");
        assert!(s.family_revoked("acct"));
        assert_eq!(s.current_refresh_token("acct"), None);

        let r = s.refresh(&body(&new_rt));
        assert_eq!(json_of(&r)["error"]["code"], "refresh_token_invalidated");
        assert_eq!(s.reuse_detections(), 1);
        assert_eq!(s.successful_refreshes(), 1);
    }

    #[test]
    fn refresh_token_lifetime_and_clock() {
        let mut s = state();
        s.set_refresh_token_lifetime(Some(Duration::from_secs(100)));
        let c = s.issue_family("acct");
        assert!(s.is_live_access_token(&c.access_token));
        s.advance_clock(Duration::from_secs(101));
        assert!(!s.is_live_refresh_token(&c.refresh_token));
        let r = s.refresh(&body(&c.refresh_token));
        assert_eq!(json_of(&r)["error"]["code"], "refresh_token_expired");
        assert!(!s.family_revoked("acct"), "expiry does not revoke");
        s.advance_clock(Duration::from_secs(3600));
        assert!(!s.is_live_access_token(&c.access_token));
    }

    #[test]
    fn request_validation() {
        let mut s = state();
        let c = s.issue_family("acct");
        assert_eq!(s.refresh(b"not json").status, 400);
        let wrong_client = json!({"client_id": "x", "grant_type": "refresh_token", "refresh_token": c.refresh_token});
        assert_eq!(json_of(&s.refresh(wrong_client.to_string().as_bytes()))["error"], "invalid_request");
        let wrong_grant = json!({"client_id": CLIENT_ID, "grant_type": "password", "refresh_token": c.refresh_token});
        assert_eq!(s.refresh(wrong_grant.to_string().as_bytes()).status, 400);
        let extra = json!({"client_id": CLIENT_ID, "grant_type": "refresh_token",
            "refresh_token": c.refresh_token, "refresh_reason": "expired"});
        assert_eq!(s.refresh(extra.to_string().as_bytes()).status, 200);
        let r = s.refresh(&body("CANARY-rt_9_9_0000000000000000"));
        assert_eq!(r.status, 400);
        assert_eq!(json_of(&r), json!({"error": "invalid_grant", "error_description": "Invalid refresh token"}));
    }

    #[test]
    fn an_accepted_client_id_and_the_shape_of_each_request() {
        let mut s = state();
        let c = s.issue_family("acct");
        let other = json!({"client_id": "app_other", "grant_type": "refresh_token", "refresh_token": c.refresh_token,
            "refresh_reason": "scheduled"});
        assert_eq!(s.refresh(other.to_string().as_bytes()).status, 400, "only Codex's client id by default");
        s.accept_client_id("app_other");
        let headers: Vec<(String, String)> =
            [("authorization", "Bearer x"), ("originator", "codex_cli_rs"), ("host", "h")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        s.begin_token_request(&headers, other.to_string().as_bytes());
        assert_eq!(s.refresh(other.to_string().as_bytes()).status, 200);
        let shape = &s.token_request_shapes()[0];
        assert_eq!(shape.headers, vec![("originator".to_string(), "codex_cli_rs".to_string())], "no secret, no host");
        assert_eq!(shape.body_fields, ["client_id", "grant_type", "refresh_reason", "refresh_token"]);
        assert_eq!(
            (shape.client_id.as_deref(), shape.refresh_reason.as_deref(), shape.header("originator")),
            (Some("app_other"), Some("scheduled"), Some("codex_cli_rs"))
        );
        assert!(!format!("{shape:?}").contains(&c.refresh_token), "the token is never kept");
        s.reset_counters();
        assert!(s.token_request_shapes().is_empty());
    }

    #[test]
    fn fault_priority() {
        let mut s = state();
        let a = s.issue_family("a");
        s.push_fault(Fault::Reset);
        s.push_fault_for("a", Fault::Garbage);
        s.set_sticky_fault(Some(Fault::Hang));
        assert_eq!(s.begin_token_request(&[], &body(&a.refresh_token)).fault, Some(Fault::Garbage));
        assert_eq!(s.begin_token_request(&[], &body(&a.refresh_token)).fault, Some(Fault::Reset));
        assert_eq!(s.begin_token_request(&[], b"junk").fault, Some(Fault::Hang));
        s.set_sticky_fault(None);
        let plan = s.begin_token_request(&[], &body(&a.refresh_token));
        assert_eq!(plan.fault, None);
        assert_eq!(plan.account.as_deref(), Some("a"));
        assert_eq!(s.token_requests(), 4);
        assert_eq!(s.token_requests_for("a"), 3);
    }

    #[test]
    fn backend_plan_authorizes_live_tokens_only() {
        let mut s = state();
        let a = s.issue_family("a");
        s.push_backend_fault(Fault::internal_server_error());
        let p = s.begin_backend_request("/backend-api/wham/usage", Some(&a.access_token));
        assert!(p.authorized);
        assert_eq!(p.account.as_deref(), Some("a"));
        assert_eq!(p.fault, Some(Fault::internal_server_error()));
        assert_eq!(p.reply_text, "Banana");
        assert!(!s.begin_backend_request("/backend-api/wham/usage", Some("junk")).authorized);
        assert!(!s.begin_backend_request("/backend-api/wham/usage", None).authorized);
        s.advance_clock(Duration::from_secs(3601));
        assert!(!s.begin_backend_request("/backend-api/wham/usage", Some(&a.access_token)).authorized);
        assert_eq!(s.backend_requests(), 4);
        assert_eq!(s.backend_requests_to("/backend-api/wham/usage"), 4);
        assert_eq!(s.token_requests(), 0, "backend traffic is not token traffic");
    }

    #[test]
    fn family_lookup_by_account_or_id() {
        let mut s = state();
        let first = s.issue_family("a");
        let second = s.issue_family("a");
        assert_eq!(s.current_refresh_token("a"), Some(second.refresh_token.clone()));
        assert_eq!(s.current_refresh_token("1"), Some(first.refresh_token));
        assert_eq!(s.current_refresh_token("3"), None);
        assert!(s.revoke_family("2"));
        assert!(s.family_revoked("a"));
        assert!(!s.family_revoked("1"));
    }
}
