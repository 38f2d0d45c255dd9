# sealrun secrets proxy, secrets.backend: vault (KV v2 at "secret/", prefix "sealrun").
# Adjust "secret" and "sealrun" if secrets.vault.mount / prefix differ.
# Token renewal and lookup (auth/token/renew-self, lookup-self) come from
# Vault's built-in "default" policy, which tokens carry unless created with
# no_default_policy; if yours do not, add the token-self stanza below.

# Read and write values (create for new keys, update for CAS over a version).
path "secret/data/sealrun/*" {
  capabilities = ["create", "read", "update"]
}

# Versions for compare-and-set, LIST for List and Watch, delete removes a key
# with all its versions.
path "secret/metadata/sealrun/*" {
  capabilities = ["read", "list", "delete"]
}
path "secret/metadata/sealrun" {
  capabilities = ["list"]
}

# path "auth/token/renew-self"  { capabilities = ["update"] }
# path "auth/token/lookup-self" { capabilities = ["read"] }
