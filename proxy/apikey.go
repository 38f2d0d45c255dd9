package proxy

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"regexp"
	"strings"
)

// API keys are 256-bit random values shown once at creation. The store
// holds only HMAC-SHA256(pepper, id || 0 || key): reading the store does not
// yield a usable key, and a hash cannot be replayed as a key (Custodia stored
// keys in plaintext, and let any stored value act as one).

const apiKeyPrefix = "sr1."

// idPattern keeps credential ids usable as storage keys and log fields.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidateCredentialID reports whether id may name a credential.
func ValidateCredentialID(id string) error {
	if !idPattern.MatchString(id) {
		return errors.New("credential id must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	return nil
}

// NewAPIKey returns a fresh key in its text form.
func NewAPIKey() string {
	var b [32]byte
	rand.Read(b[:])
	return apiKeyPrefix + base64.RawURLEncoding.EncodeToString(b[:])
}

// hashAPIKey is the keyed hash stored for a credential.
func hashAPIKey(pepper []byte, id, key string) []byte {
	m := hmac.New(sha256.New, pepper)
	m.Write([]byte(id))
	m.Write([]byte{0})
	m.Write([]byte(strings.TrimSpace(key)))
	return m.Sum(nil)
}

// checkAPIKey compares in constant time.
func checkAPIKey(pepper []byte, id, key string, stored []byte) bool {
	return hmac.Equal(hashAPIKey(pepper, id, key), stored)
}
