package proxy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// TestAPIKeyHasher: the pooled hasher agrees with the stored hash, refuses
// other keys and ids, and is safe for concurrent use (pooled HMAC states
// must not leak one request's input into another's sum).
func TestAPIKeyHasher(t *testing.T) {
	pepper := []byte("0123456789abcdef0123456789abcdef")
	h := newAPIKeyHasher(pepper)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, key := "runner-"+string(rune('a'+i)), NewAPIKey()
			stored := hashAPIKey(pepper, id, key)
			for range 200 {
				if !h.check(id, key, stored) {
					t.Error("the right key was refused")
					return
				}
				if h.check(id, key+"x", stored) || h.check(id+"x", key, stored) || h.check(id, key, nil) {
					t.Error("a wrong key, id or missing hash was accepted")
					return
				}
			}
		}()
	}
	wg.Wait()
	if !h.check("a", " sr1.k\n", hashAPIKey(pepper, "a", "sr1.k")) {
		t.Error("surrounding whitespace of a key (from a key file) must not matter")
	}
}

// Unknown ids are remembered only up to a bound: a client sending made-up
// ids cannot grow the proxy's memory.
func TestUnknownIDsBounded(t *testing.T) {
	f := startProxy(t, overlayStore(t), nil)
	creds := f.srv.o.Credentials
	creds.maxUnknown = 5 // before the requests below, which read it
	eventually(t, "revocation watch established", func() bool { return creds.cache.Live("") })
	for i := range 20 {
		if _, err := creds.Authenticate(context.Background(), fmt.Sprintf("made-up-%d", i), "sr1.guess"); !errors.Is(err, errUnauthenticated) {
			t.Fatalf("unknown id %d: %v", i, err)
		}
	}
	// A fetch raced by a watch event (a write the proxy's start made, seen
	// late) is rightly not cached, so authenticate until admin is cached.
	var n int
	var adminCached bool
	eventually(t, "admin cached", func() bool {
		if _, err := creds.Authenticate(context.Background(), "admin", f.adminKey); err != nil {
			t.Fatal(err)
		}
		n, _ = creds.cache.Size()
		_, _, adminCached = creds.cache.Get("admin")
		return adminCached
	})
	if n > 6 || !adminCached {
		t.Fatalf("%d cached credentials (admin cached: %v), want at most 5 unknown ids plus admin", n, adminCached)
	}
}

func TestValidIDMatchesPattern(t *testing.T) {
	cases := []string{"", "a", "A9", "runner-1", "r.u_n-2", ".a", "-a", "_a", "a b", "a/b", "é", "a\x00", "a\n",
		strings.Repeat("a", 128), strings.Repeat("a", 129), "9" + strings.Repeat("-", 127), "a" + strings.Repeat("-", 128)}
	for c := range 256 {
		cases = append(cases, string(rune(c)), "a"+string([]byte{byte(c)}))
	}
	for _, id := range cases {
		if got, want := validID(id), idPattern.MatchString(id); got != want {
			t.Errorf("validID(%q) = %v, the pattern says %v", id, got, want)
		}
	}
}

func FuzzValidID(f *testing.F) {
	f.Add("runner-1")
	f.Add(".x")
	f.Fuzz(func(t *testing.T, id string) {
		if got, want := validID(id), idPattern.MatchString(id); got != want {
			t.Fatalf("validID(%q) = %v, the pattern says %v", id, got, want)
		}
	})
}
