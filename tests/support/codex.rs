//! The real Codex CLI for the preflight and app-server tests, and what they share: a
//! world of mock + scratch + private TMPDIR, configs pointing Codex at the mock, and a
//! sampler of the running Codex child's argv and environment from /proc.
//!
//! `CODEX_AUTH_AGENT_TEST_CODEX` names Codex's native binary; tests/run-all.sh installs
//! `@openai/codex@0.169.0` from npm once into [`cache_dir`] and sets it. Without the
//! variable the binary is taken from that cache, installed there with npm if missing.
//! These tests never skip for want of Codex.

use super::*;
use mock_openai::{MockConfig, MockServer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub const VERSION: &str = "0.169.0";
pub const ENV: &str = "CODEX_AUTH_AGENT_TEST_CODEX";
/// The native binary inside the npm install (codex-contract).
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
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_deref() == Some(exe))
        .filter_map(super::procwatch::read_proc)
        .filter(|p| p.env.iter().any(|v| v.starts_with(&home)))
        .map(|p| Sample { pid: p.pid, argv: p.argv, env: p.env })
        .collect()
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
