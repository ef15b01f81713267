#!/usr/bin/env bash
# Benchmarks for the preflight and the app-server refresh (docs/PERFORMANCE.md):
#   1. preflight overhead: `codex-auth-agent preflight` minus a bare `codex exec` with the
#      same auth.json and config against the same mock (median wall time of RUNS runs,
#      interleaved so drift in the machine's load hits every variant alike); as root also
#      for an account of another user (worker + privilege drop, as the daemon runs it);
#      and the same with a stand-in Codex (`sh -c 'echo Banana'`), whose time is the
#      agent's own cost without Codex's run-to-run spread;
#   2. refresh_method = "app-server" vs "oauth": `refresh --force`, median wall and peak
#      RSS (/usr/bin/time -v: the largest of the agent and its children, i.e. Codex).
# Usage: bash packaging/bench/preflight.sh [RUNS]   (default 15; Debian 12; release build)
# Codex: $CODEX_AUTH_AGENT_TEST_CODEX, else the test cache tests/run-all.sh installs.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-15}
root=$([ "$(id -u)" = 0 ] && echo 1 || echo 0)
if [ "$root" = 1 ]; then
  need=()
  for t in time:time jq:jq curl:curl; do
    [ -x "/usr/bin/${t%%:*}" ] || need+=("${t#*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi
native=node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex
if [ "$root" = 1 ]; then cache=/var/cache/codex-auth-agent-test/codex-0.169.0; else cache=$PWD/target/codex-0.169.0; fi
codex=${CODEX_AUTH_AGENT_TEST_CODEX:-$cache/$native}
[ -x "$codex" ] || { echo "no Codex at $codex: run tests/run-all.sh first (it installs it)" >&2; exit 1; }

cargo build --release --locked -q --bin codex-auth-agent -p codex-auth-agent
cargo build --release --locked -q --bin mock-openai -p mock-openai
target=${CARGO_TARGET_DIR:-target}
agent=$target/release/codex-auth-agent

work=$(mktemp -d /tmp/caa-bench.XXXXXX)
chmod 755 "$work"
mkdir -m 1777 "$work/tmp"
mock_pid=
cleanup() {
  [ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
"$target/release/mock-openai" --port-file "$work/port" >/dev/null &
mock_pid=$!
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.05; done
url=http://127.0.0.1:$(cat "$work/port")
printf '#!/bin/sh\necho Banana\n' >"$work/stand-in" && chmod 755 "$work/stand-in"

# A fresh login in CODEX_HOME $1 (0700, auth.json 0600), as Codex writes it.
login() {
  mkdir -p "$1" && chmod 700 "$1"
  curl -sf -X POST "$url/__admin/families" -d "{\"account_id\":\"bench-$RANDOM\"}" |
    jq '{auth_mode:"chatgpt",OPENAI_API_KEY:null,tokens:{id_token,access_token,refresh_token,account_id},last_refresh:"2020-01-01T00:00:00Z"}' \
      >"$1/auth.json"
  chmod 600 "$1/auth.json"
}
now_ms() { echo $(( ${EPOCHREALTIME/./} / 1000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
# config NAME METHOD USER CODEX_HOME CODEX_BIN: one account `bench`, written to $work/NAME.toml.
config() {
  cat >"$work/$1.toml" <<EOF
[agent]
state_dir = "$work/state"
codex_bin = "$5"
[defaults]
codex_base_url = "$url"
token_url = "$url/oauth/token"
refresh_method = "$2"
[accounts.bench]
user = "$3"
codex_home = "$4"
EOF
}
# agent NAME ARGS…: the agent with config NAME, its JSON line in $work/out; prints wall ms.
agent() {
  local name=$1 t0
  shift
  t0=$(now_ms)
  env -i PATH="$PATH" TMPDIR="$work/tmp" CODEX_AUTH_AGENT_LOG=stderr "$agent" --config "$work/$name.toml" "$@" \
    >"$work/out" 2>/dev/null
  echo $(( $(now_ms) - t0 ))
}

me=$(id -un)
login "$work/codex"
config self oauth "$me" "$work/codex" "$codex"
config self-stand-in oauth "$me" "$work/codex" "$work/stand-in"
variants=(self self-stand-in)
if [ "$root" = 1 ]; then
  id caa-bench >/dev/null 2>&1 ||
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin caa-bench
  login "$work/user-codex" && chown -R caa-bench: "$work/user-codex"
  config drop oauth caa-bench "$work/user-codex" "$codex"
  config drop-stand-in oauth caa-bench "$work/user-codex" "$work/stand-in"
  variants+=(drop drop-stand-in)
fi
# The offline config the agent writes into its throwaway homes, for the bare runs.
offline_config=$(cat <<EOF
check_for_update_on_startup = false
model_provider = "codex-auth-agent"
chatgpt_base_url = "$url/backend-api/"

[analytics]
enabled = false

[otel]
metrics_exporter = "none"

[features]
plugins = false
apps = false
remote_plugin = false

[model_providers.codex-auth-agent]
name = "codex-auth-agent"
base_url = "$url/backend-api/codex"
requires_openai_auth = true
supports_websockets = false
EOF
)

echo "== preflight vs a bare codex exec ($runs interleaved runs each, wall ms)"
declare -A times=()
for i in $(seq "$runs"); do
  h=$work/bare-$i
  mkdir -p "$h/.codex" && chmod 700 "$h" "$h/.codex"
  cp "$work/codex/auth.json" "$h/.codex/auth.json" && echo "$offline_config" >"$h/.codex/config.toml"
  t0=$(now_ms)
  (cd "$h" && env -i HOME="$h" CODEX_HOME="$h/.codex" CODEX_SYNC_OPTIONAL=1 CODEX_SYNC_BAKED=0 \
    PATH=/usr/local/bin:/usr/bin:/bin CODEX_REFRESH_TOKEN_URL_OVERRIDE="$url/oauth/token" \
    "$codex" exec "Reply Banana if this works." --dangerously-bypass-approvals-and-sandbox \
    -s danger-full-access --skip-git-repo-check </dev/null >"$work/out" 2>/dev/null)
  times[bare]+="$(( $(now_ms) - t0 )) "
  grep -qi banana "$work/out"
  rm -rf "$h"
  for v in "${variants[@]}"; do
    times[$v]+="$(agent "$v" preflight --account bench --json) "
    jq -e '.outcome == "preflight_ok"' "$work/out" >/dev/null
  done
done
med() { tr ' ' '\n' <<<"${times[$1]}" | grep . | median; }
mb=$(med bare)
printf '%-34s median %4s ms  (runs: %s)\n' "bare codex exec" "$mb" "${times[bare]}"
for v in "${variants[@]}"; do
  m=$(med "$v")
  case $v in
    self) what="preflight (same user)"; extra=", overhead $(awk "BEGIN {print $m - $mb}") ms" ;;
    drop) what="preflight (root -> caa-bench)"; extra=", overhead $(awk "BEGIN {print $m - $mb}") ms" ;;
    self-stand-in) what="  with a stand-in Codex"; extra="" ;;
    drop-stand-in) what="  with a stand-in Codex"; extra="" ;;
  esac
  printf '%-34s median %4s ms%s  (runs: %s)\n' "$what" "$m" "$extra" "${times[$v]}"
done

echo "== refresh --force ($runs interleaved runs each)"
config oauth oauth "$me" "$work/codex" "$codex"
config app-server app-server "$me" "$work/codex" "$codex"
declare -A rss=([oauth]=0 [app-server]=0)
times=()
for _ in $(seq "$runs"); do
  for m in oauth app-server; do
    t0=$(now_ms)
    /usr/bin/time -v -o "$work/time" env -i PATH="$PATH" TMPDIR="$work/tmp" CODEX_AUTH_AGENT_LOG=stderr \
      "$agent" --config "$work/$m.toml" refresh --account bench --force --json >"$work/out" 2>/dev/null
    times[$m]+="$(( $(now_ms) - t0 )) "
    jq -e '.outcome == "refreshed"' "$work/out" >/dev/null
    r=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time")
    [ "$r" -gt "${rss[$m]}" ] && rss[$m]=$r
  done
done
for m in oauth app-server; do
  printf '%-11s median %4s ms wall, peak RSS %3s MiB  (runs: %s)\n' "$m" "$(med "$m")" "$((rss[$m] / 1024))" "${times[$m]}"
done
