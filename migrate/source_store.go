package migrate

import (
	"context"
	"fmt"

	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
)

// StoreSource reads every secret model of another sealrun store (overlay,
// Vault), for moving between backends. Plain state is not copied: it lives
// in the state store, which is not what a backend move changes.
type StoreSource struct {
	Store *storage.Service
	// Owned closes Store with the source.
	Owned bool
}

// Items implements Source.
func (s *StoreSource) Items(ctx context.Context) ([]Item, error) {
	reg := s.Store.Registry()
	var items []Item
	for _, kind := range reg.Kinds() {
		secret, err := reg.IsSecretKind(kind)
		if err != nil || !secret {
			continue
		}
		keys, err := s.Store.List(ctx, kind, "")
		if err != nil {
			return nil, fmt.Errorf("store source: list %s: %w", kind, err)
		}
		for _, key := range keys {
			m, err := reg.New(kind, key)
			if err != nil {
				return nil, err
			}
			it := Item{Kind: kind, Key: key, Origin: "store " + kind + "/" + key}
			rev, err := s.Store.Get(ctx, m)
			switch storage.Code(err) {
			case driver.OK:
				it.Model, it.revision = m, rev
			case driver.NotFound:
				continue // deleted since the listing
			case driver.Integrity:
				it.Err = fmt.Errorf("source value cannot be opened: %w", err)
			default:
				return nil, fmt.Errorf("store source: %w", err)
			}
			items = append(items, it)
		}
	}
	return items, nil
}

// DeleteItem implements Deleter, conditional on the revision read.
func (s *StoreSource) DeleteItem(ctx context.Context, it Item) error {
	return s.Store.Delete(ctx, it.Kind, it.Key, driver.DeleteOptions{IfRevision: it.revision})
}

// Close implements Source.
func (s *StoreSource) Close() error {
	if s.Owned {
		return s.Store.Close()
	}
	return nil
}
