package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sealrun/sealrun/proxy/client"
)

func proxyConfig(t *testing.T) (cfg, sock, auditLog string) {
	dir := t.TempDir()
	sock, auditLog = filepath.Join(dir, "run", "secrets.sock"), filepath.Join(dir, "audit.log")
	cfg = filepath.Join(dir, "proxy.yaml")
	yaml := fmt.Sprintf(`listen: {socket: %s}
audit_log: %s
storage:
  state: {backend: etcd, etcd: {data_dir: %s}}
  secrets: {backend: overlay, overlay: {store: etcd, master_key: %s, autogen: true}}
`, sock, auditLog, filepath.Join(dir, "etcd"), filepath.Join(dir, "master.key"))
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg, sock, auditLog
}

// The operator's path: create a credential, run the proxy, use it as a
// client, stop it with a signal (context), verify the audit log.
func TestSecretsServeCLI(t *testing.T) {
	cfg, sock, auditLog := proxyConfig(t)
	code, key, errOut := runCLI(t, "", "secrets", "apikey", "create", "--config", cfg, "--id", "ops", "--path", "/secrets", "--verbs", "*")
	if code != 0 || !strings.HasPrefix(key, "sr1.") {
		t.Fatalf("apikey create: %d %q %s", code, key, errOut)
	}
	code, list, _ := runCLI(t, "", "secrets", "apikey", "list", "--config", cfg)
	if code != 0 || !strings.Contains(list, "ops") || strings.Contains(list, strings.TrimSpace(key)) {
		t.Fatalf("apikey list: %d %q", code, list)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	var logs bytes.Buffer
	go func() {
		done <- dispatch(ctx, stdio{in: strings.NewReader(""), out: &bytes.Buffer{}, err: &logs}, []string{"secrets", "serve", "--config", cfg})
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy did not start: %s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	cl, err := client.New(client.Config{Socket: sock, ID: "ops", Key: client.APIKey(strings.TrimSpace(key))})
	if err != nil {
		t.Fatal(err)
	}
	const secret = "cli-served-secret-Z9"
	if err := cl.CreateContainer(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	if err := cl.Put(ctx, "app/token", []byte(secret)); err != nil {
		t.Fatal(err)
	}
	if v, err := cl.Get(ctx, "app/token"); err != nil || string(v) != secret {
		t.Fatalf("get: %q %v", v, err)
	}
	// The secrets CLI through the proxy: typed models and raw values.
	keyFile := filepath.Join(t.TempDir(), "ops.key")
	os.WriteFile(keyFile, []byte(key), 0o600)
	via := []string{"--socket", sock, "--api-id", "ops", "--api-key-file", keyFile}
	model := `{"queue_prefix":"rmq_cpu_","public_key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB9d"}`
	if code, _, errOut := runCLI(t, model, append([]string{"secrets", "put", "--kind", "signing-key", "rmq_cpu_"}, via...)...); code != 0 {
		t.Fatalf("put via proxy: %s", errOut)
	}
	if code, out, errOut := runCLI(t, "", append([]string{"secrets", "ls", "--kind", "signing-key"}, via...)...); code != 0 || strings.TrimSpace(out) != "rmq_cpu_" {
		t.Fatalf("ls via proxy: %q %s", out, errOut)
	}
	if code, _, errOut := runCLI(t, "second-value", append([]string{"secrets", "put", "deep/er/name"}, via...)...); code != 0 {
		t.Fatalf("raw put via proxy: %s", errOut)
	}
	if code, _, _ := runCLI(t, "third-value", append([]string{"secrets", "put", "deep/er/name"}, via...)...); code != 0 {
		t.Fatal("overwrite via proxy failed")
	}
	if code, out, _ := runCLI(t, "", append([]string{"secrets", "get", "deep/er/name"}, via...)...); code != 0 || out != "third-value" {
		t.Fatalf("raw get via proxy: %q", out)
	}
	cl.Close()
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("serve exited %d: %s", code, logs.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not stop on cancellation")
	}
	if strings.Contains(logs.String(), secret) {
		t.Fatal("proxy log holds the secret value")
	}
	if code, out, errOut := runCLI(t, "", "audit", "verify", auditLog); code != 0 || !strings.Contains(out, "ok: ") {
		t.Fatalf("audit verify: %d %s %s", code, out, errOut)
	}
	// The value is stored encrypted: the same config reads it back offline.
	if code, out, _ := runCLI(t, "", "secrets", "get", "--config", cfg, "app/token"); code != 0 || strings.TrimSpace(out) != secret {
		t.Fatalf("secrets get: %d %q", code, out)
	}
	if code, _, _ := runCLI(t, "", "secrets", "apikey", "revoke", "--config", cfg, "--id", "ops"); code != 0 {
		t.Fatalf("revoke: %d", code)
	}
}
