//! The agent's own state directory: status.json, the kept (pending) credential, and the
//! metrics textfile. Written by the caller (root under the service), never by a worker.

pub mod metrics;
pub mod pending;
pub mod status;

/// What a caller process remembers of its state dir while it lives (the one-shot CLI for
/// one command, the daemon for its whole life): each status.json is read once per run, a
/// received credential survives a failed pending.json write, textfile writes take turns.
#[derive(Default)]
pub struct Memory {
    pub statuses: status::Cache,
    pub held: pending::Held,
    pub metrics: metrics::Writer,
}
