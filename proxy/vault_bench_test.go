package proxy

import (
	"context"
	"testing"

	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/driver"
)

// The Vault pair: the same value read straight from Vault's KV v2 API and
// through the proxy backed by the Vault driver, at benchParallelism, both
// uncached at the client. The proxy runs as Run configures it for Vault:
// no server-side value cache (Vault's watch polls; see Cache.Values), so
// every GET is a Vault read plus auth, audit fsync and the socket round trip.

const vaultBenchValue = "value-of-about-forty-bytes-for-benching"

// BenchmarkVaultKVGetDirect is the baseline: a KV v2 read with
// github.com/hashicorp/vault/api, as the Vault driver does it.
func BenchmarkVaultKVGetDirect(b *testing.B) {
	store, vc, prefix := vaultEnv(b)
	ctx := context.Background()
	if _, err := store.Put(ctx, &secrets.Raw{Name: "k", Value: secrets.Secret(vaultBenchValue)}, driver.PutOptions{}); err != nil {
		b.Fatal(err)
	}
	kv := vc.KVv2("secret")
	path := prefix + "/" + secrets.KindRaw + "/k"
	if s, err := kv.Get(ctx, path); err != nil || s.Data["value"] == nil {
		b.Fatalf("direct read of the driver's value: %v", err)
	}
	b.SetParallelism(benchParallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s, err := kv.Get(ctx, path)
			if err != nil || s.Data["value"] == nil {
				b.Errorf("get: %v", err)
				return
			}
		}
	})
}

// BenchmarkProxyGetVault: GET through the proxy over the socket,
// authenticated, authorized and audited, backed by the Vault driver.
func BenchmarkProxyGetVault(b *testing.B) {
	store, _, _ := vaultEnv(b)
	f := startProxy(b, store, func(o *Options) { o.Rate, o.Burst, o.ValueCache = 1e9, 1e9, 0 })
	ctx := context.Background()
	if _, err := store.Put(ctx, &secrets.Raw{Name: "bench/k", Value: secrets.Secret(vaultBenchValue)}, driver.PutOptions{}); err != nil {
		b.Fatal(err)
	}
	c := f.client(b, "admin", f.adminKey)
	if v, err := c.GetFresh(ctx, "bench/k"); err != nil || string(v) != vaultBenchValue {
		b.Fatalf("first read: %v", err) // never print the value
	}
	before := f.srv.o.Audit.Stats()
	b.SetParallelism(benchParallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.GetFresh(ctx, "bench/k"); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	reportAudit(b, before, f.srv.o.Audit.Stats())
}
