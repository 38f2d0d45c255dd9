# sealrun secrets proxy, secrets.backend: overlay with a Transit KEK
# (secrets.overlay.transit: mount "transit", key "sealrun-kek").
# The proxy unwraps the stored DEKs at start-up (decrypt) and wraps the first
# DEK when there is none (encrypt). It cannot read, rotate, export or
# reconfigure the key. Token renewal: see sealrun-proxy-kv.hcl.

path "transit/decrypt/sealrun-kek" {
  capabilities = ["update"]
}
path "transit/encrypt/sealrun-kek" {
  capabilities = ["update"]
}
