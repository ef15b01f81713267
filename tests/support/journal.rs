//! A fake journald for processes under test: a datagram socket in the scratch area,
//! bind-mounted over /run/systemd (or /run) in a private mount namespace of the process (root only),
//! so the agent and every worker it starts log to it through the real code path
//! (journal::JOURNAL_SOCKET), and the test reads every record they sent.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

pub struct FakeJournal {
    /// Holds systemd/journal/socket; shown as /run (or its systemd/ as /run/systemd).
    run: PathBuf,
    records: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl FakeJournal {
    pub fn start(scratch: &Path) -> FakeJournal {
        let run = scratch.join("run");
        let dir = run.join("systemd/journal");
        std::fs::create_dir_all(&dir).unwrap();
        for d in [run.clone(), run.join("systemd"), dir.clone()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let sock_path = dir.join("socket");
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        // Workers running as the account users log here too.
        std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink = records.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = sock.recv(&mut buf) {
                sink.lock().unwrap().push(buf[..n].to_vec());
            }
        });
        FakeJournal { run, records }
    }

    pub fn records(&self) -> Vec<Vec<u8>> {
        self.records.lock().unwrap().clone()
    }

    /// Run `cmd` in its own mount namespace where the journal socket is ours, logging to the
    /// journal and to stderr.
    pub fn attach(&self, cmd: &mut Command) {
        // Cover only /run/systemd where it exists; else (a container without systemd) /run.
        let (src, dst) = if Path::new("/run/systemd").is_dir() {
            (self.run.join("systemd"), c"/run/systemd")
        } else {
            (self.run.clone(), c"/run")
        };
        let src = std::ffi::CString::new(src.as_os_str().as_encoded_bytes()).unwrap();
        cmd.env("CODEX_AUTH_AGENT_LOG", "both");
        // SAFETY: only async-signal-safe syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fail = |r: i32| if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
                fail(libc::unshare(libc::CLONE_NEWNS))?;
                // Nothing mounted here may propagate back to the host.
                fail(libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                fail(libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()))
            });
        }
    }
}
