// Package overlay is an encrypting storage driver over any other driver.
// Values are stored in Custodia's EncryptedOverlay format: a compact JWE,
// alg "dir", enc "A256CBC-HS512", pinned to its name by the protected header
// "custodia.key", so a Custodia master key and Custodia-written values work
// unchanged. sealrun adds a "kid" header and a key ring for rotation.
package overlay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/go-jose/go-jose/v4"

	"github.com/sealrun/sealrun/storage/driver"
)

// Protection is Custodia's secret_protection setting.
type Protection int

const (
	// Pinning (the default) writes the pin and requires it on read, so a
	// ciphertext copied to another name does not open.
	Pinning Protection = iota
	// Migrate is Pinning, except values without a pin are accepted and
	// rewritten with one on read.
	Migrate
	// Encrypt writes no pin and accepts values without one: for legacy data
	// only, since ciphertexts can then be swapped between names undetected.
	Encrypt
)

// ParseProtection parses Custodia's names "pinning", "migrate" and "encrypt".
func ParseProtection(s string) (Protection, error) {
	switch s {
	case "", "pinning":
		return Pinning, nil
	case "migrate":
		return Migrate, nil
	case "encrypt":
		return Encrypt, nil
	}
	return 0, fmt.Errorf("protection %q: want pinning, migrate or encrypt", s)
}

// PinHeader is the protected header that binds a value to its name.
const PinHeader = "custodia.key"

// Pin is the pin value for a name: Custodia's database key "keys/<name>".
func Pin(name string) string { return "keys/" + name }

// Allow-lists for parsing: nothing but what we write is ever considered.
var (
	keyAlgs = []jose.KeyAlgorithm{jose.DIRECT}
	encAlgs = []jose.ContentEncryption{jose.A256CBC_HS512}
)

var errNoKey = errors.New("no key to open value")

// Driver encrypts values on their way to another driver.
type Driver struct {
	under driver.Driver
	ring  *KeyRing
	prot  Protection
}

var (
	_ driver.Driver      = (*Driver)(nil)
	_ driver.Batcher     = (*Driver)(nil)
	_ driver.BatchGetter = (*Driver)(nil)
)

// A Driver prints as what it wraps and its key ids: fmt's fallback for a
// struct with unexported fields would otherwise print the ring's key bytes.
func (d *Driver) String() string               { return fmt.Sprintf("overlay over %T with %v", d.under, d.ring) }
func (d *Driver) GoString() string             { return d.String() }
func (d *Driver) Format(f fmt.State, _ rune)   { _, _ = f.Write([]byte(d.String())) }
func (d *Driver) LogValue() slog.Value         { return slog.StringValue(d.String()) }
func (d *Driver) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// New returns an overlay storing ciphertexts in under. Closing it closes under.
func New(under driver.Driver, ring *KeyRing, prot Protection) *Driver {
	return &Driver{under: under, ring: ring, prot: prot}
}

// Seal returns the compact JWE for value stored under name.
func (d *Driver) Seal(name string, value []byte) (string, error) {
	opts := &jose.EncrypterOptions{}
	if d.prot != Encrypt {
		opts = opts.WithHeader(PinHeader, Pin(name))
	}
	k := d.ring.current
	enc, err := jose.NewEncrypter(jose.A256CBC_HS512, jose.Recipient{Algorithm: jose.DIRECT, Key: []byte(k.secret), KeyID: k.ID}, opts)
	if err != nil {
		return "", fmt.Errorf("seal %q: %w", name, err)
	}
	obj, err := enc.Encrypt(value)
	if err != nil {
		return "", fmt.Errorf("seal %q: %w", name, err)
	}
	return obj.CompactSerialize()
}

// KeyID returns the "kid" a stored value names without decrypting it ("" for
// a value written by Custodia, which belongs to the legacy key). The header
// is not authenticated until the value is opened: use it to find work (key
// rotation), never to decide trust.
func KeyID(ciphertext string) (string, error) {
	obj, err := jose.ParseEncryptedCompact(ciphertext, keyAlgs, encAlgs)
	if err != nil {
		return "", fmt.Errorf("not a sealed value (%v): %w", err, driver.ErrIntegrity)
	}
	return obj.Header.KeyID, nil
}

// Open decrypts the ciphertext stored under name and checks its pin. pinned
// reports whether the value carried a pin (false only in Migrate/Encrypt).
func (d *Driver) Open(name, ciphertext string) (plain []byte, pinned bool, err error) {
	obj, err := jose.ParseEncryptedCompact(ciphertext, keyAlgs, encAlgs)
	if err != nil {
		return nil, false, fmt.Errorf("open %q: not a sealed value (%v): %w", name, err, driver.ErrIntegrity)
	}
	k, err := d.ring.lookup(obj.Header.KeyID)
	if err != nil {
		return nil, false, fmt.Errorf("open %q: %w: %w", name, err, driver.ErrIntegrity)
	}
	plain, err = obj.Decrypt([]byte(k.secret))
	if err != nil {
		return nil, false, fmt.Errorf("open %q with key %q: authentication failed (wrong key or tampered value): %w", name, k.ID, driver.ErrIntegrity)
	}
	// Check the pin only after authentication: the header is AAD, so only now
	// is it known to be what was sealed.
	pin, has := obj.Header.ExtraHeaders[PinHeader]
	switch {
	case has && pin != Pin(name):
		return nil, false, fmt.Errorf("open %q: value is pinned to another name (copied or swapped ciphertext): %w", name, driver.ErrIntegrity)
	case !has && d.prot == Pinning:
		return nil, false, fmt.Errorf("open %q: value has no %s pin; use protection \"migrate\" to pin legacy values: %w", name, PinHeader, driver.ErrIntegrity)
	}
	return plain, has, nil
}

// Get implements driver.Driver.
func (d *Driver) Get(ctx context.Context, key string) (driver.Entry, error) {
	e, err := d.under.Get(ctx, key)
	if err != nil {
		return driver.Entry{}, err
	}
	e.Key = key // what the value must be pinned to, whatever the driver filled in
	return d.openEntry(ctx, e)
}

// openEntry opens e read from the inner driver. In Migrate protection an
// unpinned value is rewritten with a pin, as Custodia's migrate mode does:
// by CAS on the revision read, so a concurrent write wins and losing the
// race leaves that newer value.
func (d *Driver) openEntry(ctx context.Context, e driver.Entry) (driver.Entry, error) {
	plain, pinned, err := d.Open(e.Key, string(e.Value))
	if err != nil {
		return driver.Entry{}, err
	}
	e.Value = plain
	if !pinned && d.prot == Migrate {
		if rev, err := d.Put(ctx, e.Key, plain, driver.PutOptions{IfRevision: e.Revision}); err == nil {
			e.Revision = rev
		} else if d.ErrorCode(err) != driver.Conflict {
			return driver.Entry{}, fmt.Errorf("migrate %q: add pin: %w", e.Key, err)
		}
	}
	return e, nil
}

// Put implements driver.Driver. Empty values are refused: Custodia cannot
// read them back.
func (d *Driver) Put(ctx context.Context, key string, value []byte, opts driver.PutOptions) (int64, error) {
	if err := driver.ValidateKey(key); err != nil {
		return 0, err
	}
	if len(value) == 0 {
		return 0, fmt.Errorf("put %q: empty value (cannot be stored encrypted): %w", key, driver.ErrInvalidValue)
	}
	ct, err := d.Seal(key, value)
	if err != nil {
		return 0, err
	}
	return d.under.Put(ctx, key, []byte(ct), opts)
}

// PutBatch implements driver.Batcher by sealing each value and handing the
// batch to the inner driver's Batcher; without one it returns
// driver.ErrBatchUnsupported.
func (d *Driver) PutBatch(ctx context.Context, puts []driver.BatchPut) ([]int64, error) {
	b, ok := d.under.(driver.Batcher)
	if !ok {
		return nil, fmt.Errorf("put batch: %T: %w", d.under, driver.ErrBatchUnsupported)
	}
	if err := driver.CheckBatch(driver.BatchKeys(puts)); err != nil {
		return nil, err
	}
	sealed := make([]driver.BatchPut, len(puts))
	for i, p := range puts {
		if len(p.Value) == 0 {
			return nil, fmt.Errorf("put %q: empty value (cannot be stored encrypted): %w", p.Key, driver.ErrInvalidValue)
		}
		ct, err := d.Seal(p.Key, p.Value)
		if err != nil {
			return nil, err
		}
		sealed[i] = driver.BatchPut{Key: p.Key, Value: []byte(ct), Opts: p.Opts}
	}
	return b.PutBatch(ctx, sealed)
}

// GetBatch implements driver.BatchGetter over the inner driver's, opening
// (and in Migrate protection pinning) each value as Get does; without one
// it returns driver.ErrBatchUnsupported.
func (d *Driver) GetBatch(ctx context.Context, keys []string) ([]driver.Entry, error) {
	b, ok := d.under.(driver.BatchGetter)
	if !ok {
		return nil, fmt.Errorf("get batch: %T: %w", d.under, driver.ErrBatchUnsupported)
	}
	entries, err := b.GetBatch(ctx, keys)
	if err != nil {
		return nil, err
	}
	for i, e := range entries {
		if e.Revision == 0 {
			continue
		}
		if entries[i], err = d.openEntry(ctx, e); err != nil {
			return nil, err
		}
	}
	return entries, nil
}

// Delete implements driver.Driver.
func (d *Driver) Delete(ctx context.Context, key string, opts driver.DeleteOptions) error {
	return d.under.Delete(ctx, key, opts)
}

// List implements driver.Driver; names are not encrypted.
func (d *Driver) List(ctx context.Context, prefix string) ([]string, error) {
	return d.under.List(ctx, prefix)
}

// Watch implements driver.Driver; events carry no values.
func (d *Driver) Watch(ctx context.Context, prefix string) (<-chan driver.Event, error) {
	return d.under.Watch(ctx, prefix)
}

// ErrorCode implements driver.Driver.
func (d *Driver) ErrorCode(err error) driver.Code {
	if c := driver.CommonCode(err); c != driver.Unknown {
		return c
	}
	return d.under.ErrorCode(err)
}

// Close closes the underlying driver.
func (d *Driver) Close() error { return d.under.Close() }
