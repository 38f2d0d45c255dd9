package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sealrun/sealrun/internal/proxytest"
	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/proxy"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/etcd"
)

// secretsCLI runs "sealrun secrets ..." in-process.
func secretsCLI(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := dispatch(context.Background(), stdio{in: strings.NewReader(stdin), out: &out, err: &errb}, append([]string{"secrets"}, args...))
	return code, out.String(), errb.String()
}

// TestSecretsCLI drives put/get/ls/rm against overlay-on-embedded-etcd from a
// config file with a temp master key, as a user would.
func TestSecretsCLI(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "sealrun.yaml")
	os.WriteFile(cfg, []byte(`
state: {backend: etcd, etcd: {data_dir: `+filepath.Join(dir, "etcd")+`}}
secrets: {backend: overlay, overlay: {store: etcd, master_key: `+filepath.Join(dir, "master.key")+`, autogen: true}}
`), 0o600)
	const secret = "hunter2-not-in-output"
	run := func(wantCode int, stdin string, args ...string) string {
		t.Helper()
		code, out, errOut := secretsCLI(t, stdin, args...)
		if code != wantCode {
			t.Fatalf("secrets %q: exit %d, want %d; stderr: %s", args, code, wantCode, errOut)
		}
		if strings.Contains(errOut, secret) {
			t.Fatalf("secrets %q: stderr leaks the secret", args)
		}
		return out + errOut
	}
	run(0, secret, "put", "--config", cfg, "db/password")
	if out := run(0, "", "get", "--config", cfg, "db/password"); out != secret {
		t.Fatal("get did not return the stored value")
	}
	vf := filepath.Join(dir, "value")
	os.WriteFile(vf, []byte("from-file"), 0o600)
	run(0, "", "put", "--config", cfg, "--value-file", vf, "db/other")
	run(1, "x", "put", "--config", cfg, "--if-absent", "db/other")
	if out := run(0, "", "ls", "--config", cfg, "db"); out != "db/other\ndb/password\n" {
		t.Fatalf("ls = %q", out)
	}
	host := `{"address":"h1:22","ssh_private_key":"c3NoLWtleQ==","remote_user":"run"}`
	run(0, host, "put", "--config", cfg, "--kind", "host-creds", "h1:22")
	if out := run(0, "", "get", "--config", cfg, "--kind", "host-creds", "h1:22"); !strings.Contains(out, `"remote_user": "run"`) {
		t.Fatalf("typed get = %q", out)
	}
	run(2, host, "put", "--config", cfg, "--kind", "host-creds", "h2:22") // key mismatch
	run(0, "", "rm", "--config", cfg, "db/password")
	if out := run(1, "", "get", "--config", cfg, "db/password"); !strings.Contains(out, "not found") {
		t.Fatalf("get after rm: %q", out)
	}
	run(1, "", "put", "--config", cfg, "empty")                 // empty value
	run(2, "v", "put", "--config", cfg, "--kind", "nope", "x")  // unknown kind
	run(2, "v", "put", "db/x")                                  // no --config
	run(2, "v", "put", "--config", cfg, "--value", "v", "db/x") // no value flag exists
	run(1, "v", "put", "--config", cfg, "../escape")            // invalid key
	for _, verb := range []string{"put", "get", "ls", "rm"} {
		if out := run(0, "", verb, "--help"); !strings.Contains(out, "Examples:") {
			t.Fatalf("%s --help has no examples: %s", verb, out)
		}
	}
	if out := run(0, "", "--help"); !strings.Contains(out, "host-creds") {
		t.Fatalf("secrets --help: %s", out)
	}
	// An unknown config field names the field and nothing is lost.
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("state: {backend: memory, colour: blue}\nsecrets: {backend: vault, vault: {}}\n"), 0o600)
	if out := run(1, "", "get", "--config", bad, "db/other"); !strings.Contains(out, "colour") {
		t.Fatalf("unknown field: %q", out)
	}
	if out := run(0, "", "get", "--config", cfg, "db/other"); out != "from-file" {
		t.Fatalf("value lost: %q", out)
	}
}

// The secrets CLI reaches a proxy whose auth headers are renamed (as a
// Custodia deployment's may be) with --id-header and --key-header; without
// them the proxy's 403 (marked a failed authentication) names the headers it wants.
func TestSecretsCLIHeaderNames(t *testing.T) {
	cli := testenv.Etcd(t)
	store, err := storage.New(etcd.New(cli, "/secrets/"), etcd.New(cli, "/state/"), storage.Options{Registry: proxy.Registry()})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	srv := proxytest.Start(t, store, "ops", proxy.Grant{Paths: []string{"/secrets"}, Verbs: []string{"*"}},
		func(o *proxy.Options) { o.IDHeader, o.KeyHeader = "X-Custodia-Owner", "CUSTODIA_KEY_ID" })
	keyFile := filepath.Join(t.TempDir(), "ops.key")
	os.WriteFile(keyFile, []byte(srv.Key), 0o600)
	via := []string{"--socket", srv.Socket, "--api-id", srv.ID, "--api-key-file", keyFile}
	renamed := append([]string{"--id-header", "X-Custodia-Owner", "--key-header", "CUSTODIA_KEY_ID"}, via...)
	if code, _, errOut := secretsCLI(t, "v1", append([]string{"put", "app/token"}, renamed...)...); code != 0 {
		t.Fatalf("put with the proxy's header names: %s", errOut)
	}
	if code, out, errOut := secretsCLI(t, "", append([]string{"get", "app/token"}, renamed...)...); code != 0 || out != "v1" {
		t.Fatalf("get with the proxy's header names: %q %s", out, errOut)
	}
	if code, _, errOut := secretsCLI(t, "", append([]string{"get", "app/token"}, via...)...); code != 1 || !strings.Contains(errOut, "CUSTODIA_KEY_ID") {
		t.Fatalf("get with the default header names: exit %d: %s", code, errOut)
	}
}
