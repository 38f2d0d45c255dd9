package proxy

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/driver"
)

// lagStore holds back the events of the first whole-kind raw watch (the
// value cache's), as a slow watcher would; other watches (client streams)
// pass through at once.
type lagStore struct {
	Store
	mu   sync.Mutex
	n    int
	gate chan struct{}
}

func (l *lagStore) Watch(ctx context.Context, kind, prefix string) (<-chan driver.Event, error) {
	in, err := l.Store.Watch(ctx, kind, prefix)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	hold := kind == secrets.KindRaw && prefix == "" && l.n == 0
	if hold {
		l.n++
	}
	l.mu.Unlock()
	if !hold {
		return in, nil
	}
	out := make(chan driver.Event)
	go func() {
		defer close(out)
		for ev := range in {
			select {
			case <-l.gate:
			case <-ctx.Done():
				return
			}
			select {
			case out <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// TestStreamReadyNotBehindCache: a client's watch stream that starts after
// a change its proxy's cache has not seen yet (the cache's watch lags) must
// not be followed by a read of the old value: the client would cache it
// and, the change being older than its stream, never hear of it.
func TestStreamReadyNotBehindCache(t *testing.T) {
	store, other := overlayPair(t)
	ls := &lagStore{Store: store, gate: make(chan struct{})}
	f := startProxy(t, ls, nil)
	cacheLive(t, f, secrets.KindRaw)
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
	close(ls.gate) // the cache's watch catches up
	_ = events
	if code != 200 || strings.Contains(body, "value-one") {
		t.Errorf("a read after the stream's ready: %d, the value replaced before ready", code)
	}
}
