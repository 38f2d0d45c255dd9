// Package interop runs the clients and servers sealrun must interoperate
// with — real Custodia 0.6, Debian's custodia-cli, Custodia's Python client,
// StudioML's scripts — against sealrun, and compares what they see.
package interop

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sealrun/sealrun/internal/proxytest"
	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/proxy"
	storageconfig "github.com/sealrun/sealrun/storage/config"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// CPD-101's deployment: Custodia's header names as it configures them and
// its EtcdStore namespace.
const (
	cpdIDHeader  = "CUSTODIA_AUTH_ID"
	cpdKeyHeader = "CUSTODIA_KEY_ID"
	cpdNamespace = "/custodia_commissaire_data"
)

// sealrunCPD serves a sealrun proxy configured as CPD-101 runs it, from a
// proxy config file's own settings: auth.id_header CUSTODIA_AUTH_ID and
// auth.key_header CUSTODIA_KEY_ID, the overlay on etcd with Custodia API
// values in Custodia's own records under custodia_namespace
// /custodia_commissaire_data, encrypted with masterKey (a Custodia JWK
// file), the value cache as the config turns it on. The credential id is
// "app", allowed everything under /secrets, as Custodia's SimplePathAuthz
// "/secrets" allows. The etcd client is the proxy's backing etcd.
func sealrunCPD(t *testing.T, masterKey string) (*proxytest.Server, *clientv3.Client) {
	t.Helper()
	cli := testenv.Etcd(t)
	conf := fmt.Sprintf(`auth:
  id_header: %s
  key_header: %s
storage:
  state:
    backend: etcd
    etcd: {endpoints: [%s], prefix: /sealrun/state/}
  secrets:
    backend: overlay
    overlay:
      store: etcd
      prefix: /sealrun/secrets/
      custodia_namespace: %s
      master_key: %s
      enctype: A256CBC-HS512
      protection: pinning
`, cpdIDHeader, cpdKeyHeader, strings.Join(cli.Endpoints(), ", "), cpdNamespace, masterKey)
	c, err := proxy.DecodeConfig(strings.NewReader(conf))
	if err != nil {
		t.Fatalf("CPD-101 proxy config: %v", err)
	}
	store, err := storageconfig.Open(t.Context(), c.StorageConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	co := c.Options()
	if co.IDHeader != cpdIDHeader || co.KeyHeader != cpdKeyHeader || co.ValueCache == 0 {
		t.Fatalf("config options: headers %q %q, value cache %d", co.IDHeader, co.KeyHeader, co.ValueCache)
	}
	return proxytest.Start(t, store, "app", proxy.Grant{Paths: []string{"/secrets"}, Verbs: []string{"*"}},
		func(o *proxy.Options) {
			o.IDHeader, o.KeyHeader, o.ValueCache, o.ValueCacheBytes = co.IDHeader, co.KeyHeader, co.ValueCache, co.ValueCacheBytes
		}), cli
}

// reply is one HTTP answer.
type reply struct {
	status int
	header http.Header
	body   []byte
}

// rawDo sends one literal HTTP/1.1 request over a unix socket, so the path
// reaches the server exactly as written (no client-side cleaning).
func rawDo(t *testing.T, sock, method, path string, hdr map[string]string, body string) reply {
	t.Helper()
	var c net.Conn
	var err error
	for range 200 {
		// Custodia forks per connection with a backlog of 5.
		if c, err = net.Dial("unix", sock); err == nil || !strings.Contains(err.Error(), "resource temporarily unavailable") {
			break
		}
		time.Sleep(5 * time.Millisecond) // backoff before redialling, not synchronisation
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n", method, path)
	for k, v := range hdr {
		fmt.Fprintf(&b, "%s: %s\r\n", k, v)
	}
	if body != "" || method == "PUT" || method == "POST" {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	b.WriteString(body)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, b.String()); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(method, "http://localhost"+"/", nil)
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, resp.Header, out}
}

// script is the path of a file in test/interop.
func script(name string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), name)
}

// need fails the test when a tool the interop tests run is missing: they
// are never skipped.
func need(t *testing.T, path string) string {
	t.Helper()
	p, err := exec.LookPath(path)
	if err != nil {
		t.Fatalf("%s not found (%v): run scripts/install-deps.sh", path, err)
	}
	return p
}
