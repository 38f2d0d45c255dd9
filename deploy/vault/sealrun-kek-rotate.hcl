# "sealrun rotate kek": rotate the Transit KEK, then re-wrap every stored DEK
# inside Vault (rewrap never reveals a DEK, so this role cannot decrypt).
# Raising min_decryption_version afterwards (transit/keys/sealrun-kek/config)
# is deliberately left to a Vault administrator.

path "transit/keys/sealrun-kek" {
  capabilities = ["read"]
}
path "transit/keys/sealrun-kek/rotate" {
  capabilities = ["update"]
}
path "transit/rewrap/sealrun-kek" {
  capabilities = ["update"]
}
