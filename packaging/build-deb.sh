#!/usr/bin/env bash
# Build the Debian package with one command:
#   bash packaging/build-deb.sh [extra cargo-deb args, e.g. --deb-version 0.1.1-1 -o DIR]
# Installs cargo-deb (cargo install --locked) and lintian (apt) when missing, builds the
# release binaries, generates the man pages and bash completions from the clap definitions
# (packaging/gen-docs → target/gen-docs/), runs cargo-deb, copies the .deb to target/debian/
# of this checkout (also when CARGO_TARGET_DIR points elsewhere) and runs lintian on it
# (fails on errors; see packaging/README.md for the warnings that remain and why).
# Env: LINTIAN=0 skips lintian (the e2e test's second, version-bumped build does).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
export DEBIAN_FRONTEND=noninteractive

if ! command -v cargo >/dev/null; then
  echo "cargo is missing: run packaging/install.sh (it installs rustup) or install Rust" >&2
  exit 1
fi
# Debian tools: a C toolchain (cargo-deb and some crates build C code), dpkg-shlibdeps
# (cargo-deb's $auto dependencies: without it the package would lack its libc6 dependency)
# and lintian.
need=()
command -v cc >/dev/null || need+=(build-essential)
command -v dpkg-shlibdeps >/dev/null || need+=(dpkg-dev)
[ "${LINTIAN:-1}" != 0 ] && ! command -v lintian >/dev/null && need+=(lintian)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing ${need[*]}"
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing: ${need[*]} (apt-get install them as root)" >&2
    exit 1
  fi
fi
if ! cargo deb --version >/dev/null 2>&1; then
  echo "== installing cargo-deb"
  # Its own target dir, so that it neither waits for nor pollutes the project's build lock.
  CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}/cargo-deb-build" cargo install cargo-deb --locked
fi

target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)

# The changelog's top entry must describe this version (lintian checks the installed one).
changelog_version=$(sed -n '1s/^codex-auth-agent (\([^)]*\)).*/\1/p' debian/changelog)
case " $* " in
  *" --deb-version "*) ;;
  *)
    if [ "$changelog_version" != "$version-1" ]; then
      echo "debian/changelog's top entry is $changelog_version but Cargo.toml says $version: add an entry for $version-1" >&2
      exit 1
    fi
    ;;
esac

echo "== release build"
cargo build --release --locked --bins -p codex-auth-agent
# The crash suite's fault hook is a test-build feature; the package must not carry it.
if grep -q CODEX_AUTH_AGENT_FAULT target/release/codex-auth-agent; then
  echo "target/release/codex-auth-agent was built with the fault-injection feature; rebuild without it" >&2
  exit 1
fi
echo "== man pages and completions (packaging/gen-docs)"
rm -rf target/gen-docs
mkdir -p target
cargo run --release --locked -q -p codex-auth-agent-gen-docs -- "$repo/target/gen-docs"

echo "== cargo deb"
out=$(cargo deb --no-build --locked -p codex-auth-agent "$@" | tail -n1)
[ -f "$out" ] || { echo "cargo deb did not report a .deb (got: $out)" >&2; exit 1; }
# Without -o, the package also lands in target/debian/ of this checkout, alone (install.sh
# installs target/debian/codex-auth-agent_*.deb).
case " $* " in
  *" -o "* | *" --output "* | *" --output="*) ;;
  *)
    mkdir -p "$repo/target/debian"
    find "$repo/target/debian" -maxdepth 1 -name 'codex-auth-agent_*.deb' ! -name "$(basename "$out")" -delete
    case "$out" in
      "$repo/target/debian/"*) ;;
      *) cp -f "$out" "$repo/target/debian/" && out="$repo/target/debian/$(basename "$out")" ;;
    esac
    ;;
esac

# cargo-deb writes no md5sums; add it (as dh_md5sums does: every file but the conffiles) so
# that debsums / dpkg --verify can check the installed files.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -R "$out" "$work/pkg"
(
  cd "$work/pkg"
  find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort \
    | grep -vxF -f <(sed 's#^/##' DEBIAN/conffiles 2>/dev/null || true) \
    | tr '\n' '\0' | xargs -0 md5sum >DEBIAN/md5sums
  chmod 0644 DEBIAN/md5sums
)
dpkg-deb --root-owner-group -Zxz -b "$work/pkg" "$out" >/dev/null
dpkg-deb --info "$out" | sed -n 's/^ \(Package\|Version\|Depends\|Suggests\):/  \1:/p'

if [ "${LINTIAN:-1}" != 0 ]; then
  echo "== lintian"
  # --fail-on error: warnings are listed (with reasons) in packaging/README.md or overridden
  # in debian/lintian-overrides.
  lintian --fail-on error --display-info --info "$out" || {
    echo "lintian found errors in $out" >&2
    exit 1
  }
fi
echo "built: $out"
echo "(cargo's target dir: $target_dir)"
