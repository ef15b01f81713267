//! `mock-openai` binary: runs the mock with the admin API enabled until killed, for
//! benchmarks and container tests that cannot link the library.
//!
//! No signal handling on purpose: SIGTERM and Ctrl-C's default action (terminate) is
//! exactly what we want, and there is no state worth flushing.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use mock_openai::{MockConfig, MockServer};

const USAGE: &str = "usage: mock-openai [--listen ADDR:PORT] [--port-file PATH] \
[--access-lifetime SECS] [--refresh-token-lifetime SECS] [--canary-prefix PREFIX]";

struct Args {
    config: MockConfig,
    port_file: Option<PathBuf>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut config = MockConfig::default().with_admin();
    let mut port_file = None;
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let secs = |v: String| {
            v.parse::<u64>().map(Duration::from_secs).map_err(|_| format!("{flag}: not a number of seconds: {v}"))
        };
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                config.listen = v.parse::<SocketAddr>().map_err(|_| format!("--listen: bad address {v}"))?;
            }
            "--port-file" => port_file = Some(PathBuf::from(value()?)),
            "--access-lifetime" => config.access_lifetime = secs(value()?)?,
            "--refresh-token-lifetime" => config.refresh_token_lifetime = Some(secs(value()?)?),
            "--canary-prefix" => config.canary_prefix = value()?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Some(Args { config, port_file }))
}

/// Write-then-rename so a poller never reads a half-written port.
fn write_port_file(path: &Path, port: u16) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{port}\n"))?;
    std::fs::rename(&tmp, path)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("mock-openai: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let server = match MockServer::try_start(args.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mock-openai: cannot listen: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(path) = &args.port_file
        && let Err(e) = write_port_file(path, server.port())
    {
        eprintln!("mock-openai: cannot write {}: {e}", path.display());
        return ExitCode::from(1);
    }
    println!("listening on {}", server.url());
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<Option<Args>, String> {
        parse_args(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_all_flags() {
        let a = parse(&[
            "--listen",
            "127.0.0.1:4567",
            "--port-file",
            "/tmp/p",
            "--access-lifetime",
            "60",
            "--refresh-token-lifetime",
            "120",
            "--canary-prefix",
            "LEAK-",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(a.config.listen.port(), 4567);
        assert_eq!(a.port_file.as_deref(), Some(Path::new("/tmp/p")));
        assert_eq!(a.config.access_lifetime, Duration::from_secs(60));
        assert_eq!(a.config.refresh_token_lifetime, Some(Duration::from_secs(120)));
        assert_eq!(a.config.canary_prefix, "LEAK-");
        assert!(a.config.admin);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--listen"]).is_err());
        assert!(parse(&["--access-lifetime", "soon"]).is_err());
        assert!(parse(&["--help"]).unwrap().is_none());
    }

    #[test]
    fn port_file_is_written() {
        let path = std::env::temp_dir().join(format!("mock-openai-port-{}", std::process::id()));
        write_port_file(&path, 4242).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "4242\n");
        std::fs::remove_file(&path).unwrap();
    }
}
