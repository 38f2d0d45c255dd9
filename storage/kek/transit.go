// Package kek gives the encrypting overlay data-encryption keys (DEKs) that
// are wrapped by a key-encryption key (KEK) in Vault Transit. DEKs are
// generated locally, wrapped by Transit's encrypt endpoint and stored
// wrapped in a driver next to the data; their plaintext exists only in the
// memory of the process that unwrapped them. Values keep naming the DEK that
// sealed them by "kid", so the overlay itself is unchanged: the DEKs simply
// become the keys of its overlay.KeyRing.
//
// Rotating the KEK (Rotate) re-wraps the stored DEKs and touches no data.
package kek

import (
	"context"
	"encoding/base64"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/sealrun/sealrun/vaultauth"
)

// Transit is a KEK in Vault's Transit engine: the key Key of the engine
// mounted at Mount. The Transit key must exist (an operator creates it; the
// proxy's policy can only encrypt and decrypt with it).
type Transit struct {
	client  *api.Client
	mount   string
	key     string
	timeout time.Duration
}

// NewTransit uses client (already logged in) for the key at mount/keys/key.
// Each call is bounded by timeout (default vaultauth.DefaultTimeout).
func NewTransit(client *api.Client, mount, key string, timeout time.Duration) *Transit {
	if timeout == 0 {
		timeout = vaultauth.DefaultTimeout
	}
	return &Transit{client: client, mount: strings.Trim(mount, "/"), key: key, timeout: timeout}
}

// Name names the KEK as records store it: its API path "<mount>/keys/<key>".
func (t *Transit) Name() string { return t.mount + "/keys/" + t.key }

func (t *Transit) write(ctx context.Context, op string, data map[string]any) (*api.Secret, error) {
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	p := path.Join(t.mount, op, t.key)
	s, err := t.client.Logical().WriteWithContext(ctx, p, data)
	if err != nil {
		return nil, fmt.Errorf("vault transit %s with key %q: %w", op, t.key, vaultauth.Explain(err))
	}
	if s == nil || s.Data == nil {
		return nil, fmt.Errorf("vault transit %s with key %q: empty answer", op, t.key)
	}
	return s, nil
}

// Wrap encrypts a DEK with the newest version of the KEK.
func (t *Transit) Wrap(ctx context.Context, dek []byte) (string, error) {
	s, err := t.write(ctx, "encrypt", map[string]any{"plaintext": base64.StdEncoding.EncodeToString(dek)})
	if err != nil {
		return "", err
	}
	ct, _ := s.Data["ciphertext"].(string)
	if ct == "" {
		return "", fmt.Errorf("vault transit encrypt with key %q: no ciphertext in answer", t.key)
	}
	return ct, nil
}

// Unwrap decrypts a wrapped DEK.
func (t *Transit) Unwrap(ctx context.Context, wrapped string) ([]byte, error) {
	s, err := t.write(ctx, "decrypt", map[string]any{"ciphertext": wrapped})
	if err != nil {
		return nil, err
	}
	pt, _ := s.Data["plaintext"].(string)
	dek, err := base64.StdEncoding.DecodeString(pt)
	if err != nil || len(dek) == 0 {
		return nil, fmt.Errorf("vault transit decrypt with key %q: answer holds no key", t.key)
	}
	return dek, nil
}

// Rewrap re-encrypts a wrapped DEK with the newest KEK version, inside
// Vault: the DEK is never seen by the caller.
func (t *Transit) Rewrap(ctx context.Context, wrapped string) (string, error) {
	s, err := t.write(ctx, "rewrap", map[string]any{"ciphertext": wrapped})
	if err != nil {
		return "", err
	}
	ct, _ := s.Data["ciphertext"].(string)
	if ct == "" {
		return "", fmt.Errorf("vault transit rewrap with key %q: no ciphertext in answer", t.key)
	}
	return ct, nil
}

// KeyInfo is the state of the KEK's versions.
type KeyInfo struct {
	// Latest is the version new wraps use.
	Latest int
	// MinDecryption is the oldest version Vault still decrypts with.
	MinDecryption int
}

// Info reads the KEK's versions.
func (t *Transit) Info(ctx context.Context) (KeyInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	p := path.Join(t.mount, "keys", t.key)
	s, err := t.client.Logical().ReadWithContext(ctx, p)
	if err != nil {
		return KeyInfo{}, fmt.Errorf("vault transit read key %q: %w", t.key, vaultauth.Explain(err))
	}
	if s == nil {
		return KeyInfo{}, fmt.Errorf("vault transit key %q does not exist at %s (create it: vault write -f %s)", t.key, p, p)
	}
	latest, _ := jsonInt(s.Data["latest_version"])
	minDec, _ := jsonInt(s.Data["min_decryption_version"])
	return KeyInfo{Latest: latest, MinDecryption: minDec}, nil
}

// Rotate adds a new KEK version, which later wraps use.
func (t *Transit) Rotate(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	p := path.Join(t.mount, "keys", t.key, "rotate")
	if _, err := t.client.Logical().WriteWithContext(ctx, p, nil); err != nil {
		return fmt.Errorf("vault transit rotate key %q: %w", t.key, vaultauth.Explain(err))
	}
	return nil
}

// Version is the KEK version a Transit ciphertext ("vault:v3:...") was
// made with; 0 if it is not one.
func Version(wrapped string) int {
	rest, ok := strings.CutPrefix(wrapped, "vault:v")
	if !ok {
		return 0
	}
	n, _ := strconv.Atoi(rest[:max(0, strings.IndexByte(rest, ':'))])
	return n
}

func jsonInt(v any) (int, error) {
	switch n := v.(type) {
	case interface{ Int64() (int64, error) }: // json.Number
		i, err := n.Int64()
		return int(i), err
	case float64:
		return int(n), nil
	case int:
		return n, nil
	}
	return 0, fmt.Errorf("not a number: %T", v)
}
