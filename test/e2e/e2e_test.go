// Package e2e drives the built sealrun binary as separate processes — the
// secrets proxy, the CLI, and a Python standard-library client attacking the
// proxy's socket — and checks what only a whole-system run shows: no secret
// value reaches any log, audit line, metric, error or report, and hostile
// requests from another process are refused and audited.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

var sealrunBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sealrun-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sealrunBin = filepath.Join(dir, "sealrun")
	if out, err := exec.Command("go", "build", "-o", sealrunBin, "github.com/sealrun/sealrun/cmd/sealrun").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build sealrun: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// result is one CLI run.
type result struct {
	args           []string
	code           int
	stdout, stderr string
}

func run(t *testing.T, stdin []byte, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, sealrunBin, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("sealrun %v: %v", args, err)
	}
	return result{args: args, code: code, stdout: out.String(), stderr: errb.String()}
}

// mustRun runs and fails the test on a non-zero exit.
func mustRun(t *testing.T, stdin []byte, args ...string) result {
	t.Helper()
	r := run(t, stdin, args...)
	if r.code != 0 {
		t.Fatalf("sealrun %v: exit %d\n%s%s", args, r.code, r.stdout, r.stderr)
	}
	return r
}

func canary(what string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "LEAKCANARY-" + what + "-" + hex.EncodeToString(b)
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func write(t *testing.T, path string, data []byte) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// proxyProc is `sealrun secrets serve` running as a child process.
type proxyProc struct {
	dir, cfg, sock, audit, log, ops string
	adminKey, readerKey             string // files
	adminSecret, readerSecret       string
	cmd                             *exec.Cmd
	done                            chan struct{}
}

// startProxy creates an admin (get,list,put,create,delete on /secrets/) and
// a reader (get on /secrets/app/) credential and starts the proxy.
func startProxy(t *testing.T, limits string) *proxyProc {
	t.Helper()
	dir := t.TempDir()
	p := &proxyProc{dir: dir, sock: filepath.Join(dir, "secrets.sock"), audit: filepath.Join(dir, "audit.log"),
		log: filepath.Join(dir, "proxy.log"), ops: freeAddr(t)}
	p.cfg = write(t, filepath.Join(dir, "proxy.yaml"), []byte(fmt.Sprintf(`listen: {socket: %s}
ops_listen: %s
audit_log: %s
%s
storage:
  state: {backend: etcd, etcd: {data_dir: %s}}
  secrets: {backend: overlay, overlay: {store: etcd, master_key: %s, autogen: true}}
`, p.sock, p.ops, p.audit, limits, filepath.Join(dir, "etcd"), filepath.Join(dir, "master.key"))))
	p.adminSecret = strings.TrimSpace(mustRun(t, nil, "secrets", "apikey", "create", "--config", p.cfg, "--id", "admin",
		"--path", "/secrets/", "--verbs", "get,list,watch,put,create,delete").stdout)
	p.readerSecret = strings.TrimSpace(mustRun(t, nil, "secrets", "apikey", "create", "--config", p.cfg, "--id", "reader",
		"--path", "/secrets/app/", "--verbs", "get").stdout)
	p.adminKey = write(t, filepath.Join(dir, "admin.key"), []byte(p.adminSecret))
	p.readerKey = write(t, filepath.Join(dir, "reader.key"), []byte(p.readerSecret))
	lf, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(sealrunBin, "secrets", "serve", "--config", p.cfg)
	p.cmd.Stdout, p.cmd.Stderr = lf, lf
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.done = make(chan struct{})
	go func() { _ = p.cmd.Wait(); lf.Close(); close(p.done) }()
	t.Cleanup(p.stop)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if r, err := http.Get("http://" + p.ops + "/readyz"); err == nil {
			r.Body.Close()
			if r.StatusCode == 200 {
				break
			}
		}
		select {
		case <-p.done:
			b, _ := os.ReadFile(p.log)
			t.Fatalf("proxy exited: %s", b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("proxy not ready after 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p
}

// stop sends SIGTERM and waits (the proxy ends its watch streams at once).
func (p *proxyProc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// via is the CLI's flags for going through the proxy as id.
func (p *proxyProc) via(id string) []string {
	key := p.adminKey
	if id == "reader" {
		key = p.readerKey
	}
	return []string{"--socket", p.sock, "--api-id", id, "--api-key-file", key}
}

func (p *proxyProc) metrics(t *testing.T) string {
	t.Helper()
	r, err := http.Get("http://" + p.ops + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(r.Body)
	return b.String()
}

// pyRequest is one raw request for attack.py.
type pyRequest struct {
	Raw         string  `json:"raw"`
	ReadTimeout float64 `json:"read_timeout,omitempty"`
}

// pyResult is attack.py's answer to one request.
type pyResult struct {
	Status *int   `json:"status"`
	Body   string `json:"body"`
	Error  string `json:"error"`
	PID    int    `json:"pid"`
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
