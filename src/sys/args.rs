//! Parsing a command line with clap, mapping its own exits to the contract's codes, and
//! writing a command's output to a stdout whose reader may be gone.

use crate::core::outcome::exit::{OK, USAGE};
use clap::Parser;

/// Parse the command line; on `--help`/`--version` or a usage error, the exit code
/// (0 or the contract's 2) after clap printed what it had to say.
pub fn parse<T: Parser>() -> Result<T, i32> {
    T::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() { USAGE } else { OK }
    })
}

/// Set once stdout's reader went away; later output is dropped.
static STDOUT_GONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Write `text` to stdout. A reader that closed the pipe (`codex-authctl status | head -1`)
/// is not an error: the rest is dropped and the command still ends with its own exit code
/// (`println!` panics there, because Rust ignores SIGPIPE).
pub fn say(text: &str) {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        STDOUT_GONE.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("cannot write to stdout: {e}");
        }
    }
}
