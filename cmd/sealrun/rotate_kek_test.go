package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/vault/api"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/secrets"
	storageconfig "github.com/sealrun/sealrun/storage/config"
	"github.com/sealrun/sealrun/storage/driver"
)

// TestRotateKEK opens an overlay whose DEK is wrapped by Transit (etcd and
// Vault both real), rotates the KEK with the command and reads the secret
// back through a freshly opened overlay.
func TestRotateKEK(t *testing.T) {
	addr, token := testenv.Vault(t)
	etcd := testenv.Etcd(t)
	root, err := api.NewClient(&api.Config{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	root.SetToken(token)
	if err := root.Sys().MountWithContext(t.Context(), "transit", &api.MountInput{Type: "transit"}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Logical().WriteWithContext(t.Context(), "transit/keys/sealrun-kek", nil); err != nil {
		t.Fatal(err)
	}
	t.Setenv("VAULT_TOKEN", token)
	cfgPath := filepath.Join(t.TempDir(), "storage.yaml")
	y := `
state:
  backend: etcd
  etcd: {endpoints: [` + etcd.Endpoints()[0] + `]}
secrets:
  backend: overlay
  overlay:
    store: etcd
    transit: {mount: transit, key: sealrun-kek}
  vault:
    address: ` + addr + `
`
	if err := os.WriteFile(cfgPath, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := storageconfig.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := storageconfig.Open(t.Context(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Put(t.Context(), &secrets.Raw{Name: "db/password", Value: secrets.Secret("hunter2")}, driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	// Stored next to the data, wrapped: no plaintext DEK in etcd.
	resp, err := etcd.Get(t.Context(), "/sealrun/secrets.deks/deks/dek-0001")
	if err != nil || len(resp.Kvs) != 1 || !bytes.Contains(resp.Kvs[0].Value, []byte(`"wrapped":"vault:v1:`)) {
		t.Fatalf("wrapped DEK record: %v %v", err, resp)
	}

	var out, errb bytes.Buffer
	if code := runRotateKEK(t.Context(), stdio{out: &out, err: &errb}, []string{"--config", cfgPath}); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	t.Logf("output:\n%s", out.String())
	for _, want := range []string{"rotated transit/keys/sealrun-kek to version 2", "re-wrapped 1 DEK(s)", "raising it to 2 is safe"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// The running service never noticed; a fresh one opens the value.
	m := &secrets.Raw{Name: "db/password"}
	if _, err := svc.Get(t.Context(), m); err != nil || string(m.Value) != "hunter2" {
		t.Fatalf("running service: %v", err)
	}
	svc.Close()
	svc, err = storageconfig.Open(t.Context(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	m = &secrets.Raw{Name: "db/password"}
	if _, err := svc.Get(t.Context(), m); err != nil || string(m.Value) != "hunter2" {
		t.Fatalf("fresh service: %v", err)
	}

	out.Reset()
	if code := runRotateKEK(t.Context(), stdio{out: &out, err: &errb}, []string{"--help"}); code != 0 || !strings.Contains(out.String()+errb.String(), "sealrun rotate kek --config") {
		t.Fatalf("--help: %d %s%s", code, out.String(), errb.String())
	}
}
