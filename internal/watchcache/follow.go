package watchcache

import (
	"context"
	"time"

	"github.com/sealrun/sealrun/internal/wait"
)

// Follow keeps a watch open until ctx ends, re-establishing it with
// backoff. watch opens it: the returned channel carries its events and
// closes when it breaks. up is called once it is established (the owner
// flushes: anything cached before may predate a change), each event goes
// to on (false: the watch failed, re-establish it), and down is called
// with why (the open's error, or nil when an established watch broke)
// each time it is down, before the wait.
func Follow[E any](ctx context.Context, watch func(context.Context) (<-chan E, error), up func(), on func(E) bool,
	down func(err error, retryIn time.Duration)) {
	b := wait.Backoff(100*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		events, err := watch(ctx)
		if err == nil {
			up()
			b.Reset()
			for ev := range events {
				if !on(ev) {
					break
				}
			}
		}
		d := b.NextBackOff()
		down(err, d)
		wait.Sleep(ctx, d)
	}
}
