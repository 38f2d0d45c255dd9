package runner

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"regexp"
	"time"

	"github.com/cenkalti/backoff/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sealrun/sealrun/envelope"
	"github.com/sealrun/sealrun/internal/wait"
	"github.com/sealrun/sealrun/secrets"
)

// finishTimeout bounds the bookkeeping after a job ran; it is detached from
// shutdown so a job that finished is recorded as finished.
const finishTimeout = 15 * time.Second

// handle takes one delivery to a durable outcome: ack (done or duplicate),
// reject without requeue (permanent), or requeue (transient or shutdown).
// It never returns with the delivery unsettled, except when the channel is
// gone, in which case the broker requeues it.
//
// A message runs at most once while its runner lives: the JobRecord claim
// belongs to this process and is renewed while the job runs, so a copy of
// the message delivered anywhere meanwhile (broker restart, channel lost,
// consumer timeout) waits for the claim instead of running. A job whose
// channel died under it still finishes, is recorded, is answered on the
// current session and records that; the redelivery is then only acked.
func (r *Runner) handle(ctx context.Context, p *publisher, queue string, d amqp.Delivery, log *slog.Logger, handedBack <-chan struct{}) {
	o, log, finish := r.decide(ctx, p, queue, d, log, handedBack)
	r.settle(ctx, log, d, o)
	finish()
}

// decide runs a delivery's job (or finds it need not run) and says how to
// settle it, with the logger that names the message. finish releases the
// job's in-flight entry and claim renewal once the delivery is settled.
func (r *Runner) decide(ctx context.Context, p *publisher, queue string, d amqp.Delivery, log *slog.Logger,
	handedBack <-chan struct{}) (_ outcome, _ *slog.Logger, finish func()) {
	finish = func() {}
	if err := r.gate.wait(ctx); err != nil {
		return shutdownOutcome("", err), log, finish
	}
	if d.Redelivered {
		// A redelivery of a message rejected before: the broker lost the
		// reject. Reject it again (so it reaches the dead-letter queue)
		// without verifying or logging it a second time.
		if why, err := r.jobs.Rejected(ctx, d.Body); err == nil && why != "" {
			return rejectOutcome(suiteLabel(nil, d.Body), why, true, nil), log, finish
		}
	}
	op := r.opener.Load()
	t0 := time.Now()
	opened, err := op.Open(ctx, queue, d.Body)
	suite := suiteLabel(opened, d.Body)
	r.m.open.WithLabelValues(suite).Observe(time.Since(t0).Seconds())
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return shutdownOutcome(suite, err), log, finish
		case envelope.Permanent(err) && !(envelope.KeyDependent(err) && !r.keysOK.Load()):
			return r.reject(ctx, log, queue, d, suite, err), log, finish
		default:
			// The key source is down, so a missing key may just not have
			// reached us yet: wait for it rather than reject.
			return transientOutcome(suite, err), log, finish
		}
	}
	if opened.FingerprintMismatch {
		// StudioML clients assert the signer's identity with the
		// fingerprint: a mismatch is worth an operator's look.
		log.Warn("message fingerprint names another key than the one that verified it", "prefix", opened.Prefix, "signer", opened.Signer)
	}
	id := messageID(opened, &d)
	log = log.With("message_id", id, "suite", suite)
	verdict, c, o, ok := r.acquire(ctx, log, queue, id, d, suite, handedBack)
	if !ok {
		return o, log, finish
	}
	if verdict == verdictFinished {
		return duplicateOutcome(suite), log, func() { r.inflight.leave(id) }
	}
	// The claim stays ours while we run and answer.
	kctx, stopKeep := context.WithCancel(context.WithoutCancel(ctx))
	finish = func() { stopKeep(); r.inflight.leave(id) }
	go c.KeepAlive(kctx, func(err error) { log.Warn("renewing the job claim failed", "error", err) })

	job := Job{Queue: queue, ID: id, Suite: opened.Suite, Request: opened.Request}
	var res *Result
	if verdict == verdictRespond {
		// Its runner died (or gave up) after recording the outcome: answer from the
		// record (exit status; the output was never stored).
		rec := c.Record()
		res = resultFromRecord(&rec)
		log.Info("answering a finished job whose response was never recorded (its runner died or gave up)")
	} else {
		if verdict == verdictTakeover {
			log.Info("taking over an unfinished run whose runner is gone")
		}
		r.started(ctx, p, log, job)
		res, err = r.exec.Run(ctx, job)
		r.noteExecutor(err)
		if err != nil {
			r.release(ctx, log, c)
			if ctx.Err() != nil {
				// Killed by shutdown: the JobRecord stays "running",
				// released, and the redelivery takes it over at once.
				return shutdownOutcome(suite, err), log, finish
			}
			return transientOutcome(suite, err), log, finish
		}
		r.m.job.Observe(res.Duration.Seconds())
		if err := r.durably(ctx, log, "record the job finished", func(ctx context.Context) error { return c.Finish(ctx, res) }); err != nil {
			return r.lost(ctx, log, suite, c, err), log, finish
		}
	}
	respID, err := r.respond(ctx, p, log, job, res)
	if errors.Is(err, errUnroutable) {
		// The run is recorded finished but not answered (respond warned);
		// running it again would not bring the report back.
		stopKeep()
		return doneOutcome(suite, res, "", true), log, finish
	}
	if err != nil {
		return r.lost(ctx, log, suite, c, err), log, finish
	}
	if err := r.durably(ctx, log, "record the response", func(ctx context.Context) error { return c.Responded(ctx, respID) }); err != nil {
		return r.lost(ctx, log, suite, c, err), log, finish
	}
	stopKeep()
	return doneOutcome(suite, res, respID, false), log, finish
}

// claimPoll is how often a copy waiting for another runner's claim reads
// the JobRecord again.
const claimPoll = 500 * time.Millisecond

// acquire takes the message's JobRecord for this process, waiting while a
// live runner (this process included) holds it. ok false means the
// delivery is not to be run: o says how to settle it (requeue, or nothing
// when it was handed back while waiting). With ok true the caller leaves
// r.inflight for id.
func (r *Runner) acquire(ctx context.Context, log *slog.Logger, queue, id string, d amqp.Delivery, suite string,
	handedBack <-chan struct{}) (_ jobVerdict, _ *Claim, o outcome, ok bool) {
	waiting := false
	for {
		// A copy of a message this process runs waits for that run.
		done, first := r.inflight.enter(id)
		if first {
			// A redelivered copy usually has a record already: read it
			// first, rather than fail a create that would fail the whole
			// group-committed batch it lands in.
			take := r.jobs.Claim
			if waiting || d.Redelivered {
				take = r.jobs.Reclaim
			}
			verdict, c, err := take(ctx, queue, id, time.Now().UTC())
			if err == nil && verdict != verdictBusy {
				return verdict, c, o, true
			}
			r.inflight.leave(id)
			if err != nil {
				if ctx.Err() != nil {
					return 0, nil, shutdownOutcome(suite, err), false
				}
				return 0, nil, transientOutcome(suite, err), false
			}
			done = nil
		}
		if !waiting {
			waiting = true
			log.Info("a live runner holds this message's claim; waiting for it instead of running it again")
		}
		poll := time.NewTimer(claimPoll)
		select {
		case <-done:
		case <-poll.C:
		case <-handedBack:
			// The delivery went back to the broker; a copy comes back.
			poll.Stop()
			return 0, nil, outcome{how: settleNone}, false
		case <-ctx.Done():
			poll.Stop()
			return 0, nil, shutdownOutcome(suite, ctx.Err()), false
		}
		poll.Stop()
	}
}

// durably retries a JobRecord write until it succeeds, the claim is lost,
// or shutdown ends the job (ctx) and finishTimeout has passed: giving up
// early would leave a run that happened looking unfinished.
func (r *Runner) durably(ctx context.Context, log *slog.Logger, what string, write func(context.Context) error) error {
	gctx, cancel := afterShutdown(ctx, time.Now())
	defer cancel()
	return wait.Retry(gctx, bookkeepingBackoff(), 0, func(err error, d time.Duration) {
		log.Warn("could not "+what+"; retrying", "error", err, "retry_in", d)
	}, func() error {
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
		defer cancel()
		err := write(wctx)
		if errors.Is(err, errClaimLost) {
			return backoff.Permanent(err)
		}
		return err
	})
}

// bookkeepingBackoff paces the retries of a finished job's record and
// response writes.
func bookkeepingBackoff() *backoff.ExponentialBackOff {
	return wait.Backoff(200*time.Millisecond, 5*time.Second)
}

// afterShutdown is the context a finished job's bookkeeping retries under:
// it ends only once shutdown has ended ctx and finishTimeout has passed
// since start, since giving up early would leave a run that happened
// looking unfinished.
func afterShutdown(ctx context.Context, start time.Time) (context.Context, context.CancelFunc) {
	gctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(time.Until(start.Add(finishTimeout)), cancel)
		context.AfterFunc(gctx, func() { t.Stop() })
	})
	return gctx, func() { stop(); cancel() }
}

// lost is the outcome of a delivery whose outcome could not be recorded:
// the claim was taken over (the other runner answers), or shutdown came
// first (the claim is released so the redelivery is handled at once).
func (r *Runner) lost(ctx context.Context, log *slog.Logger, suite string, c *Claim, err error) outcome {
	if errors.Is(err, errClaimLost) {
		log.Error("job claim taken over by another runner while this one ran it; leaving the outcome to it", "error", err)
	} else {
		r.release(ctx, log, c)
	}
	return requeueOutcome(suite, err)
}

// release gives up an unfinished claim so a redelivery need not wait for
// its lease to expire.
func (r *Runner) release(ctx context.Context, log *slog.Logger, c *Claim) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
	defer cancel()
	if err := c.Release(rctx); err != nil {
		log.Warn("releasing the job claim failed; a redelivery waits for its lease to expire", "error", err)
	}
}

// resultFromRecord is the outcome a JobRecord holds (no output).
func resultFromRecord(rec *secrets.JobRecord) *Result {
	res := &Result{TimedOut: rec.TimedOut, Duration: rec.Finished.Sub(rec.Started)}
	if rec.ExitStatus != nil {
		res.ExitStatus = *rec.ExitStatus
	}
	return res
}

// reject records a message that can never succeed and returns its
// rejection. The rejection is recorded first (by body hash, reason code
// only), so a copy the broker gives back is rejected again without a second
// verification or log line.
func (r *Runner) reject(ctx context.Context, log *slog.Logger, queue string, d amqp.Delivery, suite string, err error) outcome {
	reason := envelope.Reason(err)
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
	first, rerr := r.jobs.Reject(rctx, queue, d.Body, reason, time.Now().UTC())
	cancel()
	if rerr != nil {
		// Still reject: the record only saves work on a redelivery.
		log.Warn("could not record the rejection", "error", rerr)
	}
	return rejectOutcome(suite, reason, !first, err)
}

func suiteLabel(o *envelope.Opened, body []byte) string {
	if o != nil {
		return string(o.Suite)
	}
	s, err := envelope.Classify(body)
	if err != nil || s == "" {
		return "unknown"
	}
	return string(s)
}

var safeID = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

// hpkeMessageID is the JobRecord id of an HPKE message with header id id.
func hpkeMessageID(id string) (string, bool) {
	if !safeID.MatchString(id) {
		return "", false
	}
	return "hpke-" + id, true
}

// messageID names a message for JobRecords: the HPKE header id (signed), or
// the AMQP message id, or the SHA-256 of the body. StudioML bodies carry a
// fresh random key, so equal bodies are the same message.
func messageID(o *envelope.Opened, d *amqp.Delivery) string {
	if o.HPKE != nil {
		if id, ok := hpkeMessageID(o.HPKE.ID); ok {
			return id
		}
	}
	if safeID.MatchString(d.MessageId) {
		return "amqp-" + d.MessageId
	}
	sum := sha256.Sum256(d.Body)
	return "sha256-" + hex.EncodeToString(sum[:])
}
