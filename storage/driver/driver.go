// Package driver is the small interface every storage backend implements.
// The portable storage.Service wraps a Driver and owns routing, encoding,
// metrics and error codes once; drivers only move bytes under keys.
package driver

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Entry is a stored value and its revision.
type Entry struct {
	Key   string
	Value []byte
	// Revision changes on every write of the key and is what Put and Delete
	// compare against. Only equality and "greater is newer" are meaningful.
	Revision int64
}

// PutOptions make a Put conditional (compare-and-set).
type PutOptions struct {
	// IfAbsent makes the Put fail with Conflict when the key exists.
	IfAbsent bool
	// IfRevision, when non-zero, makes the Put fail with Conflict unless the
	// key's current revision equals it.
	IfRevision int64
}

// DeleteOptions make a Delete conditional.
type DeleteOptions struct {
	// IfRevision, when non-zero, makes the Delete fail with Conflict unless
	// the key's current revision equals it.
	IfRevision int64
}

// EventType says what happened to a key.
type EventType int

// Event types.
const (
	EventPut EventType = iota + 1
	EventDelete
)

func (t EventType) String() string {
	switch t {
	case EventPut:
		return "put"
	case EventDelete:
		return "delete"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// Event is a change to a key. It carries no value, so secrets never travel
// through watch channels; call Get for the value.
type Event struct {
	Type     EventType
	Key      string
	Revision int64
	// Err is set on the last event before the channel closes because the
	// watch failed (as opposed to its context ending).
	Err error
}

// Driver stores byte values under '/'-separated keys.
//
// Keys must pass ValidateKey; a driver rejects others with an error whose
// code is InvalidKey. Every method honours ctx.
type Driver interface {
	// Get returns the value and revision of key, or a NotFound error.
	Get(ctx context.Context, key string) (Entry, error)
	// Put writes value under key and returns the new revision. A failed
	// condition returns a Conflict error.
	Put(ctx context.Context, key string, value []byte, opts PutOptions) (int64, error)
	// Delete removes key entirely; a missing key is a NotFound error.
	Delete(ctx context.Context, key string, opts DeleteOptions) error
	// List returns the keys below the directory prefix (see DirPrefix),
	// sorted, recursively.
	List(ctx context.Context, prefix string) ([]string, error)
	// Watch delivers, in order, the changes below the directory prefix made
	// after Watch returns. The channel closes when ctx ends or the watch fails.
	Watch(ctx context.Context, prefix string) (<-chan Event, error)
	// ErrorCode maps an error returned by this driver to a portable Code.
	ErrorCode(error) Code
	// Close releases the driver's resources (not those passed in to it).
	Close() error
}

// Code is a portable error code.
type Code int

// Portable error codes.
const (
	Unknown Code = iota
	OK
	NotFound
	Conflict     // a compare-and-set condition failed
	InvalidKey   // the key fails ValidateKey
	InvalidValue // e.g. an empty value where the backend cannot store one
	Unavailable  // the backend cannot be reached; retrying may help
	Canceled     // the context was cancelled or timed out
	PermissionDenied
	Integrity // a value failed authentication, its pin, or no key can open it
)

var codeNames = [...]string{"Unknown", "OK", "NotFound", "Conflict", "InvalidKey", "InvalidValue",
	"Unavailable", "Canceled", "PermissionDenied", "Integrity"}

func (c Code) String() string {
	if c >= 0 && int(c) < len(codeNames) {
		return codeNames[c]
	}
	return fmt.Sprintf("Code(%d)", int(c))
}

// Sentinel errors drivers wrap so CommonCode can classify them.
var (
	ErrNotFound     = errors.New("not found")
	ErrConflict     = errors.New("revision conflict")
	ErrInvalidKey   = errors.New("invalid key")
	ErrInvalidValue = errors.New("invalid value")
	ErrIntegrity    = errors.New("integrity check failed")
	ErrClosed       = errors.New("driver closed")
	// ErrTooLarge is an ErrInvalidValue: the backend refuses a value this
	// large (etcd's --max-request-bytes, Vault's max_request_size).
	ErrTooLarge = fmt.Errorf("%w: too large for the backend", ErrInvalidValue)
	// ErrBatchUnsupported is returned by a wrapping driver (the overlay) whose
	// inner driver cannot batch; callers fall back to single puts themselves,
	// since only they know whether losing atomicity is acceptable.
	ErrBatchUnsupported = errors.New("batch not supported by backend")
)

// CommonCode classifies the sentinels above and context errors; drivers call
// it from ErrorCode after their own backend-specific cases.
func CommonCode(err error) Code {
	switch {
	case err == nil:
		return OK
	case errors.Is(err, context.Canceled):
		return Canceled
	case errors.Is(err, context.DeadlineExceeded):
		// The backend did not answer in time: retrying later may help.
		return Unavailable
	case errors.Is(err, ErrNotFound):
		return NotFound
	case errors.Is(err, ErrConflict):
		return Conflict
	case errors.Is(err, ErrInvalidKey):
		return InvalidKey
	case errors.Is(err, ErrInvalidValue):
		return InvalidValue
	case errors.Is(err, ErrIntegrity):
		return Integrity
	case errors.Is(err, ErrClosed):
		return Unavailable
	}
	return Unknown
}

// MaxKeyLen bounds keys so every backend (etcd's 1.5 MiB requests, Vault's
// URL paths) can hold them.
const MaxKeyLen = 1024

// ValidateKey rejects keys no backend should see: empty, over-long, invalid
// UTF-8, NUL or control bytes, a leading or trailing '/', empty segments and
// "." or ".." segments (which path-based backends such as Vault would resolve).
func ValidateKey(key string) error {
	bad := func(why string) error { return fmt.Errorf("key %q: %s: %w", key, why, ErrInvalidKey) }
	switch {
	case key == "":
		return bad("empty")
	case len(key) > MaxKeyLen:
		return fmt.Errorf("key of %d bytes: longer than %d: %w", len(key), MaxKeyLen, ErrInvalidKey)
	case !utf8.ValidString(key):
		return fmt.Errorf("key %q: not valid UTF-8: %w", key, ErrInvalidKey)
	}
	for _, r := range key {
		if r < 0x20 || r == 0x7f {
			return bad("control character")
		}
	}
	for _, seg := range strings.Split(key, "/") {
		switch seg {
		case "":
			return bad("empty path segment (leading, trailing or double '/')")
		case ".", "..":
			return bad(`"." and ".." segments are not allowed`)
		}
	}
	return nil
}

// DirPrefix turns a List or Watch prefix into a directory prefix: "" means
// everything, otherwise the result ends in '/' so "a/b" never matches "a/bc".
func DirPrefix(prefix string) (string, error) {
	prefix = strings.TrimSuffix(prefix, "/")
	if prefix == "" {
		return "", nil
	}
	if err := ValidateKey(prefix); err != nil {
		return "", err
	}
	return prefix + "/", nil
}

// BatchPut is one conditional write of a batch.
type BatchPut struct {
	Key   string
	Value []byte
	Opts  PutOptions
}

// Batcher is implemented by drivers that apply several conditional puts
// atomically in one round trip.
type Batcher interface {
	// PutBatch writes all puts or none. If any condition fails, nothing is
	// written and the error's code is Conflict. Revisions are returned in order.
	//
	// A key may appear only once in a batch (InvalidKey otherwise), and a
	// batch of more than MaxBatch puts may be refused with InvalidValue:
	// splitting it would break atomicity, so callers split instead.
	PutBatch(ctx context.Context, puts []BatchPut) ([]int64, error)
}

// BatchGetter is implemented by drivers that read several keys in one round
// trip (e.g. to verify a batch just written).
type BatchGetter interface {
	// GetBatch returns one entry per key, in order, from one consistent
	// snapshot. A missing key is not an error: its entry has the key, a nil
	// Value and Revision 0 (no stored value ever has revision 0). Any other
	// failure, for any key, fails the whole call. At most MaxBatch keys.
	GetBatch(ctx context.Context, keys []string) ([]Entry, error)
}

// MaxBatch is the largest batch every Batcher and BatchGetter accepts. It
// keeps an etcd transaction within etcd's default --max-txn-ops (128) even
// when every put carries both conditions (two compares each).
const MaxBatch = 64

// CheckBatch validates the keys of a batch: each valid, none repeated, at
// most MaxBatch of them. Drivers call it before touching the backend.
func CheckBatch(keys []string) error {
	if len(keys) > MaxBatch {
		return fmt.Errorf("batch of %d keys: more than %d: %w", len(keys), MaxBatch, ErrInvalidValue)
	}
	seen := make(map[string]struct{}, len(keys))
	for _, k := range keys {
		if err := ValidateKey(k); err != nil {
			return err
		}
		if _, dup := seen[k]; dup {
			return fmt.Errorf("key %q: repeated in one batch: %w", k, ErrInvalidKey)
		}
		seen[k] = struct{}{}
	}
	return nil
}

// BatchKeys returns the keys of puts, in order.
func BatchKeys(puts []BatchPut) []string {
	keys := make([]string, len(puts))
	for i, p := range puts {
		keys[i] = p.Key
	}
	return keys
}

type setupKey struct{}

// WithSetupTimeout returns ctx carrying a bound for the blocking start of a
// long-lived call (a Watch's first read). ctx itself cannot carry it: its
// deadline would also end the stream.
func WithSetupTimeout(ctx context.Context, d time.Duration) context.Context {
	return context.WithValue(ctx, setupKey{}, d)
}

// SetupContext is the context for that start: ctx bounded by the timeout
// WithSetupTimeout put in it, if any. A driver whose start may wait
// forever (etcd's client waits for an unreachable cluster) uses it; one
// whose every request is already bounded (Vault's HTTP client) need not,
// so a long first listing is not cut short.
func SetupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if d, ok := ctx.Value(setupKey{}).(time.Duration); ok && d > 0 {
		return context.WithTimeout(ctx, d)
	}
	return context.WithCancel(ctx)
}
