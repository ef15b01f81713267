#!/usr/bin/env bash
# Build codex-auth-agent from this checkout as a Debian package and install it on this
# machine (Debian 12, root). Installs the build dependencies it needs (and Rust through
# rustup when there is no cargo), builds the .deb (packaging/build-deb.sh), installs it with
# apt (which pulls its dependencies, enables and starts the service and both timers when
# systemd runs), and finally validates the config. Safe to run again: an upgrade keeps
# /etc/codex-auth-agent (an existing config.toml is kept) and /var/lib/codex-auth-agent.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (it installs a package)" >&2; exit 2; }
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
# lintian is the packaging QA of the test suite (tests/e2e/run.sh), not needed to install.
LINTIAN=0 bash packaging/build-deb.sh
# confold: a config.toml already in /etc (yours) is kept, never replaced or asked about.
apt-get install -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
  ./target/debian/codex-auth-agent_*.deb
codex-auth-agent --version
codex-auth-agent check-config >/dev/null && echo "installed; config OK: /etc/codex-auth-agent/config.toml"
if [ -d /run/systemd/system ]; then
  systemctl --no-pager --lines=0 status codex-auth-agent.service || true
else
  echo "note: systemd is not running here, so the service and timers are enabled but not started"
fi
