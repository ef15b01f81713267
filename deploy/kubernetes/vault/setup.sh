#!/usr/bin/env bash
# Vault side of one account's refresher CronJob (README "Kubernetes"): its policy and its
# role on the Kubernetes auth method, bound to the ServiceAccount
# codex-auth-refresher-<account> in <namespace> and to the token audience "vault" that the
# CronJob's projected token carries. Run with VAULT_ADDR and an admin VAULT_TOKEN set.
#
#   deploy/kubernetes/vault/setup.sh ACCOUNT NAMESPACE [--print | --policy]
#
# --print shows the policy and the commands instead of running them; --policy prints only
# the policy (HCL), e.g. for a role on another auth method. VAULT (default
# "vault"; "bao" for OpenBao) is the CLI; AUTH_MOUNT (default "kubernetes") the path of
# the Kubernetes auth method, which must already be enabled and configured, e.g.
#   vault auth enable kubernetes
#   vault write auth/kubernetes/config kubernetes_host=https://kubernetes.default.svc
set -euo pipefail
usage() { echo "usage: $0 ACCOUNT NAMESPACE [--print | --policy]" >&2; exit 2; }
[ $# -ge 2 ] || usage
account=$1 namespace=$2 print=${3:-}
[[ $account =~ ^[a-z0-9][a-z0-9-]{0,62}$ ]] || { echo "$0: bad account name ${account@Q}" >&2; exit 2; }
[[ $namespace =~ ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$ ]] || { echo "$0: bad namespace ${namespace@Q}" >&2; exit 2; }
vault=${VAULT:-vault}
auth_mount=${AUTH_MOUNT:-kubernetes}
name=codex-auth-refresher-$account
if [ "$account" = default ]; then seed_key=codex-auth-json-b64; else seed_key=codex-auth-json-b64-$account; fi
policy=$(sed -e "s/@ACCOUNT@/$account/g" -e "s/@SEED_KEY@/$seed_key/g" "$(dirname "$0")/refresher.hcl.in")
role_args=(
  "auth/$auth_mount/role/$name"
  "bound_service_account_names=$name"
  "bound_service_account_namespaces=$namespace"
  audience=vault
  "token_policies=$name"
  token_ttl=10m
  token_max_ttl=20m
)
case $print in "" | --print | --policy) ;; *) usage ;; esac
if [ "$print" = --policy ]; then
  printf '%s\n' "$policy"
  exit 0
fi
if [ "$print" = --print ]; then
  printf '%s\n' "$policy"
  echo "$vault policy write $name - < (the policy above)"
  echo "$vault write ${role_args[*]}"
  exit 0
fi
printf '%s\n' "$policy" | "$vault" policy write "$name" -
"$vault" write "${role_args[@]}"
