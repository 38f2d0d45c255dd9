// Package migrate moves existing secrets (StudioML key mounts, kubectl
// output, plain etcd, Custodia, Vault KV, another sealrun store) into a
// sealrun store, and re-encrypts a store under a new master key. A run is
// planned first, written with compare-and-set, read back and verified by
// hash, checkpointed in the state store so a crashed run resumes, and
// reported by name only: no value ever reaches a log, error or report.
package migrate

import (
	"context"

	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
)

// Item is one model a source offers for import.
type Item struct {
	// Model is the model to store; nil when Err is set and the source could
	// not even build one.
	Model secrets.Model
	// Kind and Key name the model (set even when Model is nil, as far as
	// the source knows them).
	Kind, Key string
	// Origin says where the item came from (a file path, an etcd key, a
	// Secret name and data key), for the report and for source deletion.
	Origin string
	// Err is why the source could not produce a valid model (a key file that
	// does not parse). Such an item is reported, never written.
	Err error
	// SkipReason, when set, says why the item is deliberately not imported
	// (e.g. a public key that is derived from a private key).
	SkipReason string
	// revision is the source's revision of the item, when it has one, so a
	// source deletion can be conditional on the item being unchanged.
	revision int64
}

// ID is the item's destination identity: kind/key.
func (it Item) ID() string { return it.Kind + "/" + it.Key }

// Source lists the items to import. Items reads the whole source: the plan
// needs every item (duplicates, passphrase/private-key pairs) before writing.
type Source interface {
	// Items returns every item the source holds.
	Items(ctx context.Context) ([]Item, error)
	// Close releases the source's connections.
	Close() error
}

// Deleter is a Source that can delete an item once it is safely in the
// destination (--delete-source). Sources backed by files a Kubernetes mount
// or kubectl produced do not implement it.
type Deleter interface {
	DeleteItem(ctx context.Context, it Item) error
}

// Store is what a migration writes to: a *storage.Service.
type Store interface {
	Registry() *secrets.Registry
	Put(ctx context.Context, m secrets.Model, opts driver.PutOptions) (int64, error)
	Get(ctx context.Context, m secrets.Model) (int64, error)
	Delete(ctx context.Context, kind, key string, opts driver.DeleteOptions) error
	List(ctx context.Context, kind, prefix string) ([]string, error)
}

// BatchStore is a Store that writes several models atomically, and reads
// several back, in one round trip each (a *storage.Service over etcd). Apply
// batches its writes into such a store; a batch it refuses (a conflict, a
// backend without batches) is retried item by item.
type BatchStore interface {
	Store
	PutBatch(ctx context.Context, items []storage.BatchItem) ([]int64, error)
	GetBatch(ctx context.Context, ms []secrets.Model) ([]int64, error)
}

var _ BatchStore = (*storage.Service)(nil)
