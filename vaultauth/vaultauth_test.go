package vaultauth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/sealrun/sealrun/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

var mountSeq atomic.Int64

// uniq names a mount or role per test: the dev server is shared.
func uniq(prefix string) string { return fmt.Sprintf("%s%d", prefix, mountSeq.Add(1)) }

func rootClient(t testing.TB, addr, token string) *api.Client {
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

func write(t testing.TB, c *api.Client, path string, data map[string]any) *api.Secret {
	t.Helper()
	s, err := c.Logical().WriteWithContext(t.Context(), path, data)
	if err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	return s
}

func writeFile(t testing.TB, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// kvPolicy lets a token read and write secret/data/<prefix>/*.
func kvPolicy(t testing.TB, root *api.Client, prefix string) string {
	name := uniq("kv-")
	if err := root.Sys().PutPolicyWithContext(t.Context(), name,
		fmt.Sprintf(`path "secret/data/%s/*" { capabilities = ["create", "update", "read"] }`, prefix)); err != nil {
		t.Fatal(err)
	}
	return name
}

// appRole enables AppRole at a fresh mount with a role and returns the
// mount, role name, role id and a secret id.
func appRole(t testing.TB, root *api.Client, roleCfg map[string]any) (mount, role, roleID, secretID string) {
	t.Helper()
	mount, role = uniq("approle"), "sealrun-proxy"
	if err := root.Sys().EnableAuthWithOptionsWithContext(t.Context(), mount, &api.EnableAuthOptions{Type: "approle"}); err != nil {
		t.Fatal(err)
	}
	write(t, root, "auth/"+mount+"/role/"+role, roleCfg)
	s, err := root.Logical().ReadWithContext(t.Context(), "auth/"+mount+"/role/"+role+"/role-id")
	if err != nil {
		t.Fatal(err)
	}
	roleID = s.Data["role_id"].(string)
	secretID = write(t, root, "auth/"+mount+"/role/"+role+"/secret-id", nil).Data["secret_id"].(string)
	return mount, role, roleID, secretID
}

// canWrite checks the client's token works by writing a KV secret.
func canWrite(ctx context.Context, c *api.Client, prefix string) error {
	_, err := c.KVv2("secret").Put(ctx, prefix+"/probe", map[string]any{"v": "1"})
	return err
}

func TestTokenFromEnvAndFile(t *testing.T) {
	addr, token := testenv.Vault(t)
	t.Setenv("VAULT_ADDR", addr)
	t.Setenv("VAULT_TOKEN", token)
	c, s, err := Connect(t.Context(), Config{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := canWrite(t.Context(), c, "tokenenv"); err != nil {
		t.Fatal(err)
	}

	// A token file (a Vault Agent sink) wins over VAULT_TOKEN.
	t.Setenv("VAULT_TOKEN", "not-a-token")
	c2, s2, err := Connect(t.Context(), Config{Auth: Auth{TokenFile: writeFile(t, "sink", token)}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if err := canWrite(t.Context(), c2, "tokenfile"); err != nil {
		t.Fatal(err)
	}

	// A bad token is a permission error at start-up, naming no token.
	_, _, err = Connect(t.Context(), Config{}, Options{})
	var pe *PermissionError
	if !errors.As(err, &pe) || strings.Contains(err.Error(), "not-a-token") {
		t.Fatalf("bad token: got %v, want a PermissionError without the token", err)
	}
	t.Logf("user sees: %v", err)
}

func TestAppRole(t *testing.T) {
	addr, token := testenv.Vault(t)
	root := rootClient(t, addr, token)
	pol := kvPolicy(t, root, "approle")
	mount, role, roleID, secretID := appRole(t, root, map[string]any{"token_policies": pol, "token_ttl": "1m"})
	cfg := Config{Address: addr, Auth: Auth{Method: "approle", AppRole: &AppRole{
		Mount: mount, RoleIDFile: writeFile(t, "role-id", roleID), SecretIDFile: writeFile(t, "secret-id", secretID)}}}
	c, s, err := Connect(t.Context(), cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := canWrite(t.Context(), c, "approle"); err != nil {
		t.Fatal(err)
	}

	t.Run("wrapped secret id", func(t *testing.T) {
		wrapper, _ := root.Clone()
		wrapper.SetToken(token)
		wrapper.SetWrappingLookupFunc(func(string, string) string { return "2m" })
		w := write(t, wrapper, "auth/"+mount+"/role/"+role+"/secret-id", nil)
		wc := cfg
		wc.Auth.AppRole = &AppRole{Mount: mount, RoleIDFile: cfg.Auth.AppRole.RoleIDFile,
			SecretIDFile: writeFile(t, "wrapped", w.WrapInfo.Token), SecretIDWrapped: true}
		m, err := NewMethod(wc.Auth)
		if err != nil {
			t.Fatal(err)
		}
		client, _ := NewClient(wc, nil)
		// Twice: the wrapping token is single-use, the second login must use
		// the secret id kept in memory.
		for i := range 2 {
			if _, err := m.Login(t.Context(), client); err != nil {
				t.Fatalf("login %d: %v", i, err)
			}
		}
	})

	t.Run("wrapping token from elsewhere is refused", func(t *testing.T) {
		wrapper, _ := root.Clone()
		wrapper.SetToken(token)
		wrapper.SetWrappingLookupFunc(func(string, string) string { return "2m" })
		w := write(t, wrapper, "sys/wrapping/wrap", map[string]any{"secret_id": "attacker-chosen"})
		m, _ := NewMethod(Auth{Method: "approle", AppRole: &AppRole{Mount: mount, RoleIDFile: cfg.Auth.AppRole.RoleIDFile,
			SecretIDFile: writeFile(t, "wrapped", w.WrapInfo.Token), SecretIDWrapped: true}})
		client, _ := NewClient(Config{Address: addr}, nil)
		_, err := m.Login(t.Context(), client)
		if err == nil || !strings.Contains(err.Error(), "refusing") {
			t.Fatalf("got %v, want refusal", err)
		}
	})

	t.Run("wrong secret id", func(t *testing.T) {
		bad := cfg
		bad.Auth.AppRole = &AppRole{Mount: mount, RoleIDFile: cfg.Auth.AppRole.RoleIDFile, SecretIDFile: writeFile(t, "bad", "00000000-0000-0000-0000-000000000000")}
		_, _, err := Connect(t.Context(), bad, Options{})
		if err == nil || strings.Contains(err.Error(), "00000000-0000") {
			t.Fatalf("got %v, want an error not quoting the secret id", err)
		}
		t.Logf("user sees: %v", err)
	})
}

func TestPermissionErrorNamesPathAndCapability(t *testing.T) {
	addr, token := testenv.Vault(t)
	root := rootClient(t, addr, token)
	if err := root.Sys().PutPolicyWithContext(t.Context(), "readonly-perm", `path "secret/data/perm/*" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	tok, err := root.Auth().Token().CreateWithContext(t.Context(), &api.TokenCreateRequest{Policies: []string{"readonly-perm"}, TTL: "5m"})
	if err != nil {
		t.Fatal(err)
	}
	c := rootClient(t, addr, tok.Auth.ClientToken)
	_, err = c.KVv2("secret").Put(t.Context(), "perm/x", map[string]any{"v": "1"})
	err = Explain(err)
	var pe *PermissionError
	if !errors.As(err, &pe) || pe.Path != "secret/data/perm/x" || pe.Capability != "update" {
		t.Fatalf("got %#v", err)
	}
	var re *api.ResponseError
	if !errors.As(err, &re) || strings.Contains(err.Error(), tok.Auth.ClientToken) {
		t.Fatal("PermissionError must unwrap to the ResponseError and not name the token")
	}
	_, err = c.Logical().ListWithContext(t.Context(), "secret/metadata/perm")
	if !errors.As(Explain(err), &pe) || pe.Capability != "list" || pe.Path != "secret/metadata/perm" {
		t.Fatalf("list: got %v", Explain(err))
	}
	t.Logf("user sees: %v", Explain(err))
}

func TestEnvironment(t *testing.T) {
	for _, k := range []string{"ADDR", "NAMESPACE", "SKIP_VERIFY", "TOKEN", "CACERT", "CLIENT_CERT", "CLIENT_KEY"} {
		t.Setenv("VAULT_"+k, "")
		t.Setenv("BAO_"+k, "")
	}
	t.Setenv("BAO_ADDR", "http://bao.example:8200")
	t.Setenv("BAO_NAMESPACE", "team-a")
	t.Setenv("BAO_SKIP_VERIFY", "true")
	var logs bytes.Buffer
	c, err := NewClient(Config{}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if c.Address() != "http://bao.example:8200" || c.Namespace() != "team-a" {
		t.Fatalf("BAO_* ignored: %s %q", c.Address(), c.Namespace())
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "verification is disabled") {
		t.Fatalf("skip verify not warned: %q", logs.String())
	}
	t.Setenv("VAULT_ADDR", "http://vault.example:8200")
	c, err = NewClient(Config{}, nil)
	if err != nil || c.Address() != "http://vault.example:8200" {
		t.Fatalf("VAULT_ADDR must win over BAO_ADDR: %v %v", c.Address(), err)
	}
	c, err = NewClient(Config{Address: "http://config.example:8200"}, nil)
	if err != nil || c.Address() != "http://config.example:8200" {
		t.Fatalf("config must win over the environment: %v %v", c.Address(), err)
	}
	if c.Token() != "" {
		t.Fatal("NewClient must not pick a token up by itself")
	}
	t.Setenv("BAO_TOKEN", "from-bao")
	if env("TOKEN") != "from-bao" {
		t.Fatal("BAO_TOKEN ignored")
	}
}

func TestMethodValidation(t *testing.T) {
	for _, a := range []Auth{
		{Method: "approle"},
		{Method: "approle", AppRole: &AppRole{RoleIDFile: "x"}},
		{Method: "kubernetes", Kubernetes: &Kubernetes{}},
		{Method: "ldap"},
		{Method: "token", AppRole: &AppRole{}},
	} {
		if _, err := NewMethod(a); err == nil {
			t.Errorf("%+v: accepted", a)
		}
	}
}

// count reads one counter of a vector.
func count(c *prometheus.CounterVec, labels ...string) float64 {
	var m dto.Metric
	_ = c.WithLabelValues(labels...).Write(&m)
	return m.GetCounter().GetValue()
}

func gauge(g *prometheus.GaugeVec, labels ...string) float64 {
	var m dto.Metric
	_ = g.WithLabelValues(labels...).Write(&m)
	return m.GetGauge().GetValue()
}

// TestRenewalAndRelogin uses a 2s TTL and a 5s max TTL: the session must
// renew, log in again at max TTL, and the client must work throughout.
func TestRenewalAndRelogin(t *testing.T) {
	addr, token := testenv.Vault(t)
	root := rootClient(t, addr, token)
	pol := kvPolicy(t, root, "renew")
	mount, _, roleID, secretID := appRole(t, root, map[string]any{"token_policies": pol, "token_ttl": "2s", "token_max_ttl": "5s"})
	cfg := Config{Address: addr, MaxRetries: -1, Auth: Auth{Method: "approle", AppRole: &AppRole{
		Mount: mount, RoleIDFile: writeFile(t, "role-id", roleID), SecretIDFile: writeFile(t, "secret-id", secretID)}}}
	reg := prometheus.NewRegistry()
	c, s, err := Connect(t.Context(), cfg, Options{Metrics: reg, MinBackoff: 200 * time.Millisecond, MaxBackoff: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	deadline := time.Now().Add(12 * time.Second)
	failures := 0
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		if err := canWrite(ctx, c, "renew"); err != nil {
			failures++
			t.Logf("write failed: %v", err)
		}
		cancel()
		time.Sleep(100 * time.Millisecond)
	}
	renewed, logins := count(s.metrics.renewals, "approle", "ok"), count(s.metrics.logins, "approle", "ok")
	t.Logf("renewals ok %v, logins ok %v, failed writes %d", renewed, logins, failures)
	if renewed < 2 || logins < 3 {
		t.Fatalf("want ≥2 renewals and ≥3 logins (2 re-logins at max TTL) in 12s; got %v and %v", renewed, logins)
	}
	if failures > 0 {
		t.Fatalf("%d writes failed across renewals and re-logins", failures)
	}
	if ttl := gauge(s.metrics.ttl, "approle"); ttl <= 0 || ttl > 2 {
		t.Fatalf("ttl gauge %v, want (0, 2]", ttl)
	}
}

// TestVaultRestartOutage restarts a file-backed Vault mid-run and keeps it
// down longer than the token's TTL: the session must log in afresh once
// Vault is back, without a hot loop while it is down.
func TestVaultRestartOutage(t *testing.T) {
	v := testenv.FileVault(t)
	root := v.Client()
	if err := root.Sys().MountWithContext(t.Context(), "secret", &api.MountInput{Type: "kv", Options: map[string]string{"version": "2"}}); err != nil {
		t.Fatal(err)
	}
	pol := kvPolicy(t, root, "restart")
	mount, _, roleID, secretID := appRole(t, root, map[string]any{"token_policies": pol, "token_ttl": "3s", "token_max_ttl": "1h"})
	cfg := Config{Address: v.Addr, MaxRetries: -1, Timeout: 2 * time.Second, Auth: Auth{Method: "approle", AppRole: &AppRole{
		Mount: mount, RoleIDFile: writeFile(t, "role-id", roleID), SecretIDFile: writeFile(t, "secret-id", secretID)}}}
	reg := prometheus.NewRegistry()
	c, s, err := Connect(t.Context(), cfg, Options{Metrics: reg, MinBackoff: 200 * time.Millisecond, MaxBackoff: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := canWrite(t.Context(), c, "restart"); err != nil {
		t.Fatal(err)
	}

	// A plain restart: the token survives in file storage.
	v.Restart()
	waitFor(t, 15*time.Second, func() error { return canWrite(t.Context(), c, "restart") })

	// An outage longer than the TTL: the token expires while Vault is down.
	before := count(s.metrics.logins, "approle", "ok")
	v.Stop()
	time.Sleep(5 * time.Second)
	failedWhileDown := count(s.metrics.logins, "approle", "error")
	v.Start()
	v.Unseal()
	waitFor(t, 20*time.Second, func() error { return canWrite(t.Context(), c, "restart") })
	after := count(s.metrics.logins, "approle", "ok")
	t.Logf("logins ok before outage %v after %v; failed logins during 5s outage %v", before, after, failedWhileDown)
	if after <= before {
		t.Fatal("no fresh login after an outage longer than the TTL")
	}
	// Backoff from 200ms doubling to 2s: at most ~8 attempts in 5s.
	if failedWhileDown > 10 {
		t.Fatalf("%v login attempts in a 5s outage: a hot loop", failedWhileDown)
	}
}

func waitFor(t *testing.T, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not recovered after %v: %v", d, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
