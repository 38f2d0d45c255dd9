package secrets

import (
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sort"
	"sync"
)

// Model is something the storage service stores: a kind (its registered
// name) and a primary key, a '/'-separated path unique within the kind.
// Models are used as pointers so the service can decode into them.
type Model interface {
	Kind() string
	Key() string
}

// SecretModel is a Model whose whole encoded form must only reach an
// encrypting backend. Implement it by embedding Confidential.
type SecretModel interface {
	Model
	confidential()
}

// Confidential marks a model type as secret when embedded. The marker is a
// method, not a tag or a flag, so secrecy is part of the type and cannot be
// forgotten at a call site.
type Confidential struct{}

func (Confidential) confidential() {}

// IsSecret reports whether m must be routed to the secret backend.
func IsSecret(m Model) bool {
	_, ok := m.(SecretModel)
	return ok
}

// ErrUnregistered is returned for a model whose kind or Go type is not in the
// registry. There is no fallback to plain storage.
var ErrUnregistered = errors.New("model not registered")

// Registry maps kinds to model constructors. Registration is explicit so a
// new model type cannot slip into storage without deciding its routing.
type Registry struct {
	mu    sync.RWMutex
	kinds map[string]entry
}

type entry struct {
	typ  reflect.Type
	make func(key string) Model
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{kinds: map[string]entry{}} }

// Register adds a kind. newModel returns a pointer to a zero model with its
// primary key set; its Kind must equal kind. Registering a kind twice panics
// (a programming error found at start-up).
func (r *Registry) Register(kind string, newModel func(key string) Model) {
	m := newModel("")
	if m == nil || m.Kind() != kind || reflect.TypeOf(m).Kind() != reflect.Pointer {
		panic(fmt.Sprintf("secrets: Register(%q): constructor must return a pointer model of that kind", kind))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.kinds[kind]; dup {
		panic(fmt.Sprintf("secrets: kind %q registered twice", kind))
	}
	r.kinds[kind] = entry{typ: reflect.TypeOf(m), make: newModel}
}

// New returns an empty model of kind with its primary key set.
func (r *Registry) New(kind, key string) (Model, error) {
	r.mu.RLock()
	e, ok := r.kinds[kind]
	r.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("kind %q: %w (known kinds: %v)", kind, ErrUnregistered, r.Kinds())
	}
	return e.make(key), nil
}

// Check returns an error unless m's kind is registered with m's exact Go type,
// so a plain type cannot claim a secret kind's name or the reverse.
func (r *Registry) Check(m Model) error {
	if m == nil {
		return fmt.Errorf("nil model: %w", ErrUnregistered)
	}
	r.mu.RLock()
	e, ok := r.kinds[m.Kind()]
	r.mu.RUnlock()
	if !ok || e.typ != reflect.TypeOf(m) {
		return fmt.Errorf("%T with kind %q: %w", m, m.Kind(), ErrUnregistered)
	}
	return nil
}

// IsSecretKind reports whether kind is registered and secret.
func (r *Registry) IsSecretKind(kind string) (secret bool, err error) {
	m, err := r.New(kind, "")
	if err != nil {
		return false, err
	}
	return IsSecret(m), nil
}

// Kinds lists the registered kinds, sorted.
func (r *Registry) Kinds() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.kinds))
	for k := range r.kinds {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// logValue is every model's slog form: kind and key only, so a model handed to
// slog (even its JSON handler, which would otherwise json-encode it) never
// prints its contents.
func logValue(m Model) slog.Value {
	return slog.GroupValue(slog.String("kind", m.Kind()), slog.String("key", m.Key()))
}
