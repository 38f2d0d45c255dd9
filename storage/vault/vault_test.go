package vault_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/drivertest"
	"github.com/sealrun/sealrun/storage/vault"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func client(t *testing.T, addr, token string) *api.Client {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = addr
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(token)
	return c
}

func TestConformance(t *testing.T) {
	addr, token := testenv.Vault(t)
	c := client(t, addr, token)
	n := 0
	drivertest.Run(t, func(t *testing.T) driver.Driver {
		n++
		return vault.New(c, vault.Options{Prefix: fmt.Sprintf("conformance/%d", n), PollInterval: 50 * time.Millisecond})
	})
}

// TestRawLayout pins the documented layout: KV v2 at <mount>/data/<prefix>/<key>.
func TestRawLayout(t *testing.T) {
	addr, token := testenv.Vault(t)
	c := client(t, addr, token)
	d := vault.New(c, vault.Options{Mount: "secret", Prefix: "layout"})
	if _, err := d.Put(t.Context(), "a/b", []byte("v"), driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	s, err := c.KVv2("secret").Get(t.Context(), "layout/a/b")
	if err != nil || s.Data["value"] != "dg==" {
		t.Fatalf("raw read: %v %v", s, err)
	}
}

func TestUnreachable(t *testing.T) {
	c := client(t, "http://127.0.0.1:1", "x")
	c.SetMaxRetries(0)
	d := vault.New(c, vault.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	_, err := d.Get(ctx, "k")
	if d.ErrorCode(err) != driver.Unavailable || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("got %v (code %v), want Unavailable naming the address", err, d.ErrorCode(err))
	}
	t.Logf("user sees: %v", err)
}

func TestBadToken(t *testing.T) {
	addr, _ := testenv.Vault(t)
	d := vault.New(client(t, addr, "wrong-token"), vault.Options{})
	_, err := d.Get(t.Context(), "k")
	if d.ErrorCode(err) != driver.PermissionDenied {
		t.Fatalf("got %v (code %v), want PermissionDenied", err, d.ErrorCode(err))
	}
}
