// Package parallel runs a bounded number of indexed calls at once: the
// import plan, the applier and the overlay's re-encryption share it.
package parallel

import (
	"context"
	"sync"
)

// Run runs fn(0..n-1) with at most workers at once and returns the
// first error; after an error or cancellation no new calls start.
func Run(ctx context.Context, workers, n int, fn func(context.Context, int) error) error {
	if workers < 1 {
		workers = 1
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := fn(ctx, i); err != nil {
					cancel(err)
				}
			}
		}()
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	return context.Cause(ctx)
}
