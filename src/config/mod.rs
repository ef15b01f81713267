//! Configuration in three stages (see `inputs`): typed fragments per file → one merged
//! map where later files win per key → validated [`Settings`] with typed fields. Invalid
//! values are fatal with a message naming the file and the key; nothing falls back.

pub mod host;
pub mod inputs;

use crate::core::contract::{DEFAULT_TOKEN_URL, TOKEN_URL_ENV};
use crate::core::policy::Thresholds;
pub use crate::core::task::RefreshMethod;
use inputs::{AccountMerged, Choice, Merged, OVERRIDABLE, Overrides, Sourced, VaultLogin};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG: &str = "/etc/codex-auth-agent/config.toml";
pub const CONFIG_ENV: &str = "CODEX_AUTH_AGENT_CONFIG";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/codex-auth-agent";
/// The refresh timer's period (systemd/codex-auth-refresh.timer); check-config warns when
/// refresh_before_expiry is shorter than two of these.
/// How long a refresher's fleet lease lasts unless renewed.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15 * 60);
/// The daemon's textfile heartbeat (`agent.metrics_interval`); the shipped stale alert
/// fires when the file is 30 min old.
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_VAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// `vault.publish_retry` when unset.
pub const DEFAULT_PUBLISH_RETRY: Duration = Duration::from_secs(30);
/// Seed document 002 key names: seed `codex-auth-json-b64[-<account>]`, rotating
/// `codex-auth-json-b64-rotating-<account>`.
pub const SEED_KEY_PREFIX: &str = "codex-auth-json-b64";
pub const ROTATING_KEY_PREFIX: &str = "codex-auth-json-b64-rotating";
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(86400);
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 86400);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(120);
pub const REFRESH_TIMER_PERIOD: Duration = Duration::from_secs(6 * 3600);

/// A config error: which file, which key, what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config error")?;
        if let Some(file) = &self.file {
            write!(f, " in {}", file.display())?;
        }
        if let Some(key) = &self.key {
            write!(f, " at key `{key}`")?;
        }
        // A token pasted into the config must not come back in the error (stderr, the
        // journal, the Summary property): values that look like secrets are masked.
        write!(f, ": {}", crate::core::redact::redact(&self.message))
    }
}

impl std::error::Error for ConfigError {}

/// Per-account refresh settings (defaults overridden per account).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RefreshSettings {
    pub refresh_method: RefreshMethod,
    pub token_url: String,
    #[serde(with = "humantime_serde_compat")]
    pub refresh_before_expiry: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub max_age: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub request_timeout: Duration,
    pub preflight: bool,
    #[serde(with = "humantime_serde_compat")]
    pub preflight_timeout: Duration,
    pub codex_base_url: String,
    /// The `CODEX_APP_SERVER_LOGIN_CLIENT_ID` this account's Codex runs with (None: Codex's
    /// own client id): our oauth refresh sends it (a Codex we start keeps its own).
    pub login_client_id: Option<String>,
}

impl RefreshSettings {
    pub fn thresholds(&self) -> Thresholds {
        Thresholds { refresh_before_expiry: self.refresh_before_expiry, max_age: self.max_age }
    }
}

/// Serialize durations the way they are written in the config ("1d", "30s").
mod humantime_serde_compat {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccountSettings {
    #[serde(skip)]
    pub name: String,
    pub user: String,
    pub codex_home: PathBuf,
    pub seed: Option<PathBuf>,
    /// Fleet mode through Vault; None = local only.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetSettings>,
    #[serde(flatten)]
    pub refresh: RefreshSettings,
    #[serde(flatten)]
    pub hooks: HookSettings,
}

/// Commands run as the account's user after each recorded outcome (see `hooks`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HookSettings {
    /// argv of `on_success` (after `refreshed` and `preflight_ok`), split with shell-like rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_success: Option<Vec<String>>,
    /// argv of `on_failure` (after `failed` and `preflight_failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<Vec<String>>,
    #[serde(with = "humantime_serde_compat")]
    pub hook_timeout: Duration,
}

/// An account's part in a fleet sharing one credential through Vault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FleetRole {
    /// The one host that refreshes and writes the rotating key.
    Refresher,
    /// Reads the rotating key and installs it locally; never calls the token endpoint.
    Follower,
}

impl FleetRole {
    pub fn as_str(self) -> &'static str {
        match self {
            FleetRole::Refresher => "refresher",
            FleetRole::Follower => "follower",
        }
    }
}

/// Per-account fleet keys (seed document 002 layout).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FleetSettings {
    pub fleet_role: FleetRole,
    pub vault_seed_key: String,
    pub vault_rotating_key: String,
}

/// How the agent logs in to Vault. Paths only: the secrets stay in their files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum VaultAuth {
    Token {
        token_file: PathBuf,
    },
    AppRole {
        approle_role_id_file: PathBuf,
        approle_secret_id_file: PathBuf,
    },
    /// `auth = "kubernetes"`: the pod's service-account token (a JWT the kubelet rotates,
    /// read again at every login) sent to `auth/<kubernetes_mount>/login`; the same request
    /// serves Vault's `kubernetes` and `jwt` auth methods.
    Kubernetes {
        kubernetes_role: String,
        kubernetes_mount: String,
        kubernetes_token_file: PathBuf,
    },
}

/// Where Kubernetes mounts a pod's service-account token.
pub const DEFAULT_SA_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// `[vault]`, validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VaultSettings {
    pub address: String,
    pub mount: String,
    #[serde(flatten)]
    pub auth: VaultAuth,
    pub ca_file: Option<PathBuf>,
    #[serde(with = "humantime_serde_compat")]
    pub request_timeout: Duration,
    /// A refresher whose write of a just-received credential finds Vault unreachable keeps
    /// trying this long (never past its lease) before it leaves the upload to its next run:
    /// a pod's next run has no local copy to upload.
    #[serde(with = "humantime_serde_compat")]
    pub publish_retry: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentSettings {
    pub state_dir: PathBuf,
    pub max_parallel: usize,
    pub codex_bin: String,
    /// This machine's name in fleet leases (default: /etc/machine-id, else the hostname).
    pub host_id: String,
    /// Where `host_id` came from (the fix an identity collision suggests depends on it).
    #[serde(skip)]
    pub host_id_source: HostIdSource,
    #[serde(with = "humantime_serde_compat")]
    pub lease_ttl: Duration,
    /// Where to write the Prometheus textfile after every recorded outcome; None = off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_textfile: Option<PathBuf>,
    /// The daemon rewrites the textfile at least this often, so a stale file (its
    /// `codex_auth_agent_textfile_timestamp_seconds`) means the agent is not running.
    #[serde(with = "humantime_serde_compat")]
    pub metrics_interval: Duration,
}

/// Where `agent.host_id` came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum HostIdSource {
    /// Set in this config file.
    Config(PathBuf),
    /// /etc/machine-id (a cloned VM image shares it unless the clone got its own).
    #[default]
    MachineId,
    /// The hostname (no /etc/machine-id).
    Hostname,
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Settings {
    pub agent: AgentSettings,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultSettings>,
    pub accounts: BTreeMap<String, AccountSettings>,
    #[serde(skip)]
    pub files: Vec<PathBuf>,
    #[serde(skip)]
    pub warnings: Vec<String>,
    /// Codex homes whose owner or mode is wrong today. A user can change those at any
    /// time, so they do not stop the daemon from serving the other accounts (the worker
    /// reports them in that account's state); `check-config` refuses them.
    #[serde(skip)]
    pub home_problems: Vec<ConfigError>,
}

/// What the environment contributes (passed in so tests need not touch the process env).
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub token_url_override: Option<String>,
}

impl Env {
    pub fn from_process() -> Env {
        Env { token_url_override: std::env::var(TOKEN_URL_ENV).ok().filter(|s| !s.is_empty()) }
    }
}

/// The main config path: `--config`, else `$CODEX_AUTH_AGENT_CONFIG`, else the default.
/// A relative path is taken against the current directory here, once, so that nothing
/// derived from it (config.d/, the default seeds/) depends on a later working directory.
pub fn config_path(flag: Option<&Path>) -> PathBuf {
    let p = flag
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    std::path::absolute(&p).unwrap_or(p)
}

/// Load, merge and validate `main` and its drop-ins.
pub fn load(main: &Path, env: &Env) -> Result<Settings, ConfigError> {
    let main = std::path::absolute(main).unwrap_or_else(|_| main.to_path_buf());
    let merged = inputs::load_merged(&main)?;
    validate(&merged, &main, env)
}

/// Settings for single-user mode: built-in defaults, one account "default".
pub fn single_user(codex_home: &Path, user: &str, state_dir: PathBuf, env: &Env) -> Result<Settings, ConfigError> {
    let merged = Merged::default();
    let v = Validator { merged: &merged, env };
    let refresh = v.refresh_settings(None)?;
    let hooks = v.hook_settings(None)?;
    let account = AccountSettings {
        name: "default".into(),
        user: user.to_string(),
        codex_home: codex_home.to_path_buf(),
        seed: None,
        fleet: None,
        refresh,
        hooks,
    };
    Ok(Settings {
        agent: AgentSettings {
            state_dir,
            max_parallel: 1,
            codex_bin: "codex".into(),
            host_id: default_host_id(),
            host_id_source: HostIdSource::default(),
            lease_ttl: DEFAULT_LEASE_TTL,
            metrics_textfile: None,
            metrics_interval: DEFAULT_METRICS_INTERVAL,
        },
        vault: None,
        accounts: BTreeMap::from([("default".to_string(), account)]),
        files: Vec::new(),
        warnings: Vec::new(),
        home_problems: Vec::new(),
    })
}

struct Validator<'a> {
    merged: &'a Merged,
    env: &'a Env,
}

/// An error at `key`, in the file that set `s` when it is set (else no file: a built-in
/// default is wrong, e.g. the machine's host name).
fn err_at<T>(s: Option<&Sourced<T>>, key: &str, message: impl Into<String>) -> ConfigError {
    match s {
        Some(s) => s.err(message),
        None => ConfigError { file: None, key: Some(key.to_string()), message: message.into() },
    }
}

/// A duration as written, else `default`; zero is refused.
fn duration(s: Option<&Sourced<String>>, default: Duration) -> Result<Duration, ConfigError> {
    let Some(s) = s else { return Ok(default) };
    let d = humantime::parse_duration(&s.value)
        .map_err(|e| s.err(format!("{:?} is not a duration ({e}); write e.g. \"90s\", \"6h\" or \"1d\"", s.value)))?;
    if d.is_zero() {
        return Err(s.err("must be longer than zero"));
    }
    Ok(d)
}

/// Why `text` is not a URL we may send tokens to: https, or plain http only on loopback.
fn url_problem(text: &str) -> Option<String> {
    let loopback = ["http://127.", "http://localhost:", "http://localhost/", "http://[::1]"];
    let ok = text.starts_with("https://") || loopback.iter().any(|p| text.starts_with(p));
    (!ok).then(|| format!("{text:?} must be an https:// URL (plain http only on loopback)"))
}

/// A set URL must be one we may send tokens to.
fn url(s: &Sourced<String>) -> Result<(), ConfigError> {
    url_problem(&s.value).map_or(Ok(()), |p| Err(s.err(p)))
}

/// The value as written, if any file set it.
fn given<T: Clone>(s: &Option<Sourced<T>>) -> Option<T> {
    s.as_ref().map(|s| s.value.clone())
}

impl Validator<'_> {
    fn refresh_settings(&self, account: Option<&AccountMerged>) -> Result<RefreshSettings, ConfigError> {
        let pick = |f: fn(&Overrides) -> &Option<Sourced<String>>| self.merged.pick(account, f);
        let refresh_method = self.merged.pick(account, |o| &o.refresh_method).map_or(RefreshMethod::Oauth, |s| s.value);
        let mut token_url = DEFAULT_TOKEN_URL.to_string();
        if let Some(s) = pick(|o| &o.token_url) {
            url(s)?;
            token_url = s.value.clone();
        }
        if let Some(over) = &self.env.token_url_override {
            if let Some(problem) = url_problem(over) {
                return Err(ConfigError { file: None, key: Some(TOKEN_URL_ENV.into()), message: problem });
            }
            token_url = over.clone();
        }
        let codex_base_url = pick(|o| &o.codex_base_url).filter(|s| !s.value.is_empty());
        if let Some(s) = codex_base_url {
            url(s)?;
        }
        let preflight = self.merged.pick(account, |o| &o.preflight).is_none_or(|s| s.value);
        let login_client_id = pick(|o| &o.login_client_id);
        // A client id is an OAuth identifier (`app_…`): nothing that could smuggle a header.
        if let Some(s) = login_client_id {
            if !s.value.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) || s.value.len() > 128 {
                return Err(s.err(
                    "must be an OAuth client id (letters, digits, `_`, `-`, `.`), as in \
                     CODEX_APP_SERVER_LOGIN_CLIENT_ID",
                ));
            }
        }
        Ok(RefreshSettings {
            refresh_method,
            token_url,
            refresh_before_expiry: duration(pick(|o| &o.refresh_before_expiry), DEFAULT_REFRESH_BEFORE_EXPIRY)?,
            max_age: duration(pick(|o| &o.max_age), DEFAULT_MAX_AGE)?,
            request_timeout: duration(pick(|o| &o.request_timeout), DEFAULT_REQUEST_TIMEOUT)?,
            preflight,
            preflight_timeout: duration(pick(|o| &o.preflight_timeout), DEFAULT_PREFLIGHT_TIMEOUT)?,
            codex_base_url: codex_base_url.map(|s| s.value.clone()).unwrap_or_default(),
            login_client_id: login_client_id.map(|s| s.value.clone()).filter(|s| !s.is_empty()),
        })
    }

    /// `on_success`, `on_failure` (argv: absolute program, no shell) and `hook_timeout`.
    fn hook_settings(&self, account: Option<&AccountMerged>) -> Result<HookSettings, ConfigError> {
        let argv = |s: Option<&Sourced<String>>| -> Result<Option<Vec<String>>, ConfigError> {
            let Some(s) = s else { return Ok(None) };
            let text = &s.value;
            let words = shlex::split(text)
                .ok_or_else(|| s.err(format!("{text:?} has an unclosed quote or a trailing backslash")))?;
            match words.first() {
                None => Err(s.err("must not be empty; remove the key to run no hook")),
                Some(prog) if !Path::new(prog).is_absolute() => Err(s.err(format!(
                    "{prog:?} must be an absolute path (hooks run without a shell), e.g. \
                        \"/usr/local/bin/page-oncall --account\""
                ))),
                Some(prog) => match host::hook_problem(Path::new(prog), nix::unistd::geteuid().as_raw()) {
                    Some(problem) => Err(s.err(problem)),
                    None => Ok(Some(words)),
                },
            }
        };
        Ok(HookSettings {
            on_success: argv(self.merged.pick(account, |o| &o.on_success))?,
            on_failure: argv(self.merged.pick(account, |o| &o.on_failure))?,
            hook_timeout: duration(self.merged.pick(account, |o| &o.hook_timeout), DEFAULT_HOOK_TIMEOUT)?,
        })
    }

    fn agent(&self) -> Result<AgentSettings, ConfigError> {
        let a = &self.merged.agent;
        let state_dir = given(&a.state_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        if !state_dir.is_absolute() {
            return Err(err_at(a.state_dir.as_ref(), "agent.state_dir", "must be an absolute path"));
        }
        let max_parallel = given(&a.max_parallel).unwrap_or(8);
        if !(1..=256).contains(&max_parallel) {
            let message = format!("{max_parallel} is out of range; use 1 to 256");
            return Err(err_at(a.max_parallel.as_ref(), "agent.max_parallel", message));
        }
        let codex_bin = given(&a.codex_bin).unwrap_or_else(|| "codex".into());
        if codex_bin.is_empty() {
            return Err(err_at(a.codex_bin.as_ref(), "agent.codex_bin", "must not be empty"));
        }
        let (host_id, host_id_source) = match &a.host_id {
            Some(s) => (s.value.clone(), HostIdSource::Config(s.file.clone())),
            None => default_host_id_and_source(),
        };
        if host_id.is_empty() || host_id.len() > 253 || host_id.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err_at(a.host_id.as_ref(), "agent.host_id", "must be 1 to 253 characters without spaces"));
        }
        let metrics_textfile = match &a.metrics_textfile {
            Some(s) => {
                let p = &s.value;
                if !p.is_absolute() || p.file_name().is_none() {
                    return Err(s.err("must be an absolute file path"));
                }
                if p.extension().is_none_or(|x| x != "prom") {
                    return Err(s.err("must end in .prom (node_exporter's textfile collector reads only *.prom)"));
                }
                Some(p.clone())
            }
            None => None,
        };
        Ok(AgentSettings {
            state_dir,
            max_parallel: max_parallel as usize,
            codex_bin,
            host_id,
            host_id_source,
            lease_ttl: duration(a.lease_ttl.as_ref(), DEFAULT_LEASE_TTL)?,
            metrics_textfile,
            metrics_interval: duration(a.metrics_interval.as_ref(), DEFAULT_METRICS_INTERVAL)?,
        })
    }

    /// `[vault]`, when any of its keys is set.
    fn vault(&self) -> Result<Option<VaultSettings>, ConfigError> {
        let v = &self.merged.vault;
        let Some(first) = v.any_file() else { return Ok(None) };
        let Some(address) = &v.address else {
            return Err(ConfigError {
                file: Some(first.to_path_buf()),
                key: Some("vault.address".into()),
                message: "is required in [vault], e.g. \"https://vault.example:8200\"".into(),
            });
        };
        url(address)?;
        let mount = given(&v.mount).unwrap_or_else(|| "secret".into());
        if !valid_vault_path(&mount) {
            let message = format!("{mount:?} is not a KV v2 mount path (e.g. \"secret\")");
            return Err(err_at(v.mount.as_ref(), "vault.mount", message));
        }
        let auth = match &v.auth {
            Some(s) if s.value == VaultLogin::Kubernetes => self.kubernetes_auth(s)?,
            _ => self.file_auth(address)?,
        };
        if let Some(want) = &v.auth {
            let got = match auth {
                VaultAuth::Token { .. } => VaultLogin::Token,
                VaultAuth::AppRole { .. } => VaultLogin::AppRole,
                VaultAuth::Kubernetes { .. } => VaultLogin::Kubernetes,
            };
            if want.value != got {
                let message = format!("is {:?} but the keys given are those of {:?}", want.value.word(), got.word());
                return Err(want.err(message));
            }
        }
        if let Some(ca) = &v.ca_file {
            if !ca.value.is_absolute() {
                return Err(ca.err("must be an absolute path"));
            }
        }
        Ok(Some(VaultSettings {
            address: address.value.trim_end_matches('/').to_string(),
            mount,
            auth,
            ca_file: given(&v.ca_file),
            request_timeout: duration(v.request_timeout.as_ref(), DEFAULT_VAULT_TIMEOUT)?,
            publish_retry: duration(v.publish_retry.as_ref(), DEFAULT_PUBLISH_RETRY)?,
        }))
    }

    /// token_file, or the two AppRole files (`auth` absent, "token" or "approle").
    fn file_auth(&self, address: &Sourced<String>) -> Result<VaultAuth, ConfigError> {
        let v = &self.merged.vault;
        let kubernetes = [&v.kubernetes_role, &v.kubernetes_mount];
        if let Some(s) = kubernetes.into_iter().flatten().next() {
            return Err(s.err("only applies with auth = \"kubernetes\" in [vault]"));
        }
        if let Some(s) = &v.kubernetes_token_file {
            return Err(s.err("only applies with auth = \"kubernetes\" in [vault]"));
        }
        Ok(match (&v.token_file, &v.approle_role_id_file, &v.approle_secret_id_file) {
            (Some(t), None, None) => {
                secret_file(t)?;
                VaultAuth::Token { token_file: t.value.clone() }
            }
            (None, Some(r), Some(s)) => {
                secret_file(r)?;
                secret_file(s)?;
                VaultAuth::AppRole { approle_role_id_file: r.value.clone(), approle_secret_id_file: s.value.clone() }
            }
            (Some(t), _, _) => {
                return Err(t.err("set either token_file or the two approle_*_file keys, not both"));
            }
            (None, Some(r), None) => {
                return Err(r.err("also set approle_secret_id_file (AppRole needs both)"));
            }
            (None, None, Some(s)) => {
                return Err(s.err("also set approle_role_id_file (AppRole needs both)"));
            }
            (None, None, None) => {
                return Err(address.err(
                    "[vault] needs token_file, or approle_role_id_file and approle_secret_id_file, or auth = \
                        \"kubernetes\" with kubernetes_role",
                ));
            }
        })
    }

    /// `auth = "kubernetes"`: a role is required; the mount and the token path have
    /// defaults. The token file is not checked here: the kubelet creates and rotates it,
    /// and every login reads it again.
    fn kubernetes_auth(&self, auth: &Sourced<VaultLogin>) -> Result<VaultAuth, ConfigError> {
        let v = &self.merged.vault;
        let files = [&v.token_file, &v.approle_role_id_file, &v.approle_secret_id_file];
        if let Some(s) = files.into_iter().flatten().next() {
            return Err(s.err("does not apply with auth = \"kubernetes\" (the service-account token logs in)"));
        }
        let Some(role) = v.kubernetes_role.as_ref().filter(|r| !r.value.is_empty()) else {
            return Err(auth.err(
                "auth = \"kubernetes\" needs kubernetes_role in [vault]: the Vault role bound to the service account",
            ));
        };
        let kubernetes_role = role.value.clone();
        if !valid_vault_path(&kubernetes_role) || kubernetes_role.contains('/') {
            return Err(role.err(format!("{kubernetes_role:?} is not a Vault role name")));
        }
        let kubernetes_mount = given(&v.kubernetes_mount).unwrap_or_else(|| "kubernetes".into());
        if !valid_vault_path(&kubernetes_mount) {
            let message = format!("{kubernetes_mount:?} is not an auth mount path (e.g. \"kubernetes\")");
            return Err(err_at(v.kubernetes_mount.as_ref(), "vault.kubernetes_mount", message));
        }
        let kubernetes_token_file = given(&v.kubernetes_token_file).unwrap_or_else(|| DEFAULT_SA_TOKEN_FILE.into());
        if !kubernetes_token_file.is_absolute() {
            let file = v.kubernetes_token_file.as_ref();
            return Err(err_at(file, "vault.kubernetes_token_file", "must be an absolute path"));
        }
        Ok(VaultAuth::Kubernetes { kubernetes_role, kubernetes_mount, kubernetes_token_file })
    }

    /// An account's fleet keys, when `fleet_role` is set.
    fn fleet(
        &self,
        name: &str,
        a: &AccountMerged,
        vault: Option<&VaultSettings>,
    ) -> Result<Option<FleetSettings>, ConfigError> {
        let Some(role) = &a.fleet_role else {
            if let Some(s) = [&a.vault_seed_key, &a.vault_rotating_key].into_iter().flatten().next() {
                return Err(s.err("only applies with fleet_role = \"refresher\" or \"follower\""));
            }
            return Ok(None);
        };
        if vault.is_none() {
            return Err(role.err("fleet mode needs a [vault] section (address and credentials)"));
        }
        let seed_default =
            if name == "default" { SEED_KEY_PREFIX.to_string() } else { format!("{SEED_KEY_PREFIX}-{name}") };
        let vault_seed_key = given(&a.vault_seed_key).unwrap_or(seed_default);
        let vault_rotating_key =
            given(&a.vault_rotating_key).unwrap_or_else(|| format!("{ROTATING_KEY_PREFIX}-{name}"));
        for (k, s, v) in [
            ("vault_seed_key", &a.vault_seed_key, &vault_seed_key),
            ("vault_rotating_key", &a.vault_rotating_key, &vault_rotating_key),
        ] {
            if !valid_vault_path(v) {
                let message = format!("{v:?} is not a valid KV key (letters, digits, -, _, ., /)");
                return Err(a.err(name, s, k, message));
            }
        }
        if vault_seed_key == vault_rotating_key {
            return Err(a.err(name, &a.vault_rotating_key, "vault_rotating_key", "must differ from vault_seed_key"));
        }
        Ok(Some(FleetSettings { fleet_role: role.value, vault_seed_key, vault_rotating_key }))
    }

    fn account(
        &self,
        name: &str,
        a: &AccountMerged,
        config_dir: &Path,
        vault: Option<&VaultSettings>,
    ) -> Result<AccountSettings, ConfigError> {
        if !valid_account_name(name) {
            return Err(ConfigError {
                file: Some(a.declared_in.clone()),
                key: Some(format!("accounts.{name}")),
                message: "account names must match [a-z0-9][a-z0-9-]{0,62}".into(),
            });
        }
        let Some(user) = &a.user else {
            let message = "is required: the Unix user that owns this account's codex_home";
            return Err(a.err(name, &a.user, "user", message));
        };
        let pw = nix::unistd::User::from_name(&user.value)
            .ok()
            .flatten()
            .ok_or_else(|| user.err(format!("no such user {:?}; create it or fix the name", user.value)))?;
        let codex_home = given(&a.codex_home).unwrap_or_else(|| pw.dir.join(".codex"));
        if !codex_home.is_absolute() {
            return Err(a.err(name, &a.codex_home, "codex_home", "must be an absolute path"));
        }
        let seed = match &a.seed {
            Some(s) if !s.value.is_absolute() => return Err(s.err("must be an absolute path")),
            Some(s) => s.value.clone(),
            None => config_dir.join("seeds").join(format!("{name}.json")),
        };
        Ok(AccountSettings {
            name: name.to_string(),
            user: user.value.clone(),
            codex_home,
            seed: Some(seed),
            fleet: self.fleet(name, a, vault)?,
            refresh: self.refresh_settings(Some(a))?,
            hooks: self.hook_settings(Some(a))?,
        })
    }
}

/// A file holding a Vault secret: absolute, a regular file, owned by us, 0600 or 0400.
fn secret_file(s: &Sourced<PathBuf>) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let p = &s.value;
    if !p.is_absolute() {
        return Err(s.err("must be an absolute path"));
    }
    let md = std::fs::symlink_metadata(p).map_err(|e| s.err(format!("{} cannot be read: {e}", p.display())))?;
    let me = nix::unistd::geteuid().as_raw();
    let mode = md.mode() & 0o7777;
    if !md.file_type().is_file() || md.uid() != me || !(mode == 0o600 || mode == 0o400) {
        return Err(s.err(format!(
            "{} must be a regular file owned by uid {me} with mode 0600 or 0400 (it holds a Vault \
                secret); fix: chown {me} {0} && chmod 600 {0}",
            p.display()
        )));
    }
    Ok(())
}

/// A KV mount or key path: `[A-Za-z0-9._-]` segments separated by single slashes.
fn valid_vault_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 512
        && p.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

/// /etc/machine-id, else the hostname: stable per machine without configuration.
pub fn default_host_id() -> String {
    default_host_id_and_source().0
}

/// [`default_host_id`] and which of the two it is.
pub fn default_host_id_and_source() -> (String, HostIdSource) {
    let machine_id = std::fs::read_to_string("/etc/machine-id").ok().map(|s| s.trim().to_string());
    match machine_id.filter(|s| !s.is_empty()) {
        Some(id) => (id, HostIdSource::MachineId),
        None => (
            nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "unknown-host".into()),
            HostIdSource::Hostname,
        ),
    }
}

/// How long a refresher's worker may run at most with these settings: the same sum as
/// `worker::Job::deadline` (checked against it by a test in `fleet`), from the worker's
/// own pieces — the wait for another cycle or a preflight, the refresh step, Codex's
/// commit locks, and 10 s of slack.
pub fn worker_deadline(r: &RefreshSettings) -> Duration {
    crate::core::task::cycle_deadline(r.refresh_method, r.request_timeout, r.preflight_timeout)
}

/// `agent.lease_ttl` must outlast the longest cycle of every fleet refresher here: a lease
/// that runs out mid-cycle lets another refresher take it and spend the same refresh token.
/// Followers never hold the lease, so a config without refreshers is not checked.
fn check_lease_ttl(
    merged: &Merged,
    agent: &AgentSettings,
    vault: Option<&VaultSettings>,
    accounts: &BTreeMap<String, AccountSettings>,
) -> Result<(), ConfigError> {
    let Some(vault) = vault else { return Ok(()) };
    let refreshers =
        accounts.values().filter(|a| a.fleet.as_ref().is_some_and(|f| f.fleet_role == FleetRole::Refresher));
    let Some((acct, deadline)) = refreshers.map(|a| (a, worker_deadline(&a.refresh))).max_by_key(|(_, d)| *d) else {
        return Ok(());
    };
    let minimum = crate::core::lease::min_ttl(deadline, vault.request_timeout);
    if agent.lease_ttl >= minimum {
        return Ok(());
    }
    let fmt = |d: Duration| humantime::format_duration(d).to_string();
    let (given, file) = match &merged.agent.lease_ttl {
        Some(s) => (fmt(agent.lease_ttl), Some(s.file.clone())),
        None => (format!("the default {}", fmt(agent.lease_ttl)), merged.files.first().cloned()),
    };
    let r = &acct.refresh;
    Err(ConfigError {
        file,
        key: Some("agent.lease_ttl".into()),
        message: format!(
            "{given} is shorter than one refresher cycle of account {} can take ({}: the worker's deadline of \
                {} — waiting for another cycle or a preflight (preflight_timeout {}), the refresh ({}, request_timeout \
                {}), Codex's locks before the POST and at the commit, a yield to a running Codex and a verifying \
                second refresh — plus {} Vault requests of up to {} each (vault.request_timeout)); a lease that runs \
                out mid-cycle lets another refresher take it and spend the same refresh token (refresh_token_reused); \
                set agent.lease_ttl to at least {}",
            acct.name,
            fmt(minimum),
            fmt(deadline),
            fmt(r.preflight_timeout),
            match r.refresh_method {
                RefreshMethod::Oauth => "oauth",
                RefreshMethod::AppServer => "app-server",
            },
            fmt(r.request_timeout),
            crate::core::lease::VAULT_REQUESTS_AFTER_LEASE,
            fmt(vault.request_timeout),
            fmt(minimum),
        ),
    })
}

/// Each codex_home lies outside system and agent directories and has one account; each
/// Vault rotating key has one account too (two writers of one auth.json or one rotating
/// key spend each other's refresh tokens). Returns the homes whose owner or mode is wrong
/// (see `Settings::home_problems`).
fn check_homes(
    merged: &Merged,
    agent: &AgentSettings,
    config_dir: &Path,
    accounts: &BTreeMap<String, AccountSettings>,
) -> Result<Vec<ConfigError>, ConfigError> {
    let merged_account = |name: &str| &merged.accounts[name];
    let agent_dirs = [agent.state_dir.clone(), config_dir.to_path_buf()];
    let service = agent.state_dir == Path::new(DEFAULT_STATE_DIR);
    let mut homes: BTreeMap<PathBuf, &str> = BTreeMap::new();
    let mut rotating: BTreeMap<&str, &str> = BTreeMap::new();
    let mut problems = Vec::new();
    for a in accounts.values() {
        if let Some(problem) = host::home_problem(&a.codex_home, &a.user, &agent_dirs, service) {
            let m = merged_account(&a.name);
            return Err(m.err(&a.name, &m.codex_home, "codex_home", problem));
        }
        let uid = nix::unistd::User::from_name(&a.user).ok().flatten().map(|u| u.uid.as_raw()).unwrap_or(u32::MAX);
        if let Some(problem) = host::home_owner_problem(&a.codex_home, &a.user, uid) {
            let m = merged_account(&a.name);
            problems.push(m.err(&a.name, &m.codex_home, "codex_home", problem));
        }
        let real = std::fs::canonicalize(&a.codex_home).unwrap_or_else(|_| a.codex_home.clone());
        if let Some(other) = homes.insert(real.clone(), &a.name) {
            let m = merged_account(&a.name);
            return Err(m.err(
                &a.name,
                &m.codex_home,
                "codex_home",
                format!(
                    "{} is also the codex_home of account {other}: two writers of one auth.json spend each other's \
                     refresh tokens; give each account its own codex_home (or remove one account)",
                    real.display()
                ),
            ));
        }
        if let Some(f) = &a.fleet {
            if let Some(other) = rotating.insert(&f.vault_rotating_key, &a.name) {
                let m = merged_account(&a.name);
                return Err(m.err(
                    &a.name,
                    &m.vault_rotating_key,
                    "vault_rotating_key",
                    format!(
                        "{:?} is also the rotating key of account {other}: both would write it and spend each \
                         other's refresh tokens; give each account its own vault_rotating_key",
                        f.vault_rotating_key
                    ),
                ));
            }
        }
    }
    Ok(problems)
}

/// `[a-z0-9][a-z0-9-]{0,62}`
pub fn valid_account_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=63).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn validate(merged: &Merged, main: &Path, env: &Env) -> Result<Settings, ConfigError> {
    let v = Validator { merged, env };
    let agent = v.agent()?;
    let vault = v.vault()?;
    // Validate [defaults] on their own too, so a bad default is reported even with no accounts.
    v.refresh_settings(None)?;
    v.hook_settings(None)?;
    let config_dir = main.parent().unwrap_or(Path::new("/"));
    let mut accounts = BTreeMap::new();
    for (name, a) in &merged.accounts {
        accounts.insert(name.clone(), v.account(name, a, config_dir, vault.as_ref())?);
    }
    check_lease_ttl(merged, &agent, vault.as_ref(), &accounts)?;
    let home_problems = check_homes(merged, &agent, config_dir, &accounts)?;
    let mut warnings = Vec::new();
    for a in accounts.values() {
        if a.refresh.refresh_before_expiry < 2 * REFRESH_TIMER_PERIOD {
            warnings.push(format!(
                "account {}: refresh_before_expiry ({}) is shorter than two refresh-timer periods ({}); the \
                    token could lapse between checks",
                a.name,
                humantime::format_duration(a.refresh.refresh_before_expiry),
                humantime::format_duration(2 * REFRESH_TIMER_PERIOD)
            ));
        }
    }
    Ok(Settings { agent, vault, accounts, files: merged.files.clone(), warnings, home_problems })
}

impl Settings {
    /// The resolved configuration as TOML (for check-config). Holds no secrets.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.files {
            out.push_str(&format!("# read: {}\n", f.display()));
        }
        out.push_str(&format!("# overridable per account: {}\n", OVERRIDABLE.join(", ")));
        out.push_str(&toml::to_string_pretty(self).unwrap_or_default());
        out
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
