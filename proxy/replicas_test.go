package proxy

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/proxy/audit"
	"github.com/sealrun/sealrun/storage"
	etcddrv "github.com/sealrun/sealrun/storage/etcd"
	"github.com/sealrun/sealrun/storage/overlay"
)

// clusterReplicaStores returns n storage services over one real 3-member
// etcd cluster and one master key, each with its own client of every
// member: n proxy processes sharing one store. Keys live under a prefix of
// their own, so tests on the package's shared cluster stay apart.
func clusterReplicaStores(t *testing.T, c *testenv.EtcdCluster, n int) []*storage.Service {
	t.Helper()
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
	b := make([]byte, 4)
	rand.Read(b)
	base := fmt.Sprintf("/replicas-%x/", b)
	var out []*storage.Service
	for range n {
		cli := c.Client(t)
		svc, err := storage.New(overlay.New(etcddrv.New(cli, base+"secrets/"), ring, overlay.Pinning),
			etcddrv.New(cli, base+"state/"), storage.Options{Registry: Registry(), Timeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { svc.Close() })
		out = append(out, svc)
	}
	return out
}

// startReplica is startProxy for a second proxy over a store whose admin
// credential the first created: same shape, its own socket and audit log.
func startReplica(t *testing.T, store Store, adminKey string) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{store: store, sock: filepath.Join(dir, "run", "secrets.sock"), audit: filepath.Join(dir, "audit.log"),
		logs: &lockedBuf{}, adminKey: adminKey}
	t.Cleanup(func() { f.scanForLeaks(t) })
	al, err := audit.Open(f.audit)
	if err != nil {
		t.Fatal(err)
	}
	creds := NewCredentials(store)
	f.srv, err = NewServer(Options{Store: store, Credentials: creds, Audit: al, ValueCache: DefaultCacheEntries,
		Logger: slog.New(slog.NewJSONHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
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
	f.sent(adminKey)
	return f
}

// until polls cond every millisecond for up to limit and returns how long
// it took to hold; the caller fails the test if it never did.
func until(limit time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for time.Since(start) < limit {
		if cond() {
			return time.Since(start), true
		}
		time.Sleep(time.Millisecond)
	}
	return 0, false
}

func quantiles(ds []time.Duration) string {
	slices.Sort(ds)
	return fmt.Sprintf("min %v, median %v, max %v over %d", ds[0], ds[len(ds)/2], ds[len(ds)-1], len(ds))
}

// Two proxy replicas over one etcd cluster. A write through one reaches
// the other's value cache through its etcd watch: the other, which had the
// old value cached, serves the new one once the event arrives (how long
// that takes is measured and logged, not asserted); a revoked API key stops
// working on both; the follow loops survive an etcd leader kill; and each
// replica keeps its own audit log, which verifies.
func TestProxyReplicasOverCluster(t *testing.T) {
	c := testenv.SharedEtcdCluster(t)
	stores := clusterReplicaStores(t, c, 2)
	a := startProxy(t, stores[0], nil)
	b := startReplica(t, stores[1], a.adminKey)
	for _, f := range []*fixture{a, b} {
		waitValueCache(t, f)
	}
	if code, body := a.raw(t, "POST", "/secrets/c/", a.admin(), ""); code != 201 {
		t.Fatalf("POST /secrets/c/: %d %q", code, body)
	}
	ct := a.admin(jsonCT, "application/json")
	// put replaces the value: Custodia's PUT only creates, so DELETE first.
	put := func(f *fixture, v string) {
		t.Helper()
		for range 20 { // 503 while etcd elects a leader
			code, body := f.raw(t, "DELETE", "/secrets/c/shared", a.admin(), "")
			if code == 503 {
				continue
			}
			if code != 204 && code != 404 {
				t.Fatalf("DELETE: %d %q", code, body)
			}
			code, body = f.raw(t, "PUT", "/secrets/c/shared", ct, simple(v))
			if code == 201 {
				return
			}
			if code != 503 {
				t.Fatalf("PUT: %d %q", code, body)
			}
		}
		t.Fatal("DELETE and PUT refused 20 times")
	}
	serves := func(f *fixture, v string) func() bool {
		return func() bool {
			code, body := f.get(t, "c/shared")
			return code == 200 && strings.Contains(body, `"`+v+`"`)
		}
	}

	// Value cache: b caches each old value, a overwrites it.
	var stale []time.Duration
	put(a, "value-0000")
	for i := 1; i <= 20; i++ {
		old, v := fmt.Sprintf("value-%04d", i-1), fmt.Sprintf("value-%04d", i)
		if _, ok := until(10*time.Second, serves(b, old)); !ok {
			t.Fatalf("replica b never served %s", old)
		}
		serves(b, old)() // now from b's cache
		put(a, v)
		d, ok := until(10*time.Second, serves(b, v))
		if !ok {
			t.Fatalf("replica b still serves a stale value 10s after a wrote %s", v)
		}
		stale = append(stale, d)
	}
	t.Logf("measured: a write through replica a is served by replica b after %s", quantiles(stale))

	// Revocation through a takes effect on b, which had the key cached.
	key, err := a.srv.o.Credentials.Create(t.Context(), "temp", Grant{Paths: []string{"/secrets"}, Verbs: []string{"get"}})
	if err != nil {
		t.Fatal(err)
	}
	a.sent(key)
	for _, f := range []*fixture{a, b} {
		if code, body := f.raw(t, "GET", "/secrets/c/shared", as("temp", key), ""); code != 200 {
			t.Fatalf("temp key before revocation: %d %q", code, body)
		}
	}
	if err := a.srv.o.Credentials.Revoke(t.Context(), "temp"); err != nil {
		t.Fatal(err)
	}
	if code, _ := a.raw(t, "GET", "/secrets/c/shared", as("temp", key), ""); code != 403 {
		t.Fatalf("revoked key on the revoking replica: %d", code)
	}
	revoked, ok := until(10*time.Second, func() bool {
		code, _ := b.raw(t, "GET", "/secrets/c/shared", as("temp", key), "")
		return code == 403
	})
	if !ok {
		t.Fatal("revoked key still accepted by replica b after 10s")
	}
	t.Logf("measured: a key revoked through replica a is refused by replica b after %v", revoked)

	// The follow loops outlive an etcd leader kill.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := c.KillLeader(ctx); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	put(a, "after-leader-kill")
	written := time.Since(killed)
	d, ok := until(30*time.Second, serves(b, "after-leader-kill"))
	if !ok {
		t.Fatal("replica b never served the value written after the etcd leader kill")
	}
	t.Logf("measured: etcd leader SIGKILLed; the write through a answered after %v, b served it %v later", written, d)

	// Each replica's audit log is its own, and verifies.
	for name, f := range map[string]*fixture{"a": a, "b": b} {
		fh, err := os.Open(f.audit)
		if err != nil {
			t.Fatal(err)
		}
		res, err := audit.Verify(fh)
		fh.Close()
		if err != nil || res.Lines < 20 {
			t.Fatalf("replica %s audit log: %d lines, %v", name, res.Lines, err)
		}
	}
	if a.audit == b.audit {
		t.Fatal("replicas share an audit log")
	}
}
