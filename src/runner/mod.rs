//! The caller of a run (root under the service, or the user in single-user mode): build the
//! job from the account's settings and root-only inputs, have an Executor run it as the
//! account's user, answer its questions, and record the outcome (status, journal, metrics,
//! hook). Fleet mode brings Vault in. Never imports the worker: the front ends inject it.

pub mod account;
pub mod fleet;
pub mod hooks;
pub mod privsep;
pub mod publish;
pub mod record;
pub mod run;
pub mod seed;
pub mod vault;
