//! The shipped Prometheus rules (packaging/prometheus) and Grafana dashboard
//! (packaging/grafana) against what the agent really writes: each scenario runs the agent
//! against the mock (and a real OpenBao for the fleet) until its textfile shows the state,
//! turns the textfiles into promtool input series (node_exporter's view: each host's file
//! with its `instance` and `job`; timestamps made relative to the moment the file was
//! written, as promtool's clock starts at 0), and the real `promtool test rules` asserts
//! which alerts fire, when, and with which labels and annotations (the command to run).

mod support;

use mock_openai::{Fault, MockConfig, MockServer};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::openbao::Bao;
use support::ops::parse_prom;
use support::*;

const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/prometheus/codex-auth-agent.rules.yml");
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/grafana/codex-auth-agent.json");
const ALERTS: &[&str] = &[
    "CodexAuthLoginNeeded",
    "CodexAuthTokenExpiringUnrefreshed",
    "CodexAuthRefreshFailing",
    "CodexAuthPreflightFailing",
    "CodexAuthAgentDown",
    "CodexAuthFleetFollowerBehind",
];

/// The real promtool: `CODEX_AUTH_AGENT_TEST_PROMTOOL` (tests/run-all.sh unpacks it from
/// the Debian package `prometheus`), else from PATH.
fn promtool(test: &str) -> Option<PathBuf> {
    let found = match std::env::var_os("CODEX_AUTH_AGENT_TEST_PROMTOOL").filter(|p| !p.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None => std::env::var_os("PATH")
            .and_then(|p| std::env::split_paths(&p).map(|d| d.join("promtool")).find(|p| p.is_file())),
    };
    if found.is_none() {
        skipped(test, "promtool is missing: run tests/run-all.sh or apt-get install prometheus");
    }
    found
}

/// One host's textfile as promtool input series: every sample with the labels a scrape of
/// node_exporter adds, `*_timestamp_seconds` relative to the file's own write time, the
/// value held for the whole test (`v+0xN`).
fn input_series(text: &str, instance: &str) -> Vec<Value> {
    let series = parse_prom(text);
    let written = series["codex_auth_agent_textfile_timestamp_seconds"];
    series
        .iter()
        .map(|(name, v)| {
            let v = if name.split('{').next().unwrap().ends_with("_timestamp_seconds") { v - written } else { *v };
            let scrape = format!("instance=\"{instance}\",job=\"node\"");
            let labelled = match name.strip_suffix('}') {
                Some(s) => format!("{s},{scrape}}}"),
                None => format!("{name}{{{scrape}}}"),
            };
            json!({"series": labelled, "values": format!("{v}+0x400")})
        })
        .collect()
}

/// An expectation: at `at`, `alert` fires exactly for these (labels, annotations) — or
/// not at all when the list is empty.
struct Expect {
    at: &'static str,
    alert: &'static str,
    fires: Vec<(Value, Value)>,
}

fn fires(at: &'static str, alert: &'static str, labels: Value, annotations: Value) -> Expect {
    Expect { at, alert, fires: vec![(labels, annotations)] }
}

/// Nothing of `alerts` fires at `at`.
fn silent(at: &'static str, alerts: &[&'static str]) -> Vec<Expect> {
    alerts.iter().map(|a| Expect { at, alert: a, fires: vec![] }).collect()
}

/// Write the promtool test file (JSON is YAML) for `series` and run `promtool test rules`.
fn promtool_test(bin: &Path, dir: &Path, name: &str, series: Vec<Value>, expect: &[Expect]) {
    let tests: Vec<Value> = expect
        .iter()
        .map(|e| {
            let exp: Vec<Value> = e.fires.iter().map(|(l, a)| json!({"exp_labels": l, "exp_annotations": a})).collect();
            json!({"eval_time": e.at, "alertname": e.alert, "exp_alerts": exp})
        })
        .collect();
    let doc = json!({
        "rule_files": [RULES],
        "evaluation_interval": "1m",
        "tests": [{"name": name, "interval": "1m", "input_series": series, "alert_rule_test": tests}],
    });
    let file = dir.join(format!("{name}.test.yml"));
    std::fs::write(&file, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    let out = Command::new(bin).args(["test", "rules"]).arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "promtool test rules {name}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A scratch config with the textfile in [agent] and `body` after it.
fn config(s: &Scratch, agent_extra: &str, body: &str) -> (PathBuf, PathBuf) {
    let prom = s.path().join("codex_auth_agent.prom");
    let cfg = s.config(&format!("metrics_textfile = \"{}\"\n{agent_extra}\n{body}", prom.display()));
    (cfg, prom)
}

fn account(name: &str, home: &Path, extra: &str) -> String {
    format!("[accounts.{name}]\nuser = \"{}\"\ncodex_home = \"{}\"\n{extra}\n", me(), home.display())
}

fn agent_run(s: &Scratch, m: &MockServer, cfg: &Path, args: &[&str]) -> Run {
    let mut c = agent(s, m);
    c.env("TMPDIR", s.path()).arg("--config").arg(cfg).args(args).arg("--json");
    run(c)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The labels an alert of `account` on `instance` carries.
fn labels(account: &str, instance: &str, severity: &str) -> Value {
    json!({"account": account, "instance": instance, "job": "node", "severity": severity})
}

/// The annotations every account alert carries; `what` and `why` are its own words.
fn annotations(summary: String, description: String, command: String) -> Value {
    json!({"summary": summary, "description": description, "command": command})
}

#[test]
fn rules_pass_promtool_check() {
    let Some(bin) = promtool("rules_pass_promtool_check") else { return };
    let out = Command::new(bin).args(["check", "rules", RULES]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("SUCCESS: {} rules found", ALERTS.len())), "{text}");
    let rules = read(Path::new(RULES));
    for a in ALERTS {
        assert!(rules.contains(&format!("- alert: {a}\n")), "{a} missing from the rules");
    }
}

/// A healthy account (refreshed, preflight passed with the real Codex): nothing fires while
/// the daemon keeps writing; once the file stops changing for 30 min, CodexAuthAgentDown.
/// A second account whose Codex run fails: CodexAuthPreflightFailing, and only that.
#[test]
fn healthy_agent_is_silent_until_it_stops_and_a_failing_preflight_alerts() {
    let test = "healthy_agent_is_silent_until_it_stops_and_a_failing_preflight_alerts";
    let Some(bin) = promtool(test) else { return };
    let (m, s) = (MockServer::start(MockConfig::default()), Scratch::new());
    let (good, bad) = (m.issue_family("acct-good"), m.issue_family("acct-bad"));
    let good_home = s.codex_home("good", Some(&auth_json(&good, OLD)));
    let bad_home = s.codex_home("bad", Some(&auth_json(&bad, OLD)));
    let agent_extra = format!("codex_bin = \"{}\"", support::codex::codex_bin().display());
    let defaults = format!(
        "[defaults]\nrequest_timeout = \"5s\"\npreflight_timeout = \"60s\"\ncodex_base_url = \"{}\"\n",
        m.url()
    );
    let body = format!("{defaults}\n{}{}", account("good", &good_home, ""), account("bad", &bad_home, ""));
    let (cfg, prom) = config(&s, &agent_extra, &body);
    let r = agent_run(&s, &m, &cfg, &["refresh", "--all"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = agent_run(&s, &m, &cfg, &["preflight", "--account", "good"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // From now on the backend refuses every request: bad's codex exec fails.
    m.set_sticky_backend_fault(Some(Fault::forbidden_plain()));
    let r = agent_run(&s, &m, &cfg, &["preflight", "--account", "bad"]);
    assert_ne!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let text = read(&prom);
    assert!(text.contains("codex_auth_agent_runner_ok{account=\"good\"} 1\n"), "{text}");
    assert!(text.contains("codex_auth_agent_runner_ok{account=\"bad\"} 0\n"), "{text}");
    assert_no_secrets(&[("metrics", &text)], &[secrets(&good), secrets(&bad)].concat());

    let host = "vm-1:9100";
    let mut expect = silent(
        "20m",
        ALERTS.iter().filter(|a| **a != "CodexAuthPreflightFailing").copied().collect::<Vec<_>>().as_slice(),
    );
    expect.push(fires(
        "20m",
        "CodexAuthPreflightFailing",
        labels("bad", host, "warning"),
        annotations(
            format!("codex exec fails for bad on {host} (preflight)"),
            "The last preflight (a real codex exec as the account's user) failed. Reason: codex-authctl status bad. \
             Check again: codex-authctl preflight bad. If Codex says the login is invalid: codex-authctl login bad"
                .into(),
            "codex-authctl preflight bad".into(),
        ),
    ));
    expect.push(fires(
        "40m",
        "CodexAuthAgentDown",
        json!({"instance": host, "job": "node", "severity": "critical"}),
        json!({
            "summary": format!("codex-auth-agent on {host} has not written its metrics for 40m 0s"),
            "description": format!("Nothing on {host} is keeping its Codex logins fresh. Run there: systemctl status \
                codex-auth-agent; journalctl -u codex-auth-agent -e; systemctl restart codex-auth-agent"),
            "command": "systemctl restart codex-auth-agent",
        }),
    ));
    promtool_test(&bin, s.path(), "healthy", input_series(&text, host), &expect);
}

/// A dead refresh token: CodexAuthLoginNeeded names the account and `codex-authctl login`;
/// the transient-failure alert stays quiet (a retry cannot help, the login alert says so).
#[test]
fn a_dead_login_alerts_with_the_login_command() {
    let Some(bin) = promtool("a_dead_login_alerts_with_the_login_command") else { return };
    let (m, s) = (MockServer::start(MockConfig::default()), Scratch::new());
    let c = m.issue_family("acct-alice");
    let home = s.codex_home("alice", Some(&auth_json(&c, OLD)));
    let (cfg, prom) = config(&s, "", &format!("[defaults]\nrequest_timeout = \"5s\"\n{}", account("alice", &home, "")));
    m.push_fault(Fault::refresh_token_reused());
    let r = agent_run(&s, &m, &cfg, &["refresh", "--account", "alice"]);
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    let text = read(&prom);
    assert!(text.contains("codex_auth_agent_needs_login{account=\"alice\"} 1\n"), "{text}");

    let host = "vm-2:9100";
    let mut expect = silent("30s", &["CodexAuthLoginNeeded"]);
    expect.push(fires(
        "2m",
        "CodexAuthLoginNeeded",
        labels("alice", host, "critical"),
        annotations(
            format!("Codex login of account alice on {host} is dead: a human must log in"),
            format!(
                "The last refresh of alice failed permanently and the account is quarantined. Run on {host}: \
                codex-authctl login alice (open the URL it prints and enter the code). In fleet mode run it on the \
                refresher; on a follower add --publish to put the login in Vault's seed key."
            ),
            "codex-authctl login alice".into(),
        ),
    ));
    expect.extend(silent(
        "3h",
        &["CodexAuthRefreshFailing", "CodexAuthPreflightFailing", "CodexAuthFleetFollowerBehind"],
    ));
    promtool_test(&bin, s.path(), "dead", input_series(&text, host), &expect);
}

/// A token the mock issued for 2 h (inside the 1 d margin) that the next refresh cannot
/// replace (503): CodexAuthTokenExpiringUnrefreshed after 30 min, CodexAuthRefreshFailing
/// after 2 h, never the login alert.
#[test]
fn an_unrefreshed_token_and_failing_refreshes_alert_in_time() {
    let Some(bin) = promtool("an_unrefreshed_token_and_failing_refreshes_alert_in_time") else { return };
    let (m, s) = (MockServer::start(MockConfig::default()), Scratch::new());
    let c = m.issue_family("acct-bob");
    let home = s.codex_home("bob", Some(&auth_json(&c, OLD)));
    let (cfg, prom) = config(&s, "", &format!("[defaults]\nrequest_timeout = \"5s\"\n{}", account("bob", &home, "")));
    m.set_access_lifetime(Duration::from_secs(2 * 3600));
    let r = agent_run(&s, &m, &cfg, &["refresh", "--account", "bob"]);
    assert_eq!((r.code, r.one()["outcome"].as_str().unwrap()), (0, "refreshed"), "{}", r.stderr);
    m.set_sticky_fault(Some(Fault::service_unavailable()));
    let r = agent_run(&s, &m, &cfg, &["refresh", "--account", "bob"]);
    assert_eq!((r.code, r.one()["class"].as_str().unwrap()), (4, "transient"), "{}{}", r.stdout, r.stderr);
    let text = read(&prom);
    assert!(text.contains("codex_auth_agent_consecutive_failures{account=\"bob\"} 1\n"), "{text}");
    assert!(text.contains("codex_auth_agent_needs_login{account=\"bob\"} 0\n"), "{text}");

    let host = "vm-3:9100";
    let series = input_series(&text, host);
    let expiry = series
        .iter()
        .find(|v| v["series"].as_str().unwrap().starts_with("codex_auth_agent_access_token_expiry"))
        .map(|v| v["values"].as_str().unwrap().split('+').next().unwrap().parse::<f64>().unwrap())
        .unwrap();
    assert!((7000.0..=7200.0).contains(&expiry), "2 h from the write: {expiry}");
    let mut expect = silent("20m", &["CodexAuthTokenExpiringUnrefreshed", "CodexAuthRefreshFailing"]);
    // At 31 min the token has expiry - 31 min left; promtool renders it with humanizeDuration.
    let left = expiry as i64 - 31 * 60;
    expect.push(fires(
        "31m",
        "CodexAuthTokenExpiringUnrefreshed",
        labels("bob", host, "warning"),
        annotations(
            format!(
                "Codex access token of bob on {host} expires in {}h {}m {}s and is not being refreshed",
                left / 3600,
                left % 3600 / 60,
                left % 60
            ),
            "The token is inside its refresh_before_expiry margin and no refresh has replaced it. See codex-authctl \
             status bob and journalctl -u codex-auth-agent ACCOUNT=bob. If the login is dead run: \
             codex-authctl login bob"
                .into(),
            "codex-authctl login bob".into(),
        ),
    ));
    expect.extend(silent("1h50m", &["CodexAuthRefreshFailing"]));
    expect.push(fires(
        "2h10m",
        "CodexAuthRefreshFailing",
        labels("bob", host, "warning"),
        annotations(
            format!("Refreshes of bob on {host} have failed 1 times in a row for 2h"),
            "The agent retries with backoff. Why: codex-authctl status bob and journalctl -u codex-auth-agent \
             ACCOUNT=bob OUTCOME=failed. Retry now: codex-authctl refresh bob. Should it turn permanent: \
             codex-authctl login bob"
                .into(),
            "codex-authctl refresh bob".into(),
        ),
    ));
    expect.extend(silent("2h10m", &["CodexAuthLoginNeeded"]));
    promtool_test(&bin, s.path(), "unrefreshed", series, &expect);
}

/// One fleet host: its own scratch, state, CODEX_HOME and textfile, Vault by a token with
/// the shipped policy of its role.
struct FleetHost {
    s: Scratch,
    cfg: PathBuf,
    prom: PathBuf,
}

fn fleet_host(bao: &Bao, id: &str, role: &str) -> FleetHost {
    let s = Scratch::new();
    let home = s.codex_home("codex", None);
    let token = s.path().join("vault-token");
    std::fs::write(&token, bao.token(&[&format!("fleet-{role}")])).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let body = format!(
        "[vault]\naddress = \"{}\"\ntoken_file = \"{}\"\n\n[defaults]\nrequest_timeout = \"5s\"\n{}",
        bao.addr,
        token.display(),
        account("team", &home, &format!("fleet_role = \"{role}\""))
    );
    let (cfg, prom) = config(&s, &format!("host_id = \"{id}\""), &body);
    FleetHost { s, cfg, prom }
}

/// A refresher rotates (version 3) after two followers installed version 2; one of them
/// syncs again, the other does not: only that one is behind, after 2 h.
#[test]
fn a_follower_left_behind_its_refresher_alerts() {
    let test = "a_follower_left_behind_its_refresher_alerts";
    let Some(bin) = promtool(test) else { return };
    let Some(bao) = Bao::start(test) else { return };
    let m = MockServer::start(MockConfig::default());
    let c = m.issue_family("acct-team");
    bao.put("codex-auth-json-b64-team", auth_json(&c, OLD).as_bytes());
    for role in ["refresher", "follower"] {
        let policy = format!("{}/docs/fleet-policies/{role}.hcl", env!("CARGO_MANIFEST_DIR"));
        bao.cli(&["policy", "write", &format!("fleet-{role}"), &policy]);
    }
    let (r, f1, f2) = (
        fleet_host(&bao, "vm-r", "refresher"),
        fleet_host(&bao, "vm-f1", "follower"),
        fleet_host(&bao, "vm-f2", "follower"),
    );
    let refresh = |h: &FleetHost, extra: &[&str]| {
        let run = agent_run(&h.s, &m, &h.cfg, &[&["refresh", "--account", "team"], extra].concat());
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    };
    refresh(&r, &[]);
    refresh(&f1, &[]);
    refresh(&f2, &[]);
    refresh(&r, &["--force"]);
    refresh(&f2, &[]);
    let texts = [(&r, "vm-r:9100"), (&f1, "vm-f1:9100"), (&f2, "vm-f2:9100")].map(|(h, i)| (read(&h.prom), i));
    assert!(
        texts[0].0.contains("codex_auth_agent_fleet_version{account=\"team\",role=\"refresher\"} 3\n"),
        "{}",
        texts[0].0
    );
    assert!(
        texts[1].0.contains("codex_auth_agent_fleet_version{account=\"team\",role=\"follower\"} 2\n"),
        "{}",
        texts[1].0
    );
    assert!(
        texts[2].0.contains("codex_auth_agent_fleet_version{account=\"team\",role=\"follower\"} 3\n"),
        "{}",
        texts[2].0
    );

    let series: Vec<Value> = texts.iter().flat_map(|(t, i)| input_series(t, i)).collect();
    let mut expect = silent("1h50m", &["CodexAuthFleetFollowerBehind"]);
    let mut l = labels("team", "vm-f1:9100", "warning");
    l["role"] = json!("follower");
    expect.push(fires(
        "2h10m",
        "CodexAuthFleetFollowerBehind",
        l,
        annotations(
            "Fleet follower vm-f1:9100 holds version 2 of team, behind its refresher".into(),
            "The refresher wrote a newer rotating key. On vm-f1:9100: codex-authctl sync team (reads Vault at once) \
             and journalctl -u codex-auth-agent ACCOUNT=team."
                .into(),
            "codex-authctl sync team".into(),
        ),
    ));
    expect.extend(silent(
        "2h10m",
        &["CodexAuthLoginNeeded", "CodexAuthRefreshFailing", "CodexAuthTokenExpiringUnrefreshed"],
    ));
    promtool_test(&bin, r.s.path(), "fleet", series, &expect);
}

/// Every `codex_auth_agent_*` name in `expr` strings of the dashboard.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("codex_auth_agent_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The dashboard has what Grafana needs to import it (title, uid, schemaVersion, a
/// Prometheus datasource variable, panels with ids, types, grid positions and targets), and
/// every metric it or the rules query is one the agent writes.
#[test]
fn dashboard_is_importable_and_queries_only_metrics_the_agent_writes() {
    let d: Value = serde_json::from_str(&read(Path::new(DASHBOARD))).expect("the dashboard is JSON");
    for k in ["title", "uid"] {
        assert!(d[k].as_str().is_some_and(|s| !s.is_empty()), "dashboard needs {k}");
    }
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion");
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    assert!(
        vars.iter().any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "a Prometheus datasource variable"
    );
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    for p in panels {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        let kind = p["type"].as_str().expect("panel type");
        kinds.insert(kind.to_string());
        for k in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][k].as_u64().is_some(), "panel {id} gridPos.{k}");
        }
        assert!(
            p["gridPos"]["x"].as_u64().unwrap() + p["gridPos"]["w"].as_u64().unwrap() <= 24,
            "panel {id} fits 24 columns"
        );
        if kind == "row" {
            continue;
        }
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "panel {id} title");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {id} uses the datasource variable");
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel {id} targets"));
        assert!(!targets.is_empty(), "panel {id} has no query");
        for t in targets {
            assert!(t["expr"].as_str().is_some_and(|e| e.contains("codex_auth_agent_")), "panel {id}: {t}");
            assert!(t["refId"].as_str().is_some(), "panel {id} refId");
        }
    }
    for k in ["table", "timeseries", "stat"] {
        assert!(kinds.contains(k), "a {k} panel");
    }
    // What the agent writes: the families of a textfile with every series present
    // (a fleet account with a preflight and a failure), from the real binary.
    let (m, s) = (MockServer::start(MockConfig::default()), Scratch::new());
    let c = m.issue_family("acct-x");
    let home = s.codex_home("x", Some(&auth_json(&c, OLD)));
    let (cfg, prom) = config(
        &s,
        "codex_bin = \"/nonexistent/codex\"",
        &format!("[defaults]\nrequest_timeout = \"5s\"\n{}", account("x", &home, "")),
    );
    agent_run(&s, &m, &cfg, &["refresh", "--account", "x"]);
    agent_run(&s, &m, &cfg, &["preflight", "--account", "x"]);
    let written: BTreeSet<String> = read(&prom)
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    let queried = metric_names(&read(Path::new(DASHBOARD)));
    assert!(queried.len() >= 6, "{queried:?}");
    let rules = metric_names(&read(Path::new(RULES)));
    for name in queried.iter().chain(&rules) {
        assert!(written.contains(name), "{name} is queried but the agent writes only {written:?}");
    }
    let unused: Vec<_> = written.iter().filter(|n| !queried.contains(*n)).collect();
    assert!(unused.is_empty(), "the dashboard shows nothing of {unused:?}");
}
