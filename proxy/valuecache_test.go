package proxy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/driver"
)

// faultStore wraps a real store: it counts backend reads by kind, can hold
// back watch events (a slow watch stream), and can break every watch it
// handed out and refuse new ones, as a lost etcd connection would.
type faultStore struct {
	Store
	mu      sync.Mutex
	gets    map[string]int
	refuse  bool
	watches []chan struct{} // closed to break the watch
	held    chan struct{}   // while open, events wait; closed to release them
	// holds says which watches hold (nil: all).
	holds func(kind, prefix string) bool
}

func newFaultStore(s Store) *faultStore {
	released := make(chan struct{})
	close(released)
	return &faultStore{Store: s, gets: map[string]int{}, held: released}
}

// hold delays every watch event until the returned func is called.
func (f *faultStore) hold() (release func()) { return f.holdOnly(nil) }

// holdOnly is hold for the watches match selects (nil: all), e.g. the
// cache's own watch and not a client's stream.
func (f *faultStore) holdOnly(match func(kind, prefix string) bool) (release func()) {
	ch := make(chan struct{})
	f.mu.Lock()
	f.held, f.holds = ch, match
	f.mu.Unlock()
	return func() { close(ch) }
}

func (f *faultStore) gate(kind, prefix string) <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.holds != nil && !f.holds(kind, prefix) {
		return closedGate
	}
	return f.held
}

var closedGate = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (f *faultStore) Get(ctx context.Context, m secrets.Model) (int64, error) {
	f.mu.Lock()
	f.gets[m.Kind()]++
	f.mu.Unlock()
	return f.Store.Get(ctx, m)
}

func (f *faultStore) count(kind string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gets[kind]
}

func (f *faultStore) Watch(ctx context.Context, kind, prefix string) (<-chan driver.Event, error) {
	f.mu.Lock()
	if f.refuse {
		f.mu.Unlock()
		return nil, errors.New("test: watch refused")
	}
	brk := make(chan struct{})
	f.watches = append(f.watches, brk)
	f.mu.Unlock()
	wctx, cancel := context.WithCancel(ctx)
	in, err := f.Store.Watch(wctx, kind, prefix)
	if err != nil {
		cancel()
		return nil, err
	}
	out := make(chan driver.Event)
	go func() {
		defer close(out)
		defer cancel()
		for {
			select {
			case <-brk:
				select {
				case out <- driver.Event{Err: errors.New("test: watch broken")}:
				case <-ctx.Done():
				}
				return
			case ev, ok := <-in:
				if !ok {
					return
				}
				select {
				case <-f.gate(kind, prefix):
				case <-ctx.Done():
					return
				}
				select {
				case out <- ev:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}

// breakAll breaks every established watch; with refuse, new ones fail too.
func (f *faultStore) breakAll(refuse bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refuse = refuse
	for _, w := range f.watches {
		close(w)
	}
	f.watches = nil
}

func (f *faultStore) allow() {
	f.mu.Lock()
	f.refuse = false
	f.mu.Unlock()
}

// eventually retries cond for up to 5s: a watch event crosses etcd's
// watch stream, so it is prompt but not synchronous.
func eventually(t *testing.T, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < 5*time.Second {
		if cond() {
			return time.Since(start)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s: not within 5s", what)
	return 0
}

func (f *fixture) get(t *testing.T, name string) (int, string) {
	t.Helper()
	return f.raw(t, "GET", "/secrets/"+name, f.admin(), "")
}

func putRaw(t *testing.T, s Store, name, v string) {
	t.Helper()
	if _, err := s.Put(context.Background(), &secrets.Raw{Name: name, Value: secrets.Secret(v)}, driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
}

// cacheLive waits until the value cache's watch for kind is established.
func cacheLive(t *testing.T, f *fixture, kind string) {
	t.Helper()
	eventually(t, "value cache watch established", func() bool {
		return f.srv.values.c.Live(kind)
	})
}

// TestValueCacheServesAndFollowsExternalChanges: a cached GET does not read
// the backend; a change or delete made by another service on the same etcd,
// bypassing this proxy, is visible through it within a short bounded time.
func TestValueCacheServesAndFollowsExternalChanges(t *testing.T) {
	store, other := overlayPair(t)
	fs := newFaultStore(store)
	f := startProxy(t, fs, nil)
	cacheLive(t, f, secrets.KindRaw)
	putRaw(t, other, "c/ext", "value-one")

	// The put's own watch event may still drop the first fill; after it,
	// GETs must not read the backend.
	eventually(t, "GET served from the cache", func() bool {
		if code, body := f.get(t, "c/ext"); code != 200 || !strings.Contains(body, `"value-one"`) {
			t.Fatalf("GET: %d %q", code, body)
		}
		reads := fs.count(secrets.KindRaw)
		for range 5 {
			if code, body := f.get(t, "c/ext"); code != 200 || !strings.Contains(body, `"value-one"`) {
				t.Fatalf("cached GET: %d %q", code, body)
			}
		}
		return fs.count(secrets.KindRaw) == reads
	})

	putRaw(t, other, "c/ext", "value-two")
	took := eventually(t, "external change visible", func() bool {
		_, body := f.get(t, "c/ext")
		return strings.Contains(body, `"value-two"`)
	})
	t.Logf("external change visible after %v", took)

	if err := other.Delete(context.Background(), secrets.KindRaw, "c/ext", driver.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	took = eventually(t, "external delete visible", func() bool {
		code, _ := f.get(t, "c/ext")
		return code == 404
	})
	t.Logf("external delete visible after %v", took)

	// Typed models are cached and followed the same way.
	sk := &secrets.SigningKey{QueuePrefix: "rmq_cpu_", PublicKey: "public-one"}
	if _, err := other.Put(context.Background(), sk, driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	path := "sealrun/" + secrets.KindSigningKey + "/rmq_cpu_"
	eventually(t, "typed value readable", func() bool { code, _ := f.get(t, path); return code == 200 })
	sk.PublicKey = "public-two"
	if _, err := other.Put(context.Background(), sk, driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "typed change visible", func() bool {
		_, body := f.get(t, path)
		return strings.Contains(body, "public-two")
	})
}

// TestValueCacheReadYourWrites: writes through the proxy are visible to the
// next GET at once, with no wait for the watch (its events are held back).
func TestValueCacheReadYourWrites(t *testing.T) {
	fs := newFaultStore(overlayStore(t))
	f := startProxy(t, fs, nil)
	cacheLive(t, f, secrets.KindRaw)
	defer fs.hold()()
	ct := f.admin(jsonCT, "application/json")
	if code, _ := f.raw(t, "POST", "/secrets/c/", f.admin(), ""); code != 201 {
		t.Fatalf("POST /secrets/c/: %d", code)
	}
	for i, v := range []string{"first-value", "second-value", "third-value"} {
		if code, body := f.raw(t, "PUT", "/secrets/c/ryw", ct, simple(v)); code != 201 {
			t.Fatalf("PUT %d: %d %q", i, code, body)
		}
		for range 2 { // the second GET is served from the cache
			if code, body := f.get(t, "c/ryw"); code != 200 || !strings.Contains(body, `"`+v+`"`) {
				t.Fatalf("GET after PUT %d: %d %q", i, code, body)
			}
		}
		if code, _ := f.raw(t, "DELETE", "/secrets/c/ryw", f.admin(), ""); code != 204 {
			t.Fatalf("DELETE %d: %d", i, code)
		}
		if code, body := f.get(t, "c/ryw"); code != 404 {
			t.Fatalf("GET after DELETE %d: %d %q", i, code, body)
		}
	}
}

// TestValueCacheWatchBreak: when the watch breaks the cache is flushed and
// not used (every GET reads the backend, so changes show at once) until the
// watch is re-established; then it caches again.
func TestValueCacheWatchBreak(t *testing.T) {
	store, other := overlayPair(t)
	fs := newFaultStore(store)
	f := startProxy(t, fs, nil)
	cacheLive(t, f, secrets.KindRaw)
	putRaw(t, other, "c/wb", "before-break")
	eventually(t, "GET fills the cache", func() bool {
		f.get(t, "c/wb")
		return cacheLen(f.srv.values) > 0
	})

	fs.breakAll(true)
	eventually(t, "cache flushed after the watch broke", func() bool {
		return !f.srv.values.c.Live(secrets.KindRaw) && cacheLen(f.srv.values) == 0
	})
	// No watch, so no event: only an uncached read can see this.
	putRaw(t, other, "c/wb", "during-break")
	reads := fs.count(secrets.KindRaw)
	for range 3 {
		if code, body := f.get(t, "c/wb"); code != 200 || !strings.Contains(body, `"during-break"`) {
			t.Fatalf("GET with the watch down: %d %q", code, body)
		}
	}
	if n := fs.count(secrets.KindRaw) - reads; n != 3 {
		t.Fatalf("with the watch down 3 GETs read the backend %d times, want 3", n)
	}
	if n := cacheLen(f.srv.values); n != 0 {
		t.Fatalf("%d entries cached while the watch was down", n)
	}

	fs.allow()
	// Each kind's watch comes back on its own backoff, and each return
	// flushes, so a fill can still be dropped until all are back.
	eventually(t, "re-established watch: GET served from the cache", func() bool {
		if code, body := f.get(t, "c/wb"); code != 200 || !strings.Contains(body, `"during-break"`) {
			t.Fatalf("GET after re-watch: %d %q", code, body)
		}
		reads := fs.count(secrets.KindRaw)
		f.get(t, "c/wb")
		return fs.count(secrets.KindRaw) == reads
	})
}

// TestValueCacheBounded: the cache never holds more entries or bytes than
// its bounds, its byte count follows fills, replacements, invalidations
// and flushes exactly, and a value too large for it is not cached.
func TestValueCacheBounded(t *testing.T) {
	c := newValueCache(3, 1<<20)
	c.setLive(secrets.KindRaw, true)
	fill := func(key string, v value) {
		_, gen, _ := c.get(secrets.KindRaw, key)
		c.fill(secrets.KindRaw, key, v, gen)
	}
	for i := range 10 {
		fill(string(rune('a'+i)), value("v"))
	}
	if n := cacheLen(c); n != 3 {
		t.Fatalf("%d entries, want the bound 3", n)
	}
	// A fill that raced an invalidation is dropped.
	_, gen, _ := c.get(secrets.KindRaw, "z")
	c.invalidate(secrets.KindRaw, "other")
	c.fill(secrets.KindRaw, "z", value("stale"), gen)
	if _, _, ok := c.get(secrets.KindRaw, "z"); ok {
		t.Fatal("a fill that raced an invalidation was cached")
	}

	// Bytes: 64 KiB values in a 1 MiB cache with room for 100 entries.
	const maxBytes = 1 << 20
	c = newValueCache(100, maxBytes)
	c.setLive(secrets.KindRaw, true)
	big := value(strings.Repeat("x", 64<<10))
	for i := range 40 {
		fill(fmt.Sprintf("big-%02d", i), big)
		if _, b := c.size(); b > maxBytes {
			t.Fatalf("after %d fills the cache holds %d bytes, over its 1 MiB bound", i+1, b)
		}
	}
	fits := int(maxBytes / entrySize(cacheKey{secrets.KindRaw, "big-00"}, big))
	if n, _ := c.size(); n != fits {
		t.Fatalf("%d entries of 64 KiB in 1 MiB, want %d", n, fits)
	}
	// Over an eighth of the bound: not cached, nothing evicted for it.
	fill("huge", value(strings.Repeat("x", maxBytes/8)))
	if _, _, ok := c.get(secrets.KindRaw, "huge"); ok {
		t.Fatal("a value over an eighth of the cache was cached")
	}
	if n, _ := c.size(); n != fits {
		t.Fatalf("a refused value evicted entries: %d left, want %d", n, fits)
	}
	// The byte count is exact: replace, invalidate and flush bring it back
	// to the sum of what is left, and to 0.
	var key string
	for i := range 40 {
		if _, _, ok := c.get(secrets.KindRaw, fmt.Sprintf("big-%02d", i)); ok {
			key = fmt.Sprintf("big-%02d", i)
			break
		}
	}
	fill(key, value("small"))
	want := int64(0)
	for i := range 40 {
		k := cacheKey{secrets.KindRaw, fmt.Sprintf("big-%02d", i)}
		if v, _, ok := c.get(k.kind, k.key); ok {
			want += entrySize(k, v)
		}
	}
	if _, b := c.size(); b != want {
		t.Fatalf("byte count %d after a replacement, entries sum to %d", b, want)
	}
	c.invalidate(secrets.KindRaw, key)
	c.flushPrefix(secrets.KindRaw, "")
	if n, b := c.size(); n != 0 || b != 0 {
		t.Fatalf("after flush: %d entries, %d bytes; want 0, 0", n, b)
	}
}

func cacheLen(c *valueCache) int {
	n, _ := c.size()
	return n
}

// TestCredentialCache: authentication is served from the credential cache
// (no backend read per request); a revocation made elsewhere (another
// process on the same etcd) gives 403 promptly; a broken watch flushes the
// cache and turns it off until the watch is back.
func TestCredentialCache(t *testing.T) {
	store, other := overlayPair(t)
	fs := newFaultStore(store)
	f := startProxy(t, fs, nil)
	creds := f.srv.o.Credentials
	eventually(t, "credential watch established", func() bool {
		return creds.cache.Live("")
	})
	ctx := context.Background()
	key, err := creds.Create(ctx, "cached", Grant{Paths: []string{"/secrets"}, Verbs: []string{"list"}})
	if err != nil {
		t.Fatal(err)
	}
	// The watch event of the Create itself may still drop the first fill;
	// after that, requests must not read the backend.
	eventually(t, "authentication served from the cache", func() bool {
		f.raw(t, "GET", "/secrets/", as("cached", key), "")
		reads := fs.count(secrets.KindAPICredential)
		for range 5 {
			if code, _ := f.raw(t, "GET", "/secrets/", as("cached", key), ""); code != 200 {
				t.Fatalf("GET: %d", code)
			}
		}
		return fs.count(secrets.KindAPICredential) == reads
	})

	// Revoked by another process: only the watch can tell this proxy.
	if err := NewCredentials(other).Revoke(ctx, "cached"); err != nil {
		t.Fatal(err)
	}
	took := eventually(t, "external revocation", func() bool {
		code, _ := f.raw(t, "GET", "/secrets/", as("cached", key), "")
		return code == 403
	})
	t.Logf("external revocation effective after %v", took)

	// Watch break: flushed, and every request reads the backend.
	key2, err := creds.Create(ctx, "second", Grant{Paths: []string{"/secrets"}, Verbs: []string{"list"}})
	if err != nil {
		t.Fatal(err)
	}
	f.raw(t, "GET", "/secrets/", as("second", key2), "")
	fs.breakAll(true)
	eventually(t, "credential cache off after the watch broke", func() bool {
		n, _ := creds.cache.Size()
		return !creds.cache.Live("") && n == 0
	})
	if err := NewCredentials(other).Revoke(ctx, "second"); err != nil {
		t.Fatal(err)
	}
	if code, _ := f.raw(t, "GET", "/secrets/", as("second", key2), ""); code != 403 {
		t.Fatalf("revoked while the watch was down: %d, want 403 at once", code)
	}
	fs.allow()
	eventually(t, "credential watch re-established", func() bool {
		return creds.cache.Live("")
	})
	if code, _ := f.raw(t, "GET", "/secrets/", as("second", key2), ""); code != 403 {
		t.Fatalf("revoked credential after re-watch: %d, want 403", code)
	}
}

// A watch stream on one container flushes only that container's entries.
func TestValueCacheFlushPrefix(t *testing.T) {
	c := newValueCache(10, 1<<20)
	c.setLive(secrets.KindRaw, true)
	for _, k := range []string{"app/a", "app/b", "other/c"} {
		_, gen, _ := c.get(secrets.KindRaw, k)
		c.fill(secrets.KindRaw, k, value("v"), gen)
	}
	c.flushPrefix(secrets.KindRaw, "app")
	for k, want := range map[string]bool{"app/a": false, "app/b": false, "other/c": true} {
		if _, _, ok := c.get(secrets.KindRaw, k); ok != want {
			t.Errorf("%s cached after flushing app: %v, want %v", k, ok, want)
		}
	}
}
