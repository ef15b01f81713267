//! The agent's own state directory: status.json, the kept (pending) credential, and the
//! metrics textfile. Written by the caller (root under the service), never by a worker.

pub mod metrics;
pub mod pending;
pub mod status;
