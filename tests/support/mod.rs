//! Shared helpers for the integration tests: temp Codex homes, auth.json fixtures,
//! running the real binary, and the canary checks. Each test binary includes this with
//! `mod support;`, so not every helper is used everywhere.
#![allow(dead_code)]

pub mod bench;
pub mod canary;
pub mod codex;
pub mod dbus;
pub mod journal;
pub mod openbao;
pub mod ops;
pub mod procwatch;
pub mod sim;

use mock_openai::{Credentials, MockServer};
use serde_json::{Value, json};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_codex-auth-agent");

/// A long-ago last_refresh: makes a credential due by max_age.
pub const OLD: &str = "2020-01-01T00:00:00.000000000Z";
/// A recent-enough last_refresh for "fresh" tests is computed from the real clock.
pub fn recent() -> String {
    #[allow(clippy::disallowed_methods)] // tests build fixtures relative to the real clock
    let now = chrono::Utc::now();
    now.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// A Codex-shaped auth.json with fields Codex does not know, which we must keep.
pub fn auth_json(c: &Credentials, last_refresh: &str) -> String {
    serde_json::to_string_pretty(&json!({
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": null,
        "tokens": {
            "id_token": c.id_token,
            "access_token": c.access_token,
            "refresh_token": c.refresh_token,
            "account_id": c.account_id,
            "x_unknown_token_field": "keep-me-too",
        },
        "last_refresh": last_refresh,
        "x_unknown_top": {"keep": true},
    }))
    .unwrap()
}

/// A scratch area that other users can traverse (so dropped workers reach their homes).
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::Builder::new().prefix("caa-test-").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `account`'s seed at its default path beside the config (etc/seeds/), 0600.
    pub fn seed(&self, account: &str, auth: &str) -> PathBuf {
        let p = self.path().join("etc/seeds").join(format!("{account}.json"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, auth).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    /// A CODEX_HOME (0700) holding `auth` as auth.json (0600).
    pub fn codex_home(&self, name: &str, auth: Option<&str>) -> PathBuf {
        let home = self.path().join(name);
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        if let Some(a) = auth {
            let f = home.join("auth.json");
            std::fs::write(&f, a).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        home
    }

    /// A config file with `body` appended after an [agent] section pointing state here.
    pub fn config(&self, body: &str) -> PathBuf {
        let dir = self.path().join("etc");
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("config.toml");
        let state = self.path().join("state");
        std::fs::write(&p, format!("[agent]\nstate_dir = \"{}\"\n\n{body}", state.display())).unwrap();
        p
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path().join("state")
    }
}

/// The invoking user's name.
pub fn me() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid()).unwrap().unwrap().name
}

/// The agent binary with a clean, explicit environment.
pub fn agent(scratch: &Scratch, mock: &MockServer) -> Command {
    agent_at(Path::new(BIN), scratch, mock)
}

/// [`agent`] from another copy of the executable (a test that replaces it on disk).
pub fn agent_at(program: &Path, scratch: &Scratch, mock: &MockServer) -> Command {
    let mut c = Command::new(program);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", scratch.path())
        .env("XDG_STATE_HOME", scratch.path().join("xdg-state"))
        .env("CODEX_AUTH_AGENT_LOG", "stderr")
        .env("CODEX_REFRESH_TOKEN_URL_OVERRIDE", mock.token_url());
    c
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Vec<Value> {
        self.stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
    }
    pub fn one(&self) -> Value {
        let v = self.json();
        assert_eq!(v.len(), 1, "stdout: {}\nstderr: {}", self.stdout, self.stderr);
        v.into_iter().next().unwrap()
    }
}

pub fn run(mut c: Command) -> Run {
    Run::from(c.output().unwrap())
}

impl From<Output> for Run {
    fn from(Output { status, stdout, stderr }: Output) -> Run {
        Run {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }
}

/// Every token string of these credentials.
pub fn secrets(c: &Credentials) -> Vec<String> {
    vec![c.id_token.clone(), c.access_token.clone(), c.refresh_token.clone()]
}

/// Assert no secret appears in any text; names the haystack that leaked.
pub fn assert_no_secrets(haystacks: &[(&str, &str)], secrets: &[String]) {
    for (name, text) in haystacks {
        for s in secrets {
            assert!(!text.contains(s.as_str()), "a token value leaked into {name}");
        }
        assert!(!text.contains("CANARY-rt_"), "a canary refresh token leaked into {name}");
    }
}

/// Read every regular file under `dir` except auth.json (which holds tokens by design).
pub fn non_credential_files(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        let md = std::fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            out.extend(non_credential_files(&p));
        } else if md.is_file() && p.file_name().unwrap() != "auth.json" && !p.to_string_lossy().contains("seeds") {
            out.push((p.display().to_string(), String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned()));
        }
    }
    out
}

/// Run outputs and every status/sidecar file under `root` are free of these tokens.
pub fn assert_clean(run: &Run, root: &Path, secrets: &[String]) {
    let files = non_credential_files(root);
    let mut hay: Vec<(&str, &str)> = vec![("stdout", run.stdout.as_str()), ("stderr", run.stderr.as_str())];
    hay.extend(files.iter().map(|(n, t)| (n.as_str(), t.as_str())));
    assert_no_secrets(&hay, secrets);
}

pub fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o7777
}

pub fn ino(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().ino()
}

pub fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// True when running as root; otherwise the test is skipped (see [`skipped`]).
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skipped(test, "needs root (creates users and drops privileges); CI runs as root");
    false
}

/// Say that `test` did not run and why: printed, and appended to
/// `target/tmp/skipped-tests.txt`, which tests/run-all.sh counts at the end (and fails on
/// in CI), so a green run never hides tests that did not run.
pub fn skipped(test: &str, why: &str) {
    use std::io::Write;
    println!("SKIPPED {test}: {why}");
    let list = Path::new(env!("CARGO_TARGET_TMPDIR")).join("skipped-tests.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(list) {
        let _ = writeln!(f, "{test}: {why}");
    }
}

/// useradd, groupadd and usermod take /etc/passwd locks of their own and fail instead of
/// waiting: the tests' calls take turns on this lock.
fn account_db_lock() -> nix::fcntl::Flock<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/caa-test-useradd.lock")
        .unwrap();
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e).unwrap()
}

/// Create (once, idempotently) a throwaway system user for privilege tests.
pub fn ensure_user(name: &str) -> nix::unistd::User {
    let _lock = account_db_lock();
    if nix::unistd::User::from_name(name).unwrap().is_none() {
        let out = Command::new("useradd")
            .args(["--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name])
            .output()
            .unwrap();
        assert!(out.status.success(), "useradd {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    nix::unistd::User::from_name(name).unwrap().unwrap()
}

/// A system group `group` (created once) with `user` in it; returns its gid.
pub fn ensure_group_member(group: &str, user: &str) -> u32 {
    let _lock = account_db_lock();
    let steps: [&[&str]; 2] = [&["groupadd", "--system", "-f", group], &["usermod", "-aG", group, user]];
    for argv in steps {
        let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
        assert!(out.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    nix::unistd::Group::from_name(group).unwrap().unwrap().gid.as_raw()
}

/// A CODEX_HOME for `u` under the scratch area, owned by `u`.
pub fn home_for(s: &Scratch, u: &nix::unistd::User, auth: Option<&str>) -> PathBuf {
    home_at(s, u, ".codex", auth)
}

/// Like [`home_for`], at `sub` under `u`'s directory (one user's second CODEX_HOME).
pub fn home_at(s: &Scratch, u: &nix::unistd::User, sub: &str, auth: Option<&str>) -> PathBuf {
    let home = s.codex_home(&format!("{}/{sub}", u.name), auth);
    std::fs::set_permissions(home.parent().unwrap(), std::fs::Permissions::from_mode(0o755)).unwrap();
    chown_r(&home, u.uid.as_raw(), u.gid.as_raw());
    home
}

/// Every entry under `dir` belongs to `uid`: root created nothing in the user's home.
pub fn assert_all_owned_by(dir: &Path, uid: u32) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let md = std::fs::symlink_metadata(e.path()).unwrap();
        assert_eq!(md.uid(), uid, "{} is owned by uid {}", e.path().display(), md.uid());
    }
}

/// chown -R
pub fn chown_r(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
    if std::fs::symlink_metadata(p).unwrap().is_dir() {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            chown_r(&e.path(), uid, gid);
        }
    }
}

/// A tmpfs mounted for the test, unmounted on drop.
pub struct TinyFs(pub PathBuf);

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
