package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sealrun/sealrun/proxy/audit"
)

func TestAuditVerifyCLI(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := audit.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		l.Log(context.Background(), audit.Entry{Verb: "GET", Path: "/secrets/x", Status: 200, Outcome: "allowed"})
	}
	l.Close()
	if code, out, errOut := runCLI(t, "", "audit", "verify", path); code != 0 || !strings.HasPrefix(out, "ok: 3 lines") {
		t.Fatalf("verify: %d %q %q", code, out, errOut)
	}
	data, _ := os.ReadFile(path)
	os.WriteFile(path, []byte(strings.Replace(string(data), `"status":200`, `"status":404`, 1)), 0o600)
	code, _, errOut := runCLI(t, "", "audit", "verify", path)
	if code != exitError || !strings.Contains(errOut, "line 2") {
		t.Fatalf("tampered: %d %q", code, errOut)
	}
	if code, _, _ := runCLI(t, "", "audit", "verify"); code != exitUsage {
		t.Fatalf("no file: %d", code)
	}
}
