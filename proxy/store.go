package proxy

import (
	"context"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sealrun/sealrun/storage"
	"log/slog"

	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/driver"
)

// Store is what the proxy needs of a *storage.Service.
type Store interface {
	Registry() *secrets.Registry
	Put(ctx context.Context, m secrets.Model, opts driver.PutOptions) (int64, error)
	Get(ctx context.Context, m secrets.Model) (int64, error)
	Delete(ctx context.Context, kind, key string, opts driver.DeleteOptions) error
	List(ctx context.Context, kind, prefix string) ([]string, error)
	Watch(ctx context.Context, kind, prefix string) (<-chan driver.Event, error)
}

// KindContainer is the model kind of a Custodia container marker.
const KindContainer = secrets.KindContainer

// Container marks that a Custodia container exists.
type Container = secrets.Container

// Registry returns the models the proxy stores (Container is a default).
func Registry() *secrets.Registry { return secrets.Default() }

// typedPrefix is the reserved top-level container under which typed models
// are reachable: /secrets/sealrun/<kind>/<key>.
const typedPrefix = "sealrun"

// exposedKinds are the typed models a credential may reach through the API.
// API credentials (key hashes) and plain state are never exposed; raw values
// are the Custodia namespace itself.
var exposedKinds = map[string]bool{
	secrets.KindMessagePrivateKey: true,
	secrets.KindMessagePassphrase: true,
	secrets.KindSigningKey:        true,
	secrets.KindResponseKey:       true,
	secrets.KindHostCreds:         true,
}

// storageOptions are the service options a proxy's store needs.
func storageOptions(reg prometheus.Registerer, log *slog.Logger) storage.Options {
	return storage.Options{Registry: Registry(), Metrics: reg, Logger: log}
}
