//! sd-notify: READY=1 after start-up, STATUS= when the summary changes, WATCHDOG=1 pings,
//! STOPPING=1 on the way out. Sends never block the runtime (a backed-up notify socket
//! drops a STATUS line rather than stalling the daemon); outside systemd it does nothing.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

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

#[cfg(test)]
mod tests {
    #[test]
    fn status_is_one_line() {
        assert_eq!(super::one_line("a\nb"), "a b");
    }
}
