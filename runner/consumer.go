package runner

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"regexp"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sealrun/sealrun/envelope"
)

// finishTimeout bounds the bookkeeping after a job ran; it is detached from
// shutdown so a job that finished is recorded as finished.
const finishTimeout = 15 * time.Second

// handle takes one delivery to a durable outcome: ack (done or duplicate),
// reject without requeue (permanent), or requeue (transient or shutdown).
// It never returns with the delivery unsettled, except when the channel is
// gone, in which case the broker requeues it.
func (r *Runner) handle(ctx context.Context, p *publisher, queue string, d amqp.Delivery) {
	log := r.log.With("queue", queue, "delivery_tag", d.DeliveryTag, "redelivered", d.Redelivered)
	if err := r.gate.wait(ctx); err != nil {
		r.requeue(log, d, "", outcomeShutdown, err)
		return
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
		case envelope.Permanent(err) && !(keyDependent(err) && !r.keysOK.Load()):
			r.reject(log, d, suite, err)
		default:
			// The key source is down, so a missing key may just not have
			// reached us yet: wait for it rather than reject.
			r.transient(ctx, log, d, suite, err)
		}
		return
	}
	if opened.FingerprintMismatch {
		log.Info("message fingerprint names another key than the one that verified it", "prefix", opened.Prefix, "signer", opened.Signer)
	}
	id := messageID(opened, &d)
	log = log.With("message_id", id, "suite", suite)
	// A redelivery of a message this process still runs (the connection was
	// lost under it) waits for that run instead of starting another.
	done, first := r.inflight.enter(id)
	for !first {
		select {
		case <-done:
		case <-ctx.Done():
			r.requeue(log, d, suite, outcomeShutdown, ctx.Err())
			return
		}
		done, first = r.inflight.enter(id)
	}
	defer r.inflight.leave(id)

	now := time.Now().UTC()
	cl, rev, err := r.jobs.Claim(ctx, queue, id, d.Redelivered, now)
	if err != nil {
		if errors.Is(err, errDuplicate) {
			r.reject(log, d, suite, err)
		} else if ctx.Err() != nil {
			r.requeue(log, d, suite, outcomeShutdown, err)
		} else {
			r.transient(ctx, log, d, suite, err)
		}
		return
	}
	if cl == claimFinished {
		if err := d.Ack(false); err != nil {
			log.Warn("ack of an already finished message failed; it will come back and be acked then", "error", err)
			return
		}
		log.Info("message already finished; acknowledged without running it again")
		r.m.messages.WithLabelValues(outcomeDuplicate, suite, "").Inc()
		return
	}
	if cl == claimTakeover {
		log.Info("taking over an unfinished run of a redelivered message")
	}
	job := Job{Queue: queue, ID: id, Suite: opened.Suite, Request: opened.Request}
	res, err := r.exec.Run(ctx, job)
	if err != nil {
		if ctx.Err() != nil {
			// Killed by shutdown: the JobRecord stays "running", and the
			// redelivery takes it over.
			r.requeue(log, d, suite, outcomeShutdown, err)
		} else {
			r.transient(ctx, log, d, suite, err)
		}
		return
	}
	r.m.job.Observe(res.Duration.Seconds())
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
	defer cancel()
	if err := r.respond(fctx, p, job, res); err != nil {
		r.transient(ctx, log, d, suite, err)
		return
	}
	if err := r.jobs.Finish(fctx, queue, id, rev, now, now, res.ExitStatus); err != nil {
		r.transient(ctx, log, d, suite, err)
		return
	}
	if err := d.Ack(false); err != nil {
		// The outcome is durable; the redelivery will be acked as a duplicate.
		log.Warn("ack failed after the job was recorded finished", "error", err)
	}
	r.gate.ok()
	r.m.messages.WithLabelValues(outcomeDone, suite, "").Inc()
	log.Info("job finished", "exit_status", res.ExitStatus, "timed_out", res.TimedOut, "duration", res.Duration)
}

// keyDependent errors may be cured by a key the runner has not loaded yet.
func keyDependent(err error) bool {
	return errors.Is(err, envelope.ErrNoSigningKey) || errors.Is(err, envelope.ErrUnknownKey) ||
		errors.Is(err, envelope.ErrBadSignature) || errors.Is(err, envelope.ErrDecrypt)
}

// reject settles a message that can never succeed: nack without requeue, so
// it goes to the queue's dead-letter exchange (if any) and never loops.
func (r *Runner) reject(log *slog.Logger, d amqp.Delivery, suite string, err error) {
	reason := reasonLabel(err)
	if nerr := d.Nack(false, false); nerr != nil {
		log.Warn("reject failed; the broker will redeliver the message", "error", nerr)
		return
	}
	r.m.messages.WithLabelValues(outcomeRejected, suite, reason).Inc()
	// Envelope errors name queues, prefixes and fingerprints, never keys.
	log.Warn("message rejected without requeue", "suite", suite, "reason", reason, "error", err)
}

// transient pauses processing with a growing backoff, then requeues.
func (r *Runner) transient(ctx context.Context, log *slog.Logger, d amqp.Delivery, suite string, err error) {
	pause := r.gate.fail()
	log.Warn("transient failure; pausing consumption and requeueing", "suite", suite, "error", err, "pause", pause)
	t := time.NewTimer(pause)
	select {
	case <-t.C:
	case <-ctx.Done():
		t.Stop()
	}
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

// reasonLabel maps an error to its envelope sentinel's short name.
func reasonLabel(err error) string {
	for _, s := range []struct {
		err  error
		name string
	}{
		{envelope.ErrMalformed, "malformed"}, {envelope.ErrBadSignature, "bad_signature"},
		{envelope.ErrNoSigningKey, "no_signing_key"}, {envelope.ErrDecrypt, "decrypt"},
		{envelope.ErrUnknownKey, "unknown_key"}, {envelope.ErrClearTextRefused, "clear_text_refused"},
		{envelope.ErrReplay, "replay"}, {envelope.ErrWrongQueue, "wrong_queue"}, {envelope.ErrKeyType, "key_type"},
	} {
		if errors.Is(err, s.err) {
			return s.name
		}
	}
	return "other"
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

// messageID names a message for JobRecords: the HPKE header id (signed), or
// the AMQP message id, or the SHA-256 of the body. StudioML bodies carry a
// fresh random key, so equal bodies are the same message.
func messageID(o *envelope.Opened, d *amqp.Delivery) string {
	if o.HPKE != nil && safeID.MatchString(o.HPKE.ID) {
		return "hpke-" + o.HPKE.ID
	}
	if safeID.MatchString(d.MessageId) {
		return "amqp-" + d.MessageId
	}
	sum := sha256.Sum256(d.Body)
	return "sha256-" + hex.EncodeToString(sum[:])
}
