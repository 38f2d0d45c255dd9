package runner

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/etcd"
	"github.com/sealrun/sealrun/storage/memory"
)

func etcdJobs(t *testing.T) *Jobs {
	t.Helper()
	return &Jobs{Store: etcdStateStore(t)}
}

// etcdStateStore is a storage service whose state backend (JobRecords) is
// a fresh embedded etcd.
func etcdStateStore(t testing.TB) *storage.Service {
	t.Helper()
	st, err := storage.New(memory.New(), etcd.New(testenv.Etcd(t), "/s/"), storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// Concurrent claims and finishes are coalesced into shared transactions and
// each caller still gets its own record's revision.
func TestJobsBatchCoalesces(t *testing.T) {
	j := etcdJobs(t)
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			id, now := fmt.Sprintf("m%d", i), time.Now()
			cl, c, err := j.Claim(t.Context(), "q", id, now)
			if err != nil || cl != verdictNew {
				errs <- fmt.Errorf("claim %s: %v %v", id, cl, err)
				return
			}
			// Finish conditions on the revision Claim returned: a wrong
			// revision from the batch would fail here.
			if err := finishJob(t.Context(), c, i%3); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	batches, items := j.batch.batches.Load(), j.batch.items.Load()
	if batches == 0 || items <= batches {
		t.Errorf("%d puts in %d multi-put batches: nothing coalesced", items, batches)
	}
	for i := range n {
		rec := &secrets.JobRecord{MessageID: fmt.Sprintf("m%d", i)}
		if _, err := j.Store.Get(t.Context(), rec); err != nil {
			t.Fatal(err)
		}
		if rec.State != StateFinished || rec.ExitStatus == nil || *rec.ExitStatus != i%3 || rec.Responded.IsZero() {
			t.Fatalf("record %s: state %q exit %v", rec.MessageID, rec.State, rec.ExitStatus)
		}
	}
	// A second copy of a finished message is still told apart per item.
	if cl, _, err := j.Claim(t.Context(), "q", "m7", time.Now()); err != nil || cl != verdictFinished {
		t.Fatalf("claim of a finished message: %v %v", cl, err)
	}
}

// A batch with one failing condition writes nothing; the batcher then
// replays it item by item so only the conflicting caller sees Conflict.
func TestJobsBatchConflictFallsBack(t *testing.T) {
	j := etcdJobs(t)
	ctx := t.Context()
	taken := &secrets.JobRecord{MessageID: "taken", State: StateRunning}
	if _, err := j.Store.Put(ctx, taken, driver.PutOptions{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	var batch []*batchPut
	for _, id := range []string{"a", "taken", "b"} {
		m := &secrets.JobRecord{MessageID: id, State: StateRunning}
		batch = append(batch, &batchPut{ctx: ctx, item: storage.BatchItem{Model: m, Opts: driver.PutOptions{IfAbsent: true}},
			key: m.Kind() + "/" + m.Key(), done: make(chan struct{})})
	}
	j.batch.write(j.Store, batch)
	for _, p := range batch {
		<-p.done
	}
	if batch[0].err != nil || batch[2].err != nil || batch[0].rev == 0 || batch[2].rev == 0 {
		t.Fatalf("free records: %v %v", batch[0].err, batch[2].err)
	}
	if storage.Code(batch[1].err) != driver.Conflict {
		t.Fatalf("taken record: %v, want Conflict", batch[1].err)
	}
	if j.batch.unsupported.Load() {
		t.Fatal("a Conflict marked batching unsupported")
	}
}

// Two puts of one record never share a transaction (etcd refuses a key
// twice); callers that gave up are dropped before the write.
func TestJobsBatchTake(t *testing.T) {
	var b putBatcher
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	mk := func(ctx context.Context, key string) *batchPut {
		return &batchPut{ctx: ctx, key: key, done: make(chan struct{})}
	}
	dead := mk(gone, "JobRecord/x")
	b.pending = []*batchPut{mk(t.Context(), "JobRecord/a"), mk(t.Context(), "JobRecord/a"), dead, mk(t.Context(), "JobRecord/b")}
	for i := 0; i < 2*driver.MaxBatch; i++ {
		b.pending = append(b.pending, mk(t.Context(), fmt.Sprintf("JobRecord/n%d", i)))
	}
	batch := b.take()
	if len(batch) != driver.MaxBatch {
		t.Fatalf("batch of %d, want %d", len(batch), driver.MaxBatch)
	}
	seen := map[string]bool{}
	for _, p := range batch {
		if seen[p.key] {
			t.Fatalf("%s twice in one batch", p.key)
		}
		seen[p.key] = true
	}
	select {
	case <-dead.done:
		if dead.err == nil {
			t.Fatal("cancelled put settled without error")
		}
	default:
		t.Fatal("cancelled put left pending")
	}
	if len(b.pending) != 4+2*driver.MaxBatch-1-driver.MaxBatch {
		t.Fatalf("%d left pending", len(b.pending))
	}
	if b.pending[0].key != "JobRecord/a" {
		t.Fatalf("the second put of a record did not wait for the next batch: %s first", b.pending[0].key)
	}
}

// hiddenBatcher is a real driver with its Batcher method hidden, the way a
// backend without transactions (Vault) looks to the Service.
type hiddenBatcher struct{ driver.Driver }

// A backend that cannot batch gets plain puts, with the same outcomes.
func TestJobsBatchUnsupported(t *testing.T) {
	st, err := storage.New(memory.New(), hiddenBatcher{memory.New()}, storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	j := &Jobs{Store: st}
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			id, now := fmt.Sprintf("m%d", i), time.Now()
			_, c, err := j.Claim(t.Context(), "q", id, now)
			if err == nil {
				err = finishJob(t.Context(), c, 0)
			}
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := j.batch.batches.Load(); n > 0 {
		t.Fatalf("%d batches written on a backend without Batcher", n)
	}
	if _, _, err := j.Claim(t.Context(), "q", "m1", time.Now()); err != nil {
		t.Fatalf("claim of a finished message: %v", err)
	}
}
