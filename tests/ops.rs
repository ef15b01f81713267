//! Operator features end to end against the mock token endpoint: the Prometheus textfile
//! (`metrics_textfile`) and the `on_success` / `on_failure` hooks (environment, timeout,
//! and — as root — the account's user).

mod support;

use mock_openai::{Fault, MockConfig, MockServer};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::ops::*;
use support::*;

fn mock() -> MockServer {
    MockServer::start(MockConfig::default())
}

/// A config with `agent_extra` in [agent] and one account `me` of `user` with `extra`.
fn config(s: &Scratch, agent_extra: &str, user: &str, home: &Path, extra: &str) -> PathBuf {
    s.config(&format!(
        "{agent_extra}\n[defaults]\nrequest_timeout = \"2s\"\n\n[accounts.me]\nuser = \"{user}\"\ncodex_home = \
            \"{}\"\n{extra}",
        home.display()
    ))
}

fn refresh(s: &Scratch, m: &MockServer, cfg: &Path, force: bool) -> Run {
    let mut cmd = agent(s, m);
    cmd.arg("--config").arg(cfg).args(["refresh", "--account", "me", "--json"]);
    if force {
        cmd.arg("--force");
    }
    run(cmd)
}

fn my_home() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid()).unwrap().unwrap().dir.display().to_string()
}

#[test]
fn metrics_textfile_follows_refreshes_and_failures() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("acct-1");
    let home = s.codex_home("codex", Some(&auth_json(&c, OLD)));
    let prom_dir = s.path().join("node-exporter");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let prom = prom_dir.join("codex_auth_agent.prom");
    let cfg = config(&s, &format!("metrics_textfile = \"{}\"", prom.display()), &me(), &home, "");

    let r = refresh(&s, &m, &cfg, false);
    assert_eq!((r.code, r.one()["outcome"].as_str().unwrap()), (0, "refreshed"), "{}", r.stderr);
    let text = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(mode(&prom), 0o644);
    for line in [
        "# TYPE codex_auth_agent_access_token_expiry_timestamp_seconds gauge",
        "# HELP codex_auth_agent_last_outcome ",
        "codex_auth_agent_last_outcome{account=\"me\",outcome=\"refreshed\"} 1",
        "codex_auth_agent_last_outcome{account=\"me\",outcome=\"failed\"} 0",
        "codex_auth_agent_consecutive_failures{account=\"me\"} 0",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let expiry = r.one()["expires_at"].as_str().unwrap().to_string();
    let expiry = chrono::DateTime::parse_from_rfc3339(&expiry).unwrap().timestamp();
    assert!(
        text.contains(&format!("codex_auth_agent_access_token_expiry_timestamp_seconds{{account=\"me\"}} {expiry}\n"))
    );
    assert!(text.contains("codex_auth_agent_last_refresh_timestamp_seconds{account=\"me\"} "));
    assert!(!text.contains("codex_auth_agent_runner_ok{"), "never preflighted: no runner series\n{text}");
    let new_rt = read_json(&home.join("auth.json"))["tokens"]["refresh_token"].as_str().unwrap().to_string();
    let mut all = secrets(&c);
    all.push(new_rt);
    assert_no_secrets(&[("metrics", &text)], &all);

    // A permanent failure: the file is replaced (rename, not rewritten in place).
    let inode = ino(&prom);
    m.push_fault(Fault::refresh_token_expired());
    let r = refresh(&s, &m, &cfg, true);
    assert_eq!((r.code, r.one()["outcome"].as_str().unwrap()), (3, "failed"), "{}", r.stderr);
    let text = std::fs::read_to_string(&prom).unwrap();
    assert_ne!(ino(&prom), inode, "replaced atomically");
    assert_eq!(mode(&prom), 0o644);
    assert!(text.contains("codex_auth_agent_last_outcome{account=\"me\",outcome=\"failed\"} 1"), "{text}");
    assert!(text.contains("codex_auth_agent_last_outcome{account=\"me\",outcome=\"refreshed\"} 0"), "{text}");
    assert!(text.contains("codex_auth_agent_consecutive_failures{account=\"me\"} 1"), "{text}");
    assert!(text.contains(&format!("{{account=\"me\"}} {expiry}\n")), "a failure keeps the known expiry");
    assert_no_secrets(&[("metrics", &text)], &all);
    let names: Vec<_> = std::fs::read_dir(&prom_dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names, ["codex_auth_agent.prom"], "no temp file left");
}

#[test]
fn an_unwritable_metrics_file_is_only_a_warning() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("acct-1");
    let home = s.codex_home("codex", Some(&auth_json(&c, OLD)));
    let prom = s.path().join("missing-dir/codex_auth_agent.prom");
    let cfg = config(&s, &format!("metrics_textfile = \"{}\"", prom.display()), &me(), &home, "");
    let r = refresh(&s, &m, &cfg, false);
    assert_eq!((r.code, r.one()["outcome"].as_str().unwrap()), (0, "refreshed"), "{}", r.stderr);
    assert!(r.stderr.contains("could not write the metrics textfile"), "{}", r.stderr);
}

/// A config whose on_success and on_failure both dump their environment, each to its own file.
fn both_hooks(s: &Scratch, home: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let hook = env_hook(s);
    let (ok_out, fail_out) = (s.path().join("success.env"), s.path().join("failure.env"));
    let extra = format!(
        "on_success = \"{} {}\"\non_failure = \"{} {}\"\n",
        hook.display(),
        ok_out.display(),
        hook.display(),
        fail_out.display()
    );
    (config(s, "", &me(), home, &extra), ok_out, fail_out)
}

#[test]
fn success_hook_gets_exactly_its_environment() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("acct-1");
    let home = s.codex_home("codex", Some(&auth_json(&c, OLD)));
    let (cfg, ok_out, fail_out) = both_hooks(&s, &home);
    let r = refresh(&s, &m, &cfg, false);
    assert_eq!((r.code, r.one()["outcome"].as_str().unwrap()), (0, "refreshed"), "{}", r.stderr);
    let env = read_env(&ok_out);
    assert_eq!(keys(&env), ["ACCOUNT", "FAILURE_CLASS", "HOME", "OUTCOME", "PATH", "REASON"], "{env:?}");
    assert_eq!(env["ACCOUNT"], "me");
    assert_eq!(env["OUTCOME"], "refreshed");
    assert_eq!(env["FAILURE_CLASS"], "");
    assert_eq!(env["PATH"], "/usr/local/bin:/usr/bin:/bin");
    assert_eq!(env["HOME"], my_home());
    assert!(!fail_out.exists(), "on_failure did not run");
    let new_rt = read_json(&home.join("auth.json"))["tokens"]["refresh_token"].as_str().unwrap().to_string();
    let mut all = secrets(&c);
    all.push(new_rt);
    assert_no_secrets(&[("hook env", &std::fs::read_to_string(&ok_out).unwrap())], &all);

    // A fresh credential: nothing happened, no hook.
    std::fs::remove_file(&ok_out).unwrap();
    let r = refresh(&s, &m, &cfg, false);
    assert_eq!(r.one()["outcome"], "fresh", "{}", r.stderr);
    assert!(!ok_out.exists() && !fail_out.exists());
}

#[test]
fn failure_hook_runs_on_a_permanent_failure() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("acct-1");
    let home = s.codex_home("codex", Some(&auth_json(&c, OLD)));
    let (cfg, ok_out, fail_out) = both_hooks(&s, &home);
    m.push_fault(Fault::refresh_token_expired());
    let r = refresh(&s, &m, &cfg, false);
    let line = r.one();
    assert_eq!((r.code, line["class"].as_str().unwrap()), (3, "permanent"), "{}", r.stderr);
    let env = read_env(&fail_out);
    assert_eq!(keys(&env), ["ACCOUNT", "FAILURE_CLASS", "HOME", "OUTCOME", "PATH", "REASON"], "{env:?}");
    assert_eq!((env["OUTCOME"].as_str(), env["FAILURE_CLASS"].as_str()), ("failed", "permanent"));
    assert_eq!(env["REASON"], line["reason"].as_str().unwrap());
    assert!(!ok_out.exists(), "on_success did not run");
    assert_clean(&r, s.path(), &secrets(&c));
}

#[test]
fn a_hook_past_its_timeout_is_killed_and_the_outcome_stands() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("acct-1");
    let home = s.codex_home("codex", Some(&auth_json(&c, OLD)));
    let pid_file = s.path().join("sleeper.pid");
    // The sleeper is a grandchild: killing the group must reach it too.
    let hook = script(&s, "slow.sh", &format!("sleep 60 &\necho $! > {}\nwait", pid_file.display()));
    let extra = format!("on_success = \"{}\"\nhook_timeout = \"1s\"\n", hook.display());
    let cfg = config(&s, "", &me(), &home, &extra);
    let started = Instant::now();
    let r = refresh(&s, &m, &cfg, false);
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    assert_eq!((r.code, r.one()["outcome"].as_str().unwrap()), (0, "refreshed"), "{}", r.stderr);
    assert!(r.stderr.contains("still running after 1s and killed"), "{}", r.stderr);
    let pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
    std::thread::sleep(Duration::from_millis(200));
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let alive = state.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z'));
    assert!(!alive, "the hook's sleeper {pid} survived: {state}");
}

#[test]
fn a_failing_hook_is_a_warning() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("acct-1");
    let home = s.codex_home("codex", Some(&auth_json(&c, OLD)));
    let cfg = config(&s, "", &me(), &home, "on_success = \"/bin/false\"\n");
    let r = refresh(&s, &m, &cfg, false);
    assert_eq!((r.code, r.one()["outcome"].as_str().unwrap()), (0, "refreshed"), "{}", r.stderr);
    assert!(r.stderr.contains("on_success hook \"/bin/false\": exited with exit status: 1"), "{}", r.stderr);
}

#[test]
fn as_root_the_hook_runs_as_the_account_user() {
    if !require_root("as_root_the_hook_runs_as_the_account_user") {
        return;
    }
    let (alice, m, s) = (ensure_user("caa-alice"), mock(), Scratch::new());
    let c = m.issue_family("alice-acct");
    let home = home_for(&s, &alice, Some(&auth_json(&c, OLD)));
    let out = s.path().join("alice-out");
    std::fs::create_dir_all(&out).unwrap();
    chown_r(&out, alice.uid.as_raw(), alice.gid.as_raw());
    let hook = script(
        &s,
        "who.sh",
        "id -u > \"$1/uid\"\nid -G > \"$1/groups\"\ntr '\\0' '\\n' < /proc/$$/environ > \"$1/env\"",
    );
    let extra = format!("on_success = \"{} {}\"\n", hook.display(), out.display());
    let prom = s.path().join("codex_auth_agent.prom");
    let cfg = config(&s, &format!("metrics_textfile = \"{}\"", prom.display()), &alice.name, &home, &extra);
    let r = refresh(&s, &m, &cfg, false);
    assert_eq!((r.code, r.one()["outcome"].as_str().unwrap()), (0, "refreshed"), "{}", r.stderr);
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap().trim().to_string();
    assert_eq!(read("uid"), alice.uid.to_string());
    let groups: Vec<u32> = read("groups").split_whitespace().map(|g| g.parse().unwrap()).collect();
    assert!(!groups.contains(&0), "root's groups were dropped: {groups:?}");
    assert!(groups.contains(&alice.gid.as_raw()), "{groups:?}");
    let env = read_env(&out.join("env"));
    assert_eq!(keys(&env), ["ACCOUNT", "FAILURE_CLASS", "HOME", "OUTCOME", "PATH", "REASON"], "{env:?}");
    assert_eq!(env["HOME"], alice.dir.display().to_string());
    assert_eq!(mode(&prom), 0o644);
    assert!(std::fs::read_to_string(&prom).unwrap().contains("outcome=\"refreshed\"} 1"));
}

#[test]
fn a_failed_preflight_runs_on_failure_and_sets_runner_ok_to_zero() {
    let (m, s) = (mock(), Scratch::new());
    let c = m.issue_family("acct-1");
    let home = s.codex_home("codex", Some(&auth_json(&c, &recent())));
    let hook = env_hook(&s);
    let out = s.path().join("failure.env");
    let prom = s.path().join("codex_auth_agent.prom");
    let agent_extra =
        format!("metrics_textfile = \"{}\"\ncodex_bin = \"{}\"", prom.display(), s.path().join("no-codex").display());
    let extra = format!("on_failure = \"{} {}\"\n", hook.display(), out.display());
    let cfg = config(&s, &agent_extra, &me(), &home, &extra);
    let mut cmd = agent(&s, &m);
    cmd.arg("--config").arg(&cfg).args(["preflight", "--account", "me", "--json"]);
    let r = run(cmd);
    assert_ne!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let env = read_env(&out);
    assert_eq!(keys(&env), ["ACCOUNT", "FAILURE_CLASS", "HOME", "OUTCOME", "PATH", "REASON"], "{env:?}");
    assert_eq!(env["OUTCOME"], "preflight_failed");
    assert!(!env["FAILURE_CLASS"].is_empty());
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(text.contains("codex_auth_agent_runner_ok{account=\"me\"} 0\n"), "{text}");
    assert_no_secrets(&[("metrics", &text), ("hook env", &std::fs::read_to_string(&out).unwrap())], &secrets(&c));
}
