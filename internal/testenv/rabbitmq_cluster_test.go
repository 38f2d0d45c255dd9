package testenv

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// TestRabbitCluster checks the cluster recipe the cluster tests rely on:
// three nodes form one cluster; a quorum queue whose leader is SIGKILLed
// keeps every confirmed message, served by another node; the killed node
// rejoins.
func TestRabbitCluster(t *testing.T) {
	t.Cleanup(StopRabbitMQ)
	start := time.Now()
	c := SharedRabbitCluster(t)
	t.Logf("3-node cluster started in %s", time.Since(start).Round(100*time.Millisecond))
	if len(c.URLs) != 3 || len(c.Nodes) != 3 {
		t.Fatalf("URLs %v", c.URLs)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	running, err := c.RunningNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"rabbit1@localhost", "rabbit2@localhost", "rabbit3@localhost"}; !slices.Equal(running, want) {
		t.Fatalf("running nodes %v, want %v", running, want)
	}

	// The nodes run with the tests' dead-lettering retry delay.
	want := fmt.Sprintf("{ok,%d}", DeadLetterConfirmTimeout.Milliseconds())
	if got := c.Nodes[2].Ctl(t, "eval", "application:get_env(rabbit, dead_letter_worker_publisher_confirm_timeout)."); got != want {
		t.Fatalf("dead_letter_worker_publisher_confirm_timeout: %s, want %s", got, want)
	}

	urls := c.VHost(t)
	vhost := urls[0][strings.LastIndex(urls[0], "/")+1:]
	conn, err := amqp.Dial(urls[0])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got := c.ConnectedNodes(t, vhost); !slices.Equal(got, []int{0}) {
		t.Fatalf("connected nodes %v, want [0]", got)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("q", true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	const n = 50
	for i := range n {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", "q", true, false, amqp.Publishing{DeliveryMode: amqp.Persistent, Body: fmt.Appendf(nil, "m%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := dc.WaitContext(ctx); !ok || err != nil {
			t.Fatalf("message %d not confirmed: %v", i, err)
		}
	}
	leader := c.QueueLeader(t, vhost, "q")
	c.Kill(leader)
	if c.Running(leader) {
		t.Fatalf("node %d still running after Kill", leader)
	}

	// Another node serves the queue once a new leader is elected; the
	// consumer is on a survivor.
	other := (leader + 1) % 3
	conn2, err := amqp.Dial(urls[other])
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	ch2, err := conn2.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch2.Qos(n, 0, false); err != nil {
		t.Fatal(err)
	}
	ds, err := ch2.ConsumeWithContext(ctx, "q", "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for len(seen) < n {
		select {
		case d := <-ds:
			seen[string(d.Body)] = true
			if err := d.Ack(false); err != nil {
				t.Fatal(err)
			}
		case <-ctx.Done():
			t.Fatalf("%d of %d messages consumed after the leader's loss", len(seen), n)
		}
	}
	if l := c.QueueLeader(t, vhost, "q"); l == leader {
		t.Fatalf("killed node %d still leads q", leader)
	}

	start = time.Now()
	if err := c.Restart(ctx, leader); err != nil {
		t.Fatal(err)
	}
	t.Logf("node %d restarted and rejoined in %s", leader, time.Since(start).Round(100*time.Millisecond))
	if running, err := c.RunningNodes(ctx); err != nil || len(running) != 3 {
		t.Fatalf("running nodes after restart %v, %v", running, err)
	}
}
