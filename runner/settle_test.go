package runner

import (
	"errors"
	"io"
	"log/slog"
	"maps"
	"slices"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// recordingAck records how a delivery was settled; fail makes the broker
// refuse it (the channel is gone).
type recordingAck struct {
	calls []string
	fail  bool
}

func (a *recordingAck) settled(call string) error {
	a.calls = append(a.calls, call)
	if a.fail {
		return errors.New("channel closed")
	}
	return nil
}

func (a *recordingAck) Ack(uint64, bool) error { return a.settled("ack") }
func (a *recordingAck) Nack(_ uint64, _ bool, requeue bool) error {
	if requeue {
		return a.settled("requeue")
	}
	return a.settled("dead-letter")
}
func (a *recordingAck) Reject(uint64, bool) error { return a.settled("reject") }

// TestSettleMapsEachOutcome pins the one settle point: each outcome handle
// can decide reaches the broker as exactly one call (or none), and is
// counted under its label only when it is durable.
func TestSettleMapsEachOutcome(t *testing.T) {
	res := &Result{ExitStatus: 3, Duration: time.Second}
	boom := errors.New("boom")
	cases := []struct {
		name      string
		o         outcome
		fail      bool // the broker refuses the settlement
		call      string
		label     string // counted label; "" counts nothing
		reason    string
		gateReset bool // a fully answered job resets the pause
		paused    bool // a transient failure pauses consumption
	}{
		{name: "handed back", o: outcome{how: settleNone}},
		{name: "done", o: doneOutcome("hpke", res, "resp-1", false), call: "ack", label: outcomeDone, gateReset: true},
		{name: "done, ack refused", o: doneOutcome("hpke", res, "resp-1", false), fail: true, call: "ack", label: outcomeDone, gateReset: true},
		{name: "done, report undelivered", o: doneOutcome("hpke", res, "", true), call: "ack", label: outcomeDone},
		{name: "duplicate", o: duplicateOutcome("hpke"), call: "ack", label: outcomeDuplicate},
		{name: "duplicate, ack refused", o: duplicateOutcome("hpke"), fail: true, call: "ack"},
		{name: "rejected", o: rejectOutcome("hpke", "bad_signature", false, boom), call: "dead-letter", label: outcomeRejected, reason: "bad_signature"},
		{name: "rejected again", o: rejectOutcome("hpke", "bad_signature", true, nil), call: "dead-letter", label: outcomeRejected, reason: "bad_signature"},
		{name: "rejected, nack refused", o: rejectOutcome("hpke", "bad_signature", false, boom), fail: true, call: "dead-letter"},
		{name: "shutdown", o: shutdownOutcome("hpke", boom), call: "requeue", label: outcomeShutdown},
		{name: "shutdown, nack refused", o: shutdownOutcome("hpke", boom), fail: true, call: "requeue", label: outcomeShutdown},
		{name: "lost", o: requeueOutcome("hpke", boom), call: "requeue", label: outcomeRequeued},
		{name: "transient", o: transientOutcome("hpke", boom), call: "requeue", label: outcomeRequeued, paused: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := &Runner{m: newMetrics()}
			r.gate.min, r.gate.max = time.Millisecond, time.Millisecond
			r.gate.fails = 2
			ack := &recordingAck{fail: tc.fail}
			r.settle(t.Context(), slog.New(slog.NewTextHandler(io.Discard, nil)), amqp.Delivery{Acknowledger: ack}, tc.o)

			var calls []string
			if tc.call != "" {
				calls = []string{tc.call}
			}
			if !slices.Equal(ack.calls, calls) {
				t.Errorf("broker calls %v, want %v", ack.calls, calls)
			}
			got := messageSeries(t, r)
			want := map[messageLabels]float64{}
			if tc.label != "" {
				want[messageLabels{tc.label, "hpke", tc.reason}] = 1
			}
			if !maps.Equal(got, want) {
				t.Errorf("messages_total %v, want %v", got, want)
			}
			if reset := r.gate.fails == 0; reset != tc.gateReset {
				t.Errorf("pause reset = %v, want %v", reset, tc.gateReset)
			}
			if paused := r.gate.fails == 3; paused != tc.paused {
				t.Errorf("pause pushed out = %v, want %v", paused, tc.paused)
			}
		})
	}
}
