package testenv

import (
	"context"
	"testing"
	"time"
)

// TestVaultRaftCluster checks the HA recipe: three raft nodes, one active;
// a standby serves reads and writes (forwarding them to the active node);
// a SIGKILLed active node is replaced by a standby and no data is lost; the
// killed node rejoins unsealed.
func TestVaultRaftCluster(t *testing.T) {
	c := VaultRaftCluster(t, 3)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	a, err := c.WaitActive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	standby := (a + 1) % 3
	kv := c.Client(standby).KVv2("secret")
	if _, err := kv.Put(ctx, "ha/k", map[string]any{"v": "before"}); err != nil {
		t.Fatalf("write through standby %d: %v", standby, err)
	}
	c.Kill(a)
	killed := time.Now()
	na, err := c.WaitActive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if na == a {
		t.Fatalf("killed node %d still active", a)
	}
	t.Logf("measured: node %d active %v after active node %d was SIGKILLed", na, time.Since(killed), a)
	survivor := 3 - a - na
	s, err := c.Client(survivor).KVv2("secret").Get(ctx, "ha/k")
	if err != nil || s.Data["v"] != "before" {
		t.Fatalf("read through node %d after failover: %v %v", survivor, s, err)
	}
	c.Restart(ctx, a)
	s, err = c.Client(a).KVv2("secret").Get(ctx, "ha/k")
	if err != nil || s.Data["v"] != "before" {
		t.Fatalf("read through restarted node %d: %v %v", a, s, err)
	}
}
