//! The pure core: the domain's types and decisions. Nothing here touches a file, a
//! process, the network or a bus (tests/layering.rs checks it); time comes in as `now`.

pub mod authfile;
pub mod classify;
pub mod clock;
pub mod contract;
pub mod lease;
pub mod outcome;
pub mod pending;
pub mod policy;
pub mod redact;
pub mod sandbox;
pub mod schedule;
pub mod seed;
pub mod task;
