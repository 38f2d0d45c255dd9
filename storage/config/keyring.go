package config

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/sealrun/sealrun/storage/custodia"
	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/etcd"
	"github.com/sealrun/sealrun/storage/overlay"
)

// LoadKeyRing loads the overlay's master key (sealing) and its old keys
// (opening only).
func LoadKeyRing(o *Overlay) (*overlay.KeyRing, error) {
	key, err := overlay.LoadKeyFile(o.MasterKey, o.Autogen)
	if err != nil {
		return nil, err
	}
	var old []overlay.Key
	for _, p := range o.OldKeys {
		k, err := overlay.LoadKeyFile(p, false)
		if err != nil {
			return nil, fmt.Errorf("secrets.overlay.old_keys: %w", err)
		}
		old = append(old, k)
	}
	ring, err := overlay.NewKeyRing(key, old...)
	if err != nil {
		return nil, fmt.Errorf("secrets.overlay: %w", err)
	}
	return ring, nil
}

// OverlayParts are the pieces of a key-file overlay kept in etcd, for tools
// that work on the ciphertexts themselves (sealrun rotate master-key).
type OverlayParts struct {
	// Under holds the ciphertexts (the etcd driver under the overlay prefix).
	Under driver.Driver
	// Custodia holds the Custodia API's values and containers in Custodia's
	// own records (the etcd driver under the Custodia namespace's keys/).
	Custodia   driver.Driver
	Ring       *overlay.KeyRing
	Protection overlay.Protection
	closers    []io.Closer
}

// Close closes the etcd client and any embedded etcd; later calls do nothing.
func (p *OverlayParts) Close() error {
	var errs []error
	for i := len(p.closers) - 1; i >= 0; i-- {
		errs = append(errs, p.closers[i].Close())
	}
	p.closers = nil
	return errors.Join(errs...)
}

// OpenOverlayParts connects to the etcd holding c's overlay ciphertexts and
// loads its key ring. Only the key-file overlay on etcd has ciphertexts a
// tool can re-seal.
func OpenOverlayParts(ctx context.Context, c *Config) (*OverlayParts, error) {
	o := c.Secrets.Overlay
	if c.Secrets.Backend != "overlay" || o == nil || o.Transit != nil || o.Store != "etcd" {
		return nil, errors.New("secrets: want backend overlay with store etcd and master_key (not transit)")
	}
	ring, err := LoadKeyRing(o)
	if err != nil {
		return nil, err
	}
	client, closers, err := openEtcd(ctx, c.State.Etcd, nil)
	p := &OverlayParts{closers: closers}
	if err != nil {
		_ = p.Close()
		return nil, err
	}
	p.Under, p.Ring = etcd.New(client, o.Prefix), ring
	p.Custodia = etcd.New(client, custodia.Prefix(o.CustodiaNamespace))
	p.Protection, _ = overlay.ParseProtection(o.Protection) // validated
	return p, nil
}
