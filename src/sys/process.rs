//! Process primitives: hardening this process, and waiting for a child with a limit.

use std::process::{Child, ExitStatus};
use std::time::Duration;

/// Make this process undumpable and core-less: it may hold tokens in memory.
pub fn harden_process() {
    // SAFETY: plain syscalls with constant arguments; failure only loses hardening.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &zero);
    }
}

/// Set this process's name (/proc/self/comm; the kernel keeps its first 15 bytes).
pub fn set_process_name(name: &str) {
    let Ok(name) = std::ffi::CString::new(name) else { return };
    // SAFETY: PR_SET_NAME reads a NUL-terminated string that outlives the call.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0);
    }
}

/// Wait for `child` at most `limit`; past it, SIGKILL its whole process group (it was
/// started with `process_group(0)`). The group is killed once the leader has exited too,
/// so nothing it started outlives it. None when the limit was hit.
pub fn wait_or_kill_group(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        // A blocking wait on a helper thread sees the exit at once (polling cost ~2.5 ms a
        // run on average, which is most of the preflight's overhead budget).
        s.spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = match rx.recv_timeout(limit) {
            Ok(Ok(status)) => Some(status),
            // Past the limit (or wait failed): the kill below lets the helper reap it.
            _ => None,
        };
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        status
    })
}

/// Give freed heap back to the kernel once nothing runs: a start-up pass or a RefreshAll
/// over many accounts leaves free memory behind that glibc would otherwise keep (idle RSS).
pub fn release_free_memory() {
    // SAFETY: malloc_trim only returns free heap pages to the OS.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}
