//! `codex-authctl`: the D-Bus client. It needs the daemon (a later issue); until then it
//! says so and exits 69 ("daemon unreachable").

fn main() {
    eprintln!(
        "codex-authctl: not yet — the daemon it talks to is not built yet; use `codex-auth-agent refresh` meanwhile"
    );
    std::process::exit(69);
}
