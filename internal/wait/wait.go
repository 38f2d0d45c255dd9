// Package wait has the one blocking wait the services need: a pause that
// ends early when its context does.
package wait

import (
	"context"
	"time"
)

// Sleep waits d or until ctx ends, reporting whether d elapsed.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
