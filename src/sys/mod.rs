//! Operating-system primitives with no domain words: a directory opened safely, processes,
//! users, descriptors, the journal and the log sinks.

pub mod args;
pub mod fault;
pub mod fdread;
pub mod journal;
pub mod logging;
pub mod process;
pub mod safedir;
pub mod tls;
pub mod user;
