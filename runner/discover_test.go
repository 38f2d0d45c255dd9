package runner

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sealrun/sealrun/envelope"
)

// TestDiscoverQueues: with no configured queue, the runner consumes the
// queues whose names match its patterns, found through the real management
// API (in the test's own vhost) — including one created while it runs —
// and leaves alone response queues, dead-letter queues and queues that do
// not match. A discovered queue being deleted does not end the session.
func TestDiscoverQueues(t *testing.T) {
	mgmt := testenvRabbit(t).Management(t)
	qa, qb, other := fixPrefix+"disc_a", fixPrefix+"disc_b", "unrelated_disc"
	var h *harness
	h = newHarness(t, harnessOpt{configure: func(c *Config) {
		c.Discover = &Discover{ManagementURL: mgmt, Patterns: []string{fixPrefix + `disc_.*`}, Interval: 200 * time.Millisecond}
		// The harness declares nothing for discovered queues: make qa
		// (and its response queue) exist before the runner starts.
		u := c.AMQP.URL
		conn, err := amqp.Dial(u)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ch, _ := conn.Channel()
		declareBound(t, ch, qa, other)
		// A matching queue exclusive to another connection (which stays
		// open) can never be consumed by the runner: it must be passed
		// over, not end the session for every queue.
		owner, err := amqp.Dial(u)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { owner.Close() })
		och, _ := owner.Channel()
		if _, err := och.QueueDeclare(fixPrefix+"disc_excl", false, false, true, false, nil); err != nil {
			t.Fatal(err)
		}
	}})
	ch, err := h.dial().Channel()
	if err != nil {
		t.Fatal(err)
	}
	h.publish(qa, sealHPKE(t, qa))
	h.publish(other, sealHPKE(t, other))
	eventually(t, 15*time.Second, "message on a discovered queue run", func() bool { return h.count(outcomeDone) == 1 })

	// A queue created while the runner runs is consumed within the interval.
	declareBound(t, ch, qb)
	h.publish(qb, sealHPKE(t, qb))
	eventually(t, 15*time.Second, "message on a queue created later run", func() bool { return h.count(outcomeDone) == 2 })

	// Deleting a discovered queue cancels its consumer only.
	reconnects := testutilCounter(t, h.r, "sealrun_runner_reconnects_total")
	if _, err := ch.QueueDelete(qb, false, false, false); err != nil {
		t.Fatal(err)
	}
	// The broker cancels its consumer; the runner drops the queue and keeps
	// its session.
	eventually(t, 15*time.Second, "deleted queue dropped", func() bool { return !slices.Contains(h.r.queues.all(), qb) })
	h.publish(qa, sealHPKE(t, qa))
	eventually(t, 15*time.Second, "discovered queue still consumed", func() bool { return h.count(outcomeDone) == 3 })
	if got := testutilCounter(t, h.r, "sealrun_runner_reconnects_total"); got != reconnects {
		t.Errorf("deleting a discovered queue reconnected the runner (%v → %v)", reconnects, got)
	}

	// Untouched: the non-matching queue's message and both responses.
	if n := h.queueLen(other); n != 1 {
		t.Errorf("%s: %d messages, want the 1 published (not ours to consume)", other, n)
	}
	if n := h.queueLen(envelope.ResponseQueue(qa)); n != 6 {
		t.Errorf("%s: %d reports, want 6 (3 per job; a response queue is never consumed)", envelope.ResponseQueue(qa), n)
	}
	for _, q := range h.r.queues.all() {
		if q != qa {
			t.Errorf("consuming %s; want only %s", q, qa)
		}
	}
}

// declareBound declares each queue and its response queue, durable, bound
// to the request exchange as a StudioML client would.
func declareBound(t *testing.T, ch *amqp.Channel, queues ...string) {
	t.Helper()
	if err := ch.ExchangeDeclare(DefaultExchange, "topic", true, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	for _, q := range queues {
		for _, name := range []string{q, envelope.ResponseQueue(q)} {
			if _, err := ch.QueueDeclare(name, true, false, false, false, nil); err != nil {
				t.Fatal(err)
			}
		}
		if err := ch.QueueBind(q, "StudioML."+q, DefaultExchange, false, nil); err != nil {
			t.Fatal(err)
		}
	}
}

// A failing management API (wrong credentials) is a clear error naming
// the fix; it never echoes the password.
func TestListQueuesErrors(t *testing.T) {
	node := testenvRabbit(t)
	node.Management(t)
	u := strings.Replace(node.URL, "guest:guest", "guest:wrong-s3cret", 1)
	_, err := listQueues(t.Context(), http.DefaultClient, node.ManagementURL, u)
	if err == nil || !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), "monitoring") || strings.Contains(err.Error(), "wrong-s3cret") {
		t.Fatalf("wrong password: %v", err)
	}
	if _, err := listQueues(t.Context(), http.DefaultClient, "http://127.0.0.1:1", node.URL); err == nil {
		t.Fatal("unreachable API: no error")
	}
}
