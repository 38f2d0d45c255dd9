package proxy

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sealrun/sealrun/internal/watchcache"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
)

// pepperID names the stored HMAC key for API key hashes. Credential ids must
// start with a letter or digit, so it can never collide with one.
const pepperID = "_pepper"

// Credentials manages API credentials in the secret backend: creation (the
// key is shown once), listing, revocation, and authentication.
//
// Authentication is served from an in-memory cache of stored credentials
// (id, keyed key hash, grant), so a request costs one HMAC and a
// constant-time compare, not a backend read and decrypt. The cache is only
// used while WatchRevocations has a watch on the credential kind
// established: a watch event drops the credential, a broken watch flushes
// everything and turns the cache off until the watch is back. Without a
// watch every request reads the credential from the backend.
type Credentials struct {
	store Store

	keys atomic.Pointer[apiKeyHasher] // nil until the pepper is loaded

	// cache maps an id to its stored credential (nil: known not to exist).
	cache *watchcache.Cache[string, *secrets.APICredential]
	// maxUnknown bounds the entries for ids that do not exist: those are
	// the client's choice. Past it they are not remembered (the failure
	// limiter slows whoever sends them). Set before use.
	maxUnknown int
	log        *slog.Logger // the Server's, once one uses these credentials
}

// NewCredentials returns a credential manager over store.
func NewCredentials(store Store) *Credentials {
	// The TTL only bounds how long an entry lives if the watch silently
	// stalls; revocations normally arrive through the watch at once.
	c := &Credentials{store: store, maxUnknown: 10000, log: slog.New(slog.DiscardHandler)}
	c.cache = watchcache.New(watchcache.Options[string, *secrets.APICredential]{TTL: 30 * time.Second,
		Admit: func(cred *secrets.APICredential, n int) bool { return cred != nil || n < c.maxUnknown }})
	return c
}

// loadPepper reads, or on first use creates, the HMAC key. Concurrent
// creators race through IfAbsent: the loser reads the winner's key.
func (c *Credentials) loadPepper(ctx context.Context) (*apiKeyHasher, error) {
	if h := c.keys.Load(); h != nil {
		return h, nil
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
	h := newAPIKeyHasher([]byte(m.KeyHash))
	if !c.keys.CompareAndSwap(nil, h) {
		h = c.keys.Load() // a concurrent loader read the same stored pepper
	}
	return h, nil
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
	keys, err := c.loadPepper(ctx)
	if err != nil {
		return "", err
	}
	key := NewAPIKey()
	m := &secrets.APICredential{ID: id, KeyHash: hashAPIKey(keys.pepper, id, key), Prefixes: g.Paths, Verbs: g.Verbs}
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

func (c *Credentials) invalidate(id string) { c.cache.Invalidate(id) }

// setLive flushes the cache and records whether a watch now covers it.
func (c *Credentials) setLive(live bool) { c.cache.SetLive("", live) }

// errUnauthenticated is one answer (403) whatever the cause, so a caller cannot probe
// which ids exist.
var errUnauthenticated = errors.New("unknown API id or wrong key")

// Authenticate returns the credential for id if key matches. Backend errors
// are returned as they are (the caller answers 503).
func (c *Credentials) Authenticate(ctx context.Context, id, key string) (*secrets.APICredential, error) {
	if id == "" || key == "" || ValidateCredentialID(id) != nil {
		return nil, errUnauthenticated
	}
	keys, err := c.loadPepper(ctx)
	if err != nil {
		return nil, err
	}
	cred, gen, ok := c.cache.Get(id)
	if !ok {
		m := &secrets.APICredential{ID: id}
		_, err := c.store.Get(ctx, m)
		switch storage.Code(err) {
		case driver.OK:
			cred = m
		case driver.NotFound:
			cred = nil
		default:
			return nil, err
		}
		// Only a fetch that no invalidation raced, under an established
		// watch, is cached: otherwise a revocation could be undone.
		c.cache.Fill(id, cred, gen)
	}
	if cred == nil {
		keys.check(id, key, nil) // same work either way
		return nil, errUnauthenticated
	}
	if !keys.check(id, key, cred.KeyHash) {
		return nil, errUnauthenticated
	}
	return cred, nil
}

// WatchRevocations invalidates cached credentials as they change, until ctx
// ends. The cache is used only while the watch is established: after a
// watch failure everything cached is dropped, authentication reads the
// backend, and the watch is re-established with backoff, so a missed
// revocation cannot linger.
func (c *Credentials) WatchRevocations(ctx context.Context) {
	followWatch(ctx, c.store, secrets.KindAPICredential, c.log.With("cache", "credentials"), c.setLive, c.invalidate)
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
