// Package testenv starts the real services sealrun's tests run against:
// embedded etcd in-process and a Vault dev server as a child process.
package testenv

import (
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sealrun/sealrun/storage/etcd/embedded"
)

// Etcd starts a real single-node etcd in-process with its own temp data dir
// and loopback listeners, and returns a client dialled over the network.
// Both are closed when t ends.
func Etcd(t testing.TB) *clientv3.Client {
	t.Helper()
	srv, err := embedded.Start(t.Context(), embedded.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("start embedded etcd: %v", err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	c, err := srv.Client()
	if err != nil {
		t.Fatalf("dial embedded etcd: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}
