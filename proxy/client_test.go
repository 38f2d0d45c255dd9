package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/proxy/client"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
	etcddrv "github.com/sealrun/sealrun/storage/etcd"
)

func (f *fixture) client(t testing.TB, id, key string) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Socket: f.sock, ID: id, Key: client.APIKey(key), CacheTTL: time.Minute, Timeout: 3 * time.Second})
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
	code, body := f.raw(t, "GET", "/secrets/c/x", f.admin(), "")
	if code != 503 || !strings.Contains(body, "unavailable") {
		t.Fatalf("backend down: %d %s", code, body)
	}
	c, _ := client.New(client.Config{Socket: f.sock, ID: "admin", Key: client.APIKey(f.adminKey), Retries: 2})
	if _, err := c.Get(context.Background(), "c/x"); !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("client: %v", err)
	}
}

// A Custodia deployment may rename the auth headers (CPD-101's key header
// is CUSTODIA_KEY_ID): a client given the proxy's names gets in, for calls
// and watches alike; one sending the defaults gets a 403 naming the headers
// the proxy wants.
func TestClientHeaderNames(t *testing.T) {
	const idHeader, keyHeader = "X-Custodia-Owner", "CUSTODIA_KEY_ID"
	f := startProxy(t, overlayStore(t), func(o *Options) { o.IDHeader, o.KeyHeader = idHeader, keyHeader })
	ctx := context.Background()
	c, err := client.New(client.Config{Socket: f.sock, ID: "admin", Key: client.APIKey(f.adminKey), IDHeader: idHeader, KeyHeader: keyHeader, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.CreateContainer(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	if err := c.Put(ctx, "app/db", []byte("pw")); err != nil {
		t.Fatal(err)
	}
	if v, err := c.GetFresh(ctx, "app/db"); err != nil || string(v) != "pw" {
		t.Fatalf("get: %q %v", v, err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if _, _, err := c.Watch(wctx, "app"); err != nil {
		t.Fatalf("watch: %v", err)
	}

	_, err = f.client(t, "admin", f.adminKey).GetFresh(ctx, "app/db")
	var e *client.Error
	if !errors.Is(err, client.ErrUnauthorized) || !errors.As(err, &e) || !strings.Contains(e.Msg, keyHeader) {
		t.Fatalf("default header names: %v", err)
	}
	t.Logf("user sees: %v", err)
	if _, err := client.New(client.Config{Socket: f.sock, ID: "admin", Key: "k", KeyHeader: "CUSTODIA KEY"}); err == nil {
		t.Fatal("a header name with a space was accepted")
	}
}

// lossySocket is a unix socket in front of the proxy's that forwards every
// request and can lose the answer to the next request of a method once the
// proxy has handled it: "none" closes the connection before answering,
// "cut" sends the status line and part of the body.
type lossySocket struct {
	sock string
	mu   sync.Mutex
	lose map[string]string // method -> how
	seen map[string]int    // requests the proxy handled, by method
}

func newLossySocket(t *testing.T, f *fixture) *lossySocket {
	l := &lossySocket{sock: filepath.Join(t.TempDir(), "lossy.sock"), lose: map[string]string{}, seen: map[string]int{}}
	up := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", f.sock)
	}}}
	ln, err := net.Listen("unix", l.sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, "http://proxy"+r.URL.RequestURI(), bytes.NewReader(body))
		req.Header = r.Header.Clone()
		resp, err := up.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		out, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		l.mu.Lock()
		l.seen[r.Method]++
		how := l.lose[r.Method]
		delete(l.lose, r.Method)
		l.mu.Unlock()
		if how != "" {
			conn, bw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			if how == "cut" {
				fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\nContent-Length: %d\r\n\r\n%s", resp.StatusCode, http.StatusText(resp.StatusCode), len(out)+100, out)
				bw.Flush()
			}
			conn.Close()
			return
		}
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		w.Write(out)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close(); up.CloseIdleConnections() })
	return l
}

func (l *lossySocket) loseNext(method, how string) {
	l.mu.Lock()
	l.lose[method] = how
	l.mu.Unlock()
}

func (l *lossySocket) count(method string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seen[method]
}

// A change whose answer is lost may have been made: the client must not
// repeat it and then report the repeat's 409 or 404 as the outcome. Reads
// are still retried.
func TestClientDoesNotRepeatChanges(t *testing.T) {
	f := startProxy(t, overlayStore(t), nil)
	l := newLossySocket(t, f)
	ctx := context.Background()
	c, err := client.New(client.Config{Socket: l.sock, ID: "admin", Key: client.APIKey(f.adminKey), Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.CreateContainer(ctx, "app"); err != nil {
		t.Fatal(err)
	}

	// No answer: the client says it does not know, not "already exists".
	l.loseNext("PUT", "none")
	err = c.Put(ctx, "app/a", []byte("v"))
	if !errors.Is(err, client.ErrUnavailable) || errors.Is(err, client.ErrConflict) {
		t.Fatalf("PUT without an answer: %v", err)
	}
	t.Logf("user sees: %v", err)
	if n := l.count("PUT"); n != 1 {
		t.Fatalf("PUT sent %d times", n)
	}
	if v, err := c.GetFresh(ctx, "app/a"); err != nil || string(v) != "v" {
		t.Fatalf("the PUT was not made: %q %v", v, err)
	}

	// The status arrived but the body was cut: the status is the outcome.
	l.loseNext("PUT", "cut")
	if err := c.Put(ctx, "app/b", []byte("v")); err != nil {
		t.Fatalf("PUT answered 201 with a cut body: %v", err)
	}
	if n := l.count("PUT"); n != 2 {
		t.Fatalf("PUTs sent: %d, want 2", n)
	}

	l.loseNext("DELETE", "none")
	err = c.Delete(ctx, "app/a")
	if !errors.Is(err, client.ErrUnavailable) || errors.Is(err, client.ErrNotFound) {
		t.Fatalf("DELETE without an answer: %v", err)
	}
	if n := l.count("DELETE"); n != 1 {
		t.Fatalf("DELETE sent %d times", n)
	}

	// A read is repeated (by the client or its transport) and succeeds.
	gets := l.count("GET")
	l.loseNext("GET", "cut")
	if v, err := c.GetFresh(ctx, "app/b"); err != nil || string(v) != "v" {
		t.Fatalf("GET after a cut answer: %q %v", v, err)
	}
	if n := l.count("GET") - gets; n != 2 {
		t.Fatalf("GET sent %d times, want 2", n)
	}
}

// unavailableOnce answers the next Put, or the next Get, as an
// unreachable backend would. A failed Put may have been made (a timeout
// after the commit), a failed Get changed nothing.
type unavailableOnce struct {
	Store
	failPut, failGet atomic.Bool
	puts, gets       atomic.Int32
}

func (s *unavailableOnce) Put(ctx context.Context, m secrets.Model, o driver.PutOptions) (int64, error) {
	s.puts.Add(1)
	if s.failPut.CompareAndSwap(true, false) {
		return 0, &storage.Error{Op: "put", Kind: m.Kind(), Key: m.Key(), Code: driver.Unavailable, Err: errors.New("test: backend unreachable")}
	}
	return s.Store.Put(ctx, m, o)
}

func (s *unavailableOnce) Get(ctx context.Context, m secrets.Model) (int64, error) {
	if m.Kind() == KindContainer { // the PUT's parent check, before any write
		s.gets.Add(1)
		if s.failGet.CompareAndSwap(true, false) {
			return 0, &storage.Error{Op: "get", Kind: m.Kind(), Key: m.Key(), Code: driver.Unavailable, Err: errors.New("test: backend unreachable")}
		}
	}
	return s.Store.Get(ctx, m)
}

// A 503 before the backend was asked to change anything is repeated, and
// succeeds; a 503 from the write itself is not (it may have been made),
// and the error says to read it back.
func TestClientRetriesUnavailable(t *testing.T) {
	store := &unavailableOnce{Store: overlayStore(t)}
	f := startProxy(t, store, nil)
	ctx := context.Background()
	c := f.client(t, "admin", f.adminKey)
	if err := c.CreateContainer(ctx, "app"); err != nil {
		t.Fatal(err)
	}

	puts, gets := store.puts.Load(), store.gets.Load()
	store.failGet.Store(true)
	if err := c.Put(ctx, "app/db", []byte("pw")); err != nil {
		t.Fatalf("put after a 503 that changed nothing: %v", err)
	}
	if p, g := store.puts.Load()-puts, store.gets.Load()-gets; p != 1 || g != 2 {
		t.Fatalf("backend saw %d puts and %d parent checks, want 1 and 2 (the 503, then the retry)", p, g)
	}
	if v, err := c.GetFresh(ctx, "app/db"); err != nil || string(v) != "pw" {
		t.Fatalf("get: %q %v", v, err)
	}

	puts = store.puts.Load()
	store.failPut.Store(true)
	err := c.Put(ctx, "app/other", []byte("pw2"))
	if !errors.Is(err, client.ErrUnavailable) || !strings.Contains(err.Error(), "may or may not have been made") {
		t.Fatalf("put whose write failed: %v, want ErrUnavailable saying it may have been made", err)
	}
	if n := store.puts.Load() - puts; n != 1 {
		t.Fatalf("backend saw %d puts, want 1: a write that may have been made is not repeated", n)
	}
}

// stallWatches is a secret backend whose watches below names holding
// "stall" wait for release, as etcd's client waits while the cluster is
// unreachable.
type stallWatches struct {
	driver.Driver
	calls   atomic.Int32
	release chan struct{}
}

func (s *stallWatches) Watch(ctx context.Context, prefix string) (<-chan driver.Event, error) {
	if strings.Contains(prefix, "stall") {
		s.calls.Add(1)
		sctx, cancel := driver.SetupContext(ctx) // as etcd's first read
		defer cancel()
		select {
		case <-s.release:
		case <-sctx.Done():
			return nil, sctx.Err()
		}
	}
	return s.Driver.Watch(ctx, prefix)
}

// stallProxy serves a store whose watches below "stall" hang, with the
// store's timeout and a client with its per-attempt timeout.
func stallProxy(t *testing.T, storeTimeout, clientTimeout time.Duration) (*stallWatches, *client.Client, *fixture) {
	cli := testenv.Etcd(t)
	sw := &stallWatches{Driver: etcddrvSecretish(cli), release: make(chan struct{})}
	svc, err := storage.New(sw, etcddrv.New(cli, "/state/"), storage.Options{Registry: Registry(), Timeout: storeTimeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	f := startProxy(t, svc, nil)
	c, err := client.New(client.Config{Socket: f.sock, ID: "admin", Key: client.APIKey(f.adminKey), Timeout: clientTimeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	// Set up without the short client timeout: an audit and etcd fsync on a
	// slow disk must not fail the test.
	if code, body := f.raw(t, "POST", "/secrets/stall/", f.admin(), ""); code != 201 {
		t.Fatalf("create container: %d %q", code, body)
	}
	return sw, c, f
}

// Opening a watch on a backend that does not answer fails in bounded time:
// the proxy gives up after its store's timeout (503), and the client after
// its own per-attempt timeout if the proxy does not.
func TestWatchOpenBounded(t *testing.T) {
	open := func(t *testing.T, c *client.Client) (time.Duration, error) {
		// The bound on the bug, not on the fix: the fix answers in well under 5s.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		start := time.Now()
		_, _, err := c.Watch(ctx, "stall")
		if ctx.Err() != nil {
			t.Fatalf("watch still not open or failed after %v: %v", time.Since(start), err)
		}
		return time.Since(start), err
	}
	t.Run("proxy", func(t *testing.T) {
		_, c, _ := stallProxy(t, 300*time.Millisecond, 5*time.Second)
		took, err := open(t, c)
		var e *client.Error
		if !errors.As(err, &e) || e.Status != http.StatusServiceUnavailable || took > 4*time.Second {
			t.Fatalf("after %v: %v, want the proxy's 503 within its store timeout", took, err)
		}
		t.Logf("user sees: %v", err)
	})
	t.Run("client", func(t *testing.T) {
		_, c, _ := stallProxy(t, time.Minute, 300*time.Millisecond)
		took, err := open(t, c)
		if !errors.Is(err, client.ErrUnavailable) || !strings.Contains(err.Error(), "not watching within") || took > 4*time.Second {
			t.Fatalf("after %v: %v, want the client's own timeout", took, err)
		}
		t.Logf("user sees: %v", err)
	})
}

// KeepCacheFresh keeps trying to open a watch that hangs (each attempt gives
// up after the Timeout), tells onChange the watch is down, and follows the
// stream once the backend answers.
func TestKeepCacheFreshRetriesStalledWatch(t *testing.T) {
	sw, c, f := stallProxy(t, time.Minute, 300*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var zero, changes atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.KeepCacheFresh(ctx, func(ev client.Event) {
			if ev.Path == "" {
				zero.Add(1)
			} else {
				changes.Add(1)
			}
		}, "stall")
	}()
	eventually(t, "watch attempts repeated while the backend hangs", func() bool { return sw.calls.Load() >= 3 })
	if n := zero.Load(); n != 1 {
		t.Fatalf("onChange told %d times while the watch was down, want once", n)
	}
	close(sw.release)
	eventually(t, "watch established once the backend answers", func() bool { return zero.Load() == 2 })
	if code, body := f.raw(t, "PUT", "/secrets/stall/k", f.admin(jsonCT, "application/json"), simple("v")); code != 201 {
		t.Fatalf("put: %d %q", code, body)
	}
	eventually(t, "change delivered", func() bool { return changes.Load() > 0 })
	cancel()
	<-done
}
