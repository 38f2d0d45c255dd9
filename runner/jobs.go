package runner

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
)

// JobRecord states. A message's record goes running → finished (ran; the
// Responded field is set once its response is confirmed), or is rejected.
const (
	StateRunning  = "running"
	StateFinished = "finished"
	StateRejected = "rejected"
)

// DefaultClaimLease is how long a claim outlives its owner's last renewal.
// The owner renews it every third of that while the job runs and until its
// response is recorded, so only a dead (or partitioned) runner's claim
// expires. Runners compare it with their own clocks: keep them in NTP sync
// well within this.
const DefaultClaimLease = 30 * time.Second

// MinClaimLease is the shortest claim_lease the config accepts: renewals
// run every third of the lease and must get through an etcd leader change.
const MinClaimLease = 3 * time.Second

// jobVerdict is what a message's JobRecord says to do with a copy of it,
// as found by Jobs.Claim (named apart from the Claim it may return).
type jobVerdict int

const (
	// verdictNew: first time this message is seen; run it.
	verdictNew jobVerdict = iota
	// verdictTakeover: an unfinished run whose owner is dead (its lease
	// expired, or it released the claim); run it again.
	verdictTakeover
	// verdictRespond: run to the end, but its owner died before recording
	// the response: publish the response from the record, do not run.
	verdictRespond
	// verdictFinished: run and answered; ack without running.
	verdictFinished
	// verdictBusy: a live runner owns the claim (it runs the job or is
	// publishing its response): wait, never run it in parallel.
	verdictBusy
)

func (c jobVerdict) String() string {
	return [...]string{"new", "takeover", "respond", "finished", "busy"}[c]
}

// Jobs records each message's execution as a secrets.JobRecord in the
// storage service's state backend (plain etcd). The record is both the
// duplicate-delivery check for every suite and the HPKE replay check: the
// message id is claimed with a create-if-absent transaction, and a claim
// belongs to one live runner process (Owner) until its lease expires, so
// however often the broker delivers a message, it runs once.
type Jobs struct {
	Store *storage.Service
	// Owner names this runner process in the claims it takes (unique per
	// process start: a restarted runner does not own its past claims).
	Owner string
	// Lease is the claim lease (default DefaultClaimLease).
	Lease time.Duration

	// batch group-commits the puts of concurrent handlers (jobbatch.go).
	batch putBatcher
}

func (j *Jobs) lease() time.Duration {
	if j.Lease > 0 {
		return j.Lease
	}
	return DefaultClaimLease
}

// Claim is a claim this process holds on a message: its record and
// revision, updated with compare-and-set so a claim lost to a takeover is
// noticed instead of overwritten.
type Claim struct {
	jobs *Jobs
	mu   sync.Mutex
	rev  int64
	rec  secrets.JobRecord
	// released is set by Release; renewals then leave the lease cleared.
	released bool
}

// errClaimLost: another runner took the claim over (our lease expired, e.g.
// while etcd was unreachable). The job's outcome is no longer ours to record.
var errClaimLost = errors.New("job claim taken over by another runner")

// Claim takes message id for this process, or says why not. A record that
// is running or awaiting its response under a live owner (not this process)
// is verdictBusy; one whose owner is dead, or is this process without a run
// in flight (the caller checks that), is taken over with compare-and-set.
func (j *Jobs) Claim(ctx context.Context, queue, id string, now time.Time) (jobVerdict, *Claim, error) {
	rec := secrets.JobRecord{MessageID: id, Queue: queue, State: StateRunning, Received: now, Started: now,
		Owner: j.Owner, LeaseUntil: now.Add(j.lease())}
	rev, err := j.put(ctx, &rec, driver.PutOptions{IfAbsent: true})
	if err == nil {
		return verdictNew, &Claim{jobs: j, rev: rev, rec: rec}, nil
	}
	if storage.Code(err) != driver.Conflict {
		return 0, nil, fmt.Errorf("claim job %s: %w", id, err)
	}
	return j.Reclaim(ctx, queue, id, now)
}

// Reclaim is Claim for a message known to have a record (a copy polling a
// busy claim): it reads first, so waiting copies add no failing
// create-if-absent writes to the shared batches.
func (j *Jobs) Reclaim(ctx context.Context, queue, id string, now time.Time) (jobVerdict, *Claim, error) {
	old := secrets.JobRecord{MessageID: id}
	rev, err := j.Store.Get(ctx, &old)
	if storage.Code(err) == driver.NotFound {
		return j.Claim(ctx, queue, id, now)
	}
	if err != nil {
		return 0, nil, fmt.Errorf("read job %s: %w", id, err)
	}
	var verdict jobVerdict
	switch {
	case old.State == StateFinished && !old.Responded.IsZero():
		return verdictFinished, nil, nil
	case old.State == StateRejected:
		// Not a message we opened before (rejections are keyed by body
		// hash): a job id that is someone else's rejection record.
		return 0, nil, fmt.Errorf("job %s: the id names a rejection record", id)
	case old.Owner != j.Owner && now.Before(old.LeaseUntil):
		return verdictBusy, nil, nil
	case old.State == StateFinished:
		verdict = verdictRespond
	default:
		verdict = verdictTakeover
	}
	rec := old
	rec.Owner, rec.LeaseUntil = j.Owner, now.Add(j.lease())
	if verdict == verdictTakeover {
		rec.Started = now
	}
	rev, err = j.put(ctx, &rec, driver.PutOptions{IfRevision: rev})
	if err != nil {
		if storage.Code(err) == driver.Conflict {
			// Another runner took it between our read and write.
			return verdictBusy, nil, nil
		}
		return 0, nil, fmt.Errorf("take over job %s: %w", id, err)
	}
	return verdict, &Claim{jobs: j, rev: rev, rec: rec}, nil
}

// Record returns a copy of the claimed record.
func (c *Claim) Record() secrets.JobRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rec
}

// update applies change to the record and writes it with compare-and-set.
//
// A Conflict does not always mean the claim was lost: a write that reached
// etcd but whose answer did not (etcd restarted, timeout) leaves our
// revision stale. Owner names this process alone and a takeover rewrites
// it, so a record still naming us is still our claim: adopt it — its
// revision and its contents, since the lost write may have been a step
// (finished, responded) that must not be rolled back — and apply the
// change to it.
func (c *Claim) update(ctx context.Context, what string, change func(*secrets.JobRecord)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for attempt := 0; ; attempt++ {
		rec := c.rec
		change(&rec)
		rev, err := c.jobs.put(ctx, &rec, driver.PutOptions{IfRevision: c.rev})
		if err == nil {
			c.rev, c.rec = rev, rec
			return nil
		}
		if storage.Code(err) != driver.Conflict {
			return fmt.Errorf("%s job %s: %w", what, rec.MessageID, err)
		}
		cur := secrets.JobRecord{MessageID: rec.MessageID}
		curRev, gerr := c.jobs.Store.Get(ctx, &cur)
		if gerr != nil {
			return fmt.Errorf("%s job %s: re-read after a conflict: %w", what, rec.MessageID, gerr)
		}
		if cur.Owner != c.jobs.Owner || attempt == 2 {
			return fmt.Errorf("%s job %s: %w", what, rec.MessageID, errClaimLost)
		}
		c.rev, c.rec = curRev, cur
	}
}

// Renew extends the claim's lease.
func (c *Claim) Renew(ctx context.Context) error {
	return c.update(ctx, "renew claim of", func(r *secrets.JobRecord) {
		// A released claim stays released: a renewal racing the release
		// (KeepAlive still ticking) must not bring its lease back.
		if !c.released {
			r.LeaseUntil = time.Now().Add(c.jobs.lease())
		}
	})
}

// KeepAlive renews the claim until ctx ends. It returns at once (and the
// claim is lost for good) if another runner took it over.
func (c *Claim) KeepAlive(ctx context.Context, onErr func(error)) {
	t := time.NewTicker(c.jobs.lease() / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, c.jobs.lease()/3)
		err := c.Renew(rctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			onErr(err)
			if errors.Is(err, errClaimLost) {
				return
			}
		}
	}
}

// Finish records that the job ran to the end; the response is still due.
func (c *Claim) Finish(ctx context.Context, res *Result) error {
	return c.update(ctx, "record finished", func(r *secrets.JobRecord) {
		exit := res.ExitStatus
		r.State, r.Finished, r.ExitStatus, r.TimedOut = StateFinished, time.Now().UTC(), &exit, res.TimedOut
		r.LeaseUntil = time.Now().Add(c.jobs.lease())
	})
}

// Responded records that the response was confirmed by the broker (or that
// none was due, responseID ""). From then on a redelivery is only acked.
func (c *Claim) Responded(ctx context.Context, responseID string) error {
	return c.update(ctx, "record response of", func(r *secrets.JobRecord) {
		r.Responded, r.ResponseID, r.LeaseUntil = time.Now().UTC(), responseID, time.Time{}
	})
}

// Release gives up an unfinished claim (shutdown, transient failure), so
// the redelivery is taken over at once rather than after the lease.
func (c *Claim) Release(ctx context.Context) error {
	return c.update(ctx, "release claim of", func(r *secrets.JobRecord) {
		r.LeaseUntil = time.Time{}
		c.released = true
	})
}

// rejectionID is the JobRecord key of a rejected message: the SHA-256 of its
// body, since a message that cannot be opened has no trustworthy id, and a
// redelivery carries the same body. It never collides with a job id.
func rejectionID(body []byte) string {
	sum := sha256.Sum256(body)
	return "rejected-" + hex.EncodeToString(sum[:])
}

// Reject records that the message with this body was rejected for reason
// (an envelope.Reason code, never message data). first is false when it had
// already been recorded: the broker gave back a message it was told to
// dead-letter.
func (j *Jobs) Reject(ctx context.Context, queue string, body []byte, reason string, now time.Time) (first bool, err error) {
	rec := &secrets.JobRecord{MessageID: rejectionID(body), Queue: queue, State: StateRejected, Received: now,
		Finished: now, Owner: j.Owner, Reason: reason}
	_, err = j.put(ctx, rec, driver.PutOptions{IfAbsent: true})
	if storage.Code(err) == driver.Conflict {
		return false, nil
	}
	if err != nil {
		return true, fmt.Errorf("record rejection: %w", err)
	}
	return true, nil
}

// Rejected returns the reason a message with this body was rejected
// before, or "" if it was not (or the store cannot say).
func (j *Jobs) Rejected(ctx context.Context, body []byte) (string, error) {
	rec := &secrets.JobRecord{MessageID: rejectionID(body)}
	if _, err := j.Store.Get(ctx, rec); err != nil {
		if storage.Code(err) == driver.NotFound {
			return "", nil
		}
		return "", err
	}
	if rec.State != StateRejected {
		return "", nil
	}
	return rec.Reason, nil
}

// claimed is the envelope's Opener.Known: whether an HPKE message created
// before the replay window has a claim here, i.e. is a redelivery (a
// handed-back long job, a broker restart) of work already taken, not a
// replay. An unreadable store answers false: the message is then refused as
// too old, which can dead-letter the copy of a job that still runs and
// answers, but never runs a replay.
func (r *Runner) claimed(ctx context.Context, id string) bool {
	mid, ok := hpkeMessageID(id)
	if !ok {
		return false
	}
	rec := secrets.JobRecord{MessageID: mid}
	if _, err := r.store.Get(ctx, &rec); err != nil {
		return false
	}
	return rec.State == StateRunning || rec.State == StateFinished
}
