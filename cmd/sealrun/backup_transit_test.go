package main

import (
	"fmt"
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

// TestTransitDrillVaultGone: with a Transit KEK the data keys (DEKs) exist
// in plaintext only in Vault's answers. Their shares, taken while Vault
// still answered, open the store when Vault is gone: the DEKs become the
// key files of a plain overlay, in a new etcd loaded from the store backup.
func TestTransitDrillVaultGone(t *testing.T) {
	addr, token := testenv.Vault(t)
	oldEtcd, newEtcd := testenv.Etcd(t), testenv.Etcd(t)
	root, err := api.NewClient(&api.Config{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	root.SetToken(token)
	mount := fmt.Sprintf("transit-drill-%d", os.Getpid())
	if err := root.Sys().MountWithContext(t.Context(), mount, &api.MountInput{Type: "transit"}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Logical().WriteWithContext(t.Context(), mount+"/keys/sealrun-kek", nil); err != nil {
		t.Fatal(err)
	}
	t.Setenv("VAULT_TOKEN", token)
	dir := t.TempDir()
	writeCfg := func(name, endpoint, secretsYAML string) string {
		p := filepath.Join(dir, name)
		y := "state:\n  backend: etcd\n  etcd: {endpoints: [" + endpoint + "]}\nsecrets:\n  backend: overlay\n" + secretsYAML
		if err := os.WriteFile(p, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	transitCfg := writeCfg("transit.yaml", oldEtcd.Endpoints()[0], "  overlay:\n    store: etcd\n    transit: {mount: "+mount+", key: sealrun-kek}\n  vault:\n    address: "+addr+"\n")
	cfg, err := storageconfig.Load(transitCfg)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := storageconfig.Open(t.Context(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for i := range 5 {
		name, value := fmt.Sprintf("db/password-%d", i), fmt.Sprintf("TRANSIT-PLAINTEXT-%d", i)
		if _, err := svc.Put(t.Context(), &secrets.Raw{Name: name, Value: secrets.Secret(value)}, driver.PutOptions{}); err != nil {
			t.Fatal(err)
		}
		want[name] = value
	}
	svc.Close()

	// While Vault answers: split every DEK, back up the store.
	code, out, errOut := runCLI(t, "", "backup", "split", "--config", transitCfg, "--deks", "--shares", "5", "--threshold", "3", "--out", filepath.Join(dir, "shares"))
	if code != 0 || !strings.Contains(out, "key dek-0001: 5 shares, any 3 restore it") {
		t.Fatalf("split --deks: %d %s %s", code, out, errOut)
	}
	backupFile := filepath.Join(dir, "store.json")
	if code, out, errOut := runCLI(t, "", "backup", "store", "--config", transitCfg, "--out", backupFile); code != 0 || !strings.Contains(out, "/sealrun/secrets.deks/") {
		t.Fatalf("backup store: %d %s %s", code, out, errOut)
	}
	b, _ := os.ReadFile(backupFile)
	if strings.Contains(string(b), "TRANSIT-PLAINTEXT") {
		t.Fatal("backup holds a plaintext")
	}

	// Vault is gone: the recovery configuration names no Vault at all.
	var typed strings.Builder
	for _, i := range []int{2, 3, 5} {
		typed.WriteString(typedShare(t, filepath.Join(dir, "shares", fmt.Sprintf("dek-0001-share-%d-of-5.txt", i))))
	}
	dek := filepath.Join(dir, "dek-0001.key")
	if code, out, errOut := runCLI(t, typed.String(), "backup", "restore", "--out", dek, "-"); code != 0 || !strings.Contains(out, "restored key dek-0001") {
		t.Fatalf("restore: %d %s %s", code, out, errOut)
	}
	recovery := writeCfg("recovery.yaml", newEtcd.Endpoints()[0], "  overlay: {store: etcd, master_key: "+dek+"}\n")
	if code, out, errOut := runCLI(t, "", "backup", "load", "--config", recovery, "--in", backupFile); code != 0 {
		t.Fatalf("load: %d %s %s", code, out, errOut)
	}
	rc, err := storageconfig.Load(recovery)
	if err != nil {
		t.Fatal(err)
	}
	rsvc, err := storageconfig.Open(t.Context(), rc, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rsvc.Close()
	for name, value := range want {
		m := &secrets.Raw{Name: name}
		if _, err := rsvc.Get(t.Context(), m); err != nil || string(m.Value) != value {
			t.Fatalf("%s without Vault: %v", name, err)
		}
	}
}

func typedShare(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var w strings.Builder
	for _, l := range strings.Split(string(b), "\n") {
		if len(l) > 2 && l[0] >= '0' && l[0] <= '9' {
			w.WriteString(l + "\n")
		}
	}
	return w.String()
}
