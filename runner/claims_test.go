package runner

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sealrun/sealrun/envelope"
	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/driver"
)

func sealHPKEWithID(t testing.TB, queue, id string) []byte {
	t.Helper()
	b, err := envelope.SealHPKE([]byte(testRequest), fixHPKE.Public(), fixSign, envelope.SealHPKEOptions{Queue: queue, ID: id})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestLiveClaimNotRunTwice: a message whose JobRecord another live runner
// holds (its lease renewed) is not run; it is acked once that runner records
// the response. A claim whose owner died (lease expired) is taken over and
// run exactly once, and its response carries the stable message id.
func TestLiveClaimNotRunTwice(t *testing.T) {
	q := fixPrefix + "claim"
	ex := &countingExecutor{}
	h := newHarness(t, harnessOpt{queues: []string{q}, exec: ex, responses: true})
	ctx := t.Context()

	// Another runner runs hpke-live-1 and keeps its claim alive.
	live := &secrets.JobRecord{MessageID: "hpke-live-1", Queue: q, State: StateRunning, Received: time.Now(),
		Started: time.Now(), Owner: "other.1", LeaseUntil: time.Now().Add(time.Second)}
	rev, err := h.store.Put(ctx, live, driver.PutOptions{IfAbsent: true})
	if err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		for !stop.Load() {
			time.Sleep(200 * time.Millisecond)
			live.LeaseUntil = time.Now().Add(time.Second)
			if rev, err = h.store.Put(ctx, live, driver.PutOptions{IfRevision: rev}); err != nil {
				t.Errorf("renew the other runner's claim: %v", err)
				return
			}
		}
	}()
	h.publish(q, sealHPKEWithID(t, q, "live-1"))
	time.Sleep(3 * time.Second) // three leases
	stop.Store(true)
	<-renewed
	if ex.total.Load() != 0 {
		t.Fatalf("executor ran %d times while another live runner held the claim", ex.total.Load())
	}
	if n := h.count(outcomeDone) + h.count(outcomeDuplicate); n != 0 {
		t.Fatalf("message settled while its claim was held: %d", n)
	}
	// The other runner finishes and records its response: ack, no run.
	exit := 0
	live.State, live.Finished, live.ExitStatus, live.Responded = StateFinished, time.Now(), &exit, time.Now()
	if _, err := h.store.Put(ctx, live, driver.PutOptions{IfRevision: rev}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "copy acked once the owner answered", func() bool { return h.count(outcomeDuplicate) == 1 })
	if ex.total.Load() != 0 {
		t.Fatalf("executor ran %d times for a message answered elsewhere", ex.total.Load())
	}

	// A dead runner's claim: taken over after its lease, run once.
	dead := &secrets.JobRecord{MessageID: "hpke-dead-1", Queue: q, State: StateRunning, Received: time.Now(),
		Started: time.Now(), Owner: "dead.1", LeaseUntil: time.Now().Add(time.Second)}
	if _, err := h.store.Put(ctx, dead, driver.PutOptions{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	h.publish(q, sealHPKEWithID(t, q, "dead-1"))
	eventually(t, 15*time.Second, "dead runner's job taken over", func() bool { return h.count(outcomeDone) == 1 })
	if c := ex.counts()["hpke-dead-1"]; c != 1 || ex.total.Load() != 1 {
		t.Fatalf("taken-over job ran %d times (total %d), want 1", c, ex.total.Load())
	}
	rec := h.jobs()["hpke-dead-1"]
	if rec.State != StateFinished || rec.Responded.IsZero() || rec.ResponseID != "response-hpke-dead-1" ||
		!strings.HasPrefix(rec.Owner, h.r.cfg.RunnerID+".") {
		t.Fatalf("record after takeover: %+v", rec)
	}
	resp := h.finalReports(envelope.ResponseQueue(q), 2, 3*time.Second)
	if len(resp) != 1 || resp[0].MessageId != "response-hpke-dead-1" {
		t.Fatalf("%d responses, want one with message id response-hpke-dead-1", len(resp))
	}
	if h.queueLen(q) != 0 || h.queueLen(q+".dead") != 0 {
		t.Fatalf("left in queue: %d, dead-lettered: %d", h.queueLen(q), h.queueLen(q+".dead"))
	}
}

// TestPoisonRejectedOnceRecorded: a message that fails verification is
// dead-lettered once, with a rejected JobRecord holding only its reason.
func TestPoisonRejectedOnceRecorded(t *testing.T) {
	q := fixPrefix + "poison"
	ex := &countingExecutor{}
	h := newHarness(t, harnessOpt{queues: []string{q}, exec: ex})
	body := sealStudio(t, fixOther)
	h.publish(q, body)
	eventually(t, 10*time.Second, "rejection", func() bool { return h.count(outcomeRejected) == 1 })
	rec := h.jobs()[rejectionID(body)]
	if rec == nil || rec.State != StateRejected || rec.Reason != "bad_signature" || rec.Queue != q {
		t.Fatalf("rejection record %+v", rec)
	}
	// A copy the broker gives back (lost reject) is rejected again without
	// running; the record stays the first one.
	if why, err := h.r.jobs.Rejected(t.Context(), body); err != nil || why != "bad_signature" {
		t.Fatalf("Rejected: %q %v", why, err)
	}
	eventually(t, 5*time.Second, "dead letter", func() bool { return h.queueLen(q+".dead") == 1 })
	if ex.total.Load() != 0 {
		t.Fatal("poison message ran")
	}
}

// TestLongJobOutlivesConsumerTimeout: with the broker's consumer_timeout
// shortened to 1s, a 6s job is neither killed by the broker nor run twice:
// the runner hands the delivery back before the timeout, keeps running
// under its claim, and the copy that comes back waits for it and is acked.
// With the hand-back disabled, the broker closes the channel over the job
// instead; the job still finishes once and is answered on the new session.
func TestLongJobOutlivesConsumerTimeout(t *testing.T) {
	fixtures(t)
	for _, tc := range []struct {
		name     string
		runnerCT time.Duration
		// window, when set, is the HPKE replay window: shorter than the
		// job, so the handed-back copy returns older than the window and
		// must be recognised by its claim, not refused as a replay.
		window time.Duration
	}{{"hand back", time.Second, 0}, {"broker timeout", -1, 0}, {"hand back past the replay window", time.Second, 2 * time.Second}} {
		t.Run(tc.name, func(t *testing.T) {
			q := fixPrefix + "long"
			ex := &countingExecutor{delay: 6 * time.Second}
			node := testenv.RabbitMQ(t)
			// consumer_timeout is read when a channel opens, and checked on
			// the channel tick (60s by default): shorten both before the
			// runner under test connects, restore them after.
			get := func(k string) string {
				out := strings.TrimSpace(node.Ctl(t, "eval", "application:get_env(rabbit, "+k+")."))
				if v, ok := strings.CutPrefix(out, "{ok,"); ok {
					return strings.TrimSuffix(v, "}")
				}
				return ""
			}
			oldCT, oldTick := get("consumer_timeout"), get("channel_tick_interval")
			node.Ctl(t, "eval", "application:set_env(rabbit, consumer_timeout, 1000), application:set_env(rabbit, channel_tick_interval, 500).")
			defer func() {
				restore := "application:unset_env(rabbit, consumer_timeout)"
				if oldCT != "" {
					restore = "application:set_env(rabbit, consumer_timeout, " + oldCT + ")"
				}
				if oldTick != "" {
					restore += ", application:set_env(rabbit, channel_tick_interval, " + oldTick + ")"
				} else {
					restore += ", application:unset_env(rabbit, channel_tick_interval)"
				}
				node.Ctl(t, "eval", restore+".")
			}()
			h := newHarness(t, harnessOpt{queues: []string{q}, exec: ex, responses: true,
				configure: func(c *Config) {
					c.AMQP.ConsumerTimeout, c.Concurrency = tc.runnerCT, 1 // one slot: the copy that returns waits in the feeder
					if tc.window > 0 {
						c.ReplayWindow = tc.window
					}
				}})
			h.publish(q, sealHPKEWithID(t, q, "long-1"))
			eventually(t, 90*time.Second, "long job answered", func() bool { return h.count(outcomeDone) == 1 })
			if c := ex.counts()["hpke-long-1"]; c != 1 {
				t.Fatalf("long job ran %d times", c)
			}
			rec := h.jobs()["hpke-long-1"]
			if rec.State != StateFinished || rec.Responded.IsZero() || rec.ExitStatus == nil || *rec.ExitStatus != 0 {
				t.Fatalf("record %+v", rec)
			}
			eventually(t, 30*time.Second, "queue empty", func() bool { return h.queueLen(q) == 0 })
			resp := h.finalReports(envelope.ResponseQueue(q), 2, 3*time.Second)
			if len(resp) != 1 || resp[0].MessageId != "response-hpke-long-1" {
				t.Fatalf("%d responses, want exactly one", len(resp))
			}
			if n := h.count(outcomeRejected); n != 0 {
				t.Errorf("%d copies of the long job rejected (dead-lettered)", n)
			}
			reconnects := testutilCounter(t, h.r, "sealrun_runner_reconnects_total")
			t.Logf("handed back %d, reconnects %v", h.count(outcomeHandedBack), reconnects)
			if tc.runnerCT > 0 {
				if h.count(outcomeHandedBack) < 1 {
					t.Error("delivery never handed back")
				}
				if reconnects != 0 {
					t.Errorf("the broker closed the channel %v times despite the hand-back", reconnects)
				}
			} else if reconnects < 1 {
				// Shows the shortened timeout is enforced, so the hand-back
				// case above is what kept the channel open.
				t.Error("the broker never enforced its consumer timeout")
			}
		})
	}
}
