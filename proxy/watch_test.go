package proxy

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// openStream starts GET /secrets/<prefix>/?watch=1 as admin on a raw
// connection and returns the status and the connection, unread beyond the
// headers (and the "ready" event when 200).
func openStream(t *testing.T, f *fixture, prefix string) (int, net.Conn) {
	t.Helper()
	c, err := net.Dial("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET /secrets/%s/?watch=1 HTTP/1.1\r\nHost: proxy\r\n", prefix)
	for k, v := range f.admin() {
		fmt.Fprintf(c, "%s: %s\r\n", k, v)
	}
	fmt.Fprintf(c, "\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReaderSize(c, 64), nil)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Time{})
	t.Cleanup(func() { c.Close() })
	return resp.StatusCode, c
}

func (s *Server) streamsOf(cred string) int {
	s.streamsMu.Lock()
	defer s.streamsMu.Unlock()
	return s.openStreams[cred]
}

// A credential holds at most MaxWatchStreams streams; closing one frees
// its slot.
func TestWatchStreamLimit(t *testing.T) {
	f := startProxy(t, overlayStore(t), func(o *Options) { o.MaxWatchStreams = 2 })
	f.raw(t, "POST", "/secrets/app/", f.admin(), "")
	var conns []net.Conn
	for i := range 2 {
		code, c := openStream(t, f, "app")
		if code != 200 {
			t.Fatalf("stream %d: %d, want 200", i+1, code)
		}
		conns = append(conns, c)
	}
	if code, _ := openStream(t, f, "app"); code != http.StatusTooManyRequests {
		t.Fatalf("third stream: %d, want 429", code)
	}
	conns[0].Close()
	eventually(t, "a closed stream frees its slot", func() bool { return f.srv.streamsOf("admin") == 1 })
	if code, _ := openStream(t, f, "app"); code != 200 {
		t.Fatalf("stream after one closed: %d, want 200", code)
	}
}

// A client that stops reading loses its stream once a write has waited
// StreamWriteTimeout: the handler and its backend watch do not stay.
func TestWatchStreamStuckReader(t *testing.T) {
	store := overlayStore(t)
	f := startProxy(t, store, func(o *Options) { o.StreamWriteTimeout = 300 * time.Millisecond })
	f.raw(t, "POST", "/secrets/app/", f.admin(), "")
	code, _ := openStream(t, f, "app") // never read again
	if code != 200 {
		t.Fatalf("stream: %d", code)
	}
	// Long names make big events: a few hundred fill the socket buffers.
	long := strings.Repeat("n", 900)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				if f.srv.streamsOf("admin") == 0 {
					return
				}
				putRaw(t, store, fmt.Sprintf("app/%s-%d-%d", long, w, i), "v")
			}
		}()
	}
	eventually(t, "the stuck stream is closed", func() bool { return f.srv.streamsOf("admin") == 0 })
	wg.Wait()
}
