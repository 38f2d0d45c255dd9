package runner

import (
	"slices"
	"testing"
	"time"

	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/driver"
)

// TestCollectJobs: only settled records (answered, or rejected) older than
// the cut-off are deleted, in batches, from real etcd; claims — running, or
// finished but not yet answered — stay whatever their age.
func TestCollectJobs(t *testing.T) {
	store := etcdStateStore(t)
	ctx := t.Context()
	now := time.Now().UTC()
	old, recent := now.Add(-8*24*time.Hour), now.Add(-time.Minute)
	exit := 0
	recs := map[string]*secrets.JobRecord{
		"answered-old":    {State: StateFinished, Received: old, Finished: old, ExitStatus: &exit, Responded: old},
		"answered-recent": {State: StateFinished, Received: old, Finished: recent, ExitStatus: &exit, Responded: recent},
		"unanswered-old":  {State: StateFinished, Received: old, Finished: old, ExitStatus: &exit},
		"running-old":     {State: StateRunning, Received: old, Started: old, LeaseUntil: old},
		"rejected-old":    {State: StateRejected, Received: old, Finished: old, Reason: "bad_signature"},
		"rejected-recent": {State: StateRejected, Received: recent, Finished: recent, Reason: "malformed"},
	}
	// More than one batch of collectable records.
	for i := range driver.MaxBatch + 5 {
		recs["bulk-"+string(rune('a'+i/26))+string(rune('a'+i%26))] = &secrets.JobRecord{State: StateFinished, Received: old, Responded: old}
	}
	for id, r := range recs {
		r.MessageID, r.Queue = id, "q"
		if _, err := store.Put(ctx, r, driver.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	j := &Jobs{Store: store}
	n, err := j.Collect(ctx, now.Add(-7*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if want := 2 + driver.MaxBatch + 5; n != want {
		t.Errorf("deleted %d, want %d", n, want)
	}
	left, err := store.List(ctx, secrets.KindJobRecord, "")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"answered-recent", "rejected-recent", "running-old", "unanswered-old"}
	if !slices.Equal(left, want) {
		t.Errorf("kept %v, want %v", left, want)
	}
	// A second round finds nothing more.
	if n, err := j.Collect(ctx, now.Add(-7*24*time.Hour)); err != nil || n != 0 {
		t.Errorf("second round: deleted %d, %v", n, err)
	}
}
