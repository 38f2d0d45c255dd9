// Package custodia is Custodia's own database layout: what a Custodia client
// PUTs is recorded exactly as Custodia's EncryptedOverlay records it over its
// store, so Custodia and sealrun read each other's records with one master
// key file.
//
// A value /secrets/app/db is the compact JWE (dir, A256CBC-HS512) of the
// value as sent, pinned by "custodia.key" to its database key keys/app/db,
// stored at <namespace>/keys/app/db (the key layout of Custodia's EtcdStore).
// A container /secrets/app/ is the record keys/app with an empty value, as
// Custodia's SqliteStore spans it: a container and a value can never share a
// name, and nothing encrypted is ever empty, so the two cannot be confused.
package custodia

import (
	"context"
	"fmt"
	"path"

	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/overlay"
)

// DefaultNamespace is the namespace of Custodia's EtcdStore; CPD-101
// deployments use /custodia_commissaire_data.
const DefaultNamespace = "/custodia"

// Prefix returns the inner driver's key prefix for namespace: Custodia's
// database keys all start with "keys/".
func Prefix(namespace string) string {
	if namespace == "" {
		namespace = DefaultNamespace
	}
	return path.Join("/", namespace, "keys") + "/"
}

// Namespace reads and writes values and containers by their Custodia names
// ("app/db", "app"), relative to keys/.
type Namespace struct {
	under driver.Driver
	seal  *overlay.Driver
	prot  overlay.Protection
}

// New returns the namespace over under, whose keys are Custodia's database
// keys without "keys/" (e.g. an etcd driver with prefix Prefix(ns)). Closing
// it closes under.
func New(under driver.Driver, ring *overlay.KeyRing, prot overlay.Protection) *Namespace {
	return &Namespace{under: under, seal: overlay.New(under, ring, prot), prot: prot}
}

var (
	errIsContainer = fmt.Errorf("is a container, not a value: %w", driver.ErrNotFound)
	errIsValue     = fmt.Errorf("is a value, not a container: %w", driver.ErrNotFound)
)

// Seal returns the record Custodia's EncryptedOverlay writes for value
// under name.
func (n *Namespace) Seal(name string, value []byte) (string, error) {
	return n.seal.Seal(name, value)
}

// GetValue returns the value stored under name, opened and pin-checked. In
// Migrate protection an unpinned value is rewritten with its pin, as
// Custodia does.
func (n *Namespace) GetValue(ctx context.Context, name string) (driver.Entry, error) {
	e, err := n.under.Get(ctx, name)
	if err != nil {
		return driver.Entry{}, err
	}
	if len(e.Value) == 0 {
		return driver.Entry{}, fmt.Errorf("%q %w", name, errIsContainer)
	}
	plain, pinned, err := n.seal.Open(name, string(e.Value))
	if err != nil {
		return driver.Entry{}, err
	}
	if !pinned && n.prot == overlay.Migrate {
		if rev, err := n.PutValue(ctx, name, plain, driver.PutOptions{IfRevision: e.Revision}); err == nil {
			e.Revision = rev
		} else if n.ErrorCode(err) != driver.Conflict {
			return driver.Entry{}, fmt.Errorf("migrate %q: add pin: %w", name, err)
		}
	}
	return driver.Entry{Key: name, Value: plain, Revision: e.Revision}, nil
}

// PutValue seals value (which may be empty, as Custodia accepts) and stores
// it under name.
func (n *Namespace) PutValue(ctx context.Context, name string, value []byte, opts driver.PutOptions) (int64, error) {
	if err := driver.ValidateKey(name); err != nil {
		return 0, err
	}
	ct, err := n.seal.Seal(name, value)
	if err != nil {
		return 0, err
	}
	if opts.IfRevision != 0 {
		// Never overwrite a container's record with a value.
		e, err := n.under.Get(ctx, name)
		if err != nil {
			return 0, err
		}
		if len(e.Value) == 0 {
			return 0, fmt.Errorf("put %q: a container of that name exists: %w", name, driver.ErrConflict)
		}
	}
	return n.under.Put(ctx, name, []byte(ct), opts)
}

// DeleteValue removes the value under name; a container of that name is
// left alone (NotFound), unlike Custodia, which would cut it.
func (n *Namespace) DeleteValue(ctx context.Context, name string, opts driver.DeleteOptions) error {
	return n.cut(ctx, name, opts, false)
}

// Span records the container name; Conflict if the name is taken.
func (n *Namespace) Span(ctx context.Context, name string) (int64, error) {
	return n.under.Put(ctx, name, nil, driver.PutOptions{IfAbsent: true})
}

// GetContainer returns the revision of container name's record.
func (n *Namespace) GetContainer(ctx context.Context, name string) (int64, error) {
	e, err := n.under.Get(ctx, name)
	if err != nil {
		return 0, err
	}
	if len(e.Value) != 0 {
		return 0, fmt.Errorf("%q %w", name, errIsValue)
	}
	return e.Revision, nil
}

// Cut removes container name's record (not what is below it).
func (n *Namespace) Cut(ctx context.Context, name string, opts driver.DeleteOptions) error {
	return n.cut(ctx, name, opts, true)
}

func (n *Namespace) cut(ctx context.Context, name string, opts driver.DeleteOptions, container bool) error {
	e, err := n.under.Get(ctx, name)
	if err != nil {
		return err
	}
	switch {
	case container && len(e.Value) != 0:
		return fmt.Errorf("%q %w", name, errIsValue)
	case !container && len(e.Value) == 0:
		return fmt.Errorf("%q %w", name, errIsContainer)
	case opts.IfRevision != 0 && opts.IfRevision != e.Revision:
		return fmt.Errorf("delete %q: %w", name, driver.ErrConflict)
	}
	// Conditional on what was just read, so a container is never cut for a
	// value written meanwhile (or the reverse).
	return n.under.Delete(ctx, name, driver.DeleteOptions{IfRevision: e.Revision})
}

// List returns the values and the containers below the directory prefix,
// each sorted. Telling them apart takes the records' values, read in
// batches where the store can.
func (n *Namespace) List(ctx context.Context, prefix string) (values, containers []string, err error) {
	keys, err := n.under.List(ctx, prefix)
	if err != nil {
		return nil, nil, err
	}
	add := func(e driver.Entry) {
		switch {
		case e.Revision == 0: // deleted since the listing
		case len(e.Value) == 0:
			containers = append(containers, e.Key)
		default:
			values = append(values, e.Key)
		}
	}
	if bg, ok := n.under.(driver.BatchGetter); ok {
		for len(keys) > 0 {
			chunk := keys[:min(len(keys), driver.MaxBatch)]
			keys = keys[len(chunk):]
			entries, err := bg.GetBatch(ctx, chunk)
			if err != nil {
				return nil, nil, err
			}
			for i, e := range entries {
				e.Key = chunk[i]
				add(e)
			}
		}
		return values, containers, nil
	}
	for _, k := range keys {
		e, err := n.under.Get(ctx, k)
		if n.under.ErrorCode(err) == driver.NotFound {
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		e.Key = k
		add(e)
	}
	return values, containers, nil
}

// Watch delivers changes to values and containers below prefix (events do
// not say which).
func (n *Namespace) Watch(ctx context.Context, prefix string) (<-chan driver.Event, error) {
	return n.under.Watch(ctx, prefix)
}

// ErrorCode maps the namespace's errors to portable codes.
func (n *Namespace) ErrorCode(err error) driver.Code {
	if c := driver.CommonCode(err); c != driver.Unknown {
		return c
	}
	return n.under.ErrorCode(err)
}

// Close closes the inner driver.
func (n *Namespace) Close() error { return n.under.Close() }
