# shellcheck shell=bash
# Boot a real Debian 12 systemd in a throwaway systemd-nspawn container and run commands in
# it. Follows ../shared/notes/systemd-container.md (the verified recipe and its pitfalls):
# own cgroup per container, --keep-unit --register=no, --console=read-only, setsid, stdin
# /dev/null, --volatile=overlay over a cached debootstrap rootfs, nsenter to run commands,
# SIGTERM to stop, then remove the cgroups and /run/systemd/nspawn/propagate/NAME.
#
# Use: source it, call ct_need_host_tools, ct_rootfs, ct_boot NAME [nspawn args…],
# ct_exec …, and ct_stop from an EXIT trap (it is safe to call more than once).

CT_CACHE=${CODEX_AUTH_AGENT_TEST_CACHE:-/var/cache/codex-auth-agent-test}
CT_ROOTFS="$CT_CACHE/rootfs-bookworm"
# Packages beyond minbase: what a real Debian 12 server has for systemd services, logins
# and user sessions (without them user@.service and DynamicUser names fail).
CT_INCLUDE=systemd,systemd-sysv,dbus,libpam-systemd,dbus-user-session,libnss-systemd,ca-certificates
CT_NAME=
CT_NSPAWN_PID=
CT_PID=
CT_CGROUPS=()

ct_log() { printf '%s e2e: %s\n' "$(date +%T)" "$*" >&2; }

# Host tools: systemd-nspawn, debootstrap, zstd, jq, curl (installed when missing).
ct_need_host_tools() {
  local need=()
  command -v systemd-nspawn >/dev/null || need+=(systemd-container)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v zstd >/dev/null || need+=(zstd)
  command -v jq >/dev/null || need+=(jq)
  command -v curl >/dev/null || need+=(curl)
  command -v nsenter >/dev/null || need+=(util-linux)
  if [ ${#need[@]} -gt 0 ]; then
    ct_log "installing host packages: ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

# The mirror the host uses (its deb822 or one-line sources), else deb.debian.org.
ct_mirror() {
  local m
  m=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list.d/*.sources \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | head -n1 | grep -oE 'https?://[^ ]+' || true)
  echo "${m:-http://deb.debian.org/debian}"
}

# Build the rootfs once (debootstrap ≈40 s) and keep it; rebuild only when missing or
# incomplete. --volatile=overlay keeps it pristine across boots.
ct_rootfs() {
  [ -e "$CT_ROOTFS/.complete" ] && return 0
  ct_log "building the bookworm rootfs in $CT_ROOTFS (once)"
  rm -rf "$CT_ROOTFS" "$CT_ROOTFS.tmp"
  mkdir -p "$CT_CACHE"
  debootstrap --variant=minbase --include="$CT_INCLUDE" bookworm "$CT_ROOTFS.tmp" "$(ct_mirror)" \
    >"$CT_CACHE/debootstrap.log" 2>&1 || {
    tail -n 20 "$CT_CACHE/debootstrap.log" >&2
    return 1
  }
  # A fresh machine-id on every boot; no apt caches; a hostname.
  : >"$CT_ROOTFS.tmp/etc/machine-id"
  rm -f "$CT_ROOTFS.tmp/var/cache/apt/archives/"*.deb
  echo caa-e2e >"$CT_ROOTFS.tmp/etc/hostname"
  touch "$CT_ROOTFS.tmp/.complete"
  mv "$CT_ROOTFS.tmp" "$CT_ROOTFS"
}

_ct_cgroup_dirs() {
  local d
  for d in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
    [ -e "$d/cgroup.procs" ] && echo "$d/nspawn-$CT_NAME"
  done
}

# ct_boot NAME [extra systemd-nspawn args…]: boot and wait until systemd is running.
ct_boot() {
  CT_NAME=$1
  shift
  local d
  # Pitfall 2: with --keep-unit, nspawn puts payload/ and supervisor/ in the caller's
  # cgroup. A subshell moved into its own cgroup keeps them apart and removable.
  mapfile -t CT_CGROUPS < <(_ct_cgroup_dirs)
  for d in "${CT_CGROUPS[@]}"; do mkdir -p "$d"; done
  rm -rf "/run/systemd/nspawn/propagate/$CT_NAME"
  (
    for d in "${CT_CGROUPS[@]}"; do echo "$BASHPID" >"$d/cgroup.procs"; done
    SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 exec setsid systemd-nspawn --quiet --register=no --keep-unit \
      --console=read-only -M "$CT_NAME" -D "$CT_ROOTFS" --volatile=overlay "$@" -b \
      </dev/null >"$CT_CACHE/$CT_NAME.console" 2>&1
  ) &
  CT_NSPAWN_PID=$!
  local state
  for _ in $(seq 1 300); do
    if [ -z "$CT_PID" ]; then
      # The container's init: the child of nspawn whose comm is systemd (pitfall 5: ps
      # exits 1 when it finds nothing).
      CT_PID=$( (ps --ppid "$CT_NSPAWN_PID" -o pid=,comm= || true) | awk '$2 == "systemd" {print $1; exit}')
    fi
    if [ -n "$CT_PID" ]; then
      state=$(ct_exec systemctl is-system-running 2>/dev/null || true)
      case "$state" in
        running | degraded) return 0 ;;
      esac
    fi
    if ! _ct_alive "$CT_NSPAWN_PID"; then
      ct_log "systemd-nspawn exited during boot; console:"
      tail -n 30 "$CT_CACHE/$CT_NAME.console" >&2
      return 1
    fi
    sleep 0.1
  done
  ct_log "container did not reach running in 30 s (state: ${state:-?})"
  return 1
}

# A process that is gone or a zombie counts as dead (pitfall 4).
_ct_alive() {
  local st
  st=$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null || true)
  [ -n "$st" ] && [ "$st" != Z ]
}

# ct_exec CMD…: run a command inside the container as root, stdin passed through.
ct_exec() {
  nsenter -t "$CT_PID" -a env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 HOME=/root SYSTEMD_PAGER= SYSTEMD_COLORS=0 TERM=dumb "$@"
}

# ct_sh 'shell code': the same through sh -c.
ct_sh() { ct_exec sh -c "$1"; }

# ct_as USER CMD…: run as an unprivileged user inside (a login-less setpriv drop).
ct_as() {
  local user=$1
  shift
  ct_exec setpriv --reuid="$user" --regid="$user" --init-groups --reset-env "$@"
}

# The host path of a file inside the container.
ct_path() { echo "/proc/$CT_PID/root$1"; }

# Stop the container (orderly poweroff by SIGTERM, then SIGKILL after 20 s), remove its
# cgroups bottom-up and its propagate directory. Safe to call again.
ct_stop() {
  local d
  if [ -n "$CT_NSPAWN_PID" ] && _ct_alive "$CT_NSPAWN_PID"; then
    kill -TERM "$CT_NSPAWN_PID" 2>/dev/null || true
    for _ in $(seq 1 200); do
      _ct_alive "$CT_NSPAWN_PID" || break
      sleep 0.1
    done
    if _ct_alive "$CT_NSPAWN_PID"; then
      ct_log "container did not power off in 20 s: killing it"
      kill -KILL "$CT_NSPAWN_PID" 2>/dev/null || true
      [ -n "$CT_PID" ] && kill -KILL "$CT_PID" 2>/dev/null || true
      sleep 0.5
    fi
  fi
  [ -n "$CT_NSPAWN_PID" ] && wait "$CT_NSPAWN_PID" 2>/dev/null || true
  for d in "${CT_CGROUPS[@]}"; do
    [ -d "$d" ] || continue
    # Kill whatever is left, then remove the tree deepest first.
    find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true # pids, one per line
    for _ in $(seq 1 50); do
      find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
      [ -d "$d" ] || break
      sleep 0.1
    done
    [ -d "$d" ] && ct_log "could not remove cgroup $d"
  done
  [ -n "$CT_NAME" ] && rm -rf "/run/systemd/nspawn/propagate/$CT_NAME"
  CT_NSPAWN_PID=
  CT_PID=
  CT_CGROUPS=()
}
