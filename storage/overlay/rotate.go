package overlay

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/sealrun/sealrun/internal/parallel"
	"github.com/sealrun/sealrun/storage/driver"
)

// RotateOptions configure Reencrypt.
type RotateOptions struct {
	// BatchSize bounds how many records are re-sealed in one step (default
	// 100), so a large store is rotated in steps with bounded load on etcd.
	// When the driver can batch (etcd), a step is one atomic read and one
	// atomic compare-and-set write, and is capped at driver.MaxBatch.
	BatchSize int
	// Concurrency bounds writes in flight (default 4): batches when the
	// driver can batch, else records within a step.
	Concurrency int
	// Progress, if set, is called after each batch (serialized).
	Progress func(done, total int)
}

// RotateReport is the outcome of a re-encryption. It names keys and
// records, never values.
type RotateReport struct {
	CurrentKey string `json:"current_key"`
	Total      int    `json:"total"`
	// Resealed were sealed with another key and now name CurrentKey.
	Resealed int `json:"resealed"`
	// AlreadyCurrent already named CurrentKey (e.g. a resumed rotation).
	AlreadyCurrent int `json:"already_current"`
	// Gone were deleted while the rotation ran.
	Gone int `json:"gone"`
	// Failed lists records that could not be re-sealed, with why.
	Failed []string `json:"failed,omitempty"`
	// Referenced counts the records naming each key id after the rotation
	// ("" is Custodia's legacy key): a key no record names can be retired.
	Referenced map[string]int `json:"referenced"`
}

// Merge adds o's counts (another namespace rotated with the same key) to r.
func (r *RotateReport) Merge(o *RotateReport) {
	r.Total += o.Total
	r.Resealed += o.Resealed
	r.AlreadyCurrent += o.AlreadyCurrent
	r.Gone += o.Gone
	r.Failed = append(r.Failed, o.Failed...)
	for k, n := range o.Referenced {
		r.Referenced[k] += n
	}
}

// Reencrypt re-seals every record under under that is not sealed with
// ring's current key, with compare-and-set so a concurrent write is never
// lost (a record written meanwhile is already sealed with the current key,
// or is re-read and retried). Readers keep working throughout as long as
// their ring holds both keys: each record is replaced atomically. Records
// without a pin are pinned on the way (unless prot is Encrypt). Rerunning
// after an interruption resumes: records already current are skipped.
func Reencrypt(ctx context.Context, under driver.Driver, ring *KeyRing, prot Protection, o RotateOptions) (*RotateReport, error) {
	if o.BatchSize <= 0 {
		o.BatchSize = 100
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	readProt := prot
	if prot == Pinning {
		// Accept Custodia's unpinned values so they can be pinned now; Seal
		// pins in both modes.
		readProt = Migrate
	}
	ov := New(under, ring, readProt)
	cur := ring.CurrentID()
	rep := &RotateReport{CurrentKey: cur, Referenced: map[string]int{}}
	keys, err := under.List(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("rotate: list records: %w", err)
	}
	rep.Total = len(keys)
	var mu sync.Mutex
	count := func(outcome string, key string, err error) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err != nil:
			rep.Failed = append(rep.Failed, fmt.Sprintf("%s: %v", key, err))
		case outcome == "gone":
			rep.Gone++
		case outcome == "current":
			rep.AlreadyCurrent++
		default:
			rep.Resealed++
		}
	}
	bg, canGet := under.(driver.BatchGetter)
	b, canPut := under.(driver.Batcher)
	if canGet && canPut {
		// Steps of up to MaxBatch records run Concurrency at a time.
		size := min(o.BatchSize, driver.MaxBatch)
		steps := (len(keys) + size - 1) / size
		done := 0
		err := parallel.Run(ctx, o.Concurrency, steps, func(ctx context.Context, j int) error {
			batch := keys[j*size : min((j+1)*size, len(keys))]
			if err := resealBatch(ctx, under, bg, b, ov, cur, batch, count); err != nil {
				return err
			}
			// Progress is called serialized, with done increasing.
			mu.Lock()
			defer mu.Unlock()
			done += len(batch)
			if o.Progress != nil {
				o.Progress(done, len(keys))
			}
			return nil
		})
		if err != nil {
			return rep, fmt.Errorf("rotate interrupted after %d of %d records (rerun to resume): %w", done, len(keys), err)
		}
	}
	for start := 0; !(canGet && canPut) && start < len(keys); start += o.BatchSize {
		batch := keys[start:min(start+o.BatchSize, len(keys))]
		err := parallel.Run(ctx, o.Concurrency, len(batch), func(ctx context.Context, i int) error {
			outcome, err := reseal(ctx, under, ov, cur, batch[i])
			if err != nil && ctx.Err() != nil {
				return ctx.Err()
			}
			count(outcome, batch[i], err)
			return nil
		})
		if err != nil {
			return rep, fmt.Errorf("rotate interrupted after %d of %d records (rerun to resume): %w", start, len(keys), err)
		}
		if o.Progress != nil {
			o.Progress(start+len(batch), len(keys))
		}
	}
	sort.Strings(rep.Failed)
	rep.Referenced, err = KeyUsage(ctx, under)
	if err != nil {
		return rep, err
	}
	return rep, nil
}

// resealBatch re-seals keys with one batched read and one atomic
// compare-and-set write of those not yet current. If the write fails (a
// record changed meanwhile, or any other error) each of them is retried on
// its own with reseal, so one busy record costs only its own retries. It
// returns an error only when ctx ends; record failures go to count.
func resealBatch(ctx context.Context, under driver.Driver, bg driver.BatchGetter, b driver.Batcher, ov *Driver,
	cur string, keys []string, count func(outcome, key string, err error)) error {
	one := func(key string) error {
		outcome, err := reseal(ctx, under, ov, cur, key)
		if err != nil && ctx.Err() != nil {
			return ctx.Err()
		}
		count(outcome, key, err)
		return nil
	}
	entries, err := bg.GetBatch(ctx, keys)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		for _, k := range keys {
			if err := one(k); err != nil {
				return err
			}
		}
		return nil
	}
	var puts []driver.BatchPut
	for _, e := range entries {
		if e.Revision == 0 {
			count("gone", e.Key, nil)
			continue
		}
		ct, err := resealValue(ov, cur, e)
		if err != nil || ct == nil {
			count("current", e.Key, err) // an error is counted as failed
			continue
		}
		puts = append(puts, driver.BatchPut{Key: e.Key, Value: ct, Opts: driver.PutOptions{IfRevision: e.Revision}})
	}
	if len(puts) == 0 {
		return nil
	}
	if _, err := b.PutBatch(ctx, puts); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Nothing was written: redo these records one by one.
		for _, p := range puts {
			if err := one(p.Key); err != nil {
				return err
			}
		}
		return nil
	}
	for _, p := range puts {
		count("resealed", p.Key, nil)
	}
	return nil
}

// resealValue is e's value sealed under the current key, or nil if it is
// sealed under it already (kid cur: only sealrun writes a kid, and it pins
// whenever protection asks).
func resealValue(ov *Driver, cur string, e driver.Entry) ([]byte, error) {
	if len(e.Value) == 0 {
		return nil, nil // a Custodia container record: nothing sealed
	}
	kid, err := KeyID(string(e.Value))
	if err != nil || kid == cur {
		return nil, err
	}
	plain, _, err := ov.Open(e.Key, string(e.Value))
	if err != nil {
		return nil, err
	}
	defer clear(plain)
	ct, err := ov.Seal(e.Key, plain)
	if err != nil {
		return nil, err
	}
	return []byte(ct), nil
}

// reseal re-seals one record; the outcome is "resealed", "current" or "gone".
func reseal(ctx context.Context, under driver.Driver, ov *Driver, cur, key string) (string, error) {
	for range 5 {
		e, err := under.Get(ctx, key)
		if under.ErrorCode(err) == driver.NotFound {
			return "gone", nil
		}
		if err != nil {
			return "", err
		}
		e.Key = key
		ct, err := resealValue(ov, cur, e)
		if err != nil {
			return "", err
		}
		if ct == nil {
			return "current", nil
		}
		_, err = under.Put(ctx, key, ct, driver.PutOptions{IfRevision: e.Revision})
		if under.ErrorCode(err) == driver.Conflict {
			continue // written meanwhile: look again
		}
		if err != nil {
			return "", err
		}
		return "resealed", nil
	}
	return "", errors.New("record kept changing during rotation; rerun to retry")
}

// KeyUsage counts the records under under by the key id they name (""
// for Custodia's legacy values): "rotate status", and what tells whether an
// old key can be retired.
func KeyUsage(ctx context.Context, under driver.Driver) (map[string]int, error) {
	keys, err := under.List(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("key usage: list records: %w", err)
	}
	use := map[string]int{}
	var mu sync.Mutex
	tally := func(value []byte) {
		if len(value) == 0 {
			return // a Custodia container record: nothing sealed
		}
		kid, err := KeyID(string(value))
		if err != nil {
			kid = "(not a sealed value)"
		}
		mu.Lock()
		use[kid]++
		mu.Unlock()
	}
	if bg, ok := under.(driver.BatchGetter); ok {
		n := (len(keys) + driver.MaxBatch - 1) / driver.MaxBatch
		err := parallel.Run(ctx, 4, n, func(ctx context.Context, j int) error {
			entries, err := bg.GetBatch(ctx, keys[j*driver.MaxBatch:min((j+1)*driver.MaxBatch, len(keys))])
			if err != nil {
				return fmt.Errorf("key usage: %w", err)
			}
			for _, e := range entries {
				if e.Revision != 0 {
					tally(e.Value)
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		return use, nil
	}
	for _, k := range keys {
		e, err := under.Get(ctx, k)
		if under.ErrorCode(err) == driver.NotFound {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("key usage: %w", err)
		}
		tally(e.Value)
	}
	return use, nil
}
