package watchcache

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sealrun/sealrun/internal/leaktest"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func fill[K comparable, V any](c *Cache[K, V], k K, v V) bool {
	_, gen, _ := c.Get(k)
	return c.Fill(k, v, gen)
}

// The cache's correctness rules, each one that could fail on its own: no
// serving without a live watch, a fill that raced an invalidation is
// dropped, the TTL bounds an entry's age, SetLive flushes only its
// partition.
func TestCacheRules(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	c := New(Options[string, string]{TTL: time.Minute, Now: clk.now, Partition: func(k string) string { return k[:1] }})
	if fill(c, "a1", "v") {
		t.Fatal("filled without a live watch")
	}
	c.SetLive("a", true)
	c.SetLive("b", true)
	if !fill(c, "a1", "v") || !fill(c, "b1", "w") {
		t.Fatal("fill under a live watch refused")
	}
	if v, _, ok := c.Get("a1"); !ok || v != "v" {
		t.Fatalf("Get = %q %v", v, ok)
	}
	// Raced: the read happened before an invalidation of anything.
	_, gen, _ := c.Get("a2")
	c.Invalidate("b9")
	if c.Fill("a2", "stale", gen) {
		t.Fatal("a fill that raced an invalidation was cached")
	}
	// TTL.
	clk.t = clk.t.Add(time.Minute + time.Second)
	if _, _, ok := c.Get("a1"); ok {
		t.Fatal("entry served past its TTL")
	}
	clk.t = clk.t.Add(-2 * time.Minute)
	// A partition's watch going down flushes it and stops serving it only.
	c.SetLive("a", false)
	if _, _, ok := c.Get("a1"); ok {
		t.Fatal("entry served while its watch is down")
	}
	if _, _, ok := c.Get("b1"); !ok {
		t.Fatal("another partition's entry flushed")
	}
	c.SetLive("a", true)
	if _, _, ok := c.Get("a1"); ok {
		t.Fatal("entry from before the watch broke served after it came back")
	}
}

func TestCacheBoundsAndAdmit(t *testing.T) {
	c := New(Options[int, []byte]{TTL: time.Hour, AlwaysLive: true, MaxEntries: 3, MaxBytes: 800,
		Size: func(_ int, v []byte) int64 { return int64(len(v)) }, Admit: func(v []byte, n int) bool { return v != nil || n < 1 }})
	for i := range 10 {
		fill(c, i, make([]byte, 50))
	}
	if n, b := c.Size(); n != 3 || b != 150 {
		t.Fatalf("%d entries, %d bytes; want 3, 150", n, b)
	}
	if fill(c, 99, make([]byte, 101)) {
		t.Fatal("an entry over an eighth of MaxBytes was cached")
	}
	c.Flush(nil)
	if !fill(c, 1, nil) || fill(c, 2, nil) {
		t.Fatal("Admit not applied: want one nil entry admitted, the second refused")
	}
	c.Flush(func(k int) bool { return k == 1 })
	if n, b := c.Size(); n != 0 || b != 0 {
		t.Fatalf("after flush: %d entries, %d bytes", n, b)
	}
}

func TestCacheNeverPrintsEntries(t *testing.T) {
	c := New(Options[string, []byte]{TTL: time.Hour, AlwaysLive: true})
	fill(c, "name-of-secret-1", []byte("value-of-secret-1"))
	leaktest.NoSecret(t, "cache", c, []byte("name-of-secret-1"), []byte("value-of-secret-1"))
}

// Follow re-establishes a broken watch and reports each state, and
// returns once its context ends even while it waits to retry.
func TestFollow(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	var got []string
	opens := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		Follow(ctx, func(context.Context) (<-chan int, error) {
			opens++
			if opens == 2 {
				return nil, errors.New("backend down")
			}
			ch := make(chan int, 3)
			ch <- 1
			ch <- -1 // a failed watch: re-establish
			ch <- 2  // never seen
			close(ch)
			return ch, nil
		}, func() { got = append(got, "up") }, func(ev int) bool {
			got = append(got, map[bool]string{true: "event", false: "error"}[ev > 0])
			return ev > 0
		}, func(err error, _ time.Duration) {
			got = append(got, map[bool]string{true: "down", false: "failed"}[err == nil])
			if opens == 3 {
				cancel()
			}
		})
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Follow did not return after its context ended")
	}
	want := []string{"up", "event", "error", "down", "failed", "up", "event", "error", "down"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}
