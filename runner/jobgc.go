package runner

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/sealrun/sealrun/internal/wait"

	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
)

// jobGCInterval is how often a runner collects old JobRecords. Every runner
// does it (there is no leader); their deletes are conditional on the
// revision they read, so two collectors never remove a record that changed.
const jobGCInterval = time.Hour

// collectable says whether rec may go: only settled records — answered, or
// rejected — whose last step is older than before. A running or
// finished-but-unanswered record is the claim that keeps a job from running
// twice, so it stays whatever its age.
func collectable(rec *secrets.JobRecord, before time.Time) bool {
	switch rec.State {
	case StateFinished:
		return !rec.Responded.IsZero() && rec.Responded.Before(before)
	case StateRejected:
		return !rec.Received.IsZero() && rec.Received.Before(before)
	}
	return false
}

// Collect deletes the JobRecords collectable before the given time and says
// how many it deleted. It reads the records in batches where the state
// backend can, and deletes each with compare-and-set on the revision it
// read, so a record rewritten meanwhile is kept.
func (j *Jobs) Collect(ctx context.Context, before time.Time) (int, error) {
	keys, err := j.Store.List(ctx, secrets.KindJobRecord, "")
	if err != nil {
		return 0, fmt.Errorf("list job records: %w", err)
	}
	deleted := 0
	for len(keys) > 0 {
		n := min(len(keys), driver.MaxBatch)
		chunk := keys[:n]
		keys = keys[n:]
		recs := make([]secrets.Model, n)
		for i, k := range chunk {
			recs[i] = &secrets.JobRecord{MessageID: k}
		}
		// Every state backend (etcd, memory) reads batches.
		revs, err := j.Store.GetBatch(ctx, recs)
		if err != nil {
			return deleted, fmt.Errorf("read job records: %w", err)
		}
		for i, m := range recs {
			rec := m.(*secrets.JobRecord)
			if revs[i] == 0 || !collectable(rec, before) {
				continue
			}
			err := j.Store.Delete(ctx, secrets.KindJobRecord, rec.MessageID, driver.DeleteOptions{IfRevision: revs[i]})
			switch storage.Code(err) {
			case driver.OK:
				deleted++
			case driver.Conflict, driver.NotFound:
				// Rewritten or collected by another runner meanwhile.
			default:
				return deleted, fmt.Errorf("delete job record: %w", err)
			}
		}
	}
	return deleted, nil
}

// collectJobs runs Collect every jobGCInterval (jittered, so runners started
// together do not all list at once) until ctx ends.
func (r *Runner) collectJobs(ctx context.Context) {
	for {
		d := jobGCInterval/2 + rand.N(jobGCInterval)
		if !wait.Sleep(ctx, d) {
			return
		}
		start := time.Now()
		n, err := r.jobs.Collect(ctx, start.Add(-r.cfg.JobRetention))
		switch {
		case err != nil && ctx.Err() == nil:
			r.log.Warn("collecting old job records failed; retrying at the next round", "error", err, "deleted", n)
		case n > 0:
			r.log.Info("collected old job records", "deleted", n, "retention", r.cfg.JobRetention, "took", time.Since(start))
		}
	}
}
