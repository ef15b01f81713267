//! codex-auth-agent keeps Codex CLI ChatGPT credentials (`$CODEX_HOME/auth.json`) alive
//! with exactly one writer per account. Layers, each importing only those before it
//! (docs/ARCHITECTURE.md; tests/layering.rs enforces it):
//! core ← sys ← config ← store ← {worker, runner, api} ← {daemon, cli, ctl}.

/// The D-Bus contract shared by the daemon and codex-authctl.
pub mod api;
/// The command line of `codex-auth-agent`.
pub mod cli;
/// Config files: fragments → merged with defaults → validated settings.
pub mod config;
/// Pure domain types and decisions: no I/O.
pub mod core;
/// `codex-authctl`: the D-Bus client of the daemon.
pub mod ctl;
/// The daemon: D-Bus service, scheduler, sd-notify.
pub mod daemon;
/// The root caller: jobs, executors, recording, hooks, fleet.
pub mod runner;
/// The agent's state directory.
pub mod store;
/// Operating-system primitives.
pub mod sys;
/// What runs as the account's user.
pub mod worker;
