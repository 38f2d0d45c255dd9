package proxy

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"hash"
	"regexp"
	"strings"
	"sync"
)

// API keys are 256-bit random values shown once at creation. The store
// holds only HMAC-SHA256(pepper, id || 0 || key): reading the store does not
// yield a usable key, and a hash cannot be replayed as a key (Custodia stored
// keys in plaintext, and let any stored value act as one).

const apiKeyPrefix = "sr1."

// idPattern keeps credential ids usable as storage keys and log fields.
// validID checks it on every request without the regexp engine (1% of an
// uncached GET's CPU); TestValidIDMatchesPattern holds the two equal.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

func validID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != '-') {
			return false
		}
	}
	return true
}

// ValidateCredentialID reports whether id may name a credential.
func ValidateCredentialID(id string) error {
	if !validID(id) {
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
	return sumAPIKey(m, id, key, nil)
}

func sumAPIKey(m hash.Hash, id, key string, out []byte) []byte {
	m.Write([]byte(id))
	m.Write([]byte{0})
	m.Write([]byte(strings.TrimSpace(key)))
	return m.Sum(out)
}

// apiKeyHasher hashes API keys under one pepper, reusing HMAC states: it is
// on every request's path, and a fresh HMAC costs two hash states and the
// key schedule.
type apiKeyHasher struct {
	pepper []byte
	macs   sync.Pool // of hash.Hash keyed with pepper
}

func newAPIKeyHasher(pepper []byte) *apiKeyHasher {
	h := &apiKeyHasher{pepper: pepper}
	h.macs.New = func() any { return hmac.New(sha256.New, pepper) }
	return h
}

// check reports, in constant time, whether key hashes to stored.
func (h *apiKeyHasher) check(id, key string, stored []byte) bool {
	m := h.macs.Get().(hash.Hash)
	defer h.macs.Put(m)
	m.Reset()
	var buf [sha256.Size]byte
	return hmac.Equal(sumAPIKey(m, id, key, buf[:0]), stored)
}
