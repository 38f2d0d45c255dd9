package storage_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/etcd"
	"github.com/sealrun/sealrun/storage/memory"
	"github.com/sealrun/sealrun/storage/overlay"
)

func ring(t *testing.T) *overlay.KeyRing {
	k, err := overlay.NewKey("test", bytes.Repeat([]byte{4}, 64))
	if err != nil {
		t.Fatal(err)
	}
	r, err := overlay.NewKeyRing(k)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestRouting: every secret model lands only in the secret backend — no
// byte sequence of its secret (or even its name) appears anywhere outside the
// secret prefix in etcd — and plain models only under the state prefix.
func TestRouting(t *testing.T) {
	client := testenv.Etcd(t)
	reg := prometheus.NewRegistry()
	svc, err := storage.New(overlay.New(etcd.New(client, "/sealrun/secrets/"), ring(t), overlay.Pinning),
		etcd.New(client, "/sealrun/state/"), storage.Options{Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	ctx := t.Context()
	mark := func(s string) secrets.Secret { return secrets.Secret("PLAINTEXT-" + s + "-MARK") }
	secretModels := []secrets.Model{
		&secrets.MessagePrivateKey{KeyID: "k1", PEM: mark("pem")},
		&secrets.MessagePassphrase{KeyID: "k1", Passphrase: mark("pass")},
		&secrets.SigningKey{QueuePrefix: "rmq_cpu", PublicKey: string(mark("signing"))},
		&secrets.ResponseKey{ResponsePrefix: "resp", PublicKeyPEM: string(mark("response"))},
		&secrets.APICredential{ID: "api1", KeyHash: mark("hash")},
		&secrets.HostCreds{Address: "hosts/h1", SSHKey: mark("ssh"), RemoteUser: string(mark("user"))},
		&secrets.Raw{Name: "adhoc/x", Value: mark("raw")},
	}
	plain := []secrets.Model{
		&secrets.RunnerRecord{ID: "r1", Host: "PLAIN-host", Queues: []string{"q"}, LastHeartbeat: time.Now().UTC()},
		&secrets.JobRecord{MessageID: "m1", Queue: "PLAIN-queue", State: "done"},
	}
	for _, m := range append(secretModels, plain...) {
		if _, err := svc.Put(ctx, m, driver.PutOptions{}); err != nil {
			t.Fatalf("Put %T: %v", m, err)
		}
	}
	all, err := client.Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range all.Kvs {
		key := string(kv.Key)
		inSecret, inState := strings.HasPrefix(key, "/sealrun/secrets/"), strings.HasPrefix(key, "/sealrun/state/")
		if !inSecret && !inState {
			t.Errorf("key outside both prefixes: %q", key)
		}
		if bytes.Contains(kv.Value, []byte("PLAINTEXT-")) || bytes.Contains(kv.Key, []byte("PLAINTEXT-")) {
			t.Errorf("secret plaintext visible in etcd at %q", key)
		}
		if inState {
			for _, m := range secretModels {
				if strings.HasPrefix(key, "/sealrun/state/"+m.Kind()+"/") {
					t.Errorf("secret model %s stored in the state backend at %q", m.Kind(), key)
				}
			}
		}
		if inSecret && !bytes.HasPrefix(kv.Value, []byte("eyJ")) {
			t.Errorf("value at %q is not a JWE", key)
		}
	}
	for _, m := range plain {
		raw, err := client.Get(ctx, "/sealrun/state/"+m.Kind()+"/"+m.Key())
		if err != nil || len(raw.Kvs) != 1 || !bytes.Contains(raw.Kvs[0].Value, []byte("PLAIN-")) {
			t.Errorf("plain model %s not stored as plain JSON under the state prefix", m.Kind())
		}
		if raw, _ := client.Get(ctx, "/sealrun/secrets/"+m.Kind()+"/"+m.Key()); len(raw.Kvs) != 0 {
			t.Errorf("plain model %s leaked into the secret backend", m.Kind())
		}
	}
	// Round trip through the service.
	got := &secrets.HostCreds{Address: "hosts/h1"}
	if _, err := svc.Get(ctx, got); err != nil || !got.SSHKey.Equal(mark("ssh")) {
		t.Fatalf("Get HostCreds: %v", err)
	}
	keys, err := svc.List(ctx, secrets.KindHostCreds, "hosts")
	if err != nil || len(keys) != 1 || keys[0] != "hosts/h1" {
		t.Fatalf("List = %q, %v", keys, err)
	}
	if n := opsTotal(t, reg); n < 10 {
		t.Fatalf("operations counter = %v", n)
	}
}

func opsTotal(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == "sealrun_storage_operations_total" {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
				for _, l := range m.GetLabel() {
					if strings.Contains(l.GetValue(), "PLAINTEXT") {
						t.Fatalf("metric label leaks a secret")
					}
				}
			}
		}
	}
	return sum
}

func TestUnregisteredModel(t *testing.T) {
	svc, err := storage.New(memory.New(), memory.New(), storage.Options{Registry: secrets.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = svc.Put(t.Context(), &secrets.HostCreds{Address: "h", SSHKey: secrets.Secret("x")}, driver.PutOptions{})
	if !errors.Is(err, secrets.ErrUnregistered) {
		t.Fatalf("unregistered model: %v", err)
	}
	if _, err := svc.List(t.Context(), "nope", ""); !errors.Is(err, secrets.ErrUnregistered) {
		t.Fatalf("unregistered kind: %v", err)
	}
}

func TestErrorCodes(t *testing.T) {
	svc, err := storage.New(overlay.New(memory.New(), ring(t), overlay.Pinning), memory.New(), storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	_, err = svc.Get(ctx, &secrets.Raw{Name: "missing"})
	if storage.Code(err) != driver.NotFound {
		t.Fatalf("missing: %v", err)
	}
	_, err = svc.Put(ctx, &secrets.Raw{Name: "../etc/passwd", Value: secrets.Secret("x")}, driver.PutOptions{})
	if storage.Code(err) != driver.InvalidKey {
		t.Fatalf("..: %v", err)
	}
	if _, err := svc.Put(ctx, &secrets.Raw{Name: "k", Value: secrets.Secret("x")}, driver.PutOptions{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	_, err = svc.Put(ctx, &secrets.Raw{Name: "k", Value: secrets.Secret("SECRETVALUE")}, driver.PutOptions{IfAbsent: true})
	if storage.Code(err) != driver.Conflict || strings.Contains(err.Error(), "SECRETVALUE") {
		t.Fatalf("conflict: %v", err)
	}
	t.Logf("user sees: %v", err)
}

// unreachableEtcd is a Service (timeout 500ms) whose state lives in an
// etcd nobody answers for.
func unreachableEtcd(t *testing.T) *storage.Service {
	client, err := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:1"}, DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	svc, err := storage.New(memory.New(), etcd.New(client, "/s/"), storage.Options{Timeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// TestUnreachableEtcd: a Service whose etcd is gone fails within its
// timeout with code Unavailable and a message saying where it looked.
func TestUnreachableEtcd(t *testing.T) {
	svc := unreachableEtcd(t)
	start := time.Now()
	_, err := svc.Get(context.Background(), &secrets.RunnerRecord{ID: "r1"})
	if storage.Code(err) != driver.Unavailable || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("got %v (code %v)", err, storage.Code(err))
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("took %v, want the configured timeout", time.Since(start))
	}
	t.Logf("user sees: %v", err)
}

// TestWatchUnreachableEtcd: opening a watch on an unreachable etcd fails
// within the service's timeout (etcd's client would wait for the cluster
// forever), with code Unavailable.
func TestWatchUnreachableEtcd(t *testing.T) {
	svc := unreachableEtcd(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second) // the bug's bound, not the fix's
	defer cancel()
	start := time.Now()
	_, err := svc.Watch(ctx, secrets.KindRunnerRecord, "")
	if storage.Code(err) != driver.Unavailable || ctx.Err() != nil {
		t.Fatalf("got %v (code %v)", err, storage.Code(err))
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("took %v, want the configured timeout", time.Since(start))
	}
	t.Logf("user sees: %v", err)
}

// TestWatchOutlivesTimeout: the timeout bounds opening a watch, not the
// stream.
func TestWatchOutlivesTimeout(t *testing.T) {
	svc, err := storage.New(memory.New(), memory.New(), storage.Options{Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ch, err := svc.Watch(t.Context(), secrets.KindRunnerRecord, "")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := svc.Put(t.Context(), &secrets.RunnerRecord{ID: "r1"}, driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case e, ok := <-ch:
		if !ok || e.Key != "r1" || e.Err != nil {
			t.Fatalf("event = %+v (open %v)", e, ok)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5s: the stream ended with its setup timeout")
	}
}

// slowStart is a driver whose Watch takes a while to start without ever
// hanging (as Vault's first listing of many keys, each request bounded).
type slowStart struct{ driver.Driver }

func (s slowStart) Watch(ctx context.Context, prefix string) (<-chan driver.Event, error) {
	time.Sleep(200 * time.Millisecond)
	return s.Driver.Watch(ctx, prefix)
}

// TestWatchSlowStartNotCut: the setup bound applies to drivers that ask
// for it (driver.SetupContext); a slow but progressing start is not cut.
func TestWatchSlowStartNotCut(t *testing.T) {
	svc, err := storage.New(slowStart{memory.New()}, slowStart{memory.New()}, storage.Options{Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Watch(t.Context(), secrets.KindRunnerRecord, ""); err != nil {
		t.Fatalf("watch with a 200ms start and a 50ms timeout: %v", err)
	}
}

func TestWatch(t *testing.T) {
	svc, err := storage.New(memory.New(), memory.New(), storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ch, err := svc.Watch(ctx, secrets.KindRunnerRecord, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Put(ctx, &secrets.RunnerRecord{ID: "r1"}, driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if e := <-ch; e.Key != "r1" || e.Type != driver.EventPut {
		t.Fatalf("event = %+v", e)
	}
}

// noBatch hides a driver's Batcher and BatchGetter, like Vault's driver.
type noBatch struct{ driver.Driver }

// TestPutBatch: a batch of secrets is encrypted, written atomically with its
// conditions and read back in one call; mixed backends, failed conditions
// and backends that cannot batch write nothing.
func TestPutBatch(t *testing.T) {
	client := testenv.Etcd(t)
	reg := prometheus.NewRegistry()
	svc, err := storage.New(overlay.New(etcd.New(client, "/batch/secrets/"), ring(t), overlay.Pinning),
		etcd.New(client, "/batch/state/"), storage.Options{Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	ctx := t.Context()
	raw := func(name string) *secrets.Raw {
		return &secrets.Raw{Name: name, Value: secrets.Secret("PLAINTEXT-" + name)}
	}
	old, err := svc.Put(ctx, raw("b/2"), driver.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	items := []storage.BatchItem{
		{Model: raw("b/1"), Opts: driver.PutOptions{IfAbsent: true}},
		{Model: raw("b/2"), Opts: driver.PutOptions{IfRevision: old}},
	}
	revs, err := svc.PutBatch(ctx, items)
	if err != nil || len(revs) != 2 || revs[0] <= old {
		t.Fatalf("PutBatch = %v, %v", revs, err)
	}
	all, err := client.Get(ctx, "/batch/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range all.Kvs {
		if bytes.Contains(kv.Value, []byte("PLAINTEXT")) {
			t.Fatalf("%s holds plaintext: the batch bypassed the overlay", kv.Key)
		}
	}
	back := []secrets.Model{&secrets.Raw{Name: "b/2"}, &secrets.Raw{Name: "b/none"}, &secrets.Raw{Name: "b/1"}}
	got, err := svc.GetBatch(ctx, back)
	if err != nil {
		t.Fatalf("GetBatch: %v", err)
	}
	if got[0] != revs[1] || got[1] != 0 || got[2] != revs[0] {
		t.Fatalf("GetBatch revisions = %v, want [%d 0 %d]", got, revs[1], revs[0])
	}
	if v := back[0].(*secrets.Raw).Value.Reveal(); string(v) != "PLAINTEXT-b/2" || back[1].(*secrets.Raw).Value != nil {
		t.Fatal("GetBatch filled the wrong values")
	}

	// A stale condition on one item: Conflict, and b/3 is not created.
	_, err = svc.PutBatch(ctx, []storage.BatchItem{{Model: raw("b/3")}, {Model: raw("b/2"), Opts: driver.PutOptions{IfRevision: old}}})
	if storage.Code(err) != driver.Conflict {
		t.Fatalf("stale batch: code %v (%v), want Conflict", storage.Code(err), err)
	}
	// Mixed backends are refused before anything is written.
	_, err = svc.PutBatch(ctx, []storage.BatchItem{{Model: raw("b/3")}, {Model: &secrets.JobRecord{MessageID: "m1", Queue: "q", State: "done"}}})
	if storage.Code(err) != driver.InvalidKey || !strings.Contains(err.Error(), "one backend") {
		t.Fatalf("mixed batch: code %v (%v), want InvalidKey", storage.Code(err), err)
	}
	if _, err := svc.Get(ctx, &secrets.Raw{Name: "b/3"}); storage.Code(err) != driver.NotFound {
		t.Fatalf("b/3 after refused batches: %v, want NotFound", err)
	}
	if err != nil && strings.Contains(err.Error(), "PLAINTEXT") {
		t.Fatal("error leaks a value")
	}

	// A backend without batches says so; the caller falls back.
	plain, err := storage.New(overlay.New(noBatch{memory.New()}, ring(t), overlay.Pinning), noBatch{memory.New()}, storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, err := plain.PutBatch(ctx, items); !errors.Is(err, storage.ErrBatchUnsupported) {
		t.Fatalf("PutBatch without a Batcher: %v, want ErrBatchUnsupported", err)
	}
	if _, err := plain.GetBatch(ctx, back); !errors.Is(err, storage.ErrBatchUnsupported) {
		t.Fatalf("GetBatch without a BatchGetter: %v, want ErrBatchUnsupported", err)
	}
	if _, err := plain.PutBatch(ctx, []storage.BatchItem{{Model: &secrets.JobRecord{MessageID: "m1", Queue: "q", State: "done"}}}); !errors.Is(err, storage.ErrBatchUnsupported) {
		t.Fatalf("state PutBatch without a Batcher: %v, want ErrBatchUnsupported", err)
	}
	if n := opsTotal(t, reg); n < 4 {
		t.Fatalf("operations counter = %v, want the batches counted", n)
	}
}
