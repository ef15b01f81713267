//! Generated malformed config files (issue #7, "Malformed input"): wrong types, unknown
//! keys, bad durations, bad paths and URLs, in the main file or a drop-in, plus byte-level
//! mutations of a valid file. Properties: loading never panics, and every error names the
//! file it came from and — where there is one — the dotted key, with a hint what to write.

use super::*;
use proptest::prelude::*;
use toml::Value as T;

/// Where a key lives; `accounts.a` always carries a valid `user` so only the generated key
/// can be wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Str,
    Path,
    Dur,
    Int,
    Bool,
}

const AGENT: &[(&str, Kind)] = &[
    ("state_dir", Kind::Path),
    ("max_parallel", Kind::Int),
    ("codex_bin", Kind::Str),
    ("host_id", Kind::Str),
    ("lease_ttl", Kind::Dur),
    ("metrics_textfile", Kind::Path),
    ("metrics_interval", Kind::Dur),
];
const OVERRIDABLE_KINDS: &[(&str, Kind)] = &[
    ("refresh_method", Kind::Str),
    ("token_url", Kind::Str),
    ("refresh_before_expiry", Kind::Dur),
    ("max_age", Kind::Dur),
    ("request_timeout", Kind::Dur),
    ("preflight", Kind::Bool),
    ("preflight_timeout", Kind::Dur),
    ("codex_base_url", Kind::Str),
    ("login_client_id", Kind::Str),
    ("on_success", Kind::Str),
    ("on_failure", Kind::Str),
    ("hook_timeout", Kind::Dur),
];
const ACCOUNT_ONLY: &[(&str, Kind)] = &[
    ("user", Kind::Str),
    ("codex_home", Kind::Path),
    ("seed", Kind::Path),
    ("fleet_role", Kind::Str),
    ("vault_seed_key", Kind::Str),
    ("vault_rotating_key", Kind::Str),
];
const VAULT: &[(&str, Kind)] = &[
    ("address", Kind::Str),
    ("mount", Kind::Str),
    ("token_file", Kind::Path),
    ("approle_role_id_file", Kind::Path),
    ("approle_secret_id_file", Kind::Path),
    ("ca_file", Kind::Path),
    ("request_timeout", Kind::Dur),
    ("auth", Kind::Str),
];
const SECTIONS: &[&str] = &["agent", "defaults", "accounts.a", "vault"];

fn keys_of(section: &str) -> Vec<(&'static str, Kind)> {
    match section {
        "agent" => AGENT.to_vec(),
        "defaults" => OVERRIDABLE_KINDS.to_vec(),
        "accounts.a" => [ACCOUNT_ONLY, OVERRIDABLE_KINDS].concat(),
        _ => VAULT.to_vec(),
    }
}

/// One generated mistake: the file text and the dotted key the error must name.
#[derive(Clone, Debug)]
struct Mistake {
    section: String,
    key: String,
    value: String,
    in_drop_in: bool,
}

impl Mistake {
    fn dotted(&self) -> String {
        format!("{}.{}", self.section, self.key)
    }

    fn text(&self) -> String {
        let user = if self.section == "accounts.a" && self.key != "user" { "user = \"root\"\n" } else { "" };
        format!("[{}]\n{user}{} = {}\n", self.section, self.key, self.value)
    }
}

/// TOML values, nested up to `depth` (arrays and inline tables of scalars).
fn any_value(depth: u32) -> impl Strategy<Value = T> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(T::Integer),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(T::Float),
        any::<bool>().prop_map(T::Boolean),
        ".{0,12}".prop_map(T::String),
        Just(T::Datetime("1979-05-27T07:32:00Z".parse().unwrap())),
    ];
    leaf.prop_recursive(depth, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(T::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..3).prop_map(|m| T::Table(m.into_iter().collect())),
        ]
    })
}

/// A value of any type other than what `kind` needs.
fn wrong_type(kind: Kind) -> impl Strategy<Value = String> {
    any_value(3)
        .prop_filter("a wrong type", move |v| {
            !matches!(
                (kind, v),
                (Kind::Str | Kind::Path | Kind::Dur, T::String(_))
                    | (Kind::Int, T::Integer(_))
                    | (Kind::Bool, T::Boolean(_))
            )
        })
        .prop_map(|v| render(&v))
}

/// TOML text of a value (toml's own Display writes a lone datetime as its private map).
fn render(v: &T) -> String {
    match v {
        T::Datetime(d) => d.to_string(),
        T::Array(a) => format!("[{}]", a.iter().map(render).collect::<Vec<_>>().join(", ")),
        T::Table(t) => {
            format!("{{ {} }}", t.iter().map(|(k, v)| format!("{k} = {}", render(v))).collect::<Vec<_>>().join(", "))
        }
        other => other.to_string(),
    }
}

fn section_and_key() -> impl Strategy<Value = (String, &'static str, Kind)> {
    prop::sample::select(SECTIONS)
        .prop_flat_map(|s| prop::sample::select(keys_of(s)).prop_map(move |(k, kind)| (s.to_string(), k, kind)))
}

fn wrong_types() -> impl Strategy<Value = Mistake> {
    (section_and_key(), any::<bool>()).prop_flat_map(|((section, key, kind), in_drop_in)| {
        wrong_type(kind).prop_map(move |value| Mistake {
            section: section.clone(),
            key: key.to_string(),
            value,
            in_drop_in,
        })
    })
}

fn unknown_keys() -> impl Strategy<Value = Mistake> {
    (prop::sample::select(SECTIONS), "[a-z_][a-z0-9_]{0,15}", any_value(1), any::<bool>())
        .prop_filter("not a real key", |(s, k, _, _)| keys_of(s).iter().all(|(known, _)| known != k))
        .prop_map(|(section, key, v, in_drop_in)| Mistake {
            section: section.to_string(),
            key,
            value: render(&v),
            in_drop_in,
        })
}

/// Strings humantime rejects, or zero.
fn bad_duration() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z ]{0,8}",
        "0(s|ms|d|h|m)",
        "-[0-9]{1,3}s",
        "[0-9]{1,4}[qxzQ]",
        "[1-9][0-9]{20,24}(s|d)",
        "[0-9]{1,3} ?(fortnight|parsec|x)",
        "\\PC{1,6}".prop_filter("no leading digit", |s| !s.starts_with(|c: char| c.is_ascii_digit())),
    ]
}

/// Type-correct values that validation must reject, with the key they belong to.
fn bad_values() -> impl Strategy<Value = Mistake> {
    let dur_keys: Vec<(&str, &str)> = OVERRIDABLE_KINDS
        .iter()
        .filter(|(_, k)| *k == Kind::Dur)
        .flat_map(|(k, _)| [("defaults", *k), ("accounts.a", *k)])
        .chain([("agent", "lease_ttl"), ("agent", "metrics_interval")])
        .collect();
    let durations = (prop::sample::select(dur_keys), bad_duration())
        .prop_map(|((s, k), v)| (s.to_string(), k.to_string(), T::String(v)));
    let relative = "[a-z.][a-z0-9_./-]{0,20}|";
    let paths = (
        prop::sample::select(vec![
            ("agent", "state_dir"),
            ("agent", "metrics_textfile"),
            ("accounts.a", "codex_home"),
            ("accounts.a", "seed"),
        ]),
        relative,
    )
        .prop_map(|((s, k), v)| (s.to_string(), k.to_string(), T::String(v)));
    let non_prom = "/[a-z]{1,8}(\\.txt|\\.prom\\.tmp|/|)"
        .prop_map(|v| ("agent".to_string(), "metrics_textfile".to_string(), T::String(v)));
    let urls = (
        prop::sample::select(vec![("defaults", "token_url"), ("accounts.a", "codex_base_url")]),
        "(http://[a-z]{1,8}\\.example|ftp://x|file:///etc/passwd|[a-z]{1,10}|http://10\\.0\\.0\\.[0-9])(/[a-z]{0,5})?",
    )
        .prop_map(|((s, k), v)| (s.to_string(), k.to_string(), T::String(v)));
    let methods = "[a-z-]{0,12}"
        .prop_filter("not a method", |m| m != "oauth" && m != "app-server")
        .prop_map(|v| ("defaults".to_string(), "refresh_method".to_string(), T::String(v)));
    let parallel = prop_oneof![i64::MIN..=0, 257..=i64::MAX]
        .prop_map(|n| ("agent".to_string(), "max_parallel".to_string(), T::Integer(n)));
    let hooks = (
        prop::sample::select(vec!["on_success", "on_failure"]),
        prop_oneof!["", "[a-z][a-z0-9-]{0,10}( --[a-z]{1,5})?", "/bin/[a-z]{1,5} '[a-z ]{0,5}", "/bin/x \\\\"],
    )
        .prop_map(|(k, v)| ("accounts.a".to_string(), k.to_string(), T::String(v)));
    let users = "caa-nouser-[a-z]{6}".prop_map(|v| ("accounts.a".to_string(), "user".to_string(), T::String(v)));
    let host = prop_oneof!["", "[a-z]{1,5} [a-z]{1,5}", "[a-z]{254,300}"]
        .prop_map(|v| ("agent".to_string(), "host_id".to_string(), T::String(v)));
    let fleet = "[a-z]{0,10}"
        .prop_filter("not a role", |r| r != "refresher" && r != "follower")
        .prop_map(|v| ("accounts.a".to_string(), "fleet_role".to_string(), T::String(v)));
    let login = "[a-z]{0,10}"
        .prop_filter("not a login method", |m| !["token", "approle", "kubernetes"].contains(&m.as_str()))
        .prop_map(|v| ("vault".to_string(), "auth".to_string(), T::String(v)));
    let all = prop_oneof![durations, paths, non_prom, urls, methods, parallel, hooks, users, host, fleet, login];
    (all, any::<bool>()).prop_map(|((section, key, v), in_drop_in)| Mistake {
        section,
        key,
        value: render(&v),
        in_drop_in,
    })
}

/// A bad account name as its table key; the error names `accounts.<name>`.
fn bad_account_names() -> impl Strategy<Value = (String, bool)> {
    let names = prop_oneof![
        "[A-Z_][A-Za-z0-9_-]{0,10}",
        "-[a-z0-9-]{0,10}",
        "[a-z0-9]{1,5}[A-Z_][a-z]{0,5}",
        "[a-z][a-z0-9-]{63,70}",
    ];
    (names, any::<bool>())
}

struct Files {
    _dir: tempfile::TempDir,
    main: PathBuf,
    /// The file holding the generated text.
    target: PathBuf,
}

fn write_config(text: &[u8], in_drop_in: bool) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("config.toml");
    let target = if in_drop_in { dir.path().join("config.d/50-generated.toml") } else { main.clone() };
    std::fs::create_dir_all(dir.path().join("config.d")).unwrap();
    std::fs::write(&main, if in_drop_in { &b"[defaults]\nmax_age = \"3d\"\n"[..] } else { text }).unwrap();
    if in_drop_in {
        std::fs::write(&target, text).unwrap();
    }
    Files { _dir: dir, main, target }
}

/// The clear-error property: names the file, the key, and (checked by the caller's
/// pattern) what was wrong.
fn assert_names_file_and_key(e: &ConfigError, file: &Path, key: &str) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert_eq!(e.file.as_deref(), Some(file), "{}", msg);
    prop_assert_eq!(e.key.as_deref(), Some(key), "{}", msg);
    let head = format!("config error in {} at key `{key}`: ", file.display());
    prop_assert!(msg.starts_with(&head), "{}", msg);
    prop_assert!(msg.len() > head.len() + 8, "says what is wrong: {}", msg);
    Ok(())
}

proptest! {

    #[test]
    fn wrong_types_name_file_and_key(m in wrong_types()) {
        let f = write_config(m.text().as_bytes(), m.in_drop_in);
        let e = load(&f.main, &Env::default()).expect_err("a wrong type must not load");
        assert_names_file_and_key(&e, &f.target, &m.dotted())?;
        prop_assert!(e.message.contains("invalid type") && e.message.contains("expected"), "{}", e);
    }

    #[test]
    fn unknown_keys_name_file_and_key(m in unknown_keys()) {
        let f = write_config(m.text().as_bytes(), m.in_drop_in);
        let e = load(&f.main, &Env::default()).expect_err("an unknown key must not load");
        assert_names_file_and_key(&e, &f.target, &m.dotted())?;
        prop_assert!(e.message.contains(&format!("unknown field `{}`, expected one of", m.key)), "{}", e);
    }

    #[test]
    fn bad_values_name_file_and_key(m in bad_values()) {
        let f = write_config(m.text().as_bytes(), m.in_drop_in);
        let e = load(&f.main, &Env::default()).expect_err("a bad value must not load");
        assert_names_file_and_key(&e, &f.target, &m.dotted())?;
    }

    #[test]
    fn bad_account_names_name_the_account((name, in_drop_in) in bad_account_names()) {
        let f = write_config(format!("[accounts.{name}]\nuser = \"root\"\n").as_bytes(), in_drop_in);
        let e = load(&f.main, &Env::default()).expect_err("a bad account name must not load");
        assert_names_file_and_key(&e, &f.target, &format!("accounts.{name}"))?;
        prop_assert!(e.message.contains("[a-z0-9][a-z0-9-]{0,62}"), "{}", e);
    }

    /// Two mistakes in one file: the key named is the one on the line the message shows.
    #[test]
    fn the_named_key_is_the_one_the_message_shows(a in wrong_types(), b in prop_oneof![wrong_types(), unknown_keys()]) {
        // One table per section (TOML forbids a second header) and one line per key.
        let text = if a.section != b.section {
            format!("{}{}", a.text(), b.text())
        } else if a.key != b.key && b.key != "user" {
            format!("{}{} = {}\n", a.text(), b.key, b.value)
        } else {
            a.text()
        };
        let f = write_config(text.as_bytes(), false);
        let e = load(&f.main, &Env::default()).expect_err("two mistakes must not load");
        let named = [&a, &b].into_iter().find(|m| e.key.as_deref() == Some(m.dotted().as_str()));
        let m = named.ok_or_else(|| TestCaseError::fail(format!("names neither mistake: {e}")))?;
        let shown = format!("(`{} = …`)", m.key);
        prop_assert!(e.message.contains(&shown), "{}", e);
    }

    /// Truncations and flipped bytes of a valid file: loads, or fails naming the file.
    #[test]
    fn mutated_files_never_panic(
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..), 0..4),
        in_drop_in in any::<bool>(),
    ) {
        let valid = "[agent]\nmax_parallel = 4\nlease_ttl = \"10m\"\n\n[defaults]\nmax_age = \"3d\"\ntoken_url \
            = \"https://auth.example/oauth/token\"\non_failure = \"/usr/bin/logger -t \
                caa\"\n\n[accounts.a]\nuser = \"root\"\ncodex_home = \"/srv/a/.codex\"\nrequest_timeout = \"9s\"\n";
        let mut bytes = valid.as_bytes().to_vec();
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        let f = write_config(&bytes, in_drop_in);
        if let Err(e) = load(&f.main, &Env::default()) {
            prop_assert_eq!(e.file.as_deref(), Some(f.target.as_path()), "{}", e);
            prop_assert!(e.to_string().starts_with(&format!("config error in {}", f.target.display())), "{}", e);
            if let Some(key) = &e.key {
                prop_assert!(e.to_string().contains(&format!("at key `{key}`")), "{}", e);
            }
        }
    }
}

#[test]
fn non_utf8_and_deeply_nested_files_are_clear_errors() {
    let f = write_config(b"[defaults]\nmax_age = \"3\xff\xfed\"\n", false);
    let e = load(&f.main, &Env::default()).unwrap_err();
    assert!(e.to_string().contains("UTF-8"), "{e}");
    let deep = format!("[agent]\nmax_parallel = {}1{}\n", "[".repeat(5000), "]".repeat(5000));
    let f = write_config(deep.as_bytes(), false);
    let e = load(&f.main, &Env::default()).unwrap_err();
    assert_eq!(e.file.as_deref(), Some(f.main.as_path()), "{e}");
    let huge = "[agent]\nmax_parallel = 99999999999999999999999\n";
    let f = write_config(huge.as_bytes(), false);
    let e = load(&f.main, &Env::default()).unwrap_err();
    assert!(e.to_string().contains("line 2"), "{e}");
}
