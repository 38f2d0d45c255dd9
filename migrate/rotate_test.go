package migrate

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/driver"
	etcddrv "github.com/sealrun/sealrun/storage/etcd"
	"github.com/sealrun/sealrun/storage/overlay"
)

func TestRotateMasterKey(t *testing.T) {
	ctx := context.Background()
	cli := testenv.Etcd(t)
	oldKey, newKey := newKeyT(t, "old"), newKeyT(t, "new")
	before := destOn(t, cli, "/sealrun/secrets/", "/sealrun/state/", oldKey)
	const n = 300
	for i := range n {
		if _, err := before.Put(ctx, &secrets.Raw{Name: fmt.Sprintf("r/%04d", i), Value: []byte(fmt.Sprintf("value-%04d", i))}, driver.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// A value Custodia wrote: no kid, no pin, sealed with its (legacy) key.
	raw := make([]byte, overlay.KeySize)
	rand.Read(raw)
	legacyRaw, err := overlay.NewKey("", raw)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := jose.NewEncrypter(jose.A256CBC_HS512, jose.Recipient{Algorithm: jose.DIRECT, Key: raw}, nil)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := enc.Encrypt([]byte(`{"name":"legacy","value":"bGVnYWN5LXZhbHVl"}`))
	if err != nil {
		t.Fatal(err)
	}
	ct, _ := obj.CompactSerialize()
	if kid, _ := overlay.KeyID(ct); kid != "" {
		t.Fatal("fixture has a kid")
	}
	if _, err := cli.Put(ctx, "/sealrun/secrets/raw/legacy", ct); err != nil {
		t.Fatal(err)
	}

	// Processes that reloaded their config: the new key is current, the old
	// ones still open. Readers and a writer run during the whole rotation.
	after := destOn(t, cli, "/sealrun/secrets/", "/sealrun/state/2/", newKey, oldKey, legacyRaw)
	stop := readConcurrently(ctx, 3, n, 7, func(ctx context.Context, i int) error {
		m := &secrets.Raw{Name: fmt.Sprintf("r/%04d", i)}
		if _, err := after.Get(ctx, m); err != nil {
			return err
		}
		if v := string(m.Value); v != fmt.Sprintf("value-%04d", i) && v != "rewritten" {
			return fmt.Errorf("record %d: wrong value", i)
		}
		return nil
	})
	rctx, stopWriter := context.WithCancel(ctx)
	var writeFailures atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // a concurrent writer: its writes must survive the rotation
		defer wg.Done()
		for i := 0; rctx.Err() == nil && i < n; i += 10 {
			if _, err := after.Put(rctx, &secrets.Raw{Name: fmt.Sprintf("r/%04d", i), Value: []byte("rewritten")}, driver.PutOptions{}); err != nil && rctx.Err() == nil {
				writeFailures.Add(1)
			}
			time.Sleep(time.Millisecond)
		}
	}()

	under := etcddrv.New(cli, "/sealrun/secrets/")
	// Plain ints: Progress is called serialized (the race detector checks),
	// with done increasing.
	batches, last := 0, 0
	progress := func(done, _ int) {
		if done <= last {
			t.Errorf("progress went from %d to %d", last, done)
		}
		batches, last = batches+1, done
	}
	rep, err := overlay.Reencrypt(ctx, under, after.ring, overlay.Pinning, overlay.RotateOptions{BatchSize: 50, Progress: progress})
	time.Sleep(50 * time.Millisecond)
	reads, readFailures := stop()
	stopWriter()
	wg.Wait()
	failures := readFailures + writeFailures.Load()
	if err != nil {
		t.Fatal(err)
	}
	if failures != 0 || reads == 0 {
		t.Fatalf("%d of %d reads/writes failed during rotation", failures, reads)
	}
	if rep.Total != n+1 || len(rep.Failed) != 0 || rep.Referenced["new"] != n+1 || len(rep.Referenced) != 1 || batches != 7 || last != n+1 {
		t.Fatalf("report %+v, %d batches, progress %d", rep, batches, last)
	}
	t.Logf("rotated %d records (%d resealed, %d already current) with %d concurrent reads", rep.Total, rep.Resealed, rep.AlreadyCurrent, reads)

	// Raw etcd: every value names the new kid.
	resp, err := cli.Get(ctx, "/sealrun/secrets/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if kid, err := overlay.KeyID(string(kv.Value)); err != nil || kid != "new" {
			t.Fatalf("%s names kid %q (%v)", kv.Key, kid, err)
		}
	}
	// The old keys are retired: a ring with only the new key reads everything,
	// and the legacy value is now pinned (Pinning accepts it).
	only := destOn(t, cli, "/sealrun/secrets/", "/sealrun/state/3/", newKey)
	for i := range n {
		m := &secrets.Raw{Name: fmt.Sprintf("r/%04d", i)}
		if _, err := only.Get(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if m := (&secrets.Raw{Name: "legacy"}); true {
		if _, err := only.Get(ctx, m); err != nil || string(m.Value) != "legacy-value" {
			t.Fatalf("legacy value: %v", err)
		}
	}
	// Rerun (resume): nothing left to do.
	rep, err = overlay.Reencrypt(ctx, under, after.ring, overlay.Pinning, overlay.RotateOptions{})
	if err != nil || rep.Resealed != 0 || rep.AlreadyCurrent != n+1 {
		t.Fatalf("rerun: %+v %v", rep, err)
	}
}

func mustRing(t testing.TB, k overlay.Key, more ...overlay.Key) *overlay.KeyRing {
	t.Helper()
	r, err := overlay.NewKeyRing(k, more...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
