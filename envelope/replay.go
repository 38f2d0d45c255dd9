package envelope

import (
	"context"
	"sync"
	"time"
)

// ReplayGuard remembers HPKE message ids. Record must be atomic: of two
// concurrent calls with the same id, exactly one succeeds; the other returns
// an error wrapping ErrReplay. Any other error is transient (the store is
// unreachable) and the message should be retried later. Entries need only be
// kept until expires. The runner backs this with etcd; MemoryReplayGuard is
// for a single process.
type ReplayGuard interface {
	Record(ctx context.Context, queue, id string, expires time.Time) error
}

// MemoryReplayGuard is an in-process ReplayGuard.
type MemoryReplayGuard struct {
	mu    sync.Mutex
	seen  map[string]time.Time
	Now   func() time.Time
	calls int
}

// Record implements ReplayGuard.
func (g *MemoryReplayGuard) Record(ctx context.Context, queue, id string, expires time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	now := time.Now()
	if g.Now != nil {
		now = g.Now()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.seen == nil {
		g.seen = map[string]time.Time{}
	}
	if g.calls++; g.calls%1024 == 0 {
		for k, exp := range g.seen {
			if now.After(exp) {
				delete(g.seen, k)
			}
		}
	}
	key := queue + "\x00" + id
	if exp, ok := g.seen[key]; ok && !now.After(exp) {
		return reject(ErrReplay, "message %s on queue %q was already delivered", id, queue)
	}
	g.seen[key] = expires
	return nil
}
