// Package watchcache is the one cache kept correct by a change watch: a
// generation counter (a fill that raced an invalidation is dropped, so a
// read from before a change is never cached after it), per-partition live
// flags (entries are served only while their partition's watch is
// established), a TTL (bounding how stale an entry is served if the watch
// stalls without failing), optional bounds, and Follow, the watch-and-retry
// loop that drives it.
package watchcache

import (
	"fmt"
	"sync"
	"time"
)

// Options configure a Cache.
type Options[K comparable, V any] struct {
	// TTL is how long an entry is served after its fill.
	TTL time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Partition names the watch that covers k ("" for every key when nil).
	Partition func(k K) string
	// AlwaysLive serves entries whether or not a watch is established (the
	// owner flushes instead when its watch is down).
	AlwaysLive bool
	// Admit, if set, says whether an entry may be added when the cache
	// holds n entries; a refused fill is not cached.
	Admit func(v V, n int) bool
	// MaxEntries and MaxBytes (0: unbounded) bound the cache, Size giving
	// an entry's bytes: a fill evicts arbitrary entries (Go's map order is
	// random, which needs no bookkeeping on the read path, unlike LRU) until
	// it fits, and one entry larger than an eighth of MaxBytes is not cached.
	MaxEntries int
	MaxBytes   int64
	Size       func(k K, v V) int64
}

// Cache is a watched cache; the zero value is not usable, see New.
type Cache[K comparable, V any] struct {
	o Options[K, V]

	mu      sync.RWMutex
	entries map[K]entry[V]
	bytes   int64
	live    map[string]bool
	gen     uint64 // bumped on every invalidation
}

type entry[V any] struct {
	v  V
	at time.Time
}

// Gen is the generation a fill quotes: the cache's at the time of the read
// whose result is filled in.
type Gen uint64

// New returns an empty cache; no partition is live until SetLive.
func New[K comparable, V any](o Options[K, V]) *Cache[K, V] {
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Cache[K, V]{o: o, entries: map[K]entry[V]{}, live: map[string]bool{}}
}

func (c *Cache[K, V]) part(k K) string {
	if c.o.Partition == nil {
		return ""
	}
	return c.o.Partition(k)
}

func (c *Cache[K, V]) liveLocked(k K) bool { return c.o.AlwaysLive || c.live[c.part(k)] }

// Get returns k's entry if it is served, and in any case the generation a
// fill after a backend read must quote.
func (c *Cache[K, V]) Get(k K) (V, Gen, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var zero V
	if !c.liveLocked(k) {
		return zero, Gen(c.gen), false
	}
	e, ok := c.entries[k]
	if !ok || c.o.Now().Sub(e.at) > c.o.TTL {
		return zero, Gen(c.gen), false
	}
	return e.v, Gen(c.gen), true
}

// Fill caches v, read from the backend after Get returned gen, unless k's
// watch is down, an invalidation happened since (the read may predate the
// change that caused it), or the bounds refuse it. It reports whether v was
// cached.
func (c *Cache[K, V]) Fill(k K, v V, gen Gen) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.liveLocked(k) || Gen(c.gen) != gen {
		return false
	}
	if c.o.Admit != nil && !c.o.Admit(v, len(c.entries)) {
		return false
	}
	var size int64
	if c.o.Size != nil {
		size = c.o.Size(k, v)
	}
	if c.o.MaxBytes > 0 && size > c.o.MaxBytes/8 {
		return false // one value must not flush an eighth of the cache
	}
	c.deleteLocked(k)
	for old := range c.entries {
		if (c.o.MaxEntries <= 0 || len(c.entries) < c.o.MaxEntries) && (c.o.MaxBytes <= 0 || c.bytes+size <= c.o.MaxBytes) {
			break
		}
		c.deleteLocked(old)
	}
	c.entries[k] = entry[V]{v: v, at: c.o.Now()}
	c.bytes += size
	return true
}

func (c *Cache[K, V]) deleteLocked(k K) {
	if e, ok := c.entries[k]; ok {
		if c.o.Size != nil {
			c.bytes -= c.o.Size(k, e.v)
		}
		delete(c.entries, k)
	}
}

// Invalidate drops k: a write through the owner, or a watch event.
func (c *Cache[K, V]) Invalidate(k K) {
	c.mu.Lock()
	c.deleteLocked(k)
	c.gen++
	c.mu.Unlock()
}

// Flush drops the entries match selects (nil: all).
func (c *Cache[K, V]) Flush(match func(K) bool) {
	c.mu.Lock()
	c.flushLocked(match)
	c.mu.Unlock()
}

func (c *Cache[K, V]) flushLocked(match func(K) bool) {
	if match == nil {
		c.entries, c.bytes = map[K]entry[V]{}, 0
	} else {
		for k := range c.entries {
			if match(k) {
				c.deleteLocked(k)
			}
		}
	}
	c.gen++
}

// SetLive flushes partition's entries (whatever was cached before may
// predate a change the watch did not see) and records whether its watch
// is established.
func (c *Cache[K, V]) SetLive(partition string, live bool) {
	c.mu.Lock()
	c.flushLocked(func(k K) bool { return c.part(k) == partition })
	c.live[partition] = live
	c.mu.Unlock()
}

// Live says whether partition's watch is established.
func (c *Cache[K, V]) Live(partition string) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.live[partition]
}

// Size returns the number of entries and their bytes.
func (c *Cache[K, V]) Size() (int, int64) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries), c.bytes
}

// Format prints only the cache's size under every verb: entries are often
// secrets.
func (c *Cache[K, V]) Format(f fmt.State, _ rune) {
	n, b := c.Size()
	fmt.Fprintf(f, "watchcache.Cache{%d entries, %d bytes}", n, b)
}
