package overlay

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sort"

	"github.com/go-jose/go-jose/v4"

	"github.com/sealrun/sealrun/secrets"
)

// KeySize is the A256CBC-HS512 key length: 32 bytes of HMAC key, then 32 of AES.
const KeySize = 64

// Key is one master key. Its bytes redact themselves when printed.
type Key struct {
	// ID is the JWK's "kid", or for a key file without one (Custodia's
	// format) its RFC 7638 thumbprint, so new writes can still name it.
	ID string
	// Legacy marks the key that opens values written without a "kid",
	// i.e. by Custodia. Keys loaded from a file with no "kid" are legacy.
	Legacy bool
	secret secrets.Secret
}

// Every human-facing form of a Key names it by id only: fmt (all verbs,
// %#v included), slog and text/JSON marshalling never reach its bytes.
func (k Key) String() string               { return "key " + k.ID }
func (k Key) GoString() string             { return k.String() }
func (k Key) Format(f fmt.State, _ rune)   { _, _ = f.Write([]byte(k.String())) }
func (k Key) LogValue() slog.Value         { return slog.StringValue(k.String()) }
func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// NewKey wraps 64 raw key bytes; an empty id is replaced by the thumbprint.
func NewKey(id string, raw []byte) (Key, error) {
	if len(raw) != KeySize {
		return Key{}, fmt.Errorf("master key %q is %d bytes, A256CBC-HS512 needs %d", id, len(raw), KeySize)
	}
	k := Key{ID: id, secret: append(secrets.Secret(nil), raw...)}
	if id == "" {
		k.ID, k.Legacy = thumbprint(raw), true
	}
	return k, nil
}

// thumbprint is the RFC 7638 SHA-256 thumbprint of an oct JWK: the hash of
// its required members as sorted, compact JSON (exactly Custodia's file).
func thumbprint(raw []byte) string {
	canon, _ := json.Marshal(map[string]string{"k": base64.RawURLEncoding.EncodeToString(raw), "kty": "oct"})
	sum := sha256.Sum256(canon)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// LoadKeyFile reads a master key file: one JWK {"k":"<base64url>","kty":"oct"}
// as Custodia writes it (an optional "alg" or "kid" is honoured). With
// autogen, an absent file is created with a fresh key, mode 0600, and an
// existing one is never overwritten.
func LoadKeyFile(path string, autogen bool) (Key, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && autogen {
		if err := generateKeyFile(path); err != nil && !errors.Is(err, fs.ErrExist) {
			return Key{}, err
		}
		// Read back, also when another process won the race to create it.
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return Key{}, fmt.Errorf("read master key: %w (set autogen to create one)", err)
	}
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(data); err != nil {
		// The decoder's error may quote key bytes; say where, not what.
		return Key{}, fmt.Errorf(`master key %s: not a JWK like {"k":"<base64url>","kty":"oct"}`, path)
	}
	raw, ok := jwk.Key.([]byte)
	if !ok {
		return Key{}, fmt.Errorf("master key %s: JWK is %T, want an oct (symmetric) key", path, jwk.Key)
	}
	k, err := NewKey(jwk.KeyID, raw)
	if err != nil {
		return Key{}, fmt.Errorf("master key %s: %w", path, err)
	}
	return k, nil
}

// GenerateKeyFile creates a new key file with a "kid" (so values sealed with
// it name it, for rotation), mode 0600, never replacing an existing file.
func GenerateKeyFile(path, kid string) (Key, error) {
	if kid == "" {
		return Key{}, errors.New("generate master key: a kid is required (a key without one is the legacy key)")
	}
	if err := writeKeyFile(path, kid); err != nil {
		return Key{}, err
	}
	return LoadKeyFile(path, false)
}

// generateKeyFile writes a new Custodia-format key with O_EXCL, so an
// existing key is never replaced.
func generateKeyFile(path string) error { return writeKeyFile(path, "") }

// writeKeyFile writes a new key, with kid unless it is empty (Custodia's
// format has none), with O_EXCL.
func writeKeyFile(path, kid string) error {
	raw := make([]byte, KeySize)
	if _, err := rand.Read(raw); err != nil {
		return err
	}
	jwk := map[string]string{"k": base64.RawURLEncoding.EncodeToString(raw), "kty": "oct"}
	if kid != "" {
		jwk["kid"] = kid
	}
	data, _ := json.Marshal(jwk)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create master key: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("write master key %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return fmt.Errorf("write master key %s: %w", path, err)
	}
	return nil
}

// KeyRing holds the key new values are sealed with and every key that may
// open old ones, so rotating keys never makes stored values unreadable.
type KeyRing struct {
	current Key
	byID    map[string]Key
	legacy  *Key
}

// NewKeyRing seals with current and opens with current and others. At most
// one key may be Legacy.
func NewKeyRing(current Key, others ...Key) (*KeyRing, error) {
	r := &KeyRing{current: current, byID: map[string]Key{}}
	for _, k := range append([]Key{current}, others...) {
		if len(k.secret) != KeySize {
			return nil, fmt.Errorf("key ring: %v is not a loaded key", k)
		}
		if _, dup := r.byID[k.ID]; dup {
			return nil, fmt.Errorf("key ring: key id %q appears twice", k.ID)
		}
		r.byID[k.ID] = k
		if k.Legacy {
			if r.legacy != nil {
				return nil, fmt.Errorf("key ring: keys %q and %q both claim to be the legacy (no kid) key", r.legacy.ID, k.ID)
			}
			r.legacy = &k
		}
	}
	return r, nil
}

// A KeyRing prints as its key ids, never their bytes (its fields are
// unexported, so fmt would otherwise print the keys' bytes raw).
func (r KeyRing) String() string {
	return fmt.Sprintf("key ring current=%s ids=%q", r.current.ID, r.IDs())
}
func (r KeyRing) GoString() string             { return r.String() }
func (r KeyRing) Format(f fmt.State, _ rune)   { _, _ = f.Write([]byte(r.String())) }
func (r KeyRing) LogValue() slog.Value         { return slog.StringValue(r.String()) }
func (r KeyRing) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// CurrentID is the id of the key new values are sealed with.
func (r *KeyRing) CurrentID() string { return r.current.ID }

// IDs lists the ring's key ids, sorted.
func (r KeyRing) IDs() []string {
	ids := make([]string, 0, len(r.byID))
	for id := range r.byID {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// lookup picks the key a value names; kid "" means the legacy key.
func (r *KeyRing) lookup(kid string) (Key, error) {
	if kid == "" {
		if r.legacy == nil {
			return Key{}, fmt.Errorf("value has no kid (written by Custodia or an old sealrun) and the key ring has no legacy key (have %q): %w", r.IDs(), errNoKey)
		}
		return *r.legacy, nil
	}
	k, ok := r.byID[kid]
	if !ok {
		return Key{}, fmt.Errorf("value was sealed with key id %q, which is not in the key ring (have %q): %w", kid, r.IDs(), errNoKey)
	}
	return k, nil
}
