package migrate

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
)

// Action is what the plan will do with an item.
type Action string

// Planned actions.
const (
	Create    Action = "create"    // absent in the destination: write with IfAbsent
	Update    Action = "update"    // differs: write with IfRevision of the planned read
	Unchanged Action = "unchanged" // already equal (by SHA-256 of its encoding)
	Skip      Action = "skip"      // deliberately not written; Reason says why
	Invalid   Action = "invalid"   // the source value is bad; never written
)

// Step is one item's plan.
type Step struct {
	Item   Item
	Action Action
	Reason string
	// rev is the destination revision the plan read (Update), the
	// precondition of the write.
	rev int64
	sum [sha256.Size]byte
}

// Plan is the list of steps a migration will take, in source order.
type Plan struct {
	Steps []Step
}

// Count returns how many steps plan each action.
func (p *Plan) Count() map[Action]int {
	c := map[Action]int{}
	for _, s := range p.Steps {
		c[s.Action]++
	}
	return c
}

// digest is the SHA-256 of m's storage encoding, which is what a read-back
// returns, so equal digests mean the stored model is the source's model.
func digest(m secrets.Model) ([sha256.Size]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return [sha256.Size]byte{}, fmt.Errorf("encode %s %q: %w", m.Kind(), m.Key(), err)
	}
	return sha256.Sum256(b), nil
}

// sameDigest compares in constant time, so how much of a secret's digest
// matched does not show in timing.
func sameDigest(a, b [sha256.Size]byte) bool { return subtle.ConstantTimeCompare(a[:], b[:]) == 1 }

// NewPlan validates items and reads the destination for each: absent means
// create, equal means unchanged, different means update. It writes nothing.
// Reads run with up to concurrency in flight (at least 1).
func NewPlan(ctx context.Context, items []Item, dst Store, concurrency int) (*Plan, error) {
	items = append([]Item(nil), items...)
	validate(items)
	reg := dst.Registry()
	p := &Plan{Steps: make([]Step, len(items))}
	seen := map[string]string{}
	var toRead []int
	for i, it := range items {
		s := &p.Steps[i]
		s.Item = it
		switch {
		case it.Err != nil:
			s.Action, s.Reason = Invalid, it.Err.Error()
			continue
		case it.SkipReason != "":
			s.Action, s.Reason = Skip, it.SkipReason
			continue
		case reg.Check(it.Model) != nil:
			s.Action, s.Reason = Skip, fmt.Sprintf("kind %q is not stored by the destination", it.Kind)
			continue
		}
		if err := driver.ValidateKey(it.Key); err != nil {
			s.Action, s.Reason = Invalid, fmt.Sprintf("%v: not a valid storage key", ErrInvalid)
			continue
		}
		if first, dup := seen[it.ID()]; dup {
			s.Action, s.Reason = Invalid, fmt.Sprintf("%v: duplicate of %s from %s", ErrInvalid, it.ID(), first)
			continue
		}
		seen[it.ID()] = it.Origin
		sum, err := digest(it.Model)
		if err != nil {
			s.Action, s.Reason = Invalid, err.Error()
			continue
		}
		s.sum = sum
		toRead = append(toRead, i)
	}
	// One listing per kind tells which items are absent, so a fresh import
	// does not read every key: an absent one is a create, and a key created
	// after the listing still fails the create's IfAbsent (a conflict).
	existing := map[string]map[string]bool{}
	for _, i := range toRead {
		kind := p.Steps[i].Item.Kind
		if existing[kind] != nil {
			continue
		}
		keys, err := dst.List(ctx, kind, "")
		if err != nil {
			return nil, fmt.Errorf("plan: list destination %s: %w", kind, err)
		}
		existing[kind] = make(map[string]bool, len(keys))
		for _, k := range keys {
			existing[kind][k] = true
		}
	}
	var present []int
	for _, i := range toRead {
		s := &p.Steps[i]
		if existing[s.Item.Kind][s.Item.Key] {
			present = append(present, i)
		} else {
			s.Action = Create
		}
	}
	err := parallel(ctx, concurrency, len(present), func(ctx context.Context, j int) error {
		s := &p.Steps[present[j]]
		cur, err := reg.New(s.Item.Kind, s.Item.Key)
		if err != nil {
			return err
		}
		rev, err := dst.Get(ctx, cur)
		switch storage.Code(err) {
		case driver.OK:
		case driver.NotFound:
			s.Action = Create
			return nil
		case driver.Integrity:
			// Never overwrite what we cannot read: it may be newer data under
			// a key this process does not hold.
			s.Action, s.Reason = Skip, "destination value exists but cannot be opened (integrity); not overwritten"
			return nil
		default:
			return fmt.Errorf("plan: read destination %s: %w", s.Item.ID(), err)
		}
		have, err := digest(cur)
		if err != nil {
			return err
		}
		if sameDigest(have, s.sum) {
			s.Action = Unchanged
		} else {
			s.Action, s.rev, s.Reason = Update, rev, "destination differs from source"
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// parallel runs fn(0..n-1) with at most workers at once and returns the
// first error; after an error or cancellation no new calls start.
func parallel(ctx context.Context, workers, n int, fn func(context.Context, int) error) error {
	if workers < 1 {
		workers = 1
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := fn(ctx, i); err != nil {
					cancel(err)
				}
			}
		}()
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	return context.Cause(ctx)
}
