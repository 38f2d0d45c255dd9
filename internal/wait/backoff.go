package wait

import (
	"context"
	"errors"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// Backoff is the one retry delay policy: exponential from lo, doubling, to
// hi, each delay drawn at random from the upper half [d/2, d] so a fleet
// does not retry in step. Reset it after a success; it is not safe for
// concurrent use.
func Backoff(lo, hi time.Duration) *backoff.ExponentialBackOff {
	lo = min(lo, hi)
	// The library draws from centre·(1 ± factor): centre ¾d and factor ⅓
	// give [d/2, d].
	b := &backoff.ExponentialBackOff{InitialInterval: lo * 3 / 4, RandomizationFactor: 1.0 / 3, Multiplier: 2,
		MaxInterval: hi * 3 / 4}
	b.Reset()
	return b
}

// Next waits b's next delay, or until ctx ends, reporting whether the delay
// elapsed.
func Next(ctx context.Context, b backoff.BackOff) bool {
	return Sleep(ctx, b.NextBackOff())
}

// Retry calls op until it succeeds or returns a backoff.Permanent error, b
// (default Backoff(100ms, 5s)) stops, tries run out, or ctx ends, waiting
// b's delays in between; notify, if set, hears each failure and the delay
// before the next try. It returns op's last error, joined with ctx's error
// when ctx ended the retries.
func Retry(ctx context.Context, b backoff.BackOff, tries uint, notify func(err error, next time.Duration), op func() error) error {
	if b == nil {
		b = Backoff(100*time.Millisecond, 5*time.Second)
	}
	var last error
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		last = op()
		return struct{}{}, last
	}, backoff.WithBackOff(b), backoff.WithMaxTries(tries), backoff.WithMaxElapsedTime(0), backoff.WithNotify(notify))
	var permanent *backoff.PermanentError
	switch {
	case err == nil:
		return nil
	case errors.As(last, &permanent):
		return err // unwrapped by backoff.Retry
	case ctx.Err() != nil && !errors.Is(last, ctx.Err()):
		return errors.Join(ctx.Err(), last)
	}
	return last
}
