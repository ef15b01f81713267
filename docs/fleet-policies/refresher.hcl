# codex-auth-agent fleet refresher (one host per account): rotate the credential and hold
# the lease. Assumes the KV v2 mount "secret" and the default key names; adjust both if
# you changed `mount`, `vault_seed_key` or `vault_rotating_key`.

# The rotating credential: read it, create it once from the seed (cas=0), update it (CAS).
path "secret/data/codex-auth-json-b64-rotating-*" {
  capabilities = ["create", "update", "read"]
}

# The refresher lease (check-and-set): who may refresh each account right now.
path "secret/data/codex-auth-lease-*" {
  capabilities = ["create", "update", "read"]
}

# The human-owned seed: read only (the more specific rotating rule above wins for its keys).
path "secret/data/codex-auth-json-b64*" {
  capabilities = ["read"]
}
