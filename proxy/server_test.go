package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/sealrun/sealrun/proxy/audit"
	"github.com/sealrun/sealrun/proxy/wire"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
)

const jsonCT = "Content-Type"

func simple(v string) string {
	b, _ := json.Marshal(map[string]string{"type": "simple", "value": v})
	return string(b)
}

type step struct {
	method, path string
	hdr          []string // extra header pairs
	body         string
	status       int
	want         string // substring of the body, when set
}

func runSteps(t *testing.T, f *fixture, steps []step) {
	t.Helper()
	for _, s := range steps {
		code, body := f.raw(t, s.method, s.path, f.admin(s.hdr...), s.body)
		if code != s.status || (s.want != "" && !strings.Contains(body, s.want)) {
			t.Fatalf("%s %s: %d %q; want %d with %q", s.method, s.path, code, body, s.status, s.want)
		}
	}
}

// Every verb and status code of the Custodia API (custodia.md), against the
// real server over a real socket, backed by the overlay on embedded etcd.
func TestCustodiaAPI(t *testing.T) {
	for name, store := range backends {
		t.Run(name, func(t *testing.T) { testCustodiaAPI(t, store(t)) })
	}
}

func testCustodiaAPI(t *testing.T, store Store) {
	f := startProxy(t, store, nil)
	ctJSON := []string{jsonCT, "application/json"}
	runSteps(t, f, []step{
		{"GET", "/", nil, "", 200, "message"},
		{"PUT", "/secrets/hosts/h1", ctJSON, simple("v1"), 404, "POST"},
		{"POST", "/secrets/hosts", nil, "", 405, ""},
		{"POST", "/secrets/hosts/", nil, "", 201, ""},
		{"POST", "/secrets/hosts/", nil, "", 200, ""},
		{"POST", "/secrets/a/b/", nil, "", 404, ""},
		{"PUT", "/secrets/hosts/h1", ctJSON, simple("ssh-key-one"), 201, ""},
		{"PUT", "/secrets/hosts/h1", ctJSON, simple("other"), 409, ""},
		{"PUT", "/secrets/hosts/h2", ctJSON, `{"type":"simple","value":`, 400, ""},
		{"PUT", "/secrets/hosts/h2", ctJSON, `{"type":"simple","value":5}`, 400, "string"},
		{"PUT", "/secrets/hosts/h2", ctJSON, `{"type":"kem","value":"x"}`, 406, ""},
		{"PUT", "/secrets/hosts/h2", []string{jsonCT, "text/plain"}, simple("x"), 400, "Content-Type"},
		{"PUT", "/secrets/hosts/empty", ctJSON, simple(""), 201, ""},
		{"GET", "/secrets/hosts/empty", nil, "", 200, `"value":""`},
		{"DELETE", "/secrets/hosts/empty", nil, "", 204, ""},
		{"PUT", "/secrets/hosts/empty", []string{jsonCT, "application/octet-stream"}, "", 400, `{\"type\": \"simple\", \"value\": \"\"}`},
		{"GET", "/secrets/hosts/h2", nil, "", 404, ""},
		{"PUT", "/secrets/top", ctJSON, simple("x"), 403, "container"},
		{"GET", "/secrets/top", nil, "", 403, "container"},
		{"DELETE", "/secrets/top", nil, "", 403, "container"},
		{"GET", "/secrets/hosts/h1", nil, "", 200, `"value":"ssh-key-one"`},
		{"GET", "/secrets/hosts/h1?type=simple&value=x", nil, "", 200, `ssh-key-one`},
		{"GET", "/secrets/hosts//h1", nil, "", 200, `"value":"ssh-key-one"`},
		{"GET", "/secrets/hosts/../hosts/h1", nil, "", 404, ""},
		{"PUT", "/secrets/hosts/./h3", ctJSON, simple("x"), 404, ""},
		{"GET", "/secrets/hosts/h1?type=kem", nil, "", 406, ""},
		{"PUT", "/secrets/hosts/bin", []string{jsonCT, "application/octet-stream"}, "\x00\x01binary\xff", 201, ""},
		{"GET", "/secrets/hosts/bin", []string{"Accept", "application/octet-stream"}, "", 200, "\x00\x01binary\xff"},
		{"GET", "/secrets/hosts/bin", nil, "", 200, `"value":"AAFiaW5hcnn/"`},
		{"POST", "/secrets/hosts/sub/", nil, "", 201, ""},
		{"PUT", "/secrets/hosts/sub/x", ctJSON, simple("deep"), 201, ""},
		{"GET", "/secrets/hosts/", nil, "", 200, `["bin","h1","sub/","sub/x"]`},
		{"GET", "/secrets/", nil, "", 200, `["hosts/","hosts/bin","hosts/h1","hosts/sub/","hosts/sub/x"]`},
		{"GET", "/secrets/missing/", nil, "", 404, ""},
		{"DELETE", "/secrets/hosts/", nil, "", 409, "not empty"},
		{"DELETE", "/secrets/hosts/h1", nil, "", 204, ""},
		{"DELETE", "/secrets/hosts/h1", nil, "", 404, ""},
		{"DELETE", "/secrets/missing/", nil, "", 404, ""},
		{"DELETE", "/secrets/hosts/sub/x", nil, "", 204, ""},
		{"DELETE", "/secrets/hosts/sub/", nil, "", 204, ""},
		{"DELETE", "/secrets/hosts/bin", nil, "", 204, ""},
		{"DELETE", "/secrets/hosts/", nil, "", 204, ""},
		{"GET", "/secrets/hosts/", nil, "", 404, ""},
		{"PATCH", "/secrets/x", nil, "", 501, ""},
		{"PUT", "/secrets/c/", ctJSON, simple("x"), 405, ""},
		{"BREW", "/secrets/x", nil, "", 501, ""},
	})
}

// Typed models are reachable under /secrets/sealrun/<kind>/<key>; API
// credentials never are.
func TestTypedModels(t *testing.T) {
	for name, store := range backends {
		t.Run(name, func(t *testing.T) { testTypedModels(t, store(t)) })
	}
}

func testTypedModels(t *testing.T, store Store) {
	f := startProxy(t, store, nil)
	ct := []string{jsonCT, "application/json"}
	model := `{"queue_prefix":"rmq_cpu_","public_key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB9d alice"}`
	runSteps(t, f, []step{
		{"GET", "/secrets/sealrun/", nil, "", 200, `"signing-key/"`},
		{"PUT", "/secrets/sealrun/signing-key/rmq_cpu_", ct, simple(model), 201, ""},
		{"PUT", "/secrets/sealrun/signing-key/rmq_gpu_", ct, simple(model), 400, "does not match"},
		{"PUT", "/secrets/sealrun/signing-key/rmq_x_", ct, simple(`{"bogus":1}`), 400, "unknown field"},
		{"GET", "/secrets/sealrun/signing-key/rmq_cpu_", nil, "", 200, `rmq_cpu_`},
		{"GET", "/secrets/sealrun/signing-key/", nil, "", 200, `["rmq_cpu_"]`},
		{"GET", "/secrets/sealrun/api-credential/admin", nil, "", 403, "not readable"},
		{"GET", "/secrets/sealrun/job/x", nil, "", 404, "no model kind"},
		{"DELETE", "/secrets/sealrun/signing-key/rmq_cpu_", nil, "", 204, ""},
	})
}

func auditLines(t *testing.T, path string) []audit.Entry {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	entries, err := audit.ReadVerified(f)
	if err != nil {
		t.Fatalf("audit log %s: %v", path, err)
	}
	return entries
}

func TestSecurity(t *testing.T) {
	for name, store := range backends {
		t.Run(name, func(t *testing.T) { testSecurity(t, store(t)) })
	}
}

func testSecurity(t *testing.T, store Store) {
	f := startProxy(t, store, func(o *Options) { o.MaxBody = 4096 })
	ctx := context.Background()
	creds := f.srv.o.Credentials
	aliceKey, err := creds.Create(ctx, "alice", Grant{Paths: []string{"/secrets/alice"}, Verbs: []string{"get", "put", "create", "list"}})
	if err != nil {
		t.Fatal(err)
	}
	const secretValue = "Tr0ub4dor&3-secret-value"
	runSteps(t, f, []step{
		{"POST", "/secrets/alice/", nil, "", 201, ""},
		{"POST", "/secrets/bob/", nil, "", 201, ""},
		{"PUT", "/secrets/bob/k", []string{jsonCT, "application/json"}, simple(secretValue), 201, ""},
	})
	fi, err := os.Stat(f.sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	long := "/secrets/" + strings.Repeat("a", MaxPathLen)
	cases := []struct {
		name   string
		method string
		path   string
		hdr    map[string]string
		body   string
		status int
	}{
		{"no credential", "GET", "/secrets/alice/x", nil, "", 403},
		{"wrong key", "GET", "/secrets/alice/x", as("alice", "sr1.wrong"), "", 403},
		{"unknown id", "GET", "/secrets/alice/x", as("mallory", aliceKey), "", 403},
		{"key of another id", "GET", "/secrets/alice/x", as("admin", aliceKey), "", 403},
		{"other credential's path", "GET", "/secrets/bob/k", as("alice", aliceKey), "", 403},
		{"prefix is not a segment", "GET", "/secrets/alicex/k", as("alice", aliceKey), "", 403},
		{"verb not granted", "DELETE", "/secrets/alice/k", as("alice", aliceKey), "", 403},
		{"dot-dot", "GET", "/secrets/alice/../bob/k", as("alice", aliceKey), "", 404},
		{"encoded dot-dot", "GET", "/secrets/alice/%2e%2e/bob/k", as("alice", aliceKey), "", 400},
		{"encoded slash", "GET", "/secrets/alice%2f..%2fbob/k", as("alice", aliceKey), "", 400},
		{"double slash collapses", "GET", "/secrets/alice//k", as("alice", aliceKey), "", 404},
		{"double slash cannot escape", "GET", "/secrets//bob/k", as("alice", aliceKey), "", 403},
		{"dot segment", "GET", "/secrets/alice/./k", as("alice", aliceKey), "", 404},
		{"root without credential", "GET", "/", nil, "", 403},
		{"NUL", "GET", "/secrets/alice/k%00x", as("alice", aliceKey), "", 400},
		{"backslash", "GET", "/secrets/alice/..%5cbob", as("alice", aliceKey), "", 400},
		{"over-long", "GET", long, as("alice", aliceKey), "", 400},
		{"oversized body", "PUT", "/secrets/alice/big", as("alice", aliceKey, jsonCT, "application/json"), simple(strings.Repeat("x", 5000)), 413},
	}
	// A refused credential and a forbidden path are both 403, as in
	// Custodia; only the first is marked, for sealrun's own client.
	unauthenticated := map[string]bool{"no credential": true, "wrong key": true, "unknown id": true,
		"key of another id": true, "root without credential": true}
	for _, c := range cases {
		code, hdr, body := f.rawHeader(t, c.method, c.path, c.hdr, c.body)
		if code != c.status {
			t.Errorf("%s: %d %q, want %d", c.name, code, body, c.status)
		}
		if marked := hdr.Get(wire.UnauthenticatedHeader) == "1"; marked != unauthenticated[c.name] {
			t.Errorf("%s: %d marked %s: %v, want %v", c.name, code, wire.UnauthenticatedHeader, marked, unauthenticated[c.name])
		}
		if strings.Contains(body, secretValue) {
			t.Errorf("%s: response leaks the secret", c.name)
		}
	}
	// Brute force: failed authentications from one peer are rate-limited.
	saw429 := false
	for range 30 {
		if code, _ := f.raw(t, "GET", "/secrets/alice/x", as("alice", "sr1.guess"), ""); code == 429 {
			saw429 = true
			break
		}
	}
	if !saw429 {
		t.Error("30 wrong keys in a row were never rate-limited")
	}
	// ... per claimed id: another credential on the same uid still works.
	if code, body := f.raw(t, "GET", "/secrets/bob/k", f.admin(), ""); code != 200 {
		t.Errorf("admin on the same uid after alice's lockout: %d %q, want 200", code, body)
	}
	// Made-up ids, each its own per-id budget, still meet the per-peer one.
	saw429 = false
	for i := range 200 {
		if code, _ := f.raw(t, "GET", "/secrets/alice/x", as(fmt.Sprintf("made-up-%d", i), "sr1.guess"), ""); code == 429 {
			saw429 = true
			break
		}
	}
	if !saw429 {
		t.Error("200 made-up ids in a row were never rate-limited")
	}
	// Every refusal is in the audit log, with peer credentials, and the
	// chain verifies; no value appears in it.
	data, _ := os.ReadFile(f.audit)
	if strings.Contains(string(data), secretValue) || strings.Contains(string(data), aliceKey) {
		t.Fatal("audit log holds a secret value or API key")
	}
	seen := map[int]bool{}
	for _, e := range auditLines(t, f.audit) {
		seen[e.Status] = true
		if e.PeerUID == nil || *e.PeerUID != os.Getuid() || e.PeerPID == nil {
			t.Fatalf("audit entry without peer credentials: %+v", e)
		}
	}
	for _, s := range []int{400, 403, 404, 413, 429} {
		if !seen[s] {
			t.Errorf("no audit line with status %d", s)
		}
	}
	fh, _ := os.Open(f.audit)
	defer fh.Close()
	if res, err := audit.Verify(fh); err != nil || res.Lines < len(cases) {
		t.Fatalf("audit chain: %+v %v", res, err)
	}
}

func TestRateLimitPerCredential(t *testing.T) {
	f := startProxy(t, overlayStore(t), func(o *Options) { o.Rate, o.Burst = 1, 3 })
	got429 := false
	for range 10 {
		code, _ := f.raw(t, "GET", "/secrets/c/nothing", f.admin(), "")
		if code == 429 {
			got429 = true
			break
		}
	}
	if !got429 {
		t.Fatal("a burst over the credential's rate was never answered 429")
	}
}

func TestRevocationIsImmediate(t *testing.T) {
	f := startProxy(t, overlayStore(t), nil)
	ctx := context.Background()
	key, _ := f.srv.o.Credentials.Create(ctx, "temp", Grant{Paths: []string{"/secrets"}, Verbs: []string{"list"}})
	if code, _ := f.raw(t, "GET", "/secrets/", as("temp", key), ""); code != 200 {
		t.Fatalf("before revoke: %d", code)
	}
	if err := f.srv.o.Credentials.Revoke(ctx, "temp"); err != nil {
		t.Fatal(err)
	}
	if code, _ := f.raw(t, "GET", "/secrets/", as("temp", key), ""); code != 403 {
		t.Fatalf("after revoke: %d, want 403", code)
	}
}

func TestPeerUIDRequirement(t *testing.T) {
	f := startProxy(t, overlayStore(t), func(o *Options) { o.AllowedUIDs = []int{os.Getuid() + 4242} })
	if code, _ := f.raw(t, "GET", "/secrets/", f.admin(), ""); code != 403 {
		t.Fatalf("wrong uid: %d, want 403", code)
	}
}

// Custodia's etcd store returned other keys' secrets under 4 concurrent
// clients; sealrun must not.
func TestConcurrentClientsGetTheirOwnValues(t *testing.T) {
	f := startProxy(t, overlayStore(t), nil)
	runSteps(t, f, []step{{"POST", "/secrets/c/", nil, "", 201, ""}})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 15 {
				name := "/secrets/c/w" + string(rune('a'+w)) + "-" + string(rune('a'+i))
				val := "value-of-" + name
				if code, body := f.raw(t, "PUT", name, f.admin(jsonCT, "application/json"), simple(val)); code != 201 {
					t.Errorf("PUT %s: %d %s", name, code, body)
					return
				}
				code, body := f.raw(t, "GET", name, f.admin(), "")
				if code != 200 || !strings.Contains(body, `"`+val+`"`) {
					t.Errorf("GET %s: %d %s", name, code, body)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// deniedStore is a backend that refuses the proxy's own credentials (an
// expired Vault token, a revoked etcd user).
type deniedStore struct{ Store }

func (d deniedStore) Get(ctx context.Context, m secrets.Model) (int64, error) {
	if m.Kind() == secrets.KindAPICredential { // the proxy's own records still load
		return d.Store.Get(ctx, m)
	}
	return 0, &storage.Error{Op: "get", Kind: m.Kind(), Code: driver.PermissionDenied, Err: errors.New("403 permission denied")}
}

// A backend that refuses the proxy is a 503 naming the cause, not a 500.
func TestBackendRefusesProxy(t *testing.T) {
	f := startProxy(t, deniedStore{overlayStore(t)}, func(o *Options) { o.ValueCache = 0 })
	code, body := f.raw(t, "GET", "/secrets/c/x", f.admin(), "")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "refused the proxy's credentials") {
		t.Fatalf("GET with the backend refusing the proxy: %d %q, want 503 naming the cause", code, body)
	}
}

// A value the backend refuses for its size (etcd's request limit; the test
// etcd allows 4 MiB, the overlay's JWE nearly doubles a value) is a 413
// saying what to do, and nothing is stored.
func TestValueTooLargeForBackend(t *testing.T) {
	f := startProxy(t, overlayStore(t), func(o *Options) { o.MaxBody = 16 << 20 })
	big := strings.Repeat("v", 3<<20)
	if code, _ := f.raw(t, "POST", "/secrets/c/", f.admin(), ""); code != 201 {
		t.Fatalf("POST /secrets/c/: %d", code)
	}
	code, body := f.raw(t, "PUT", "/secrets/c/big", f.admin(jsonCT, "application/json"), simple(big))
	if code != http.StatusRequestEntityTooLarge || !strings.Contains(body, "too large for the secret backend") {
		t.Fatalf("PUT of 3 MiB: %d %q, want 413 naming the backend", code, body)
	}
	if code, _ := f.raw(t, "GET", "/secrets/c/big", f.admin(), ""); code != 404 {
		t.Fatalf("GET after the refused PUT: %d, want 404", code)
	}
}

// When the audit log fails nothing more is served (503). A read says it
// changed nothing (a client may repeat it); a change that was made before
// its line could be written says so, and that it must be read back.
func TestAuditFailureRefusesService(t *testing.T) {
	store := overlayStore(t)
	f := startProxy(t, store, nil)
	f.raw(t, "POST", "/secrets/app/", f.admin(), "")
	f.srv.o.Audit.Close() // every Log fails from now on

	code, hdr, body := f.rawHeader(t, "GET", "/secrets/app/", f.admin(), "")
	if code != 503 || hdr.Get(wire.NotAppliedHeader) != "1" || !strings.Contains(body, "not served") {
		t.Fatalf("list with the audit log down: %d %q %q, want 503, not applied, not served", code, hdr, body)
	}
	code, hdr, body = f.rawHeader(t, "PUT", "/secrets/app/k", f.admin(jsonCT, "application/json"), simple("written-before-audit"))
	if code != 503 || hdr.Get(wire.NotAppliedHeader) != "" || !strings.Contains(body, "read it back") {
		t.Fatalf("put with the audit log down: %d %q %q, want 503 saying the change was made", code, hdr, body)
	}
	m := &secrets.Raw{Name: "app/k"}
	if _, err := store.Get(context.Background(), m); err != nil || string(m.Value) != "written-before-audit" {
		t.Fatalf("the put's value: %v", err)
	}
}

// A write that fails (/dev/full: every write is ENOSPC) fails the request
// in both audit.sync modes, and every later one: write mode skips the fsync,
// not the check.
func TestAuditWriteErrorFailsRequestInBothSyncModes(t *testing.T) {
	for _, mode := range []audit.Sync{audit.SyncFsync, audit.SyncWrite} {
		t.Run(string(mode), func(t *testing.T) {
			full, err := audit.OpenWith("/dev/full", audit.Options{Sync: mode})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { full.Close() })
			f := startProxy(t, overlayStore(t), func(o *Options) { o.Audit = full })
			for range 2 {
				code, hdr, body := f.rawHeader(t, "GET", "/secrets/app/", f.admin(), "")
				if code != 503 || hdr.Get(wire.NotAppliedHeader) != "1" || !strings.Contains(body, "audit log unavailable") {
					t.Fatalf("%s: GET with the audit write failing: %d %q, want 503 naming the audit log", mode, code, body)
				}
			}
		})
	}
}
