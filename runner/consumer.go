package runner

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"regexp"
	"time"

	"github.com/sealrun/sealrun/internal/wait"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sealrun/sealrun/envelope"
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
	if err := r.gate.wait(ctx); err != nil {
		r.requeue(log, d, "", outcomeShutdown, err)
		return
	}
	if d.Redelivered {
		// A redelivery of a message rejected before: the broker lost the
		// reject. Reject it again (so it reaches the dead-letter queue)
		// without verifying or logging it a second time.
		if why, err := r.jobs.Rejected(ctx, d.Body); err == nil && why != "" {
			if nerr := d.Nack(false, false); nerr == nil {
				r.m.messages.WithLabelValues(outcomeRejected, suiteLabel(nil, d.Body), why).Inc()
				log.Debug("redelivered message rejected again", "reason", why)
			}
			return
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
			r.requeue(log, d, suite, outcomeShutdown, err)
		case envelope.Permanent(err) && !(envelope.KeyDependent(err) && !r.keysOK.Load()):
			r.reject(ctx, log, queue, d, suite, err)
		default:
			// The key source is down, so a missing key may just not have
			// reached us yet: wait for it rather than reject.
			r.transient(ctx, log, d, suite, err)
		}
		return
	}
	if opened.FingerprintMismatch {
		// StudioML clients assert the signer's identity with the
		// fingerprint: a mismatch is worth an operator's look.
		log.Warn("message fingerprint names another key than the one that verified it", "prefix", opened.Prefix, "signer", opened.Signer)
	}
	id := messageID(opened, &d)
	log = log.With("message_id", id, "suite", suite)
	cl, c, ok := r.claim(ctx, log, queue, id, d, suite, handedBack)
	if !ok {
		return
	}
	defer r.inflight.leave(id)
	if cl == claimFinished {
		if err := d.Ack(false); err != nil {
			log.Warn("ack of an already answered message failed; it will come back and be acked then", "error", err)
			return
		}
		log.Info("message already run and answered; acknowledged without running it again")
		r.m.messages.WithLabelValues(outcomeDuplicate, suite, "").Inc()
		return
	}
	// The claim stays ours while we run and answer.
	kctx, stopKeep := context.WithCancel(context.WithoutCancel(ctx))
	defer stopKeep()
	go c.KeepAlive(kctx, func(err error) { log.Warn("renewing the job claim failed", "error", err) })

	job := Job{Queue: queue, ID: id, Suite: opened.Suite, Request: opened.Request}
	var res *Result
	if cl == claimRespond {
		// Its runner died (or gave up) after recording the outcome: answer from the
		// record (exit status; the output was never stored).
		rec := c.Record()
		res = resultFromRecord(&rec)
		log.Info("answering a finished job whose response was never recorded (its runner died or gave up)")
	} else {
		if cl == claimTakeover {
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
				r.requeue(log, d, suite, outcomeShutdown, err)
			} else {
				r.transient(ctx, log, d, suite, err)
			}
			return
		}
		r.m.job.Observe(res.Duration.Seconds())
		if err := r.durably(ctx, log, "record the job finished", func(ctx context.Context) error { return c.Finish(ctx, res) }); err != nil {
			r.lost(ctx, log, d, suite, c, err)
			return
		}
	}
	respID, err := r.respond(ctx, p, log, job, res)
	if errors.Is(err, errUnroutable) {
		// The run is recorded finished but not answered (respond warned);
		// running it again would not bring the report back.
		stopKeep()
		if err := d.Ack(false); err != nil {
			log.Debug("ack after the job ran did not go through", "error", err)
		}
		r.m.messages.WithLabelValues(outcomeDone, suite, "").Inc()
		log.Info("job finished; its report could not be delivered", "exit_status", res.ExitStatus, "timed_out", res.TimedOut,
			"duration", res.Duration.String())
		return
	}
	if err != nil {
		r.lost(ctx, log, d, suite, c, err)
		return
	}
	if err := r.durably(ctx, log, "record the response", func(ctx context.Context) error { return c.Responded(ctx, respID) }); err != nil {
		r.lost(ctx, log, d, suite, c, err)
		return
	}
	stopKeep()
	if err := d.Ack(false); err != nil {
		// The outcome and the response are durable; the redelivery (if the
		// delivery was handed back or its channel died) is acked then.
		log.Debug("ack after the job was answered did not go through", "error", err)
	}
	r.gate.ok()
	r.m.messages.WithLabelValues(outcomeDone, suite, "").Inc()
	log.Info("job finished", "exit_status", res.ExitStatus, "timed_out", res.TimedOut, "duration", res.Duration.String(),
		"response_id", respID)
}

// claimPoll is how often a copy waiting for another runner's claim reads
// the JobRecord again.
const claimPoll = 500 * time.Millisecond

// claim takes the message's JobRecord for this process, waiting while a
// live runner (this process included) holds it. ok false means the
// delivery was settled (requeued, or handed back while waiting).
func (r *Runner) claim(ctx context.Context, log *slog.Logger, queue, id string, d amqp.Delivery, suite string,
	handedBack <-chan struct{}) (claimResult, *Claim, bool) {
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
			cl, c, err := take(ctx, queue, id, time.Now().UTC())
			if err == nil && cl != claimBusy {
				return cl, c, true
			}
			r.inflight.leave(id)
			if err != nil {
				if ctx.Err() != nil {
					r.requeue(log, d, suite, outcomeShutdown, err)
				} else {
					r.transient(ctx, log, d, suite, err)
				}
				return 0, nil, false
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
			return 0, nil, false
		case <-ctx.Done():
			poll.Stop()
			r.requeue(log, d, suite, outcomeShutdown, ctx.Err())
			return 0, nil, false
		}
		poll.Stop()
	}
}

// durably retries a JobRecord write until it succeeds, the claim is lost,
// or shutdown ends the job (ctx) and finishTimeout has passed: giving up
// early would leave a run that happened looking unfinished.
func (r *Runner) durably(ctx context.Context, log *slog.Logger, what string, write func(context.Context) error) error {
	start := time.Now()
	for attempt := 1; ; attempt++ {
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
		err := write(wctx)
		cancel()
		if err == nil || errors.Is(err, errClaimLost) {
			return err
		}
		if ctx.Err() != nil && time.Since(start) > finishTimeout {
			return err
		}
		d := backoff(attempt, 200*time.Millisecond, 5*time.Second)
		log.Warn("could not "+what+"; retrying", "error", err, "retry_in", d)
		time.Sleep(d)
	}
}

// lost settles a delivery whose outcome could not be recorded: the claim
// was taken over (the other runner answers), or shutdown came first (the
// claim is released so the redelivery is handled at once).
func (r *Runner) lost(ctx context.Context, log *slog.Logger, d amqp.Delivery, suite string, c *Claim, err error) {
	if errors.Is(err, errClaimLost) {
		log.Error("job claim taken over by another runner while this one ran it; leaving the outcome to it", "error", err)
	} else {
		r.release(ctx, log, c)
	}
	r.requeue(log, d, suite, outcomeRequeued, err)
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

// reject settles a message that can never succeed: nack without requeue, so
// it goes to the queue's dead-letter exchange (if any) and never loops. The
// rejection is recorded first (by body hash, reason code only), so a copy
// the broker gives back is rejected again without a second verification
// or log line.
func (r *Runner) reject(ctx context.Context, log *slog.Logger, queue string, d amqp.Delivery, suite string, err error) {
	reason := envelope.Reason(err)
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
	first, rerr := r.jobs.Reject(rctx, queue, d.Body, reason, time.Now().UTC())
	cancel()
	if rerr != nil {
		// Still reject: the record only saves work on a redelivery.
		log.Warn("could not record the rejection", "error", rerr)
	}
	if nerr := d.Nack(false, false); nerr != nil {
		log.Warn("reject failed; the broker will redeliver the message", "error", nerr)
		return
	}
	r.m.messages.WithLabelValues(outcomeRejected, suite, reason).Inc()
	if !first {
		log.Debug("message rejected again (the broker had given it back)", "reason", reason)
		return
	}
	// Envelope errors name queues, prefixes and fingerprints, never keys.
	log.Warn("message rejected without requeue", "suite", suite, "reason", reason, "error", err)
}

// transient pauses processing with a growing backoff, then requeues.
func (r *Runner) transient(ctx context.Context, log *slog.Logger, d amqp.Delivery, suite string, err error) {
	pause := r.gate.fail()
	log.Warn("transient failure; pausing consumption and requeueing", "suite", suite, "error", err, "pause", pause)
	wait.Sleep(ctx, pause)
	r.requeue(log, d, suite, outcomeRequeued, err)
}

func (r *Runner) requeue(log *slog.Logger, d amqp.Delivery, suite, outcome string, why error) {
	if err := d.Nack(false, true); err != nil {
		log.Debug("requeue failed; the broker requeues at channel close", "error", err)
	}
	r.m.messages.WithLabelValues(outcome, suite, "").Inc()
	if outcome == outcomeShutdown {
		log.Info("message given back for shutdown", "error", why)
	}
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
