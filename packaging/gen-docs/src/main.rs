//! Build-time generator for the .deb: writes the man pages codex-auth-agent(8) and
//! codex-authctl(1) and the bash completions of both binaries from their clap definitions
//! (`codex_auth_agent::cli::Cli`, `codex_auth_agent::ctl::Cli`), so the documentation
//! cannot drift from the real arguments. codex-auth-agent.toml(5) is hand-written
//! (packaging/man/). Usage: `codex-auth-agent-gen-docs OUTDIR` → OUTDIR/man/*,
//! OUTDIR/completions/*.

use clap::{Arg, ArgAction, Command, CommandFactory};
use clap_complete::{Shell, generate};
use roff::{Roff, bold, italic, roman};
use std::path::Path;
use std::{fs, io};

/// Contract text shared by both pages: the exit codes (`--all`: the worst one).
const EXIT_CODES: &[(&str, &str)] = &[
    ("0", "ok: refreshed, fresh (nothing due) or inert (nothing to do for this login)"),
    ("2", "usage error"),
    ("3", "permanent credential failure: a human must log in again"),
    ("4", "transient failure: retried later"),
    ("5", "refused an unsafe file (symlink, hard link, wrong owner, writable by others)"),
    ("78", "configuration error"),
];

fn main() -> io::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "usage: codex-auth-agent-gen-docs OUTDIR"))?;
    let out = Path::new(&out);
    fs::create_dir_all(out.join("man"))?;
    fs::create_dir_all(out.join("completions"))?;

    let agent = codex_auth_agent::cli::Cli::command();
    let ctl = codex_auth_agent::ctl::Cli::command();
    write_page(&out.join("man/codex-auth-agent.8"), agent.clone(), "8", "System Administration", &agent_extra())?;
    write_page(&out.join("man/codex-authctl.1"), ctl.clone(), "1", "User Commands", &ctl_extra())?;
    write_completion(&out.join("completions/codex-auth-agent"), agent)?;
    write_completion(&out.join("completions/codex-authctl"), ctl)?;
    Ok(())
}

fn write_completion(path: &Path, mut cmd: Command) -> io::Result<()> {
    let name = cmd.get_name().to_string();
    let mut buf = Vec::new();
    generate(Shell::Bash, &mut cmd, name, &mut buf);
    fs::write(path, buf)
}

/// One page: clap_mangen's standard sections, then one subsection per visible subcommand
/// with its own arguments (clap_mangen only lists subcommand names), then `extra`.
fn write_page(path: &Path, cmd: Command, section: &str, manual: &str, extra: &Roff) -> io::Result<()> {
    let mut cmd = cmd;
    cmd.build();
    let version = cmd.get_version().unwrap_or_default().to_string();
    let name = cmd.get_name().to_string();
    let man = clap_mangen::Man::new(cmd.clone()).section(section).manual(manual).source(format!("{name} {version}"));
    let mut buf = Vec::new();
    man.render_title(&mut buf)?;
    man.render_name_section(&mut buf)?;
    man.render_synopsis_section(&mut buf)?;
    man.render_description_section(&mut buf)?;
    man.render_options_section(&mut buf)?;
    buf.extend_from_slice(commands_section(&cmd).render().as_bytes());
    buf.extend_from_slice(extra.render().as_bytes());
    man.render_version_section(&mut buf)?;
    fs::write(path, buf)
}

fn commands_section(cmd: &Command) -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["COMMANDS"]);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        r.control("TP", []).text(synopsis_of(cmd.get_name(), sub));
        let about = sub.get_long_about().or(sub.get_about()).map(|s| s.to_string()).unwrap_or_default();
        r.text([roman(about)]);
        let opts: Vec<&Arg> = args_of(sub).collect();
        if !opts.is_empty() {
            r.control("RS", []);
            for a in opts {
                r.control("TP", []).text(usage_of(a));
                let help = a.get_long_help().or(a.get_help()).map(|s| s.to_string()).unwrap_or_default();
                r.text([roman(help)]);
            }
            r.control("RE", []);
        }
    }
    r
}

/// `name sub (--a X | --b) [--c] [ARG]`: a required group in parentheses, optional
/// arguments in brackets.
fn synopsis_of(name: &str, sub: &Command) -> Vec<roff::Inline> {
    let mut out = vec![bold(format!("{name} {}", sub.get_name()))];
    let mut grouped = Vec::new();
    for g in sub.get_groups().filter(|g| g.is_required_set()) {
        let members: Vec<&Arg> = g.get_args().filter_map(|id| sub.get_arguments().find(|a| a.get_id() == id)).collect();
        out.push(roman(" ("));
        for (i, a) in members.iter().enumerate() {
            if i > 0 {
                out.push(roman(" | "));
            }
            out.extend(usage_of(a));
            grouped.push(a.get_id().clone());
        }
        out.push(roman(")"));
    }
    for a in args_of(sub).filter(|a| !grouped.contains(a.get_id())) {
        out.push(roman(" "));
        let required = a.is_required_set() || a.is_positional() && a.get_num_args().is_some_and(|n| n.min_values() > 0);
        if required || a.is_positional() {
            out.extend(usage_of(a));
        } else {
            out.push(roman("["));
            out.extend(usage_of(a));
            out.push(roman("]"));
        }
    }
    out
}

/// A subcommand's own arguments (global ones are documented once, under OPTIONS; --help is
/// everywhere).
fn args_of(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments().filter(|a| {
        !a.is_hide_set() && !a.is_global_set() && !matches!(a.get_action(), ArgAction::Help | ArgAction::Version)
    })
}

fn usage_of(a: &Arg) -> Vec<roff::Inline> {
    let value = || {
        a.get_value_names()
            .and_then(|v| v.first())
            .map(|v| v.to_string())
            .unwrap_or_else(|| a.get_id().as_str().to_uppercase())
    };
    let takes_value = !matches!(
        a.get_action(),
        ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count | ArgAction::Help | ArgAction::Version
    );
    let mut v = Vec::new();
    match (a.get_short(), a.get_long()) {
        (Some(s), Some(l)) => v.push(bold(format!("-{s}, --{l}"))),
        (None, Some(l)) => v.push(bold(format!("--{l}"))),
        (Some(s), None) => v.push(bold(format!("-{s}"))),
        (None, None) => {
            let n = value();
            v.push(if a.is_required_set() { italic(n) } else { italic(format!("[{n}]")) });
            return v;
        }
    }
    if takes_value {
        v.push(roman(" "));
        v.push(italic(value()));
    }
    v
}

fn exit_status(r: &mut Roff, more: &[(&str, &str)]) {
    r.control("SH", ["EXIT STATUS"]);
    r.text([roman("With several accounts, the worst outcome decides (78 > 3 > 5 > 4 > 0).")]);
    for (code, what) in EXIT_CODES.iter().chain(more) {
        r.control("TP", []).text([bold(*code)]).text([roman(*what)]);
    }
}

fn para(r: &mut Roff, items: &[(&str, &str)]) {
    for (term, text) in items {
        r.control("TP", []).text([bold(*term)]).text([roman(*text)]);
    }
}

fn agent_extra() -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["SERVICE"]);
    r.text([roman(
        "Installed by the Debian package as codex-auth-agent.service (Type=notify, D-Bus name \
         org.codexauth.Agent1). SIGHUP, or systemctl reload codex-auth-agent, re-reads the \
         configuration. systemctl status codex-auth-agent shows the STATUS= summary; \
         codex-auth-refresh.timer (every 6 hours) and codex-auth-preflight.timer (daily) ask the \
         daemon to work through codex-authctl(1). Logs go to the journal with the fields ACCOUNT, \
         OUTCOME, FAILURE_CLASS, REASON, HTTP_STATUS, TOKEN_FP and EXPIRES_AT, e.g. \
         journalctl -u codex-auth-agent ACCOUNT=alice OUTCOME=failed.",
    )]);
    exit_status(&mut r, &[]);
    r.control("SH", ["ENVIRONMENT"]);
    para(
        &mut r,
        &[
            ("CODEX_AUTH_AGENT_CONFIG", "Main configuration file, like --config."),
            ("CODEX_AUTH_AGENT_LOG", "journal, stderr or both: where logs go (default: the journal under systemd)."),
            ("CODEX_REFRESH_TOKEN_URL_OVERRIDE", "Replaces every account's token_url, as it does for the Codex CLI."),
        ],
    );
    r.control("SH", ["FILES"]);
    para(
        &mut r,
        &[
            ("/etc/codex-auth-agent/config.toml", "Main configuration; see codex-auth-agent.toml(5)."),
            ("/etc/codex-auth-agent/config.d/*.toml", "Drop-ins, read in lexical order; a later file wins per key."),
            (
                "/etc/codex-auth-agent/seeds/ACCOUNT.json",
                "Seeds: an auth.json from a fresh login, installed once (root, 0600).",
            ),
            ("/var/lib/codex-auth-agent/accounts/ACCOUNT/status.json", "Per-account state (root, 0600)."),
            ("$CODEX_HOME/auth.json", "The credential, written as the account's user (0600)."),
        ],
    );
    r.control("SH", ["SEE ALSO"]);
    r.text([roman("codex-authctl(1), codex-auth-agent.toml(5), systemctl(1), journalctl(1)")]);
    r
}

fn ctl_extra() -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["ACCESS"]);
    r.text([roman(
        "Anyone may read the status. refresh, preflight and reload need root or membership of \
         the group codex-auth; store, seed and login (with --publish) need root. The daemon checks the caller's \
         credentials and answers AccessDenied (exit 77) otherwise. Credentials for store and seed \
         are read from standard input and passed to the daemon as a file descriptor.",
    )]);
    exit_status(
        &mut r,
        &[
            ("69", "the daemon is unreachable (not running and not activatable, or no bus)"),
            ("77", "permission denied"),
            ("130", "login: cancelled (Ctrl-C); nothing was installed"),
        ],
    );
    r.control("SH", ["SEE ALSO"]);
    r.text([roman("codex-auth-agent(8), codex-auth-agent.toml(5), busctl(1)")]);
    r
}
