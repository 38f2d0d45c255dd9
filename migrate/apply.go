package migrate

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sealrun/sealrun/internal/parallel"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
)

// ConflictPolicy says what to do when the destination changed between the
// plan's read and the write.
type ConflictPolicy string

// Conflict policies.
const (
	// OnConflictFail leaves the destination as is and fails the item.
	OnConflictFail ConflictPolicy = "fail"
	// OnConflictSkip leaves the destination as is and reports the item skipped.
	OnConflictSkip ConflictPolicy = "skip"
	// OnConflictOverwrite re-reads the destination and writes again (still
	// with compare-and-set, so it never overwrites blindly).
	OnConflictOverwrite ConflictPolicy = "overwrite"
)

// ParseConflictPolicy parses fail, skip or overwrite.
func ParseConflictPolicy(s string) (ConflictPolicy, error) {
	switch p := ConflictPolicy(s); p {
	case OnConflictFail, OnConflictSkip, OnConflictOverwrite:
		return p, nil
	case "":
		return OnConflictFail, nil
	}
	return "", fmt.Errorf("on-conflict %q: want fail, skip or overwrite", s)
}

// Options configure Run and Apply.
type Options struct {
	// From and To name the source and destination in the report and the
	// checkpoint; they must not contain credentials.
	From, To   string
	OnConflict ConflictPolicy
	// Verify reads every write back and compares SHA-256 digests.
	Verify bool
	// DeleteSource deletes each item from the source once it is verified in
	// the destination. It requires Verify and a Source that is a Deleter.
	DeleteSource bool
	// DryRun stops after the plan.
	DryRun bool
	// Concurrency bounds reads and writes in flight (default 8): items, or
	// batches of items when the destination is a BatchStore.
	Concurrency int
	// BatchSize is how many writes go into one atomic batch when the
	// destination is a BatchStore (default and maximum driver.MaxBatch; 1
	// writes item by item).
	BatchSize int
	// Checkpoint enables resuming from (and saving to) a checkpoint in the
	// destination's state store, every CheckpointEvery items (default:
	// 5% of the items, at least 100).
	Checkpoint      bool
	CheckpointEvery int
	// Progress, if set, is called after each item (from several goroutines,
	// serialized).
	Progress func(done, total int)
}

// ErrIncomplete is returned (wrapped) by Run when the run stopped before
// every item was handled; rerunning resumes.
var ErrIncomplete = errors.New("migration incomplete")

// Run reads src, plans against dst and, unless DryRun, applies the plan.
// The report is returned also with an error, as far as the run got.
func Run(ctx context.Context, src Source, dst Store, opts Options) (*Report, error) {
	if opts.DeleteSource {
		if _, ok := src.(Deleter); !ok {
			return nil, fmt.Errorf("--delete-source: source %s does not support deleting items", opts.From)
		}
		if !opts.Verify {
			return nil, errors.New("--delete-source needs --verify: a source item is only deleted once its copy is verified")
		}
	}
	items, err := src.Items(ctx)
	if err != nil {
		return nil, fmt.Errorf("read source %s: %w", opts.From, err)
	}
	plan, err := NewPlan(ctx, items, dst, opts.Concurrency)
	if err != nil {
		return nil, err
	}
	return Apply(ctx, plan, src, dst, opts)
}

// Apply carries out plan: creates with IfAbsent, updates with the planned
// revision, each write read back and verified, the source item deleted when
// asked, progress checkpointed. src may be nil unless DeleteSource.
func Apply(ctx context.Context, plan *Plan, src Source, dst Store, opts Options) (*Report, error) {
	if opts.Concurrency <= 0 {
		opts.Concurrency = 8
	}
	if opts.BatchSize <= 0 || opts.BatchSize > driver.MaxBatch {
		opts.BatchSize = driver.MaxBatch
	}
	if opts.CheckpointEvery <= 0 {
		// A save rewrites the whole checkpoint, so save about 20 times per
		// run (at least every 100 items): a crash repeats at most 5%.
		opts.CheckpointEvery = max(100, len(plan.Steps)/20)
	}
	if opts.OnConflict == "" {
		opts.OnConflict = OnConflictFail
	}
	rep := &Report{From: opts.From, To: opts.To, DryRun: opts.DryRun, Started: time.Now().UTC(),
		Items: make([]ItemResult, len(plan.Steps))}
	for i, s := range plan.Steps {
		rep.Items[i] = ItemResult{Kind: s.Item.Kind, Key: s.Item.Key, Origin: s.Item.Origin, Planned: s.Action,
			Result: ResultNotRun, Reason: s.Reason}
	}
	defer func() { rep.Finished = time.Now().UTC(); rep.tally() }()

	if opts.DryRun {
		for i, s := range plan.Steps {
			rep.Items[i].Result = dryResult(s.Action)
			rep.Items[i].Failed = s.Action == Invalid
		}
		return rep, nil
	}

	var cp *checkpointer
	if opts.Checkpoint {
		rep.RunID = RunID(opts.From, opts.To)
		var err error
		cp, rep.Resumed, err = loadCheckpoint(ctx, dst, rep.RunID, opts.From, opts.To, opts.CheckpointEvery)
		if err != nil {
			return rep, err
		}
	}
	a := &applier{dst: dst, opts: opts, cp: cp}
	a.del, _ = src.(Deleter)
	if bs, ok := dst.(BatchStore); ok && opts.BatchSize != 1 {
		a.batch = bs
	}
	units := a.units(plan.Steps)
	var progMu sync.Mutex
	done := 0
	err := parallel.Run(ctx, opts.Concurrency, len(units), func(ctx context.Context, u int) error {
		idx := units[u]
		var res []ItemResult
		if len(idx) == 1 {
			res = []ItemResult{a.step(ctx, plan.Steps[idx[0]])}
		} else {
			res = a.stepBatch(ctx, plan.Steps, idx)
		}
		var ids, results []string
		for j, i := range idx {
			r := &res[j]
			if cp != nil {
				id := plan.Steps[i].Item.ID()
				r.PreviousRun = cp.previous(id)
				if !r.Failed && (r.Result == ResultCreated || r.Result == ResultUpdated || r.Result == ResultUnchanged) {
					ids, results = append(ids, id), append(results, r.Result)
				}
			}
		}
		var cerr error
		if len(ids) > 0 {
			// One record per unit: a batch is checkpointed as a whole.
			cerr = cp.done(ctx, ids, results)
		}
		for j, i := range idx {
			rep.Items[i] = res[j]
		}
		if cerr != nil {
			return cerr
		}
		if opts.Progress != nil {
			progMu.Lock()
			for range idx {
				done++
				opts.Progress(done, len(plan.Steps))
			}
			progMu.Unlock()
		}
		return ctx.Err()
	})
	if cp != nil {
		// Save what was done even when cancelled: that is what a rerun resumes from.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err != nil {
			if ferr := cp.flush(fctx); ferr != nil {
				err = errors.Join(err, ferr)
			}
		} else if rerr := cp.remove(fctx); rerr != nil {
			err = rerr
		}
	}
	if err != nil {
		return rep, fmt.Errorf("%w (rerun the same command to resume): %w", ErrIncomplete, err)
	}
	return rep, nil
}

func dryResult(a Action) string {
	switch a {
	case Create:
		return ResultWouldCreate
	case Update:
		return ResultWouldUpdate
	case Unchanged:
		return ResultUnchanged
	case Skip:
		return ResultSkipped
	}
	return ResultInvalid
}

type applier struct {
	dst   Store
	batch BatchStore // nil: write item by item
	del   Deleter
	opts  Options
	cp    *checkpointer
	// unbatched is set once the destination says it cannot batch (Vault):
	// later batches go item by item without asking again.
	unbatched atomic.Bool
}

// maxBatchBytes bounds the encoded values of one batch, so that with
// encryption's expansion a batch stays well under etcd's default 1.5 MiB
// request limit. A single larger item is written alone.
const maxBatchBytes = 512 << 10

// units groups the plan's steps into the units Apply runs in parallel:
// writes (creates and updates) into batches of up to BatchSize that route to
// the same backend, everything else one step at a time.
func (a *applier) units(steps []Step) [][]int {
	var units [][]int
	type pending struct {
		idx   []int
		bytes int
	}
	open := map[bool]*pending{} // by "routes to the secret backend"
	for i, s := range steps {
		if a.batch == nil || (s.Action != Create && s.Action != Update) {
			units = append(units, []int{i})
			continue
		}
		secret, err := a.dst.Registry().IsSecretKind(s.Item.Kind)
		if err != nil {
			units = append(units, []int{i})
			continue
		}
		p := open[secret]
		if p != nil && p.bytes+s.size > maxBatchBytes {
			units, open[secret], p = append(units, p.idx), nil, nil
		}
		if p == nil {
			p = &pending{}
			open[secret] = p
		}
		p.idx, p.bytes = append(p.idx, i), p.bytes+s.size
		if len(p.idx) == a.opts.BatchSize {
			units, open[secret] = append(units, p.idx), nil
		}
	}
	for _, secret := range []bool{true, false} {
		if p := open[secret]; p != nil {
			units = append(units, p.idx)
		}
	}
	return units
}

// stepBatch writes the steps idx (creates and updates of one backend) in
// one atomic batch, verifies them with one batched read and returns their
// results in order. When the batch fails for any reason (a condition, a size
// limit, a backend without batches) it falls back to step for each item, so
// per-item conflict handling and reporting stay exact.
func (a *applier) stepBatch(ctx context.Context, steps []Step, idx []int) []ItemResult {
	res := make([]ItemResult, len(idx))
	items := make([]storage.BatchItem, len(idx))
	for j, i := range idx {
		s := steps[i]
		items[j] = storage.BatchItem{Model: s.Item.Model, Opts: driver.PutOptions{IfAbsent: s.Action == Create, IfRevision: s.rev}}
	}
	var err error
	if a.unbatched.Load() {
		err = storage.ErrBatchUnsupported
	} else {
		_, err = a.batch.PutBatch(ctx, items)
	}
	var verr []error // the batch's read-back, once made
	if err != nil && ctx.Err() == nil && ambiguous(err) {
		// The batch may have committed with its answer lost (a timeout,
		// etcd restarting). It is atomic, so if every value reads back as
		// ours, it did: retrying item by item would report our own writes
		// as conflicts. That read-back is also its verification.
		if v := a.verifyBatch(ctx, steps, idx); committed(v) {
			err, verr = nil, v
		}
	}
	if err != nil {
		if errors.Is(err, storage.ErrBatchUnsupported) {
			a.unbatched.Store(true)
		}
		if ctx.Err() != nil {
			// Stopping: retrying item by item would only fail again. Whether
			// the batch committed is unknown; a rerun re-plans and finds out.
			for j, i := range idx {
				s := steps[i]
				res[j] = ItemResult{Kind: s.Item.Kind, Key: s.Item.Key, Origin: s.Item.Origin, Planned: s.Action,
					Result: ResultFailed, Failed: true, Reason: fmt.Sprintf("write: %v", err)}
			}
			return res
		}
		for j, i := range idx {
			res[j] = a.step(ctx, steps[i])
		}
		return res
	}
	for j, i := range idx {
		s := steps[i]
		res[j] = ItemResult{Kind: s.Item.Kind, Key: s.Item.Key, Origin: s.Item.Origin, Planned: s.Action, Result: ResultCreated}
		if s.Action == Update {
			res[j].Result = ResultUpdated
		}
	}
	if a.opts.Verify {
		if verr == nil {
			verr = a.verifyBatch(ctx, steps, idx)
		}
		for j, i := range idx {
			if verr[j] != nil {
				res[j].Result, res[j].Failed, res[j].Reason = ResultFailed, true, verr[j].Error()
				continue
			}
			res[j].Verified = true
			a.deleteSource(ctx, steps[i], &res[j])
		}
	}
	return res
}

// verifyBatch reads the steps idx back in one call and compares digests;
// it returns one error (or nil) per step. If the batched read fails it
// verifies item by item, so one unreadable value fails only its own item.
func (a *applier) verifyBatch(ctx context.Context, steps []Step, idx []int) []error {
	errs := make([]error, len(idx))
	back := make([]secrets.Model, len(idx))
	for j, i := range idx {
		m, err := a.dst.Registry().New(steps[i].Item.Kind, steps[i].Item.Key)
		if err != nil {
			return a.verifyEach(ctx, steps, idx)
		}
		back[j] = m
	}
	revs, err := a.batch.GetBatch(ctx, back)
	if err != nil {
		return a.verifyEach(ctx, steps, idx)
	}
	for j, i := range idx {
		if revs[j] == 0 {
			errs[j] = errors.New("verify: read back: the value just written is missing")
			continue
		}
		errs[j] = compareDigest(back[j], steps[i].sum)
	}
	return errs
}

func (a *applier) verifyEach(ctx context.Context, steps []Step, idx []int) []error {
	errs := make([]error, len(idx))
	for j, i := range idx {
		errs[j] = a.verify(ctx, steps[i])
	}
	return errs
}

// deleteSource deletes the source item of a verified step when asked.
func (a *applier) deleteSource(ctx context.Context, s Step, r *ItemResult) {
	if !a.opts.DeleteSource || !r.Verified || a.del == nil {
		return
	}
	if err := a.del.DeleteItem(ctx, s.Item); err != nil {
		r.Failed = true
		r.Reason = fmt.Sprintf("migrated and verified, but the source item was not deleted: %v", err)
		return
	}
	r.SourceDeleted = true
}

// step applies one planned step and returns its result.
func (a *applier) step(ctx context.Context, s Step) ItemResult {
	r := ItemResult{Kind: s.Item.Kind, Key: s.Item.Key, Origin: s.Item.Origin, Planned: s.Action, Reason: s.Reason}
	fail := func(result string, err error) ItemResult {
		r.Result, r.Failed, r.Reason = result, true, err.Error()
		return r
	}
	switch s.Action {
	case Invalid:
		r.Result, r.Failed = ResultInvalid, true
		return r
	case Skip:
		r.Result = ResultSkipped
		return r
	case Unchanged:
		// The plan's read compared digests: that is the verification.
		r.Result, r.Verified = ResultUnchanged, true
	case Create, Update:
		opts := driver.PutOptions{IfAbsent: s.Action == Create, IfRevision: s.rev}
		_, err := a.dst.Put(ctx, s.Item.Model, opts)
		if ambiguous(err) && a.verify(ctx, s) == nil {
			// No answer, or an unconfirmed one (the backend timed out
			// after committing): the read-back finds exactly our value,
			// so this write made it, and the read-back verified it.
			err, r.Verified = nil, true
		}
		if storage.Code(err) == driver.Conflict {
			switch a.opts.OnConflict {
			case OnConflictSkip:
				r.Result, r.Reason = ResultSkipped, "conflict: the destination changed after the plan; left as is (--on-conflict skip)"
				return r
			case OnConflictOverwrite:
				err = a.overwrite(ctx, s)
			default:
				return fail(ResultConflict, errors.New("the destination changed after the plan; left as is (rerun to re-plan, or --on-conflict overwrite)"))
			}
		}
		if err != nil {
			return fail(ResultFailed, fmt.Errorf("write: %w", err))
		}
		r.Result, r.Reason = ResultCreated, ""
		if s.Action == Update {
			r.Result = ResultUpdated
		}
		if a.opts.Verify && !r.Verified {
			if err := a.verify(ctx, s); err != nil {
				return fail(ResultFailed, err)
			}
			r.Verified = true
		}
	}
	a.deleteSource(ctx, s, &r)
	return r
}

// overwrite re-reads the destination's revision and writes again with
// compare-and-set, a few times if it keeps changing.
func (a *applier) overwrite(ctx context.Context, s Step) error {
	reg := a.dst.Registry()
	for range 3 {
		cur, err := reg.New(s.Item.Kind, s.Item.Key)
		if err != nil {
			return err
		}
		rev, err := a.dst.Get(ctx, cur)
		opts := driver.PutOptions{IfRevision: rev}
		switch storage.Code(err) {
		case driver.OK:
		case driver.NotFound:
			opts = driver.PutOptions{IfAbsent: true}
		default:
			return fmt.Errorf("re-read for overwrite: %w", err)
		}
		_, err = a.dst.Put(ctx, s.Item.Model, opts)
		if storage.Code(err) != driver.Conflict {
			return err
		}
	}
	return errors.New("the destination kept changing during --on-conflict overwrite; left as is")
}

// verify reads the item back and compares digests.
func (a *applier) verify(ctx context.Context, s Step) error {
	back, err := a.dst.Registry().New(s.Item.Kind, s.Item.Key)
	if err != nil {
		return err
	}
	if _, err := a.dst.Get(ctx, back); err != nil {
		return fmt.Errorf("verify: read back: %w", err)
	}
	return compareDigest(back, s.sum)
}

// compareDigest checks that back, as read from the destination, encodes to
// the source's digest.
func compareDigest(back secrets.Model, sum [sha256.Size]byte) error {
	got, err := digest(back)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	if !sameDigest(got, sum) {
		return errors.New("verify: the value read back differs from the source (SHA-256 mismatch)")
	}
	return nil
}

// ambiguous says whether a failed write may nonetheless have been applied:
// the backend did not answer, as opposed to refusing it.
func ambiguous(err error) bool {
	switch storage.Code(err) {
	case driver.Unavailable, driver.Unknown:
		return !errors.Is(err, storage.ErrBatchUnsupported)
	}
	return false
}

// committed says whether a batch's read-back found every value written.
func committed(verr []error) bool {
	for _, e := range verr {
		if e != nil {
			return false
		}
	}
	return true
}
