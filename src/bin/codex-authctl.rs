//! `codex-authctl`: the daemon's D-Bus client.

fn main() {
    std::process::exit(codex_auth_agent::ctl::main());
}
