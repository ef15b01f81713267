//! Stage 1 and 2: each file is parsed into a typed fragment (unknown keys, wrong types and
//! unknown enum words are errors naming the file, the key and the line), then the fragments
//! are merged into typed sections where a later file wins per field and every value
//! remembers the file and the key that set it ([`Sourced`]).

use super::{ConfigError, FleetRole, RefreshMethod};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

/// A merged value and where it was set, so an error about it names the file and the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub file: PathBuf,
    /// The dotted key as written: `accounts.a.user`, `defaults.max_age`.
    pub key: String,
}

impl<T> Sourced<T> {
    pub fn err(&self, message: impl Into<String>) -> ConfigError {
        ConfigError { file: Some(self.file.clone()), key: Some(self.key.clone()), message: message.into() }
    }
}

/// A later file's value replaces an earlier one.
fn set<T>(slot: &mut Option<Sourced<T>>, value: Option<T>, prefix: &str, name: &str, file: &Path) {
    if let Some(value) = value {
        *slot = Some(Sourced { value, file: file.to_path_buf(), key: format!("{prefix}.{name}") });
    }
}

/// A section twice from one field list: the fragment as one file writes it (all fields
/// optional, unknown keys refused) and the merged section (each field with its source).
macro_rules! section {
    ($(#[$doc:meta])* $frag:ident => $merged:ident { $($(#[$attr:meta])* $key:ident: $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $frag { $($(#[$attr])* pub $key: Option<$ty>,)* }

        /// The merged section: each field from the last file that set it.
        #[derive(Clone, Debug, Default)]
        pub struct $merged { $(pub $key: Option<Sourced<$ty>>,)* }

        impl $merged {
            fn absorb(&mut self, fragment: $frag, prefix: &str, file: &Path) {
                $(set(&mut self.$key, fragment.$key, prefix, stringify!($key), file);)*
            }

            /// The file of the first field set (in the order above), if any is.
            pub fn any_file(&self) -> Option<&Path> {
                [$(self.$key.as_ref().map(|s| s.file.as_path())),*].into_iter().flatten().next()
            }
        }
    };
}

/// `[defaults]` and `[accounts.NAME]` from two lists: the keys only an account has, and
/// those `[defaults]` sets and an account may override. The account's fragment is flat
/// (serde's `flatten` would lose `deny_unknown_fields` and the error's key path); its merged
/// form keeps the overridable keys in an [`Overrides`], the type `[defaults]` merges into.
macro_rules! accounts_and_defaults {
    (
        own { $($(#[$oattr:meta])* $own:ident: $oty:ty),* $(,)? }
        overridable { $($(#[$attr:meta])* $key:ident: $ty:ty),* $(,)? }
    ) => {
        section! {
            /// `[defaults]` as one file writes it.
            DefaultsFragment => Overrides { $($(#[$attr])* $key: $ty),* }
        }

        /// `[accounts.NAME]` as one file writes it.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct AccountFragment {
            $($(#[$oattr])* pub $own: Option<$oty>,)*
            $($(#[$attr])* pub $key: Option<$ty>,)*
        }

        /// One account merged over all files.
        #[derive(Clone, Debug)]
        pub struct AccountMerged {
            /// The first file that declared `[accounts.NAME]`: named when a required key is missing.
            pub declared_in: PathBuf,
            $(pub $own: Option<Sourced<$oty>>,)*
            pub overrides: Overrides,
        }

        impl AccountMerged {
            fn new(declared_in: &Path) -> AccountMerged {
                let declared_in = declared_in.to_path_buf();
                AccountMerged { declared_in, $($own: None,)* overrides: Overrides::default() }
            }

            fn absorb(&mut self, fragment: AccountFragment, prefix: &str, file: &Path) {
                $(set(&mut self.$own, fragment.$own, prefix, stringify!($own), file);)*
                self.overrides.absorb(DefaultsFragment { $($key: fragment.$key),* }, prefix, file);
            }
        }

        /// The overridable key names, in the order check-config prints them.
        pub const OVERRIDABLE: &[&str] = &[$(stringify!($key)),*];
    };
}

accounts_and_defaults! {
    own {
        user: String,
        codex_home: PathBuf,
        seed: PathBuf,
        /// Fleet mode (per account only).
        #[serde(default, deserialize_with = "choice")]
        fleet_role: FleetRole,
        vault_seed_key: String,
        vault_rotating_key: String,
    }
    overridable {
        #[serde(default, deserialize_with = "choice")]
        refresh_method: RefreshMethod,
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
}

section! {
    /// `[agent]` as one file writes it.
    AgentFragment => AgentMerged {
        state_dir: PathBuf,
        max_parallel: i64,
        codex_bin: String,
        /// This machine's name in fleet leases.
        host_id: String,
        lease_ttl: String,
        /// Prometheus textfile-collector output; absent = off.
        metrics_textfile: PathBuf,
        /// How often the daemon rewrites the textfile with no outcome to record (heartbeat).
        metrics_interval: String,
    }
}

section! {
    /// `[vault]`: the KV v2 store shared by a fleet of agents.
    VaultFragment => VaultMerged {
        address: String,
        mount: String,
        token_file: PathBuf,
        approle_role_id_file: PathBuf,
        approle_secret_id_file: PathBuf,
        /// Absent: chosen by the file keys given.
        #[serde(default, deserialize_with = "choice")]
        auth: VaultLogin,
        kubernetes_role: String,
        kubernetes_mount: String,
        kubernetes_token_file: PathBuf,
        ca_file: PathBuf,
        request_timeout: String,
        /// How long a refresher keeps retrying the write of a credential it just received when
        /// Vault does not answer (within its lease).
        publish_retry: String,
    }
}

/// `vault.auth`: how the agent logs in to Vault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VaultLogin {
    Token,
    AppRole,
    Kubernetes,
}

/// A config value that is one of a few words. Parsed by [`choice`] rather than serde's
/// derive, whose errors for a wrong type ("wanted string or table") and an unknown word do
/// not say what to write.
pub trait Choice: Copy + 'static {
    /// What the value is, for the error ("refresh method").
    const WHAT: &'static str;
    const ALL: &'static [Self];
    /// Said after the allowed words (e.g. what removing the key does).
    const HINT: &'static str = "";
    fn word(self) -> &'static str;
}

impl Choice for RefreshMethod {
    const WHAT: &'static str = "refresh method";
    const ALL: &'static [Self] = &[RefreshMethod::Oauth, RefreshMethod::AppServer];
    fn word(self) -> &'static str {
        self.as_str()
    }
}

impl Choice for FleetRole {
    const WHAT: &'static str = "fleet role";
    const ALL: &'static [Self] = &[FleetRole::Refresher, FleetRole::Follower];
    const HINT: &'static str = " (or remove it for local only)";
    fn word(self) -> &'static str {
        self.as_str()
    }
}

impl Choice for VaultLogin {
    const WHAT: &'static str = "Vault login method";
    const ALL: &'static [Self] = &[VaultLogin::Token, VaultLogin::AppRole, VaultLogin::Kubernetes];
    fn word(self) -> &'static str {
        match self {
            VaultLogin::Token => "token",
            VaultLogin::AppRole => "approle",
            VaultLogin::Kubernetes => "kubernetes",
        }
    }
}

impl AccountMerged {
    /// An error at `accounts.NAME.key`: in the file that set `field`, else in the one that
    /// declared the account.
    pub fn err<T>(&self, name: &str, field: &Option<Sourced<T>>, key: &str, message: impl Into<String>) -> ConfigError {
        let file = field.as_ref().map_or(&self.declared_in, |s| &s.file);
        ConfigError { file: Some(file.clone()), key: Some(format!("accounts.{name}.{key}")), message: message.into() }
    }
}

/// `"a" or "b"`, `"a", "b" or "c"`.
fn alternatives<T: Choice>() -> String {
    let words: Vec<String> = T::ALL.iter().map(|c| format!("{:?}", c.word())).collect();
    match words.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Deserialize a [`Choice`] from its word; any other type is "invalid type: …, expected a
/// refresh method: "oauth" or "app-server"".
fn choice<'de, D: Deserializer<'de>, T: Choice>(d: D) -> Result<Option<T>, D::Error> {
    struct Words<T>(PhantomData<T>);
    impl<T: Choice> Visitor<'_> for Words<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a {}: {}", T::WHAT, alternatives::<T>())
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            T::ALL
                .iter()
                .copied()
                .find(|c| c.word() == v)
                .ok_or_else(|| E::custom(format!("{v:?} is not a {}; use {}{}", T::WHAT, alternatives::<T>(), T::HINT)))
        }
    }
    d.deserialize_any(Words(PhantomData)).map(Some)
}

/// One config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFragment {
    pub agent: Option<AgentFragment>,
    pub defaults: Option<DefaultsFragment>,
    pub vault: Option<VaultFragment>,
    pub accounts: Option<BTreeMap<String, AccountFragment>>,
}

/// All files merged, later files winning per field.
#[derive(Debug, Default)]
pub struct Merged {
    pub agent: AgentMerged,
    pub defaults: Overrides,
    pub vault: VaultMerged,
    pub accounts: BTreeMap<String, AccountMerged>,
    /// Files read, in order.
    pub files: Vec<PathBuf>,
}

impl Merged {
    fn absorb(&mut self, fragment: FileFragment, file: &Path) {
        if let Some(agent) = fragment.agent {
            self.agent.absorb(agent, "agent", file);
        }
        if let Some(defaults) = fragment.defaults {
            self.defaults.absorb(defaults, "defaults", file);
        }
        if let Some(vault) = fragment.vault {
            self.vault.absorb(vault, "vault", file);
        }
        for (name, account) in fragment.accounts.unwrap_or_default() {
            let prefix = format!("accounts.{name}");
            self.accounts.entry(name).or_insert_with(|| AccountMerged::new(file)).absorb(account, &prefix, file);
        }
    }

    /// An account's own value of an overridable key, else `[defaults]`'s.
    pub fn pick<'a, T>(
        &'a self,
        account: Option<&'a AccountMerged>,
        field: impl Fn(&'a Overrides) -> &'a Option<Sourced<T>>,
    ) -> Option<&'a Sourced<T>> {
        account.and_then(|a| field(&a.overrides).as_ref()).or_else(|| field(&self.defaults).as_ref())
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

/// Read `main` and its drop-ins and merge them, later files winning per field.
pub fn load_merged(main: &Path) -> Result<Merged, ConfigError> {
    let mut merged = Merged::default();
    for file in std::iter::once(main.to_path_buf()).chain(drop_ins(main)) {
        merged.absorb(read_fragment(&file)?, &file);
        merged.files.push(file);
    }
    Ok(merged)
}
