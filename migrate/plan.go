package migrate

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"fmt"

	"github.com/sealrun/sealrun/internal/parallel"
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
	// size is the length of the item's storage encoding, to bound batches.
	size int
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
	sum, _, err := digestSize(m)
	return sum, err
}

// digestSize is digest and the length of the encoding.
func digestSize(m secrets.Model) ([sha256.Size]byte, int, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return [sha256.Size]byte{}, 0, fmt.Errorf("encode %s %q: %w", m.Kind(), m.Key(), err)
	}
	sum := sha256.Sum256(b)
	clear(b) // the encoding holds the secret in the clear
	return sum, len(b), nil
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
		sum, size, err := digestSize(it.Model)
		if err != nil {
			s.Action, s.Reason = Invalid, err.Error()
			continue
		}
		s.sum, s.size = sum, size
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
	if bs, ok := dst.(BatchStore); ok {
		if err := planBatched(ctx, p, present, bs, concurrency); err != nil {
			return nil, err
		}
		return p, nil
	}
	err := parallel.Run(ctx, concurrency, len(present), func(ctx context.Context, j int) error {
		return planOne(ctx, &p.Steps[present[j]], dst)
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// planOne reads the destination's value of an item the listing showed
// present and decides its action.
func planOne(ctx context.Context, s *Step, dst Store) error {
	cur, err := dst.Registry().New(s.Item.Kind, s.Item.Key)
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
	return s.compare(cur, rev)
}

// compare decides between Unchanged and Update from the destination's
// current model and revision.
func (s *Step) compare(cur secrets.Model, rev int64) error {
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
}

// planBatched is planOne for many items with one batched read per
// driver.MaxBatch items of one backend (a resumed or repeated run reads
// every item). A batch whose read fails (e.g. one value cannot be opened) is
// read again item by item, so each item gets its own decision.
func planBatched(ctx context.Context, p *Plan, present []int, bs BatchStore, concurrency int) error {
	reg := bs.Registry()
	var chunks [][]int
	open := map[bool][]int{}
	for _, i := range present {
		secret, err := reg.IsSecretKind(p.Steps[i].Item.Kind)
		if err != nil {
			return err
		}
		if open[secret] = append(open[secret], i); len(open[secret]) == driver.MaxBatch {
			chunks, open[secret] = append(chunks, open[secret]), nil
		}
	}
	for _, secret := range []bool{true, false} {
		if len(open[secret]) > 0 {
			chunks = append(chunks, open[secret])
		}
	}
	return parallel.Run(ctx, concurrency, len(chunks), func(ctx context.Context, c int) error {
		idx := chunks[c]
		ms := make([]secrets.Model, len(idx))
		for j, i := range idx {
			m, err := reg.New(p.Steps[i].Item.Kind, p.Steps[i].Item.Key)
			if err != nil {
				return err
			}
			ms[j] = m
		}
		revs, err := bs.GetBatch(ctx, ms)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("plan: read destination: %w", err)
			}
			for _, i := range idx {
				if err := planOne(ctx, &p.Steps[i], bs); err != nil {
					return err
				}
			}
			return nil
		}
		for j, i := range idx {
			s := &p.Steps[i]
			if revs[j] == 0 {
				s.Action = Create
				continue
			}
			if err := s.compare(ms[j], revs[j]); err != nil {
				return err
			}
		}
		return nil
	})
}
