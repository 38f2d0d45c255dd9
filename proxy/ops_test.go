package proxy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/storage"
	etcddrv "github.com/sealrun/sealrun/storage/etcd"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// /metrics counts requests but never carries a value or key; /readyz
// follows the backend.
func TestOpsEndpoints(t *testing.T) {
	cli := testenv.Etcd(t)
	svc, err := storage.New(etcddrvSecretish(cli), etcddrv.New(cli, "/state/"), storage.Options{Registry: Registry(), Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	reg := NewMetricsRegistry()
	f := startProxy(t, svc, func(o *Options) { o.Metrics = reg })
	const secret = "metrics-must-not-see-this"
	waitValueCache(t, f)
	f.raw(t, "POST", "/secrets/c/", f.admin(), "")
	f.raw(t, "PUT", "/secrets/c/m", f.admin(jsonCT, "application/json"), simple(secret))
	// The PUT's own watch event may drop a GET's fill: GET until one sticks.
	gets := 0
	eventually(t, "a GET's value cached", func() bool {
		f.raw(t, "GET", "/secrets/c/m", f.admin(), "")
		gets++
		n, _ := f.srv.values.size()
		return n > 0
	})
	f.raw(t, "GET", "/secrets/", f.admin(), "")
	for _, m := range []string{"FOO", "BAR"} {
		if code, _ := f.raw(t, m, "/secrets/c/m", f.admin(), ""); code != http.StatusNotImplemented {
			t.Errorf("method %s: %d, want 501", m, code)
		}
	}
	ops := httptest.NewServer(OpsHandler(svc, reg))
	defer ops.Close()
	if code, _ := get(t, ops.URL+"/healthz"); code != 200 {
		t.Fatalf("healthz %d", code)
	}
	if code, body := get(t, ops.URL+"/readyz"); code != 200 {
		t.Fatalf("readyz %d %s", code, body)
	}
	code, metrics := get(t, ops.URL+"/metrics")
	if code != 200 || !strings.Contains(metrics, fmt.Sprintf(`sealrun_proxy_requests_total{status="200",verb="get"} %d`, gets)) {
		t.Fatalf("metrics: %d\n%s", code, metrics)
	}
	if strings.Contains(metrics, secret) || strings.Contains(metrics, f.adminKey) {
		t.Fatal("metrics leak a secret")
	}
	// Made-up methods share one label: a client must not be able to add
	// time series.
	if strings.Contains(strings.ToLower(metrics), `verb="foo"`) || !strings.Contains(metrics, `sealrun_proxy_requests_total{status="501",verb="other"} 2`) {
		t.Errorf("unknown methods not collapsed into verb=\"other\":\n%s", metrics)
	}
	// The audit log tells a list from a get (both are GET).
	var verbs []string
	for _, e := range auditLines(t, f.audit) {
		verbs = append(verbs, e.Verb+" "+e.Op)
	}
	want := []string{"POST create", "PUT put"}
	for range gets {
		want = append(want, "GET get")
	}
	if want = append(want, "GET list", "FOO ", "BAR "); !slices.Equal(verbs, want) {
		t.Errorf("audit verbs and ops %q, want %q", verbs, want)
	}
	// Every request was audited: a line each, at least one fsync, and time
	// spent in it.
	if !strings.Contains(metrics, fmt.Sprintf("\nsealrun_proxy_audit_lines_total %d\n", len(want))) {
		t.Errorf("audit lines metric wrong:\n%s", metrics)
	}
	// ... and the GET filled the value cache (the fixture turns it on).
	for _, name := range []string{"sealrun_proxy_audit_fsyncs_total", "sealrun_proxy_audit_fsync_seconds_total", "sealrun_proxy_value_cache_entries", "sealrun_proxy_value_cache_bytes"} {
		m := regexp.MustCompile(`\n` + name + ` (\S+)\n`).FindStringSubmatch(metrics)
		if m == nil {
			t.Errorf("%s missing:\n%s", name, metrics)
			continue
		}
		if v, err := strconv.ParseFloat(m[1], 64); err != nil || v <= 0 {
			t.Errorf("%s = %q, want a positive number", name, m[1])
		}
	}
	cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", ops.URL+"/readyz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Fatalf("readyz with backend down: %d", resp.StatusCode)
	}
}
