package e2e

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestProxyStopsPromptlyWithOpenWatch: SIGTERM ends the proxy quickly even
// while a client (a runner, in production) holds a watch stream open. Before
// the fix the stream kept http.Server.Shutdown waiting its full 10 s.
func TestProxyStopsPromptlyWithOpenWatch(t *testing.T) {
	p := startProxy(t, "")
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", p.sock)
	}}}
	do := func(method, path string) *http.Response {
		req, _ := http.NewRequest(method, "http://proxy"+path, nil)
		req.Header.Set("CUSTODIA_AUTH_ID", "admin")
		req.Header.Set("CUSTODIA_AUTH_KEY", p.adminSecret)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if r := do("POST", "/secrets/w/"); r.StatusCode != 201 {
		t.Fatalf("create container: %d", r.StatusCode)
	}
	resp := do("GET", "/secrets/w/?watch=1")
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("watch: %d", resp.StatusCode)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "event: ready") {
		t.Fatalf("watch stream starts with %q (%v)", line, err)
	}
	t0 := time.Now()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(8 * time.Second):
		t.Fatal("proxy still running 8 s after SIGTERM with a watch stream open")
	}
	t.Logf("stopped in %v", time.Since(t0))
}
