//! A private dbus-daemon (session type, any local user may connect) and the agent daemon
//! running against it, for the daemon tests.

use super::*;
use codex_auth_agent::api::names::{ACCOUNT_IFACE, BUS_NAME, MANAGER_IFACE, MANAGER_PATH, account_path};
use codex_auth_agent::api::view::AccountView;
use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use zbus::{Connection, Proxy};

pub const CTL: &str = env!("CARGO_BIN_EXE_codex-authctl");

pub struct PrivateBus {
    child: Child,
    pub address: String,
}

impl PrivateBus {
    pub fn start(dir: &Path) -> PrivateBus {
        let sock = dir.join("bus");
        let conf = dir.join("bus.conf");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
                sock.display()
            ),
        )
        .unwrap();
        let child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .arg("--nofork")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon (package dbus) is needed for the daemon tests");
        let t0 = Instant::now();
        while !sock.exists() {
            assert!(t0.elapsed() < Duration::from_secs(10), "dbus-daemon did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        PrivateBus { child, address: format!("unix:path={}", sock.display()) }
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent daemon under test, with its stderr log and the sd-notify messages it sent.
pub struct AgentDaemon {
    pub child: Option<Child>,
    pub log: PathBuf,
    /// Every sd-notify message with its arrival time, collected by a thread so the daemon
    /// is never blocked.
    notes: std::sync::Arc<std::sync::Mutex<Vec<(Instant, String)>>>,
    /// When the daemon was spawned.
    pub started: Instant,
}

impl AgentDaemon {
    pub fn start(s: &Scratch, m: &MockServer, cfg: &Path, bus: &PrivateBus) -> AgentDaemon {
        Self::start_from(Path::new(BIN), s, m, cfg, bus, |_| {})
    }

    /// [`AgentDaemon::start`] with more environment variables (e.g. WATCHDOG_USEC).
    pub fn start_with_env(
        s: &Scratch,
        m: &MockServer,
        cfg: &Path,
        bus: &PrivateBus,
        env: &[(&str, &str)],
    ) -> AgentDaemon {
        Self::start_from(Path::new(BIN), s, m, cfg, bus, |c| {
            c.envs(env.iter().copied());
        })
    }

    /// [`AgentDaemon::start`] from `program` (another copy of the executable, or [`BIN`]) with
    /// a last change to the command (e.g. a namespace).
    pub fn start_from(
        program: &Path,
        s: &Scratch,
        m: &MockServer,
        cfg: &Path,
        bus: &PrivateBus,
        tweak: impl FnOnce(&mut Command),
    ) -> AgentDaemon {
        let log = s.path().join(format!("daemon-{}.log", fastrand_suffix()));
        let sock = s.path().join(format!("notify-{}.sock", fastrand_suffix()));
        let notify = UnixDatagram::bind(&sock).unwrap();
        let notes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = notes.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = notify.recv(&mut buf) {
                sink.lock().unwrap().push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned()));
            }
        });
        let mut cmd = agent_at(program, s, m);
        cmd.arg("--config")
            .arg(cfg)
            .args(["daemon", "--bus", &bus.address])
            .env("NOTIFY_SOCKET", &sock)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        tweak(&mut cmd);
        let started = Instant::now();
        let child = cmd.spawn().unwrap();
        let mut d = AgentDaemon { child: Some(child), log, notes, started };
        d.wait_note("READY=1", Duration::from_secs(20));
        d
    }

    /// Wait until a notify message containing `what` arrived.
    pub fn wait_note(&mut self, what: &str, limit: Duration) -> String {
        let t0 = Instant::now();
        loop {
            if let Some(n) = self.notes().into_iter().find(|n| n.contains(what)) {
                return n;
            }
            assert!(t0.elapsed() < limit, "no sd-notify {what:?}; got {:?}\nlog:\n{}", self.notes(), self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn notes(&self) -> Vec<String> {
        self.notes.lock().unwrap().iter().map(|(_, n)| n.clone()).collect()
    }

    /// When the first message containing `what` arrived.
    pub fn note_at(&self, what: &str) -> Option<Instant> {
        self.notes.lock().unwrap().iter().find(|(_, n)| n.contains(what)).map(|(t, _)| *t)
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.as_ref().unwrap().id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
    }

    /// SIGTERM and the exit code.
    pub fn stop(&mut self) -> i32 {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let mut child = self.child.take().unwrap();
        let t0 = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(t0.elapsed() < Duration::from_secs(40), "daemon did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentDaemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn fastrand_suffix() -> String {
    format!("{:08x}", std::process::id() ^ (Instant::now().elapsed().as_nanos() as u32) ^ rand_u32())
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    u32::from_ne_bytes(b)
}

/// codex-authctl against the private bus.
pub fn ctl(bus: &PrivateBus) -> Command {
    let mut c = Command::new(CTL);
    c.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).args(["--address", &bus.address]);
    c
}

// Clients of the daemon under test (shared by tests/daemon.rs and tests/malformed.rs).

/// Every property of one account object, read afresh.
pub async fn view(conn: &Connection, name: &str) -> AccountView {
    let p = zbus::fdo::PropertiesProxy::builder(conn)
        .destination(BUS_NAME)
        .unwrap()
        .path(account_path(name))
        .unwrap()
        .build()
        .await
        .unwrap();
    let all: std::collections::HashMap<String, zbus::zvariant::OwnedValue> =
        p.get_all(zbus::names::InterfaceName::from_static_str_unchecked(ACCOUNT_IFACE)).await.unwrap();
    AccountView::from_properties(&all)
}

/// Uncached proxies: every property read asks the daemon.
pub async fn uncached(conn: &Connection, path: String, iface: &'static str) -> Proxy<'static> {
    zbus::proxy::Builder::new(conn)
        .destination(BUS_NAME)
        .unwrap()
        .path(path)
        .unwrap()
        .interface(iface)
        .unwrap()
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap()
}

pub async fn account(conn: &Connection, name: &str) -> Proxy<'static> {
    uncached(conn, account_path(name), ACCOUNT_IFACE).await
}

pub async fn manager(conn: &Connection) -> Proxy<'static> {
    uncached(conn, MANAGER_PATH.to_string(), MANAGER_IFACE).await
}

pub async fn wait_state(conn: &Connection, name: &str, state: &str) -> AccountView {
    let t0 = Instant::now();
    loop {
        let v = view(conn, name).await;
        if v.state.as_str() == state {
            return v;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{name} stayed {} (wanted {state}): {v:?}", v.state.as_str());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
