package etcd_test

import (
	"context"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/drivertest"
	"github.com/sealrun/sealrun/storage/etcd"
)

func TestConformance(t *testing.T) {
	client := testenv.Etcd(t)
	n := 0
	drivertest.Run(t, func(t *testing.T) driver.Driver {
		// One server, a fresh namespace per subtest: the decorators keep them apart.
		n++
		return etcd.New(client, "/conformance/"+strings.Repeat("x", n)+"/")
	})
}

func TestNamespacesAreDisjoint(t *testing.T) {
	client := testenv.Etcd(t)
	a, b := etcd.New(client, "/a/"), etcd.New(client, "/ab/")
	if _, err := a.Put(t.Context(), "k", []byte("v"), driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if keys, err := b.List(t.Context(), ""); err != nil || len(keys) != 0 {
		t.Fatalf("namespace /ab/ sees %q, %v", keys, err)
	}
	raw, err := client.Get(t.Context(), "/a/k")
	if err != nil || len(raw.Kvs) != 1 {
		t.Fatalf("raw /a/k: %v %v", raw, err)
	}
}

// TestUnreachable shows what a user sees when etcd is down: code Unavailable
// and a message naming the endpoint, after a bounded wait.
func TestUnreachable(t *testing.T) {
	client, err := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:1"}, DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	d := etcd.New(client, "/x/")
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	_, err = d.Get(ctx, "k")
	if code := d.ErrorCode(err); code != driver.Unavailable {
		t.Fatalf("code = %v (%v), want Unavailable", code, err)
	}
	if !strings.Contains(err.Error(), "127.0.0.1:1") || !strings.Contains(err.Error(), "is etcd running") {
		t.Fatalf("error not actionable: %v", err)
	}
	t.Logf("user sees: %v", err)
}
