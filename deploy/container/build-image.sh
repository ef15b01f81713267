#!/usr/bin/env bash
# Build the refresher's OCI image (README "Kubernetes") with buildah, from scratch, without
# a registry: the agent binary and the shared libraries it links (from the system that
# built it), the pinned Codex CLI (the static musl binary of the npm package), the CA
# roots, and a passwd/group with the non-root user codex (10001). Nothing in the image
# needs to be written: CODEX_HOME, the state dir and TMPDIR are volumes (emptyDirs).
#
#   deploy/container/build-image.sh [--agent BIN] [--codex BIN] [--tag NAME] [--oci-archive FILE]
#
# --agent   default target/release/codex-auth-agent (cargo build --release --locked first)
# --codex   default: @openai/codex@$CODEX_VERSION installed with npm into target/ (once)
# --tag     default localhost/codex-auth-refresher:<version of Cargo.toml>
# The image is rebuilt only when an input changed (a label holds their hash), so CI pays
# for a build once per binary.
set -euo pipefail
cd "$(dirname "$0")/../.."
CODEX_VERSION=0.169.0
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
agent=target/release/codex-auth-agent codex="" tag="localhost/codex-auth-refresher:$version" archive=""
while [ $# -gt 0 ]; do
  case $1 in
    --agent) agent=$2; shift 2 ;;
    --codex) codex=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --oci-archive) archive=$2; shift 2 ;;
    *) echo "usage: $0 [--agent BIN] [--codex BIN] [--tag NAME] [--oci-archive FILE]" >&2; exit 2 ;;
  esac
done
[ -x "$agent" ] || { echo "$0: $agent is missing: run cargo build --release --locked" >&2; exit 1; }
if [ -z "$codex" ]; then
  dir=target/codex-$CODEX_VERSION
  codex=$dir/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex
  if [ ! -x "$codex" ]; then
    mkdir -p "$dir"
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error "@openai/codex@$CODEX_VERSION")
  fi
fi
if ! ldd "$codex" 2>&1 | grep -Eq 'statically linked|not a dynamic executable'; then
  echo "$0: $codex is not a static binary (want the musl one)" >&2
  exit 1
fi
cacerts=/etc/ssl/certs/ca-certificates.crt
[ -s "$cacerts" ] || { echo "$0: $cacerts is missing: apt-get install ca-certificates" >&2; exit 1; }
command -v buildah >/dev/null || { echo "$0: buildah is missing: apt-get install buildah" >&2; exit 1; }

# The agent's shared libraries, as the dynamic loader resolves them here.
mapfile -t libs < <(ldd "$agent" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
inputs=$( (sha256sum "$agent" "$codex" "$cacerts" "${libs[@]}" "$0" | awk '{print $1}') | sha256sum | cut -c1-32)
label='{{index .OCIv1.Config.Labels "codex-auth-agent.inputs"}}'
if [ "$(buildah inspect --type image --format "$label" "$tag" 2>/dev/null)" = "$inputs" ]; then
  echo "$tag is up to date (inputs $inputs)"
else
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  install -d -m 0755 "$root"/{usr/local/bin,etc/ssl/certs,etc/codex-auth-agent,work,tmp} \
    "$root/var/run/secrets/kubernetes.io/serviceaccount"
  chmod 1777 "$root/tmp"
  install -m 0755 "$agent" "$root/usr/local/bin/codex-auth-agent"
  install -m 0755 "$codex" "$root/usr/local/bin/codex"
  for l in "${libs[@]}"; do
    install -D -m 0755 "$(readlink -f "$l")" "$root$l"
  done
  install -m 0644 "$cacerts" "$root/etc/ssl/certs/ca-certificates.crt"
  {
    echo 'root:x:0:0:root:/nonexistent:/usr/sbin/nologin'
    echo 'codex:x:10001:10001:codex-auth-agent:/work:/usr/sbin/nologin'
  } > "$root/etc/passwd"
  printf 'root:x:0:\ncodex:x:10001:\n' > "$root/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$root/etc/nsswitch.conf"
  chmod 0644 "$root"/etc/{passwd,group,nsswitch.conf}
  ctr=$(buildah from scratch)
  buildah copy --quiet "$ctr" "$root" / >/dev/null
  buildah config \
    --user 10001:10001 \
    --workingdir /work \
    --env PATH=/usr/local/bin \
    --env TMPDIR=/tmp \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --env CODEX_AUTH_AGENT_LOG=stderr \
    --entrypoint '["/usr/local/bin/codex-auth-agent"]' \
    --cmd '[]' \
    --label org.opencontainers.image.title=codex-auth-refresher \
    --label "org.opencontainers.image.version=$version" \
    --label "org.opencontainers.image.description=codex-auth-agent with Codex CLI $CODEX_VERSION" \
    --label "codex-auth-agent.inputs=$inputs" \
    "$ctr"
  old=$(buildah inspect --type image --format '{{.FromImageID}}' "$tag" 2>/dev/null || true)
  buildah commit --quiet --rm "$ctr" "$tag" >/dev/null
  # The image this tag named before, now untagged: rebuilt images would pile up otherwise.
  [ -z "$old" ] || buildah rmi "$old" >/dev/null 2>&1 || true
  echo "built $tag (agent $version, Codex $CODEX_VERSION, inputs $inputs)"
fi
if [ -n "$archive" ]; then
  rm -f "$archive"
  buildah push --quiet "$tag" "oci-archive:$archive:$tag"
  echo "wrote $archive"
fi
