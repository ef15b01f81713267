//! sd-notify: READY=1 after start-up, STATUS= when the summary changes, WATCHDOG=1 pings,
//! STOPPING=1 on the way out. Sends never block the runtime (a backed-up notify socket
//! drops a STATUS line rather than stalling the daemon); outside systemd it does nothing.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

fn send(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name.as_bytes())
        }
        None => SocketAddr::from_pathname(&path),
    };
    let result = UnixDatagram::unbound().and_then(|s| {
        s.set_nonblocking(true)?;
        s.send_to_addr(message.as_bytes(), &addr?)
    });
    if let Err(e) = result {
        tracing::debug!("sd_notify failed: {e}");
    }
}

/// One line: a STATUS= text never contains a newline.
fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

pub fn ready(status: &str) {
    send(&format!("READY=1\nSTATUS={}", one_line(status)));
}

pub fn status(status: &str) {
    send(&format!("STATUS={}", one_line(status)));
}

pub fn watchdog() {
    send("WATCHDOG=1");
}

pub fn stopping() {
    send("STOPPING=1\nSTATUS=stopping");
}

/// Half of WATCHDOG_USEC, when the unit sets WatchdogSec=.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2).filter(|d| !d.is_zero())
}

/// The watchdog's clock: a periodic timerfd the runtime's reactor watches. A tokio timer
/// of that length sits high in tokio's hierarchical timer wheel and wakes the daemon once
/// more per level on its way down (measured: 3 wake-ups per ping, docs/PERFORMANCE.md);
/// the timerfd wakes it once per ping.
pub struct PingClock(AsyncFd<OwnedFd>);

impl PingClock {
    /// Must be called inside the runtime.
    pub fn new(period: Duration) -> std::io::Result<PingClock> {
        // SAFETY: timerfd_create has no memory arguments; a valid fd is owned from here on.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is not owned elsewhere.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let every = libc::timespec {
            tv_sec: libc::time_t::try_from(period.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(period.subsec_nanos()),
        };
        let spec = libc::itimerspec { it_interval: every, it_value: every };
        // SAFETY: spec lives across the call; the old value is not asked for.
        if unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and the same
        // for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
        Ok(PingClock(fd.map_err(|e| e.into_parts().1)?))
    }

    /// The next period (periods missed meanwhile count as one).
    pub async fn tick(&self) -> std::io::Result<()> {
        loop {
            let mut ready = self.0.readable().await?;
            let mut expirations = [0u8; 8];
            let read = ready.try_io(|fd| {
                // SAFETY: reads at most 8 bytes into the 8-byte buffer.
                let n = unsafe { libc::read(fd.as_raw_fd(), expirations.as_mut_ptr().cast(), expirations.len()) };
                if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
            });
            if let Ok(result) = read {
                return result;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_is_one_line() {
        assert_eq!(super::one_line("a\nb"), "a b");
    }
}
