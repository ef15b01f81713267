//! Stage 1 and 2: each file is parsed into a typed fragment (unknown keys and wrong types
//! are errors naming the file), then fragments are flattened into one map of dotted keys
//! where a later file wins per key and every value remembers the file it came from.

use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Keys that `[defaults]` sets and any `[accounts.NAME]` may override. One list feeds both
/// structs so the two can never drift apart.
macro_rules! overridable {
    ($($key:ident: $ty:ty),* $(,)?) => {
        #[derive(Debug, Default, Deserialize, Serialize)]
        #[serde(deny_unknown_fields)]
        pub struct DefaultsFragment { $(pub $key: Option<$ty>,)* }

        #[derive(Debug, Default, Deserialize, Serialize)]
        #[serde(deny_unknown_fields)]
        pub struct AccountFragment {
            pub user: Option<String>,
            pub codex_home: Option<PathBuf>,
            pub seed: Option<PathBuf>,
            /// Fleet mode (per account only): "refresher" | "follower".
            pub fleet_role: Option<String>,
            pub vault_seed_key: Option<String>,
            pub vault_rotating_key: Option<String>,
            $(pub $key: Option<$ty>,)*
        }

        /// The overridable key names, in the order check-config prints them.
        pub const OVERRIDABLE: &[&str] = &[$(stringify!($key)),*];
    };
}

overridable! {
    refresh_method: String,
    token_url: String,
    refresh_before_expiry: String,
    max_age: String,
    request_timeout: String,
    preflight: bool,
    preflight_timeout: String,
    codex_base_url: String,
    login_client_id: String,
    on_success: String,
    on_failure: String,
    hook_timeout: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFragment {
    pub state_dir: Option<PathBuf>,
    pub max_parallel: Option<i64>,
    pub codex_bin: Option<String>,
    /// This machine's name in fleet leases.
    pub host_id: Option<String>,
    pub lease_ttl: Option<String>,
    /// Prometheus textfile-collector output; absent = off.
    pub metrics_textfile: Option<PathBuf>,
    /// How often the daemon rewrites the textfile with no outcome to record (heartbeat).
    pub metrics_interval: Option<String>,
}

/// `[vault]`: the KV v2 store shared by a fleet of agents.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VaultFragment {
    pub address: Option<String>,
    pub mount: Option<String>,
    pub token_file: Option<PathBuf>,
    pub approle_role_id_file: Option<PathBuf>,
    pub approle_secret_id_file: Option<PathBuf>,
    /// "token" | "approle" | "kubernetes"; absent: chosen by the file keys given.
    pub auth: Option<String>,
    pub kubernetes_role: Option<String>,
    pub kubernetes_mount: Option<String>,
    pub kubernetes_token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub request_timeout: Option<String>,
    /// How long a refresher keeps retrying the write of a credential it just received when
    /// Vault does not answer (within its lease).
    pub publish_retry: Option<String>,
}

/// One config file as written.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileFragment {
    pub agent: Option<AgentFragment>,
    pub defaults: Option<DefaultsFragment>,
    pub vault: Option<VaultFragment>,
    pub accounts: Option<BTreeMap<String, AccountFragment>>,
}

/// All files merged: dotted key → (value, file it came from).
#[derive(Debug, Default)]
pub struct Merged {
    pub values: BTreeMap<String, (toml::Value, PathBuf)>,
    /// Account name → the first file that declared it.
    pub accounts: BTreeMap<String, PathBuf>,
    /// Files read, in order.
    pub files: Vec<PathBuf>,
}

impl Merged {
    pub fn get(&self, key: &str) -> Option<(&toml::Value, &Path)> {
        self.values.get(key).map(|(v, p)| (v, p.as_path()))
    }

    fn absorb(&mut self, prefix: &str, value: toml::Value, file: &Path) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
                    self.absorb(&key, v, file);
                }
            }
            leaf => {
                self.values.insert(prefix.to_string(), (leaf, file.to_path_buf()));
            }
        }
    }
}

fn read_fragment(path: &Path) -> Result<FileFragment, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: Some(path.to_path_buf()),
        key: None,
        message: if e.kind() == std::io::ErrorKind::NotFound {
            "not found; create it (see codex-auth-agent.toml(5)) or use --codex-home for single-user mode".into()
        } else if e.kind() == std::io::ErrorKind::InvalidData {
            "is not UTF-8 text; TOML files must be UTF-8 (check for a stray byte or another encoding)".into()
        } else {
            format!("cannot be read: {e}")
        },
    })?;
    // Deserialize once, tracking the path: toml's message shows the offending line but not
    // the section it is in, so the dotted key (accounts.a.user) comes from the path.
    serde_path_to_error::deserialize(toml::Deserializer::new(&text)).map_err(|e| {
        let key = e.path().to_string();
        ConfigError {
            file: Some(path.to_path_buf()),
            key: (!key.is_empty() && key != ".").then_some(key),
            message: parse_error(&text, e.inner()),
        }
    })
}

/// Where and what, without toml's quote of the offending line (which may hold a secret).
fn parse_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end().replace('\n', "; ");
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before[line_start..].chars().count() + 1;
            // The key of that line (not its value) still says which setting is wrong.
            let key = text[line_start..].lines().next().and_then(|l| l.split_once('=')).map(|(k, _)| k.trim());
            match key.filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "_-.\"".contains(c))) {
                Some(k) => format!("TOML parse error at line {line}, column {column} (`{k} = …`): {message}"),
                None => format!("TOML parse error at line {line}, column {column}: {message}"),
            }
        }
        None => format!("TOML parse error: {message}"),
    }
}

/// The drop-ins beside `main`: `config.d/*.toml` in lexical order.
pub fn drop_ins(main: &Path) -> Vec<PathBuf> {
    let dir = main.parent().unwrap_or(Path::new(".")).join("config.d");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Read `main` and its drop-ins and merge them, later files winning per key.
pub fn load_merged(main: &Path) -> Result<Merged, ConfigError> {
    let mut merged = Merged::default();
    for file in std::iter::once(main.to_path_buf()).chain(drop_ins(main)) {
        let fragment = read_fragment(&file)?;
        if let Some(accounts) = &fragment.accounts {
            for name in accounts.keys() {
                merged.accounts.entry(name.clone()).or_insert_with(|| file.clone());
            }
        }
        // A fragment that just deserialized always serializes back.
        let value = toml::Value::try_from(&fragment).unwrap_or(toml::Value::Table(Default::default()));
        merged.absorb("", value, &file);
        merged.files.push(file);
    }
    Ok(merged)
}
