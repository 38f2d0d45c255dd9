package runner

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
)

// putBatcher is a group commit under the Jobs methods: conditional JobRecord
// puts from concurrent handlers that arrive while a batch is being written
// are written together by the next batch, as one all-or-nothing transaction
// (storage.Service.PutBatch). Nothing waits for a timer: a put that finds
// no batch in flight starts one at once, so a lone message pays one round
// trip as before, and under load the batch grows with the round trip.
//
// Semantics stay those of one Put per record: a batch whose conditions do
// not all hold writes nothing (Conflict, without saying which item), so it
// is replayed item by item and each caller gets its own exact outcome.
//
// The zero value is ready to use.
type putBatcher struct {
	mu      sync.Mutex
	pending []*batchPut
	// flushers is how many batches are being written (at most
	// maxFlushers).
	flushers int
	// unsupported is set once the backend said it cannot batch (Vault):
	// from then on puts go straight to Put.
	unsupported atomic.Bool

	// stats, for tests and benchmarks: batches written and items in them.
	batches, items atomic.Int64
}

// maxFlushers is how many batches may be in flight at once: one is the
// textbook group commit, and measured no slower than two (etcd already
// shares an fsync between concurrent transactions) with larger batches.
var maxFlushers = 1

// batchPut is one caller's put waiting for its batch.
type batchPut struct {
	ctx  context.Context
	item storage.BatchItem
	key  string // kind/key: two puts of one record never share a batch
	done chan struct{}
	rev  int64
	err  error
}

// put stores m like st.Put(ctx, m, opts) would, possibly in one transaction
// with other callers' puts.
func (b *putBatcher) put(ctx context.Context, st *storage.Service, m secrets.Model, opts driver.PutOptions) (int64, error) {
	if b.unsupported.Load() {
		return st.Put(ctx, m, opts)
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	p := &batchPut{ctx: ctx, item: storage.BatchItem{Model: m, Opts: opts}, key: m.Kind() + "/" + m.Key(),
		done: make(chan struct{})}
	b.mu.Lock()
	b.pending = append(b.pending, p)
	if b.flushers < maxFlushers {
		b.flushers++
		go b.flush(st)
	}
	b.mu.Unlock()
	select {
	case <-p.done:
		return p.rev, p.err
	case <-ctx.Done():
		// Like a Put cancelled in flight: the write may or may not happen.
		return 0, ctx.Err()
	}
}

// flush writes batches until nothing is pending.
func (b *putBatcher) flush(st *storage.Service) {
	for {
		b.mu.Lock()
		batch := b.take()
		if len(batch) == 0 {
			b.flushers--
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		b.write(st, batch)
	}
}

// take removes up to driver.MaxBatch live puts of distinct records from
// pending (a transaction may not name a key twice); the rest wait for the
// next batch. Callers that gave up are dropped. b.mu is held.
func (b *putBatcher) take() []*batchPut {
	var batch, rest []*batchPut
	seen := make(map[string]bool, len(b.pending))
	for _, p := range b.pending {
		switch {
		case p.ctx.Err() != nil:
			p.err = p.ctx.Err()
			close(p.done)
		case len(batch) < driver.MaxBatch && !seen[p.key]:
			seen[p.key] = true
			batch = append(batch, p)
		default:
			rest = append(rest, p)
		}
	}
	b.pending = rest
	return batch
}

// write stores one batch and settles its callers.
func (b *putBatcher) write(st *storage.Service, batch []*batchPut) {
	if len(batch) == 1 {
		// A batch of one is a plain put: exact error, caller's context.
		p := batch[0]
		p.rev, p.err = st.Put(p.ctx, p.item.Model, p.item.Opts)
		b.settle(batch)
		return
	}
	items := make([]storage.BatchItem, len(batch))
	for i, p := range batch {
		items[i] = p.item
	}
	// The batch belongs to no single caller: a caller that gives up must
	// not fail the others' writes. The Service bounds it with its timeout.
	revs, err := st.PutBatch(context.Background(), items)
	switch {
	case err == nil:
		for i, p := range batch {
			p.rev = revs[i]
		}
		b.batches.Add(1)
		b.items.Add(int64(len(batch)))
		b.settle(batch)
	case errors.Is(err, storage.ErrBatchUnsupported) || storage.Code(err) == driver.Conflict:
		if errors.Is(err, storage.ErrBatchUnsupported) {
			b.unsupported.Store(true)
		}
		// Which condition failed is unknown: each caller's own put says.
		var wg sync.WaitGroup
		for _, p := range batch {
			wg.Go(func() { p.rev, p.err = st.Put(p.ctx, p.item.Model, p.item.Opts) })
		}
		wg.Wait()
		b.settle(batch)
	default:
		// The store failed (unavailable, timeout): every put of the batch
		// failed the same way, and the caller wraps it with its own id.
		for _, p := range batch {
			p.err = err
		}
		b.settle(batch)
	}
}

func (b *putBatcher) settle(batch []*batchPut) {
	for _, p := range batch {
		close(p.done)
	}
}

// put is every JobRecord write of Jobs: Store.Put, group-committed.
func (j *Jobs) put(ctx context.Context, m secrets.Model, opts driver.PutOptions) (int64, error) {
	return j.batch.put(ctx, j.Store, m, opts)
}
