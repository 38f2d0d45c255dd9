package vault_test

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/drivertest"
	"github.com/sealrun/sealrun/storage/vault"
	"github.com/sealrun/sealrun/vaultauth"
)

// TestSealed seals a real (file-backed, initialised) Vault: calls fail fast
// enough, as Unavailable, saying Vault is sealed; after unseal they work.
func TestSealed(t *testing.T) {
	v := testenv.FileVault(t)
	root := v.Client()
	if err := root.Sys().MountWithContext(t.Context(), "secret", &api.MountInput{Type: "kv", Options: map[string]string{"version": "2"}}); err != nil {
		t.Fatal(err)
	}
	c, err := vaultauth.NewClient(vaultauth.Config{Address: v.Addr, MaxRetries: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(v.RootToken)
	d := vault.New(c, vault.Options{Prefix: "sealed"})
	if _, err := d.Put(t.Context(), "k", []byte("v"), driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	v.Seal()
	start := time.Now()
	_, err = d.Get(t.Context(), "k")
	if d.ErrorCode(err) != driver.Unavailable || !strings.Contains(err.Error(), "sealed") || strings.Contains(err.Error(), v.RootToken) {
		t.Fatalf("sealed: got %v (code %v), want Unavailable saying sealed", err, d.ErrorCode(err))
	}
	t.Logf("user sees after %v: %v", time.Since(start).Round(time.Millisecond), err)
	v.Unseal()
	if e, err := d.Get(t.Context(), "k"); err != nil || string(e.Value) != "v" {
		t.Fatalf("after unseal: %v", err)
	}
}

// TestPolicyKV runs the conformance suite with only the policy shipped in
// deploy/vault/ for the KV backend.
func TestPolicyKV(t *testing.T) {
	addr, token := testenv.Vault(t)
	root := client(t, addr, token)
	hcl, err := os.ReadFile("../../deploy/vault/sealrun-proxy-kv.hcl")
	if err != nil {
		t.Fatal(err)
	}
	if err := root.Sys().PutPolicyWithContext(t.Context(), "sealrun-proxy-kv", string(hcl)); err != nil {
		t.Fatal(err)
	}
	s, err := root.Auth().Token().CreateWithContext(t.Context(), &api.TokenCreateRequest{Policies: []string{"sealrun-proxy-kv"}, TTL: "10m"})
	if err != nil {
		t.Fatal(err)
	}
	c := client(t, addr, s.Auth.ClientToken)
	n := 0
	drivertest.Run(t, func(t *testing.T) driver.Driver {
		n++
		return vault.New(c, vault.Options{Prefix: "sealrun/policy" + string(rune('a'+n%26)) + strings.Repeat("x", n/26), PollInterval: 50 * time.Millisecond})
	})
	// Outside the prefix: a permission error naming path and capability.
	_, err = vault.New(c, vault.Options{Prefix: "other"}).Get(t.Context(), "k")
	var pe *vaultauth.PermissionError
	if !strings.Contains(err.Error(), `"read" capability on path "secret/data/other/k"`) || !errorsAs(err, &pe) {
		t.Fatalf("got %v", err)
	}
	t.Logf("user sees: %v", err)
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }
