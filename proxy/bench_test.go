package proxy

import (
	"context"
	"testing"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/driver"
)

// benchParallelism × GOMAXPROCS goroutines issue requests in every
// benchmark here, so the three are compared at the same concurrency.
const benchParallelism = 8

// BenchmarkRawEtcdGet is the baseline: a plain etcd Get of a small value.
func BenchmarkRawEtcdGet(b *testing.B) {
	cli := testenv.Etcd(b)
	ctx := context.Background()
	if _, err := cli.Put(ctx, "/bench/k", "value-of-about-forty-bytes-for-benching"); err != nil {
		b.Fatal(err)
	}
	b.SetParallelism(benchParallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := cli.Get(ctx, "/bench/k"); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func benchProxy(b *testing.B, cached bool) {
	store := overlayStore(b)
	f := startProxy(b, store, func(o *Options) { o.Rate, o.Burst = 1e9, 1e9 })
	ctx := context.Background()
	if _, err := store.Put(ctx, &secrets.Raw{Name: "k", Value: secrets.Secret("value-of-about-forty-bytes-for-benching")}, driver.PutOptions{}); err != nil {
		b.Fatal(err)
	}
	c := f.client(b, "admin", f.adminKey)
	b.SetParallelism(benchParallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			var err error
			if cached {
				_, err = c.Get(ctx, "k")
			} else {
				_, err = c.GetFresh(ctx, "k")
			}
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkProxyGetUncached: over the socket, authenticated, authorized,
// audited (fsync'd, group commit), decrypted from the overlay on etcd.
func BenchmarkProxyGetUncached(b *testing.B) { benchProxy(b, false) }

// BenchmarkProxyGetCached: the client's watch-invalidated cache.
func BenchmarkProxyGetCached(b *testing.B) { benchProxy(b, true) }
