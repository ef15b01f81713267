//! Reading a pipe or a passed descriptor to its end on the calling thread, with a size cap
//! and a deadline: a writer that never closes must not hold a thread forever.

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

/// Why a read stopped before end of file.
#[derive(Debug)]
pub enum Stopped {
    /// `deadline` passed.
    Deadline,
    /// More than the cap arrived.
    TooLarge,
    Io(std::io::Error),
}

/// All bytes until end of file, unless more than `max` arrive or `deadline` passes first.
pub fn read_to_end_before(fd: OwnedFd, max: usize, deadline: Instant) -> Result<Vec<u8>, Stopped> {
    let mut file = std::fs::File::from(fd);
    let mut out = Vec::new();
    while read_some(&mut file, &mut out, deadline)? > 0 {
        if out.len() > max {
            return Err(Stopped::TooLarge);
        }
    }
    Ok(out)
}

/// Newline-delimited messages from a pipe, each read under a deadline and a size cap.
pub struct Lines {
    file: std::fs::File,
    buf: Vec<u8>,
}

impl Lines {
    pub fn new(fd: OwnedFd) -> Lines {
        Lines { file: std::fs::File::from(fd), buf: Vec::new() }
    }

    /// The next line without its newline; None at end of file (a last line without a
    /// newline is still returned).
    pub fn next_before(&mut self, max: usize, deadline: Instant) -> Result<Option<Vec<u8>>, Stopped> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                return Ok(Some(line));
            }
            if self.buf.len() > max {
                return Err(Stopped::TooLarge);
            }
            if read_some(&mut self.file, &mut self.buf, deadline)? == 0 {
                return Ok((!self.buf.is_empty()).then(|| std::mem::take(&mut self.buf)));
            }
        }
    }
}

/// Wait (poll, up to `deadline`) and read once into `out`; Ok(0) at end of file.
fn read_some(file: &mut std::fs::File, out: &mut Vec<u8>, deadline: Instant) -> Result<usize, Stopped> {
    let mut buf = [0u8; 16384];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Stopped::Deadline);
        }
        // Whole milliseconds, rounded up (a 0 would spin), at most 10 s per poll.
        let ms = PollTimeout::from(left.as_millis().clamp(1, 10_000) as u16);
        let ready = {
            let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, ms) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(Stopped::Io(e.into())),
            }
        };
        if ready == 0 {
            continue;
        }
        match file.read(&mut buf) {
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Stopped::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    fn pipe() -> (OwnedFd, std::fs::File) {
        let (r, w) = nix::unistd::pipe().unwrap();
        (r, std::fs::File::from(w))
    }

    #[test]
    fn reads_to_end_of_file() {
        let (r, mut w) = pipe();
        w.write_all(b"hello").unwrap();
        drop(w);
        let got = read_to_end_before(r, 16, Instant::now() + Duration::from_secs(5)).unwrap();
        assert_eq!(got, b"hello");
    }

    #[test]
    fn a_writer_that_never_closes_meets_the_deadline() {
        let (r, mut w) = pipe();
        w.write_all(b"partial").unwrap();
        let got = read_to_end_before(r, 16, Instant::now() + Duration::from_millis(50));
        assert!(matches!(got, Err(Stopped::Deadline)), "{got:?}");
    }

    #[test]
    fn more_than_the_cap_is_refused() {
        let (r, mut w) = pipe();
        w.write_all(&[b'x'; 17]).unwrap();
        drop(w);
        let got = read_to_end_before(r, 16, Instant::now() + Duration::from_secs(5));
        assert!(matches!(got, Err(Stopped::TooLarge)), "{got:?}");
    }

    #[test]
    fn lines_split_on_newlines_and_keep_a_last_partial_line() {
        let (r, mut w) = pipe();
        w.write_all(b"one\ntwo\nthree").unwrap();
        drop(w);
        let mut lines = Lines::new(r);
        let until = Instant::now() + Duration::from_secs(5);
        let got: Vec<_> = std::iter::from_fn(|| lines.next_before(64, until).unwrap()).collect();
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
    }

    #[test]
    fn a_line_over_the_cap_is_refused() {
        let (r, mut w) = pipe();
        w.write_all(&[b'x'; 100]).unwrap();
        let mut lines = Lines::new(r);
        assert!(matches!(lines.next_before(10, Instant::now() + Duration::from_secs(5)), Err(Stopped::TooLarge)));
    }
}
