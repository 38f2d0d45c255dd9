package config

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/etcd"
	"github.com/sealrun/sealrun/storage/kek"
	"github.com/sealrun/sealrun/storage/memory"
	"github.com/sealrun/sealrun/storage/overlay"
)

// Transit makes the overlay seal values with data keys (DEKs) generated
// locally and wrapped by a Vault Transit key (the KEK); see package kek.
// Vault is reached and logged in to as secrets.vault says (its address and
// auth; its KV settings are unused).
type Transit struct {
	// Mount is the Transit engine's mount (default "transit").
	Mount string `yaml:"mount"`
	// Key is the Transit key (default "sealrun-kek"). An operator creates
	// it; see deploy/vault/.
	Key string `yaml:"key"`
	// DEKPrefix is the etcd prefix holding the wrapped DEKs, next to the
	// data (default: the overlay prefix with ".deks/" for its final "/",
	// e.g. "/sealrun/secrets.deks/").
	DEKPrefix string `yaml:"dek_prefix"`
}

// validateTransit applies secrets.overlay.transit's defaults and checks it.
func (c *Config) validateTransit() error {
	o := c.Secrets.Overlay
	t := o.Transit
	if t == nil {
		if c.Secrets.Vault != nil {
			return errors.New("secrets.vault is set but secrets.backend is overlay: it is used only with secrets.overlay.transit")
		}
		return nil
	}
	t.Mount = strings.Trim(orDefault(t.Mount, "transit"), "/")
	t.Key = orDefault(t.Key, "sealrun-kek")
	t.DEKPrefix = orDefault(t.DEKPrefix, strings.TrimSuffix(o.Prefix, "/")+".deks/")
	if c.Secrets.Vault == nil {
		return errors.New("secrets.overlay.transit needs a secrets.vault section: Vault's address and how to log in")
	}
	if err := c.Secrets.Vault.validateAuth(); err != nil {
		return err
	}
	if strings.ContainsAny(t.Key, "/ ") || strings.Contains(t.Mount, "..") {
		return fmt.Errorf("secrets.overlay.transit: mount %q / key %q: want a mount path and a plain key name", t.Mount, t.Key)
	}
	if o.Store == "etcd" {
		if !strings.HasSuffix(t.DEKPrefix, "/") {
			return fmt.Errorf("secrets.overlay.transit.dek_prefix %q must end in '/'", t.DEKPrefix)
		}
		for _, other := range []string{o.Prefix, c.State.Etcd.Prefix} {
			if strings.HasPrefix(t.DEKPrefix, other) || strings.HasPrefix(other, t.DEKPrefix) {
				return fmt.Errorf("secrets.overlay.transit.dek_prefix %q overlaps %q; it must be disjoint from the secrets and state prefixes", t.DEKPrefix, other)
			}
		}
	}
	return nil
}

// dekStore is where wrapped DEKs live: etcd next to the data, or memory.
func dekStore(o *Overlay, client *clientv3.Client) driver.Driver {
	if o.Store == "etcd" {
		return etcd.New(client, o.Transit.DEKPrefix)
	}
	return memory.New()
}

// openTransitOverlay opens the overlay with a DEK ring unwrapped by Transit.
// The Vault session ends once the DEKs are unwrapped: they stay in memory,
// so the overlay keeps working while Vault is down or sealed.
func openTransitOverlay(ctx context.Context, c *Config, client *clientv3.Client, reg prometheus.Registerer) (driver.Driver, error) {
	o := c.Secrets.Overlay
	// Key files still open values written before the switch to Transit (or
	// by Custodia); they never seal.
	var extra []overlay.Key
	for _, p := range append([]string{o.MasterKey}, o.OldKeys...) {
		if p == "" {
			continue
		}
		key, err := overlay.LoadKeyFile(p, false)
		if err != nil {
			return nil, fmt.Errorf("secrets.overlay (opening old values beside transit): %w", err)
		}
		extra = append(extra, key)
	}
	vc, session, err := connectVault(ctx, c.Secrets.Vault, reg)
	if err != nil {
		return nil, err
	}
	defer session.Close()
	t := o.Transit
	ring, err := kek.Ring(ctx, dekStore(o, client), kek.NewTransit(vc, t.Mount, t.Key, 0), extra...)
	if err != nil {
		return nil, fmt.Errorf("secrets.overlay.transit (key %s/keys/%s): %w", t.Mount, t.Key, err)
	}
	prot, _ := overlay.ParseProtection(o.Protection) // validated
	var under driver.Driver = memory.New()
	if o.Store == "etcd" {
		under = etcd.New(client, o.Prefix)
	}
	return overlay.New(under, ring, prot), nil
}

// KEK is what "sealrun rotate kek" works on: the Transit key and the store
// of wrapped DEKs. Close releases the Vault session and etcd.
type KEK struct {
	Transit *kek.Transit
	Store   driver.Driver
	closers []io.Closer
}

// Close closes what OpenKEK opened.
func (k *KEK) Close() error {
	var errs []error
	for i := len(k.closers) - 1; i >= 0; i-- {
		errs = append(errs, k.closers[i].Close())
	}
	return errors.Join(errs...)
}

// OpenKEK connects to Vault and to the etcd holding the wrapped DEKs of a
// configuration with secrets.overlay.transit and store etcd.
func OpenKEK(ctx context.Context, c *Config, reg prometheus.Registerer) (_ *KEK, err error) {
	o := c.Secrets.Overlay
	if c.Secrets.Backend != "overlay" || o == nil || o.Transit == nil {
		return nil, errors.New("no Transit KEK configured (secrets.backend overlay with secrets.overlay.transit)")
	}
	if o.Store != "etcd" {
		return nil, fmt.Errorf("secrets.overlay.store is %q: wrapped DEKs are only kept (and rotated) in etcd", o.Store)
	}
	k := &KEK{}
	defer func() {
		if err != nil {
			_ = k.Close()
		}
	}()
	client, closers, err := openEtcd(ctx, c.State.Etcd, nil)
	k.closers = append(k.closers, closers...)
	if err != nil {
		return nil, err
	}
	vc, session, err := connectVault(ctx, c.Secrets.Vault, reg)
	if err != nil {
		return nil, err
	}
	k.closers = append(k.closers, session)
	k.Transit = kek.NewTransit(vc, o.Transit.Mount, o.Transit.Key, 0)
	k.Store = etcd.New(client, o.Transit.DEKPrefix)
	return k, nil
}
