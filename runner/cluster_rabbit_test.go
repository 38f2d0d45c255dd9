package runner

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sealrun/sealrun/envelope"
	"github.com/sealrun/sealrun/internal/testenv"
)

// vhostOf is the vhost of an AMQP URL the test helpers made.
func vhostOf(url string) string { return url[strings.LastIndex(url, "/")+1:] }

// publishAndClose publishes bodies to queue through url with confirms and
// closes the connection, so the only connections left in the vhost are the
// runner's.
func publishAndClose(t *testing.T, url, queue string, bodies ...[]byte) {
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
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	var dcs []*amqp.DeferredConfirmation
	for _, b := range bodies {
		dc, err := ch.PublishWithDeferredConfirmWithContext(t.Context(), DefaultExchange, "StudioML."+queue, true, false,
			amqp.Publishing{ContentType: "application/json", DeliveryMode: amqp.Persistent, Body: b})
		if err != nil {
			t.Fatal(err)
		}
		dcs = append(dcs, dc)
	}
	for _, dc := range dcs {
		if ok, err := dc.WaitContext(t.Context()); !ok || err != nil {
			t.Fatalf("publish not confirmed: %v", err)
		}
	}
}

// finalReportsByID consumes queue through url until want distinct final
// reports arrived (or timeout), and returns how many copies of each.
func finalReportsByID(t *testing.T, url, queue string, want int, timeout time.Duration) map[string]int {
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
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	ds, err := ch.ConsumeWithContext(ctx, queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for len(got) < want {
		select {
		case d, ok := <-ds:
			if !ok {
				t.Fatalf("consumer of %s closed", queue)
			}
			if isFinalReport(d.MessageId) {
				got[d.MessageId]++
			}
		case <-ctx.Done():
			t.Fatalf("%d of %d final reports on %s after %s", len(got), want, queue, timeout)
		}
	}
	return got
}

// queueTotal is ready plus unacknowledged messages of queue in vhost.
func queueTotal(t *testing.T, c *testenv.RabbitCluster, vhost, queue string) int {
	t.Helper()
	out := c.Ctl(t, "list_queues", "-p", vhost, "name", "messages", "--formatter", "json")
	var qs []struct {
		Name     string `json:"name"`
		Messages int    `json:"messages"`
	}
	if err := json.Unmarshal([]byte(out), &qs); err != nil {
		t.Fatalf("list_queues: %v: %s", err, out)
	}
	for _, q := range qs {
		if q.Name == queue {
			return q.Messages
		}
	}
	t.Fatalf("queue %s not in %s", queue, out)
	return 0
}

// TestClusterNodeLossQuorum: a runner given every node of a 3-node cluster
// consumes quorum queues under load; the node it is connected to (which
// also leads the request queue) is SIGKILLed mid-load. The runner
// reconnects to another node, and every message is run once and answered
// (a report whose confirm was lost may be published twice, under the same
// message id); the poison messages among them are dead-lettered once each;
// nothing is left in the request queue and nothing dead-lettered by the
// broker's delivery limit.
func TestClusterNodeLossQuorum(t *testing.T) {
	c := testenv.SharedRabbitCluster(t)
	q := fixPrefix + "cluster"
	ex := &countingExecutor{delay: 100 * time.Millisecond}
	h := newHarness(t, harnessOpt{queues: []string{q}, exec: ex, responses: true, cluster: c})
	vhost := vhostOf(h.url)

	const good, poison = 150, 5
	var bodies [][]byte
	for i := range good + poison {
		signer := fixSign
		if i%((good+poison)/poison) == 0 {
			signer = fixOther // bad signature: rejected, dead-lettered
		}
		bodies = append(bodies, sealStudio(t, signer))
	}
	conns := c.ConnectedNodes(t, vhost)
	if len(conns) != 1 {
		t.Fatalf("runner connections on nodes %v, want one", conns)
	}
	victim := conns[0]
	if l := c.QueueLeader(t, vhost, q); l != victim {
		t.Logf("request queue led by node %d, runner on node %d", l, victim)
	}
	publishAndClose(t, h.url, q, bodies...)
	eventually(t, time.Minute, "a fifth of the load run", func() bool { return ex.total.Load() >= good/5 })
	killed := time.Now()
	c.Kill(victim)
	if victim == len(h.urls)-1 {
		h.url = h.urls[0] // the test client moves off the dead node too
	}
	eventually(t, 2*time.Minute, "the runner reconnected", func() bool {
		return testutilCounter(t, h.r, "sealrun_runner_reconnects_total") >= 1 && h.r.connected.Load()
	})
	t.Logf("runner consuming again %s after the node's SIGKILL (%d of %d jobs had run)",
		time.Since(killed).Round(10*time.Millisecond), ex.total.Load(), good)
	if now := c.ConnectedNodes(t, vhost); len(now) != 1 || now[0] == victim {
		t.Fatalf("runner connected to nodes %v after node %d was killed", now, victim)
	}

	reports := finalReportsByID(t, h.url, envelope.ResponseQueue(q), good, 2*time.Minute)
	copies := 0
	for _, n := range reports {
		copies += n
	}
	t.Logf("%d jobs answered, %d final report copies (a copy is a publish whose confirm was lost)", len(reports), copies)
	runs := ex.counts()
	if len(runs) != good {
		t.Fatalf("%d distinct jobs ran, want %d", len(runs), good)
	}
	for id, n := range runs {
		if n != 1 {
			t.Errorf("job %s ran %d times", id, n)
		}
		if reports[ResponseMessageID(id)] == 0 {
			t.Errorf("job %s ran but its report is missing", id)
		}
	}
	for _, rec := range h.jobs() {
		if rec.State != StateRejected && rec.ResponseID == "" {
			t.Errorf("job %s not recorded answered: %+v", rec.MessageID, rec)
		}
	}
	// A poison message rejected as the dead-letter queue's leader died is
	// re-sent by the broker after its confirm timeout.
	eventually(t, 6*testenv.DeadLetterConfirmTimeout, "the poison messages dead-lettered", func() bool {
		return queueTotal(t, c, vhost, q+".dead") >= poison
	})
	eventually(t, time.Minute, "the request queue settled", func() bool { return queueTotal(t, c, vhost, q) == 0 })
	// The request queue is empty, so no more dead-lettering can happen.
	if n := queueTotal(t, c, vhost, q+".dead"); n != poison {
		t.Fatalf("%d messages dead-lettered, want the %d poison ones once each", n, poison)
	}
}

// TestQuorumQueuesDeclared: with queue_type quorum the request and
// dead-letter queues are quorum queues; the request queue carries the
// runner's delivery limit and at-least-once dead-lettering.
func TestQuorumQueuesDeclared(t *testing.T) {
	q := fixPrefix + "quorum"
	h := newHarness(t, harnessOpt{queues: []string{q}, configure: func(c *Config) { c.AMQP.QueueType = QueueQuorum }})
	out := h.node.Ctl(t, "list_queues", "-p", vhostOf(h.url), "name", "type", "arguments", "--formatter", "json")
	var qs []struct {
		Name      string  `json:"name"`
		Type      string  `json:"type"`
		Arguments [][]any `json:"arguments"` // [name, AMQP type, value]
	}
	if err := json.Unmarshal([]byte(out), &qs); err != nil {
		t.Fatalf("list_queues: %v: %s", err, out)
	}
	byName := map[string]int{}
	for i, x := range qs {
		byName[x.Name] = i
	}
	for _, name := range []string{q, q + ".dead"} {
		i, ok := byName[name]
		if !ok || qs[i].Type != QueueQuorum {
			t.Fatalf("queue %s not a quorum queue: %s", name, out)
		}
	}
	args := map[string]any{}
	for _, a := range qs[byName[q]].Arguments {
		if len(a) == 3 {
			args[a[0].(string)] = a[2]
		}
	}
	if lim, _ := args["x-delivery-limit"].(float64); int(lim) != h.cfg.DeliveryLimit() {
		t.Errorf("x-delivery-limit %v, want %d", args["x-delivery-limit"], h.cfg.DeliveryLimit())
	}
	if args["x-dead-letter-strategy"] != "at-least-once" || args["x-overflow"] != "reject-publish" ||
		args["x-dead-letter-exchange"] != "sealrun.dlx" {
		t.Errorf("request queue arguments %v", args)
	}
	// Poison is dead-lettered through them, once.
	h.publish(q, sealStudio(t, fixOther))
	eventually(t, 10*time.Second, "rejection", func() bool { return h.count(outcomeRejected) == 1 })
	eventually(t, 10*time.Second, "dead letter", func() bool { return h.queueLen(q+".dead") == 1 })
}

// TestQuorumHandBacksNotDeadLettered: a job handed back to the broker many
// more times than RabbitMQ 4's default quorum delivery limit (20) runs
// once, is answered, and is never dead-lettered: the runner's own limit is
// above what its hand-backs reach.
func TestQuorumHandBacksNotDeadLettered(t *testing.T) {
	q := fixPrefix + "quorum_long"
	ex := &countingExecutor{delay: 3 * time.Second}
	h := newHarness(t, harnessOpt{queues: []string{q}, exec: ex, responses: true, configure: func(c *Config) {
		c.AMQP.QueueType = QueueQuorum
		c.AMQP.ConsumerTimeout = 100 * time.Millisecond // a hand-back every 50ms
	}})
	h.publish(q, sealStudio(t, fixSign))
	if got := h.finalReports(envelope.ResponseQueue(q), 1, 30*time.Second); len(got) != 1 {
		t.Fatalf("%d final reports, want 1", len(got))
	}
	if n := h.count(outcomeHandedBack); n < 25 {
		t.Fatalf("handed back %d times; the test needs more than 20", n)
	}
	if ex.total.Load() != 1 {
		t.Fatalf("ran %d times", ex.total.Load())
	}
	eventually(t, 10*time.Second, "the request queue settled", func() bool { return h.queueLen(q) == 0 })
	if n := h.queueLen(q + ".dead"); n != 0 {
		t.Fatalf("%d messages dead-lettered", n)
	}
}

// TestQuorumOverClassicQueueWarns: a queue that exists as a classic queue
// (a StudioML client declared it) is consumed as it is when the runner is
// configured for quorum, with a WARN naming x-queue-type and saying what to
// do; its dead-letter queue, also classic already, is used as it is.
func TestQuorumOverClassicQueueWarns(t *testing.T) {
	q := fixPrefix + "was_classic"
	logs := &logBuffer{}
	h := newHarness(t, harnessOpt{queues: []string{q}, logTo: logs,
		configure: func(c *Config) { c.AMQP.QueueType = QueueQuorum },
		before: func(url string) {
			withChannel(t, url, func(ch *amqp.Channel) {
				for _, name := range []string{q, q + ".dead"} {
					if _, err := ch.QueueDeclare(name, true, false, false, false, nil); err != nil {
						t.Fatal(err)
					}
				}
			})
		}})
	h.publish(q, sealStudio(t, fixSign))
	eventually(t, 30*time.Second, "the message done", func() bool { return h.count(outcomeDone) == 1 })
	var args []string
	for _, w := range logs.find(t, "exists with other arguments") {
		if w["level"] != "WARN" {
			t.Errorf("not a WARN: %v", w)
		}
		args = append(args, w["queue"].(string)+":"+w["argument"].(string))
		if fix, _ := w["fix"].(string); !strings.Contains(fix, "queue_type") {
			t.Errorf("the warning says nothing useful to do: %v", w)
		}
	}
	slices.Sort(args)
	want := []string{q + ":x-queue-type", q + ".dead:x-queue-type"}
	slices.Sort(want)
	if !slices.Equal(args, want) {
		t.Errorf("warnings for %v, want %v", args, want)
	}
}
