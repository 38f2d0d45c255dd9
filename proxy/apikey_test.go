package proxy

import (
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
