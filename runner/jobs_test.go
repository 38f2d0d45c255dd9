package runner

import (
	"errors"
	"testing"
	"time"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/etcd"
	"github.com/sealrun/sealrun/storage/memory"
)

func TestJobsClaim(t *testing.T) {
	st, err := storage.New(memory.New(), etcd.New(testenv.Etcd(t), "/s/"), storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	j := &Jobs{Store: st}
	ctx, now := t.Context(), time.Now()
	cl, rev, err := j.Claim(ctx, "q", "m1", false, now)
	if err != nil || cl != claimNew {
		t.Fatalf("first claim: %v %v", cl, err)
	}
	// A second copy that is not a redelivery while the first runs: a replay.
	if _, _, err := j.Claim(ctx, "q", "m1", false, now); !errors.Is(err, errDuplicate) {
		t.Fatalf("copy while running: %v, want errDuplicate", err)
	}
	// A redelivery of an unfinished run is taken over, not called a replay.
	cl, rev2, err := j.Claim(ctx, "q", "m1", true, now)
	if err != nil || cl != claimTakeover || rev2 == rev {
		t.Fatalf("redelivery: %v %v", cl, err)
	}
	if err := j.Finish(ctx, "q", "m1", rev, now, now, 0); err == nil {
		t.Fatal("finish with the superseded revision succeeded")
	}
	if err := j.Finish(ctx, "q", "m1", rev2, now, now, 0); err != nil {
		t.Fatal(err)
	}
	for _, redelivered := range []bool{false, true} {
		if cl, _, err := j.Claim(ctx, "q", "m1", redelivered, now); err != nil || cl != claimFinished {
			t.Fatalf("after finish (redelivered=%v): %v %v", redelivered, cl, err)
		}
	}
}
