package proxy

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
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
	cpu := processCPU()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := cli.Get(ctx, "/bench/k"); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	reportCPU(b, cpu)
}

// processCPU is the CPU time this process (client, server and embedded
// etcd alike) has used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports CPU µs per operation since since. With every core
// busy, ops/s ≈ cores / cpu-µs/op, so the ratio of two benchmarks' CPU per
// op bounds the ratio of their throughputs on this machine.
func reportCPU(b *testing.B, since time.Duration) {
	b.ReportMetric(float64((processCPU()-since).Microseconds())/float64(b.N), "cpu-µs/op")
}

func benchProxy(b *testing.B, cached, serverCache bool) {
	benchProxyAudit(b, cached, serverCache, nil)
}

// benchProxyAudit is benchProxy with the audit log al instead of one in
// the fixture's directory, when al is not nil.
func benchProxyAudit(b *testing.B, cached, serverCache bool, al *audit.Logger) {
	store := overlayStore(b)
	f := startProxy(b, store, func(o *Options) {
		o.Rate, o.Burst = 1e9, 1e9
		if !serverCache {
			o.ValueCache = 0
		}
		if al != nil {
			o.Audit = al
		}
	})
	ctx := context.Background()
	if _, err := store.Put(ctx, &secrets.Raw{Name: "bench/k", Value: secrets.Secret("value-of-about-forty-bytes-for-benching")}, driver.PutOptions{}); err != nil {
		b.Fatal(err)
	}
	c := f.client(b, "admin", f.adminKey)
	if serverCache {
		waitValueCache(b, f)
	}
	before := f.srv.o.Audit.Stats()
	b.SetParallelism(benchParallelism)
	cpu := processCPU()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			var err error
			if cached {
				_, err = c.Get(ctx, "bench/k")
			} else {
				_, err = c.GetFresh(ctx, "bench/k")
			}
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	reportCPU(b, cpu)
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

// The two benchmarks below are diagnostics for the uncached GET: they split
// its cost between the durable audit line every request must have and the
// rest of the request.

// BenchmarkAuditOnly: the audit log alone, with the same concurrency, the
// same line as a GET and the same disk as ProxyGetUncached; what the
// required fsync'd, group-committed audit line costs with no HTTP, auth or
// backend around it.
func BenchmarkAuditOnly(b *testing.B) {
	al, err := audit.Open(filepath.Join(b.TempDir(), "audit.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer al.Close()
	uid, pid := os.Getuid(), os.Getpid()
	before := al.Stats()
	b.SetParallelism(benchParallelism)
	cpu := processCPU()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := al.Log(context.Background(), audit.Entry{Credential: "admin", PeerUID: &uid, PeerPID: &pid, Verb: "GET", Path: "/secrets/k", Status: 200, Outcome: "allowed"}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	reportCPU(b, cpu)
	reportAudit(b, before, al.Stats())
}

// BenchmarkProxyGetUncachedAuditTmpfs: ProxyGetUncached with the audit log
// on tmpfs (/dev/shm), where fsync costs nothing. Not a supported setup (the
// log would not survive a power loss); it shows what the proxy costs
// without the disk.
func BenchmarkProxyGetUncachedAuditTmpfs(b *testing.B) {
	var st syscall.Statfs_t
	const tmpfsMagic = 0x01021994
	if err := syscall.Statfs("/dev/shm", &st); err != nil || st.Type != tmpfsMagic {
		b.Skip("no tmpfs at /dev/shm")
	}
	dir, err := os.MkdirTemp("/dev/shm", "sealrun-bench-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	al, err := audit.Open(filepath.Join(dir, "audit.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer al.Close()
	benchProxyAudit(b, false, true, al)
}

// BenchmarkProxyGetUncachedAuditWrite: ProxyGetUncached with audit.sync
// write: each line written to the file before the answer, not fsync'd
// (Vault's file audit device guarantee), on the same disk.
func BenchmarkProxyGetUncachedAuditWrite(b *testing.B) {
	al, err := audit.OpenWith(filepath.Join(b.TempDir(), "audit.log"), audit.Options{Sync: audit.SyncWrite})
	if err != nil {
		b.Fatal(err)
	}
	defer al.Close()
	benchProxyAudit(b, false, true, al)
}
