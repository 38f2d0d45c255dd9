package proxy

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// A Custodia client written with Python's standard library alone works
// against the proxy unchanged.
func TestPythonCustodiaClient(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 not found: run scripts/install-deps.sh")
	}
	f := startProxy(t, overlayStore(t), nil)
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(file), "..", "test", "interop", "custodia_client.py")
	out, err := exec.Command(py, script, f.sock, "admin", f.adminKey).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("python Custodia client: %v\n%s", err, out)
	}
}
