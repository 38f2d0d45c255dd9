package proxy

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/proxy/client"
	"github.com/sealrun/sealrun/storage"
	etcddrv "github.com/sealrun/sealrun/storage/etcd"
)

func (f *fixture) client(t testing.TB, id, key string) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Socket: f.sock, ID: id, Key: key, CacheTTL: time.Minute, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestClientTypedErrorsAndRoundTrip(t *testing.T) {
	f := startProxy(t, overlayStore(t), nil)
	ctx := context.Background()
	c := f.client(t, "admin", f.adminKey)
	if err := c.CreateContainer(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	if err := c.Put(ctx, "app/db", []byte("pw-1")); err != nil {
		t.Fatal(err)
	}
	if err := c.Put(ctx, "app/db", []byte("pw-2")); !errors.Is(err, client.ErrConflict) {
		t.Fatalf("second put: %v", err)
	}
	if v, err := c.Get(ctx, "app/db"); err != nil || string(v) != "pw-1" {
		t.Fatalf("get: %q %v", v, err)
	}
	if _, err := c.Get(ctx, "app/none"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	if names, err := c.List(ctx, "app"); err != nil || strings.Join(names, ",") != "db" {
		t.Fatalf("list: %v %v", names, err)
	}
	bad := f.client(t, "admin", "sr1.nope")
	if _, err := bad.Get(ctx, "app/db"); !errors.Is(err, client.ErrUnauthorized) {
		t.Fatalf("bad key: %v", err)
	}
	roKey, _ := f.srv.o.Credentials.Create(ctx, "ro", Grant{Paths: []string{"/secrets/other"}, Verbs: []string{"get"}})
	if _, err := f.client(t, "ro", roKey).Get(ctx, "app/db"); !errors.Is(err, client.ErrForbidden) {
		t.Fatalf("forbidden: %v", err)
	}
	if err := c.Delete(ctx, "app/db"); err != nil {
		t.Fatal(err)
	}
}

// The cache answers from memory, and a watch event invalidates it: a value
// changed through another client is seen at once, not after the TTL.
func TestClientCacheFollowsWatch(t *testing.T) {
	for name, store := range backends {
		t.Run(name, func(t *testing.T) { testClientCacheFollowsWatch(t, store(t)) })
	}
}

func testClientCacheFollowsWatch(t *testing.T, store Store) {
	f := startProxy(t, store, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	writer := f.client(t, "admin", f.adminKey)
	reader := f.client(t, "admin", f.adminKey)
	writer.CreateContainer(ctx, "keys")
	writer.Put(ctx, "keys/k", []byte("v1"))
	var changes atomic.Int32
	watching := make(chan struct{}, 1)
	go reader.KeepCacheFresh(ctx, func(ev client.Event) {
		if ev.Path == "" {
			select {
			case watching <- struct{}{}:
			default:
			}
			return
		}
		changes.Add(1)
	}, "keys")
	<-watching
	if v, _ := reader.Get(ctx, "keys/k"); string(v) != "v1" {
		t.Fatalf("first read %q", v)
	}
	// Cached: the proxy is not asked again (its audit log does not grow).
	before := len(auditLines(t, f.audit))
	for range 100 {
		reader.Get(ctx, "keys/k")
	}
	if after := len(auditLines(t, f.audit)); after != before {
		t.Fatalf("cached reads reached the proxy: %d audit lines added", after-before)
	}
	writer.Delete(ctx, "keys/k")
	writer.Put(ctx, "keys/k", []byte("v2"))
	deadline := time.Now().Add(5 * time.Second)
	for {
		v, err := reader.Get(ctx, "keys/k")
		if err == nil && string(v) == "v2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cache still serves %q (%v) after the value changed", v, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if changes.Load() == 0 {
		t.Fatal("no watch events delivered")
	}
}

// An unreachable backend is a 503 with a clear body, not a 500, and the
// client reports it as ErrUnavailable.
func TestBackendUnavailable(t *testing.T) {
	cli := testenv.Etcd(t)
	svc, err := storage.New(etcddrvSecretish(cli), etcddrv.New(cli, "/state/"), storage.Options{Registry: Registry(), Timeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	f := startProxy(t, svc, nil)
	cli.Close() // the backend goes away
	code, body := f.raw(t, "GET", "/secrets/x", f.admin(), "")
	if code != 503 || !strings.Contains(body, "unavailable") {
		t.Fatalf("backend down: %d %s", code, body)
	}
	c, _ := client.New(client.Config{Socket: f.sock, ID: "admin", Key: f.adminKey, Retries: 2})
	if _, err := c.Get(context.Background(), "x"); !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("client: %v", err)
	}
}
