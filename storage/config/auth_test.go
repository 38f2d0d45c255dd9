package config_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/config"
	"github.com/sealrun/sealrun/storage/driver"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func TestCredentialsDirectory(t *testing.T) {
	const y = `
state: {backend: etcd, etcd: {endpoints: [https://etcd:2379], password_file: "${CREDENTIALS_DIRECTORY}/etcd-password", username: sealrun,
  tls: {ca_file: /etc/ssl/ca.pem, cert_file: "${CREDENTIALS_DIRECTORY}/etcd.pem", key_file: "${CREDENTIALS_DIRECTORY}/etcd-key.pem"}}}
secrets: {backend: overlay, overlay: {store: etcd, master_key: "${CREDENTIALS_DIRECTORY}/master.key"}}
`
	t.Setenv("CREDENTIALS_DIRECTORY", "/run/credentials/sealrun-secrets.service")
	c, err := config.Decode(strings.NewReader(y))
	if err != nil {
		t.Fatal(err)
	}
	const d = "/run/credentials/sealrun-secrets.service/"
	e := c.State.Etcd
	for got, want := range map[string]string{
		c.Secrets.Overlay.MasterKey: d + "master.key", e.PasswordFile: d + "etcd-password",
		e.TLS.CertFile: d + "etcd.pem", e.TLS.KeyFile: d + "etcd-key.pem", e.TLS.CAFile: "/etc/ssl/ca.pem",
	} {
		if got != want {
			t.Errorf("path %q, want %q", got, want)
		}
	}

	os.Unsetenv("CREDENTIALS_DIRECTORY")
	if _, err := config.Decode(strings.NewReader(y)); err == nil || !strings.Contains(err.Error(), "_file: ") && !strings.Contains(err.Error(), "master_key: ") || !strings.Contains(err.Error(), "not set") {
		t.Errorf("unset CREDENTIALS_DIRECTORY: %v, want an error naming the field", err)
	}
	if _, err := config.Decode(strings.NewReader("state: {backend: memory}\nsecrets: {backend: overlay, overlay: {store: memory, master_key: $HOME/k}}")); err == nil || !strings.Contains(err.Error(), "only ${CREDENTIALS_DIRECTORY}") {
		t.Errorf("$HOME: %v", err)
	}
}

// TestSecretsNone: a state-only component opens storage without any key,
// and secret models are refused rather than stored anywhere.
func TestSecretsNone(t *testing.T) {
	if _, err := config.Decode(strings.NewReader("state: {backend: memory}\nsecrets: {backend: none, overlay: {master_key: k}}")); err == nil {
		t.Error("backend none with an overlay section accepted")
	}
	c, err := config.Decode(strings.NewReader("state: {backend: memory}\nsecrets: {backend: none}"))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := config.Open(t.Context(), c, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	_, err = svc.Put(t.Context(), &secrets.Raw{Name: "a", Value: secrets.Secret("v")}, driver.PutOptions{})
	if err == nil || !strings.Contains(err.Error(), "holds no secrets") {
		t.Fatalf("Put of a secret model: %v", err)
	}
}

func TestVaultAuthValidation(t *testing.T) {
	for _, tc := range []struct{ auth, want string }{
		{"{method: kubernetes}", "auth.role is required"},
		{"{method: approle, role_id: r}", "needs role_id and secret_id_file"},
		{"{method: approle, role_id: r, secret_id_file: f, role: x}", "for method kubernetes"},
		{"{method: ldap}", "want token, kubernetes or approle"},
		{"{method: kubernetes, role: r, mount: ../sys}", "auth.mount"},
	} {
		y := "state: {backend: memory}\nsecrets: {backend: vault, vault: {auth: " + tc.auth + "}}"
		if _, err := config.Decode(strings.NewReader(y)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("auth %s: %v, want %q", tc.auth, err, tc.want)
		}
	}
	y := "state: {backend: memory}\nsecrets: {backend: vault, vault: {token_file: t, auth: {method: kubernetes, role: r}}}"
	if _, err := config.Decode(strings.NewReader(y)); err == nil || !strings.Contains(err.Error(), "exclude each other") {
		t.Errorf("token_file with kubernetes: %v", err)
	}
	c, err := config.Decode(strings.NewReader("state: {backend: memory}\nsecrets: {backend: vault, vault: {auth: {method: kubernetes, role: sealrun-proxy}}}"))
	if err != nil {
		t.Fatal(err)
	}
	if a := c.Secrets.Vault.Auth; a.Mount != "kubernetes" || a.JWTFile != "/var/run/secrets/kubernetes.io/serviceaccount/token" {
		t.Errorf("kubernetes defaults: %+v", a)
	}
}

// TestVaultAppRoleRelogin logs in with AppRole against a real Vault, with
// tokens that expire after 4s (max TTL 6s), and keeps working past the max
// TTL: the keeper renews, then logs in again before the token lapses.
func TestVaultAppRoleRelogin(t *testing.T) {
	addr, root := testenv.Vault(t)
	rc, err := api.NewClient(&api.Config{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	rc.SetToken(root)
	// A mount of its own: the dev server is shared by the package (and -count).
	mount := fmt.Sprintf("approle-%d", time.Now().UnixNano())
	if err := rc.Sys().EnableAuthWithOptions(mount, &api.EnableAuthOptions{Type: "approle"}); err != nil {
		t.Fatal(err)
	}
	if err := rc.Sys().PutPolicy("sealrun-approle-test", `path "secret/*" { capabilities = ["create", "read", "update", "delete", "list"] }`); err != nil {
		t.Fatal(err)
	}
	if _, err := rc.Logical().Write("auth/"+mount+"/role/proxy", map[string]any{
		"token_policies": "sealrun-approle-test", "token_ttl": "4s", "token_max_ttl": "6s"}); err != nil {
		t.Fatal(err)
	}
	rid, err := rc.Logical().Read("auth/" + mount + "/role/proxy/role-id")
	if err != nil {
		t.Fatal(err)
	}
	sid, err := rc.Logical().Write("auth/"+mount+"/role/proxy/secret-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	creds := t.TempDir()
	if err := os.WriteFile(filepath.Join(creds, "vault-secret-id"), []byte(sid.Data["secret_id"].(string)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	t.Setenv("VAULT_TOKEN", "")
	y := `
state: {backend: memory}
secrets:
  backend: vault
  vault:
    address: ` + addr + `
    prefix: approle-test
    auth: {method: approle, mount: ` + mount + `, role_id: ` + rid.Data["role_id"].(string) + `, secret_id_file: "${CREDENTIALS_DIRECTORY}/vault-secret-id"}
`
	c, err := config.Decode(strings.NewReader(y))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := config.Open(t.Context(), c, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	deadline := time.Now().Add(8 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		v := secrets.Secret(strings.Repeat("v", i+1))
		if _, err := svc.Put(t.Context(), &secrets.Raw{Name: "relogin", Value: v}, driver.PutOptions{}); err != nil {
			t.Fatalf("put after %v: %v", time.Until(deadline), err)
		}
		time.Sleep(500 * time.Millisecond)
	}

	bad := strings.Replace(y, rid.Data["role_id"].(string), "not-a-role", 1)
	c, err = config.Decode(strings.NewReader(bad))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := config.Open(t.Context(), c, nil); err == nil || !strings.Contains(err.Error(), "approle login") {
		t.Fatalf("wrong role id: %v", err)
	}
}
