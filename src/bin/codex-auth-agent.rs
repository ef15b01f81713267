//! `codex-auth-agent`: one-shot commands (refresh, check-config) and, later, the daemon.

fn main() {
    std::process::exit(codex_auth_agent::cli::main());
}
