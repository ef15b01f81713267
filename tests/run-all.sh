#!/usr/bin/env bash
# The whole test suite: installs what the tests need (Debian 12, as root), then runs every
# test in the workspace. Tests that need root print SKIPPED when run as another user.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" = 0 ]; then
  need=()
  command -v useradd >/dev/null || need+=(passwd)
  command -v gcc >/dev/null || need+=(build-essential)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi
# Every config file we ship must pass check-config.
cargo build --locked --bins
CODEX_AUTH_AGENT_LOG=stderr target/debug/codex-auth-agent --config packaging/config.toml check-config >/dev/null
cargo test --locked --workspace --no-fail-fast
