package proxy

import (
	"context"
	"strings"
	"testing"

	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/driver"
)

// TestStreamReadyNotBehindCache: a client's watch stream that starts after
// a change its proxy's cache has not seen yet (the cache's watch lags) must
// not be followed by a read of the old value: the client would cache it
// and, the change being older than its stream, never hear of it.
func TestStreamReadyNotBehindCache(t *testing.T) {
	store, other := overlayPair(t)
	fs := newFaultStore(store)
	f := startProxy(t, fs, nil)
	cacheLive(t, f, secrets.KindRaw)
	// The cache's own watch (the whole raw kind) lags; client streams don't.
	release := fs.holdOnly(func(kind, prefix string) bool { return kind == secrets.KindRaw && prefix == "" })
	ctx := context.Background()
	c := f.client(t, "admin", f.adminKey)
	if err := c.CreateContainer(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	putRaw(t, other, "app/k", "value-one")
	for range 2 {
		if code, body := f.get(t, "app/k"); code != 200 || !strings.Contains(body, "value-one") {
			t.Fatalf("GET: %d %q", code, body)
		}
	}
	if err := other.Delete(ctx, secrets.KindRaw, "app/k", driver.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	putRaw(t, other, "app/k", "value-two")

	// A client (re)establishes its watch stream after the change committed.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, ready, err := c.Watch(wctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	<-ready
	code, body := f.get(t, "app/k")
	release() // the cache's watch catches up
	_ = events
	if code != 200 || strings.Contains(body, "value-one") {
		t.Errorf("a read after the stream's ready: %d, the value replaced before ready", code)
	}
}
