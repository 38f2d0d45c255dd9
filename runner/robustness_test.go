package runner

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sealrun/sealrun/envelope"
)

// logBuffer collects a runner's JSON log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines decodes every line, failing the test on a key that appears twice.
func (b *logBuffer) lines(t testing.TB) []map[string]any {
	t.Helper()
	b.mu.Lock()
	text := b.buf.String()
	b.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		if line == "" {
			continue
		}
		dec := json.NewDecoder(strings.NewReader(line))
		if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
			t.Fatalf("log line is not a JSON object: %q", line)
		}
		m := map[string]any{}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				t.Fatal(err)
			}
			var v any
			if err := dec.Decode(&v); err != nil {
				t.Fatal(err)
			}
			if _, dup := m[k.(string)]; dup {
				t.Errorf("key %q twice on one log line: %s", k, line)
			}
			m[k.(string)] = v
		}
		out = append(out, m)
	}
	return out
}

// find returns the log lines whose message contains msg.
func (b *logBuffer) find(t testing.TB, msg string) []map[string]any {
	var out []map[string]any
	for _, l := range b.lines(t) {
		if s, _ := l["msg"].(string); strings.Contains(s, msg) {
			out = append(out, l)
		}
	}
	return out
}

func readyz(t testing.TB, r *Runner) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	return rec.Code, rec.Body.String()
}

func responsesCount(t testing.TB, r *Runner, result string) int {
	t.Helper()
	mfs, err := r.m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "sealrun_runner_responses_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return int(m.GetCounter().GetValue())
				}
			}
		}
	}
	return 0
}

func withChannel(t testing.TB, url string, f func(ch *amqp.Channel)) {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	f(ch)
}

// TestOneBadQueueNeverStopsOthers: a queue a StudioML client declared first
// (non-durable, no dead-lettering) is consumed as it is with a warning
// naming the argument; a queue that cannot be consumed at all (held
// exclusively by another connection) is named by /readyz; the other queues
// are consumed throughout.
func TestOneBadQueueNeverStopsOthers(t *testing.T) {
	a, b, c, d, e := fixPrefix+"qa", fixPrefix+"qb", fixPrefix+"qc", fixPrefix+"qd", fixPrefix+"qe"
	logs := &logBuffer{}
	var holder *amqp.Connection
	h := newHarness(t, harnessOpt{queues: []string{a, b, c, d, e}, logTo: logs, before: func(url string) {
		withChannel(t, url, func(ch *amqp.Channel) {
			// As the StudioML client declares it by default.
			if _, err := ch.QueueDeclare(c, false, false, false, false, nil); err != nil {
				t.Fatal(err)
			}
			// Durable, but without dead-lettering.
			if _, err := ch.QueueDeclare(e, true, false, false, false, nil); err != nil {
				t.Fatal(err)
			}
		})
		var err error
		if holder, err = amqp.Dial(url); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { holder.Close() })
		ch, err := holder.Channel()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ch.QueueDeclare(d, false, true, true, false, nil); err != nil {
			t.Fatal(err)
		}
	}})
	h.publish(a, sealStudio(t, fixSign))
	h.publish(b, sealStudio(t, fixSign))
	h.publish(c, sealStudio(t, fixSign))
	h.publish(e, sealStudio(t, fixSign))
	eventually(t, 30*time.Second, "the four consumable queues' messages done", func() bool { return h.count(outcomeDone) == 4 })

	warns := map[string]map[string]any{}
	for _, w := range logs.find(t, "exists with other arguments") {
		if w["level"] != "WARN" {
			t.Errorf("not a WARN: %v", w)
		}
		warns[w["queue"].(string)] = w
	}
	if len(warns) != 2 || warns[c]["argument"] != "durable" || warns[e]["argument"] != "x-dead-letter-exchange" {
		t.Errorf("want WARNs naming %s's durable and %s's x-dead-letter-exchange, got %v", c, e, warns)
	}
	if s, _ := warns[c]["fix"].(string); !strings.Contains(s, "durable") {
		t.Errorf("the warning says nothing useful to do: %v", warns[c])
	}
	if s, _ := warns[e]["fix"].(string); !strings.Contains(s, "dead-letter") {
		t.Errorf("the warning says nothing useful to do: %v", warns[e])
	}
	if len(logs.find(t, "broker session ended")) != 0 {
		t.Error("a bad queue ended the broker session")
	}
	code, body := readyz(t, h.r)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "queue "+d+" not consumed") ||
		!strings.Contains(body, "exclusively") || strings.Contains(body, c) || strings.Contains(body, e) {
		t.Errorf("/readyz = %d %q, want 503 naming queue %s (exclusive) and only it", code, body, d)
	}
}

// TestUnroutableReportNotCountedSent: a response queue not bound to the
// exchange gets the report through the default exchange; a report no queue
// takes is counted unroutable and the job is not recorded as answered.
func TestUnroutableReportNotCountedSent(t *testing.T) {
	q := fixPrefix + "noroute"
	rq := envelope.ResponseQueue(q)
	logs := &logBuffer{}
	h := newHarness(t, harnessOpt{queues: []string{q}, logTo: logs,
		configure: func(c *Config) { f := false; c.AMQP.Declare = &f },
		before: func(url string) {
			withChannel(t, url, func(ch *amqp.Channel) {
				if err := ch.ExchangeDeclare(DefaultExchange, "topic", true, true, false, false, nil); err != nil {
					t.Fatal(err)
				}
				if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
					t.Fatal(err)
				}
				if err := ch.QueueBind(q, "StudioML."+q, DefaultExchange, false, nil); err != nil {
					t.Fatal(err)
				}
				// Exists, but not bound to StudioML.topic.
				if _, err := ch.QueueDeclare(rq, true, false, false, false, nil); err != nil {
					t.Fatal(err)
				}
			})
		}})
	h.publish(q, sealStudio(t, fixSign))
	eventually(t, 30*time.Second, "the first job done", func() bool { return h.count(outcomeDone) == 1 })
	if got := responsesCount(t, h.r, "sent_default_exchange"); got != 1 {
		t.Errorf("sent_default_exchange = %d, want 1", got)
	}
	if got := responsesCount(t, h.r, "sent"); got != 0 {
		t.Errorf("sent = %d, want 0 (the exchange did not route it)", got)
	}
	if got := h.drain(rq, 3, 10*time.Second); len(got) != 3 {
		t.Errorf("%d reports reached %s by the default exchange, want 3", len(got), rq)
	}
	if w := logs.find(t, "not bound to the exchange"); len(w) == 0 || w[0]["level"] != "WARN" {
		t.Errorf("no WARN telling to bind the response queue: %v", w)
	}

	// The runner still believes the queue exists (its check is cached):
	// neither route takes the report now.
	withChannel(t, h.url, func(ch *amqp.Channel) {
		if _, err := ch.QueueDelete(rq, false, false, false); err != nil {
			t.Fatal(err)
		}
	})
	h.publish(q, sealStudio(t, fixSign))
	eventually(t, 30*time.Second, "the second job done", func() bool { return h.count(outcomeDone) == 2 })
	if got := responsesCount(t, h.r, "unroutable"); got != 1 {
		t.Errorf("unroutable = %d, want 1", got)
	}
	if got := responsesCount(t, h.r, "sent"); got != 0 {
		t.Errorf("sent = %d, want 0", got)
	}
	answered, unanswered := 0, 0
	for _, j := range h.jobs() {
		if j.State != StateFinished {
			continue
		}
		if j.ResponseID != "" {
			answered++
		} else if j.Responded.IsZero() {
			unanswered++
		}
	}
	if answered != 1 || unanswered != 1 {
		t.Errorf("finished jobs: %d answered, %d unanswered; want 1 and 1", answered, unanswered)
	}
	if w := logs.find(t, "report lost"); len(w) != 1 || w[0]["level"] != "WARN" {
		t.Errorf("want one WARN about the lost report, got %v", w)
	}
}

// TestNoResponseQueueWarns: a job whose response queue is missing is a
// WARN that says what to create.
func TestNoResponseQueueWarns(t *testing.T) {
	q := fixPrefix + "noresp"
	logs := &logBuffer{}
	h := newHarness(t, harnessOpt{queues: []string{q}, logTo: logs})
	h.publish(q, sealStudio(t, fixSign))
	eventually(t, 30*time.Second, "job done", func() bool { return h.count(outcomeDone) == 1 })
	w := logs.find(t, "response queue does not exist")
	if len(w) != 1 || w[0]["level"] != "WARN" || w[0]["response_queue"] != envelope.ResponseQueue(q) || w[0]["routing_key"] != "StudioML."+q+"_response" {
		t.Errorf("want one WARN naming the response queue and its routing key, got %v", w)
	}
	if got := responsesCount(t, h.r, "no_queue"); got != 1 {
		t.Errorf("no_queue = %d, want 1", got)
	}
}

// TestWorkRoot: a missing work_root is created (0700) at start, one that
// cannot be made fails the start, and an executor that stops starting jobs
// shows on /readyz until it recovers.
func TestWorkRoot(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewCommandExecutor(ExecutorConfig{Command: []string{"/bin/true"}, WorkRoot: filepath.Join(file, "jobs")}); err == nil ||
		!strings.Contains(err.Error(), "executor.work_root") || !strings.Contains(err.Error(), "cannot be created") {
		t.Errorf("work_root under a file: error %v, want one naming executor.work_root", err)
	}

	q := fixPrefix + "workroot"
	root := filepath.Join(t.TempDir(), "missing", "jobs")
	h := newHarness(t, harnessOpt{queues: []string{q}, configure: func(c *Config) {
		c.Executor = ExecutorConfig{Type: "command", Command: []string{"/bin/true"}, WorkRoot: root}
	}})
	fi, err := os.Stat(root)
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Fatalf("work_root after start: %v %v, want a 0700 directory", fi, err)
	}
	h.publish(q, sealStudio(t, fixSign))
	eventually(t, 30*time.Second, "job done", func() bool { return h.count(outcomeDone) == 1 })
	if code, body := readyz(t, h.r); code != http.StatusOK {
		t.Fatalf("/readyz = %d %q before the failure", code, body)
	}

	if err := os.RemoveAll(root); err != nil {
		t.Fatal(err)
	}
	h.publish(q, sealStudio(t, fixSign))
	eventually(t, 30*time.Second, "/readyz reporting the executor", func() bool {
		code, body := readyz(t, h.r)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "executor failing") && strings.Contains(body, "working directory")
	})
	if err := os.MkdirAll(root, 0o700); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "the requeued job done", func() bool { return h.count(outcomeDone) == 2 })
	eventually(t, 30*time.Second, "/readyz ready again", func() bool {
		code, _ := readyz(t, h.r)
		return code == http.StatusOK
	})
}

// TestLogFormat: a fingerprint mismatch is a WARN; no key twice on a line;
// durations are Go duration strings.
func TestLogFormat(t *testing.T) {
	q := fixPrefix + "logs"
	logs := &logBuffer{}
	h := newHarness(t, harnessOpt{queues: []string{q}, logTo: logs, responses: true})
	var w map[string]json.RawMessage
	if err := json.Unmarshal(sealStudio(t, fixSign), &w); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(w["message"], &m); err != nil {
		t.Fatal(err)
	}
	m["fingerprint"] = fixOther.Public().Fingerprint() // advisory, unsigned
	w["message"] = mustJSON(t, m)
	h.publish(q, mustJSON(t, w), []byte("not json"))
	eventually(t, 30*time.Second, "one done, one rejected", func() bool {
		return h.count(outcomeDone) == 1 && h.count(outcomeRejected) == 1
	})
	fp := logs.find(t, "fingerprint names another key")
	if len(fp) != 1 || fp[0]["level"] != "WARN" {
		t.Errorf("fingerprint mismatch logged as %v, want one WARN", fp)
	}
	done := logs.find(t, "job finished")
	if len(done) != 1 {
		t.Fatalf("%d job finished lines, want 1", len(done))
	}
	if s, ok := done[0]["duration"].(string); !ok {
		t.Errorf("duration %v, want a Go duration string", done[0]["duration"])
	} else if _, err := time.ParseDuration(s); err != nil {
		t.Errorf("duration %q: %v", s, err)
	}
	_ = logs.lines(t) // fails on any line with a key twice (the rejection repeats suite)
	if len(logs.find(t, "rejected without requeue")) != 1 {
		t.Error("the rejection was not logged")
	}
	_ = io.Discard
}
