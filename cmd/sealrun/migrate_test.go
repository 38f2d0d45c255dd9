package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sealrun/sealrun/envelope"
	"github.com/sealrun/sealrun/migrate"
	"github.com/sealrun/sealrun/secrets"
	storageconfig "github.com/sealrun/sealrun/storage/config"
	"github.com/sealrun/sealrun/storage/overlay"
)

// storageYAML is a storage config on an embedded etcd with the overlay.
func storageYAML(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "storage.yaml")
	cfg := `# test storage config
state:
  backend: etcd
  etcd: {data_dir: ` + filepath.Join(dir, "etcd") + `}
secrets:
  backend: overlay
  overlay:
    store: etcd
    master_key: ` + filepath.Join(dir, "master.key") + `  # Custodia format
    autogen: true
`
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMigrateAndRotateCLI(t *testing.T) {
	dir := t.TempDir()
	mk, err := envelope.GenerateMessageKey(2048)
	if err != nil {
		t.Fatal(err)
	}
	pass := "cli-passphrase-7f3a9c"
	pem, err := mk.MarshalEncryptedPEM([]byte(pass))
	if err != nil {
		t.Fatal(err)
	}
	sk, _ := envelope.GenerateSigningKey()
	src := filepath.Join(dir, "certs")
	for p, data := range map[string][]byte{
		"message/encryption/ssh-privatekey": pem,
		"message/passphrase/ssh-passphrase": []byte(pass),
		"queues/signing/rmq_cpu_":           []byte(sk.Public().AuthorizedKey()),
		"queues/response-encrypt/rmq_cpu_":  mk.Public().MarshalPKCS1PEM(),
		"queues/signing/info":               []byte("dummy"),
	} {
		os.MkdirAll(filepath.Dir(filepath.Join(src, p)), 0o700)
		os.WriteFile(filepath.Join(src, p), data, 0o600)
	}
	cfg := storageYAML(t, dir)
	report := filepath.Join(dir, "report.json")
	noSecrets := func(what, s string) {
		t.Helper()
		if strings.Contains(s, pass) || strings.Contains(s, strings.Split(string(pem), "\n")[4]) {
			t.Fatalf("%s contains secret material", what)
		}
	}

	code, out, errOut := runCLI(t, "", "migrate", "--from", "dir:"+src, "--to", cfg, "--dry-run")
	if code != 0 || !strings.Contains(out, "would-create") || !strings.Contains(out, "dry run") {
		t.Fatalf("dry run: %d\n%s\n%s", code, out, errOut)
	}
	code, out, errOut = runCLI(t, "", "migrate", "--from", "dir:"+src, "--to", cfg, "--report", report)
	if code != 0 || !strings.Contains(out, "4 created") {
		t.Fatalf("migrate: %d\n%s\n%s", code, out, errOut)
	}
	data, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	var rep migrate.Report
	if err := json.Unmarshal(data, &rep); err != nil || rep.Counts["created"] != 4 || len(rep.Items) != 4 {
		t.Fatalf("report: %v %+v", err, rep.Counts)
	}
	noSecrets("output", out+errOut)
	noSecrets("report", string(data))
	code, out, _ = runCLI(t, "", "migrate", "--from", "dir:"+src, "--to", cfg)
	if code != 0 || !strings.Contains(out, "4 unchanged") {
		t.Fatalf("second run: %d %s", code, out)
	}

	// A bad key file: exit 1, the failure listed by name.
	os.WriteFile(filepath.Join(src, "queues/signing/rmq_gpu_"), []byte("ssh-ed25519 AAAAnot-a-key"), 0o600)
	code, out, errOut = runCLI(t, "", "migrate", "--from", "dir:"+src, "--to", cfg)
	if code != 1 || !strings.Contains(errOut, "signing-key/rmq_gpu_") {
		t.Fatalf("bad file: %d\n%s\n%s", code, out, errOut)
	}

	// Usage errors.
	for _, args := range [][]string{{"migrate"}, {"migrate", "--from", "nfs:/x", "--to", cfg},
		{"migrate", "--from", "dir:x", "--to", cfg, "--on-conflict", "maybe"},
		{"rotate"}, {"rotate", "master-key", "--config", cfg}} {
		if code, _, _ := runCLI(t, "", args...); code != exitUsage {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}

	// Rotate: prepare, then rotate; the config names the new key and keeps
	// the old one; every record names the new kid; values still read.
	newKey := filepath.Join(dir, "master-2.key")
	if code, out, errOut := runCLI(t, "", "rotate", "master-key", "--config", cfg, "--new-key", newKey, "--prepare"); code != 0 {
		t.Fatalf("prepare: %d\n%s\n%s", code, out, errOut)
	}
	code, out, errOut = runCLI(t, "", "rotate", "master-key", "--config", cfg, "--new-key", newKey, "--batch", "2")
	if code != 0 || !strings.Contains(out, "re-sealed 4 of 4") || !strings.Contains(out, "retired") {
		t.Fatalf("rotate: %d\n%s\n%s", code, out, errOut)
	}
	noSecrets("rotate output", out+errOut)
	c, err := storageconfig.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	nk, _ := overlay.LoadKeyFile(newKey, false)
	if c.Secrets.Overlay.MasterKey != newKey || len(c.Secrets.Overlay.OldKeys) != 1 || nk.Legacy {
		t.Fatalf("config after rotation: %+v", c.Secrets.Overlay)
	}
	code, out, _ = runCLI(t, "", "rotate", "status", "--config", cfg)
	if code != 0 || !strings.Contains(out, nk.ID) || strings.Count(out, "record(s)") != 1 {
		t.Fatalf("status: %d %s", code, out)
	}
	st, err := openStore(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	pp := &secrets.MessagePassphrase{KeyID: "message"}
	if _, err := st.Get(context.Background(), pp); err != nil || string(pp.Passphrase) != pass {
		t.Fatalf("read after rotation: %v", err)
	}
}
