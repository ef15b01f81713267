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
        ("[agent]\nmetrics_textfile = \"rel.prom\"\n", "agent.metrics_textfile"),
        ("[agent]\nmetrics_textfile = \"/var/lib/x.txt\"\n", "agent.metrics_textfile"),
        ("[defaults]\non_failure = \"page-oncall\"\n", "defaults.on_failure"),
        ("[defaults]\non_success = \"\"\n", "defaults.on_success"),
        ("[accounts.a]\nuser = \"root\"\non_failure = \"/bin/x 'open\"\n", "accounts.a.on_failure"),
        ("[accounts.a]\nuser = \"root\"\nhook_timeout = \"0s\"\n", "accounts.a.hook_timeout"),
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

/// A Vault secret file with the given mode, owned by us.
fn secret(dir: &Path, name: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = write(dir, name, "s.secret\n");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

#[test]
fn fleet_keys_default_from_the_account_name() {
    let t = tempfile::tempdir().unwrap();
    let tok = secret(t.path(), "vault-token", 0o600);
    let main = write(
        t.path(),
        "config.toml",
        &format!(
            "[agent]\nhost_id = \"vm-1\"\n[vault]\naddress = \"http://127.0.0.1:8200\"\ntoken_file = \"{}\"\n\
             [accounts.team]\nuser = \"root\"\ncodex_home = \"/srv/team/.codex\"\nfleet_role = \"refresher\"\n\
             [accounts.default]\nuser = \"root\"\nfleet_role = \"follower\"\nvault_rotating_key = \"x/rot\"\n\
             [accounts.solo]\nuser = \"root\"\ncodex_home = \"/srv/solo/.codex\"\n",
            tok.display()
        ),
    );
    let s = load(&main, &Env::default()).unwrap();
    let v = s.vault.as_ref().unwrap();
    assert_eq!((v.mount.as_str(), v.request_timeout), ("secret", Duration::from_secs(10)));
    assert_eq!(v.auth, VaultAuth::Token { token_file: tok.clone() });
    assert_eq!((s.agent.host_id.as_str(), s.agent.lease_ttl), ("vm-1", DEFAULT_LEASE_TTL));
    let team = s.accounts["team"].fleet.as_ref().unwrap();
    assert_eq!(team.fleet_role, FleetRole::Refresher);
    assert_eq!(team.vault_seed_key, "codex-auth-json-b64-team");
    assert_eq!(team.vault_rotating_key, "codex-auth-json-b64-rotating-team");
    let d = s.accounts["default"].fleet.as_ref().unwrap();
    assert_eq!((d.vault_seed_key.as_str(), d.vault_rotating_key.as_str()), ("codex-auth-json-b64", "x/rot"));
    assert!(s.accounts["solo"].fleet.is_none());
    let out = s.render();
    assert!(out.contains("fleet_role = \"refresher\"") && out.contains("token_file"), "{out}");
    assert!(!out.contains("s.secret"), "the secret itself is never printed");
}

#[test]
fn fleet_errors_name_the_key() {
    let t = tempfile::tempdir().unwrap();
    let ok = secret(t.path(), "ok", 0o400);
    let loose = secret(t.path(), "loose", 0o644);
    let vault = |extra: &str| format!("[vault]\naddress = \"http://127.0.0.1:8200\"\n{extra}\n");
    let tok = format!("token_file = \"{}\"", ok.display());
    let cases = [
        ("[accounts.a]\nuser = \"root\"\nfleet_role = \"refresher\"\n".to_string(), "accounts.a.fleet_role"),
        (format!("{}[accounts.a]\nuser = \"root\"\nfleet_role = \"boss\"\n", vault(&tok)), "accounts.a.fleet_role"),
        (
            format!("{}[accounts.a]\nuser = \"root\"\nvault_seed_key = \"k\"\n", vault(&tok)),
            "accounts.a.vault_seed_key",
        ),
        (
            format!(
                "{}[accounts.a]\nuser = \"root\"\nfleet_role = \"follower\"\nvault_rotating_key = \"../x\"\n",
                vault(&tok)
            ),
            "accounts.a.vault_rotating_key",
        ),
        (format!("[vault]\n{tok}\n"), "vault.address"),
        (vault(""), "vault.address"),
        (vault(&format!("token_file = \"{}\"", loose.display())), "vault.token_file"),
        (vault("token_file = \"/nonexistent/caa-token\""), "vault.token_file"),
        (vault(&format!("approle_role_id_file = \"{}\"", ok.display())), "vault.approle_role_id_file"),
        (vault(&format!("{tok}\nrequest_timeout = \"soon\"")), "vault.request_timeout"),
        (vault(&format!("{tok}\nmount = \"/secret\"")), "vault.mount"),
        ("[vault]\naddress = \"http://vault.example\"\n".to_string(), "vault.address"),
        ("[agent]\nlease_ttl = \"x\"\n".to_string(), "agent.lease_ttl"),
        ("[agent]\nhost_id = \"a b\"\n".to_string(), "agent.host_id"),
    ];
    for (text, key) in cases {
        let e = load_text(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some(key), "{text} → {e}");
        assert!(e.file.is_some(), "{text} → {e}");
    }
    let e = load_text(&vault(&format!("token_file = \"{}\"", loose.display()))).unwrap_err().to_string();
    assert!(e.contains(&loose.display().to_string()) && e.contains("chmod 600"), "{e}");
    let e = load_text("[vault]\naddress = \"http://127.0.0.1:1\"\ntokn_file = \"/x\"\n").unwrap_err().to_string();
    assert!(e.contains("tokn_file"), "{e}");
}

#[test]
fn approle_needs_both_files() {
    let t = tempfile::tempdir().unwrap();
    let r = secret(t.path(), "role", 0o600);
    let s = secret(t.path(), "sec", 0o600);
    let text = format!(
        "[vault]\naddress = \"https://vault.example:8200\"\napprole_role_id_file = \
            \"{}\"\napprole_secret_id_file = \"{}\"\n",
        r.display(),
        s.display()
    );
    let settings = load_text(&text).unwrap();
    assert!(matches!(settings.vault.unwrap().auth, VaultAuth::AppRole { .. }));
}

#[test]
fn kubernetes_auth_defaults_and_errors_name_the_key() {
    let vault = |extra: &str| format!("[vault]\naddress = \"http://127.0.0.1:8200\"\n{extra}\n");
    let s = load_text(&vault("auth = \"kubernetes\"\nkubernetes_role = \"codex-auth-refresher-team\"")).unwrap();
    let want = VaultAuth::Kubernetes {
        kubernetes_role: "codex-auth-refresher-team".into(),
        kubernetes_mount: "kubernetes".into(),
        kubernetes_token_file: DEFAULT_SA_TOKEN_FILE.into(),
    };
    assert_eq!(s.vault.as_ref().unwrap().auth, want);
    let out = s.render();
    assert!(out.contains("kubernetes_role = \"codex-auth-refresher-team\""), "{out}");
    let s = load_text(&vault(
        "auth = \"kubernetes\"\nkubernetes_role = \"r\"\nkubernetes_mount = \"k8s/prod\"\n\
         kubernetes_token_file = \"/t\"",
    ))
    .unwrap();
    let VaultAuth::Kubernetes { kubernetes_mount, kubernetes_token_file, .. } = s.vault.unwrap().auth else {
        panic!("not kubernetes")
    };
    assert_eq!((kubernetes_mount.as_str(), kubernetes_token_file), ("k8s/prod", PathBuf::from("/t")));
    let cases = [
        (vault("auth = \"kubernetes\""), "vault.auth", "kubernetes_role"),
        (vault("auth = \"k8s\""), "vault.auth", "\"kubernetes\""),
        (
            vault("auth = \"kubernetes\"\nkubernetes_role = \"r\"\ntoken_file = \"/t\""),
            "vault.token_file",
            "does not apply",
        ),
        (vault("kubernetes_role = \"r\"\ntoken_file = \"/t\""), "vault.kubernetes_role", "auth = \"kubernetes\""),
        (vault("auth = \"kubernetes\"\nkubernetes_role = \"a/b\""), "vault.kubernetes_role", "role name"),
        (
            vault("auth = \"kubernetes\"\nkubernetes_role = \"r\"\nkubernetes_mount = \"/x\""),
            "vault.kubernetes_mount",
            "mount",
        ),
        (
            vault("auth = \"kubernetes\"\nkubernetes_role = \"r\"\nkubernetes_token_file = \"token\""),
            "vault.kubernetes_token_file",
            "absolute",
        ),
    ];
    for (text, key, words) in cases {
        let e = load_text(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some(key), "{text} → {e}");
        assert!(e.file.is_some() && e.to_string().contains(words), "{text} → {e}");
    }
}

#[test]
fn auth_names_the_method_the_keys_give() {
    let t = tempfile::tempdir().unwrap();
    let tok = secret(t.path(), "vault-token", 0o600);
    let text = |auth: &str| {
        format!("[vault]\naddress = \"http://127.0.0.1:8200\"\nauth = \"{auth}\"\ntoken_file = \"{}\"\n", tok.display())
    };
    assert!(matches!(load_text(&text("token")).unwrap().vault.unwrap().auth, VaultAuth::Token { .. }));
    let e = load_text(&text("approle")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("vault.auth"), "{e}");
}

#[test]
fn hooks_are_split_without_a_shell_and_metrics_are_optional() {
    let s = load_text(
        r#"
[agent]
metrics_textfile = "/var/lib/prometheus/node-exporter/codex_auth_agent.prom"
[defaults]
on_failure = "/bin/echo --severity 'high prio' $HOME"
[accounts.a]
user = "root"
hook_timeout = "5s"
[accounts.b]
user = "root"
codex_home = "/srv/b/.codex"
on_success = "/bin/true"
on_failure = "/bin/false"
"#,
    )
    .unwrap();
    assert_eq!(
        s.agent.metrics_textfile.as_deref(),
        Some(Path::new("/var/lib/prometheus/node-exporter/codex_auth_agent.prom"))
    );
    let a = &s.accounts["a"].hooks;
    assert_eq!(a.on_failure.as_ref().unwrap(), &["/bin/echo", "--severity", "high prio", "$HOME"]);
    assert_eq!((a.on_success.as_ref(), a.hook_timeout), (None, Duration::from_secs(5)));
    let b = &s.accounts["b"].hooks;
    assert_eq!(b.on_failure.as_ref().unwrap(), &["/bin/false"]);
    assert_eq!(b.hook_timeout, Duration::from_secs(30));
    assert!(s.render().contains("on_failure = [\"/bin/false\"]"), "{}", s.render());
    let none = load_text("[accounts.a]\nuser = \"root\"\n").unwrap();
    assert_eq!(none.agent.metrics_textfile, None);
    assert!(!none.render().contains("metrics_textfile"));
}

#[test]
fn a_token_pasted_into_the_config_is_not_repeated_in_the_error() {
    let token = "CANARY-rt_1_1_0123456789abcdefXyZ";
    for text in [
        format!("[accounts.a]\nuser = \"root\"\nrefresh_token = \"{token}\"\n"),
        format!("[defaults]\nmax_age = \"{token}\"\n"),
        format!("[defaults]\npreflight = \"{token}\"\n"),
        format!("[defaults]\nmax_age = {token}\n"),
    ] {
        let e = load_text(&text).unwrap_err().to_string();
        assert!(!e.contains("0123456789") && !e.contains("CANARY"), "{e}");
        assert!(e.contains("line 3") || e.contains("line 2") || e.contains("max_age"), "still says where: {e}");
    }
}

#[test]
fn a_lease_ttl_shorter_than_a_refresher_cycle_names_the_file_the_key_and_the_minimum() {
    let t = tempfile::tempdir().unwrap();
    let tok = secret(t.path(), "vault-token", 0o600);
    let base = format!(
        "[vault]\naddress = \"http://127.0.0.1:8200\"\ntoken_file = \"{}\"\n[accounts.team]\nuser = \
            \"root\"\nfleet_role = \"refresher\"\n",
        tok.display()
    );
    let main = write(t.path(), "config.toml", &base);
    let drop_in = write(t.path(), "config.d/50-lease.toml", "[agent]\nlease_ttl = \"1m\"\n");
    let e = load(&main, &Env::default()).unwrap_err();
    assert_eq!((e.file.as_deref(), e.key.as_deref()), (Some(drop_in.as_path()), Some("agent.lease_ttl")), "{e}");
    // Defaults: request_timeout 30s, preflight_timeout 120s, vault.request_timeout 10s →
    // the worker's deadline 9m 40s (190s lock wait + 30s yield + 2 × (2 × 65s Codex's locks + 30s)
    // + 30s settle + 10s) + 4 × 10s.
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "config error in {} at key `agent.lease_ttl`: 1m is shorter than one refresher cycle of account \
                team can take (10m 20s: the worker's deadline of 9m 40s",
            drop_in.display()
        )),
        "{text}"
    );
    for want in [
        "preflight_timeout 2m",
        "oauth, request_timeout 30s",
        "plus 4 Vault requests of up to 10s each",
        "lets another refresher take it and spend the same refresh token (refresh_token_reused)",
        "set agent.lease_ttl to at least 10m 20s",
    ] {
        assert!(text.contains(want), "{want:?} missing in: {text}");
    }
    // Exactly the minimum is enough.
    write(t.path(), "config.d/50-lease.toml", "[agent]\nlease_ttl = \"10m 20s\"\n");
    assert_eq!(load(&main, &Env::default()).unwrap().agent.lease_ttl, Duration::from_secs(620));
    // The default (15m) is checked too, and the slowest refresher is the one named.
    std::fs::remove_file(&drop_in).unwrap();
    write(
        t.path(),
        "config.toml",
        &format!(
            "{base}[accounts.slow]\nuser = \"root\"\nfleet_role = \"refresher\"\nrequest_timeout = \
                \"10m\"\n[accounts.fast]\nuser = \"root\"\nfleet_role = \"refresher\"\nrequest_timeout = \"5s\"\n"
        ),
    );
    let e = load(&main, &Env::default()).unwrap_err();
    assert_eq!((e.file.as_deref(), e.key.as_deref()), (Some(main.as_path()), Some("agent.lease_ttl")), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("the default 15m is shorter than one refresher cycle of account slow can take (56m 20s"),
        "{text}"
    );
    // Followers never hold the lease: their lease_ttl is not checked.
    write(t.path(), "config.toml", &base.replace("refresher", "follower"));
    write(t.path(), "config.d/50-lease.toml", "[agent]\nlease_ttl = \"1s\"\n");
    assert_eq!(load(&main, &Env::default()).unwrap().agent.lease_ttl, Duration::from_secs(1));
}

#[test]
fn host_id_remembers_where_it_came_from() {
    let t = tempfile::tempdir().unwrap();
    let main = write(t.path(), "config.toml", "[agent]\nhost_id = \"vm-3\"\n");
    let s = load(&main, &Env::default()).unwrap();
    assert_eq!((s.agent.host_id.as_str(), &s.agent.host_id_source), ("vm-3", &HostIdSource::Config(main.clone())));
    let s = load_text("").unwrap();
    assert_eq!((s.agent.host_id.clone(), s.agent.host_id_source.clone()), default_host_id_and_source());
    assert!(!s.render().contains("host_id_source"), "not a config key");
}

/// A private directory tree for hook and home checks: root-owned, 0755 (tempdir is 0700).
fn tree() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    t
}

fn exe(dir: &Path, name: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = write(dir, name, "#!/bin/sh\nexit 0\n");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

fn hook_error(hook: &Path) -> ConfigError {
    let t = tempfile::tempdir().unwrap();
    let main = write(t.path(), "config.toml", "");
    let drop_in = write(
        t.path(),
        "config.d/80-hook.toml",
        &format!("[accounts.a]\nuser = \"root\"\non_failure = \"{} --page\"\n", hook.display()),
    );
    let e = load(&main, &Env::default()).unwrap_err();
    assert_eq!((e.file.as_deref(), e.key.as_deref()), (Some(drop_in.as_path()), Some("accounts.a.on_failure")), "{e}");
    e
}

#[test]
fn unsafe_or_missing_hooks_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let t = tree();
    let good = exe(t.path(), "bin/good", 0o755);
    std::fs::set_permissions(t.path().join("bin"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = format!("[accounts.a]\nuser = \"root\"\non_success = \"{}\"\n", good.display());
    assert!(load_text(&cfg).is_ok(), "{:?}", load_text(&cfg));
    let open = exe(t.path(), "bin/open", 0o777);
    assert!(hook_error(&open).message.contains(&format!("chmod go-w {}", open.display())), "{}", hook_error(&open));
    let plain = exe(t.path(), "bin/plain", 0o644);
    assert!(hook_error(&plain).message.contains("chmod 755"), "{}", hook_error(&plain));
    let missing = t.path().join("bin/missing");
    assert!(hook_error(&missing).message.contains("does not exist"), "{}", hook_error(&missing));
    // A directory others can write: they could rename the hook away and put theirs there.
    let shared = t.path().join("shared");
    let in_shared = exe(&shared, "hook", 0o755);
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = hook_error(&in_shared);
    assert!(e.message.contains(&format!("is in {}", shared.display())) && e.message.contains("chmod go-w"), "{e}");
    // A symlink is judged by what it points at.
    let link = t.path().join("bin/link");
    std::os::unix::fs::symlink(&open, &link).unwrap();
    assert!(hook_error(&link).message.contains("writable by group or others"), "{}", hook_error(&link));
    // Owned by a user (only root can hand a file to another user).
    if nix::unistd::geteuid().is_root() {
        let theirs = exe(t.path(), "bin/theirs", 0o755);
        std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
        assert!(hook_error(&theirs).message.contains("chown root:root"), "{}", hook_error(&theirs));
    }
}

#[test]
fn codex_homes_in_system_or_agent_dirs_or_of_another_user_are_refused() {
    let cases = [
        ("/etc", "system directory /etc"),
        ("/etc/codex-auth-agent/x", "system directory /etc"),
        ("/usr/local/codex", "system directory /usr"),
        ("/boot/.codex", "system directory /boot"),
        ("/", "is not a Codex home"),
        ("/var/lib/codex-auth-agent/alice", "agent's own directory /var/lib/codex-auth-agent"),
        ("/var/lib", "agent's own directory /var/lib/codex-auth-agent"),
        ("/tmp/ci/.codex", "private /tmp"),
        ("/srv/a b/.codex", "whitespace"),
    ];
    for (home, want) in cases {
        let text = format!("[accounts.a]\nuser = \"root\"\ncodex_home = \"{home}\"\n");
        let e = load_text(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("accounts.a.codex_home"), "{home}: {e}");
        assert!(e.file.is_some() && e.message.contains(want), "{home}: {e}");
    }
    if nix::unistd::geteuid().is_root() {
        let t = tree();
        let home = t.path().join("bob/.codex");
        std::fs::create_dir_all(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(65534), None).unwrap();
        let text = format!(
            "[agent]\nstate_dir = \"/x/state\"\n[accounts.a]\nuser = \"root\"\ncodex_home = \"{}\"\n",
            home.display()
        );
        // Owner and mode can change at any time: check-config refuses them, the daemon
        // keeps serving the other accounts (Settings::home_problems).
        let s = load_text(&text).unwrap();
        let e = &s.home_problems[0];
        assert_eq!(e.key.as_deref(), Some("accounts.a.codex_home"), "{e}");
        assert!(e.message.contains("not by root") && e.message.contains("chown -R root"), "{e}");
    }
    // chmod 000 by its owner.
    use std::os::unix::fs::PermissionsExt;
    let t = tree();
    let home = t.path().join("me/.codex");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o000)).unwrap();
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid()).unwrap().unwrap().name;
    let text = format!(
        "[agent]\nstate_dir = \"/x/state\"\n[accounts.a]\nuser = \"{me}\"\ncodex_home = \"{}\"\n",
        home.display()
    );
    let s = load_text(&text).unwrap();
    assert!(
        s.home_problems[0].message.contains(&format!("fix: chmod 700 {}", home.display())),
        "{:?}",
        s.home_problems
    );
}

#[test]
fn two_accounts_may_not_share_a_codex_home_or_a_rotating_key() {
    let e = load_text("[accounts.a]\nuser = \"root\"\n[accounts.b]\nuser = \"root\"\ncodex_home = \"/root/.codex/\"\n")
        .unwrap_err();
    assert_eq!(e.key.as_deref(), Some("accounts.b.codex_home"), "{e}");
    assert!(e.message.contains("also the codex_home of account a"), "{e}");
    let t = tempfile::tempdir().unwrap();
    let token_file = secret(t.path(), "vault-token", 0o600);
    let follower = "fleet_role = \"follower\"\nvault_rotating_key = \"k/rot\"\n";
    let e = load_text(&format!(
        "[vault]\naddress = \"http://127.0.0.1:8200\"\ntoken_file = \"{}\"\n[accounts.a]\nuser = \"root\"\n{follower}\
         [accounts.b]\nuser = \"root\"\ncodex_home = \"/srv/b/.codex\"\n{follower}",
        token_file.display()
    ))
    .unwrap_err();
    assert_eq!(e.key.as_deref(), Some("accounts.b.vault_rotating_key"), "{e}");
    assert!(e.message.contains("also the rotating key of account a"), "{e}");
}

#[test]
fn each_value_remembers_the_file_and_the_key_that_set_it() {
    let t = tempfile::tempdir().unwrap();
    let main = write(
        t.path(),
        "config.toml",
        "[defaults]\nmax_age = \"3d\"\n[accounts.a]\nuser = \"root\"\ncodex_home = \"/srv/a/.codex\"\n",
    );
    let drop_in = write(t.path(), "config.d/50-a.toml", "[accounts.a]\ncodex_home = \"/srv/a2/.codex\"\n");
    let m = inputs::load_merged(&main).unwrap();
    let a = &m.accounts["a"];
    let home = a.codex_home.as_ref().unwrap();
    assert_eq!(
        (home.value.as_path(), home.file.as_path(), home.key.as_str()),
        (Path::new("/srv/a2/.codex"), drop_in.as_path(), "accounts.a.codex_home")
    );
    let user = a.user.as_ref().unwrap();
    assert_eq!((user.file.as_path(), user.key.as_str()), (main.as_path(), "accounts.a.user"));
    assert_eq!(a.declared_in, main);
    // Not set for the account: [defaults]' value, with its own key.
    let max_age = m.pick(Some(a), |o| &o.max_age).unwrap();
    assert_eq!((max_age.key.as_str(), max_age.file.as_path()), ("defaults.max_age", main.as_path()));
    // An error found after the merge names the file that set the value, not the main file.
    let seed = write(t.path(), "config.d/60-seed.toml", "[accounts.a]\nseed = \"seeds/a.json\"\n");
    let e = load(&main, &Env::default()).unwrap_err();
    assert_eq!((e.file.as_deref(), e.key.as_deref()), (Some(seed.as_path()), Some("accounts.a.seed")), "{e}");
    // A required key nobody set: the file that declared the account.
    let c = write(t.path(), "config.d/60-seed.toml", "[accounts.c]\ncodex_home = \"/srv/c/.codex\"\n");
    let e = load(&main, &Env::default()).unwrap_err();
    assert_eq!((e.file.as_deref(), e.key.as_deref()), (Some(c.as_path()), Some("accounts.c.user")), "{e}");
}

#[test]
fn enum_keys_name_the_file_the_key_the_line_and_the_allowed_words() {
    let t = tempfile::tempdir().unwrap();
    let main = write(t.path(), "config.toml", "[accounts.a]\nuser = \"root\"\n");
    let cases = [
        (
            "[defaults]\nrefresh_method = \"magic\"\n",
            "defaults.refresh_method",
            r#""magic" is not a refresh method; use "oauth" or "app-server""#,
        ),
        (
            "[defaults]\nrefresh_method = 5\n",
            "defaults.refresh_method",
            r#"invalid type: integer `5`, expected a refresh method: "oauth" or "app-server""#,
        ),
        (
            "[accounts.a]\nfleet_role = \"boss\"\n",
            "accounts.a.fleet_role",
            r#""boss" is not a fleet role; use "refresher" or "follower" (or remove it for local only)"#,
        ),
        (
            "[accounts.a]\nfleet_role = { refresher = 1 }\n",
            "accounts.a.fleet_role",
            "invalid type: map, expected a fleet role",
        ),
        (
            "[vault]\nauth = \"ldap\"\n",
            "vault.auth",
            r#""ldap" is not a Vault login method; use "token", "approle" or "kubernetes""#,
        ),
        ("[vault]\nauth = [\"token\"]\n", "vault.auth", "invalid type: sequence, expected a Vault login method"),
    ];
    for (text, key, want) in cases {
        let drop_in = write(t.path(), "config.d/50-x.toml", text);
        let e = load(&main, &Env::default()).unwrap_err();
        assert_eq!((e.file.as_deref(), e.key.as_deref()), (Some(drop_in.as_path()), Some(key)), "{text} → {e}");
        let field = key.rsplit('.').next().unwrap();
        let line = format!("TOML parse error at line 2, column {} (`{field} = …`): ", field.len() + 4);
        assert!(e.message.starts_with(&line) && e.message.contains(want), "{text} → {e}");
    }
    // The words parse into the enums.
    let s = load_text("[defaults]\nrefresh_method = \"app-server\"\n[accounts.a]\nuser = \"root\"\n").unwrap();
    assert_eq!(s.accounts["a"].refresh.refresh_method, RefreshMethod::AppServer);
}
