//! codex-auth-agent keeps Codex CLI ChatGPT credentials (`$CODEX_HOME/auth.json`) alive
//! with exactly one writer per account. Data flows one way: command/daemon → worker
//! (as the account's user) → policy → refresher → authfile writer → status.

/// One account's run from the caller's side: inputs, job as the user, recording.
pub mod account;
/// auth.json model, JWT claims, and the safe directory I/O (locks, atomic write).
pub mod authfile;
/// The command line of `codex-auth-agent`: parses arguments, runs commands, maps exit codes.
pub mod cli;
/// The one place that reads the wall clock; everything else takes `now` as a parameter.
pub mod clock;
/// The real Codex CLI in a throwaway home: offline config, scrubbed env, cleanup.
pub mod codexrun;
/// A running Codex of the account: yield to its refresh, verify a refresh that may have raced it.
pub mod codexwatch;
/// Config files: fragments → merged with defaults → validated settings.
pub mod config;
/// `codex-authctl`: the D-Bus client of the daemon.
pub mod ctl;
/// The daemon: D-Bus service, scheduler, sd-notify.
pub mod daemon;
/// Test hook: `CODEX_AUTH_AGENT_FAULT=<step>` aborts a cycle at a named step.
pub mod fault;
/// Reading a pipe or descriptor to its end with a cap and a deadline.
pub mod fdread;
/// Fleet mode: one refresher per account across hosts through Vault/OpenBao KV v2.
pub mod fleet;
/// Operator hooks: on_success/on_failure commands run as the account's user after an outcome.
pub mod hooks;
/// The journald sink: native protocol, every field through the redaction guard.
pub mod journal;
/// Journald/stderr logging, the contract's field names, and the redaction guard.
pub mod logging;
/// `codex-authctl login`: Codex's device-code login as the account's user, then a Store.
pub mod login;
/// The Prometheus textfile (metrics_textfile), rewritten atomically after every outcome.
pub mod metrics;
/// D-Bus names and paths shared by the daemon and codex-authctl.
pub mod names;
/// Outcomes, failure classes, reports and exit codes shared by every command.
pub mod outcome;
/// A new credential received but not yet written to auth.json, kept durably by the caller.
pub mod pending;
/// Pure refresh decision from (auth facts, settings, now).
pub mod policy;
/// `codex exec` on a throwaway copy proves a login works; adopts what Codex refreshed.
pub mod preflight;
/// Running one account's job as its Unix user: privilege drop and the worker child.
pub mod privsep;
/// Token refresh over OAuth and Codex's error classification.
pub mod refresh;
/// Local seeds: which seed to install and when.
pub mod seed;
/// status.json in state_dir and the seed-compatible sidecar in CODEX_HOME.
pub mod status;
/// One account's cycle as its own user: lock → read → decide → refresh → commit → report.
pub mod worker;
