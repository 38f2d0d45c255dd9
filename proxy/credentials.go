package proxy

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
)

// pepperID names the stored HMAC key for API key hashes. Credential ids must
// start with a letter or digit, so it can never collide with one.
const pepperID = "_pepper"

// Credentials manages API credentials in the secret backend: creation (the
// key is shown once), listing, revocation, and authentication with an
// in-memory cache that a watch on the credential kind invalidates, so a
// revocation takes effect at once.
type Credentials struct {
	store Store

	mu     sync.Mutex
	pepper []byte
	cache  map[string]cachedCred
	ttl    time.Duration
	now    func() time.Time
}

type cachedCred struct {
	cred    *secrets.APICredential // nil: known not to exist
	fetched time.Time
}

// NewCredentials returns a credential manager over store.
func NewCredentials(store Store) *Credentials {
	return &Credentials{store: store, cache: map[string]cachedCred{}, ttl: 30 * time.Second, now: time.Now}
}

// loadPepper reads, or on first use creates, the HMAC key. Concurrent
// creators race through IfAbsent: the loser reads the winner's key.
func (c *Credentials) loadPepper(ctx context.Context) ([]byte, error) {
	c.mu.Lock()
	p := c.pepper
	c.mu.Unlock()
	if p != nil {
		return p, nil
	}
	m := &secrets.APICredential{ID: pepperID}
	_, err := c.store.Get(ctx, m)
	if storage.Code(err) == driver.NotFound {
		b := make([]byte, 32)
		rand.Read(b)
		m.KeyHash = b
		_, err = c.store.Put(ctx, m, driver.PutOptions{IfAbsent: true})
		if storage.Code(err) == driver.Conflict {
			_, err = c.store.Get(ctx, m)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("load API key pepper: %w", err)
	}
	if len(m.KeyHash) < 32 {
		return nil, errors.New("stored API key pepper is too short: the credential store is damaged")
	}
	c.mu.Lock()
	c.pepper = m.KeyHash
	c.mu.Unlock()
	return m.KeyHash, nil
}

// Create stores a new credential and returns its key, which is not stored
// anywhere and cannot be shown again.
func (c *Credentials) Create(ctx context.Context, id string, g Grant) (string, error) {
	if err := ValidateCredentialID(id); err != nil {
		return "", err
	}
	if err := g.validate(); err != nil {
		return "", err
	}
	pepper, err := c.loadPepper(ctx)
	if err != nil {
		return "", err
	}
	key := NewAPIKey()
	m := &secrets.APICredential{ID: id, KeyHash: hashAPIKey(pepper, id, key), Prefixes: g.Paths, Verbs: g.Verbs}
	if _, err := c.store.Put(ctx, m, driver.PutOptions{IfAbsent: true}); err != nil {
		if storage.Code(err) == driver.Conflict {
			return "", fmt.Errorf("credential %q already exists; revoke it first to replace its key", id)
		}
		return "", err
	}
	c.invalidate(id)
	return key, nil
}

// List returns the credentials (without their hashes), sorted by id.
func (c *Credentials) List(ctx context.Context) ([]*secrets.APICredential, error) {
	ids, err := c.store.List(ctx, secrets.KindAPICredential, "")
	if err != nil {
		return nil, err
	}
	var out []*secrets.APICredential
	for _, id := range ids {
		if id == pepperID {
			continue
		}
		m := &secrets.APICredential{ID: id}
		if _, err := c.store.Get(ctx, m); err != nil {
			if storage.Code(err) == driver.NotFound {
				continue // revoked meanwhile
			}
			return nil, err
		}
		m.KeyHash = nil
		out = append(out, m)
	}
	return out, nil
}

// Revoke deletes a credential; requests with its key fail from now on.
func (c *Credentials) Revoke(ctx context.Context, id string) error {
	if err := ValidateCredentialID(id); err != nil {
		return err
	}
	err := c.store.Delete(ctx, secrets.KindAPICredential, id, driver.DeleteOptions{})
	c.invalidate(id)
	if storage.Code(err) == driver.NotFound {
		return fmt.Errorf("no credential %q (see sealrun secrets apikey list)", id)
	}
	return err
}

func (c *Credentials) invalidate(id string) {
	c.mu.Lock()
	delete(c.cache, id)
	c.mu.Unlock()
}

func (c *Credentials) invalidateAll() {
	c.mu.Lock()
	c.cache = map[string]cachedCred{}
	c.mu.Unlock()
}

// errUnauthenticated is a 401 whatever the cause, so a caller cannot probe
// which ids exist.
var errUnauthenticated = errors.New("unknown API id or wrong key")

// Authenticate returns the credential for id if key matches. Backend errors
// are returned as they are (the caller answers 503).
func (c *Credentials) Authenticate(ctx context.Context, id, key string) (*secrets.APICredential, error) {
	if id == "" || key == "" || ValidateCredentialID(id) != nil {
		return nil, errUnauthenticated
	}
	pepper, err := c.loadPepper(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	e, ok := c.cache[id]
	c.mu.Unlock()
	if !ok || c.now().Sub(e.fetched) > c.ttl {
		m := &secrets.APICredential{ID: id}
		_, err := c.store.Get(ctx, m)
		switch storage.Code(err) {
		case driver.OK:
			e = cachedCred{cred: m, fetched: c.now()}
		case driver.NotFound:
			e = cachedCred{fetched: c.now()}
		default:
			return nil, err
		}
		c.mu.Lock()
		c.cache[id] = e
		c.mu.Unlock()
	}
	if e.cred == nil {
		hashAPIKey(pepper, id, key) // same work either way
		return nil, errUnauthenticated
	}
	if !checkAPIKey(pepper, id, key, e.cred.KeyHash) {
		return nil, errUnauthenticated
	}
	return e.cred, nil
}

// WatchRevocations invalidates cached credentials as they change, until ctx
// ends. After a watch failure everything cached is dropped and the watch is
// re-established with backoff, so a missed revocation cannot linger.
func (c *Credentials) WatchRevocations(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		ch, err := c.store.Watch(ctx, secrets.KindAPICredential, "")
		if err == nil {
			backoff = 100 * time.Millisecond
			for ev := range ch {
				if ev.Err != nil {
					break
				}
				c.invalidate(ev.Key)
			}
		}
		c.invalidateAll()
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func grantOf(m *secrets.APICredential) Grant { return Grant{Paths: m.Prefixes, Verbs: m.Verbs} }

func (g Grant) validate() error {
	if len(g.Paths) == 0 {
		return errors.New("a credential needs at least one path (e.g. /secrets/sealrun/)")
	}
	for _, p := range g.Paths {
		if p != "/" && p != "/." && !strings.HasPrefix(p, "/secrets") {
			return fmt.Errorf("path %q must start with /secrets", p)
		}
		if strings.Contains(p, "..") || strings.Contains(p, "//") {
			return fmt.Errorf("path %q has an empty or .. segment", p)
		}
	}
	if len(g.Verbs) == 0 {
		return fmt.Errorf("a credential needs at least one verb of %v", allVerbs)
	}
	for _, v := range g.Verbs {
		if v != "*" && !slices.Contains(allVerbs, v) {
			return fmt.Errorf("unknown verb %q (want some of %v, or *)", v, allVerbs)
		}
	}
	return nil
}
