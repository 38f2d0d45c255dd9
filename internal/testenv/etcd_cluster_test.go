package testenv

import (
	"context"
	"testing"
	"time"
)

// TestEtcdCluster checks the cluster recipe the cluster tests rely on: three
// members elect a leader, a SIGKILLed leader is replaced while the client
// keeps working through the others, the killed member rejoins with its data,
// and leadership moves on request.
func TestEtcdCluster(t *testing.T) {
	c := StartEtcdCluster(t, 3)
	if len(c.Endpoints) != 3 {
		t.Fatalf("endpoints %v", c.Endpoints)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cli := c.Client(t)
	if _, err := cli.Put(ctx, "k", "before"); err != nil {
		t.Fatal(err)
	}
	old, err := c.KillLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.Running(old) {
		t.Fatalf("member %d still running after Kill", old)
	}
	l, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if l == old {
		t.Fatalf("killed member %d still leads", old)
	}
	if _, err := cli.Put(ctx, "k", "during"); err != nil {
		t.Fatalf("put with the old leader down: %v", err)
	}
	if err := c.Restart(ctx, old); err != nil {
		t.Fatal(err)
	}
	// The restarted member serves the write it missed, read from it alone
	// (a linearizable read: it has caught up with the leader).
	r, err := c.ClientOf(t, c.Endpoints[old]).Get(ctx, "k")
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "during" {
		t.Fatalf("restarted member reads %v, %v", r, err)
	}
	if err := c.MoveLeader(ctx, old); err != nil {
		t.Fatal(err)
	}
	if l := c.Leader(ctx); l != old {
		t.Fatalf("leader %d after moving it to %d", l, old)
	}
}
