package kek

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"sort"

	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/overlay"
)

// Wrapper wraps DEKs with a KEK. *Transit is the implementation; the
// interface keeps the ring logic testable and open to other KMSs.
type Wrapper interface {
	// Name identifies the KEK; it is recorded next to each wrapped DEK.
	Name() string
	Wrap(ctx context.Context, dek []byte) (string, error)
	Unwrap(ctx context.Context, wrapped string) ([]byte, error)
}

// Dir is the directory of the DEK store that holds wrapped DEKs, one
// record per kid at "deks/<kid>".
const Dir = "deks"

// FirstKID is the kid of the DEK created when the store has none. Every
// process racing to create it writes the same name with a create-only Put,
// so all of them end up sealing with the winner's DEK.
const FirstKID = "dek-0001"

// record is what the store holds for one DEK: never its plaintext.
type record struct {
	KID string `json:"kid"`
	// KEK names the key that wrapped it (Wrapper.Name).
	KEK string `json:"kek"`
	// Wrapped is the KEK's ciphertext of the 64-byte DEK.
	Wrapped string `json:"wrapped"`
}

func recordKey(kid string) string { return path.Join(Dir, kid) }

// Ring reads every wrapped DEK from store, unwraps each with w and returns
// an overlay key ring that seals with the newest DEK (highest kid) and opens
// with all of them and with extra (e.g. a Custodia master key, as the legacy
// key for values without a kid). An empty store gets its first DEK.
//
// The unwrapped DEKs live only in the returned ring; Vault is not needed
// again until the next start.
func Ring(ctx context.Context, store driver.Driver, w Wrapper, extra ...overlay.Key) (*overlay.KeyRing, error) {
	for range 3 {
		keys, err := load(ctx, store, w)
		if err != nil {
			return nil, err
		}
		if len(keys) == 0 {
			if err := create(ctx, store, w, FirstKID); err != nil && store.ErrorCode(err) != driver.Conflict {
				return nil, err
			}
			continue // load what was written, ours or a racing process's
		}
		sort.Slice(keys, func(i, j int) bool { return keys[i].ID > keys[j].ID })
		ring, err := overlay.NewKeyRing(keys[0], append(keys[1:], extra...)...)
		if err != nil {
			return nil, fmt.Errorf("DEK ring: %w", err)
		}
		return ring, nil
	}
	return nil, errors.New("DEK ring: the first DEK was created but cannot be read back from the DEK store")
}

// load unwraps every stored DEK.
func load(ctx context.Context, store driver.Driver, w Wrapper) ([]overlay.Key, error) {
	kids, err := store.List(ctx, Dir)
	if err != nil {
		return nil, fmt.Errorf("list wrapped DEKs: %w", err)
	}
	keys := make([]overlay.Key, 0, len(kids))
	for _, k := range kids {
		e, err := store.Get(ctx, k)
		if store.ErrorCode(err) == driver.NotFound {
			continue
		} else if err != nil {
			return nil, fmt.Errorf("read wrapped DEK %s: %w", k, err)
		}
		r, err := decodeRecord(k, e.Value)
		if err != nil {
			return nil, err
		}
		dek, err := w.Unwrap(ctx, r.Wrapped)
		if err != nil {
			return nil, fmt.Errorf("unwrap DEK %q (wrapped by %s with version %d): %w", r.KID, r.KEK, Version(r.Wrapped), err)
		}
		key, err := overlay.NewKey(r.KID, dek)
		clear(dek)
		if err != nil {
			return nil, fmt.Errorf("DEK %q: %w", r.KID, err)
		}
		keys = append(keys, key)
	}
	return keys, nil
}

func decodeRecord(key string, value []byte) (record, error) {
	var r record
	if err := json.Unmarshal(value, &r); err != nil || r.KID == "" || r.Wrapped == "" || recordKey(r.KID) != key {
		return record{}, fmt.Errorf("wrapped DEK record %s is malformed or names another kid: %w", key, driver.ErrIntegrity)
	}
	return r, nil
}

// create makes a DEK, wraps it and stores it create-only under kid.
func create(ctx context.Context, store driver.Driver, w Wrapper, kid string) error {
	dek := make([]byte, overlay.KeySize)
	defer clear(dek)
	if _, err := rand.Read(dek); err != nil {
		return err
	}
	wrapped, err := w.Wrap(ctx, dek)
	if err != nil {
		return fmt.Errorf("wrap new DEK %q: %w", kid, err)
	}
	v, _ := json.Marshal(record{KID: kid, KEK: w.Name(), Wrapped: wrapped})
	if _, err := store.Put(ctx, recordKey(kid), v, driver.PutOptions{IfAbsent: true}); err != nil {
		return fmt.Errorf("store new DEK %q: %w", kid, err)
	}
	return nil
}
