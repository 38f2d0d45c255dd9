package proxy

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/sealrun/sealrun/internal/watchcache"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/driver"
)

// valueCache holds values as the API returns them (decrypted), so an
// uncached client GET costs no backend round trip and no JWE decrypt. It is
// correct only over a backend whose Watch reports every change: entries of a
// kind are served only while a watch on that kind is established (watch
// events drop entries; a broken watch flushes the kind and turns it off
// until the watch is back), and writes through this proxy drop their entry
// before they answer, so its own clients read their writes. Changes made
// around the proxy become visible when their watch event arrives.
//
// Values in it are secrets: nothing here logs, counts or labels them, or
// their names.
type valueCache struct {
	c *watchcache.Cache[cacheKey, value]
}

type cacheKey struct{ kind, key string }

// maxAge bounds how long an entry is served without a backend read. The
// watch keeps entries exact while it delivers; the bound covers a watch
// that stalls without failing (etcd's client retries an unreachable
// cluster silently), so a partitioned proxy serves a value at most this
// stale — as the credential cache's TTL bounds a missed revocation.
const maxAge = 30 * time.Second

// valueKinds are the kinds GET serves, and so the kinds cached and watched.
func valueKinds() []string {
	kinds := []string{secrets.KindRaw}
	for k := range exposedKinds {
		kinds = append(kinds, k)
	}
	return kinds
}

// newValueCache is bounded by entries and bytes; each kind is served while
// its own watch is established.
func newValueCache(max int, maxBytes int64) *valueCache {
	return &valueCache{watchcache.New(watchcache.Options[cacheKey, value]{TTL: maxAge, MaxEntries: max, MaxBytes: maxBytes,
		Size: entrySize, Partition: func(k cacheKey) string { return k.kind }})}
}

// get returns the cached value, or the generation a fill must quote.
func (c *valueCache) get(kind, key string) (value, watchcache.Gen, bool) {
	return c.c.Get(cacheKey{kind, key})
}

// fill caches v read from the backend, unless the kind's watch is down or
// an invalidation happened since get returned gen (the read may predate
// the change that caused it).
func (c *valueCache) fill(kind, key string, v value, gen watchcache.Gen) {
	c.c.Fill(cacheKey{kind, key}, v, gen)
}

// invalidate drops one entry: a write through this proxy or a watch event.
func (c *valueCache) invalidate(kind, key string) { c.c.Invalidate(cacheKey{kind, key}) }

// setLive flushes kind and records whether its watch is established.
func (c *valueCache) setLive(kind string, live bool) { c.c.SetLive(kind, live) }

// size returns the number of entries and their bytes.
func (c *valueCache) size() (int, int64) { return c.c.Size() }

// entryOverhead approximates an entry's map slot, key and header bytes,
// so that many tiny values are bounded by bytes too.
const entryOverhead = 96

func entrySize(k cacheKey, v value) int64 {
	return int64(len(k.kind) + len(k.key) + len(v) + entryOverhead)
}

// flushPrefix drops the entries of kind whose keys start with prefix ("":
// all). A client's watch stream on prefix starting now may be ahead of the
// cache's own watch; without the flush, a value below it changed just
// before the stream started could be served after its "ready" and never be
// followed by an event. Values outside the stream's prefix are not its
// concern, and stay.
func (c *valueCache) flushPrefix(kind, prefix string) {
	c.c.Flush(func(k cacheKey) bool { return k.kind == kind && strings.HasPrefix(k.key, prefix) })
}

// WatchValues keeps the server's value cache correct until ctx ends: one
// watch per kind GET serves. Until a kind's watch is established the cache
// is not used for it. A no-op when the cache is off (Options.ValueCache 0).
func (s *Server) WatchValues(ctx context.Context) {
	if s.values == nil {
		return
	}
	var wg sync.WaitGroup
	for _, kind := range valueKinds() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.watchKind(ctx, kind)
		}()
	}
	wg.Wait()
}

func (s *Server) watchKind(ctx context.Context, kind string) {
	followWatch(ctx, s.o.Store, kind, s.o.Logger.With("cache", "values", "kind", kind),
		func(live bool) { s.values.setLive(kind, live) },
		func(key string) { s.values.invalidate(kind, key) })
}

// followWatch keeps a watch on kind open until ctx ends, re-establishing it
// with backoff: live(true) once it is established (everything cached
// before may predate a change, so the cache flushes), invalidate for every
// change, live(false) while it is down (the cache is not used).
func followWatch(ctx context.Context, store Store, kind string, log *slog.Logger, live func(bool), invalidate func(key string)) {
	watchcache.Follow(ctx, func(ctx context.Context) (<-chan driver.Event, error) { return store.Watch(ctx, kind, "") },
		func() { live(true) },
		func(ev driver.Event) bool {
			if ev.Err != nil {
				log.Warn("cache watch failed; cache off until it is re-established", "err", ev.Err)
				return false
			}
			invalidate(ev.Key)
			return true
		},
		func(err error, retryIn time.Duration) {
			if err != nil && ctx.Err() == nil {
				log.Warn("cache watch could not start; retrying", "err", err, "retry_in", retryIn)
			}
			live(false)
		})
}
