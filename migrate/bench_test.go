package migrate

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/secrets"
)

// sliceSource offers fixed items.
type sliceSource []Item

func (s sliceSource) Items(context.Context) ([]Item, error) { return s, nil }
func (s sliceSource) Close() error                          { return nil }

// benchN is how many secrets a benchmark moves: SEALRUN_BENCH_N (the
// reliability issue asks for 10000), default 1000 to keep runs short.
func benchN() int {
	if n, err := strconv.Atoi(os.Getenv("SEALRUN_BENCH_N")); err == nil && n > 0 {
		return n
	}
	return 1000
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

// BenchmarkMigrate moves N secrets into the overlay on embedded etcd: plan
// (one read each), CAS write, read-back verify, checkpoints.
func BenchmarkMigrate(b *testing.B) {
	cli := testenv.Etcd(b)
	n := benchN()
	items := benchItems(n)
	run := 0
	for b.Loop() {
		run++
		d := destOn(b, cli, fmt.Sprintf("/b%d/secrets/", run), fmt.Sprintf("/b%d/state/", run), newKeyT(b, "k"))
		o := Options{From: "bench", To: "bench", Verify: true, Checkpoint: true, Concurrency: 8}
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
		err := parallel(context.Background(), 8, n, func(ctx context.Context, i int) error {
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
