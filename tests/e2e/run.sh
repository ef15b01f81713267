#!/usr/bin/env bash
# End-to-end test of the Debian package in a real booted Debian 12 systemd (issue 5), as
# root: builds the .deb (and a version-bumped twin for the upgrade), boots a throwaway
# systemd-nspawn container over a cached debootstrap rootfs, starts tests/mock-openai on
# the host's 127.0.0.1 (the container shares the host's network), and checks inside:
#   1 install with apt → service active with STATUS=, both timers listed
#   2 two users with due auth.json files (canary refresh tokens), a config.d drop-in, reload
#   3 the refresh service refreshes both (0600, owned by the user, new tokens), journal
#     entries per ACCOUNT, no token anywhere in the journal
#   4 busctl introspect / get-property State = ok; codex-authctl status --json agrees; a
#     ctl call starts the stopped daemon (bus activation)
#   5 an unprivileged user: refresh denied (77), status works
#   6 refresh_token_reused for one account → failed_permanent, one err entry, the other
#     account fine, codex-auth-refresh.service failed
#   6b codex-authctl login alice (the real Codex's device-code login against the mock,
#     approved through its admin API) → installed, State ok, nothing in the journal
#   7 operator features: metrics_textfile in node_exporter's directory (created after the
#     daemon started: needs a restart, not a reload) and on_success/on_failure hooks run
#     as the account user inside the service's sandbox, with exactly their environment
#   8 upgrade to a bumped version keeps config and state and restarts the daemon; purge
#     removes every file of the package and leaves the users' auth.json alone
#   9 systemd-analyze security exposure ≤ 2.5
#  10 homes the sandbox hides by default (issue 13): /srv/ci/.codex and root's own /root/.codex
#     opened by the package's generator after `codex-authctl reload`, then refreshed; exposure
#     still ≤ 2.5; check-config refuses unsafe or missing hooks (78, naming file, key and
#     fix); `codex-authctl status` into a closed pipe exits 0 without a word on stderr
# Prints one PASS/FAIL line per check and ends with "N passed, M failed"; exits 1 on any
# failure. The container is stopped and its cgroups removed on every exit path.
# Env: CODEX_AUTH_AGENT_E2E_KEEP=1 keeps the work directory; CODEX_AUTH_AGENT_CODEX_BIN names
# a native Codex CLI binary to run under the service's sandbox (else CODEX_AUTH_AGENT_TEST_CODEX
# from tests/run-all.sh, else the test cache; skipped when there is none).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/e2e/lib.sh
source tests/e2e/lib.sh
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" != 0 ]; then
  echo "e2e: SKIPPED (needs root: it boots a container)"
  exit 0
fi

PASSED=0
FAILED=0
pass() {
  PASSED=$((PASSED + 1))
  echo "PASS [$STEP] $*"
}
fail() {
  FAILED=$((FAILED + 1))
  echo "FAIL [$STEP] $*"
}
# check DESCRIPTION CMD…: PASS when CMD succeeds; on failure its output is shown.
check() {
  local desc=$1 out
  shift
  if out=$("$@" 2>&1); then
    pass "$desc"
  else
    fail "$desc"
    [ -n "$out" ] && printf '%s\n' "$out" | tail -n 15 | sed 's/^/      | /'
  fi
  return 0
}
STEP=0

WORK=$(mktemp -d /tmp/caa-e2e.XXXXXX)
MOCK_PID=
FINISHED=0
cleanup() {
  local rc=$?
  if [ "$FINISHED" = 0 ]; then
    # An unexpected error stopped the harness: count it, and still print the summary.
    FAILED=$((FAILED + 1))
    echo "FAIL [$STEP] the harness stopped early (exit $rc): see the output above"
    echo "$PASSED passed, $FAILED failed"
    rc=1
  fi
  ct_stop
  if [ -n "$MOCK_PID" ]; then
    kill "$MOCK_PID" 2>/dev/null || true
    wait "$MOCK_PID" 2>/dev/null || true
  fi
  if [ "${CODEX_AUTH_AGENT_E2E_KEEP:-0}" = 1 ]; then
    ct_log "kept $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

finish() {
  FINISHED=1
  echo "$PASSED passed, $FAILED failed"
  [ "$FAILED" = 0 ]
  exit $?
}

# ---- 0: host tools, packages, mock server, container ----------------------------------
ct_need_host_tools
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
mkdir -p "$WORK/debs/v1" "$WORK/debs/v2"
if bash packaging/build-deb.sh >"$WORK/build-deb.log" 2>&1; then
  pass "packaging/build-deb.sh builds the .deb; lintian reports no errors"
else
  fail "packaging/build-deb.sh builds the .deb; lintian reports no errors"
  tail -n 30 "$WORK/build-deb.log" | sed 's/^/      | /'
  finish
fi
cp "target/debian/codex-auth-agent_${version}-1_amd64.deb" "$WORK/debs/v1/"
# The upgrade: same binaries, a higher package version.
v2="${version}+e2e1-1"
if LINTIAN=0 bash packaging/build-deb.sh --deb-version "$v2" -o "$WORK/debs/v2/" >>"$WORK/build-deb.log" 2>&1; then
  pass "a version-bumped package ($v2) builds"
else
  fail "a version-bumped package ($v2) builds"
  tail -n 30 "$WORK/build-deb.log" | sed 's/^/      | /'
fi

cargo build --locked -q -p mock-openai --bin mock-openai
target_dir=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
"$target_dir/debug/mock-openai" --listen 127.0.0.1:0 --port-file "$WORK/mock.port" >"$WORK/mock.log" 2>&1 &
MOCK_PID=$!
for _ in $(seq 1 100); do [ -s "$WORK/mock.port" ] && break; sleep 0.05; done
MOCK="http://127.0.0.1:$(cat "$WORK/mock.port")"
admin() { curl -fsS -X "$1" "$MOCK/__admin/$2" ${3:+-d "$3"}; }

ct_rootfs
codex_bin=${CODEX_AUTH_AGENT_CODEX_BIN:-${CODEX_AUTH_AGENT_TEST_CODEX:-}}
[ -n "$codex_bin" ] || codex_bin=$(ls -1d "$CT_CACHE"/codex-*/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex 2>/dev/null | tail -n1 || true)
binds=(--bind-ro="$WORK/debs:/debs")
[ -n "$codex_bin" ] && [ -x "$codex_bin" ] && binds+=(--bind-ro="$(dirname "$codex_bin"):/opt/codex-bin")
ct_boot "caa-e2e-$$" "${binds[@]}"
ct_log "container up (init pid $CT_PID); mock at $MOCK"

# Helpers that run inside. (No `cmd | grep -q` under pipefail: grep -q exits at the first
# match and the writer's SIGPIPE would fail the pipeline; grep a captured string instead.)
unit_active() { [ "$(ct_exec systemctl is-active "$1" || true)" = active ]; }
wait_active() {
  for _ in $(seq 1 100); do unit_active "$1" && return 0; sleep 0.1; done
  ct_exec systemctl status --no-pager "$1" | tail -n 15
  return 1
}
state_of() {
  ct_exec busctl get-property org.codexauth.Agent1 "/org/codexauth/Agent1/account/$1" \
    org.codexauth.Agent1.Account State 2>/dev/null | sed -n 's/^s "\(.*\)"$/\1/p'
}
auth_field() { ct_exec cat "/home/$1/.codex/auth.json" | jq -r "$2"; }
# auth.json for USER from a fresh mock login, last refreshed 30 days ago (due: max_age 7d).
write_auth() { write_auth_in "/home/$1/.codex" "$@"; }
# The same in any CODEX_HOME: write_auth_in DIR USER CREDS [LAST].
write_auth_in() {
  local dir=$1 user=$2 creds=$3 last=${4:-$(date -u -d '30 days ago' +%Y-%m-%dT%H:%M:%SZ)}
  ct_exec install -d -o "$user" -g "$user" -m 0700 "$dir"
  jq -n --argjson c "$creds" --arg last "$last" '{auth_mode: "chatgpt", OPENAI_API_KEY: null,
      tokens: {id_token: $c.id_token, access_token: $c.access_token, refresh_token: $c.refresh_token,
               account_id: $c.account_id}, last_refresh: $last}' |
    ct_exec setpriv --reuid="$user" --regid="$user" --init-groups \
      sh -c "umask 077 && cat >$dir/auth.json.new && mv $dir/auth.json.new $dir/auth.json"
}
live() { admin POST check "{\"refresh_token\":\"$1\"}" | jq -e '.live == true'; }
journal_match() { grep . >/dev/null <<<"$(ct_exec journalctl -u codex-auth-agent --no-pager -o cat "$@")"; }
journal_has_no() {
  # Every field of every entry, binary fields included.
  local j
  j=$(ct_exec journalctl -o export --no-pager)
  local s
  for s in "$@"; do
    if grep -qaF -- "$s" <<<"$j"; then
      echo "found ${s:0:16}… in the journal"
      return 1
    fi
  done
}

# ---- 1: install --------------------------------------------------------------------------
STEP=1
deb1=$(cd "$WORK/debs/v1" && ls codex-auth-agent_*.deb)
if ! ct_exec apt-get install -y -q "/debs/v1/$deb1" >"$WORK/apt1.log" 2>&1; then
  # The cached rootfs's package lists may be too old for a new dependency.
  ct_exec apt-get update -q >>"$WORK/apt1.log" 2>&1 || true
  ct_exec apt-get install -y -q "/debs/v1/$deb1" >>"$WORK/apt1.log" 2>&1 || true
fi
installed() { test "$(ct_exec dpkg-query -W -f='${Status}' codex-auth-agent 2>&1)" = "install ok installed" || tail -n 20 "$WORK/apt1.log"; }
check "apt-get install /debs/v1/$deb1 (with its dependencies)" installed
check "codex-auth-agent.service is active" wait_active codex-auth-agent.service
status_line() { ct_exec systemctl status --no-pager codex-auth-agent.service | grep -E '^ *Status: ".+"'; }
check "systemctl status shows the STATUS= line" status_line
# The workers hold tokens in memory: no core files (the agent also sets RLIMIT_CORE 0 itself).
check "the service runs with LimitCORE=0" test "$(ct_exec systemctl show -P LimitCORE codex-auth-agent.service)" = 0
timers=$(ct_exec systemctl list-timers --all --no-pager || true)
check "systemctl list-timers shows codex-auth-refresh.timer" grep -q 'codex-auth-refresh.timer' <<<"$timers"
check "systemctl list-timers shows codex-auth-preflight.timer" grep -q 'codex-auth-preflight.timer' <<<"$timers"
check "both timers are enabled" ct_exec systemctl is-enabled codex-auth-refresh.timer codex-auth-preflight.timer
check "group codex-auth exists" ct_exec getent group codex-auth
check "/etc/codex-auth-agent/seeds is 0700 root" \
  test "$(ct_exec stat -c '%a %U' /etc/codex-auth-agent/seeds)" = "700 root"
check "the shipped config passes check-config" ct_exec codex-auth-agent check-config
check "the alert rules and the Grafana dashboard are installed" ct_exec test \
  -s /usr/share/codex-auth-agent/prometheus/codex-auth-agent.rules.yml \
  -a -s /usr/share/codex-auth-agent/grafana/codex-auth-agent.json
check "man pages are installed" ct_exec test -s /usr/share/man/man8/codex-auth-agent.8.gz \
  -a -s /usr/share/man/man1/codex-authctl.1.gz -a -s /usr/share/man/man5/codex-auth-agent.toml.5.gz

# ---- 2: two users, due auth.json, a drop-in, reload --------------------------------------
STEP=2
ct_exec useradd -m -s /bin/sh alice
ct_exec useradd -m -s /bin/sh bob
ct_exec useradd -m -s /bin/sh eve # neither root nor in codex-auth
creds_a=$(admin POST families '{"account_id":"acct-alice"}')
creds_b=$(admin POST families '{"account_id":"acct-bob"}')
rt_a0=$(jq -r .refresh_token <<<"$creds_a")
rt_b0=$(jq -r .refresh_token <<<"$creds_b")
at_a0=$(jq -r .access_token <<<"$creds_a")
at_b0=$(jq -r .access_token <<<"$creds_b")
write_auth alice "$creds_a"
write_auth bob "$creds_b"
check "alice's auth.json holds a canary refresh token" test "$(auth_field alice .tokens.refresh_token)" = "$rt_a0"
ct_exec sh -c "cat >/etc/codex-auth-agent/config.d/50-e2e.toml" <<EOF
# end-to-end test: two accounts against the mock token endpoint on the host
[defaults]
token_url = "$MOCK/oauth/token"
preflight = false

[accounts.alice]
user = "alice"

[accounts.bob]
user = "bob"
EOF
check "check-config accepts the drop-in" ct_exec codex-auth-agent check-config
check "systemctl reload codex-auth-agent" ct_exec systemctl reload codex-auth-agent.service
accounts_after_reload() {
  for _ in $(seq 1 50); do
    ct_exec busctl get-property org.codexauth.Agent1 /org/codexauth/Agent1 org.codexauth.Agent1.Manager Accounts 2>/dev/null |
      grep '^ao 2 ' >/dev/null && return 0
    sleep 0.1
  done
  ct_exec busctl get-property org.codexauth.Agent1 /org/codexauth/Agent1 org.codexauth.Agent1.Manager Accounts
  return 1
}
check "the daemon serves both accounts after the reload" accounts_after_reload

# ---- 3: the refresh service --------------------------------------------------------------
STEP=3
check "systemctl start codex-auth-refresh.service succeeds" ct_exec systemctl start codex-auth-refresh.service
for u in alice bob; do
  rt0=$rt_a0
  [ $u = bob ] && rt0=$rt_b0
  rt1=$(auth_field $u .tokens.refresh_token || true)
  check "$u: auth.json has a new refresh token" test -n "$rt1" -a "$rt1" != null -a "$rt1" != "$rt0"
  check "$u: the new refresh token is the mock's live one" live "$rt1"
  check "$u: auth.json is 0600 and owned by $u" \
    test "$(ct_exec stat -c '%a %U %G' /home/$u/.codex/auth.json)" = "600 $u $u"
  check "$u: journalctl -u codex-auth-agent ACCOUNT=$u shows OUTCOME=refreshed" \
    journal_match ACCOUNT=$u OUTCOME=refreshed
done
rt_a1=$(auth_field alice .tokens.refresh_token || true)
rt_b1=$(auth_field bob .tokens.refresh_token || true)
at_a1=$(auth_field alice .tokens.access_token || true)
check "no token (canary prefix, old or new tokens) anywhere in journalctl -o export" \
  journal_has_no CANARY- "$rt_a0" "$rt_b0" "$at_a0" "$at_b0" "$rt_a1" "$rt_b1" "$at_a1"

# ---- 4: D-Bus ----------------------------------------------------------------------------
STEP=4
introspect() { grep '^org.codexauth.Agent1.Manager ' <<<"$(ct_exec busctl introspect org.codexauth.Agent1 /org/codexauth/Agent1)"; }
check "busctl introspect org.codexauth.Agent1 /org/codexauth/Agent1 shows the Manager" introspect
check "busctl get-property …/account/alice State is ok" test "$(state_of alice)" = ok
check "busctl get-property …/account/bob State is ok" test "$(state_of bob)" = ok
status_json=$(ct_exec codex-authctl status --json 2>&1 || true)
ctl_state() { jq -r --arg n "$1" 'select((.name // .account) == $n) | .state' <<<"$status_json" 2>/dev/null; }
check "codex-authctl status --json agrees (alice ok)" test "$(ctl_state alice)" = ok
check "codex-authctl status --json agrees (bob ok)" test "$(ctl_state bob)" = ok
# D-Bus activation: with the daemon stopped, a ctl call starts it (SystemdService=).
ct_exec systemctl stop codex-auth-agent.service
activated() {
  ! unit_active codex-auth-agent.service &&
    ct_exec codex-authctl status >/dev/null && unit_active codex-auth-agent.service
}
check "a codex-authctl call starts the stopped daemon (bus activation)" activated

# ---- 5: an unprivileged user ---------------------------------------------------------------
STEP=5
set +e
ct_exec setpriv --reuid=eve --regid=eve --init-groups codex-authctl refresh alice >"$WORK/eve.out" 2>&1
rc_eve=$?
ct_exec setpriv --reuid=eve --regid=eve --init-groups codex-authctl status >"$WORK/eve-status.out" 2>&1
rc_eve_status=$?
set -e
check "as eve: codex-authctl refresh alice is denied (exit 77, got $rc_eve)" test "$rc_eve" = 77
check "as eve: codex-authctl status works (exit 0, got $rc_eve_status)" test "$rc_eve_status" = 0
check "as eve: the status lists alice" grep -q alice "$WORK/eve-status.out"

# ---- 6: a dead login ------------------------------------------------------------------------
STEP=6
admin POST fault '{"fault":{"kind":"preset","name":"refresh_token_reused"},"sticky":true,"account_id":"acct-alice"}' >/dev/null
# Make alice due again (same, current tokens; last refresh long ago) so the timer's
# `refresh --all` (no --force) sends her token and meets the fault.
write_auth alice "$(ct_exec cat /home/alice/.codex/auth.json | jq -c '.tokens')"
bob_before=$(ct_exec sha256sum /home/bob/.codex/auth.json)
set +e
ct_exec systemctl start codex-auth-refresh.service >"$WORK/refresh6.out" 2>&1
rc6=$?
set -e
check "systemctl start codex-auth-refresh.service fails (exit $rc6)" test "$rc6" != 0
listed_failed() { grep 'codex-auth-refresh.service' <<<"$(ct_exec systemctl --failed --no-pager --plain)"; }
check "codex-auth-refresh.service is failed (systemctl --failed shows it)" listed_failed
check "alice: State is failed_permanent" test "$(state_of alice)" = failed_permanent
n_err=$(ct_exec journalctl -u codex-auth-agent --no-pager -o cat -p err ACCOUNT=alice | grep -c . || true)
check "alice: exactly one err journal entry (got $n_err)" test "$n_err" = 1
check "bob: State is still ok" test "$(state_of bob)" = ok
check "bob: auth.json untouched" test "$(ct_exec sha256sum /home/bob/.codex/auth.json)" = "$bob_before"
check "bob: his refresh token is still live" live "$rt_b1"
check "still no token in the journal" journal_has_no CANARY- "$rt_a1" "$rt_b1" "$at_a1"
admin POST clear >/dev/null

# ---- 6b: the one command that fixes it: codex-authctl login --------------------------------
STEP=6b
if ct_exec test -x /opt/codex-bin/codex; then
  printf '[agent]\ncodex_bin = "/opt/codex-bin/codex"\n' |
    ct_exec sh -c "cat >/etc/codex-auth-agent/config.d/55-login.toml"
  ct_exec systemctl reload codex-auth-agent.service
  ct_exec timeout 120 codex-authctl login alice >"$WORK/login.out" 2>&1 &
  login_pid=$!
  # The operator's side: the code Codex asked the mock for, approved as alice's account.
  user_code=""
  for _ in $(seq 1 300); do
    user_code=$(admin GET device | jq -r '.pending[0] // empty')
    [ -n "$user_code" ] && break
    sleep 0.1
  done
  check "codex-authctl login alice: Codex asked the mock for a device code" test -n "$user_code"
  admin POST device "{\"user_code\":\"$user_code\",\"account_id\":\"acct-alice\"}" >/dev/null
  set +e
  wait "$login_pid"
  rc_login=$?
  set -e
  check "codex-authctl login alice exits 0 (got $rc_login)" test "$rc_login" = 0
  relayed() { grep -q "$MOCK/codex/device" "$WORK/login.out" && grep -q "$user_code" "$WORK/login.out"; }
  check "the login relayed the verification URL and the one-time code" relayed
  check "alice: State is ok after the login" test "$(state_of alice)" = ok
  rt_login=$(auth_field alice .tokens.refresh_token)
  check "alice: auth.json holds the new login, the mock's live token" live "$rt_login"
  check "alice: auth.json is 0600 and owned by alice" \
    test "$(ct_exec stat -c '%a %U' /home/alice/.codex/auth.json)" = "600 alice"
  no_login_home() { ! grep -q . <<<"$(ct_exec sh -c 'ls -d /tmp/codex-auth-agent-* 2>/dev/null || true')"; }
  check "no throwaway login home left in /tmp" no_login_home
  check "neither the one-time code nor the new token is in the journal" journal_has_no "$user_code" "$rt_login"
  ct_exec rm /etc/codex-auth-agent/config.d/55-login.toml
  ct_exec systemctl reload codex-auth-agent.service
else
  echo "SKIP [6b] codex-authctl login (no Codex CLI binary; set CODEX_AUTH_AGENT_CODEX_BIN)"
fi

# ---- 7: metrics textfile and hooks under the sandbox -------------------------------------
STEP=7
PROM_DIR=/var/lib/prometheus/node-exporter
PROM=$PROM_DIR/codex_auth_agent.prom
ct_exec useradd -m -s /bin/sh carol
creds_c=$(admin POST families '{"account_id":"acct-carol"}')
write_auth carol "$creds_c"
# The hook records, in the user's home: who ran it, its environment keys, its whole
# environment (for the token check) and its cgroup (it runs inside the service).
ct_exec sh -c 'cat >/usr/local/bin/caa-e2e-hook && chmod 0755 /usr/local/bin/caa-e2e-hook' <<'EOF'
#!/bin/sh
out="$HOME/hook-$OUTCOME"
id -un >"$out.user"
tr '\0' '\n' </proc/$$/environ >"$out.env"
cut -d= -f1 "$out.env" | sort | tr '\n' ' ' >"$out.keys"
cat /proc/self/cgroup >"$out.cgroup"
EOF
ct_exec sh -c "cat >/etc/codex-auth-agent/config.d/60-ops.toml" <<EOF
[agent]
metrics_textfile = "$PROM"

[accounts.carol]
user = "carol"
on_success = "/usr/local/bin/caa-e2e-hook"
on_failure = "/usr/local/bin/caa-e2e-hook"
EOF
check "check-config accepts metrics_textfile and the hooks" ct_exec codex-auth-agent check-config
# node_exporter's directory created while the daemon runs: ReadWritePaths=-… was skipped at
# start, so after a mere reload the file cannot be written (read-only), only a warning.
ct_exec install -d -m 0755 "$PROM_DIR"
ct_exec systemctl reload codex-auth-agent.service
wait_carol() {
  for _ in $(seq 1 50); do [ -n "$(state_of carol)" ] && return 0; sleep 0.1; done
  return 1
}
check "after the reload the daemon serves carol" wait_carol
ct_exec codex-authctl refresh carol --force >"$WORK/carol1.out" 2>&1 || true
check "carol refreshed (textfile directory not writable yet)" grep -q '^carol: refreshed' "$WORK/carol1.out"
check "without a restart the textfile is not written" ct_exec test ! -e "$PROM"
journal_says() { grep -qF -- "$1" <<<"$(ct_exec journalctl -u codex-auth-agent --no-pager -o cat)"; }
check "…and the journal says why" journal_says 'could not write the metrics textfile'
# The documented way: create the directory, then restart.
check "systemctl restart codex-auth-agent" ct_exec systemctl restart codex-auth-agent.service
wait_for() { for _ in $(seq 1 100); do ct_exec test -s "$1" && return 0; sleep 0.1; done; echo "no $1"; return 1; }
ct_exec rm -f /home/carol/hook-refreshed.user
ct_exec codex-authctl refresh carol --force >"$WORK/carol2.out" 2>&1 || true
check "codex-authctl refresh carol --force: refreshed" grep -q '^carol: refreshed' "$WORK/carol2.out"
check "$PROM exists" wait_for "$PROM"
prom=$(ct_exec cat "$PROM" 2>/dev/null || true)
prom_parses() {
  [ -n "$prom" ] && awk '/^# (HELP|TYPE) / {next}
    !/^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? -?[0-9][0-9.e+-]*$/ {bad = 1; print "bad line: " $0}
    END {exit bad}' <<<"$prom"
}
check "the textfile parses (HELP/TYPE comments and metric lines only)" prom_parses
has() { grep -qxF -- "$1" <<<"$prom" || { echo "missing: $1"; return 1; }; }
has_prefix() { grep -qF -- "$1" <<<"$prom" || { echo "missing: $1"; return 1; }; }
check "textfile: carol's last outcome is refreshed" has 'codex_auth_agent_last_outcome{account="carol",outcome="refreshed"} 1'
check "textfile: carol's access token expiry" has_prefix 'codex_auth_agent_access_token_expiry_timestamp_seconds{account="carol"} '
check "textfile: carol's last refresh" has_prefix 'codex_auth_agent_last_refresh_timestamp_seconds{account="carol"} '
check "textfile: carol has 0 consecutive failures" has 'codex_auth_agent_consecutive_failures{account="carol"} 0'
check "textfile: every account has a series (bob)" has 'codex_auth_agent_consecutive_failures{account="bob"} 0'
check "$PROM is 0644 root:root" test "$(ct_exec stat -c '%a %U %G' "$PROM")" = "644 root root"
no_temp() { test "$(ct_exec ls -A "$PROM_DIR")" = codex_auth_agent.prom; }
check "no temp file is left in $PROM_DIR" no_temp
check "on_success ran" wait_for /home/carol/hook-refreshed.user
check "on_success ran as carol" test "$(ct_exec cat /home/carol/hook-refreshed.user)" = carol
hook_keys() { test "$(ct_exec cat "/home/carol/hook-$1.keys")" = "ACCOUNT FAILURE_CLASS HOME OUTCOME PATH REASON "; }
check "on_success got exactly ACCOUNT FAILURE_CLASS HOME OUTCOME PATH REASON" hook_keys refreshed
in_unit() { grep -q 'codex-auth-agent.service' <<<"$(ct_exec cat "/home/carol/hook-$1.cgroup")"; }
check "on_success ran inside codex-auth-agent.service (its sandbox)" in_unit refreshed
# A dead login: on_failure with the class; the textfile counts the failure.
admin POST fault '{"fault":{"kind":"preset","name":"refresh_token_reused"},"sticky":true,"account_id":"acct-carol"}' >/dev/null
set +e
ct_exec codex-authctl refresh carol --force >"$WORK/carol3.out" 2>&1
rc_c=$?
set -e
check "carol: a reused refresh token fails permanently (exit 3, got $rc_c)" test "$rc_c" = 3
check "on_failure ran" wait_for /home/carol/hook-failed.user
check "on_failure ran as carol" test "$(ct_exec cat /home/carol/hook-failed.user)" = carol
check "on_failure got exactly its six keys" hook_keys failed
env_is() { grep -qxF -- "$2" <<<"$(ct_exec cat "/home/carol/hook-$1.env")" || { ct_exec cat "/home/carol/hook-$1.env"; return 1; }; }
check "on_failure: OUTCOME=failed" env_is failed OUTCOME=failed
check "on_failure: FAILURE_CLASS=permanent" env_is failed FAILURE_CLASS=permanent
check "on_failure: ACCOUNT=carol" env_is failed ACCOUNT=carol
prom=$(ct_exec cat "$PROM" 2>/dev/null || true)
check "textfile: carol's last outcome is failed" has 'codex_auth_agent_last_outcome{account="carol",outcome="failed"} 1'
check "textfile: carol has 1 consecutive failure" has 'codex_auth_agent_consecutive_failures{account="carol"} 1'
rt_c1=$(auth_field carol .tokens.refresh_token || true)
no_tokens_in_hooks() {
  local f
  for f in refreshed.env failed.env; do
    if grep -qaF -e CANARY- -e "$rt_c1" <<<"$(ct_exec cat "/home/carol/hook-$f")"; then echo "token in $f"; return 1; fi
  done
  if grep -qaF -e CANARY- -e "$rt_c1" <<<"$prom"; then echo "token in the textfile"; return 1; fi
}
check "no token in the hooks' environments nor in the textfile" no_tokens_in_hooks
admin POST clear >/dev/null

# ---- 8: upgrade, then purge -----------------------------------------------------------------
STEP=8
pid_before=$(ct_exec systemctl show -P MainPID codex-auth-agent.service)
state_files_before=$(ct_exec sh -c 'cd /var/lib/codex-auth-agent && find . -type f | sort')
conf_before=$(ct_exec cat /etc/codex-auth-agent/config.d/50-e2e.toml)
deb2=$(cd "$WORK/debs/v2" && ls codex-auth-agent_*.deb 2>/dev/null || true)
check "apt-get install of the bumped package ($deb2)" ct_exec apt-get install -y -q "/debs/v2/$deb2"
check "the installed version is $v2" \
  test "$(ct_exec dpkg-query -W -f='${Version}' codex-auth-agent)" = "$v2"
restarted() {
  wait_active codex-auth-agent.service && test "$(ct_exec systemctl show -P MainPID codex-auth-agent.service)" != "$pid_before"
}
check "the daemon was restarted (new main pid)" restarted
check "the config drop-in is kept" test "$(ct_exec cat /etc/codex-auth-agent/config.d/50-e2e.toml)" = "$conf_before"
check "the state files are kept" test -n "$state_files_before" -a \
  "$(ct_exec sh -c 'cd /var/lib/codex-auth-agent && find . -type f | sort')" = "$state_files_before"
check "after the upgrade the daemon still reports bob ok" test "$(state_of bob)" = ok
check "after the upgrade both timers are still active" \
  test "$(ct_exec systemctl is-active codex-auth-refresh.timer codex-auth-preflight.timer | sort -u)" = active
files=$(ct_exec dpkg-query -L codex-auth-agent | sort)
auth_a=$(ct_exec sha256sum /home/alice/.codex/auth.json)
auth_b=$(ct_exec sha256sum /home/bob/.codex/auth.json)
check "apt-get purge codex-auth-agent" ct_exec apt-get purge -y -q codex-auth-agent
left=$(for f in $files; do
  # Shared directories (/usr/share/man/man8, …) stay, the package's own files must not.
  case "$f" in /. | /etc | /usr | /usr/* | /lib | /lib/*) [ -d "$(ct_path "$f")" ] && continue ;; esac
  if [ -e "$(ct_path "$f")" ] || [ -L "$(ct_path "$f")" ]; then echo "$f"; fi
done)
check "purge: no file of the package is left" test -z "$left"
gone() { local p; for p in "$@"; do ! ct_exec test -e "$p" || { echo "$p is still there"; return 1; }; done; }
check "purge: /etc/codex-auth-agent and /var/lib/codex-auth-agent are gone" \
  gone /etc/codex-auth-agent /var/lib/codex-auth-agent
no_units() {
  ! ct_exec sh -c 'ls -d /etc/systemd/system/*/codex-auth-* /etc/systemd/system/codex-auth-* 2>/dev/null' | grep . &&
    test "$(ct_exec systemctl show -P LoadState codex-auth-agent.service)" = not-found
}
check "purge: no unit is left enabled, masked or loaded" no_units
off_bus() { ! ct_exec busctl status org.codexauth.Agent1 >/dev/null 2>&1; }
check "purge: the daemon is gone from the bus" off_bus
check "purge: users' auth.json untouched" test "$(ct_exec sha256sum /home/alice/.codex/auth.json)" = "$auth_a" -a \
  "$(ct_exec sha256sum /home/bob/.codex/auth.json)" = "$auth_b"

# ---- 9: hardening ----------------------------------------------------------------------------
STEP=9
# Reinstall after the purge (measures the shipped unit, and a purge must not block a new
# installation).
ct_exec apt-get install -y -q "/debs/v1/$deb1" >"$WORK/apt8.log" 2>&1 || true
check "reinstall after the purge: the service is active again" wait_active codex-auth-agent.service
sec=$(ct_exec systemd-analyze security --no-pager codex-auth-agent.service 2>&1 || true)
printf '%s\n' "$sec" | grep -E '✗|Overall' | sed 's/^/      /'
score=$(printf '%s\n' "$sec" | sed -n 's/.*Overall exposure level for codex-auth-agent.service: \([0-9.]*\).*/\1/p')
check "systemd-analyze security exposure ${score:-?} ≤ 2.5" awk -v s="${score:-99}" 'BEGIN { exit !(s <= 2.5) }'
# The Codex CLI's native binary under the service's own sandbox (MemoryDenyWriteExecute,
# the system call filter, NoNewPrivileges…), as an account user, the way the preflight runs it.
if ct_exec test -x /opt/codex-bin/codex; then
  props=()
  while IFS= read -r line; do props+=(-p "$line"); done < <(
    ct_exec sed -n '/^\[Service\]/,/^\[/p' /usr/lib/systemd/system/codex-auth-agent.service |
      grep -E '^[A-Z][A-Za-z]+=' |
      grep -vE '^(Type|BusName|ExecStart|ExecReload|Restart|RestartSec|WatchdogSec|NotifyAccess|TimeoutStopSec|KillMode|StateDirectory|StateDirectoryMode|ConfigurationDirectory|ConfigurationDirectoryMode)='
  )
  codex_sandboxed() {
    ct_exec systemd-run --wait --pipe --quiet "${props[@]}" \
      setpriv --reuid=alice --regid=alice --init-groups env HOME=/tmp /opt/codex-bin/codex --version |
      grep '^codex'
  }
  check "codex --version runs under the service's sandbox as alice (MemoryDenyWriteExecute=yes)" codex_sandboxed
else
  echo "SKIP [9] codex --version under the service's sandbox (no Codex CLI binary; set CODEX_AUTH_AGENT_CODEX_BIN)"
fi

# ---- 10: homes outside /home, unsafe hooks, a closed pipe -----------------------------------
STEP=10
# The README's own example (a CI user whose home is /srv/ci) and root's own login.
ct_exec useradd -m -d /srv/ci -s /bin/sh ci
creds_ci=$(admin POST families '{"account_id":"acct-ci"}')
creds_root=$(admin POST families '{"account_id":"acct-root"}')
write_auth_in /srv/ci/.codex ci "$creds_ci"
write_auth_in /root/.codex root "$creds_root"
rt_ci0=$(jq -r .refresh_token <<<"$creds_ci")
rt_root0=$(jq -r .refresh_token <<<"$creds_root")
ct_exec sh -c "cat >/etc/codex-auth-agent/config.d/70-vm.toml" <<EOF
[defaults]
token_url = "$MOCK/oauth/token"
preflight = false

[accounts.ci-bot]
user = "ci"
codex_home = "/srv/ci/.codex"

[accounts.admin]
user = "root"
EOF
check "check-config accepts /srv/ci/.codex and root's /root/.codex" ct_exec codex-auth-agent check-config
ct_exec codex-authctl reload >"$WORK/reload10.out" 2>&1 || true
opened='restarted codex-auth-agent.service so that its sandbox opens /srv/ci/.codex, /root/.codex'
check "codex-authctl reload restarts the service to open both homes" grep -qF "$opened" "$WORK/reload10.out"
GEN=/run/systemd/generator/codex-auth-agent.service.d/50-codex-homes.conf
gen_has() { grep -qxF -- "$1" <<<"$(ct_exec cat "$GEN")" || { ct_exec cat "$GEN"; return 1; }; }
check "the generator's drop-in: ReadWritePaths=-/srv/ci/.codex" gen_has 'ReadWritePaths=-/srv/ci/.codex'
check "the generator's drop-in: BindPaths=-/root/.codex" gen_has 'BindPaths=-/root/.codex'
check "the service requires the mounts for /srv/ci/.codex" \
  grep -qF /srv/ci/.codex <<<"$(ct_exec systemctl show -P RequiresMountsFor codex-auth-agent.service)"
check "codex-auth-agent.service is active after the reload" wait_active codex-auth-agent.service
ct_exec codex-authctl reload >"$WORK/reload10b.out" 2>&1 || true
check "a second codex-authctl reload needs no restart" test "$(cat "$WORK/reload10b.out")" = reloaded
check "systemctl start codex-auth-refresh.service succeeds" ct_exec systemctl start codex-auth-refresh.service
rt_ci1=$(ct_exec cat /srv/ci/.codex/auth.json | jq -r .tokens.refresh_token || true)
rt_root1=$(ct_exec cat /root/.codex/auth.json | jq -r .tokens.refresh_token || true)
check "ci-bot (/srv/ci/.codex): a new refresh token" test -n "$rt_ci1" -a "$rt_ci1" != "$rt_ci0"
check "ci-bot: the new token is the mock's live one" live "$rt_ci1"
check "admin (/root/.codex): a new refresh token" test -n "$rt_root1" -a "$rt_root1" != "$rt_root0"
check "admin: the new token is the mock's live one" live "$rt_root1"
# (An object path escapes '-': ci-bot is …/account/ci_2dbot; codex-authctl knows the name.)
ctl_state() { ct_exec codex-authctl status "$1" --json | jq -r .state; }
check "ci-bot: State is ok" test "$(ctl_state ci-bot)" = ok
check "admin: State is ok" test "$(state_of admin)" = ok
check "/srv/ci/.codex/auth.json is 0600 ci" test "$(ct_exec stat -c '%a %U' /srv/ci/.codex/auth.json)" = "600 ci"
check "/root/.codex/auth.json is 0600 root" test "$(ct_exec stat -c '%a %U' /root/.codex/auth.json)" = "600 root"
no_stray_lock() { ct_exec sh -c '! ls /etc/*.lock /srv/ci/*.lock /root/*.lock 2>/dev/null | grep .'; }
check "no lock file outside the Codex homes" no_stray_lock
check "still no token in the journal" journal_has_no CANARY- "$rt_ci0" "$rt_ci1" "$rt_root0" "$rt_root1"
sec=$(ct_exec systemd-analyze security --no-pager codex-auth-agent.service 2>&1 || true)
score=$(printf '%s\n' "$sec" | sed -n 's/.*Overall exposure level for codex-auth-agent.service: \([0-9.]*\).*/\1/p')
check "with the generated drop-in: systemd-analyze security exposure ${score:-?} ≤ 2.5" \
  awk -v s="${score:-99}" 'BEGIN { exit !(s <= 2.5) }'
# Unsafe hooks: world-writable, owned by a user, missing. Each one is refused with 78.
ct_exec sh -c 'printf "#!/bin/sh\nexit 0\n" >/usr/local/bin/caa-open-hook && chmod 0777 /usr/local/bin/caa-open-hook'
ct_exec sh -c 'printf "#!/bin/sh\nexit 0\n" >/usr/local/bin/caa-eve-hook && chown eve /usr/local/bin/caa-eve-hook &&
  chmod 0755 /usr/local/bin/caa-eve-hook'
refused() {
  local hook=$1 want=$2 out rc=0
  printf '[accounts.ci-bot]\non_failure = "%s"\n' "$hook" |
    ct_exec sh -c 'cat >/etc/codex-auth-agent/config.d/80-hook.toml'
  out=$(ct_exec codex-auth-agent check-config 2>&1 >/dev/null) || rc=$?
  ct_exec rm -f /etc/codex-auth-agent/config.d/80-hook.toml
  echo "exit $rc: $out"
  [ "$rc" = 78 ] && grep -qF 80-hook.toml <<<"$out" && grep -qF accounts.ci-bot.on_failure <<<"$out" &&
    grep -qF -- "$want" <<<"$out"
}
check "check-config refuses a world-writable hook (78, file, key, chmod)" \
  refused /usr/local/bin/caa-open-hook 'chmod go-w'
check "check-config refuses a hook owned by eve (78, file, key, chown)" \
  refused /usr/local/bin/caa-eve-hook 'chown root'
check "check-config refuses a missing hook (78, file, key)" \
  refused /usr/local/bin/caa-no-such-hook 'does not exist'
check "check-config accepts the config again" ct_exec codex-auth-agent check-config
# A reader that closes the pipe at once (`| true`) makes the first write fail with EPIPE.
closed_pipe() {
  local out
  out=$(ct_exec bash -c 'set -o pipefail; codex-authctl status 2>/tmp/ctl.err | true; rc=$?
    cat /tmp/ctl.err; exit $rc' 2>&1)
  [ -z "$out" ] || { echo "$out"; return 1; }
}
check "codex-authctl status | true: exit 0, nothing on stderr (no panic)" closed_pipe
head_one() {
  local out
  out=$(ct_exec bash -c 'set -o pipefail; codex-authctl status 2>&1 | head -n1')
  grep -q '^[0-9]* accounts\?: ' <<<"$out" || { echo "$out"; return 1; }
}
check "codex-authctl status | head -1 prints the summary line and succeeds" head_one

finish
