//! Configuration in three stages (see `inputs`): typed fragments per file → one merged
//! map where later files win per key → validated [`Settings`] with typed fields. Invalid
//! values are fatal with a message naming the file and the key; nothing falls back.

pub mod inputs;

use crate::policy::Thresholds;
use crate::refresh::{DEFAULT_TOKEN_URL, TOKEN_URL_ENV};
use inputs::{Merged, OVERRIDABLE};
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
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefreshMethod {
    Oauth,
    AppServer,
}

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
    #[serde(flatten)]
    pub refresh: RefreshSettings,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentSettings {
    pub state_dir: PathBuf,
    pub max_parallel: usize,
    pub codex_bin: String,
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Settings {
    pub agent: AgentSettings,
    pub accounts: BTreeMap<String, AccountSettings>,
    #[serde(skip)]
    pub files: Vec<PathBuf>,
    #[serde(skip)]
    pub warnings: Vec<String>,
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
pub fn config_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

/// Load, merge and validate `main` and its drop-ins.
pub fn load(main: &Path, env: &Env) -> Result<Settings, ConfigError> {
    let merged = inputs::load_merged(main)?;
    validate(&merged, main, env)
}

/// Settings for single-user mode: built-in defaults, one account "default".
pub fn single_user(codex_home: &Path, user: &str, state_dir: PathBuf, env: &Env) -> Result<Settings, ConfigError> {
    let merged = Merged::default();
    let v = Validator { merged: &merged, env };
    let refresh = v.refresh_settings(None)?;
    let account = AccountSettings {
        name: "default".into(),
        user: user.to_string(),
        codex_home: codex_home.to_path_buf(),
        seed: None,
        refresh,
    };
    Ok(Settings {
        agent: AgentSettings { state_dir, max_parallel: 1, codex_bin: "codex".into() },
        accounts: BTreeMap::from([("default".to_string(), account)]),
        files: Vec::new(),
        warnings: Vec::new(),
    })
}

struct Validator<'a> {
    merged: &'a Merged,
    env: &'a Env,
}

impl Validator<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.merged.get(key).map(|(_, p)| p.to_path_buf()),
            key: Some(key.to_string()),
            message: message.into(),
        }
    }

    /// The account's own value for `key`, else `[defaults]`; with the key it came from.
    fn lookup(&self, account: Option<&str>, key: &str) -> Option<(String, &toml::Value)> {
        account
            .map(|a| format!("accounts.{a}.{key}"))
            .into_iter()
            .chain(std::iter::once(format!("defaults.{key}")))
            .find_map(|k| self.merged.get(&k).map(|(v, _)| (k, v)))
    }

    fn string(&self, account: Option<&str>, key: &str, default: &str) -> (String, String) {
        match self.lookup(account, key) {
            Some((k, v)) => (k, v.as_str().unwrap_or_default().to_string()),
            None => (format!("defaults.{key}"), default.to_string()),
        }
    }

    fn duration(&self, account: Option<&str>, key: &str, default: &str) -> Result<Duration, ConfigError> {
        let (k, text) = self.string(account, key, default);
        let d = humantime::parse_duration(&text).map_err(|e| {
            self.err(&k, format!("{text:?} is not a duration ({e}); write e.g. \"90s\", \"6h\" or \"1d\""))
        })?;
        if d.is_zero() {
            return Err(self.err(&k, "must be longer than zero"));
        }
        Ok(d)
    }

    fn url(&self, key: &str, text: &str, allow_empty: bool) -> Result<(), ConfigError> {
        if allow_empty && text.is_empty() {
            return Ok(());
        }
        let loopback = ["http://127.", "http://localhost:", "http://localhost/", "http://[::1]"];
        if text.starts_with("https://") || loopback.iter().any(|p| text.starts_with(p)) {
            Ok(())
        } else {
            Err(self.err(key, format!("{text:?} must be an https:// URL (plain http only on loopback)")))
        }
    }

    fn refresh_settings(&self, account: Option<&str>) -> Result<RefreshSettings, ConfigError> {
        let (k, method) = self.string(account, "refresh_method", "oauth");
        let refresh_method = match method.as_str() {
            "oauth" => RefreshMethod::Oauth,
            "app-server" => RefreshMethod::AppServer,
            other => {
                return Err(self.err(&k, format!("{other:?} is not a refresh method; use \"oauth\" or \"app-server\"")));
            }
        };
        let (k, mut token_url) = self.string(account, "token_url", DEFAULT_TOKEN_URL);
        self.url(&k, &token_url, false)?;
        if let Some(over) = &self.env.token_url_override {
            self.url(TOKEN_URL_ENV, over, false).map_err(|mut e| {
                e.file = None;
                e
            })?;
            token_url = over.clone();
        }
        let (k, codex_base_url) = self.string(account, "codex_base_url", "");
        self.url(&k, &codex_base_url, true)?;
        let preflight = self.lookup(account, "preflight").and_then(|(_, v)| v.as_bool()).unwrap_or(true);
        Ok(RefreshSettings {
            refresh_method,
            token_url,
            refresh_before_expiry: self.duration(account, "refresh_before_expiry", "1d")?,
            max_age: self.duration(account, "max_age", "7d")?,
            request_timeout: self.duration(account, "request_timeout", "30s")?,
            preflight,
            preflight_timeout: self.duration(account, "preflight_timeout", "120s")?,
            codex_base_url,
        })
    }

    fn agent(&self) -> Result<AgentSettings, ConfigError> {
        let state_dir = match self.merged.get("agent.state_dir") {
            Some((v, _)) => PathBuf::from(v.as_str().unwrap_or_default()),
            None => PathBuf::from(DEFAULT_STATE_DIR),
        };
        if !state_dir.is_absolute() {
            return Err(self.err("agent.state_dir", "must be an absolute path"));
        }
        let max_parallel = match self.merged.get("agent.max_parallel") {
            Some((v, _)) => v.as_integer().unwrap_or(0),
            None => 8,
        };
        if !(1..=256).contains(&max_parallel) {
            return Err(self.err("agent.max_parallel", format!("{max_parallel} is out of range; use 1 to 256")));
        }
        let codex_bin = match self.merged.get("agent.codex_bin") {
            Some((v, _)) => v.as_str().unwrap_or_default().to_string(),
            None => "codex".into(),
        };
        if codex_bin.is_empty() {
            return Err(self.err("agent.codex_bin", "must not be empty"));
        }
        Ok(AgentSettings { state_dir, max_parallel: max_parallel as usize, codex_bin })
    }

    fn account(&self, name: &str, config_dir: &Path) -> Result<AccountSettings, ConfigError> {
        let file = self.merged.accounts.get(name).cloned();
        if !valid_account_name(name) {
            return Err(ConfigError {
                file,
                key: Some(format!("accounts.{name}")),
                message: "account names must match [a-z0-9][a-z0-9-]{0,62}".into(),
            });
        }
        let key = |k: &str| format!("accounts.{name}.{k}");
        let Some((user, _)) = self.merged.get(&key("user")) else {
            return Err(ConfigError {
                file,
                key: Some(key("user")),
                message: "is required: the Unix user that owns this account's codex_home".into(),
            });
        };
        let user = user.as_str().unwrap_or_default().to_string();
        let pw = nix::unistd::User::from_name(&user)
            .ok()
            .flatten()
            .ok_or_else(|| self.err(&key("user"), format!("no such user {user:?}; create it or fix the name")))?;
        let codex_home = match self.merged.get(&key("codex_home")) {
            Some((v, _)) => PathBuf::from(v.as_str().unwrap_or_default()),
            None => pw.dir.join(".codex"),
        };
        if !codex_home.is_absolute() {
            return Err(self.err(&key("codex_home"), "must be an absolute path"));
        }
        let seed = match self.merged.get(&key("seed")) {
            Some((v, _)) => {
                let p = PathBuf::from(v.as_str().unwrap_or_default());
                if !p.is_absolute() {
                    return Err(self.err(&key("seed"), "must be an absolute path"));
                }
                Some(p)
            }
            None => Some(config_dir.join("seeds").join(format!("{name}.json"))),
        };
        Ok(AccountSettings {
            name: name.to_string(),
            user,
            codex_home,
            seed,
            refresh: self.refresh_settings(Some(name))?,
        })
    }
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
    // Validate [defaults] on their own too, so a bad default is reported even with no accounts.
    v.refresh_settings(None)?;
    let config_dir = main.parent().unwrap_or(Path::new("/"));
    let mut accounts = BTreeMap::new();
    for name in merged.accounts.keys() {
        accounts.insert(name.clone(), v.account(name, config_dir)?);
    }
    let mut warnings = Vec::new();
    for a in accounts.values() {
        if a.refresh.refresh_before_expiry < 2 * REFRESH_TIMER_PERIOD {
            warnings.push(format!(
                "account {}: refresh_before_expiry ({}) is shorter than two refresh-timer periods ({}); the token could lapse between checks",
                a.name,
                humantime::format_duration(a.refresh.refresh_before_expiry),
                humantime::format_duration(2 * REFRESH_TIMER_PERIOD)
            ));
        }
    }
    Ok(Settings { agent, accounts, files: merged.files.clone(), warnings })
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
mod tests;
