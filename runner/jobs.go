package runner

import (
	"context"
	"fmt"
	"time"

	"github.com/sealrun/sealrun/envelope"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
)

// JobRecord states.
const (
	StateRunning  = "running"
	StateFinished = "finished"
)

// claim is the outcome of claiming a message in the job store.
type claim int

const (
	// claimNew: first time this message is seen; run it.
	claimNew claim = iota
	// claimTakeover: an unfinished run of a redelivered message (its runner
	// died or gave it back); run it again.
	claimTakeover
	// claimFinished: already run to the end; ack without running.
	claimFinished
)

// Jobs records each message's execution as a secrets.JobRecord in the
// storage service's state backend (plain etcd). The record is both the
// duplicate-delivery check for every suite and the HPKE replay check: the
// message id is claimed with a create-if-absent transaction, so of two
// deliveries exactly one runs.
type Jobs struct {
	Store *storage.Service
}

// errDuplicate marks a second, not-redelivered copy of a message whose first
// copy is still running: a replay, never run twice.
var errDuplicate = fmt.Errorf("%w: another copy of this message is running", envelope.ErrReplay)

// Claim records that this runner starts the message. It returns the
// record's revision for Finish.
func (j *Jobs) Claim(ctx context.Context, queue, id string, redelivered bool, now time.Time) (claim, int64, error) {
	rec := &secrets.JobRecord{MessageID: id, Queue: queue, State: StateRunning, Received: now, Started: now}
	rev, err := j.Store.Put(ctx, rec, driver.PutOptions{IfAbsent: true})
	if err == nil {
		return claimNew, rev, nil
	}
	if storage.Code(err) != driver.Conflict {
		return 0, 0, fmt.Errorf("claim job %s: %w", id, err)
	}
	old := &secrets.JobRecord{MessageID: id}
	rev, err = j.Store.Get(ctx, old)
	if err != nil {
		return 0, 0, fmt.Errorf("read job %s: %w", id, err)
	}
	if old.State == StateFinished {
		return claimFinished, rev, nil
	}
	if !redelivered {
		return 0, 0, errDuplicate
	}
	rec.Received = old.Received
	rev, err = j.Store.Put(ctx, rec, driver.PutOptions{IfRevision: rev})
	if err != nil {
		if storage.Code(err) == driver.Conflict {
			// Someone else took it over between our read and write.
			return 0, 0, errDuplicate
		}
		return 0, 0, fmt.Errorf("take over job %s: %w", id, err)
	}
	return claimTakeover, rev, nil
}

// Finish records the final state of a claimed message.
func (j *Jobs) Finish(ctx context.Context, queue, id string, rev int64, received, started time.Time, exit int) error {
	rec := &secrets.JobRecord{MessageID: id, Queue: queue, State: StateFinished, Received: received,
		Started: started, Finished: time.Now().UTC(), ExitStatus: &exit}
	_, err := j.Store.Put(ctx, rec, driver.PutOptions{IfRevision: rev})
	if err != nil {
		return fmt.Errorf("record job %s finished: %w", id, err)
	}
	return nil
}
