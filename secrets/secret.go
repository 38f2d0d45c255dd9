// Package secrets defines sealrun's storage models and says, per model type,
// whether its contents are secret. The storage service routes on that alone:
// a SecretModel only ever reaches an encrypting backend.
package secrets

import (
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
)

// Redacted is what every human-facing form of a Secret prints.
const Redacted = "[REDACTED]"

// Secret is secret bytes (a private key, a passphrase, a hashed API key).
//
// Every form meant for people — fmt verbs including %#v, slog, encoding.TextMarshaler
// — prints [REDACTED]. Its JSON form is the storage encoding (base64), so a
// model round-trips through the storage codec; never json-encode a model for
// display (models implement slog.LogValuer so slog's JSON handler does not).
type Secret []byte

// String returns [REDACTED].
func (Secret) String() string { return Redacted }

// GoString returns [REDACTED], so %#v does not dump the bytes.
func (Secret) GoString() string { return Redacted }

// Format prints [REDACTED] for every verb, so %x, %s or %q cannot bypass String.
func (Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(Redacted)) }

// LogValue redacts the secret in slog output.
func (Secret) LogValue() slog.Value { return slog.StringValue(Redacted) }

// MarshalText redacts: text forms are for logs and configs, not storage.
func (Secret) MarshalText() ([]byte, error) { return []byte(Redacted), nil }

// MarshalJSON is the storage encoding: standard base64 of the bytes.
func (s Secret) MarshalJSON() ([]byte, error) {
	return json.Marshal(base64.StdEncoding.EncodeToString(s))
}

// UnmarshalJSON decodes the storage encoding written by MarshalJSON.
func (s *Secret) UnmarshalJSON(b []byte) error {
	var text string
	if err := json.Unmarshal(b, &text); err != nil {
		return fmt.Errorf("secret: want a base64 string: %w", err)
	}
	raw, err := base64.StdEncoding.DecodeString(text)
	if err != nil {
		// The decoder's error carries an offset only, never input bytes.
		return fmt.Errorf("secret: %w", err)
	}
	*s = raw
	return nil
}

// Reveal returns the secret bytes. Callers own keeping them out of logs.
func (s Secret) Reveal() []byte { return s }

// Equal compares in constant time, so timing does not leak how much matched.
func (s Secret) Equal(o Secret) bool { return subtle.ConstantTimeCompare(s, o) == 1 }
