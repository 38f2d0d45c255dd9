// Package proxytest runs a real secrets proxy in-process for other packages'
// tests (the proxy package's own tests cannot import it: it imports proxy).
package proxytest

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/sealrun/sealrun/proxy"
	"github.com/sealrun/sealrun/proxy/audit"
)

// Server is a proxy serving store on a unix socket in a temp dir.
type Server struct {
	Socket string
	// ID and Key are the credential created at start.
	ID, Key string
	stop    func() error
}

// Close stops serving (existing connections are closed); t's cleanup also does.
func (s *Server) Close() error { return s.stop() }

// Start serves store and creates credential id with grant, with the
// credential cache kept fresh by its revocation watch as `secrets serve`
// does; opts may change the server's options (e.g. turn on the value cache,
// which the overlay's exact watch allows). Everything stops when t ends.
func Start(t testing.TB, store proxy.Store, id string, grant proxy.Grant, opts ...func(*proxy.Options)) *Server {
	t.Helper()
	dir := t.TempDir()
	al, err := audit.Open(filepath.Join(dir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	creds := proxy.NewCredentials(store)
	o := proxy.Options{Store: store, Credentials: creds, Audit: al}
	for _, f := range opts {
		f(&o)
	}
	srv, err := proxy.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Socket: filepath.Join(dir, "secrets.sock"), ID: id}
	ln, err := proxy.ListenUnix(s.Socket, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go creds.WatchRevocations(ctx)
	go srv.WatchValues(ctx)
	hs := srv.HTTPServer()
	go hs.Serve(ln)
	s.stop = hs.Close
	t.Cleanup(func() { cancel(); hs.Close(); al.Close() })
	if s.Key, err = creds.Create(context.Background(), id, grant); err != nil {
		t.Fatal(err)
	}
	return s
}
