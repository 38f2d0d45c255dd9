package runner

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/memory"
)

// lostAnswer commits the first "finished" put but reports a timeout, as an
// etcd put whose answer was lost does.
type lostAnswer struct {
	*memory.Driver
	armed atomic.Bool
}

func (l *lostAnswer) Put(ctx context.Context, key string, v []byte, o driver.PutOptions) (int64, error) {
	rev, err := l.Driver.Put(ctx, key, v, o)
	if err == nil && bytes.Contains(v, []byte(`"state":"finished"`)) && l.armed.CompareAndSwap(true, false) {
		return 0, context.DeadlineExceeded
	}
	return rev, err
}

// TestReleaseAfterAmbiguousFinish: a "finished" write that reached the
// store but whose answer was lost must not be rolled back by the claim's
// next write (Release at shutdown), or another runner would take the job
// over and run it again.
func TestReleaseAfterAmbiguousFinish(t *testing.T) {
	la := &lostAnswer{Driver: memory.New()}
	la.armed.Store(true)
	st, err := storage.New(memory.New(), la, storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	j := &Jobs{Store: st, Owner: "me.1"}
	ctx := context.Background()
	_, c, err := j.Claim(ctx, "q", "m1", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Finish(ctx, &Result{ExitStatus: 0}); err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("finish: %v", err)
	}
	rec := &secrets.JobRecord{MessageID: "m1"}
	st.Get(ctx, rec)
	// Shutdown: durably gives up, lost() releases the claim.
	if err := c.Release(ctx); err != nil {
		t.Fatal(err)
	}
	rec = &secrets.JobRecord{MessageID: "m1"}
	st.Get(ctx, rec)
	if rec.State != StateFinished || rec.Finished.IsZero() {
		t.Errorf("after Release: state %q, finished %v; want the finished record kept", rec.State, rec.Finished)
	}
	other := &Jobs{Store: st, Owner: "other.1"}
	cl, _, err := other.Claim(ctx, "q", "m1", time.Now())
	if err != nil || cl == verdictTakeover {
		t.Errorf("another runner's claim: %v, %v; a finished job must not be taken over (run again)", cl, err)
	}
}

// TestRenewAfterRelease: a renewal after Release (KeepAlive still ticking
// while the runner backs off) must not bring the lease back, or another
// runner would wait for a claim nobody works on.
func TestRenewAfterRelease(t *testing.T) {
	st, err := storage.New(memory.New(), memory.New(), storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	j := &Jobs{Store: st, Owner: "me.1"}
	ctx := context.Background()
	_, c, err := j.Claim(ctx, "q", "m2", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	rec := &secrets.JobRecord{MessageID: "m2"}
	if _, err := st.Get(ctx, rec); err != nil || !rec.LeaseUntil.IsZero() {
		t.Fatalf("lease after Release then Renew: %v (%v); want cleared", rec.LeaseUntil, err)
	}
	other := &Jobs{Store: st, Owner: "other.1"}
	if cl, _, err := other.Claim(ctx, "q", "m2", time.Now()); err != nil || cl != verdictTakeover {
		t.Fatalf("another runner's claim of a released job: %v, %v; want takeover", cl, err)
	}
}
