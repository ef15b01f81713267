use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

fn load_text(text: &str) -> Result<Settings, ConfigError> {
    let t = tempfile::tempdir().unwrap();
    let main = write(t.path(), "config.toml", text);
    load(&main, &Env::default())
}

#[test]
fn defaults_apply_and_accounts_override() {
    let s = load_text(
        r#"
[defaults]
max_age = "3d"
[accounts.alice]
user = "root"
max_age = "2d"
[accounts.bob]
user = "root"
codex_home = "/srv/bob/.codex"
"#,
    )
    .unwrap();
    assert_eq!(s.agent.max_parallel, 8);
    assert_eq!(s.agent.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    let alice = &s.accounts["alice"];
    assert_eq!(alice.refresh.max_age, Duration::from_secs(2 * 86400));
    assert_eq!(alice.codex_home, PathBuf::from("/root/.codex"));
    assert_eq!(alice.refresh.refresh_before_expiry, Duration::from_secs(86400));
    assert_eq!(alice.refresh.token_url, DEFAULT_TOKEN_URL);
    let bob = &s.accounts["bob"];
    assert_eq!(bob.refresh.max_age, Duration::from_secs(3 * 86400));
    assert!(bob.seed.as_ref().unwrap().ends_with("seeds/bob.json"));
}

#[test]
fn drop_ins_win_per_key_in_lexical_order() {
    let t = tempfile::tempdir().unwrap();
    let main = write(t.path(), "config.toml", "[defaults]\nmax_age = \"3d\"\nrequest_timeout = \"5s\"\n");
    write(t.path(), "config.d/20-b.toml", "[defaults]\nmax_age = \"5d\"\n");
    write(t.path(), "config.d/10-a.toml", "[defaults]\nmax_age = \"4d\"\n[accounts.a]\nuser = \"root\"\n");
    write(t.path(), "config.d/ignored.txt", "garbage");
    let s = load(&main, &Env::default()).unwrap();
    let a = &s.accounts["a"];
    assert_eq!(a.refresh.max_age, Duration::from_secs(5 * 86400));
    assert_eq!(a.refresh.request_timeout, Duration::from_secs(5));
    assert_eq!(s.files.len(), 3);
}

#[test]
fn unknown_keys_name_file_and_key() {
    let t = tempfile::tempdir().unwrap();
    let main = write(t.path(), "config.toml", "");
    let bad = write(t.path(), "config.d/50-x.toml", "[defaults]\nmax_agee = \"1d\"\n");
    let e = load(&main, &Env::default()).unwrap_err();
    assert_eq!(e.file.as_deref(), Some(bad.as_path()));
    let msg = e.to_string();
    assert!(msg.contains("max_agee") && msg.contains("50-x.toml"), "{msg}");
    let e = load_text("[accounts.a]\nuser = \"root\"\nfoo = 1\n").unwrap_err().to_string();
    assert!(e.contains("unknown field `foo`"), "{e}");
    let e = load_text("[agentt]\n").unwrap_err().to_string();
    assert!(e.contains("agentt"), "{e}");
}

#[test]
fn bad_values_name_the_key() {
    let cases = [
        ("[defaults]\nmax_age = \"7x\"\n", "defaults.max_age"),
        ("[defaults]\nrequest_timeout = \"0s\"\n", "defaults.request_timeout"),
        ("[accounts.a]\nuser = \"root\"\nrefresh_before_expiry = \"soon\"\n", "accounts.a.refresh_before_expiry"),
        ("[defaults]\nrefresh_method = \"magic\"\n", "defaults.refresh_method"),
        ("[defaults]\ntoken_url = \"http://evil.example/token\"\n", "defaults.token_url"),
        ("[agent]\nmax_parallel = 0\n", "agent.max_parallel"),
        ("[agent]\nstate_dir = \"relative\"\n", "agent.state_dir"),
        ("[accounts.a]\n", "accounts.a.user"),
        ("[accounts.a]\nuser = \"no-such-user-caa\"\n", "accounts.a.user"),
        ("[accounts.Bad_Name]\nuser = \"root\"\n", "accounts.Bad_Name"),
        ("[accounts.a]\nuser = \"root\"\ncodex_home = \"rel\"\n", "accounts.a.codex_home"),
    ];
    for (text, key) in cases {
        let e = load_text(text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some(key), "{text} → {e}");
        assert!(e.file.is_some(), "{text} → {e}");
        assert!(e.to_string().contains(key));
    }
}

#[test]
fn type_errors_name_the_file() {
    let e = load_text("[agent]\nmax_parallel = \"eight\"\n").unwrap_err();
    assert!(e.file.is_some());
    assert!(e.to_string().contains("max_parallel"), "{e}");
}

#[test]
fn env_override_wins_and_is_checked() {
    let t = tempfile::tempdir().unwrap();
    let main = write(t.path(), "config.toml", "[accounts.a]\nuser = \"root\"\n");
    let env = Env { token_url_override: Some("http://127.0.0.1:9/oauth/token".into()) };
    assert_eq!(load(&main, &env).unwrap().accounts["a"].refresh.token_url, "http://127.0.0.1:9/oauth/token");
    let env = Env { token_url_override: Some("ftp://x".into()) };
    assert_eq!(load(&main, &env).unwrap_err().key.as_deref(), Some(TOKEN_URL_ENV));
}

#[test]
fn missing_main_file_is_a_clear_error() {
    let e = load(Path::new("/nonexistent/caa/config.toml"), &Env::default()).unwrap_err();
    assert!(e.to_string().contains("not found") && e.to_string().contains("--codex-home"), "{e}");
}

#[test]
fn warns_when_refresh_window_is_shorter_than_two_timer_periods() {
    let s = load_text("[defaults]\nrefresh_before_expiry = \"6h\"\n[accounts.a]\nuser = \"root\"\n").unwrap();
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    let s = load_text("[accounts.a]\nuser = \"root\"\n").unwrap();
    assert!(s.warnings.is_empty());
}

#[test]
fn render_round_trips_key_names() {
    let s = load_text("[accounts.a]\nuser = \"root\"\n").unwrap();
    let out = s.render();
    for k in ["state_dir", "max_parallel", "[accounts.a]", "refresh_before_expiry = \"1day\"", "token_url"] {
        assert!(out.contains(k), "{k} missing in\n{out}");
    }
}

#[test]
fn account_names() {
    assert!(valid_account_name("a"));
    assert!(valid_account_name("team-1"));
    assert!(!valid_account_name("-a"));
    assert!(!valid_account_name("A"));
    assert!(!valid_account_name(&"a".repeat(64)));
    assert!(!valid_account_name(""));
}
