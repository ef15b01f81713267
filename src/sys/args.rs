//! Parsing a command line with clap, mapping its own exits to the contract's codes.

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
