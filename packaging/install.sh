#!/usr/bin/env bash
# Build codex-auth-agent from this checkout and install it on this machine (Debian 12, root).
# Installs the build dependencies it needs, then the binaries, the example config and the
# seeds directory; finally validates the config. Safe to run again (keeps an existing config).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (it installs to /usr/bin and /etc)" >&2; exit 2; }
export DEBIAN_FRONTEND=noninteractive
need=()
for p in gcc pkg-config; do command -v "$p" >/dev/null || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq build-essential pkg-config >/dev/null
fi
if ! command -v cargo >/dev/null; then
  # Debian 12's rustc is too old for edition 2024: use rustup's stable toolchain.
  apt-get install -y -qq curl ca-certificates >/dev/null
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  . "$HOME/.cargo/env"
fi
cargo build --release --locked --bins
install -m 0755 target/release/codex-auth-agent target/release/codex-authctl /usr/bin/
install -d -m 0755 /etc/codex-auth-agent /etc/codex-auth-agent/config.d
install -d -m 0700 /etc/codex-auth-agent/seeds
[ -e /etc/codex-auth-agent/config.toml ] || install -m 0644 packaging/config.toml /etc/codex-auth-agent/config.toml
install -d -m 0700 /var/lib/codex-auth-agent
codex-auth-agent --version
codex-auth-agent check-config >/dev/null && echo "installed; config OK: /etc/codex-auth-agent/config.toml"
