package wait

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// TestBackoffDelays pins the policy every retry loop shares: the n-th
// delay is drawn from [d/2, d] with d doubling from lo up to hi, and Reset
// starts over.
func TestBackoffDelays(t *testing.T) {
	lo, hi := 100*time.Millisecond, 800*time.Millisecond
	b := Backoff(lo, hi)
	for round := range 2 {
		d := lo
		for n := 1; n <= 6; n++ {
			got := b.NextBackOff()
			if got < d/2 || got > d {
				t.Fatalf("round %d delay %d = %v, want within [%v, %v]", round, n, got, d/2, d)
			}
			d = min(2*d, hi)
		}
		b.Reset()
	}
	if got := Backoff(time.Second, 10*time.Millisecond).NextBackOff(); got > 10*time.Millisecond {
		t.Errorf("lo above hi: first delay %v, want at most hi", got)
	}
}

// TestRetryEndsWithItsContext: a retry waiting out a long delay returns as
// soon as its context ends, with the operation's last error.
func TestRetryEndsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	boom := errors.New("boom")
	calls := 0
	done := make(chan error, 1)
	go func() {
		done <- Retry(ctx, Backoff(time.Hour, time.Hour), 0, func(error, time.Duration) { cancel() }, func() error {
			calls++
			return boom
		})
	}()
	select {
	case err := <-done:
		if !errors.Is(err, boom) || !errors.Is(err, context.Canceled) {
			t.Errorf("Retry = %v, want the last error and the context's", err)
		}
		if calls != 1 {
			t.Errorf("%d calls, want 1", calls)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Retry kept waiting after its context ended")
	}
}

func TestRetryStops(t *testing.T) {
	boom := errors.New("boom")
	fast := func() backoff.BackOff { return Backoff(time.Microsecond, time.Microsecond) }
	cases := []struct {
		name      string
		tries     uint
		failFirst int  // calls that fail before one succeeds
		permanent bool // failures are permanent
		wantCalls int
		wantErr   bool
	}{
		{name: "succeeds after failures", failFirst: 3, wantCalls: 4},
		{name: "tries run out", tries: 3, failFirst: 10, wantCalls: 3, wantErr: true},
		{name: "permanent", failFirst: 10, permanent: true, wantCalls: 1, wantErr: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			calls, notified := 0, 0
			err := Retry(t.Context(), fast(), tc.tries, func(error, time.Duration) { notified++ }, func() error {
				calls++
				if calls > tc.failFirst {
					return nil
				}
				if tc.permanent {
					return backoff.Permanent(boom)
				}
				return boom
			})
			if calls != tc.wantCalls {
				t.Errorf("%d calls, want %d", calls, tc.wantCalls)
			}
			if (err != nil) != tc.wantErr || (err != nil && (err != boom)) {
				t.Errorf("Retry = %v, want error %v (the operation's own)", err, tc.wantErr)
			}
			if want := min(tc.wantCalls-1, tc.failFirst); notified != want {
				t.Errorf("notified %d times, want %d", notified, want)
			}
		})
	}
}
