package vault_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/drivertest"
	"github.com/sealrun/sealrun/storage/vault"
)

// The driver on a 3-node Vault HA cluster (raft storage), configured with a
// standby's address, as behind a load balancer: the conformance suite
// passes (the standby forwards to the active node), and when the active
// node is SIGKILLed the driver's writes and reads resume once a new one is
// elected, with nothing written before the kill lost.
func TestHACluster(t *testing.T) {
	c := testenv.VaultRaftCluster(t, 3)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	active, err := c.WaitActive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	standby := (active + 1) % 3
	cfg := api.DefaultConfig()
	cfg.Address = c.Addrs[standby]
	vc, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	vc.SetToken(c.RootToken)

	t.Run("Conformance", func(t *testing.T) {
		n := 0
		drivertest.Run(t, func(t *testing.T) driver.Driver {
			n++
			return vault.New(vc, vault.Options{Prefix: fmt.Sprintf("ha-conformance/%d", n), PollInterval: 50 * time.Millisecond})
		})
	})

	t.Run("ActiveKilled", func(t *testing.T) {
		d := vault.New(vc, vault.Options{Prefix: "ha-failover"})
		const before = 20
		for i := range before {
			if _, err := d.Put(ctx, fmt.Sprintf("k%02d", i), []byte("v"), driver.PutOptions{IfAbsent: true}); err != nil {
				t.Fatal(err)
			}
		}
		c.Kill(active)
		killed := time.Now()
		failed := 0
		for {
			pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := d.Put(pctx, "after", []byte("v"), driver.PutOptions{})
			pcancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("no write succeeded within the test's bound after the active node died: %v", err)
			}
			if failed++; failed == 1 {
				t.Logf("user sees while Vault elects: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("measured: first write through the standby answered %v after the active node was SIGKILLed (%d failed attempts)",
			time.Since(killed), failed)
		for i := range before {
			if _, err := d.Get(ctx, fmt.Sprintf("k%02d", i)); err != nil {
				t.Fatalf("k%02d after failover: %v", i, err)
			}
		}
	})
}
