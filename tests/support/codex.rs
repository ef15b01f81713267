//! The real Codex CLI for the preflight and app-server tests, and what they share: a
//! world of mock + scratch + private TMPDIR, configs pointing Codex at the mock, and a
//! sampler of the running Codex child's argv and environment from /proc.
//!
//! `CODEX_AUTH_AGENT_TEST_CODEX` names Codex's native binary; tests/run-all.sh installs
//! `@openai/codex@0.169.0` from npm once into [`cache_dir`] and sets it, then runs the
//! Codex-facing tests again with 0.130.0 and the newest release (tests/codex-compat.sh).
//! Without the variable the binary is taken from that cache, installed there with npm if
//! missing. These tests never skip for want of Codex. [`behaviour`] says what the Codex
//! under test does (docs/CODEX-COMPAT.md), so one test asserts each version's own facts.

use super::*;
use mock_openai::{MockConfig, MockServer, make_jwt};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub const VERSION: &str = "0.169.0";
pub const ENV: &str = "CODEX_AUTH_AGENT_TEST_CODEX";
/// The native binary inside the npm install (codex-contract); up to 0.130 it was at
/// `…/x86_64-unknown-linux-musl/codex/codex` (tests/codex-compat.sh knows both).
pub const NATIVE: &str = "node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex";

/// Where tests/run-all.sh installs Codex: a world-traversable system cache as root (the
/// throwaway users that run it must reach it), else under target/.
pub fn cache_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        PathBuf::from(format!("/var/cache/codex-auth-agent-test/codex-{VERSION}"))
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/codex-{VERSION}"))
    }
}

/// The Codex binary every test runs.
pub fn codex_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os(ENV).filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "{ENV}={} does not exist; run tests/run-all.sh", p.display());
            return p;
        }
        let dir = cache_dir();
        let bin = dir.join(NATIVE);
        if !bin.is_file() {
            install(&dir);
        }
        assert!(bin.is_file(), "npm installed @openai/codex@{VERSION} but {} is missing", bin.display());
        bin
    })
}

/// `npm install @openai/codex@VERSION` into `dir`, once even across test processes.
fn install(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let lock = std::fs::File::create(dir.with_extension("lock")).unwrap();
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e).unwrap();
    if dir.join(NATIVE).is_file() {
        return;
    }
    let out = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--loglevel=error", &format!("@openai/codex@{VERSION}")])
        .current_dir(dir)
        .output()
        .expect("npm is needed to install the Codex CLI for these tests");
    assert!(out.status.success(), "npm install @openai/codex@{VERSION}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A mock, a scratch area and a private TMPDIR (sticky, world-writable like /tmp, so
/// throwaway users can make their homes there and the test can see what is left).
pub struct World {
    pub mock: MockServer,
    pub scratch: Scratch,
}

impl World {
    pub fn new() -> World {
        let w = World { mock: MockServer::start(MockConfig::default()), scratch: Scratch::new() };
        std::fs::create_dir_all(w.tmp()).unwrap();
        std::fs::set_permissions(w.tmp(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        w
    }

    pub fn tmp(&self) -> PathBuf {
        self.scratch.path().join("tmp")
    }

    /// `[agent]`/`[defaults]` pointing Codex at the mock, then `accounts` (TOML).
    /// `defaults` are more `[defaults]` keys; timeouts default to 5 s and 60 s.
    pub fn config(&self, defaults: &str, accounts: &str) -> PathBuf {
        let mut d = format!("codex_base_url = \"{}\"\n{defaults}\n", self.mock.url());
        for (key, value) in [("request_timeout", "5s"), ("preflight_timeout", "60s")] {
            if !defaults.contains(key) {
                d.push_str(&format!("{key} = \"{value}\"\n"));
            }
        }
        self.scratch.config(&format!("codex_bin = \"{}\"\n\n[defaults]\n{d}\n{accounts}", codex_bin().display()))
    }

    /// One account `me` of the invoking user with `home`.
    pub fn config_me(&self, home: &Path, defaults: &str) -> PathBuf {
        self.config(defaults, &format!("[accounts.me]\nuser = \"{}\"\ncodex_home = \"{}\"\n", me(), home.display()))
    }

    /// The agent with TMPDIR in the world.
    pub fn agent(&self) -> Command {
        let mut c = agent(&self.scratch, &self.mock);
        c.env("TMPDIR", self.tmp());
        c
    }

    /// `codex-auth-agent --config CFG ARGS…`
    pub fn run(&self, cfg: &Path, args: &[&str]) -> Run {
        let mut c = self.agent();
        c.arg("--config").arg(cfg).args(args);
        run(c)
    }

    /// Throwaway Codex homes still in TMPDIR.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.tmp())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("codex-auth-agent-"))
            .collect()
    }

    /// A login whose access token has expired (so Codex refreshes before using it, and
    /// the mock would refuse it), while the tokens it gets next live 10 days.
    pub fn expired_family(&self, account_id: &str) -> Credentials {
        self.mock.set_access_lifetime(Duration::from_secs(1));
        let c = self.mock.issue_family(account_id);
        self.mock.set_access_lifetime(Duration::from_secs(10 * 24 * 3600));
        std::thread::sleep(Duration::from_millis(2100));
        assert!(!self.mock.is_live_access_token(&c.access_token));
        c
    }
}

/// The throwaway users caa-alice and caa-bob (needs root), their CODEX_HOMEs, and the
/// config section naming their accounts alice and bob.
pub struct TwoUsers {
    pub alice: nix::unistd::User,
    pub bob: nix::unistd::User,
    pub alice_home: PathBuf,
    pub bob_home: PathBuf,
    pub accounts: String,
}

impl World {
    /// [`TwoUsers`] with `auth_a` and `auth_b` as their auth.json.
    pub fn two_users(&self, auth_a: &str, auth_b: &str) -> TwoUsers {
        let (alice, bob) = (ensure_user("caa-alice"), ensure_user("caa-bob"));
        let alice_home = home_for(&self.scratch, &alice, Some(auth_a));
        let bob_home = home_for(&self.scratch, &bob, Some(auth_b));
        let accounts = format!(
            "[accounts.alice]\nuser = \"caa-alice\"\ncodex_home = \"{}\"\n\n[accounts.bob]\nuser = \
                \"caa-bob\"\ncodex_home = \"{}\"\n",
            alice_home.display(),
            bob_home.display()
        );
        TwoUsers { alice, bob, alice_home, bob_home, accounts }
    }
}

/// argv and environment of one running Codex process, as /proc shows them.
#[derive(Clone, Debug)]
pub struct Sample {
    pub pid: i32,
    pub argv: Vec<String>,
    pub env: Vec<String>,
}

/// Samples /proc every few ms for Codex processes whose HOME is under `tmp`, until stopped.
pub struct ProcSampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProcSampler {
    pub fn start(tmp: &Path) -> ProcSampler {
        let (stop, samples) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (s2, out, tmp) = (stop.clone(), samples.clone(), tmp.to_path_buf());
        let exe = std::fs::canonicalize(codex_bin()).unwrap();
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                for s in scan(&exe, &tmp) {
                    let mut v = out.lock().unwrap();
                    if !v.iter().any(|o: &Sample| o.pid == s.pid) {
                        v.push(s);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        ProcSampler { stop, samples, thread: Some(thread) }
    }

    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        self.samples.lock().unwrap().clone()
    }
}

/// Running Codex processes of this world (their HOME is in its TMPDIR).
fn scan(exe: &Path, tmp: &Path) -> Vec<Sample> {
    let home = format!("HOME={}", tmp.display());
    super::procwatch::pids()
        .into_iter()
        .filter(|pid| is_exe(*pid, exe))
        .filter_map(super::procwatch::read_proc)
        // A child Codex forks may exec another program (its shell snapshot runs bash) between
        // the first look at exe and the read of cmdline; exec only goes one way, so a second
        // look that still finds Codex means argv and environ were read before any exec.
        .filter(|p| is_exe(p.pid, exe))
        .filter(|p| p.env.iter().any(|v| v.starts_with(&home)))
        .map(|p| Sample { pid: p.pid, argv: p.argv, env: p.env })
        .collect()
}

fn is_exe(pid: i32, exe: &Path) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_deref() == Some(exe)
}

/// Every Codex sample carries exactly the contract's environment and argv, and no token.
pub fn assert_child_clean(samples: &[Sample], argv_tail: &[&str], secrets: &[String]) {
    assert!(!samples.is_empty(), "no running Codex process was sampled");
    for s in samples {
        let mut keys: Vec<&str> = s.env.iter().map(|v| v.split('=').next().unwrap()).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "CODEX_HOME",
                "CODEX_REFRESH_TOKEN_URL_OVERRIDE",
                "CODEX_SYNC_BAKED",
                "CODEX_SYNC_OPTIONAL",
                "HOME",
                "PATH"
            ],
            "Codex's environment is exactly the contract's"
        );
        assert!(
            s.env.contains(&"CODEX_SYNC_OPTIONAL=1".to_string()) && s.env.contains(&"CODEX_SYNC_BAKED=0".to_string())
        );
        assert_eq!(&s.argv[1..], argv_tail, "argv");
        let text = format!("{}\n{}", s.argv.join(" "), s.env.join("\n"));
        assert_no_secrets(&[("codex argv/environ", &text)], secrets);
    }
}

/// No Codex process of this world is left running.
pub fn assert_no_codex_left(tmp: &Path) {
    let exe = std::fs::canonicalize(codex_bin()).unwrap();
    let left = scan(&exe, tmp);
    assert!(left.is_empty(), "Codex processes left running: {:?}", left.iter().map(|s| s.pid).collect::<Vec<_>>());
}

// --- Codex as the user runs it, on the account's own CODEX_HOME ----------------------

#[allow(clippy::disallowed_methods)] // fixtures are built relative to the real clock
pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A new login of `account` whose access token expires `exp_in` seconds from now
/// (negative: expired that long ago). The refresh token is live.
pub fn login(w: &World, account: &str, exp_in: i64) -> Credentials {
    let mut c = w.mock.issue_family(account);
    let mut claims = mock_openai::decode_jwt_payload(&c.access_token).unwrap();
    claims["exp"] = json!(unix_now() + exp_in);
    claims["iat"] = json!(unix_now() - 3600);
    c.access_token = make_jwt(&claims);
    c
}

/// The account's real CODEX_HOME, with a config that points Codex at the mock.
pub fn account_home(w: &World, name: &str, c: &Credentials) -> PathBuf {
    let home = w.scratch.codex_home(name, Some(&auth_json(c, &recent())));
    std::fs::write(home.join("config.toml"), codex_auth_agent::worker::codexrun::offline_config(&w.mock.url()))
        .unwrap();
    home
}

/// Codex as the user would run it against `home` (argv `args`).
pub fn codex(w: &World, home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(codex_bin());
    c.args(args)
        .env_clear()
        .env("HOME", w.scratch.path())
        .env("CODEX_HOME", home)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("CODEX_REFRESH_TOKEN_URL_OVERRIDE", w.mock.token_url())
        .current_dir(w.scratch.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

pub fn codex_exec(w: &World, home: &Path) -> Command {
    codex(w, home, &codex_auth_agent::core::contract::EXEC_ARGS)
}

/// `codex-auth-agent refresh --codex-home HOME --json`.
pub fn agent_refresh(w: &World, home: &Path) -> Command {
    let mut c = w.agent();
    c.args(["refresh", "--json", "--codex-home"]).arg(home).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

pub fn finish(child: Child) -> Run {
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// --- the app-server, as a JSON-RPC client sees it ---------------------------------------

/// The `clientInfo.name` the tests' app-server client introduces itself with (Codex uses
/// it as the `originator` of the refreshes it makes for that client).
pub const APP_CLIENT: &str = "codex-test-client";

/// `codex app-server` on `home`, initialized, waiting for requests.
pub struct AppServer {
    child: Child,
    stdin: std::process::ChildStdin,
    out: BufReader<std::process::ChildStdout>,
    next: u64,
}

impl AppServer {
    /// Started, not yet initialized. With an expired token Codex refreshes at once, before
    /// any request (seen here: the POST comes before `initialize` is answered).
    pub fn spawn(w: &World, home: &Path) -> AppServer {
        let mut cmd = codex(w, home, &["app-server"]);
        cmd.stdin(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        AppServer { child, stdin, out, next: 1 }
    }

    pub fn initialize(&mut self) {
        self.call("initialize", json!({"clientInfo": {"name": APP_CLIENT, "version": "0.1.0"}}));
        self.send(&json!({"method": "initialized"}));
    }

    pub fn start(w: &World, home: &Path) -> AppServer {
        let mut a = AppServer::spawn(w, home);
        a.initialize();
        a
    }

    pub fn send(&mut self, v: &Value) {
        writeln!(self.stdin, "{v}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Send a request now; read its answer with [`Self::answer`].
    pub fn request(&mut self, method: &str, params: Value) -> u64 {
        let id = self.next;
        self.next += 1;
        self.send(&json!({"id": id, "method": method, "params": params}));
        id
    }

    pub fn answer(&mut self, id: u64) -> Value {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(self.out.read_line(&mut line).unwrap() > 0, "app-server closed its output");
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["id"] == id && v.get("method").is_none() {
                return v;
            }
        }
    }

    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.request(method, params);
        self.answer(id)
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- which Codex, and what it does ------------------------------------------------------

/// `codex --version` of the binary under test (`codex-cli 0.169.0` → 0.169.0).
pub fn codex_version() -> (u32, u32, u32) {
    static V: OnceLock<(u32, u32, u32)> = OnceLock::new();
    *V.get_or_init(|| {
        let out = Command::new(codex_bin()).arg("--version").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let v = text.split_whitespace().last().and_then(codex_auth_agent::worker::codexwatch::parse_version);
        let v = v.unwrap_or_else(|| panic!("`codex --version` printed {text:?}"));
        (v.0, v.1, v.2)
    })
}

/// The behaviours that differ between the Codex releases we support, as verified against
/// each (docs/CODEX-COMPAT.md). A release newer than the newest tested one is expected to
/// behave like it; where it does not, the test that checks that row fails and names it.
#[derive(Clone, Copy, Debug)]
pub struct Behaviour {
    /// Takes `auth.lock` then `auth.json.lock` around its commit (0.169+; 0.130 none).
    pub locks: bool,
    /// Writes auth.json to a temp file renamed over it (0.169+); 0.130 truncates and
    /// rewrites the file in place, so a reader can see it empty or half-written.
    pub atomic_write: bool,
    /// The refresh body carries `refresh_reason` (0.169+).
    pub refresh_reason: bool,
    /// `CODEX_APP_SERVER_LOGIN_CLIENT_ID` replaces the client id (0.169+).
    pub client_id_env: bool,
    /// `account/read` asks `/wham/accounts/check` (0.169+), failing with -32603 when it can't.
    pub accounts_check: bool,
    /// Refreshes when the access token expires within 5 min (0.169+); 0.130 only once expired.
    pub margin_5min: bool,
    /// 400 invalid_grant is permanent for Codex (0.169+); 0.130 retries every 400.
    pub invalid_grant_permanent: bool,
    /// `Accept-Encoding` on the refresh request (0.171+: `zstd,gzip`).
    pub accept_encoding: Option<&'static str>,
}

pub fn behaviour() -> Behaviour {
    let (_, minor, _) = codex_version();
    let current = minor >= 169;
    Behaviour {
        locks: current,
        atomic_write: current,
        refresh_reason: current,
        client_id_env: current,
        accounts_check: current,
        margin_5min: current,
        invalid_grant_permanent: current,
        accept_encoding: (minor >= 171).then_some("zstd,gzip"),
    }
}
