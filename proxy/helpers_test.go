package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/proxy/audit"
	"github.com/sealrun/sealrun/proxy/wire"
	"github.com/sealrun/sealrun/storage"
	etcddrv "github.com/sealrun/sealrun/storage/etcd"
	"github.com/sealrun/sealrun/storage/overlay"
	vaultdrv "github.com/sealrun/sealrun/storage/vault"
)

// overlayStore is the production shape: the Custodia-compatible overlay on
// a real (embedded) etcd for secrets, plain etcd for state.
func overlayStore(t testing.TB) *storage.Service {
	t.Helper()
	svc, _ := overlayPair(t)
	return svc
}

// overlayPair returns two services over the same etcd and master key: the
// second stands for another process (another proxy, the CLI) changing
// values around the first.
func overlayPair(t testing.TB) (*storage.Service, *storage.Service) {
	t.Helper()
	cli := testenv.Etcd(t)
	raw := make([]byte, overlay.KeySize)
	rand.Read(raw)
	k, err := overlay.NewKey("k1", raw)
	if err != nil {
		t.Fatal(err)
	}
	ring, err := overlay.NewKeyRing(k)
	if err != nil {
		t.Fatal(err)
	}
	open := func() *storage.Service {
		svc, err := storage.New(overlay.New(etcddrv.New(cli, "/sealrun/secrets/"), ring, overlay.Pinning),
			etcddrv.New(cli, "/sealrun/state/"), storage.Options{Registry: Registry(), Timeout: 3 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { svc.Close() })
		return svc
	}
	return open(), open()
}

type fixture struct {
	store    Store
	srv      *Server
	sock     string
	audit    string
	adminKey string
	logs     *lockedBuf // the server's log, JSON

	mu      sync.Mutex
	written []string // secret values and API keys sent, to look for in logs
}

type lockedBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// sent records a secret value or key the test sent, for the leak scan.
// Short values are skipped: they would match by chance.
func (f *fixture) sent(v string) {
	if len(v) < 12 {
		return
	}
	f.mu.Lock()
	f.written = append(f.written, v)
	f.mu.Unlock()
}

// scanForLeaks fails t if the server's log or audit log holds any value or
// API key the test sent, raw or base64.
func (f *fixture) scanForLeaks(t testing.TB) {
	audit, _ := os.ReadFile(f.audit)
	logs := f.logs.String()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, v := range f.written {
		for _, form := range []string{v, base64.StdEncoding.EncodeToString([]byte(v)), base64.RawURLEncoding.EncodeToString([]byte(v))} {
			if strings.Contains(logs, form) {
				t.Errorf("the proxy's log holds a secret value or key the test sent (%d bytes)", len(v))
			}
			if strings.Contains(string(audit), form) {
				t.Errorf("the audit log holds a secret value or key the test sent (%d bytes)", len(v))
			}
		}
	}
}

func startProxy(t testing.TB, store Store, tweak func(*Options)) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{store: store, sock: filepath.Join(dir, "run", "secrets.sock"), audit: filepath.Join(dir, "audit.log"), logs: &lockedBuf{}}
	// Registered first, so it runs last: after the server has stopped and
	// written everything it will.
	t.Cleanup(func() { f.scanForLeaks(t) })
	al, err := audit.Open(f.audit)
	if err != nil {
		t.Fatal(err)
	}
	creds := NewCredentials(store)
	// The value cache is on, as Run turns it on for the overlay; tests of
	// the uncached path turn it off in tweak.
	o := Options{Store: store, Credentials: creds, Audit: al, ValueCache: DefaultCacheEntries,
		Logger: slog.New(slog.NewJSONHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if tweak != nil {
		tweak(&o)
	}
	f.srv, err = NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := ListenUnix(f.sock, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	hs := f.srv.HTTPServer()
	go hs.Serve(ln)
	ctx, cancel := context.WithCancel(context.Background())
	go creds.WatchRevocations(ctx)
	go f.srv.WatchValues(ctx)
	t.Cleanup(func() {
		cancel()
		hs.Close()
		al.Close()
	})
	f.adminKey, err = creds.Create(context.Background(), "admin", Grant{Paths: []string{"/secrets"}, Verbs: []string{"*"}})
	if err != nil {
		t.Fatal(err)
	}
	f.sent(f.adminKey)
	return f
}

// raw sends one literal HTTP/1.1 request over the socket, so paths reach the
// server exactly as written (no client-side cleaning), and returns status
// and body.
func (f *fixture) raw(t testing.TB, method, path string, hdr map[string]string, body string) (int, string) {
	t.Helper()
	code, _, out := f.rawHeader(t, method, path, hdr, body)
	return code, out
}

// rawHeader is raw that also returns the response's headers.
func (f *fixture) rawHeader(t testing.TB, method, path string, hdr map[string]string, body string) (int, http.Header, string) {
	t.Helper()
	c, err := net.Dial("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if method == "PUT" {
		var simple struct{ Value string }
		if json.Unmarshal([]byte(body), &simple) == nil && simple.Value != "" {
			f.sent(simple.Value)
		} else {
			f.sent(body)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n", method, path)
	for k, v := range hdr {
		if k == f.srv.o.KeyHeader {
			f.sent(v)
		}
		fmt.Fprintf(&b, "%s: %s\r\n", k, v)
	}
	if body != "" || method == "PUT" || method == "POST" {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	b.WriteString(body)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, b.String()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(out)
}

// as returns headers authenticating with id and key.
func as(id, key string, extra ...string) map[string]string {
	h := map[string]string{wire.DefaultIDHeader: id, wire.DefaultKeyHeader: key}
	for i := 0; i+1 < len(extra); i += 2 {
		h[extra[i]] = extra[i+1]
	}
	return h
}

func (f *fixture) admin(extra ...string) map[string]string { return as("admin", f.adminKey, extra...) }

// etcddrvSecretish is a plain etcd driver standing in as the secret backend
// where a test is about availability, not encryption.
func etcddrvSecretish(cli *clientv3.Client) *etcddrv.Driver { return etcddrv.New(cli, "/secrets/") }

func TestMain(m *testing.M) { testenv.Main(m) }

// vaultStore puts secrets in a real Vault dev server (KV v2), each test
// under its own prefix; state stays in etcd.
func vaultStore(t testing.TB) *storage.Service {
	t.Helper()
	svc, _, _ := vaultEnv(t)
	return svc
}

// vaultEnv is vaultStore with the Vault client it uses and its key prefix
// under the "secret" mount, for reading around the driver.
func vaultEnv(t testing.TB) (*storage.Service, *vaultapi.Client, string) {
	t.Helper()
	addr, token := testenv.Vault(t)
	cfg := vaultapi.DefaultConfig()
	cfg.Address = addr
	vc, err := vaultapi.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	vc.SetToken(token)
	b := make([]byte, 6)
	rand.Read(b)
	prefix := fmt.Sprintf("proxytest-%x", b)
	svc, err := storage.New(vaultdrv.New(vc, vaultdrv.Options{Mount: "secret", Prefix: prefix, PollInterval: 100 * time.Millisecond}),
		etcddrv.New(testenv.Etcd(t), "/state/"), storage.Options{Registry: Registry(), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	return svc, vc, prefix
}

// backends are the secret stores every API test runs against.
var backends = map[string]func(testing.TB) *storage.Service{"overlay-etcd": overlayStore, "vault": vaultStore}

// waitValueCache waits until the server's value cache watches every kind,
// so a test or benchmark sees the steady state.
func waitValueCache(b testing.TB, f *fixture) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := 0
		for _, kind := range valueKinds() {
			if f.srv.values.c.Live(kind) {
				n++
			}
		}
		if n == len(valueKinds()) {
			return
		}
		if time.Now().After(deadline) {
			b.Fatal("value cache watches not established within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
