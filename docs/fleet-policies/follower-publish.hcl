# codex-auth-agent fleet follower that may publish a new login (`codex-authctl login
# <account> --publish`): like follower.hcl, plus create/update on the human-owned seed keys.
# The rotating keys and the lease stay read only (the more specific rules below win for
# them), so this host can never rotate the fleet's credential. Assumes the KV v2 mount
# "secret" and the default key names; to allow one account only, name its seed key exactly
# (e.g. "secret/data/codex-auth-json-b64-team").

# The seed: read it, write a new login with check-and-set (create: the first version).
path "secret/data/codex-auth-json-b64*" {
  capabilities = ["create", "update", "read"]
}

path "secret/data/codex-auth-json-b64-rotating-*" {
  capabilities = ["read"]
}

path "secret/data/codex-auth-lease-*" {
  capabilities = ["read"]
}
