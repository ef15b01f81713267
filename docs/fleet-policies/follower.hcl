# codex-auth-agent fleet follower: read only. Installs the rotating credential (or the
# seed before the first rotation) and shows the lease holder; never writes.
path "secret/data/codex-auth-json-b64*" {
  capabilities = ["read"]
}

path "secret/data/codex-auth-lease-*" {
  capabilities = ["read"]
}
