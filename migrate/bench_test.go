package migrate

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sealrun/sealrun/internal/parallel"
	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/driver"
	etcddrv "github.com/sealrun/sealrun/storage/etcd"
	"github.com/sealrun/sealrun/storage/overlay"
)

// sliceSource offers fixed items.
type sliceSource []Item

func (s sliceSource) Items(context.Context) ([]Item, error) { return s, nil }
func (s sliceSource) Close() error                          { return nil }

// benchN is how many secrets a benchmark moves: SEALRUN_BENCH_N, default
// the 10,000 the migration issue names.
func benchN() int {
	if n, err := strconv.Atoi(os.Getenv("SEALRUN_BENCH_N")); err == nil && n > 0 {
		return n
	}
	return 10000
}

func benchItems(n int) sliceSource {
	items := make(sliceSource, n)
	for i := range items {
		name := fmt.Sprintf("bench/%06d", i)
		items[i] = Item{Kind: secrets.KindRaw, Key: name, Origin: name,
			Model: &secrets.Raw{Name: name, Value: []byte(fmt.Sprintf("secret-value-%06d-0123456789abcdef", i))}}
	}
	return items
}

// benchConcurrency is the requests in flight of BenchmarkMigrate and of its
// baselines: the issue compares them at the same concurrency.
const benchConcurrency = 8

// BenchmarkMigrate moves N secrets into the overlay on embedded etcd: plan
// (one listing, since all are absent), encrypted CAS writes in atomic
// batches of driver.MaxBatch, a batched read-back verify, checkpoints.
func BenchmarkMigrate(b *testing.B) {
	cli := testenv.Etcd(b)
	n := benchN()
	items := benchItems(n)
	run := 0
	for b.Loop() {
		run++
		d := destOn(b, cli, fmt.Sprintf("/b%d/secrets/", run), fmt.Sprintf("/b%d/state/", run), newKeyT(b, "k"))
		o := Options{From: "bench", To: "bench", Verify: true, Checkpoint: true, Concurrency: benchConcurrency}
		rep, err := Run(context.Background(), items, d, o)
		if err != nil || rep.Counts[ResultCreated] != n {
			b.Fatalf("%v %s", err, rep.Summary())
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "secrets/s")
}

// BenchmarkRawPut is the baseline: the same values put into etcd directly,
// with the same concurrency, no encryption, no checks.
func BenchmarkRawPut(b *testing.B) {
	cli := testenv.Etcd(b)
	n := benchN()
	items := benchItems(n)
	run := 0
	for b.Loop() {
		run++
		err := parallel.Run(context.Background(), benchConcurrency, n, func(ctx context.Context, i int) error {
			m := items[i].Model.(*secrets.Raw)
			_, err := cli.Put(ctx, fmt.Sprintf("/raw%d/%s", run, m.Name), string(m.Value))
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "secrets/s")
}

// BenchmarkRawPutBatch is the baseline with migrate's batching: the same
// values in etcd transactions of driver.MaxBatch plain puts, the same
// concurrency, no encryption, conditions, verification or checkpoints. The
// gap to BenchmarkMigrate is what those cost.
func BenchmarkRawPutBatch(b *testing.B) {
	cli := testenv.Etcd(b)
	n := benchN()
	items := benchItems(n)
	batches := (n + driver.MaxBatch - 1) / driver.MaxBatch
	run := 0
	for b.Loop() {
		run++
		err := parallel.Run(context.Background(), benchConcurrency, batches, func(ctx context.Context, j int) error {
			var ops []clientv3.Op
			for _, it := range items[j*driver.MaxBatch : min((j+1)*driver.MaxBatch, n)] {
				m := it.Model.(*secrets.Raw)
				ops = append(ops, clientv3.OpPut(fmt.Sprintf("/rawb%d/%s", run, m.Name), string(m.Value)))
			}
			_, err := cli.Txn(ctx).Then(ops...).Commit()
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "secrets/s")
}

// BenchmarkRotate100k re-seals N records (SEALRUN_ROTATE_N, default 100000,
// as the reliability issue asks) under a new master key on embedded etcd
// while 4 readers holding the old and new keys read random records. It
// reports records/s and reader-failures, which must be 0. Each iteration
// rotates to a fresh key, so every iteration re-seals every record.
func BenchmarkRotate100k(b *testing.B) {
	n := 100000
	if v, err := strconv.Atoi(os.Getenv("SEALRUN_ROTATE_N")); err == nil && v > 0 {
		n = v
	}
	ctx := context.Background()
	cli := testenv.Etcd(b)
	keys := []overlay.Key{newKeyT(b, "k0")}
	ring := func() *overlay.KeyRing {
		r, err := overlay.NewKeyRing(keys[len(keys)-1], keys[:len(keys)-1]...)
		if err != nil {
			b.Fatal(err)
		}
		return r
	}
	under := etcddrv.New(cli, "/rot/secrets/")
	value := func(i int) string { return fmt.Sprintf("value-%06d-0123456789abcdef", i) }
	seed := overlay.New(under, ring(), overlay.Pinning)
	err := parallel.Run(ctx, benchConcurrency, (n+driver.MaxBatch-1)/driver.MaxBatch, func(ctx context.Context, j int) error {
		var puts []driver.BatchPut
		for i := j * driver.MaxBatch; i < min((j+1)*driver.MaxBatch, n); i++ {
			puts = append(puts, driver.BatchPut{Key: fmt.Sprintf("r/%06d", i), Value: []byte(value(i))})
		}
		_, err := seed.PutBatch(ctx, puts)
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	var reads, failures atomic.Int64
	for b.Loop() {
		keys = append(keys, newKeyT(b, fmt.Sprintf("k%d", len(keys))))
		r := ring()
		reader := overlay.New(under, r, overlay.Pinning)
		rctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w * (n / 4); rctx.Err() == nil; i = (i + 7919) % n {
					e, err := reader.Get(rctx, fmt.Sprintf("r/%06d", i))
					if rctx.Err() != nil {
						return
					}
					if err != nil || string(e.Value) != value(i) {
						failures.Add(1)
					}
					reads.Add(1)
				}
			}()
		}
		rep, err := overlay.Reencrypt(ctx, under, r, overlay.Pinning, overlay.RotateOptions{BatchSize: driver.MaxBatch})
		stop()
		wg.Wait()
		if err != nil || rep.Resealed != n || len(rep.Failed) != 0 || rep.Referenced[r.CurrentID()] != n {
			b.Fatalf("rotate: %v; resealed %d of %d, %d failed", err, rep.Resealed, n, len(rep.Failed))
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "records/s")
	b.ReportMetric(float64(reads.Load())/b.Elapsed().Seconds(), "reads/s")
	b.ReportMetric(float64(failures.Load()), "reader-failures")
	if failures.Load() != 0 {
		b.Fatalf("%d of %d concurrent reads failed during rotation", failures.Load(), reads.Load())
	}
}
