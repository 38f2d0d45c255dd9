package config

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	clientv3 "go.etcd.io/etcd/client/v3"

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

// loadRing is LoadKeyRing for an overlay on etcd: with autogen, a missing
// master key is created only while the store holds no sealed record. A new
// key over records sealed with a lost one would leave them unreadable behind
// a service that looks healthy; the user has to restore the key instead.
func loadRing(ctx context.Context, o *Overlay, client *clientv3.Client) (*overlay.KeyRing, error) {
	if o.Autogen && o.Store == "etcd" && client != nil {
		if _, err := os.Stat(o.MasterKey); errors.Is(err, fs.ErrNotExist) {
			n, err := countSealed(ctx, client, o)
			if err != nil {
				return nil, fmt.Errorf("secrets.overlay: master_key %s is missing; autogen checks the store is empty before creating one, and that check failed: %w", o.MasterKey, err)
			}
			if n > 0 {
				return nil, fmt.Errorf("secrets.overlay: master_key %s is missing, and the store already holds %d records sealed with a master key; "+
					"autogen creates a key only for an empty store. Restore the key file (sealrun backup restore, see docs/backup.md) "+
					"or point master_key at it", o.MasterKey, n)
			}
		}
	}
	return LoadKeyRing(o)
}

// countSealed counts the overlay's records and Custodia API records in etcd.
func countSealed(ctx context.Context, client *clientv3.Client, o *Overlay) (int64, error) {
	var n int64
	for _, prefix := range []string{o.Prefix, custodia.Prefix(o.CustodiaNamespace)} {
		resp, err := client.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return 0, err
		}
		n += resp.Count
	}
	return n, nil
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
	client, closers, err := openEtcd(ctx, c.State.Etcd, nil)
	p := &OverlayParts{closers: closers}
	if err != nil {
		_ = p.Close()
		return nil, err
	}
	ring, err := loadRing(ctx, o, client)
	if err != nil {
		_ = p.Close()
		return nil, err
	}
	p.Under, p.Ring = etcd.New(client, o.Prefix), ring
	p.Custodia = etcd.New(client, custodia.Prefix(o.CustodiaNamespace))
	p.Protection, _ = overlay.ParseProtection(o.Protection) // validated
	return p, nil
}
