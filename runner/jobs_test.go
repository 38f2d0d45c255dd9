package runner

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/driver"
)

// finishJob records a claimed job as run (exit status exit) and answered.
func finishJob(ctx context.Context, c *Claim, exit int) error {
	if err := c.Finish(ctx, &Result{ExitStatus: exit}); err != nil {
		return err
	}
	return c.Responded(ctx, "")
}

// TestJobsClaim: a claim belongs to its live owner; another runner's copy
// waits (busy) instead of running, takes over only once the owner's lease
// expired or it released the claim, and a taken-over owner cannot record.
func TestJobsClaim(t *testing.T) {
	st := etcdStateStore(t)
	a := &Jobs{Store: st, Owner: "a", Lease: time.Second}
	b := &Jobs{Store: st, Owner: "b", Lease: time.Second}
	ctx, now := t.Context(), time.Now()
	cl, ca, err := a.Claim(ctx, "q", "m1", now)
	if err != nil || cl != verdictNew {
		t.Fatalf("first claim: %v %v", cl, err)
	}
	// Another runner's copy (redelivered or not) while the owner lives.
	if cl, _, err := b.Claim(ctx, "q", "m1", now); err != nil || cl != verdictBusy {
		t.Fatalf("copy while the owner runs it: %v %v, want busy", cl, err)
	}
	// A write of ours that landed although its answer was lost leaves a
	// stale revision: the record still names us, so the claim is kept.
	landed := ca.Record()
	if _, err := st.Put(ctx, &landed, driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	// Renewals keep it busy past the first lease.
	if err := ca.Renew(ctx); err != nil {
		t.Fatalf("renew after an in-doubt write: %v", err)
	}
	if cl, _, _ := b.Claim(ctx, "q", "m1", time.Now().Add(900*time.Millisecond)); cl != verdictBusy {
		t.Fatalf("renewed claim: %v, want busy", cl)
	}
	// The owner dies: after its lease, the claim is taken over.
	cl, cb, err := b.Claim(ctx, "q", "m1", time.Now().Add(2*time.Second))
	if err != nil || cl != verdictTakeover {
		t.Fatalf("after the lease: %v %v, want takeover", cl, err)
	}
	if err := ca.Finish(ctx, &Result{}); !errors.Is(err, errClaimLost) {
		t.Fatalf("finish by the superseded owner: %v, want errClaimLost", err)
	}
	if err := cb.Finish(ctx, &Result{ExitStatus: 3, TimedOut: true}); err != nil {
		t.Fatal(err)
	}
	// Finished, response not recorded: busy while b lives...
	if cl, _, _ := a.Claim(ctx, "q", "m1", time.Now()); cl != verdictBusy {
		t.Fatalf("finished, owner alive: %v, want busy", cl)
	}
	// ...and once b released it, the response is due from the record.
	if err := cb.Release(ctx); err != nil {
		t.Fatal(err)
	}
	cl, ca, err = a.Claim(ctx, "q", "m1", time.Now())
	if err != nil || cl != verdictRespond {
		t.Fatalf("finished, owner gone: %v %v, want respond", cl, err)
	}
	if rec := ca.Record(); rec.ExitStatus == nil || *rec.ExitStatus != 3 || !rec.TimedOut || rec.Owner != "a" {
		t.Fatalf("record to respond from: %+v", rec)
	}
	if err := ca.Responded(ctx, "response-m1"); err != nil {
		t.Fatal(err)
	}
	for _, j := range []*Jobs{a, b} {
		if cl, _, err := j.Claim(ctx, "q", "m1", time.Now()); err != nil || cl != verdictFinished {
			t.Fatalf("after the response (%s): %v %v", j.Owner, cl, err)
		}
	}
	rec := &secrets.JobRecord{MessageID: "m1"}
	if _, err := st.Get(ctx, rec); err != nil || rec.ResponseID != "response-m1" || rec.Responded.IsZero() {
		t.Fatalf("final record %+v: %v", rec, err)
	}

	// Rejections are recorded once, by body hash, with a reason code.
	body := []byte("not a message")
	if first, err := a.Reject(ctx, "q", body, "malformed", now); err != nil || !first {
		t.Fatalf("first reject: %v %v", first, err)
	}
	if first, err := b.Reject(ctx, "q", body, "malformed", now); err != nil || first {
		t.Fatalf("second reject: first=%v %v", first, err)
	}
	if why, err := b.Rejected(ctx, body); err != nil || why != "malformed" {
		t.Fatalf("Rejected: %q %v", why, err)
	}
	if why, err := b.Rejected(ctx, []byte("other")); err != nil || why != "" {
		t.Fatalf("Rejected of an unknown body: %q %v", why, err)
	}
}
