package migrate

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
	etcddrv "github.com/sealrun/sealrun/storage/etcd"
	"github.com/sealrun/sealrun/storage/overlay"
)

// rawItems are n raw secrets named prefix/NNNN.
func rawItems(prefix string, n int) sliceSource {
	items := make(sliceSource, n)
	for i := range items {
		name := fmt.Sprintf("%s/%04d", prefix, i)
		items[i] = Item{Kind: secrets.KindRaw, Key: name, Origin: name,
			Model: &secrets.Raw{Name: name, Value: []byte("value-" + name)}}
	}
	return items
}

// countingBatches counts the batches a BatchStore is asked for and can
// corrupt one key's value on the batched read-back, as a broken backend
// would.
type countingBatches struct {
	BatchStore
	puts, gets atomic.Int32
	corrupt    string
}

func (c *countingBatches) PutBatch(ctx context.Context, items []storage.BatchItem) ([]int64, error) {
	c.puts.Add(1)
	return c.BatchStore.PutBatch(ctx, items)
}

func (c *countingBatches) GetBatch(ctx context.Context, ms []secrets.Model) ([]int64, error) {
	c.gets.Add(1)
	revs, err := c.BatchStore.GetBatch(ctx, ms)
	for _, m := range ms {
		if r, ok := m.(*secrets.Raw); ok && err == nil && r.Name == c.corrupt {
			r.Value = append(r.Value, 'x')
		}
	}
	return revs, err
}

// TestBatchedApply: writes go in atomic batches of BatchSize with a batched
// read-back, a value that reads back different fails only its own item, and
// a rerun finds everything unchanged.
func TestBatchedApply(t *testing.T) {
	d := newDest(t)
	src := rawItems("b", 150)
	cb := &countingBatches{BatchStore: d, corrupt: "b/0077"}
	o := opts("slice:batched")
	o.BatchSize = 50
	rep, err := Run(context.Background(), src, cb, o)
	if err != nil {
		t.Fatal(err)
	}
	if cb.puts.Load() != 3 || cb.gets.Load() != 3 {
		t.Fatalf("%d batch writes, %d batch reads; want 3 each", cb.puts.Load(), cb.gets.Load())
	}
	if rep.Counts[ResultCreated] != 149 || rep.Failed != 1 {
		t.Fatalf("report: %s", rep.Summary())
	}
	r := resultOf(rep, secrets.KindRaw, "b/0077")
	if r.Result != ResultFailed || r.Verified || !strings.Contains(r.Reason, "SHA-256 mismatch") {
		t.Fatalf("corrupted read-back: %+v", r)
	}
	for _, it := range rep.Items {
		if it.Key != "b/0077" && !it.Verified {
			t.Fatalf("%s not verified: %+v", it.Key, it)
		}
	}
	rep = mustRun(t, src, d, o)
	if rep.Counts[ResultUnchanged] != 150 || rep.Failed != 0 {
		t.Fatalf("rerun: %s", rep.Summary())
	}
}

// noBatches is a BatchStore whose backend cannot batch (like Vault).
type noBatches struct {
	BatchStore
	tries atomic.Int32
}

func (n *noBatches) PutBatch(context.Context, []storage.BatchItem) ([]int64, error) {
	n.tries.Add(1)
	return nil, fmt.Errorf("test: %w", storage.ErrBatchUnsupported)
}

// TestBatchUnsupportedFallsBack: a backend without batches is asked once,
// then every item is written on its own, with its conditions.
func TestBatchUnsupportedFallsBack(t *testing.T) {
	d := newDest(t)
	src := rawItems("nb", 40)
	// One item exists with another value: an update, with IfRevision.
	if _, err := d.Put(context.Background(), &secrets.Raw{Name: "nb/0003", Value: []byte("old")}, driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	nb := &noBatches{BatchStore: d}
	o := opts("slice:nobatch")
	o.BatchSize, o.Concurrency = 10, 1
	rep, err := Run(context.Background(), src, nb, o)
	if err != nil {
		t.Fatal(err)
	}
	if nb.tries.Load() != 1 || rep.Counts[ResultCreated] != 39 || rep.Counts[ResultUpdated] != 1 || rep.Failed != 0 {
		t.Fatalf("%d batch tries; report %s", nb.tries.Load(), rep.Summary())
	}
	m := &secrets.Raw{Name: "nb/0003"}
	if _, err := d.Get(context.Background(), m); err != nil || string(m.Value) != "value-nb/0003" {
		t.Fatalf("updated item: %v", err)
	}
}

// TestBatchConflictIsPerItem: one item of a batch written by someone else
// after the plan makes the batch fail as a whole; the retry item by item
// writes the others and reports exactly that one as a conflict.
func TestBatchConflictIsPerItem(t *testing.T) {
	ctx := context.Background()
	d := newDest(t)
	items := rawItems("cf", 64)
	plan, err := NewPlan(ctx, items, d, 4)
	if err != nil {
		t.Fatal(err)
	}
	theirs := &secrets.Raw{Name: "cf/0010", Value: []byte("theirs")}
	if _, err := d.Put(ctx, theirs, driver.PutOptions{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	rep, err := Apply(ctx, plan, nil, d, opts("slice:conflict"))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Counts[ResultCreated] != 63 || rep.Counts[ResultConflict] != 1 || rep.Failed != 1 {
		t.Fatalf("report: %s", rep.Summary())
	}
	if r := resultOf(rep, secrets.KindRaw, "cf/0010"); r.Result != ResultConflict {
		t.Fatalf("conflicting item: %+v", r)
	}
	got := &secrets.Raw{Name: "cf/0010"}
	if _, err := d.Get(ctx, got); err != nil || string(got.Value) != "theirs" {
		t.Fatalf("the concurrent write was lost: %v", err)
	}
}

// TestBatchedPlan: a rerun plans with batched reads; a value this process
// cannot open fails its batch's read, and the item-by-item retry skips just
// that item (never overwriting it) and decides the others exactly.
func TestBatchedPlan(t *testing.T) {
	ctx := context.Background()
	d := newDest(t)
	src := rawItems("bp", 100)
	if rep := mustRun(t, src, d, opts("slice:plan")); rep.Counts[ResultCreated] != 100 {
		t.Fatalf("first run: %s", rep.Summary())
	}
	// bp/0042 rewritten by a process with another master key.
	foreign := overlay.New(etcddrv.New(d.cli, "/sealrun/secrets/"), mustRing(t, newKeyT(t, "other")), overlay.Pinning)
	if _, err := foreign.Put(ctx, secrets.KindRaw+"/bp/0042", []byte(`{"name":"bp/0042","value":"b3RoZXI="}`), driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	before, err := d.cli.Get(ctx, "/sealrun/secrets/"+secrets.KindRaw+"/bp/0042")
	if err != nil {
		t.Fatal(err)
	}
	// bp/0007 changes in the source: an update.
	src[7].Model = &secrets.Raw{Name: "bp/0007", Value: []byte("changed")}
	cb := &countingBatches{BatchStore: d}
	plan, err := NewPlan(ctx, src, cb, 4)
	if err != nil {
		t.Fatal(err)
	}
	if c := plan.Count(); c[Unchanged] != 98 || c[Update] != 1 || c[Skip] != 1 || cb.gets.Load() != 2 {
		t.Fatalf("plan %v with %d batched reads", c, cb.gets.Load())
	}
	if s := plan.Steps[42]; s.Action != Skip || !strings.Contains(s.Reason, "integrity") {
		t.Fatalf("unreadable item: %s %q", s.Action, s.Reason)
	}
	rep, err := Apply(ctx, plan, nil, d, opts("slice:plan"))
	if err != nil || rep.Counts[ResultUpdated] != 1 || rep.Failed != 0 {
		t.Fatalf("apply: %v %s", err, rep.Summary())
	}
	after, err := d.cli.Get(ctx, "/sealrun/secrets/"+secrets.KindRaw+"/bp/0042")
	if err != nil || after.Kvs[0].ModRevision != before.Kvs[0].ModRevision {
		t.Fatalf("the unreadable value was overwritten (%v)", err)
	}
}

// lostAnswer commits a batch but answers as an unreachable backend would.
type lostAnswer struct {
	BatchStore
	lost atomic.Int32
}

func (l *lostAnswer) PutBatch(ctx context.Context, items []storage.BatchItem) ([]int64, error) {
	revs, err := l.BatchStore.PutBatch(ctx, items)
	if err == nil && l.lost.Add(1) == 1 {
		return nil, fmt.Errorf("test: answer lost: %w", context.DeadlineExceeded)
	}
	return revs, err
}

// TestBatchAnswerLost: a batch that committed although its write timed out
// is found by its read-back and reported created, not as conflicts with
// our own writes.
func TestBatchAnswerLost(t *testing.T) {
	d := newDest(t)
	src := rawItems("la", 30)
	la := &lostAnswer{BatchStore: d}
	o := opts("slice:lost")
	o.BatchSize, o.Concurrency = 10, 1
	rep, err := Run(context.Background(), src, la, o)
	if err != nil {
		t.Fatal(err)
	}
	if la.lost.Load() < 1 || rep.Counts[ResultCreated] != 30 || rep.Failed != 0 {
		t.Fatalf("report after a lost answer: %s", rep.Summary())
	}
}
