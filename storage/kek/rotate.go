package kek

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/sealrun/sealrun/storage/driver"
)

// Report is what a KEK rotation did and what it allows next.
type Report struct {
	// KEK names the Transit key.
	KEK string
	// Rotated is set when a new KEK version was made.
	Rotated bool
	// Latest is the KEK version every rewrapped DEK now uses.
	Latest int
	// Rewrapped and Current count DEKs re-wrapped now and DEKs already at
	// Latest.
	Rewrapped, Current int
	// OldestStored is the oldest KEK version any stored DEK still needs.
	OldestStored int
	// MinDecryption is the key's min_decryption_version now.
	MinDecryption int
}

// SafeMinDecryption is the highest min_decryption_version that still opens
// every stored DEK. Raising it further would make DEKs, hence data,
// unreadable; backups of the DEK store made before the rotation need the
// old versions too.
func (r Report) SafeMinDecryption() int { return r.OldestStored }

// Rotate rotates the Transit KEK and then re-wraps every stored DEK with the
// new version (see Rewrap). Data records are not touched: they are sealed
// by DEKs, which do not change.
func Rotate(ctx context.Context, store driver.Driver, t *Transit) (Report, error) {
	if _, err := t.Info(ctx); err != nil { // fail before rotating if the key is missing
		return Report{}, err
	}
	if err := t.Rotate(ctx); err != nil {
		return Report{}, err
	}
	r, err := Rewrap(ctx, store, t)
	r.Rotated = true
	return r, err
}

// Rewrap re-wraps every stored DEK not yet at the KEK's latest version
// (Transit rewrap: the DEK stays inside Vault). Each record is replaced by a
// compare-and-set, so readers always find either the old or the new wrap,
// both of which Transit decrypts while min_decryption_version is not raised:
// no read fails during a rotation, and running overlays, which hold their
// DEKs in memory, do not notice it at all. It is safe to run again after an
// interruption.
func Rewrap(ctx context.Context, store driver.Driver, t *Transit) (Report, error) {
	info, err := t.Info(ctx)
	if err != nil {
		return Report{}, err
	}
	rep := Report{KEK: t.Name(), Latest: info.Latest, MinDecryption: info.MinDecryption, OldestStored: info.Latest}
	keys, err := store.List(ctx, Dir)
	if err != nil {
		return rep, fmt.Errorf("list wrapped DEKs: %w", err)
	}
	for _, k := range keys {
		v, rewrapped, err := rewrapOne(ctx, store, t, k, info.Latest)
		if err != nil {
			return rep, err
		}
		if v == 0 {
			continue // deleted meanwhile
		}
		if rewrapped {
			rep.Rewrapped++
		} else {
			rep.Current++
		}
		rep.OldestStored = min(rep.OldestStored, v)
	}
	return rep, nil
}

// rewrapOne brings one record to version latest, retrying when a
// concurrent writer wins the compare-and-set. It returns the record's
// version afterwards (0 if the record is gone).
func rewrapOne(ctx context.Context, store driver.Driver, t *Transit, key string, latest int) (version int, rewrapped bool, err error) {
	for range 5 {
		e, err := store.Get(ctx, key)
		if store.ErrorCode(err) == driver.NotFound {
			return 0, false, nil
		} else if err != nil {
			return 0, false, fmt.Errorf("read wrapped DEK %s: %w", key, err)
		}
		r, err := decodeRecord(key, e.Value)
		if err != nil {
			return 0, false, err
		}
		if v := Version(r.Wrapped); v >= latest {
			return v, false, nil
		}
		if r.Wrapped, err = t.Rewrap(ctx, r.Wrapped); err != nil {
			return 0, false, fmt.Errorf("rewrap DEK %q: %w", r.KID, err)
		}
		r.KEK = t.Name()
		val, _ := json.Marshal(r)
		_, err = store.Put(ctx, key, val, driver.PutOptions{IfRevision: e.Revision})
		if err == nil {
			return Version(r.Wrapped), true, nil
		}
		if store.ErrorCode(err) != driver.Conflict {
			return 0, false, fmt.Errorf("store rewrapped DEK %q: %w", r.KID, err)
		}
	}
	return 0, false, fmt.Errorf("rewrap DEK %s: it kept changing under us; run the rotation again", key)
}
