package runner

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/sealrun/sealrun/envelope"
	"github.com/sealrun/sealrun/secrets"
)

// TestHappyPath runs one StudioML and one HPKE message through a command
// executor and opens the sealed responses the way a client does.
func TestHappyPath(t *testing.T) {
	q := fixPrefix + "happy"
	h := newHarness(t, harnessOpt{queues: []string{q}, responses: true, configure: func(c *Config) {
		c.Executor = ExecutorConfig{Type: "command", Command: []string{"/bin/sh", "-c", "wc -c; echo queue=$SEALRUN_QUEUE"}}
	}})
	h.publish(q, sealStudio(t, fixSign), sealHPKE(t, q))
	// Per job: Started, the "stop" log entry, the final Progress.
	resps := h.drain(envelope.ResponseQueue(q), 6, 30*time.Second)
	if len(resps) != 6 {
		t.Fatalf("got %d reports, want 6 (outcomes: done=%d rejected=%d requeued=%d)", len(resps),
			h.count(outcomeDone), h.count(outcomeRejected), h.count(outcomeRequeued))
	}
	states := map[string]int{}
	for _, d := range resps {
		if d.ContentType != "text/plain" {
			t.Errorf("response content type %q, want text/plain", d.ContentType)
		}
		plain, err := envelope.OpenPayload([]*envelope.MessagePrivateKey{fixResp}, string(d.Body))
		if err != nil {
			t.Fatalf("open response: %v", err)
		}
		sm := parseStudioML(t, plain) // as a StudioML consumer reads it
		if studiomlState(sm) == "Success" {
			t.Logf("a final report, parsed by protojson against StudioML's reports.proto: %s", protojson.Format(sm.Interface()))
		}
		var rep envelope.Report
		if err := json.Unmarshal(plain, &rep); err != nil {
			t.Fatal(err)
		}
		if rep.ExperimentID != "exp-1" {
			t.Fatalf("report %s, want one for exp-1", plain)
		}
		switch {
		case rep.Progress != nil:
			states[rep.Progress.State]++
			if rep.Progress.State == "Success" && d.MessageId != "response-"+rep.UniqueID {
				t.Errorf("final report id %q, want response-%s", d.MessageId, rep.UniqueID)
			}
		case rep.Logging != nil:
			states["log"]++
			want := fmt.Sprintf("%d\nqueue=%s\n", len(testRequest), q)
			if got := rep.Logging.Fields["output"]; got != want || rep.Logging.Message != "stop" || rep.Logging.Fields["success"] != "True" {
				t.Errorf("stop log %s: want output %q (request on stdin, queue in env), success True", plain, want)
			}
		}
	}
	if states["Started"] != 2 || states["Success"] != 2 || states["log"] != 2 {
		t.Errorf("reports by kind %v, want 2 Started, 2 stop logs, 2 Success", states)
	}
	eventually(t, 10*time.Second, "two finished JobRecords", func() bool {
		n := 0
		for _, j := range h.jobs() {
			if j.State == StateFinished && j.Queue == q && j.ExitStatus != nil && *j.ExitStatus == 0 {
				n++
			}
		}
		return n == 2
	})
	// A response is published before the job is recorded answered and
	// acked, and counted after that.
	eventually(t, 10*time.Second, "two messages counted done", func() bool { return h.count(outcomeDone) == 2 })
}

// TestPoisonDeadLettered checks every permanent failure class: rejected
// after exactly one delivery, dead-lettered once, never requeued.
func TestPoisonDeadLettered(t *testing.T) {
	q := fixPrefix + "poison"
	noKey := "rmq_nokey_poison"
	h := newHarness(t, harnessOpt{queues: []string{q, noKey}})

	tampered := func() []byte {
		// Re-signed by the right key, so only decryption can notice.
		var w struct {
			Message envelope.StudioMessage `json:"message"`
		}
		if err := json.Unmarshal(sealStudio(t, fixSign), &w); err != nil {
			t.Fatal(err)
		}
		k, s, _ := strings.Cut(*w.Message.Payload, ",")
		s = strings.Replace(s, s[10:14], "AAAA", 1)
		if s == strings.SplitN(*w.Message.Payload, ",", 2)[1] {
			s = strings.Replace(s, s[10:14], "BBBB", 1)
		}
		p := k + "," + s
		w.Message.Payload = &p
		w.Message.Signature = b64(fixSign.Sign([]byte(p)))
		b, _ := json.Marshal(w)
		return b
	}()
	cases := []struct {
		name, queue, reason string
		body                []byte
	}{
		{"bad signature", q, "bad_signature", sealStudio(t, fixOther)},
		{"no key for queue", noKey, "no_signing_key", sealStudio(t, fixSign)},
		{"tampered", q, "decrypt", tampered},
		{"malformed", q, "malformed", []byte("this is not json")},
		{"clear text refused", q, "clear_text_refused", []byte(testRequest)},
	}
	for _, c := range cases {
		h.publish(c.queue, c.body)
	}
	eventually(t, 20*time.Second, "every poison message rejected", func() bool {
		return h.count(outcomeRejected) == len(cases)
	})
	for _, c := range cases {
		if got := countMessages(t, h.r, outcomeRejected, c.reason); got != 1 {
			t.Errorf("%s: rejected with reason %s %d times, want 1", c.name, c.reason, got)
		}
	}
	dead := append(h.drain(q+".dead", 4, 10*time.Second), h.drain(noKey+".dead", 1, 10*time.Second)...)
	if len(dead) != len(cases) {
		t.Fatalf("%d messages dead-lettered, want %d", len(dead), len(cases))
	}
	for _, d := range dead {
		deaths, _ := d.Headers["x-death"].([]any)
		if len(deaths) != 1 {
			t.Fatalf("x-death %v, want one entry", d.Headers["x-death"])
		}
		if n := deaths[0].(amqp.Table)["count"]; n != int64(1) {
			t.Errorf("dead-lettered %v times, want 1", n)
		}
	}
	// Nothing looped: each was settled once, as rejected (a settled delivery
	// cannot come back), and none was requeued or run.
	for _, o := range []string{outcomeDone, outcomeRequeued, outcomeDuplicate} {
		if got := h.count(o); got != 0 {
			t.Errorf("outcome %s = %d, want 0", o, got)
		}
	}
	if n := h.queueLen(q) + h.queueLen(noKey); n != 0 {
		t.Errorf("%d messages left in the work queues", n)
	}
}

// TestDuplicateNotRunTwice publishes the same message twice: it runs once,
// the second copy is acked without running.
func TestDuplicateNotRunTwice(t *testing.T) {
	q := fixPrefix + "dup"
	ex := &countingExecutor{}
	h := newHarness(t, harnessOpt{queues: []string{q}, exec: ex})
	body := sealHPKE(t, q)
	h.publish(q, body)
	eventually(t, 10*time.Second, "first copy done", func() bool { return h.count(outcomeDone) == 1 })
	h.publish(q, body)
	eventually(t, 10*time.Second, "second copy acked as duplicate", func() bool { return h.count(outcomeDuplicate) == 1 })
	if ex.total.Load() != 1 {
		t.Fatalf("executor ran %d times, want 1", ex.total.Load())
	}
}

// TestBrokerKilledMidRun kills RabbitMQ with SIGKILL while messages are in
// flight: the runner reconnects alone and every message runs exactly once.
func TestBrokerKilledMidRun(t *testing.T) {
	q := fixPrefix + "restart"
	ex := &countingExecutor{delay: 20 * time.Millisecond}
	h := newHarness(t, harnessOpt{queues: []string{q}, exec: ex, responses: true, configure: func(c *Config) { c.Concurrency = 2 }})
	const n = 120
	var bodies [][]byte
	for i := 0; i < n; i++ {
		if i%2 == 0 {
			bodies = append(bodies, sealStudio(t, fixSign))
		} else {
			bodies = append(bodies, sealHPKE(t, q))
		}
	}
	h.publish(q, bodies...)
	eventually(t, 20*time.Second, "some messages processed", func() bool { return ex.total.Load() >= 10 })
	h.node.Kill9AndRestart(t)
	eventually(t, 90*time.Second, "every message finished and answered", func() bool {
		fin := 0
		for _, j := range h.jobs() {
			if j.State == StateFinished && !j.Responded.IsZero() && j.ResponseID == ResponseMessageID(j.MessageID) {
				fin++
			}
		}
		return fin == n
	})
	// One distinct response per message (a re-publish after a confirm lost
	// in the kill keeps its message id).
	ids := map[string]bool{}
	for _, d := range h.finalReports(envelope.ResponseQueue(q), 2*n, 10*time.Second) {
		ids[d.MessageId] = true
	}
	if len(ids) != n {
		t.Errorf("%d distinct responses, want %d", len(ids), n)
	}
	if got := testutilCounter(t, h.r, "sealrun_runner_reconnects_total"); got < 1 {
		t.Errorf("reconnects = %v, want ≥ 1", got)
	}
	for id, c := range ex.counts() {
		if c != 1 {
			t.Errorf("message %s ran %d times", id, c)
		}
	}
	if len(ex.counts()) != n {
		t.Errorf("%d distinct messages ran, want %d", len(ex.counts()), n)
	}
	if h.count(outcomeRejected) != 0 {
		t.Errorf("%d messages rejected", h.count(outcomeRejected))
	}
}

// flakySource is a KeySource that can be made unreachable.
type flakySource struct {
	KeySource
	down atomic.Bool
}

func (f *flakySource) Load(ctx contextT) (*Keys, error) {
	if f.down.Load() {
		return nil, errors.New("key source unreachable")
	}
	return f.KeySource.Load(ctx)
}

// TestKeySourceUnavailable: while the key source is down, a message whose
// key has not arrived yet waits (requeued, not rejected); when the source
// returns the key is loaded and the message runs. Nothing is lost.
func TestKeySourceUnavailable(t *testing.T) {
	qa, qb := fixPrefix+"keys", "rmq_later_keys"
	var fs *flakySource
	ex := &countingExecutor{}
	h := newHarness(t, harnessOpt{queues: []string{qa, qb}, exec: ex,
		keys: func(k KeySource) KeySource { fs = &flakySource{KeySource: k}; return fs }})
	fs.down.Store(true)
	writeFile(t, h.keyDir+"/queues/signing/rmq_later_", []byte(fixSign.Public().AuthorizedKey()))
	eventually(t, 10*time.Second, "runner to notice the source is down", func() bool { return !h.r.keysOK.Load() })
	h.publish(qb, sealStudio(t, fixSign))
	eventually(t, 10*time.Second, "message requeued while keys are unavailable", func() bool { return h.count(outcomeRequeued) >= 1 })
	if h.count(outcomeRejected) != 0 || ex.total.Load() != 0 {
		t.Fatalf("message settled while the key source was down: rejected=%d ran=%d", h.count(outcomeRejected), ex.total.Load())
	}
	fs.down.Store(false)
	eventually(t, 40*time.Second, "message run after the source returned", func() bool { return h.count(outcomeDone) == 1 })
	if h.count(outcomeRejected) != 0 {
		t.Errorf("rejected = %d, want 0", h.count(outcomeRejected))
	}
}

// TestSigningKeyAdded: a signing key written while the runner runs is
// picked up without a restart.
func TestSigningKeyAdded(t *testing.T) {
	q := "rmq_added_key"
	h := newHarness(t, harnessOpt{queues: []string{q}, configure: func(c *Config) {
		c.RunnerID, c.Heartbeat = "runner-hb", 100*time.Millisecond
	}})
	writeFile(t, h.keyDir+"/queues/signing/rmq_added_", []byte(fixSign.Public().AuthorizedKey()))
	eventually(t, 10*time.Second, "key reload", func() bool {
		return testutilCounter(t, h.r, "sealrun_runner_key_reloads_total") >= 1
	})
	h.publish(q, sealStudio(t, fixSign), sealHPKE(t, q))
	eventually(t, 10*time.Second, "both messages done", func() bool { return h.count(outcomeDone) == 2 })
	// The heartbeat keeps a RunnerRecord in etcd.
	rec := &secrets.RunnerRecord{ID: "runner-hb"}
	if _, err := h.store.Get(t.Context(), rec); err != nil || rec.LastHeartbeat.IsZero() || len(rec.Queues) != 1 {
		t.Fatalf("RunnerRecord %+v: %v", rec, err)
	}
}

// TestExecutorCannotStart: while the job command is missing, messages are
// requeued with backoff (never rejected, never looping hot); once it exists
// they run. Nothing is lost.
func TestExecutorCannotStart(t *testing.T) {
	q := fixPrefix + "nostart"
	bin := t.TempDir() + "/job.sh"
	h := newHarness(t, harnessOpt{queues: []string{q}, configure: func(c *Config) {
		c.Executor = ExecutorConfig{Type: "command", Command: []string{bin}}
	}})
	h.publish(q, sealStudio(t, fixSign), sealHPKE(t, q))
	eventually(t, 10*time.Second, "requeues while the executor cannot start", func() bool { return h.count(outcomeRequeued) >= 2 })
	// Backoff, not a hot loop: every requeue waited out a pause of the
	// gate first, and its pauses grow (internal/wait TestBackoffDelays).
	n := h.count(outcomeRequeued)
	h.r.gate.mu.Lock()
	pauses := h.r.gate.fails
	h.r.gate.mu.Unlock()
	if pauses < n {
		t.Errorf("%d requeues after %d pauses: requeued without backing off", n, pauses)
	}
	eventually(t, 5*time.Second, "/readyz to report the pause", func() bool { return h.r.notReady() != "" })
	writeFile(t, bin, []byte("#!/bin/sh\ncat >/dev/null\n"))
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "both messages run once the executor works", func() bool { return h.count(outcomeDone) == 2 })
	if h.count(outcomeRejected) != 0 {
		t.Errorf("rejected = %d, want 0", h.count(outcomeRejected))
	}
}
