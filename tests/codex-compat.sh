#!/usr/bin/env bash
# The Codex compatibility matrix (docs/CODEX-COMPAT.md).
#
#   tests/codex-compat.sh [VERSION|latest ...]   install each Codex CLI release (npm, cached)
#                                                and run the Codex-facing tests against it
#   tests/codex-compat.sh install VERSION        install one; print its native binary's path
#
# Without a version: the releases tests/run-all.sh runs besides the default one
# ($CODEX_COMPAT_VERSIONS, default "0.130.0 0.171.0"). `latest` is whatever npm calls the
# newest release today: the command to run the day a release appears.
# Cache: /var/cache/codex-auth-agent-test/codex-VERSION as root (the throwaway test users
# must reach it), else target/codex-VERSION. Each version prints how long its tests took.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Codex-facing test binaries: the preflight (incl. updated_auth adoption), the
# app-server refresh, codexcompat (Codex accepts our auth.json, Codex refreshing our file
# and us adopting it, its refresh request, the lock protocol, account/read), codexrace.
CODEX_TESTS=(preflight appserver codexcompat codexrace)

cache_dir() {
  if [ "$(id -u)" = 0 ]; then echo "/var/cache/codex-auth-agent-test/codex-$1"; else echo "$PWD/target/codex-$1"; fi
}

# The native binary of an npm install: …/bin/codex since 0.169-ish, …/codex/codex in 0.130.
native_bin() {
  local vendor="$1/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl" p
  for p in "$vendor/bin/codex" "$vendor/codex/codex"; do
    if [ -x "$p" ]; then echo "$p"; return 0; fi
  done
  return 1
}

install_codex() {
  local version=$1 dir bin
  if [ "$version" = latest ]; then
    version=$(npm view @openai/codex version)
  fi
  dir=$(cache_dir "$version")
  if ! bin=$(native_bin "$dir"); then
    install -d -m 0755 "$(dirname "$dir")" "$dir"
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error "@openai/codex@$version" >&2)
    bin=$(native_bin "$dir") || { echo "npm installed @openai/codex@$version but no native codex in $dir" >&2; exit 1; }
  fi
  # The binary's own word, so a mislabelled cache cannot pass as another version.
  "$bin" --version | grep -qx "codex-cli $version" || { echo "$bin is not Codex $version" >&2; exit 1; }
  echo "$bin"
}

if [ "${1:-}" = install ]; then
  [ $# = 2 ] || { echo "usage: $0 install VERSION" >&2; exit 2; }
  install_codex "$2"
  exit 0
fi

versions=("$@")
if [ ${#versions[@]} = 0 ]; then
  read -r -a versions <<< "${CODEX_COMPAT_VERSIONS:-0.130.0 0.171.0}"
fi
# CODEX_COMPAT_CARGO_FLAGS: more cargo flags (tests/run-all.sh passes its features so the
# test binaries it built are reused).
read -r -a args <<< "${CODEX_COMPAT_CARGO_FLAGS:-}"
for t in "${CODEX_TESTS[@]}"; do args+=(--test "$t"); done
cargo test --locked --no-run "${args[@]}" 2>/dev/null || cargo test --locked --no-run "${args[@]}"
failed=()
for v in "${versions[@]}"; do
  bin=$(install_codex "$v")
  echo "== Codex $("$bin" --version) ($bin): ${CODEX_TESTS[*]}"
  start=$(date +%s)
  if CODEX_AUTH_AGENT_TEST_CODEX="$bin" cargo test --locked --no-fail-fast "${args[@]}"; then
    echo "== Codex $v: passed in $(($(date +%s) - start)) s"
  else
    echo "== Codex $v: FAILED after $(($(date +%s) - start)) s"
    failed+=("$v")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "== the Codex-facing tests failed with: ${failed[*]} (see docs/CODEX-COMPAT.md for what each row means)" >&2
  exit 1
fi
