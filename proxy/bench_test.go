package proxy

import (
	"context"
	"testing"
	"time"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/proxy/audit"
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

func benchProxy(b *testing.B, cached, serverCache bool) {
	store := overlayStore(b)
	f := startProxy(b, store, func(o *Options) {
		o.Rate, o.Burst = 1e9, 1e9
		if !serverCache {
			o.ValueCache = 0
		}
	})
	ctx := context.Background()
	if _, err := store.Put(ctx, &secrets.Raw{Name: "k", Value: secrets.Secret("value-of-about-forty-bytes-for-benching")}, driver.PutOptions{}); err != nil {
		b.Fatal(err)
	}
	c := f.client(b, "admin", f.adminKey)
	if serverCache {
		waitValueCache(b, f)
	}
	before := f.srv.o.Audit.Stats()
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
	b.StopTimer()
	if !cached { // cached GETs rarely reach the server
		reportAudit(b, before, f.srv.o.Audit.Stats())
	}
}

// reportAudit reports the group commit's batching over the timed part.
func reportAudit(b *testing.B, before, after audit.Stats) {
	if syncs := after.Syncs - before.Syncs; syncs > 0 {
		b.ReportMetric(float64(after.Lines-before.Lines)/float64(syncs), "lines/fsync")
		b.ReportMetric(float64((after.SyncTime-before.SyncTime).Microseconds())/float64(syncs), "µs/fsync")
	}
}

// waitValueCache waits until the server's value cache watches every kind,
// so a benchmark measures the steady state.
func waitValueCache(b *testing.B, f *fixture) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		f.srv.values.mu.RLock()
		n := 0
		for _, live := range f.srv.values.live {
			if live {
				n++
			}
		}
		f.srv.values.mu.RUnlock()
		if n == len(valueKinds()) {
			return
		}
		if time.Now().After(deadline) {
			b.Fatal("value cache watches not established within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// BenchmarkProxyGetUncached: over the socket, authenticated, authorized,
// audited (fsync'd, group commit); the client's cache is bypassed, the
// server's watch-invalidated value cache is on (as Run sets it up for the
// overlay), so the backend is read only when a value changes.
func BenchmarkProxyGetUncached(b *testing.B) { benchProxy(b, false, true) }

// BenchmarkProxyGetBackend: as ProxyGetUncached with the server's value
// cache off: every GET reads etcd and decrypts the overlay's JWE.
func BenchmarkProxyGetBackend(b *testing.B) { benchProxy(b, false, false) }

// BenchmarkProxyGetCached: the client's watch-invalidated cache.
func BenchmarkProxyGetCached(b *testing.B) { benchProxy(b, true, true) }
