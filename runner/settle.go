package runner

import (
	"context"
	"log/slog"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sealrun/sealrun/internal/wait"
)

// settlement is what is done with a delivery at the broker.
type settlement int

const (
	// settleNone: the delivery was handed back while its copy waited; the
	// copy that comes back is settled instead.
	settleNone settlement = iota
	settleAck
	// settleDeadLetter: nack without requeue, to the queue's dead-letter
	// exchange (if any), so it never loops.
	settleDeadLetter
	settleRequeue
)

// outcome is what handle decided for a delivery; settle carries it out and
// counts it, so every ack, reject and requeue happens in one place.
type outcome struct {
	how    settlement
	label  string // the "outcome" label of sealrun_runner_messages_total
	suite  string
	reason string // a rejection's reason code
	err    error  // why it was rejected or requeued
	// pause: a transient failure pauses consumption before the requeue.
	pause bool
	// again: the rejection was recorded before (the broker gave it back).
	again bool
	// A finished job's result, for the log line.
	res    *Result
	respID string
	// undelivered: the job finished but no queue took its report.
	undelivered bool
}

func shutdownOutcome(suite string, err error) outcome {
	return outcome{how: settleRequeue, label: outcomeShutdown, suite: suite, err: err}
}

func transientOutcome(suite string, err error) outcome {
	return outcome{how: settleRequeue, label: outcomeRequeued, suite: suite, err: err, pause: true}
}

// requeueOutcome gives a delivery back at once (its outcome could not be
// recorded).
func requeueOutcome(suite string, err error) outcome {
	return outcome{how: settleRequeue, label: outcomeRequeued, suite: suite, err: err}
}

func rejectOutcome(suite, reason string, again bool, err error) outcome {
	return outcome{how: settleDeadLetter, label: outcomeRejected, suite: suite, reason: reason, again: again, err: err}
}

func duplicateOutcome(suite string) outcome {
	return outcome{how: settleAck, label: outcomeDuplicate, suite: suite}
}

func doneOutcome(suite string, res *Result, respID string, undelivered bool) outcome {
	return outcome{how: settleAck, label: outcomeDone, suite: suite, res: res, respID: respID, undelivered: undelivered}
}

// settle carries out o on d and counts it. A requeue or a finished job is
// counted even when the broker did not take the settlement (the broker
// requeues at channel close; the redelivery of a finished job is acked as
// a duplicate). A rejection or a duplicate ack is counted only once the
// broker took it: otherwise it comes back and is counted then.
func (r *Runner) settle(ctx context.Context, log *slog.Logger, d amqp.Delivery, o outcome) {
	switch o.how {
	case settleNone:
		return
	case settleRequeue:
		if o.pause {
			pause := r.gate.fail()
			log.Warn("transient failure; pausing consumption and requeueing", "suite", o.suite, "error", o.err, "pause", pause)
			wait.Sleep(ctx, pause)
		}
		if err := d.Nack(false, true); err != nil {
			log.Debug("requeue failed; the broker requeues at channel close", "error", err)
		}
		r.count(o)
		if o.label == outcomeShutdown {
			log.Info("message given back for shutdown", "error", o.err)
		}
	case settleDeadLetter:
		if err := d.Nack(false, false); err != nil {
			log.Warn("reject failed; the broker will redeliver the message", "error", err)
			return
		}
		r.count(o)
		if o.again {
			log.Debug("message rejected again (the broker had given it back)", "reason", o.reason)
			return
		}
		// Envelope errors name queues, prefixes and fingerprints, never keys.
		log.Warn("message rejected without requeue", "suite", o.suite, "reason", o.reason, "error", o.err)
	case settleAck:
		err := d.Ack(false)
		switch {
		case o.label == outcomeDuplicate:
			if err != nil {
				log.Warn("ack of an already answered message failed; it will come back and be acked then", "error", err)
				return
			}
			r.count(o)
			log.Info("message already run and answered; acknowledged without running it again")
		case o.undelivered:
			if err != nil {
				log.Debug("ack after the job ran did not go through", "error", err)
			}
			r.count(o)
			log.Info("job finished; its report could not be delivered", "exit_status", o.res.ExitStatus, "timed_out", o.res.TimedOut,
				"duration", o.res.Duration.String())
		default:
			if err != nil {
				// The outcome and the response are durable; the redelivery
				// (if the delivery was handed back or its channel died) is
				// acked then.
				log.Debug("ack after the job was answered did not go through", "error", err)
			}
			r.gate.ok()
			r.count(o)
			log.Info("job finished", "exit_status", o.res.ExitStatus, "timed_out", o.res.TimedOut, "duration", o.res.Duration.String(),
				"response_id", o.respID)
		}
	}
}

func (r *Runner) count(o outcome) {
	r.m.messages.WithLabelValues(o.label, o.suite, o.reason).Inc()
}
