package migrate

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

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
	// Concurrency bounds reads and writes in flight (default 8).
	Concurrency int
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
	var progMu sync.Mutex
	done := 0
	err := parallel(ctx, opts.Concurrency, len(plan.Steps), func(ctx context.Context, i int) error {
		res := a.step(ctx, plan.Steps[i])
		if cp != nil {
			res.PreviousRun = cp.previous(plan.Steps[i].Item.ID())
			if !res.Failed && (res.Result == ResultCreated || res.Result == ResultUpdated || res.Result == ResultUnchanged) {
				if err := cp.done(ctx, plan.Steps[i].Item.ID(), res.Result); err != nil {
					rep.Items[i] = res
					return err
				}
			}
		}
		rep.Items[i] = res
		if opts.Progress != nil {
			progMu.Lock()
			done++
			opts.Progress(done, len(plan.Steps))
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
	dst  Store
	del  Deleter
	opts Options
	cp   *checkpointer
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
		if a.opts.Verify {
			if err := a.verify(ctx, s); err != nil {
				return fail(ResultFailed, err)
			}
			r.Verified = true
		}
	}
	if a.opts.DeleteSource && r.Verified && a.del != nil {
		if err := a.del.DeleteItem(ctx, s.Item); err != nil {
			r.Failed = true
			r.Reason = fmt.Sprintf("migrated and verified, but the source item was not deleted: %v", err)
			return r
		}
		r.SourceDeleted = true
	}
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
	got, err := digest(back)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	if !sameDigest(got, s.sum) {
		return errors.New("verify: the value read back differs from the source (SHA-256 mismatch)")
	}
	return nil
}
